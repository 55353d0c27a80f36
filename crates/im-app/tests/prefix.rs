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

/// Two simulated servers, and im's configuration in front of them serving one chat model (three
/// slots each: six conversations find room at home), without jobs or keys.
async fn two_servers_of_one_chat_model() -> (Vec<SimServer>, ImConfig) {
    let mut sims = Vec::new();
    for seed in 0..2 {
        sims.push(
            SimServer::start(SimConfig {
                time_scale: 0.01,
                seed,
                ..SimConfig::default()
            })
            .await
            .expect("sim"),
        );
    }
    let mut cfg = ImConfig::default();
    cfg.upstreams = sims
        .iter()
        .map(|s| format!("http://{}", s.addr()).into())
        .collect();
    cfg.jobs.enabled = false;
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(3),
        ..Default::default()
    }];
    (sims, cfg)
}

/// The share of prompt blocks sent to a lane that had been sent there before, over `rounds`
/// turns of six concurrent conversations, under `strategy`.
async fn cached_share(strategy: Strategy, rounds: usize) -> f64 {
    let (_sims, mut cfg) = two_servers_of_one_chat_model().await;
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.routing.strategy = strategy;
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

/// A key of `tenant` with `scopes`.
fn key(k: &str, scopes: &[&str], tenant: &str) -> im_app::config::KeyEntry {
    im_app::config::KeyEntry {
        key: k.into(),
        scopes: scopes
            .iter()
            .map(|s| serde_json::from_value(json!(s)).expect("scope"))
            .collect(),
        rate_limit_per_s: None,
        rate_limit_burst: None,
        tenant: Some(tenant.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_probe_tells_a_tenant_only_what_it_sent_itself() {
    let (_sims, mut cfg) = two_servers_of_one_chat_model().await;
    cfg.tenants = ["alice", "bob", "ops"]
        .iter()
        .map(|n| im_app::config::TenantEntry {
            name: (*n).into(),
            ..Default::default()
        })
        .collect();
    cfg.keys = vec![
        key("alice-key", &["infer", "metrics"], "alice"),
        key("bob-key", &["infer", "metrics"], "bob"),
        key("ops-key", &["infer", "metrics", "operator"], "ops"),
    ];
    let built = app::build(cfg, None).await.expect("build");
    let url = common::listen(&built).await;
    let client = reqwest::Client::new();
    let messages = json!([
        {"role": "system", "content": "You keep the accounts of a small bakery. ".repeat(20)},
        {"role": "user", "content": "What did we sell on Tuesday, and to whom?"},
    ]);
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("x-api-key", "alice-key")
        .json(&json!({"model": LLM, "messages": messages, "max_tokens": 8}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let probe = |key: &'static str, messages: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .get(format!("{url}/placement"))
                .header("x-api-key", key)
                .query(&[("kind", "txt2txt"), ("model", LLM), ("messages", &messages)])
                .send()
                .await
                .expect("probe");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, alice) = probe("alice-key", messages.to_string()).await;
    assert_eq!(status, 200, "{alice}");
    let prompt_chars = alice["prompt"]["prompt_chars"]
        .as_u64()
        .expect("prompt_chars");
    assert!(prompt_chars >= 800, "{alice}");
    assert_eq!(
        alice["prompt"]["cached_chars"], prompt_chars,
        "the tenant that sent it sees all of it cached: {alice}"
    );
    assert_eq!(alice["prompt"]["own_tenant_only"], true);
    let holder = alice["prompt"]["backend"]
        .as_str()
        .expect("backend")
        .to_owned();
    let held: Vec<u64> = alice["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["prompt_cached_chars"].as_u64().expect("per backend"))
        .collect();
    assert_eq!(held.iter().filter(|c| **c > 0).count(), 1, "{alice}");
    // Another tenant probing the same prompt learns nothing of it.
    let (_, bob) = probe("bob-key", messages.to_string()).await;
    assert_eq!(bob["prompt"]["cached_chars"], 0, "{bob}");
    assert!(
        bob["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .all(|b| b["prompt_cached_chars"] == 0),
        "{bob}"
    );
    // An operator sees every tenant's.
    let (_, ops) = probe("ops-key", messages.to_string()).await;
    assert_eq!(ops["prompt"]["cached_chars"], prompt_chars, "{ops}");
    assert_eq!(ops["prompt"]["backend"], holder.as_str());
    assert_eq!(ops["prompt"]["own_tenant_only"], false);
    // The MCP tool answers the same, as the caller's tenant may see it.
    for (key, expected) in [("bob-key", 0), ("alice-key", prompt_chars)] {
        let c = common::mcp(&url, key).await;
        let (is_error, text) = common::tool(
            &c,
            "select_backend_for_inference",
            json!({"task": "txt2txt", "model": LLM, "messages": messages}),
        )
        .await;
        assert!(!is_error, "{text}");
        let v: Value = serde_json::from_str(&text).expect("the placement as JSON");
        assert_eq!(v["prompt"]["cached_chars"], expected, "{key}: {v}");
    }
    // A malformed list is a 400 naming the field.
    let (status, bad) = probe("alice-key", "{not json".into()).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["param"], "messages", "{bad}");
}

/// Two turns of one conversation sent to `url` (with `key`, if any): the prompt tokens the
/// server found cached on the second.
async fn second_turn_cached(client: &reqwest::Client, url: &str, key: Option<&str>) -> u64 {
    let mut messages = vec![
        json!({"role": "system", "content": "You answer questions about the tides. ".repeat(30)}),
        json!({"role": "user", "content": "When is high water at Brest today?"}),
    ];
    let mut cached = 0;
    for _ in 0..2 {
        let mut req = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": LLM, "messages": messages, "max_tokens": 4}));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("json");
        cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached_tokens");
        messages.push(v["choices"][0]["message"].clone());
        messages.push(json!({"role": "user", "content": "And tomorrow?"}));
    }
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_cpp_server_is_asked_to_keep_the_prompt_cached() {
    // A llama-server of before late 2024: it reuses a cached prompt only when asked.
    let sim = SimServer::start(SimConfig {
        time_scale: 0.0,
        mode: localai_sim::SimMode::LlamaCppRouter,
        prompt_cache_tokens: 32_768,
        cache_prompt_by_default: false,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let client = reqwest::Client::new();
    // Sent as it is, the second turn finds nothing reused.
    assert_eq!(second_turn_cached(&client, &sim.url(), None).await, 0);
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![sim.url().into()];
    cfg.api_keys = vec![DEMO_KEY.into()];
    cfg.jobs.enabled = false;
    let built = app::build(cfg, None).await.expect("build");
    let url = common::listen(&built).await;
    // Through im, which learned the server's dialect, it reuses the first turn's prompt.
    let cached = second_turn_cached(&client, &url, Some(DEMO_KEY)).await;
    assert!(cached > 100, "cached tokens on the second turn: {cached}");
}
