//! Batching: 64 concurrent single-input embedding requests, round after round, through im-http
//! with embedding batching on (the default) and off, against the simulator's embedding cost
//! model (a fixed cost per call plus a cost per input).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::*;

const EMBED: &str = "bge-small-en-v1.5";

/// Upstream embedding calls the simulator has run so far.
async fn upstream_calls(c: &reqwest::Client, sim_url: &str) -> Result<u64> {
    let stats: Value = c
        .get(format!("{sim_url}/sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    Ok(stats["requests"][EMBED].as_u64().unwrap_or(0))
}

/// One path's figures: requests per second, upstream calls, failures.
struct Run {
    rps: f64,
    calls: u64,
    requests: u64,
    failed: u64,
}

async fn drive(im_port: u16, sim_url: &str, concurrent: usize, rounds: usize) -> Result<Run> {
    let c = client();
    let url = format!("http://127.0.0.1:{im_port}/v1/embeddings");
    let before = upstream_calls(&c, sim_url).await?;
    let started = Instant::now();
    let mut failed = 0;
    for round in 0..rounds {
        let sends: Vec<_> = (0..concurrent)
            .map(|i| {
                let body = json!({"model": EMBED, "input": format!("document {round}-{i}: a few words to embed")});
                c.post(&url).header("x-api-key", KEY).json(&body).send()
            })
            .collect();
        for r in futures_util::future::join_all(sends).await {
            if !answered_ok(r).await {
                failed += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let requests = (concurrent * rounds) as u64;
    Ok(Run {
        rps: requests as f64 / secs,
        calls: upstream_calls(&c, sim_url).await? - before,
        requests,
        failed,
    })
}

/// The batching benchmark: batched vs unbatched, one run each, same simulator.
pub async fn batching(out: &mut String, rounds: usize) -> Result<()> {
    const CONCURRENT: usize = 64;
    let sim_p = free_port();
    // Real time: 40 ms per call plus 1 ms per input, 4 slots (the simulator's catalogue).
    let _sim = start_sim(sim_p, 1.0, None)?;
    let sim_url = format!("http://127.0.0.1:{sim_p}");
    let mut runs = Vec::new();
    for (name, max_inputs) in [
        ("unbatched (`max_inputs = 1`)", 1),
        ("batched (defaults: `max_inputs = 32`, `flush_ms = 5`)", 32),
    ] {
        let im_p = free_port();
        let cfg = format!("[batch]\nmax_inputs = {max_inputs}\nflush_ms = 5\n");
        let _im = start_im(im_p, sim_p, &cfg)?;
        // Warm: the model loads once, outside the measurement.
        drive(im_p, &sim_url, 1, 1).await.context("warm-up")?;
        runs.push((name, drive(im_p, &sim_url, CONCURRENT, rounds).await?));
    }
    let (unbatched, batched) = (&runs[0].1, &runs[1].1);
    if batched.failed + unbatched.failed > 0 {
        bail!(
            "embedding requests failed: {} batched, {} unbatched",
            batched.failed,
            unbatched.failed
        );
    }
    let _ = writeln!(out, "### 4. Batching embeddings\n");
    let _ = writeln!(
        out,
        "{CONCURRENT} concurrent single-input `POST /v1/embeddings` requests, {rounds} rounds, through im-http to localai-sim's \
         `{EMBED}` (real time: 40 ms per call plus 1 ms per input, 4 slots), with embedding batching off and on.\n"
    );
    let _ = writeln!(
        out,
        "| path | requests | upstream calls | calls per request | req/s |\n|---|---|---|---|---|"
    );
    for (name, r) in &runs {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.3} | {:.0} |",
            r.requests,
            r.calls,
            r.calls as f64 / r.requests as f64,
            r.rps
        );
    }
    let ratio = batched.rps / unbatched.rps;
    let calls = batched.calls as f64 / batched.requests as f64;
    let _ = writeln!(
        out,
        "\n- throughput batched / unbatched: {ratio:.2}x (target >= 3x {})\n- upstream calls per request, batched: {calls:.3} (target <= 1/8 = 0.125 {})\n",
        if ratio >= 3.0 { "met" } else { "MISSED" },
        if calls <= 0.125 { "met" } else { "MISSED" },
    );
    Ok(())
}
