//! Durable jobs and webhooks against the real `im-http` binary: a SIGKILL with 200 jobs in
//! flight loses none and runs no finished one again; webhooks are signed, retried, stopped by
//! 410 and refused for private addresses; inbound webhooks are verified (signature, timestamp,
//! replays).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use im_jobs::Secret;
use serde_json::{Value, json};

use common::*;

const OUT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const IN_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// What the test's webhook receiver saw, per job id: deliveries, and whether every signature
/// verified.
#[derive(Default)]
struct Seen {
    by_job: BTreeMap<String, u32>,
    bad_signatures: u32,
    calls: BTreeMap<String, u32>,
}

type Receiver = Arc<Mutex<Seen>>;

/// A webhook receiver on loopback: `/ok` answers 204, `/flaky` 500 twice then 204, `/gone` 410.
async fn receiver() -> (String, Receiver) {
    let seen: Receiver = Arc::default();
    async fn hook(
        State(seen): State<Receiver>,
        Path(mode): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let now = im_jobs::now_ms() / 1000;
        let verified = Secret::parse(OUT_SECRET).expect("secret").verify(
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
            &body,
            now,
            300,
        );
        let mut s = seen.lock().expect("lock");
        if verified.is_err() {
            s.bad_signatures += 1;
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let calls = {
            let c = s.calls.entry(mode.clone()).or_default();
            *c += 1;
            *c
        };
        match mode.as_str() {
            "gone" => return StatusCode::GONE,
            "flaky" if calls <= 2 => return StatusCode::INTERNAL_SERVER_ERROR,
            _ => {}
        }
        if let Some(id) = v["data"]["id"].as_str() {
            *s.by_job.entry(id.to_owned()).or_default() += 1;
        }
        StatusCode::NO_CONTENT
    }
    let app = axum::Router::new()
        .route("/{mode}", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn job_args(dir: &std::path::Path, extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = [
        format!("jobs.dir={}", dir.display()),
        format!("jobs.webhook_secret={OUT_SECRET:?}"),
        format!("jobs.inbound_secret={IN_SECRET:?}"),
        "jobs.allow_private_callbacks=true".to_owned(),
        "jobs.retry_schedule_s=[0.2, 0.4, 0.8, 1, 1, 1, 1, 1, 1, 1]".to_owned(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_owned(), s])
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn start_jobs(scale: &str, dir: &std::path::Path, extra: &[&'static str]) -> Server {
    let args = job_args(dir, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start_scaled(scale, &refs)
}

async fn get(c: &reqwest::Client, url: &str, path: &str) -> (u16, Value) {
    answer(c.get(format!("{url}{path}"))).await
}

async fn delete(c: &reqwest::Client, url: &str, path: &str) -> (u16, Value) {
    answer(c.delete(format!("{url}{path}"))).await
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.header("x-api-key", KEY).send().await.expect("answered");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn all_jobs(c: &reqwest::Client, url: &str) -> Vec<Value> {
    let (status, v) = get(c, url, "/v1/jobs?limit=1000").await;
    assert_eq!(status, 200, "{v}");
    v["jobs"].as_array().cloned().expect("jobs")
}

fn final_status(j: &Value) -> bool {
    matches!(
        j["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// The job list once `done` holds of it (`what`), within `secs`.
async fn wait_for(
    c: &reqwest::Client,
    url: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let done = &done;
    im_testkit::until(what, Duration::from_secs(secs), move || async move {
        Some(all_jobs(c, url).await).filter(|jobs| done(jobs))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_with_200_jobs_in_flight_loses_none_and_reruns_no_finished_one() {
    let (hooks, seen) = receiver().await;
    let scratch = im_testkit::scratch_dir("im-jobs-crash");
    let dir = scratch.path();
    let c = client();
    let mut s = start_jobs("0.05", dir, &["--set", "jobs.max_running=16"]);
    let mut ids = Vec::new();
    for i in 0..200 {
        let (path, body) = body_for(KINDS[i % KINDS.len()], i);
        let (status, v) = post(
            &c,
            &s.url,
            "/v1/jobs",
            &json!({"route": path, "body": body, "callback_url": format!("{hooks}/ok"),
                    "idempotency_key": format!("job-{i}")}),
        )
        .await;
        assert_eq!(status, 202, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    // Some finish, most do not: then the process dies without a chance to save anything.
    let before = wait_for(&c, &s.url, 120, "20 jobs succeeded", |jobs| {
        jobs.iter().filter(|j| j["status"] == "succeeded").count() >= 20
    })
    .await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("reaped");
    let finished_before: BTreeMap<String, Value> = before
        .iter()
        .filter(|j| j["status"] == "succeeded")
        .map(|j| (j["id"].as_str().expect("id").to_owned(), j.clone()))
        .collect();
    let live_before = before.iter().filter(|j| !final_status(j)).count();
    assert!(
        finished_before.len() >= 20 && live_before > 0,
        "killed with jobs both finished ({}) and live ({live_before})",
        finished_before.len()
    );

    let s = start_jobs("0.05", dir, &[]);
    let after = wait_for(
        &c,
        &s.url,
        300,
        "all 200 jobs ended and delivered",
        |jobs| {
            jobs.len() == 200
                && jobs.iter().all(final_status)
                && jobs.iter().all(|j| j["webhook"]["delivered"] == true)
        },
    )
    .await;
    assert_eq!(after.len(), 200, "none lost");
    let mut after_ids: Vec<String> = after
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect();
    after_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(after_ids, want, "exactly the jobs submitted");
    for j in &after {
        assert_eq!(j["status"], "succeeded", "every job succeeded: {j}");
        assert_eq!(j["webhook"]["delivered"], true, "callback delivered: {j}");
        if let Some(b) = finished_before.get(j["id"].as_str().expect("id")) {
            assert_eq!(
                j["attempts"], b["attempts"],
                "a finished job never runs again"
            );
            assert_eq!(j["finished_ms"], b["finished_ms"], "{j}");
        }
    }
    let reran = after
        .iter()
        .filter(|j| j["attempts"].as_u64() > Some(1))
        .count();
    eprintln!(
        "finished before the kill: {}, live: {live_before}, run twice: {reran}",
        finished_before.len()
    );
    assert!(
        reran <= live_before,
        "only jobs that were live at the kill may run twice"
    );
    // A client retrying a submission gets the job it made, not a second one.
    let (path, body) = body_for("txt2txt", 0);
    let (status, again) = post(
        &c,
        &s.url,
        "/v1/jobs",
        &json!({"route": path, "body": body, "idempotency_key": "job-0"}),
    )
    .await;
    assert_eq!((status, again["id"].as_str()), (200, Some(ids[0].as_str())));
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.bad_signatures, 0, "every delivery verified");
        for id in &ids {
            assert!(
                seen.by_job.get(id).copied().unwrap_or(0) >= 1,
                "{id}'s callback arrived"
            );
        }
    }
    // A result is there to read, inline or as the route answered it.
    let (status, r) = get(&c, &s.url, &format!("/v1/jobs/{}/result", ids[0])).await;
    assert_eq!(status, 200, "{r}");
}

async fn one_job_with_callback(c: &reqwest::Client, url: &str, hook: &str) -> String {
    let (path, body) = body_for("txt2txt", 1);
    let (status, v) = post(
        c,
        url,
        "/v1/jobs",
        &json!({"route": path, "body": body, "callback_url": hook}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().expect("id").to_owned()
}

async fn webhook_of(c: &reqwest::Client, url: &str, id: &str) -> Value {
    let path = format!("/v1/jobs/{id}");
    im_testkit::until(
        &format!("job {id}'s webhook to settle"),
        Duration::from_secs(20),
        || async {
            let (_, j) = get(c, url, &path).await;
            let w = &j["webhook"];
            (w["delivered"] == true || w["abandoned"] == true).then_some(j)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_and_a_410_disables_the_endpoint() {
    let (hooks, seen) = receiver().await;
    let scratch = im_testkit::scratch_dir("im-jobs-hooks");
    let dir = scratch.path();
    let c = client();
    let s = start_jobs("0.01", dir, &[]);

    let flaky = one_job_with_callback(&c, &s.url, &format!("{hooks}/flaky")).await;
    let j = webhook_of(&c, &s.url, &flaky).await;
    let log = j["webhook"]["deliveries"].as_array().expect("log");
    let codes: Vec<Value> = log.iter().map(|d| d["status"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(204)], "{j}");
    assert_eq!(j["webhook"]["delivered"], true);

    let gone = one_job_with_callback(&c, &s.url, &format!("{hooks}/gone")).await;
    let j = webhook_of(&c, &s.url, &gone).await;
    assert_eq!(j["webhook"]["abandoned"], true, "{j}");
    assert_eq!(j["webhook"]["deliveries"].as_array().map(Vec::len), Some(1));
    // The endpoint is disabled: the next job's webhook is not even sent.
    let next = one_job_with_callback(&c, &s.url, &format!("{hooks}/gone")).await;
    let j = webhook_of(&c, &s.url, &next).await;
    assert_eq!(j["webhook"]["abandoned"], true, "{j}");
    assert_eq!(seen.lock().expect("lock").calls.get("gone"), Some(&1));
    let metrics = get_text(&s.url, "/metrics", KEY).await;
    for line in [
        "im_webhook_deliveries_total{outcome=\"failed\"} 2",
        "im_webhook_deliveries_total{outcome=\"gone\"} 2",
        "im_jobs_completed_total{outcome=\"succeeded\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_callbacks_are_refused_unless_allowed() {
    let scratch = im_testkit::scratch_dir("im-jobs-private");
    let dir = scratch.path();
    let c = client();
    let s = start(&["--set", &format!("jobs.dir={}", dir.display())]);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
    ] {
        let (path, body) = body_for("txt2txt", 1);
        let (status, v) = post(
            &c,
            &s.url,
            "/v1/jobs",
            &json!({"route": path, "body": body, "callback_url": url}),
        )
        .await;
        assert_eq!(status, 400, "{url}: {v}");
        assert_eq!(v["error"]["param"], "callback_url", "{v}");
    }
}

fn signed(body: &str, id: &str, ts: i64) -> reqwest::header::HeaderMap {
    let sig = Secret::parse(IN_SECRET)
        .expect("secret")
        .sign(id, ts, body.as_bytes());
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("webhook-id", id.parse().expect("id"));
    h.insert("webhook-timestamp", ts.to_string().parse().expect("ts"));
    h.insert("webhook-signature", sig.parse().expect("sig"));
    h.insert("content-type", "application/json".parse().expect("ct"));
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_webhooks_are_verified_and_replays_refused() {
    let scratch = im_testkit::scratch_dir("im-jobs-ingest");
    let dir = scratch.path();
    let c = client();
    let s = start_jobs("0.01", dir, &[]);
    let (path, body) = body_for("txt2txt", 3);
    let submission = json!({"route": path, "body": body}).to_string();
    let now = im_jobs::now_ms() / 1000;
    let send = |headers: reqwest::header::HeaderMap, body: String| {
        c.post(format!("{}/webhooks/ingest", s.url))
            .headers(headers)
            .body(body)
            .send()
    };
    // Signed now: accepted as a job (no API key: the signature is the credential).
    let r = send(signed(&submission, "msg_1", now), submission.clone())
        .await
        .expect("answered");
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The same message again: a replay.
    let r = send(signed(&submission, "msg_1", now), submission.clone())
        .await
        .expect("answered");
    assert_eq!(r.status(), 409);
    // Ten minutes old, or from the future: refused.
    for ts in [now - 600, now + 600] {
        let r = send(signed(&submission, "msg_2", ts), submission.clone())
            .await
            .expect("answered");
        assert_eq!(r.status(), 401, "timestamp {ts}");
    }
    // A body changed after signing: refused.
    let r = send(
        signed(&submission, "msg_3", now),
        submission.replace("q3", "q4"),
    )
    .await
    .expect("answered");
    assert_eq!(r.status(), 401);
    // The job it made runs (an admin would see it; the submitter holds no key).
    let (status, _) = get(&c, &s.url, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 404, "an ordinary key does not see others' jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cancelled_listed_per_key_and_batches_go_async() {
    let scratch = im_testkit::scratch_dir("im-jobs-api");
    let dir = scratch.path();
    let c = client();
    // Slow enough that a job is still waiting when it is cancelled.
    let s = start_scaled("1.0", &["--set", &format!("jobs.dir={}", dir.display())]);
    let (path, body) = body_for("txt2img", 1);
    let (_, v) = post(
        &c,
        &s.url,
        "/v1/jobs",
        &json!({"route": path, "body": body}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_owned();
    let (status, cancelled) = delete(&c, &s.url, &format!("/v1/jobs/{id}")).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, _) = delete(&c, &s.url, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 409, "a final job cannot be cancelled again");

    let (status, v) = post(
        &c,
        &s.url,
        "/infer/batch",
        &json!({"async": true, "requests": [
            {"text": "I love it", "model": "sentiment"},
            {"text": "Once upon a time", "model": "generator"}
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(2));
    let (status, listed) = get(&c, &s.url, "/v1/jobs?status=cancelled").await;
    assert_eq!(status, 200);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    let (status, bad) = get(&c, &s.url, "/v1/jobs?status=lost").await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (400, Some("status"))
    );
    let (status, bad) = post(
        &c,
        &s.url,
        "/v1/jobs",
        &json!({"kind": "txt2txt", "body": {"model": LLM, "messages": [], "stream": true}}),
    )
    .await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (400, Some("body.stream"))
    );
}
