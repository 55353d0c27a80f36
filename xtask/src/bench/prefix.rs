//! `cargo xtask bench --only prefix`: im-http in front of two `localai-sim` processes serving one
//! chat model whose servers keep a prompt cache and prefill only what it lacks (one prefill at a
//! time per server). Concurrent multi-turn conversations, streamed, each turn re-sending its
//! history: prefix-aware placement against affinity alone and `least_loaded`, in two regimes:
//! each server's cache holds every conversation (no placement can lose much), and it holds
//! about half of them (the conversations must stay apart to stay cached). Figures: the prompt
//! tokens the servers had cached (their own count, `/sim/stats`) and the time to the first token
//! as the client sees it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{KEY, LLM, Proc, client, free_port, q, release_bin, start_sim, wait_ready};

/// Simulated time runs at this fraction of real time.
const TIME_SCALE: f64 = 0.25;
/// The servers' prefill time per uncached prompt token, in simulated milliseconds.
const PREFILL_MS_PER_TOKEN: f64 = 0.25;

/// One regime: how much each server caches, and the conversations.
#[derive(Clone, Copy)]
struct Regime {
    name: &'static str,
    /// Tokens each server's prompt cache holds.
    cache_tokens: usize,
    /// How many times each conversation's ~64-character opening line is repeated (its system
    /// prompt, or the document it is about).
    opening: usize,
}

/// The regimes: every history fits each server's cache (12 conversations of ~1k-token system
/// prompts, ~59k tokens together by the last turn, 32k cached per server: alternating servers
/// loses only the turn in between); and a cache that holds about half the conversations (~3k-
/// token documents, ~50-70k tokens together, 40k cached per server: alternating servers evicts
/// what the next turn needs).
const REGIMES: [Regime; 2] = [
    Regime {
        name: "every history fits each server's cache",
        cache_tokens: 32_768,
        opening: 60,
    },
    Regime {
        name: "each server's cache holds about half the conversations",
        cache_tokens: 40_960,
        opening: 200,
    },
];

/// The placements compared: (name, `[routing]` section without the cache size).
const PLACEMENTS: [(&str, &str); 3] = [
    (
        "prefix-aware",
        "strategy = \"affinity\"\nprefix_aware = true",
    ),
    (
        "affinity alone",
        "strategy = \"affinity\"\nprefix_aware = false",
    ),
    (
        "least_loaded",
        "strategy = \"least_loaded\"\nprefix_aware = false",
    ),
];

fn sim_toml(cache_tokens: usize) -> String {
    format!(
        "prompt_cache_tokens = {cache_tokens}\n\n[[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\n\
         load_ms = 6000\nmemory_mb = 4000\nper_token_ms = 15.0\nslots = 4\nprefill_per_token_ms = {PREFILL_MS_PER_TOKEN}\n"
    )
}

fn im_toml(upstreams: &[u16], routing: &str) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    format!(
        "upstreams = [{}]\n\n[[keys]]\nkey = \"{ADMIN_KEY}\"\nscopes = [\"admin\", \"metrics\"]\n\n\
         [[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\nmax_in_flight = 4\n\n[routing]\n{routing}\n",
        ups.join(", ")
    )
}

/// The bench's operator key: it loads the model on every server before the conversations start.
const ADMIN_KEY: &str = "bench-prefix-admin";

