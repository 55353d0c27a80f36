//! The parts of `cargo xtask bench` that drive HTTP concurrently: scheduling end to end, memory,
//! and the load scenarios of the seeds (`cargo xtask load`).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use inference_queue::Kind;
use inference_queue::sim::{self, TraceSpec};
use serde_json::{Value, json};

use crate::bench::{KEY, LLM, Proc, SD, VLM, free_port, models_toml, start_im, start_sim};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client")
}

fn png_b64(side: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(side, side, 9))
}

/// The HTTP request for a trace item against the OpenAI-compatible routes (served by both the
/// simulator and im-http), sized so the simulator's service time matches the item's.
fn request_for(item: &sim::TraceItem, img: &str) -> (&'static str, Value) {
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
    let mut per_kind: Vec<(Kind, Vec<f64>)> = Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
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

async fn answered_ok(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    }
}

fn q(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
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

/// An upstream that accepts connections and never answers: requests stay queued in im.
fn stalled_upstream() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    Ok(port)
}

async fn waiting(c: &reqwest::Client, base: &str) -> u64 {
    match c
        .get(format!("{base}/queue-status"))
        .header("x-api-key", KEY)
        .send()
        .await
    {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["waiting"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn fill(
    base: &str,
    n: usize,
    path: &'static str,
    body: Arc<Value>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let c = client();
    let mut hs = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, url, body) = (c.clone(), format!("{base}{path}"), body.clone());
        hs.push(tokio::spawn(async move {
            let _ = c
                .post(url)
                .header("x-api-key", KEY)
                .json(&*body)
                .send()
                .await;
        }));
    }
    let start = Instant::now();
    while waiting(&c, base).await + 1 < n as u64 {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("only {} of {n} requests queued", waiting(&c, base).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(hs)
}

/// Memory: RSS idle, with 10,000 small requests queued, and with 100 queued 4 MiB img2img payloads.
pub async fn memory(out: &mut String) -> Result<()> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let want = hard.min(65_536);
    if soft < want {
        rlimit::Resource::NOFILE.set(want, hard)?;
    }
    let up = stalled_upstream()?;
    let cfg = format!(
        "[limits]\nmax_queued_total = 20000\n[deadlines_s]\ntxt2txt = 3600.0\ntxt2img = 3600.0\nimg2img = 3600.0\nimg2txt = 3600.0\n\
         [http]\nbody_limit_bytes = 8388608\n{}",
        models_toml(1)
    );
    let _ = writeln!(out, "### 3. Memory (RSS of im-http)\n");
    let _ = writeln!(
        out,
        "An upstream that accepts and never answers keeps requests queued; RSS from /proc. Each phase uses a fresh im-http.\n"
    );
    let _ = writeln!(
        out,
        "| phase | RSS MiB | growth MiB | per request |\n|---|---|---|---|"
    );

    let p = free_port();
    let im = start_im(p, up, &cfg)?;
    let base = format!("http://127.0.0.1:{p}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = im.rss_kib();
    let _ = writeln!(out, "| idle | {:.1} | - | - |", idle as f64 / 1024.0);
    let small = Arc::new(
        json!({"model": LLM, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}),
    );
    let hs = fill(&base, 10_000, "/v1/chat/completions", small).await?;
    let full = im.rss_kib();
    let grow = (full - idle.min(full)) as f64;
    let _ = writeln!(
        out,
        "| 10,000 small requests queued | {:.1} | {:.1} | {:.1} KiB |",
        full as f64 / 1024.0,
        grow / 1024.0,
        grow / 10_000.0
    );
    for h in hs {
        h.abort();
    }
    drop(im);

    // A 4 MiB base64 `file`: a real PNG header (so it passes validation) padded with data.
    let mut raw = localai_sim::image::png(8, 8, 1);
    raw.resize(3 * 1024 * 1024, 0xA5);
    let file = base64::engine::general_purpose::STANDARD.encode(&raw);
    let payload_mib = file.len() as f64 / (1024.0 * 1024.0);
    let big = Arc::new(json!({"model": SD, "prompt": "p", "size": "64x64", "file": file}));
    for (label, tunables) in [
        ("glibc defaults", None),
        (
            "`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072`",
            Some("glibc.malloc.mmap_threshold=131072".to_owned()),
        ),
    ] {
        let p = free_port();
        let im = crate::bench::start_im_env(p, up, &cfg, tunables)?;
        let base = format!("http://127.0.0.1:{p}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = im.rss_kib();
        let hs = fill(&base, 100, "/v1/images/generations", big.clone()).await?;
        let full = im.rss_kib();
        let grow = (full - idle.min(full)) as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| 100 queued img2img, {payload_mib:.1} MiB payload each, {label} | {:.1} | {grow:.1} | {:.2} MiB = {:.2}x the payload |",
            full as f64 / 1024.0,
            grow / 100.0,
            grow / 100.0 / payload_mib
        );
        for h in hs {
            h.abort();
        }
    }
    let _ = writeln!(
        out,
        "\nThe payload is copied once out of the request body (which is dropped before the request queues) and shared \
         by `Arc` between attempts; the one running request also has its upstream JSON body serialised while in flight. \
         With glibc's default dynamic mmap threshold, the freed body buffers of concurrent uploads stay resident, so RSS \
         overstates live memory; a fixed threshold (the Docker image sets it) returns them to the OS.\n"
    );
    Ok(())
}

/// The seeds' load scenarios: think time between requests per virtual user.
pub fn scenario(name: &str) -> Result<(f64, f64)> {
    Ok(match name {
        "normal" => (1.0, 5.0),
        "peak" => (0.1, 1.0),
        "sustained" => (5.0, 10.0),
        other => bail!("unknown scenario {other:?}: normal, peak or sustained"),
    })
}

/// `cargo xtask load`: virtual users send random kinds with the scenario's think time.
pub async fn load(
    out: &mut String,
    url: &str,
    key: &str,
    name: &str,
    users: usize,
    secs: u64,
) -> Result<()> {
    let (lo, hi) = scenario(name)?;
    let c = client();
    let img = Arc::new(png_b64(16));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut hs = Vec::new();
    for u in 0..users {
        let (c, url, key, img) = (c.clone(), url.to_owned(), key.to_owned(), img.clone());
        hs.push(tokio::spawn(async move {
            let mut rng = inference_queue::Rng::new(u as u64 + 1);
            let mut res = Vec::new();
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs_f64(rng.range_f64(lo, hi))).await;
                let kind = Kind::ALL[(rng.next_u64() % 4) as usize];
                let item = sim::TraceItem {
                    at: inference_queue::Time::ZERO,
                    kind,
                    model: 0,
                    service: Duration::from_secs(2),
                    failures: 0,
                };
                let (path, mut body) = request_for(&item, &img);
                if body.get("max_tokens").is_some() {
                    body["max_tokens"] = json!(32);
                }
                if body.get("step").is_some() {
                    body["step"] = json!(4);
                }
                let t = Instant::now();
                let ok = answered_ok(
                    c.post(format!("{url}{path}"))
                        .header("x-api-key", &key)
                        .json(&body)
                        .send()
                        .await,
                )
                .await;
                res.push((ok, t.elapsed().as_secs_f64() * 1000.0));
            }
            res
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for h in hs {
        for (ok, ms) in h.await? {
            if ok {
                lat.push(ms);
            } else {
                failures += 1;
            }
        }
    }
    let total = lat.len() + failures;
    let _ = writeln!(
        out,
        "| {name} | {users} | {secs} | {total} | {:.2} | {:.0} | {:.0} | {:.0} | {failures} |",
        total as f64 / secs as f64,
        q(&lat, 0.5),
        q(&lat, 0.95),
        q(&lat, 0.99)
    );
    Ok(())
}

/// Start `im-http --simulate` (release) for the load scenarios; returns the process and its URL.
pub fn start_simulated_im(scale: f64) -> Result<(Proc, String)> {
    let p = free_port();
    let child = std::process::Command::new(crate::bench::release_bin("im-http"))
        .args([
            "--simulate",
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--sim-time-scale",
            &scale.to_string(),
            "--api-keys",
            KEY,
        ])
        .env("RUST_LOG", "error")
        .env_remove("IM_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting im-http --simulate")?;
    let proc = Proc(child);
    crate::bench::wait_ready(p, "/health", None)?;
    Ok((proc, format!("http://127.0.0.1:{p}")))
}
