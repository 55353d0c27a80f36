//! Prefix-aware placement end to end (issue 34): im in front of two simulated servers serving
//! one chat model; concurrent multi-turn conversations, each turn re-sending its history. The
//! turns of a conversation go back to the lane that saw its beginning, so more of each prompt
//! was sent there before (`im_prefix_blocks_total{cached="true"}`, each lane's `prefix` in
//! `/status`) than when a balancer alternates the lanes.

mod common;

use im_app::config::{ImConfig, ModelEntry, Strategy};
use im_app::{self as app, DEMO_KEY};
use localai_sim::{SimConfig, SimServer};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";

/// The share of prompt blocks sent to a lane that had been sent there before, over `rounds`
/// turns of six concurrent conversations, under `strategy`.
async fn cached_share(strategy: Strategy, rounds: usize) -> f64 {
    let mut sims = Vec::new();
    for seed in 0..2 {
        let sim = SimServer::start(SimConfig {
            time_scale: 0.01,
            seed,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        sims.push(sim);
    }
    let mut cfg = ImConfig::default();
    cfg.upstreams = sims
        .iter()
        .map(|s| format!("http://{}", s.addr()).into())
        .collect();
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.jobs.enabled = false;
    cfg.routing.strategy = strategy;
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(2),
        ..Default::default()
    }];
    let built = app::build(cfg, None).await.expect("build");
    let url = common::listen(&built).await;
    let client = reqwest::Client::new();
    let conversations: Vec<_> = (0..6)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let system = format!("You are assistant number {c}. ").repeat(20);
                let mut messages = vec![json!({"role": "system", "content": system})];
                for turn in 0..rounds {
                    messages.push(json!({"role": "user", "content": format!("Question {turn}: tell me more. ").repeat(4)}));
                    let resp = client
                        .post(format!("{url}/v1/chat/completions"))
                        .header("x-api-key", DEMO_KEY)
                        .json(&json!({"model": LLM, "messages": messages, "max_tokens": 16}))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(resp.status(), 200);
                    let v: Value = resp.json().await.expect("json");
                    let answer = v["choices"][0]["message"]["content"].clone();
                    messages.push(json!({"role": "assistant", "content": answer}));
                }
            })
        })
        .collect();
    for c in conversations {
        c.await.expect("conversation");
    }
    let metrics = client
        .get(format!("{url}/metrics"))
        .header("x-api-key", DEMO_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sum = |cached: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("im_prefix_blocks_total{")
                    && l.contains(&format!("cached=\"{cached}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (hit, miss) = (sum("true"), sum("false"));
    assert!(hit + miss > 0.0, "prompt blocks are counted: {metrics}");
    // `/status` shows each lane's share too.
    let status: Value = client
        .get(format!("{url}/status"))
        .header("x-api-key", DEMO_KEY)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let lanes_cached: f64 = status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["prefix"]["blocks_cached"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(lanes_cached, hit, "{status}");
    hit / (hit + miss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_turns_return_to_the_lane_that_holds_its_history() {
    let prefix_aware = cached_share(Strategy::Affinity, 5).await;
    let round_robin = cached_share(Strategy::RoundRobin, 5).await;
    assert!(
        prefix_aware > round_robin + 0.1,
        "cached share: prefix-aware {prefix_aware:.2}, round_robin {round_robin:.2}"
    );
}
