//! A fleet end to end: im in front of three simulated LocalAI servers under a mixed load. One
//! server's network dies mid-run (its connections reset, new ones refused) and comes back later:
//! every request is answered (none lost, none hanging), the work moves to the other servers, the
//! server rejoins, and no server ever has two models competing for its memory.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::{ImConfig, ModelEntry};
use im_app::{self as app, DEMO_KEY};
use localai_sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";

/// A TCP relay in front of a simulator that can fail like a dead machine: `cut` resets every
/// connection and stops listening; `restore` listens on the same address again.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut relay = Relay {
            addr,
            upstream,
            tasks: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// The machine dies: listener and every connection go at once.
    async fn cut(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    /// It comes back on the same address.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn body_for(i: usize) -> (&'static str, Value) {
    match i % 4 {
        0 | 1 => (
            "/v1/chat/completions",
            json!({"model": LLM, "messages": [{"role": "user", "content": format!("question {i}")}], "max_tokens": 4}),
        ),
        2 => (
            "/txt2img",
            json!({"model": SD, "prompt": format!("picture {i}"), "width": 64, "height": 64, "steps": 2}),
        ),
        _ => (
            "/txt2txt",
            json!({"model": VLM, "messages": [{"role": "user", "content": "describe"}], "max_tokens": 4}),
        ),
    }
}

