//! Active health checks: every lane is checked with its readiness route, so a server that dies
//! while idle is found before work is sent to it, and one that comes back rejoins. On a paused
//! clock, so the counts are exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{Config, Kind, LaneId, LaneSpec, ModelSpec};
use localai_client::{
    ChatRequest, ChatResponse, ChunkStream, ClientError, ImageRequest, ImagesResponse,
};
use serde_json::json;

const LLM: &str = "llama-3.2-3b-instruct";

/// What a lane's readiness route does.
const UP: u8 = 0;
/// The server is gone: connections are refused.
const GONE: u8 = 1;
/// The server is up but answers 503 (llama.cpp's `/health` while it loads a model).
const LOADING: u8 = 2;

/// Two servers whose readiness each test sets; chat answers at once on a lane that is not gone.
struct Fleet {
    state: [AtomicU8; 2],
    chats: [AtomicU32; 2],
}

impl Fleet {
    fn set(&self, lane: usize, state: u8) {
        self.state[lane].store(state, Ordering::SeqCst);
    }
    fn gone(&self, lane: LaneId) -> bool {
        self.state[lane.0].load(Ordering::SeqCst) == GONE
    }
}

#[async_trait]
impl Backend for Fleet {
    async fn chat(&self, lane: LaneId, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        self.chats[lane.0].fetch_add(1, Ordering::SeqCst);
        if self.gone(lane) {
            return Err(ClientError::Connect("connection refused".into()));
        }
        let raw = json!({"model": req.model, "choices": [{"message": {"content": "ok"}}]});
        Ok(ChatResponse {
            body: raw.to_string().into(),
            raw,
            content: "ok".into(),
        })
    }
    async fn chat_stream(&self, _: LaneId, _: &ChatRequest) -> Result<ChunkStream, ClientError> {
        Err(ClientError::Protocol("not in this test".into()))
    }
    async fn images(&self, _: LaneId, _: &ImageRequest) -> Result<ImagesResponse, ClientError> {
        Err(ClientError::Protocol("not in this test".into()))
    }
    async fn unload(&self, _: LaneId, _: &str) -> Result<bool, ClientError> {
        Ok(true)
    }
    async fn load(&self, _: LaneId, _: &str) -> Result<(), ClientError> {
        Ok(())
    }
    async fn ready(&self, lane: LaneId) -> Result<(), ClientError> {
        match self.state[lane.0].load(Ordering::SeqCst) {
            UP => Ok(()),
            GONE => Err(ClientError::Connect("connection refused".into())),
            _ => Err(ClientError::Status {
                status: 503,
                message: "Loading model".into(),
                retry_after: None,
                code: None,
                param: None,
            }),
        }
    }
    async fn models(&self, _: LaneId) -> Result<Vec<String>, ClientError> {
        Ok(vec![LLM.into()])
    }
}

fn engine(fleet: &Arc<Fleet>) -> Engine {
    let mut cfg = Config {
        models: vec![ModelSpec::new(LLM, &[Kind::Txt2Txt], 4)],
        lanes: ["gpu0", "gpu1"]
            .map(|name| LaneSpec {
                name: name.into(),
                memory_mb: None,
            })
            .to_vec(),
        ..Config::default()
    };
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown = Duration::from_secs(600);
    cfg.breaker.health_check = Some(Duration::from_secs(2));
    Engine::start(cfg, fleet.clone(), Metrics::new()).expect("engine")
}

fn job(i: usize) -> Job {
    let req = ChatRequest {
        model: LLM.into(),
        messages: vec![json!({"role": "user", "content": format!("question {i}")})],
        temperature: None,
        max_tokens: Some(4),
        extra: Default::default(),
    };
    Job {
        request_id: format!("r{i}"),
        deadline: None,
        payload: Payload::Chat {
            req,
            stream: false,
            kind: Kind::Txt2Txt,
        },
    }
}

async fn breakers(engine: &Engine) -> Vec<&'static str> {
    let st = engine.status().await.expect("status");
    st.lanes.iter().map(|l| l.breaker.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_lane_that_dies_is_taken_out_before_work_reaches_it_and_rejoins_when_back() {
    let fleet = Arc::new(Fleet {
        state: [AtomicU8::new(LOADING), AtomicU8::new(GONE)],
        chats: Default::default(),
    });
    let engine = engine(&fleet);
    // Checks at 2, 4 and 6 s: three refused connections open gpu1's breaker; gpu0's 503s show a
    // server that is up, so it stays in.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(breakers(&engine).await, ["closed", "open"]);
    fleet.set(0, UP);
    for i in 0..8 {
        let done = engine.submit(job(i)).await.expect("served");
        assert_eq!(done.meta.attempts, 1, "no attempt went to the dead lane");
    }
    assert_eq!(
        fleet.chats[1].load(Ordering::SeqCst),
        0,
        "nothing was sent to gpu1"
    );
    assert_eq!(fleet.chats[0].load(Ordering::SeqCst), 8);
    // It comes back: the next check closes its breaker long before the 600 s cooldown.
    fleet.set(1, UP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(breakers(&engine).await, ["closed", "closed"]);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_fails_once_does_not_take_a_lane_out() {
    let fleet = Arc::new(Fleet {
        state: [AtomicU8::new(UP), AtomicU8::new(GONE)],
        chats: Default::default(),
    });
    let engine = engine(&fleet);
    // Two failed checks (2 and 4 s), then an answer: below the threshold, and the count starts
    // again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.set(1, UP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.set(1, GONE);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(breakers(&engine).await, ["closed", "closed"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(breakers(&engine).await, ["closed", "open"]);
}
