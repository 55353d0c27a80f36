//! The edge holds (issue 27): what an attacker (or a careless client) tried against the release
//! binaries, each reproduction a test. Process-level ones (connection hoarding, bodies read
//! before keys, the fencing gate) live with the binaries; these run in-process.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::{ImConfig, KeyEntry, ModelEntry};
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use im_service::Scope;
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";
const SD: &str = "stablediffusion";
const ADMIN_KEY: &str = "edge-admin-key";
const IN_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn simulated(f: impl FnOnce(&mut ImConfig)) -> Built {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    f(&mut cfg);
    app::build(cfg, Some(Simulate { time_scale: 0.0 }))
        .await
        .expect("build")
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    key: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn post(app: &Router, path: &str, v: &Value) -> (StatusCode, Value) {
    call(app, "POST", path, DEMO_KEY, &[], v.to_string().into_bytes()).await
}

/// im's pieces wired by hand over a simulator, with a byte budget of `budget` in the core whatever
/// the body limit (what a configuration could say before this issue, and what calls that never
/// pass an HTTP body limit meet), and durable jobs in `store`.
async fn stack(
    budget: u64,
    store: Arc<dyn im_jobs::JobStore>,
) -> (localai_sim::SimServer, im_engine::Engine, Router) {
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![sim.url().into()];
    cfg.models = localai_sim::SimConfig::default()
        .models
        .iter()
        .map(|m| ModelEntry {
            name: m.name.clone(),
            kinds: m.kinds.clone(),
            max_in_flight: Some(m.slots),
            ..Default::default()
        })
        .collect();
    let mut core = cfg.core().expect("core config");
    core.limits.max_bytes_total = budget;
    let client = localai_client::LocalAiClient::new(localai_client::ClientConfig::new(sim.url()))
        .expect("client");
    let backend = Arc::new(im_engine::LocalAiBackend::new(vec![client]));
    let engine = im_engine::Engine::start_with(
        core,
        backend,
        im_metrics::Metrics::new(),
        im_engine::ModelEcho::default(),
    )
    .expect("engine");
    let service = im_service::Service::new(engine.clone(), &cfg.service_settings());
    let runner = Arc::new(im_app::jobs::ServiceRunner(service.clone()));
    let settings = cfg
        .jobs
        .settings(im_jobs::Secret::parse(&im_jobs::Secret::generate()).expect("secret"))
        .expect("settings");
    let jobs =
        im_jobs::Jobs::start(store, runner, settings, engine.metrics().clone()).expect("jobs");
    let app = im_http_api::router(im_http_api::AppState::with_jobs(service, jobs));
    (sim, engine, app)
}

fn png_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 2))
}

#[tokio::test]
async fn a_request_larger_than_the_byte_budget_is_refused_as_too_large_not_queue_full() {
    // Regression (issue 27.4): it got 429 "retry after 2 s" forever, though it could never fit.
    let built = simulated(|c| {
        c.limits.max_queued_bytes = 4096;
        c.http.body_limit_bytes = 4096;
    })
    .await;
    // A call that did not come through the HTTP body limit (MCP over stdio, a recovered job).
    let file = im_service::image_file("file", format!("{}{}", png_b64(), "A".repeat(8192)).into())
        .expect("an image");
    let params = im_service::ImageParams {
        model: SD.into(),
        prompt: "p".into(),
        width: 8,
        height: 8,
        ..Default::default()
    };
    let limits = built.service.limits().clone();
    let call = im_service::Call::image(params, Some(file), &limits, None).expect("valid");
    let caller = im_service::Caller::new(&im_service::Principal::anonymous(), "too-large");
    let e = built.service.run(call, &caller).await.expect_err("refused");
    assert_eq!(
        (e.status(), e.kind.as_str()),
        (413, "payload_too_large"),
        "{e}"
    );
    assert!(e.retry_after.is_none(), "no point coming back: {e}");
}

