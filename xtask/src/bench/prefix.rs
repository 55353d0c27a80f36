//! `cargo xtask bench --only prefix`: im-http in front of two `localai-sim` processes serving one
//! chat model whose servers keep a prompt cache and prefill only what it lacks (one prefill at a
//! time per server). Concurrent multi-turn conversations, streamed, each turn re-sending its
//! history: prefix-aware placement against affinity alone and `least_loaded`. Figures: the
//! prompt tokens the servers had cached (their own count, `/sim/stats`) and the time to the
//! first token as the client sees it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{KEY, LLM, Proc, client, free_port, q, release_bin, start_sim, wait_ready};

/// Tokens each server's prompt cache holds: less than every conversation's history together,
/// more than half of it.
const CACHE_TOKENS: usize = 32_768;
/// Simulated time runs at this fraction of real time.
const TIME_SCALE: f64 = 0.25;

/// The placements compared: (name, `[routing]` section).
const PLACEMENTS: [(&str, &str); 3] = [
    (
        "prefix-aware",
        "strategy = \"affinity\"\nprefix_aware = true\nprefix_cache_tokens = 32768",
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

fn sim_toml() -> String {
    format!(
        "prompt_cache_tokens = {CACHE_TOKENS}\n\n[[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\n\
         load_ms = 6000\nmemory_mb = 4000\nper_token_ms = 15.0\nslots = 4\nprefill_per_token_ms = 0.25\n"
    )
}

fn im_toml(upstreams: &[u16], routing: &str) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    format!(
        "upstreams = [{}]\n\n[[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\nmax_in_flight = 4\n\n[routing]\n{routing}\n",
        ups.join(", ")
    )
}

/// One placement's run: the share of prompt tokens cached, and every time to first token (s).
async fn run(routing: &str, conversations: usize, turns: usize) -> Result<(f64, Vec<f64>)> {
    let dir = std::env::temp_dir().join(format!("im-bench-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sim_cfg = dir.join("sim.toml");
    std::fs::write(&sim_cfg, sim_toml())?;
    let ports = [free_port(), free_port()];
    let _sims: Vec<Proc> = ports
        .iter()
        .map(|p| start_sim(*p, TIME_SCALE, Some(&sim_cfg)))
        .collect::<Result<_>>()?;
    let im_cfg = dir.join("im.toml");
    std::fs::write(&im_cfg, im_toml(&ports, routing))?;
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
    let runs = (0..conversations).map(|c| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { conversation(&http, &url, c, turns).await })
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
) -> Result<Vec<f64>> {
    let system =
        format!("You are assistant {c}, who answers about topic {c} at length. ").repeat(60);
    let mut messages = vec![json!({"role": "system", "content": system})];
    let mut ttfts = Vec::new();
    for turn in 0..turns {
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

/// The bench: one run per placement, side by side.
pub async fn prefix(out: &mut String, conversations: usize, turns: usize) -> Result<()> {
    let _ = writeln!(
        out,
        "## Prefix-aware placement end to end\n\n\
         im-http in front of two `localai-sim` processes serving `{LLM}` (4 slots each), each \
         keeping a prompt cache of {CACHE_TOKENS} tokens and prefilling only what it lacks \
         (0.25 ms per token, one prefill at a time; decode 15 ms per token; time scale \
         {TIME_SCALE}). {conversations} concurrent conversations of {turns} streamed turns, each \
         with its own ~1.3k-token system prompt and re-sending its history (about \
         {:.0}k tokens together by the last turn). Cached: prompt tokens the servers held, by \
         their own count. TTFT: from the request to its first content chunk, as the client \
         sees it (simulated time, so {:.0}x these in real time).\n\n\
         | placement | prompt tokens cached | TTFT mean (ms) | TTFT p90 (ms) |\n|---|---|---|---|",
        conversations as f64 * (1.3 + turns as f64 * 0.6),
        1.0 / TIME_SCALE
    );
    for (name, routing) in PLACEMENTS {
        let (cached, ttfts) = run(routing, conversations, turns).await?;
        let mean = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
        let _ = writeln!(
            out,
            "| {name} | {:.0}% | {:.0} | {:.0} |",
            cached * 100.0,
            mean * 1000.0,
            q(&ttfts, 0.9) * 1000.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.push('\n');
    Ok(())
}
