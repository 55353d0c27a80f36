//! Chaos (issue 11's acceptance): 1,200 requests against the simulated LocalAI through a backend
//! that panics, answers absurd `Retry-After` values and stalls streams, with callers that leave
//! early and callers that read streams slowly. Every request leaves exactly once, nothing stays in
//! flight, and the simulated GPU never holds two models (no overcommit), even though cancelled
//! attempts are drained in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{Config, Kind, LaneId, ModelSpec};
use localai_client::{
    ChatRequest, ChatResponse, ChunkStream, ClientConfig, ClientError, ImageRequest,
    ImagesResponse, LocalAiClient, Message,
};
use localai_sim::{SimConfig, SimServer};

const LLM: &str = "llama-3.2-3b-instruct";
const SD: &str = "stablediffusion";

/// The real client to the simulator, with faults of its own drawn from a counter.
struct Chaos {
    inner: LocalAiBackend,
    n: AtomicU64,
}

impl Chaos {
    fn draw(&self) -> u64 {
        // A cheap deterministic scramble of the call number.
        self.n
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 58
    }
}

fn absurd_retry_after() -> ClientError {
    ClientError::Status {
        status: 503,
        message: "busy".into(),
        retry_after: localai_client::parse_retry_after("99999999999999999999"),
        code: None,
        param: None,
    }
}

#[async_trait]
impl Backend for Chaos {
    async fn chat(&self, lane: LaneId, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        match self.draw() {
            0..=2 => panic!("chaos: a backend bug"),
            3..=5 => Err(absurd_retry_after()),
            _ => self.inner.chat(lane, req).await,
        }
    }
    async fn chat_stream(
        &self,
        lane: LaneId,
        req: &ChatRequest,
    ) -> Result<ChunkStream, ClientError> {
        match self.draw() {
            0..=2 => panic!("chaos: a backend bug"),
            3..=5 => Err(absurd_retry_after()),
            _ => self.inner.chat_stream(lane, req).await,
        }
    }
    async fn images(
        &self,
        lane: LaneId,
        req: &ImageRequest,
    ) -> Result<ImagesResponse, ClientError> {
        match self.draw() {
            0..=2 => panic!("chaos: a backend bug"),
            _ => self.inner.images(lane, req).await,
        }
    }
    async fn unload(&self, lane: LaneId, model: &str) -> Result<bool, ClientError> {
        self.inner.unload(lane, model).await
    }
    async fn load(&self, lane: LaneId, model: &str) -> Result<(), ClientError> {
        self.inner.load(lane, model).await
    }
    async fn ready(&self, lane: LaneId) -> Result<(), ClientError> {
        self.inner.ready(lane).await
    }
    async fn models(&self, lane: LaneId) -> Result<Vec<String>, ClientError> {
        self.inner.models(lane).await
    }
}

fn job(i: usize) -> Job {
    let stream = i.is_multiple_of(3);
    let payload = if i % 4 == 1 {
        let req = ImageRequest {
            model: SD.into(),
            prompt: "a fox".into(),
            width: 8,
            height: 8,
            steps: Some(1),
            ..ImageRequest::default()
        };
        Payload::Images(req)
    } else {
        let req = ChatRequest {
            model: LLM.into(),
            messages: vec![Message::user(format!("q{i}"))],
            temperature: None,
            max_tokens: Some(8),
            extra: Default::default(),
        };
        Payload::Chat {
            req,
            stream,
            kind: Kind::Txt2Txt,
        }
    };
    Job {
        request_id: format!("c{i}"),
        deadline: Some(Duration::from_secs(20)),
        payload,
        owner: None,
        weight: 1,
        class: Default::default(),
        progress: None,
        prefix: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_once_under_chaos() {
    let sim = SimServer::start(SimConfig {
        time_scale: 0.0005,
        faults: localai_sim::Faults {
            // Answers that stall before they start (200 ms) and streams that stall mid-way
            // (200 ms), both within the client's limits: im rides them out holding the slot.
            // (Stalls past the limits are tested in `regressions.rs`.)
            slow: 0.05,
            slow_ms: 400_000,
            stream_stall: 0.05,
            stall_ms: 400_000,
            stream_error: 0.05,
            drop_connection: 0.03,
            ..localai_sim::Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut cc = ClientConfig::new(sim.url());
    cc.stream_idle = Duration::from_millis(300);
    cc.chat_first_byte = Duration::from_secs(1);
    cc.chat_total = Duration::from_secs(2);
    let backend = Chaos {
        inner: LocalAiBackend::new(vec![LocalAiClient::new(cc).expect("client")]),
        n: AtomicU64::new(0),
    };
    let mut cfg = Config {
        models: vec![
            ModelSpec::new(LLM, &[Kind::Txt2Txt], 4),
            ModelSpec::new(SD, &[Kind::Txt2Img], 1),
        ],
        ..Config::default()
    };
    cfg.retry.base = Duration::from_millis(1);
    cfg.retry.cap = Duration::from_millis(5);
    cfg.breaker.failure_threshold = 1_000;
    let engine = Engine::start(cfg, Arc::new(backend), Metrics::new()).expect("engine");

    const N: usize = 1_200;
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let work = async {
                match engine.submit(job(i)).await {
                    Ok(done) => {
                        if let Output::Stream(mut rx) = done.output {
                            // Some readers are slow; every reader reads to the end.
                            while rx.recv().await.is_some() {
                                if i.is_multiple_of(5) {
                                    // A slow reader is under test.
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                            }
                        }
                        "answered"
                    }
                    Err(_) => "error",
                }
            };
            if i.is_multiple_of(7) {
                // A caller that goes away early: the future is dropped.
                tokio::time::timeout(Duration::from_millis((i % 40) as u64), work)
                    .await
                    .unwrap_or("left")
            } else {
                work.await
            }
        }));
        if i.is_multiple_of(50) {
            // Arrivals spread over time are the load under test.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut outcomes = std::collections::HashMap::new();
    for t in tasks {
        let how = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("no caller hangs")
            .expect("no caller task panics");
        *outcomes.entry(how).or_insert(0usize) += 1;
    }
    assert_eq!(outcomes.values().sum::<usize>(), N);

    // The system empties: cancelled attempts finish in the background, then nothing is left.
    let status = im_testkit::until("the engine empty", Duration::from_secs(30), || async {
        let status = engine.status().await.expect("running");
        (status.in_flight == 0 && status.waiting == 0).then_some(status)
    })
    .await;
    let c = &status.counters;
    assert_eq!((status.in_flight, status.waiting), (0, 0), "{outcomes:?}");
    assert_eq!(
        c.accepted,
        c.completed + c.expired + c.cancelled + c.exhausted + c.failed,
        "every accepted request left exactly once: {c:?}"
    );
    assert_eq!(c.accepted + c.rejected, N as u64, "{c:?}");
    assert!(status.lanes.iter().all(|l| l.in_flight == 0));
    let stats = sim.state().stats();
    assert_eq!(stats.overcommits, 0, "two models on the GPU: {stats:?}");
    assert!(
        outcomes.get("answered").copied().unwrap_or(0) > N / 3,
        "{outcomes:?}"
    );
}
