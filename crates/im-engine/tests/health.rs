//! Active health checks: every lane is checked with its readiness route, so a server that dies
//! while idle is found before work is sent to it, and one that comes back rejoins. On a paused
//! clock, so the counts are exact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{GONE, LOADING, Scripted, UP};
use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{Config, Kind, LaneSpec, ModelSpec};
use localai_client::{ChatRequest, Message};

const LLM: &str = "llama-3.2-3b-instruct";

fn engine(fleet: &Arc<Scripted>) -> Engine {
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
        messages: vec![Message::user(format!("question {i}"))],
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
        owner: None,
        weight: 1,
        class: Default::default(),
        progress: None,
        prefix: None,
    }
}

async fn breakers(engine: &Engine) -> Vec<&'static str> {
    let st = engine.status().await.expect("status");
    st.lanes.iter().map(|l| l.breaker.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_lane_that_dies_is_taken_out_before_work_reaches_it_and_rejoins_when_back() {
    let fleet = Arc::new(Scripted::new([LOADING, GONE]));
    let engine = engine(&fleet);
    // Checks at 2, 4 and 6 s: three refused connections open gpu1's breaker; gpu0's 503s show a
    // server that is up, so it stays in.
    tokio::time::sleep(Duration::from_secs(7)).await; // virtual time
    assert_eq!(breakers(&engine).await, ["closed", "open"]);
    fleet.set(0, UP);
    for i in 0..8 {
        let done = engine.submit(job(i)).await.expect("served");
        assert_eq!(done.meta.attempts, 1, "no attempt went to the dead lane");
    }
    assert_eq!(fleet.chats(1), 0, "nothing was sent to gpu1");
    assert_eq!(fleet.chats(0), 8);
    // It comes back: the next check closes its breaker long before the 600 s cooldown.
    fleet.set(1, UP);
    tokio::time::sleep(Duration::from_secs(3)).await; // virtual time
    assert_eq!(breakers(&engine).await, ["closed", "closed"]);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_fails_once_does_not_take_a_lane_out() {
    let fleet = Arc::new(Scripted::new([UP, GONE]));
    let engine = engine(&fleet);
    // Two failed checks (2 and 4 s), then an answer: below the threshold, and the count starts
    // again.
    tokio::time::sleep(Duration::from_secs(5)).await; // virtual time
    fleet.set(1, UP);
    tokio::time::sleep(Duration::from_secs(2)).await; // virtual time
    fleet.set(1, GONE);
    tokio::time::sleep(Duration::from_secs(4)).await; // virtual time
    assert_eq!(breakers(&engine).await, ["closed", "closed"]);
    tokio::time::sleep(Duration::from_secs(2)).await; // virtual time
    assert_eq!(breakers(&engine).await, ["closed", "open"]);
}
