//! Scheduling end to end: one seeded mixed trace replayed straight to the simulator and through
//! im-http.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use inference_queue::Kind;
use inference_queue::sim::{self, TraceSpec};
use serde_json::{Value, json};

use super::*;

/// The HTTP request for a trace item against the OpenAI-compatible routes (served by both the
/// simulator and im-http), sized so the simulator's service time matches the item's.
pub fn request_for(item: &sim::TraceItem, img: &str) -> (&'static str, Value) {
    let ms = item.service.as_secs_f64() * 1000.0;
    match item.kind {
        Kind::Txt2Txt => (
            "/v1/chat/completions",
            json!({"model": LLM, "messages": [{"role": "user", "content": "q"}], "max_tokens": (ms / 15.0).clamp(1.0, 256.0) as u32}),
        ),
        Kind::Img2Txt => (
            "/v1/chat/completions",
            json!({"model": VLM, "max_tokens": (ms / 25.0).clamp(1.0, 256.0) as u32, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{img}")}}]}]}),
        ),
        Kind::Txt2Img => (
            "/v1/images/generations",
            json!({"model": SD, "prompt": "p", "size": "64x64", "step": (ms / 300.0).round().max(1.0) as u32}),
        ),
        Kind::Img2Img => (
            "/v1/images/generations",
            json!({"model": SD, "prompt": "p", "size": "64x64", "file": img, "step": (ms / 300.0).round().max(1.0) as u32}),
        ),
        Kind::Embed | Kind::Rerank | Kind::Tts | Kind::Stt => {
            unreachable!("the seeded traces hold the seeds' four kinds")
        }
    }
}

struct RunResult {
    per_kind: Vec<(Kind, Vec<f64>)>,
    completed: usize,
    failed: usize,
    makespan_s: f64,
    stats: Value,
}

async fn replay(
    base: &str,
    sim_url: &str,
    key: Option<&str>,
    trace: &[sim::TraceItem],
    scale: f64,
) -> Result<RunResult> {
    let c = client();
    let img = Arc::new(png_b64(16));
    let start = Instant::now();
    let mut handles = Vec::new();
    for item in trace.iter().cloned() {
        let (c, base, key, img) = (
            c.clone(),
            base.to_owned(),
            key.map(str::to_owned),
            img.clone(),
        );
        handles.push(tokio::spawn(async move {
            let at = Duration::from_secs_f64(item.at.since_epoch().as_secs_f64() * scale);
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + at)).await;
            let (path, body) = request_for(&item, &img);
            let sent = Instant::now();
            let mut rb = c.post(format!("{base}{path}")).json(&body);
            if let Some(k) = key {
                rb = rb.header("x-api-key", k);
            }
            let ok = answered_ok(rb.send().await).await;
            (
                item.kind,
                ok,
                sent.elapsed().as_secs_f64() / scale,
                start.elapsed().as_secs_f64() / scale,
            )
        }));
    }
    let mut per_kind: Vec<(Kind, Vec<f64>)> =
        Kind::SEEDS.iter().map(|k| (*k, Vec::new())).collect();
    let (mut completed, mut failed, mut last) = (0, 0, 0.0f64);
    for h in handles {
        let (kind, ok, latency, end) = h.await?;
        if ok {
            completed += 1;
            last = last.max(end);
            if let Some((_, v)) = per_kind.iter_mut().find(|(k, _)| *k == kind) {
                v.push(latency);
            }
        } else {
            failed += 1;
        }
    }
    let first = trace
        .first()
        .map_or(0.0, |t| t.at.since_epoch().as_secs_f64());
    let stats: Value = c
        .get(format!("{sim_url}/sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    Ok(RunResult {
        per_kind,
        completed,
        failed,
        makespan_s: last - first,
        stats,
    })
}

/// Scheduling end to end: one seeded mixed trace straight to the simulator and through im-http.
pub async fn scheduling(
    out: &mut String,
    hours: f64,
    scale: f64,
    load: f64,
    seed: u64,
) -> Result<()> {
    let models = sim::localai_catalogue();
    let spec = TraceSpec::mixed(1.0, Duration::from_secs_f64(hours * 3600.0), seed);
    let cap = spec.capacity(&models);
    let trace = TraceSpec {
        rate: cap * load,
        ..spec
    }
    .generate();
    let _ = writeln!(
        out,
        "### 2. Scheduling end to end: straight to LocalAI vs through im-http\n"
    );
    let _ = writeln!(
        out,
        "One seeded mixed trace ({} requests, {hours} h at {:.0}% of capacity, seed {seed}: 50% txt2txt, 15% img2txt, 20% txt2img, \
         15% img2img; chat 1-3 s, images 5-8 s) replayed in real time against localai-sim's default catalogue \
         (loads 6/8/12 s, 4/2/1 slots, one resident model, LRU wait then overcommit) with `--time-scale {scale}`; \
         figures below are in simulated seconds. im-http runs its bounded default with bounds and deadlines scaled by \
         the same factor. Latency = request sent to answer received.\n",
        trace.len(),
        load * 100.0
    );
    let _ = writeln!(
        out,
        "| path | completed/h | failed | model loads | overcommits | peak resident | latency p50/p99/max (s) txt2txt | txt2img | img2img | img2txt |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for through_im in [false, true] {
        let sim_p = free_port();
        let _sim = start_sim(sim_p, scale, None)?;
        let sim_url = format!("http://127.0.0.1:{sim_p}");
        let mut _im: Option<Proc> = None;
        let (base, key, name) = if through_im {
            let im_p = free_port();
            let cfg = format!(
                "policy = \"bounded\"\n[bounds]\nmax_dwell_s = {}\nmax_batch = 64\nstarvation_after_s = {}\n\
                 [limits]\nmax_queued_total = 100000\n[deadlines_s]\ntxt2txt = 1e6\ntxt2img = 1e6\nimg2img = 1e6\nimg2txt = 1e6\n{}",
                120.0 * scale,
                90.0 * scale,
                models_toml(4)
            );
            _im = Some(start_im(im_p, sim_p, &cfg)?);
            (
                format!("http://127.0.0.1:{im_p}"),
                Some(KEY),
                "through im-http (bounded)",
            )
        } else {
            (sim_url.clone(), None, "straight to LocalAI (FIFO)")
        };
        let r = replay(&base, &sim_url, key, &trace, scale).await?;
        let cell = |k: Kind| {
            let v = &r.per_kind.iter().find(|(x, _)| *x == k).expect("kind").1;
            format!("{:.0}/{:.0}/{:.0}", q(v, 0.5), q(v, 0.99), q(v, 1.0))
        };
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.completed as f64 * 3600.0 / r.makespan_s.max(1e-9),
            r.failed,
            r.stats["loads"],
            r.stats["overcommits"],
            r.stats["peak_resident_models"],
            cell(Kind::Txt2Txt),
            cell(Kind::Txt2Img),
            cell(Kind::Img2Img),
            cell(Kind::Img2Txt)
        );
    }
    let _ = writeln!(out);
    Ok(())
}
