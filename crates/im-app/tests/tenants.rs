//! Tenants (issue 30): what one key may do and see is the same whichever way it comes in (HTTP,
//! WebSocket, MCP, a job), and no tenant reads or slows another's work. Each reproduction of the
//! issue is a test here.

mod common;

use common::{mcp, tool};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use im_app::config::{ImConfig, KeyEntry};
use im_app::{self as app, Built, Simulate};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LLM: &str = "llama-3.2-3b-instruct";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(k: &str, scopes: &[&str], per_s: Option<u32>) -> KeyEntry {
    KeyEntry {
        key: k.into(),
        scopes: scopes
            .iter()
            .map(|s| serde_json::from_value(json!(s)).expect("scope"))
            .collect(),
        rate_limit_per_s: per_s,
        rate_limit_burst: per_s.map(|_| 1),
        tenant: None,
    }
}

/// im with `f` applied to its configuration (keys `k1` and `k2`, ordinary, unless `f` says
/// otherwise), over a socket with MCP mounted; its base URL.
async fn serve(f: impl FnOnce(&mut ImConfig)) -> (String, Built) {
    let mut cfg = ImConfig::default();
    cfg.keys = vec![
        key("k1", &["infer", "metrics"], None),
        key("k2", &["infer", "metrics"], None),
    ];
    f(&mut cfg);
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let url = common::listen(&built).await;
    (url, built)
}

/// Tenants `team-a` (key k1) and `team-b` (key k2).
fn two_teams(c: &mut ImConfig) {
    c.tenants = ["team-a", "team-b"]
        .iter()
        .map(|n| im_app::config::TenantEntry {
            name: (*n).into(),
            ..Default::default()
        })
        .collect();
    c.keys[0].tenant = Some("team-a".into());
    c.keys[1].tenant = Some("team-b".into());
}

async fn ws(url: &str, k: &str) -> Socket {
    let mut req = format!("{}/ws/tenant", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", k.parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON message (the close frame as `{"close": code}`; a dropped socket as
/// `{"close": null}`), or `None` when nothing came `within`.
async fn next_within(ws: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(f))) => {
                return Some(json!({"close": f.map(|f| u16::from(f.code))}));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Some(json!({"close": null})),
        }
    }
}

