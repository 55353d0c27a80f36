//! The engine against the simulated LocalAI, in-process and time-scaled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use common::{GONE, Scripted, UP};
use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{Bounds, Config, Kind, LaneId, ModelSpec};
use localai_client::{
    ChatRequest, ChatResponse, ChunkStream, ClientConfig, ClientError, Content, ImageRequest,
    ImagesResponse, LocalAiClient, Message, Role,
};
use localai_sim::{SimConfig, SimServer};
use serde_json::json;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";

fn models(llm_slots: u32) -> Vec<ModelSpec> {
    vec![
        ModelSpec::new(LLM, &[Kind::Txt2Txt], llm_slots),
        ModelSpec::new(VLM, &[Kind::Img2Txt, Kind::Txt2Txt], 2),
        ModelSpec::new(SD, &[Kind::Txt2Img, Kind::Img2Img], 1),
        ModelSpec::new("ghost", &[Kind::Txt2Txt], 1),
    ]
}

fn config(bounds: Bounds, llm_slots: u32) -> Config {
    let mut c = Config {
        bounds,
        models: models(llm_slots),
        ..Config::default()
    };
    c.retry.base = Duration::from_millis(2);
    c.retry.cap = Duration::from_millis(20);
    c.retry.max_retries = 6;
    c.breaker.failure_threshold = 50;
    c
}

async fn setup(sim_cfg: impl FnOnce(&mut SimConfig), cfg: Config) -> (SimServer, Engine) {
    let mut sc = SimConfig {
        time_scale: 0.001,
        ..SimConfig::default()
    };
    sim_cfg(&mut sc);
    let sim = SimServer::start(sc).await.expect("sim");
    let client = LocalAiClient::new(ClientConfig::new(sim.url())).expect("client");
    let engine = Engine::start(
        cfg,
        Arc::new(LocalAiBackend::new(vec![client])),
        Metrics::new(),
    )
    .expect("engine");
    (sim, engine)
}

fn png_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 3))
}

fn job(i: usize, kind: Kind) -> Job {
    let payload = match kind {
        Kind::Txt2Txt => chat(LLM, json!(format!("question {i}"))),
        Kind::Img2Txt => vision(chat(
            VLM,
            json!([{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": png_b64()}]),
        )),
        Kind::Txt2Img => images(None),
        Kind::Img2Img => images(Some(png_b64())),
        other => unreachable!("these tests use the seeds' kinds, not {other}"),
    };
    Job {
        request_id: format!("r{i}"),
        deadline: None,
        payload,
        owner: None,
        weight: 1,
        class: Default::default(),
        progress: None,
        prefix: None,
    }
}

fn vision(p: Payload) -> Payload {
    match p {
        Payload::Chat { req, stream, .. } => Payload::Chat {
            req,
            stream,
            kind: Kind::Img2Txt,
        },
        other => other,
    }
}

fn chat(model: &str, content: serde_json::Value) -> Payload {
    let req = ChatRequest {
        model: model.into(),
        messages: vec![
            Message::try_from(json!({"role": "user", "content": content})).expect("a message"),
        ],
        temperature: None,
        max_tokens: Some(4),
        extra: Default::default(),
    };
    Payload::Chat {
        req,
        stream: false,
        kind: Kind::Txt2Txt,
    }
}

fn images(file: Option<String>) -> Payload {
    Payload::Images(ImageRequest {
        model: SD.into(),
        prompt: "a fox".into(),
        width: 16,
        height: 16,
        steps: Some(2),
        file: file.map(Into::into),
        ..ImageRequest::default()
    })
}

const MIX: [Kind; 4] = [Kind::Txt2Txt, Kind::Txt2Img, Kind::Img2Img, Kind::Img2Txt];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_never_overcommits_and_loads_equal_switches() {
    let (sim, engine) = setup(|_| {}, config(Bounds::default(), 4)).await;
    let jobs = (0..80).map(|i| {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(i, MIX[i % 4])).await })
    });
    for h in futures_util::future::join_all(jobs).await {
        let done = h.expect("join").expect("every job succeeds");
        assert!(done.meta.attempts >= 1);
    }
    let stats = sim.state().stats();
    let status = engine.status().await.expect("running");
    assert_eq!(stats.overcommits, 0, "{stats:?}");
    assert_eq!(stats.peak_resident_models, 1);
    assert_eq!(
        stats.loads, status.counters.model_switches,
        "each model switch is exactly one load"
    );
    assert!(
        status.counters.model_switches < 20,
        "drain-before-switch batches work: {:?}",
        status.counters
    );
    assert_eq!((status.waiting, status.in_flight), (0, 0));
}