#[test]
fn a_byte_budget_below_the_body_limit_is_refused_by_configuration() {
    // Regression (issue 27.4): validation accepted a budget a single allowed body could exceed.
    let mut cfg = ImConfig::default();
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        ..Default::default()
    }];
    cfg.limits.max_queued_bytes = 1 << 20;
    cfg.http.body_limit_bytes = 32 << 20;
    let e = cfg.validate().expect_err("refused");
    assert!(e.to_string().contains("limits.max_queued_bytes"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_job_too_large_for_the_byte_budget_fails_instead_of_running_forever() {
    // Regression (issue 27.4): a job whose request can never fit stayed `running` forever (its
    // 429 was taken for "come back later") and held a job slot.
    let scratch = im_testkit::scratch_dir("im-edge-too-large-job");
    let dir = scratch.path();
    let store = im_jobs::RedbStore::open(dir).expect("store");
    // Left by a run with a larger budget.
    let big = format!("{}{}", png_b64(), "A".repeat(16 * 1024));
    let job = im_jobs::Job {
        id: "job_big".into(),
        owner: "anonymous".into(),
        idempotency_key: None,
        request: im_jobs::Request {
            route: "/img2img".into(),
            body: json!({"model": SD, "file": big, "prompt": "p", "width": 8, "height": 8}),
        },
        status: im_jobs::Status::Queued,
        attempts: 0,
        created_ms: im_jobs::now_ms(),
        started_ms: None,
        finished_ms: None,
        result: None,
        error: None,
        webhook: None,
    };
    im_jobs::JobStore::put(&store, &job).expect("put");
    let (_sim, _engine, app) = stack(8192, Arc::new(store)).await;
    let last = im_testkit::until("the job to end", Duration::from_secs(20), || async {
        let (_, v) = call(&app, "GET", "/v1/jobs/job_big", "", &[], Vec::new()).await;
        (v["status"] == "failed" || v["status"] == "succeeded").then_some(v)
    })
    .await;
    assert_eq!(last["status"], "failed", "the job fails: {last}");
    assert_eq!(last["error"]["status"], 413, "{last}");
}

fn admin_keys(c: &mut ImConfig) {
    c.keys = vec![
        KeyEntry {
            key: ADMIN_KEY.into(),
            scopes: vec![Scope::Admin, Scope::Infer, Scope::Metrics],
            rate_limit_per_s: None,
            rate_limit_burst: None,
            tenant: None,
        },
        KeyEntry {
            key: DEMO_KEY.into(),
            scopes: vec![Scope::Infer, Scope::Metrics],
            rate_limit_per_s: None,
            rate_limit_burst: None,
            tenant: None,
        },
    ];
}

#[tokio::test]
async fn dot_segments_in_relayed_management_paths_are_refused() {
    // Regression (issue 27.4): `POST /system/../backend/shutdown` with an admin key reached
    // LocalAI's `/backend/shutdown`, which the README says is never relayed.
    let built = simulated(admin_keys).await;
    let app = im_http_api::router(built.state.clone());
    for path in [
        "/system/../backend/shutdown",
        "/system/%2e%2e/backend/shutdown",
        "/system/%2E%2e/backend/shutdown",
        "/backends/./../backend/load",
        "/models/delete/..%2fbackend%2fshutdown",
    ] {
        let body = json!({"model": LLM}).to_string().into_bytes();
        let (status, v) = call(&app, "POST", path, ADMIN_KEY, &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request", "{path}: {v}");
    }
    let stats = built.sim.as_ref().expect("sim").state().stats();
    assert_eq!(stats.unloads, 0, "nothing reached /backend/shutdown");
}

fn signed(body: &str, id: &str) -> Vec<(&'static str, String)> {
    let ts = im_jobs::now_ms() / 1000;
    let sig = im_jobs::Secret::parse(IN_SECRET)
        .expect("secret")
        .sign(id, ts, body.as_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ]
}

#[tokio::test]
async fn a_signed_webhook_with_an_invalid_body_does_not_use_up_its_id() {
    // Regression (issue 27.4): the sender fixed its body and resent it with the same
    // `webhook-id` (as Standard Webhooks senders do): 409, the id was spent on a 400.
    let built = simulated(|c| c.jobs.inbound_secret = Some(IN_SECRET.into())).await;
    let app = im_http_api::router(built.state.clone());
    let bad = json!({"kind": "no-such-kind", "body": {}}).to_string();
    let (status, v) = call(
        &app,
        "POST",
        "/webhooks/ingest",
        "",
        &signed(&bad, "msg_fix"),
        bad.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let good = json!({"kind": "txt2txt", "body": {"model": LLM, "messages": [{"role": "user", "content": "hi"}]}}).to_string();
    let (status, v) = call(
        &app,
        "POST",
        "/webhooks/ingest",
        "",
        &signed(&good, "msg_fix"),
        good.clone().into_bytes(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the fixed resend is taken: {v}"
    );
    let (status, _) = call(
        &app,
        "POST",
        "/webhooks/ingest",
        "",
        &signed(&good, "msg_fix"),
        good.into_bytes(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a replay of the accepted one is not"
    );
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_refused() {
    // Regression (issue 27.4): the second submission silently got the first job back.
    let built = simulated(|_| {}).await;
    let app = im_http_api::router(built.state.clone());
    let first = json!({"kind": "txt2txt", "idempotency_key": "k-1",
        "body": {"model": LLM, "messages": [{"role": "user", "content": "one"}]}});
    let (status, v) = post(&app, "/v1/jobs", &first).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].clone();
    let (status, v) = post(&app, "/v1/jobs", &first).await;
    assert_eq!(
        (status, &v["id"]),
        (StatusCode::OK, &id),
        "the same submission again: the first job"
    );
    let other = json!({"kind": "txt2txt", "idempotency_key": "k-1",
        "body": {"model": LLM, "messages": [{"role": "user", "content": "two"}]}});
    let (status, v) = post(&app, "/v1/jobs", &other).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a reused key with another body is refused: {v}"
    );
    assert_eq!(v["error"]["param"], "idempotency_key", "{v}");
}

#[tokio::test]
async fn counts_that_drive_upstream_cost_have_bounds() {
    // Regression (issue 27.4): `n: 100000` and `max_tokens: 1e9` were passed upstream unbounded.
    let built = simulated(|_| {}).await;
    let app = im_http_api::router(built.state.clone());
    let chat = |extra: Value| {
        let mut b = json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        ("/v1/chat/completions", chat(json!({"n": 100000})), "n"),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1_000_000_000u64})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 1_000_000_000u64})),
            "max_completion_tokens",
        ),
        (
            "/txt2txt",
            chat(json!({"max_tokens": 1_000_000_000u64})),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": LLM, "prompt": "hi", "max_tokens": 1e9}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": LLM, "prompt": "hi", "n": 100000}),
            "n",
        ),
    ];
    for (path, body, field) in cases {
        let (status, v) = post(&app, path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {field}: {v}");
        assert_eq!(v["error"]["param"], field, "{path}: {v}");
    }
    // Within the bounds: served.
    let (status, v) = post(
        &app,
        "/v1/chat/completions",
        &chat(json!({"n": 2, "max_tokens": 8})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// A job store whose every call waits while the gate is closed: a slow disk, a stalled Redis.
struct GatedStore {
    inner: im_jobs::RedbStore,
    open: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
    /// Calls that came to the gate, open or shut.
    calls: std::sync::atomic::AtomicUsize,
}

impl GatedStore {
    fn wait(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.changed.wait(open).expect("wait");
        }
    }

    fn set(&self, open: bool) {
        *self.open.lock().expect("lock") = open;
        self.changed.notify_all();
    }
}

macro_rules! gated {
    ($($name:ident($($arg:ident: $t:ty),*) -> $ret:ty;)*) => {
        impl im_jobs::JobStore for GatedStore {
            $(fn $name(&self, $($arg: $t),*) -> Result<$ret, im_jobs::StoreError> {
                self.wait();
                self.inner.$name($($arg),*)
            })*
        }
    };
}

gated! {
    put(job: &im_jobs::Job) -> ();
    get(id: &str) -> Option<im_jobs::Job>;
    all() -> Vec<im_jobs::Job>;
    page(owner: Option<&str>, cursor: Option<&str>, limit: usize) -> Vec<im_jobs::Job>;
    usage(owner: &str) -> (usize, u64);
    finished_before(before_ms: i64, limit: usize) -> Vec<im_jobs::Job>;
    remove(job: &im_jobs::Job) -> ();
    insert_idempotent(job: &im_jobs::Job) -> im_jobs::Job;
    first_sighting(message_id: &str, now_ms: i64) -> bool;
    sighted(message_id: &str) -> bool;
    forget_sightings(before_ms: i64) -> ();
    disable_endpoint(url: &str) -> ();
    endpoint_disabled(url: &str) -> bool;
    put_result(name: &str, bytes: &[u8]) -> ();
    result(name: &str) -> Option<Vec<u8>>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_job_store_does_not_stall_requests_that_need_no_store() {
    // Regression (issue 27.5): store calls ran on the runtime's workers, so a slow disk or Redis
    // stalled every request.
    let scratch = im_testkit::scratch_dir("im-edge-gated");
    let dir = scratch.path();
    let store = Arc::new(GatedStore {
        inner: im_jobs::RedbStore::open(dir).expect("store"),
        open: std::sync::Mutex::new(true),
        changed: std::sync::Condvar::new(),
        calls: Default::default(),
    });
    let (_sim, _engine, app) = stack(1 << 30, store.clone()).await;
    store.set(false);
    // A watchdog on its own thread (the runtime's timers need a free worker): if the chat is not
    // served within 10 s, it opens the store and says so.
    let (served, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let store = store.clone();
        std::thread::spawn(move || {
            let stalled = watched.recv_timeout(Duration::from_secs(10)).is_err();
            store.set(true);
            stalled
        })
    };
    // More job submissions than the runtime has workers, each stuck in the store.
    let before = store.calls.load(std::sync::atomic::Ordering::SeqCst);
    let mut stuck = Vec::new();
    for i in 0..4 {
        let app = app.clone();
        let body = json!({"kind": "txt2txt", "body": {"model": LLM, "messages": [{"role": "user", "content": format!("job {i}")}]}});
        stuck.push(tokio::spawn(
            async move { post(&app, "/v1/jobs", &body).await },
        ));
    }
    im_testkit::eventually(
        "four submissions at the shut store",
        Duration::from_secs(20),
        || async { store.calls.load(std::sync::atomic::Ordering::SeqCst) >= before + 4 },
    )
    .await;
    let chat = json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = post(&app, "/v1/chat/completions", &chat).await;
    let _ = served.send(());
    store.set(true);
    assert_eq!(status, StatusCode::OK, "{v}");
    for s in stuck {
        let (status, v) = s.await.expect("task");
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    }
    let stalled = watchdog.join().expect("watchdog");
    assert!(!stalled, "a chat is served while the store is stalled");
}