async fn post(url: &str, k: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("x-api-key", k)
        .json(body)
        .send()
        .await
        .expect("answered");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, k: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("x-api-key", k)
        .send()
        .await
        .expect("answered");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn chat(content: &str) -> Value {
    json!({"model": LLM, "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_is_held_to_its_keys_rate_limit() {
    // Regression (issue 30): a key limited to 1 request/s got 1 of 10 HTTP chats through, and
    // all 20 of a WebSocket session's.
    let (url, _built) = serve(|c| c.keys.push(key("slow", &["infer"], Some(1)))).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(
            post(
                &url,
                "slow",
                "/v1/chat/completions",
                &chat(&format!("h{i}")),
            )
            .await
            .0,
        );
    }
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 8,
        "HTTP holds it: {statuses:?}"
    );
    let mut s = ws(&url, "slow").await;
    for i in 0..20 {
        send(
            &mut s,
            json!({"type": "inference", "id": i, "model": LLM, "inputs": format!("w{i}")}),
        )
        .await;
    }
    let (mut served, mut limited) = (0, 0);
    while served + limited < 20 {
        let Some(m) = next_within(&mut s, Duration::from_secs(10)).await else {
            break;
        };
        match m["type"].as_str() {
            Some("result") => served += 1,
            Some("error") if m["error"]["type"] == "rate_limited" => limited += 1,
            _ => {}
        }
    }
    assert!(
        served <= 2 && limited >= 18,
        "a WebSocket session is held to its rate limit: {served} served, {limited} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infer_only_key_reads_no_metrics_over_websocket_or_mcp() {
    // Regression (issue 30): 403 on /get_error_metrics and /queue-status over HTTP, but the
    // same views through a WebSocket subscription and the MCP tools.
    let (url, _built) = serve(|c| c.keys.push(key("infer-only", &["infer"], None))).await;
    assert_eq!(get(&url, "infer-only", "/get_error_metrics").await.0, 403);
    assert_eq!(get(&url, "infer-only", "/queue-status").await.0, 403);
    let mut s = ws(&url, "infer-only").await;
    send(
        &mut s,
        json!({"type": "subscribe", "topics": ["errors", "queue"]}),
    )
    .await;
    let answer = next_within(&mut s, Duration::from_secs(5)).await;
    let ws_refused = answer
        .as_ref()
        .is_some_and(|m| m["type"] == "error" && m["error"]["type"] == "forbidden");
    let c = mcp(&url, "infer-only").await;
    let mut mcp_refused = Vec::new();
    for name in ["get_error_metrics", "queue_status"] {
        let (is_error, text) = tool(&c, name, json!({})).await;
        mcp_refused.push(is_error && text.contains("forbidden"));
    }
    assert!(
        ws_refused && mcp_refused.iter().all(|r| *r),
        "the views are refused over WebSocket and MCP: {answer:?}, {mcp_refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_websocket_session_is_closed() {
    // Regression (issue 30): reloading a configuration without k2 left k2's open WebSocket
    // running inference.
    let (url, built) = serve(|_| {}).await;
    let mut s = ws(&url, "k2").await;
    send(&mut s, json!({"type": "ping"})).await;
    assert_eq!(
        next_within(&mut s, Duration::from_secs(5))
            .await
            .expect("pong")["type"],
        "pong"
    );
    // What a reload that drops k2 does to the keys.
    let mut kept = built.config.clone();
    kept.keys.retain(|k| k.key != "k2");
    built
        .service
        .set_keys(&kept.key_specs(), (0, 1), &kept.tenant_specs());
    let revoked = Instant::now();
    send(
        &mut s,
        json!({"type": "inference", "id": 1, "model": LLM, "inputs": "still here?"}),
    )
    .await;
    let mut closed = false;
    while let Some(m) = next_within(&mut s, Duration::from_secs(2)).await {
        if m.get("close").is_some() {
            closed = revoked.elapsed() < Duration::from_millis(1500);
            break;
        }
    }
    assert!(closed, "the session is closed once its key is revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_cache_answers_no_tenant_with_anothers_answer() {
    // Regression (issue 30): with the cache on, k2 sending k1's temperature-0 chat got k1's
    // answer (its id, in a millisecond): any tenant could test what another asked.
    let (url, _built) = serve(|c| c.cache.models = vec![LLM.into()]).await;
    let (s1, a1) = post(&url, "k1", "/v1/chat/completions", &chat("my secret plan")).await;
    let (s2, a2) = post(&url, "k2", "/v1/chat/completions", &chat("my secret plan")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_ne!(a1["id"], a2["id"], "k2 got another tenant's answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_key_sees_no_other_tenants_details_in_any_view() {
    // Regression (issue 30): every key had the `metrics` scope, and with it the last 100
    // errors of every tenant. Now a key with `infer` and `metrics` reads aggregate counts and
    // its own tenant's details, over every transport.
    let (url, _built) = serve(|c| {
        two_teams(c);
    })
    .await;
    let secret =
        json!({"model": "project-nightingale-7b", "messages": [{"role": "user", "content": "x"}]});
    for body in [secret, chat("hello")] {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("x-api-key", "k1")
            .header("x-request-id", "req-of-team-a")
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert!(r.status().as_u16() < 500);
    }

    let mut views: Vec<(String, String)> = Vec::new();
    for path in [
        "/get_error_metrics",
        "/get_request_metrics",
        "/queue-status",
        "/status",
        "/metrics",
        &format!("/placement?kind=txt2txt&model={LLM}"),
    ] {
        let (status, text) = get(&url, "k2", path).await;
        assert_eq!(status, 200, "{path}");
        views.push((format!("HTTP {path}"), text));
    }
    let mut s = ws(&url, "k2").await;
    send(&mut s, json!({"type": "status"})).await;
    let topics = [
        "queue", "lanes", "requests", "timeline", "errors", "tenants",
    ];
    send(&mut s, json!({"type": "subscribe", "topics": topics})).await;
    let mut unseen: std::collections::BTreeSet<&str> = topics.into();
    let mut status_seen = false;
    while !unseen.is_empty() || !status_seen {
        let m = next_within(&mut s, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no update for {unseen:?}"));
        status_seen |= m["type"] == "status";
        unseen.remove(m["topic"].as_str().unwrap_or_default());
        views.push((format!("WebSocket {}", m["type"]), m.to_string()));
    }
    let c = mcp(&url, "k2").await;
    for (name, args) in [
        ("get_error_metrics", json!({})),
        ("get_request_metrics", json!({})),
        ("queue_status", json!({})),
        ("list_inference_backends", json!({})),
        ("get_backend_status", json!({"name": "default"})),
        (
            "select_backend_for_inference",
            json!({"task": "txt2txt", "model": LLM}),
        ),
    ] {
        views.push((format!("MCP {name}"), tool(&c, name, args).await.1));
    }
    for (how, view) in &views {
        for theirs in ["nightingale", "req-of-team-a", "team-a"] {
            assert!(
                !view.contains(theirs),
                "k2 reads {theirs:?} over {how}: {view}"
            );
        }
    }
}

/// A job store that counts the jobs it reads.
struct Counting {
    inner: im_jobs::RedbStore,
    read: AtomicUsize,
}

impl Counting {
    fn counted<T>(&self, n: usize, v: T) -> T {
        self.read.fetch_add(n, Ordering::SeqCst);
        v
    }
}

impl im_jobs::JobStore for Counting {
    fn put(&self, job: &im_jobs::Job) -> Result<(), im_jobs::StoreError> {
        self.inner.put(job)
    }
    fn get(&self, id: &str) -> Result<Option<im_jobs::Job>, im_jobs::StoreError> {
        let j = self.inner.get(id)?;
        Ok(self.counted(usize::from(j.is_some()), j))
    }
    fn all(&self) -> Result<Vec<im_jobs::Job>, im_jobs::StoreError> {
        let all = self.inner.all()?;
        Ok(self.counted(all.len(), all))
    }
    fn page(
        &self,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<im_jobs::Job>, im_jobs::StoreError> {
        let page = self.inner.page(owner, cursor, limit)?;
        Ok(self.counted(page.len(), page))
    }
    fn usage(&self, owner: &str) -> Result<(usize, u64), im_jobs::StoreError> {
        self.inner.usage(owner)
    }
    fn finished_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<im_jobs::Job>, im_jobs::StoreError> {
        let old = self.inner.finished_before(before_ms, limit)?;
        Ok(self.counted(old.len(), old))
    }
    fn remove(&self, job: &im_jobs::Job) -> Result<(), im_jobs::StoreError> {
        self.inner.remove(job)
    }
    fn insert_idempotent(&self, job: &im_jobs::Job) -> Result<im_jobs::Job, im_jobs::StoreError> {
        self.inner.insert_idempotent(job)
    }
    fn first_sighting(&self, id: &str, now_ms: i64) -> Result<bool, im_jobs::StoreError> {
        self.inner.first_sighting(id, now_ms)
    }
    fn sighted(&self, id: &str) -> Result<bool, im_jobs::StoreError> {
        self.inner.sighted(id)
    }
    fn forget_sightings(&self, before_ms: i64) -> Result<(), im_jobs::StoreError> {
        self.inner.forget_sightings(before_ms)
    }
    fn disable_endpoint(&self, url: &str) -> Result<(), im_jobs::StoreError> {
        self.inner.disable_endpoint(url)
    }
    fn endpoint_disabled(&self, url: &str) -> Result<bool, im_jobs::StoreError> {
        self.inner.endpoint_disabled(url)
    }
    fn put_result(&self, name: &str, bytes: &[u8]) -> Result<(), im_jobs::StoreError> {
        self.inner.put_result(name, bytes)
    }
    fn result(&self, name: &str) -> Result<Option<Vec<u8>>, im_jobs::StoreError> {
        self.inner.result(name)
    }
}

/// im with its jobs in `store`, over a socket; its base URL.
async fn serve_jobs(
    store: Arc<dyn im_jobs::JobStore>,
    f: impl FnOnce(&mut ImConfig),
) -> (String, Built) {
    let (url, built) = serve(|c| {
        c.jobs.allow_private_callbacks = true;
        f(c)
    })
    .await;
    drop(url);
    let settings = built
        .config
        .jobs
        .settings(im_jobs::Secret::parse(&im_jobs::Secret::generate()).expect("secret"))
        .expect("settings");
    let runner = Arc::new(im_app::jobs::ServiceRunner(built.service.clone()));
    let jobs = im_jobs::Jobs::start(store, runner, settings, built.engine.metrics().clone())
        .expect("jobs");
    let state = im_http_api::AppState::with_jobs(built.service.clone(), jobs);
    let router = im_http_api::router(state);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, router).await });
    (url, built)
}

async fn settled(url: &str, k: &str, id: &str) -> Value {
    im_testkit::until(
        &format!("job {id} to end"),
        Duration::from_secs(30),
        || async {
            let (_, text) = get(url, k, &format!("/v1/jobs/{id}")).await;
            let v: Value = serde_json::from_str(&text).ok()?;
            ["succeeded", "failed", "cancelled"]
                .contains(&v["status"].as_str().unwrap_or(""))
                .then_some(v)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_page_of_jobs_reads_only_that_page() {
    // Regression (issue 30): every `GET /v1/jobs` of any key loaded every tenant's jobs.
    let scratch = im_testkit::scratch_dir("im-tenants-listing");
    let dir = scratch.path();
    let store = Arc::new(Counting {
        inner: im_jobs::RedbStore::open(dir).expect("store"),
        read: AtomicUsize::new(0),
    });
    let (url, _built) = serve_jobs(store.clone(), |_| {}).await;
    let mut last = String::new();
    for i in 0..60 {
        let (status, v) = post(
            &url,
            "k1",
            "/v1/jobs",
            &json!({"route": "/v1/chat/completions", "body": chat(&format!("j{i}"))}),
        )
        .await;
        assert_eq!(status, 202, "{v}");
        last = v["id"].as_str().expect("id").to_owned();
    }
    settled(&url, "k1", &last).await;
    let mut mine = String::new();
    for i in 0..12 {
        let (_, v) = post(
            &url,
            "k2",
            "/v1/jobs",
            &json!({"route": "/v1/chat/completions", "body": chat(&format!("mine {i}"))}),
        )
        .await;
        mine = v["id"].as_str().expect("id").to_owned();
    }
    // Every job ran (the runner's own reads are not the listing's).
    settled(&url, "k2", &mine).await;
    let before = store.read.load(Ordering::SeqCst);
    let (status, page) = get(&url, "k2", "/v1/jobs?limit=10").await;
    let read = store.read.load(Ordering::SeqCst) - before;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).expect("JSON");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(10), "{page}");
    assert!(
        read <= 11,
        "a page of 10 reads every tenant's jobs: {read} read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_fill_the_job_store() {
    // Regression (issue 30): one key stored 50 jobs of 4 MiB (409 MB on disk for a day).
    let scratch = im_testkit::scratch_dir("im-tenants-quota");
    let dir = scratch.path();
    let store = Arc::new(im_jobs::RedbStore::open(dir).expect("store"));
    let (url, _built) = serve_jobs(store, |c| c.http.body_limit_bytes = 8 << 20).await;
    let big = "x".repeat(4 << 20);
    let mut refused = None;
    for i in 0..40 {
        let body = json!({"model": "bge-small-en-v1.5", "input": [format!("{i}"), big]});
        let (status, v) = post(
            &url,
            "k1",
            "/v1/jobs",
            &json!({"route": "/v1/embeddings", "body": body}),
        )
        .await;
        if status == 429 {
            refused = Some((i, v));
            break;
        }
        assert_eq!(status, 202, "{v}");
    }
    let (at, why) = refused.expect("no quota: 40 jobs of 4 MiB were all stored");
    assert!(
        at < 40
            && why["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("quota")),
        "{why}"
    );
}

/// A webhook receiver answering after `delay`; the times deliveries arrived.
async fn receiver(delay: Duration) -> (String, Arc<std::sync::Mutex<Vec<Instant>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let s = s.clone();
            async move {
                s.lock().expect("lock").push(Instant::now());
                // A slow receiver is under test.
                tokio::time::sleep(delay).await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_receiver_delays_only_its_own_deliveries() {
    // Regression (issue 30): three jobs whose receiver took 7 s delayed another tenant's fast
    // receiver by 6.5-14 s.
    let scratch = im_testkit::scratch_dir("im-tenants-hol");
    let dir = scratch.path();
    let store = Arc::new(im_jobs::RedbStore::open(dir).expect("store"));
    let (url, _built) = serve_jobs(store, |_| {}).await;
    let (slow, _) = receiver(Duration::from_secs(4)).await;
    let (fast, fast_seen) = receiver(Duration::ZERO).await;
    for i in 0..3 {
        let (status, v) = post(&url, "k1", "/v1/jobs", &json!({"route": "/v1/chat/completions", "body": chat(&format!("slow {i}")), "callback_url": slow})).await;
        assert_eq!(status, 202, "{v}");
    }
    let (_, v) = post(
        &url,
        "k2",
        "/v1/jobs",
        &json!({"route": "/v1/chat/completions", "body": chat("fast"), "callback_url": fast}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_owned();
    let done = settled(&url, "k2", &id).await;
    let finished = Instant::now();
    assert_eq!(done["status"], "succeeded", "{done}");
    let arrived = im_testkit::until("the fast delivery", Duration::from_secs(30), || {
        std::future::ready(fast_seen.lock().expect("lock").first().copied())
    })
    .await;
    let late = arrived.saturating_duration_since(finished);
    assert!(
        late < Duration::from_secs(2),
        "the fast receiver waited for another tenant's slow receiver: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_cache_allows_is_not_kept() {
    // Regression (issue 30): the cache had no byte bound: five distinct 100,000-input
    // embedding calls cost ~95 MB each, and 10,000 entries were allowed.
    const EMBED: &str = "bge-small-en-v1.5";
    let (url, _built) = serve(|c| c.cache.models = vec![EMBED.into()]).await;
    let inputs: Vec<String> = (0..20_000).map(|i| format!("text {i}")).collect();
    let body = json!({"model": EMBED, "input": inputs});
    let attempts = |r: &reqwest::Response| {
        r.headers()
            .get("x-attempts")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let c = reqwest::Client::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(format!("{url}/v1/embeddings"))
            .header("x-api-key", "k1")
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
        seen.push(attempts(&r));
    }
    assert_ne!(
        seen[1],
        Some(0),
        "a ~19 MB answer is kept past the cache's bound: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_queued_requests_leave_with_401_and_its_running_ones_finish() {
    let (url, built) = serve(|_| {}).await;
    let engine_status = || async { built.engine.status().await.expect("running") };
    // k2's image runs (it holds the only image slot a while); k2's chat for another model waits
    // for the lane.
    let image = json!({"model": "stablediffusion", "prompt": "p", "width": 8, "height": 8, "steps": 150, "n": 4});
    let running = tokio::spawn({
        let url = url.clone();
        async move { post(&url, "k2", "/txt2img", &image).await }
    });
    im_testkit::eventually("the image running", Duration::from_secs(20), || async {
        engine_status().await.in_flight == 1
    })
    .await;
    let queued = tokio::spawn({
        let url = url.clone();
        async move { post(&url, "k2", "/v1/chat/completions", &chat("waiting")).await }
    });
    im_testkit::eventually("the chat queued", Duration::from_secs(20), || async {
        engine_status().await.waiting == 1
    })
    .await;
    let mut kept = built.config.clone();
    kept.keys.retain(|k| k.key != "k2");
    built
        .service
        .set_keys(&kept.key_specs(), (0, 1), &kept.tenant_specs());
    let (status, v) = queued.await.expect("task");
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{v}"
    );
    let (status, v) = running.await.expect("task");
    assert_eq!(status, 200, "the running request finishes: {v}");
    assert_eq!(
        post(&url, "k2", "/v1/chat/completions", &chat("again"))
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_byte_bound_under_large_distinct_answers() {
    const EMBED: &str = "bge-small-en-v1.5";
    let (url, built) = serve(|c| {
        c.cache.models = vec![EMBED.into()];
        c.cache.max_mib = 1;
        c.cache.max_answer_kib = 512;
    })
    .await;
    let mut most = 0;
    for n in 0..20 {
        let inputs: Vec<String> = (0..200).map(|i| format!("call {n} text {i}")).collect();
        let (status, _) = post(
            &url,
            "k1",
            "/v1/embeddings",
            &json!({"model": EMBED, "input": inputs}),
        )
        .await;
        assert_eq!(status, 200);
        let held = built.service.cache_bytes();
        assert!(
            held <= 1 << 20,
            "{held} bytes kept past the 1 MiB bound after {n} answers"
        );
        most = most.max(held);
    }
    assert!(
        most > 256 << 10,
        "answers are kept up to the bound: at most {most} bytes were"
    );
}

/// The rows of the first `tenants` update `k` receives over a WebSocket subscription.
async fn tenant_rows(url: &str, k: &str) -> Vec<Value> {
    let mut s = ws(url, k).await;
    send(&mut s, json!({"type": "subscribe", "topics": ["tenants"]})).await;
    while let Some(m) = next_within(&mut s, Duration::from_secs(5)).await {
        if m["type"] == "update" && m["topic"] == "tenants" {
            return m["data"]["tenants"].as_array().cloned().unwrap_or_default();
        }
    }
    panic!("no tenants update for {k}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_its_own_figures_and_an_operator_sees_all() {
    let (url, _built) = serve(|c| {
        two_teams(c);
        let mut op = key("op", &["infer", "metrics", "operator"], None);
        op.tenant = Some("team-a".into());
        c.keys.push(op);
    })
    .await;
    for (k, n) in [("k1", 2), ("k2", 1)] {
        for i in 0..n {
            let (status, _) =
                post(&url, k, "/v1/chat/completions", &chat(&format!("{k} {i}"))).await;
            assert_eq!(status, 200);
        }
    }
    let unknown = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]});
    assert_ne!(
        post(&url, "k2", "/v1/chat/completions", &unknown).await.0,
        200
    );

    let own = tenant_rows(&url, "k2").await;
    assert_eq!(own.len(), 1, "k2 sees other tenants' figures: {own:?}");
    assert_eq!(own[0]["tenant"], "team-b");
    assert_eq!(
        (own[0]["requests"].as_u64(), own[0]["errors"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(own[0]["tokens"].as_u64().unwrap_or(0) > 0, "{own:?}");

    let all = tenant_rows(&url, "op").await;
    let names: Vec<&str> = all.iter().filter_map(|r| r["tenant"].as_str()).collect();
    assert_eq!(names, ["team-a", "team-b"]);
    assert_eq!(all[0]["requests"], 2);

    let (status, text) = get(&url, "op", "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"im_tenant_requests_total{tenant="team-a",outcome="ok"} 2"#,
        r#"im_tenant_requests_total{tenant="team-b",outcome="ok"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    assert!(text.contains(r#"im_tenant_tokens_total{tenant="team-b"}"#));
    assert!(
        text.contains(
            r#"im_tenant_queue_wait_seconds_count{tenant="team-a",class="interactive"} 2"#
        )
    );
    assert!(
        text.contains(r#"im_tenant_service_seconds_count{tenant="team-a",class="interactive"} 2"#)
    );
    assert!(
        text.contains(r#"im_tenant_in_flight{tenant="team-a"} 0"#),
        "all answered"
    );
    assert!(
        all[0]["served_s"].as_f64().is_some_and(|s| s > 0.0),
        "{all:?}"
    );

    let (status, text) = get(&url, "k2", "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains(r#"im_tenant_requests_total{tenant="team-b",outcome="ok"} 1"#));
    assert!(
        text.contains("im_requests_total"),
        "aggregates stay visible"
    );
    assert!(!text.contains("team-a"), "k2 reads team-a's series");
}