async fn call(app: &axum::Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let (status, _, bytes) = common::post_json(app, path, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Fire `n` requests from `from`, staggered, and collect every answer.
async fn load(app: &axum::Router, from: usize, n: usize) -> Vec<(StatusCode, Value)> {
    let mut set = JoinSet::new();
    for i in from..from + n {
        let app = app.clone();
        set.spawn(async move {
            // Arrivals spread over time are the load under test, not a wait for an event.
            tokio::time::sleep(Duration::from_millis((i - from) as u64 * 3)).await;
            let (path, body) = body_for(i);
            tokio::time::timeout(Duration::from_secs(60), call(&app, path, &body))
                .await
                .expect("an answer within the test's patience: nothing hangs")
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dies_mid_run_its_work_moves_and_it_rejoins() {
    let mut sims = Vec::new();
    let mut relays = Vec::new();
    for seed in 0..3 {
        let sim = SimServer::start(SimConfig {
            time_scale: 0.005,
            seed,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        relays.push(Relay::start(sim.addr()).await);
        sims.push(sim);
    }
    let mut cfg = ImConfig::default();
    cfg.upstreams = relays.iter().map(|r| r.url().into()).collect();
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.models = [
        (LLM, vec!["txt2txt"], 4),
        (VLM, vec!["img2txt", "txt2txt"], 2),
        (SD, vec!["txt2img", "img2img"], 1),
    ]
    .into_iter()
    .map(|(name, kinds, slots)| ModelEntry {
        name: name.into(),
        kinds: kinds.into_iter().map(str::to_owned).collect(),
        max_in_flight: Some(slots),
        ..Default::default()
    })
    .collect();
    cfg.retry.base_ms = 5;
    cfg.retry.cap_ms = 50;
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cooldown_s = 0.5;
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());

    // A mixed load; lane 1's server dies while it runs.
    let first = {
        let app = app.clone();
        tokio::spawn(async move { load(&app, 0, 120).await })
    };
    im_testkit::eventually(
        "lane 1 serving the load",
        Duration::from_secs(20),
        || async { sims[1].state().stats().requests_total > 0 },
    )
    .await;
    relays[1].cut().await;
    let mut answers = first.await.expect("load");
    answers.extend(load(&app, 120, 60).await);
    let served_while_down: Vec<u64> = sims
        .iter()
        .map(|s| s.state().stats().requests_total)
        .collect();

    // Back on the same address: after the breaker's cooldown it takes work again.
    relays[1].restore().await;
    // The breaker's cooldown (0.5 s) passing is under test: only then may it take work again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = sims[1].state().stats().requests_total;
    // Enough image work at once that affinity puts the model on a second server too.
    let mut set = JoinSet::new();
    for i in 0..80 {
        let app = app.clone();
        set.spawn(async move {
            let body = json!({"model": SD, "prompt": format!("after {i}"), "width": 64, "height": 64, "steps": 2});
            call(&app, "/txt2img", &body).await
        });
    }
    while let Some(r) = set.join_next().await {
        answers.push(r.expect("task"));
    }

    let failed: Vec<&(StatusCode, Value)> =
        answers.iter().filter(|(s, _)| !s.is_success()).collect();
    for (s, v) in &failed {
        assert!(
            v["error"]["type"].is_string(),
            "a failure is an explicit error, got {s}: {v}"
        );
    }
    assert!(
        failed.is_empty(),
        "with two servers left every request is served (retried elsewhere): {} failed, first {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(answers.len(), 260, "every request answered");
    assert!(
        sims[0].state().stats().requests_total + sims[2].state().stats().requests_total > 0,
        "the others served: {served_while_down:?}"
    );
    assert!(
        sims[1].state().stats().requests_total > before,
        "the server rejoined and took work ({before} before)"
    );
    for (i, s) in sims.iter().enumerate() {
        assert_eq!(s.state().stats().overcommits, 0, "server {i} overcommitted");
    }
    let st = built.engine.status().await.expect("running");
    assert_eq!(
        (
            st.counters.completed,
            st.counters.failed,
            st.counters.expired
        ),
        (260, 0, 0),
        "the core's count agrees: {:?}",
        st.counters
    );
    let (ready, body) = built.service.readiness(true).await;
    assert!(ready, "every lane ready again: {body}");
}

#[tokio::test]
async fn status_reports_each_backend() {
    // Two servers: one healthy, one dropping every connection mid-answer (a fault that blames the
    // server, so its breaker counts it).
    let good = SimServer::start(SimConfig {
        time_scale: 0.001,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let bad = SimServer::start(SimConfig {
        time_scale: 0.001,
        faults: localai_sim::Faults {
            drop_connection: 1.0,
            ..localai_sim::Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![
        im_app::config::UpstreamEntry::Table(im_app::config::UpstreamTable {
            url: good.url(),
            name: Some("good".into()),
            ..Default::default()
        }),
        im_app::config::UpstreamEntry::Table(im_app::config::UpstreamTable {
            url: bad.url(),
            name: Some("bad".into()),
            ..Default::default()
        }),
    ];
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    cfg.retry.max_retries = 6;
    // The failing server's breaker opens after two failures; retries then go to the other.
    cfg.breaker.failure_threshold = 2;
    cfg.routing.strategy = im_app::config::Strategy::LeastLoaded;
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());
    let mut set = JoinSet::new();
    for i in 0..24 {
        let app = app.clone();
        set.spawn(async move {
            let (path, body) = body_for(i);
            call(&app, path, &body).await
        });
    }
    while let Some(r) = set.join_next().await {
        let (s, v) = r.expect("task");
        assert!(s.is_success(), "retried onto the good server: {s} {v}");
    }
    let req = Request::get("/status")
        .header("x-api-key", DEMO_KEY)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
    let backends = v["backends"].as_array().expect("backends");
    let by = |name: &str| {
        backends
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
            .clone()
    };
    let (g, b) = (by("good"), by("bad"));
    assert_eq!(g["success_rate"], 1.0, "{g}");
    assert!(g["requests"].as_u64().is_some_and(|n| n >= 24), "{g}");
    assert!(
        g["avg_latency_ms"].as_f64().is_some() && g["p95_latency_ms"].as_f64().is_some(),
        "{g}"
    );
    assert!(
        !g["loaded_models"].as_array().expect("list").is_empty(),
        "{g}"
    );
    assert!(b["requests"].as_u64().is_some_and(|n| n >= 1), "{b}");
    assert_eq!(b["success_rate"], 0.0, "every attempt there failed: {b}");
    assert_ne!(b["health"], "healthy", "its breaker opened: {b}");
    assert_eq!(v["queue_size"], 0);

    // Placements by outcome, per lane, in the Prometheus text.
    let req = Request::get("/metrics")
        .header("x-api-key", DEMO_KEY)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let placed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("im_placements_total{") && l.contains("lane=\"good\""))
        .collect();
    assert!(!placed.is_empty(), "placements on the good lane: {text}");
    assert!(
        placed.iter().any(|l| l.contains("outcome=\"cold_load\"")),
        "its first model was a cold load: {placed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_churning_through_new_addresses_keep_the_lane_table_bounded() {
    // Issue 31: a dns+ upstream whose name (a hosts file the test writes) resolves to one
    // steady pod and one or two others that come and go, each time on a new address, 500
    // times. New addresses take freed lanes: the scheduler never has more than three.
    let steady = SimServer::spawn(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 2], 0)),
    )
    .await
    .expect("sim");
    let port = steady.addr().port();
    let scratch = im_testkit::scratch_dir("im-dns-churn");
    let hosts = scratch.path().join("hosts");
    let write = |ips: &[String]| {
        let lines: String = ips.iter().map(|ip| format!("{ip} pods.test\n")).collect();
        std::fs::write(&hosts, lines).expect("hosts file");
    };
    write(&["127.0.0.2".to_owned()]);
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![format!("dns+http://pods.test:{port}").into()];
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.discovery.refresh_s = 0.0;
    cfg.discovery.hosts_file = Some(hosts.display().to_string());
    cfg.jobs.enabled = false;
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());
    let chat =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let mut most = 0;
    for cycle in 0..500u32 {
        // Nobody listens on the churning addresses: each is a lane that is down.
        let churn = 1 + cycle % 2;
        let mut ips = vec!["127.0.0.2".to_owned()];
        ips.extend((0..churn).map(|p| format!("127.1.{}.{}", cycle % 250, 10 + p)));
        write(&ips);
        built.fleet.refresh().await;
        let lanes = built.engine.config().lanes.len();
        most = most.max(lanes);
        assert!(lanes <= 3, "cycle {cycle}: {lanes} lanes");
        if cycle % 100 == 0 {
            assert_eq!(call(&app, "/v1/chat/completions", &chat).await.0, 200);
        }
    }
    assert_eq!(most, 3, "the steady pod and at most two others at once");
}
