//! Memory: RSS of im-http idle, with many small requests queued, and with queued image payloads.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

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

/// How many requests `base` holds: im's `/queue-status` (`waiting`), or the bare server's `/held`.
async fn waiting(c: &reqwest::Client, base: &str, count_path: &str) -> u64 {
    match c
        .get(format!("{base}{count_path}"))
        .header("x-api-key", KEY)
        .send()
        .await
    {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["waiting"].as_u64().or_else(|| v.as_u64()))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Send `n` requests of `body` to `path` and wait until `count_path` says they are all held.
async fn fill(
    base: &str,
    n: usize,
    path: &'static str,
    body: Arc<Value>,
    count_path: &str,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    fill_after(base, 0, n, path, body, count_path).await
}

/// [`fill`] with `held_before` requests already held: until `held_before + n` are.
async fn fill_after(
    base: &str,
    held_before: usize,
    n: usize,
    path: &'static str,
    body: Arc<Value>,
    count_path: &str,
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
    let total = (held_before + n) as u64;
    while waiting(&c, base, count_path).await + 1 < total {
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {total} requests queued",
                waiting(&c, base, count_path).await
            );
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
    // Every client is on loopback: the per-peer connection cap is raised with the total.
    let cfg = format!(
        "[limits]\nmax_queued_total = 20000\nmax_queued_bytes = 1073741824\n[deadlines_s]\ntxt2txt = 3600.0\ntxt2img = 3600.0\nimg2img = 3600.0\nimg2txt = 3600.0\n\
         [http]\nbody_limit_bytes = 8388608\nmax_connections = 20000\nmax_connections_per_peer = 20000\n{}",
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
    // The CPU a request costs to queue, measured in two steps: the first thousand (a queue
    // that small has its waits predicted by replaying the policy), then the rest.
    let cpu = || crate::bench::cpu_seconds(im.0.id());
    let cpu_idle = cpu();
    let mut hs = fill(&base, 1_000, "/v1/chat/completions", small.clone(), QUEUE).await?;
    let cpu_first = cpu();
    hs.extend(
        fill_after(
            &base,
            1_000,
            9_000,
            "/v1/chat/completions",
            small.clone(),
            QUEUE,
        )
        .await?,
    );
    let cpu_rest = cpu();
    let full = im.rss_kib();
    let grow = (full - idle.min(full)) as f64;
    let _ = writeln!(
        out,
        "| 10,000 small requests queued | {:.1} | {:.1} | {:.1} KiB |",
        full as f64 / 1024.0,
        grow / 1024.0,
        grow / 10_000.0
    );
    // Their clients hang up: every request leaves (cancelled), and what is given back shows, at
    // once and once jemalloc's decay (10 s) has passed.
    for h in hs {
        h.abort();
    }
    let c = client();
    let start = Instant::now();
    while waiting(&c, &base, QUEUE).await > 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (when, wait) in [("at once", 1), ("15 s later", 15)] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let after = im.rss_kib();
        let _ = writeln!(
            out,
            "| the same 10,000 gone (their clients hung up), {when} | {:.1} | {:.1} | - |",
            after as f64 / 1024.0,
            (after - idle.min(after)) as f64 / 1024.0
        );
    }
    drop(im);
    let queueing_cpu = format!(
        "CPU of im-http while the small requests queue (user and system, the fill's own polling of \
         `/queue-status` included): **{:.0} µs** per request for the first 1,000, {:.0} µs for the \
         next 9,000.",
        (cpu_first - cpu_idle) * 1e6 / 1_000.0,
        (cpu_rest - cpu_first) * 1e6 / 9_000.0
    );
    let floor = held_by_bare_server(small.clone()).await?;
    let _ = writeln!(
        out,
        "| 10,000 small requests held by a bare hyper server (the floor) | {:.1} | {:.1} | {:.1} KiB |",
        floor.full_kib as f64 / 1024.0,
        floor.growth_kib() / 1024.0,
        floor.growth_kib() / 10_000.0
    );
    let heap = live_heap_per_queued(up, &cfg, small).await?;

    // A 4 MiB base64 `file`: a real PNG header (so it passes validation) padded with data.
    let mut raw = localai_sim::image::png(8, 8, 1);
    raw.resize(3 * 1024 * 1024, 0xA5);
    let file = base64::engine::general_purpose::STANDARD.encode(&raw);
    let payload_mib = file.len() as f64 / (1024.0 * 1024.0);
    let big = Arc::new(json!({"model": SD, "prompt": "p", "size": "64x64", "file": file}));
    let p = free_port();
    let im = start_im(p, up, &cfg)?;
    let base = format!("http://127.0.0.1:{p}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = im.rss_kib();
    let hs = fill(&base, 100, "/v1/images/generations", big.clone(), QUEUE).await?;
    let full = im.rss_kib();
    let grow = (full - idle.min(full)) as f64 / 1024.0;
    let _ = writeln!(
        out,
        "| 100 queued img2img, {payload_mib:.1} MiB payload each | {:.1} | {grow:.1} | {:.2} MiB = {:.2}x the payload |",
        full as f64 / 1024.0,
        grow / 100.0,
        grow / 100.0 / payload_mib
    );
    for h in hs {
        h.abort();
    }
    let _ = writeln!(
        out,
        "\nThe floor is `localai-client`'s example `bare_waiting`: hyper's HTTP/1 server on im's runtime, each request's \
         body read whole and dropped, no answer; what a queued request costs im-http above it is im's own. The live heap \
         of a queued small request (the `count-allocations` build, bytes allocated less bytes freed, 10,000 queued): \
         **{:.1} KiB**, more than its resident size because hyper reserves buffers whose pages are never written.",
        heap / 1024.0
    );
    let _ = writeln!(out, "\n{queueing_cpu}");
    let _ = writeln!(
        out,
        "\nThe payload is copied once out of the request body (which is dropped before the request queues) and shared \
         by `Arc` between attempts; the one running request also has its upstream JSON body serialised while in flight. \
         Blocks of 64 KiB and more (a body gathered from its pieces) come from jemalloc's arena for large blocks, which \
         gives their pages back when they are freed, so RSS tracks what im holds.\n"
    );
    Ok(())
}

/// Where im-http says how many requests wait.
const QUEUE: &str = "/queue-status";

/// RSS of a process before and after a fill.
struct Held {
    idle_kib: u64,
    full_kib: u64,
}

impl Held {
    fn growth_kib(&self) -> f64 {
        self.full_kib.saturating_sub(self.idle_kib) as f64
    }
}

/// RSS of the bare hyper server ([`BARE_WAITING`]) idle and holding 10,000 `body` requests.
async fn held_by_bare_server(body: Arc<Value>) -> Result<Held> {
    let port = free_port();
    let bin = release_bin("examples").join(BARE_WAITING);
    let server = Proc(
        std::process::Command::new(&bin)
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    wait_ready(port, "/held", None)?;
    let base = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = server.rss_kib();
    let hs = fill(&base, 10_000, "/v1/chat/completions", body, "/held").await?;
    let full_kib = server.rss_kib();
    for h in hs {
        h.abort();
    }
    Ok(Held { idle_kib, full_kib })
}

/// The heap a queued `body` request holds in im-http, in bytes: the allocation-counting build
/// ([`COUNTING_IM`]) reports the bytes live, read idle and with 10,000 queued.
async fn live_heap_per_queued(upstream: u16, cfg: &str, body: Arc<Value>) -> Result<f64> {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("im-bench-live-{port}"));
    let env = [("IM_ALLOCATIONS_FILE".to_owned(), file.display().to_string())];
    let _im = start_im_with(
        im_command(&release_bin(COUNTING_IM), port, upstream, cfg, &env)?,
        port,
    )?;
    let live = || -> Result<f64> {
        // The file is rewritten ten times a second: wait for a fresh value.
        std::thread::sleep(Duration::from_millis(250));
        let s = std::fs::read_to_string(&file).context("reading the live heap")?;
        let bytes = s.split_whitespace().nth(1).unwrap_or_default();
        bytes.parse().context("parsing the live heap")
    };
    let base = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = live()?;
    let hs = fill(&base, 10_000, "/v1/chat/completions", body, QUEUE).await?;
    let full = live()?;
    for h in hs {
        h.abort();
    }
    let _ = std::fs::remove_file(&file);
    Ok((full - idle) / 10_000.0)
}