/// Load the chat model on every backend through im's scheduler (`POST /models/load`) and wait
/// until each holds it: the conversations then measure placement, not the first load.
async fn warm(http: &reqwest::Client, url: &str) -> Result<()> {
    let status = im_status(http, url).await?;
    let backends: Vec<String> = status["backends"]
        .as_array()
        .context("/status lists backends")?
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect();
    for b in &backends {
        let r = http
            .post(format!("{url}/models/load"))
            .header("x-api-key", ADMIN_KEY)
            .json(&json!({"model": LLM, "backend": b}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "loading on {b}: {}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = im_status(http, url).await?;
        let loaded = status["backends"].as_array().is_some_and(|bs| {
            bs.len() == backends.len()
                && bs.iter().all(|b| {
                    b["loaded_models"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m == LLM))
                })
        });
        if loaded {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the model did not load everywhere: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// im's `GET /status`, as its operator sees it.
async fn im_status(http: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(http
        .get(format!("{url}/status"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?)
}

/// One placement's run: the share of prompt tokens cached, and every time to first token (s).
async fn run(
    regime: Regime,
    routing: &str,
    conversations: usize,
    turns: usize,
) -> Result<(f64, Vec<f64>)> {
    let dir = std::env::temp_dir().join(format!("im-bench-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sim_cfg = dir.join("sim.toml");
    std::fs::write(&sim_cfg, sim_toml(regime.cache_tokens))?;
    // im is told each server's cache size and prefill rate (in real time), as an operator would.
    let routing = format!(
        "{routing}\nprefix_cache_tokens = {}\nprefix_prefill_ms_per_1k_tokens = {}",
        regime.cache_tokens,
        (PREFILL_MS_PER_TOKEN * 1_000.0 * TIME_SCALE).round()
    );
    let ports = [free_port(), free_port()];
    let _sims: Vec<Proc> = ports
        .iter()
        .map(|p| start_sim(*p, TIME_SCALE, Some(&sim_cfg)))
        .collect::<Result<_>>()?;
    let im_cfg = dir.join("im.toml");
    std::fs::write(&im_cfg, im_toml(&ports, &routing))?;
    let port = free_port();
    let _im = Proc(
        std::process::Command::new(release_bin("im-http"))
            .arg("--config")
            .arg(&im_cfg)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--api-keys", KEY])
            .env("RUST_LOG", "error")
            .env_remove("IM_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting im-http")?,
    );
    wait_ready(port, "/health", None)?;
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    warm(&http, &url).await?;
    let runs = (0..conversations).map(|c| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { conversation(&http, &url, c, turns, regime.opening).await })
    });
    let mut ttfts = Vec::new();
    for r in futures_util::future::join_all(runs).await {
        ttfts.extend(r??);
    }
    let (mut prompt, mut cached) = (0.0, 0.0);
    for p in ports {
        let stats: Value = http
            .get(format!("http://127.0.0.1:{p}/sim/stats"))
            .send()
            .await?
            .json()
            .await?;
        prompt += stats["prompt_tokens"].as_f64().unwrap_or(0.0);
        cached += stats["cached_prompt_tokens"].as_f64().unwrap_or(0.0);
    }
    Ok((cached / prompt.max(1.0), ttfts))
}

/// Conversation `c`: `turns` streamed turns, each re-sending the history; each turn's time to
/// its first token, in seconds.
async fn conversation(
    http: &reqwest::Client,
    url: &str,
    c: usize,
    turns: usize,
    opening: usize,
) -> Result<Vec<f64>> {
    let system =
        format!("You are assistant {c}, who answers about topic {c} at length. ").repeat(opening);
    let mut messages = vec![json!({"role": "system", "content": system})];
    let mut ttfts = Vec::new();
    // Conversations start apart, and people read an answer before the next question (a few
    // seconds of simulated time): a closed loop of instant turns would return each turn to the
    // lane that just freed a slot, which no real traffic does.
    tokio::time::sleep(Duration::from_millis(150 * c as u64)).await;
    for turn in 0..turns {
        if turn > 0 {
            let think = 300 + (c * 7_919 + turn * 104_729) % 1_200;
            tokio::time::sleep(Duration::from_millis(think as u64)).await;
        }
        let question =
            format!("Turn {turn} of conversation {c}: go on with more detail. ").repeat(10);
        messages.push(json!({"role": "user", "content": question}));
        let sent = Instant::now();
        let resp = http
            .post(format!("{url}/v1/chat/completions"))
            .header("x-api-key", KEY)
            .json(&json!({"model": LLM, "messages": messages, "max_tokens": 150, "stream": true}))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
        let mut body = resp.bytes_stream();
        let (mut first, mut text) = (None, String::new());
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let Some(data) = event.trim().strip_prefix("data: ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str()
                    && !t.is_empty()
                {
                    first.get_or_insert_with(|| sent.elapsed());
                    text.push_str(t);
                }
            }
        }
        ttfts.push(first.unwrap_or_else(|| sent.elapsed()).as_secs_f64());
        // The answer joins the history, as long as a real one would be.
        let answer = format!("{text} ").repeat(8);
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    Ok(ttfts)
}

/// The bench: one run per placement, side by side, in each regime.
pub async fn prefix(out: &mut String, conversations: usize, turns: usize) -> Result<()> {
    let _ = writeln!(
        out,
        "## Prefix-aware placement end to end\n\n\
         im-http in front of two `localai-sim` processes serving `{LLM}` (4 slots each), each \
         keeping a prompt cache and prefilling only what it lacks (0.25 ms per token, one \
         prefill at a time; decode 15 ms per token; time scale {TIME_SCALE}). {conversations} \
         conversations of {turns} streamed turns, started 150 ms apart, each with its own opening \
         (a system prompt, or a document it is about), re-sending its history, and 0.3-1.5 s \
         between an answer and the next question; im is told the servers' cache size and \
         prefill rate (`prefix_cache_tokens`, `prefix_prefill_ms_per_1k_tokens`), and both \
         servers hold the model before the first conversation starts (`POST /models/load`: the \
         figures are placement's, not the first load's). Cached: prompt \
         tokens the servers held, by their own count. TTFT: from the request to its first \
         content chunk, as the client sees it, in real time (the servers' time runs {:.0}x \
         faster than a real server's).\n",
        1.0 / TIME_SCALE
    );
    for regime in REGIMES {
        let _ = writeln!(
            out,
            "### {} ({} tokens cached per server; openings of ~{} tokens)\n\n\
             | placement | prompt tokens cached | TTFT mean (ms) | TTFT p90 (ms) |\n|---|---|---|---|",
            regime.name,
            regime.cache_tokens,
            regime.opening * 64 / 4
        );
        // Per placement: its cached share and mean TTFT.
        let mut figures = Vec::new();
        for (name, routing) in PLACEMENTS {
            let (cached, ttfts) = run(regime, routing, conversations, turns).await?;
            let mean = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
            let _ = writeln!(
                out,
                "| {name} | {:.0}% | {:.0} | {:.0} |",
                cached * 100.0,
                mean * 1000.0,
                q(&ttfts, 0.9) * 1000.0
            );
            figures.push((cached, mean));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The target (issue 34): prefix-aware caches more and answers sooner on average than
        // affinity alone and than least_loaded.
        let (ours, others) = figures.split_first().context("placements")?;
        let met = others.iter().all(|(c, m)| ours.0 > *c && ours.1 < *m);
        let _ = writeln!(
            out,
            "\nTarget: a higher share cached and a lower mean TTFT with prefix-aware placement than \
             with affinity alone and with least_loaded: **{}**.\n",
            if met { "met" } else { "missed" }
        );
    }
    Ok(())
}