/// Wait until the engine's status satisfies `ok` (ordering by state, not by wall-clock sleeps).
async fn until(engine: &Engine, ok: impl Fn(&inference_queue::Status) -> bool) {
    loop {
        let s = engine.status().await.expect("running");
        if ok(&s) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Occupy the lane with one image job, queue `kinds` behind it, return their completion order.
async fn order_behind_a_busy_lane(bounds: Bounds, kinds: &[Kind]) -> Vec<Kind> {
    let (_sim, engine) = setup(|c| c.models[2].per_step_ms = 100_000.0, config(bounds, 1)).await;
    let first = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(0, Kind::Txt2Img)).await })
    };
    until(&engine, |s| s.in_flight == 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, k) in kinds.iter().enumerate() {
        let e = engine.clone();
        let tx = tx.clone();
        let k = *k;
        tokio::spawn(async move {
            e.submit(job(i + 1, k)).await.expect("ok");
            let _ = tx.send(k);
        });
        // Queued in this order: the next is submitted once this one waits in its queue.
        until(&engine, |s| s.waiting == i + 1).await;
    }
    drop(tx);
    first.await.expect("join").expect("first");
    let mut order = Vec::new();
    while let Some(k) = rx.recv().await {
        order.push(k);
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_priority_is_observable_in_dispatch_order() {
    let order = order_behind_a_busy_lane(
        Bounds::strict(),
        &[Kind::Img2Txt, Kind::Img2Img, Kind::Txt2Txt],
    )
    .await;
    assert_eq!(order, vec![Kind::Txt2Txt, Kind::Img2Img, Kind::Img2Txt]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_bounded_policies_differ() {
    let mut kinds = vec![Kind::Img2Txt];
    kinds.extend([Kind::Txt2Txt; 6]);
    let strict = order_behind_a_busy_lane(Bounds::strict(), &kinds).await;
    assert_eq!(
        strict.last(),
        Some(&Kind::Img2Txt),
        "strict drains every chat first: {strict:?}"
    );
    let bounded = Bounds {
        max_batch: Some(2),
        ..Bounds::strict()
    };
    let order = order_behind_a_busy_lane(bounded, &kinds).await;
    let pos = order
        .iter()
        .position(|k| *k == Kind::Img2Txt)
        .expect("served");
    assert!(
        pos < 6,
        "the batch bound lets vision in before the chats end: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_permanent_ones_are_not() {
    let (sim, engine) = setup(
        |c| {
            c.faults.error_503 = 0.15;
            c.faults.drop_connection = 0.10;
            c.faults.retry_after_secs = 0;
        },
        // 11 attempts at a 25 % fault rate: a job fails all of them with probability 2e-7.
        Config {
            retry: inference_queue::RetryPolicy {
                max_retries: 10,
                ..config(Bounds::default(), 4).retry
            },
            ..config(Bounds::default(), 4)
        },
    )
    .await;
    let jobs = (0..40).map(|i| {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(i, MIX[i % 4])).await })
    });
    let mut retried = 0;
    for h in futures_util::future::join_all(jobs).await {
        let done = h.expect("join").expect("retries hide transient faults");
        retried += usize::from(done.meta.attempts > 1);
    }
    assert!(retried > 0);
    let faults = sim.state().stats().faults;
    assert!(
        faults.get("error_503").copied().unwrap_or(0) > 0
            && faults.get("drop_connection").copied().unwrap_or(0) > 0
    );

    let ghost = Job {
        payload: chat("ghost", json!("hi")),
        ..job(99, Kind::Txt2Txt)
    };
    match engine.submit(ghost).await {
        Err(EngineError::Upstream { error, attempts: 1 }) => assert_eq!(error.status(), Some(404)),
        other => panic!("{other:?}"),
    }
}

/// On a paused clock: every wait below is virtual time, so the counts are exact on any machine.
#[tokio::test(start_paused = true)]
async fn the_breaker_opens_holds_the_queue_and_closes() {
    let flaky = Arc::new(Scripted::new([GONE, GONE]));
    let mut cfg = config(Bounds::default(), 4);
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown = Duration::from_secs(10);
    cfg.retry.max_retries = 100;
    let engine = Engine::start(cfg, flaky.clone(), Metrics::new()).expect("engine");
    let pending = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(1, Kind::Txt2Txt)).await })
    };
    // Three failures (retries 2-20 ms apart) open the breaker; then nothing is sent for 10 s
    // (virtual time).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = engine.status().await.expect("status");
    assert_eq!(st.lanes[0].breaker.as_str(), "open");
    assert_eq!(flaky.chats(0), 3, "no calls while open");
    let ready = engine.readiness().await;
    assert!(!ready[0].ready(), "readiness reports the open breaker");
    flaky.set(0, UP);
    let done = pending
        .await
        .expect("join")
        .expect("succeeds after the probe");
    assert_eq!(done.meta.attempts, 4, "one probe after the cooldown");
    assert_eq!(
        engine.status().await.expect("status").lanes[0]
            .breaker
            .as_str(),
        "closed"
    );
    assert!(engine.readiness().await[0].ready());
    let text = engine.metrics().render();
    assert!(text.contains("im_breaker_open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_jobs_with_cancels_deadlines_and_faults_all_get_one_answer() {
    let (sim, engine) = setup(
        |c| {
            c.time_scale = 0.0002;
            c.faults.error_503 = 0.05;
            c.faults.drop_connection = 0.05;
            c.faults.retry_after_secs = 0;
        },
        config(Bounds::default(), 4),
    )
    .await;
    let n = 2000usize;
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let e = engine.clone();
        let mut j = job(i, MIX[(i * 7) % 4]);
        if i % 5 == 0 {
            j.deadline = Some(Duration::from_millis(1 + (i % 13) as u64));
        }
        handles.push(tokio::spawn(async move {
            if i % 7 == 0 {
                // The caller goes away: dropping the future cancels the request.
                tokio::time::timeout(Duration::from_millis((i % 5) as u64), e.submit(j))
                    .await
                    .ok()
                    .map(|r| r.is_ok())
            } else {
                Some(e.submit(j).await.is_ok())
            }
        }));
    }
    let mut answered = 0;
    let mut dropped = 0;
    for h in handles {
        match h.await.expect("join") {
            Some(_) => answered += 1,
            None => dropped += 1,
        }
    }
    assert_eq!(answered + dropped, n);
    // Let cancellations land, then the books must balance.
    let st = im_testkit::until("the engine empty", Duration::from_secs(20), || async {
        let st = engine.status().await.expect("status");
        (st.waiting == 0 && st.in_flight == 0).then_some(st)
    })
    .await;
    let c = &st.counters;
    assert_eq!((st.waiting, st.in_flight), (0, 0));
    assert_eq!(c.accepted, n as u64);
    assert_eq!(
        c.completed + c.expired + c.cancelled + c.exhausted + c.failed,
        c.accepted,
        "count in == count out: {c:?}"
    );
    assert!(c.cancelled > 0 && c.expired > 0, "{c:?}");
    let total = engine.metrics().request_metrics()["total"]
        .as_u64()
        .expect("total");
    assert_eq!(total, n as u64, "every job recorded exactly once");
    let sim_requests = sim.state().stats().requests_total;
    // Every request the simulator saw was dispatched by the core (an attempt cancelled right after
    // its dispatch may never arrive): cancelled waiting jobs never reach the upstream.
    assert!(
        sim_requests <= c.dispatched,
        "{sim_requests} upstream requests > {} dispatched",
        c.dispatched
    );
    assert!(
        c.dispatched < c.accepted + c.retried,
        "cancelled and expired jobs were not dispatched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_work_queued_answers_every_job() {
    let (_sim, engine) = setup(|c| c.time_scale = 0.01, config(Bounds::default(), 4)).await;
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let e = engine.clone();
            tokio::spawn(async move { e.submit(job(i, MIX[i % 4])).await })
        })
        .collect();
    im_testkit::eventually("the 30 jobs queued", Duration::from_secs(20), || async {
        engine
            .status()
            .await
            .is_some_and(|s| s.counters.accepted == 30)
    })
    .await;
    engine.shutdown(Duration::from_millis(100)).await;
    let mut ok = 0;
    let mut shut = 0;
    for h in handles {
        match h.await.expect("join") {
            Ok(_) => ok += 1,
            Err(EngineError::ShuttingDown) => shut += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok + shut, 30);
    assert!(shut > 0, "the grace period was too short for all of them");
    assert!(matches!(
        engine.submit(job(99, Kind::Txt2Txt)).await,
        Err(EngineError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_text_parses_and_the_error_list_is_clean() {
    let (_sim, engine) = setup(|_| {}, config(Bounds::default(), 4)).await;
    for i in 0..8 {
        engine.submit(job(i, MIX[i % 4])).await.expect("ok");
    }
    let big = "QUJD".repeat(50_000);
    let bad = Job {
        payload: Payload::Chat {
            req: ChatRequest {
                model: "ghost".into(),
                messages: vec![Message {
                    role: Role::User,
                    content: Content::Parts(vec![
                        json!({"type": "image_url", "image_url": big.clone()}),
                    ]),
                }],
                temperature: None,
                max_tokens: None,
                extra: [("api_key".to_owned(), json!("sk-secret"))]
                    .into_iter()
                    .collect(),
            },
            stream: false,
            kind: Kind::Txt2Txt,
        },
        ..job(100, Kind::Txt2Txt)
    };
    assert!(engine.submit(bad).await.is_err());
    let unknown = Job {
        payload: chat("nope", json!("hi")),
        ..job(101, Kind::Txt2Txt)
    };
    assert!(matches!(
        engine.submit(unknown).await,
        Err(EngineError::UnknownModel { .. })
    ));
    const NAMES: [&str; 10] = [
        "im_requests_total",
        "im_queue_depth",
        "im_queue_wait_seconds",
        "im_processing_seconds",
        "im_in_flight",
        "im_switches_total",
        "im_switch_seconds",
        "im_rejections_total",
        "im_upstream_errors_total",
        "im_breaker_open",
    ];
    let missing = || {
        let text = engine.metrics().render();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("valid text format");
        NAMES
            .into_iter()
            .filter(|name| {
                !scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == *name || s.metric.starts_with(&format!("{name}_")))
            })
            .collect::<Vec<_>>()
    };
    // The gauges come with the engine's upkeep tick (once a second).
    im_testkit::eventually("every metric exported", Duration::from_secs(20), || async {
        missing().is_empty()
    })
    .await;
    let errors = engine.metrics().error_metrics().to_string();
    assert!(
        !errors.contains(&big[..64]) && !errors.contains("sk-secret"),
        "payload or key leaked"
    );
    assert!(errors.contains("<base64: 200000 bytes>"));
}

/// A backend whose calls never return: work stays in flight, the rest stays queued.
struct Hang;

#[async_trait]
impl Backend for Hang {
    async fn chat(&self, _: LaneId, _: &ChatRequest) -> Result<ChatResponse, ClientError> {
        std::future::pending().await
    }
    async fn chat_stream(&self, _: LaneId, _: &ChatRequest) -> Result<ChunkStream, ClientError> {
        std::future::pending().await
    }
    async fn images(&self, _: LaneId, _: &ImageRequest) -> Result<ImagesResponse, ClientError> {
        std::future::pending().await
    }
    async fn unload(&self, _: LaneId, _: &str) -> Result<bool, ClientError> {
        Ok(true)
    }
    async fn load(&self, _: LaneId, _: &str) -> Result<(), ClientError> {
        Ok(())
    }
    async fn ready(&self, _: LaneId) -> Result<(), ClientError> {
        Ok(())
    }
    async fn models(&self, _: LaneId) -> Result<Vec<String>, ClientError> {
        Ok(vec![])
    }
}

/// The engine reads time through its `Clock` (tokio's, paused here): a ten-minute deadline
/// expires to the second without the test waiting for it.
#[tokio::test(start_paused = true)]
async fn deadlines_follow_the_paused_clock() {
    let mut cfg = config(Bounds::default(), 1);
    cfg.default_deadline[Kind::Txt2Txt.index()] = Duration::from_secs(600);
    let engine = Engine::start(cfg, Arc::new(Hang), Metrics::new()).expect("engine");
    let running = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(1, Kind::Txt2Txt)).await })
    };
    tokio::task::yield_now().await;
    let queued = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(job(2, Kind::Txt2Txt)).await })
    };
    tokio::time::sleep(Duration::from_secs(599)).await; // virtual time
    assert!(!queued.is_finished(), "not before its deadline");
    tokio::time::sleep(Duration::from_secs(2)).await; // virtual time
    match queued.await.expect("join") {
        Err(EngineError::DeadlineExceeded { waited, .. }) => assert_eq!(waited.as_secs(), 600),
        other => panic!("{other:?}"),
    }
    assert!(
        !running.is_finished(),
        "running work is never expired by its queue deadline"
    );
    running.abort();
}
