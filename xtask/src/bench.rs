//! `cargo xtask bench`: overhead against direct and nginx, scheduling end to end, memory.
//! Everything runs on loopback; every figure is a ratio measured side by side in one run.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const KEY: &str = "bench-key";
pub const LLM: &str = "llama-3.2-3b-instruct";
pub const VLM: &str = "llava-1.6-mistral-7b";
pub const SD: &str = "stablediffusion";

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.0.id())
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// A minimal blocking GET returning the status code (readiness polling without a client crate).
pub fn http_status(port: u16, path: &str, key: Option<&str>) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let auth = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn wait_ready(port: u16, path: &str, key: Option<&str>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if http_status(port, path, key).is_some_and(|s| s < 500) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("port {port} did not become ready")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn release_bin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    target.join("release").join(name)
}

/// Install what the benchmark needs: Debian's nginx and `oha` (a well-kept Rust load generator).
pub fn ensure_tools() -> Result<()> {
    if Command::new("nginx").arg("-v").output().is_err() && !Path::new("/usr/sbin/nginx").exists() {
        eprintln!("bench: installing nginx-light (Debian)");
        let _ = Command::new("apt-get").arg("update").status();
        let ok = Command::new("apt-get")
            .args(["install", "-y", "nginx-light"])
            .status()?
            .success();
        if !ok {
            bail!("could not install nginx-light");
        }
    }
    if Command::new("oha").arg("--version").output().is_err() {
        eprintln!("bench: installing oha with cargo install (a few minutes, once)");
        let ok = Command::new("cargo")
            .args(["install", "oha", "--locked"])
            .status()?
            .success();
        if !ok {
            bail!("could not install oha");
        }
    }
    let ok = Command::new("cargo")
        .args(["build", "--release", "-p", "im-http", "-p", "localai-sim"])
        .current_dir(root())
        .status()?
        .success();
    if !ok {
        bail!("release build failed");
    }
    Ok(())
}

pub fn start_sim(port: u16, time_scale: f64, config: Option<&Path>) -> Result<Proc> {
    let mut cmd = Command::new(release_bin("localai-sim"));
    cmd.args([
        "--port",
        &port.to_string(),
        "--time-scale",
        &time_scale.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let p = Proc(cmd.spawn().context("starting localai-sim")?);
    wait_ready(port, "/readyz", None)?;
    Ok(p)
}

pub fn start_im(port: u16, upstream_port: u16, config: &str) -> Result<Proc> {
    start_im_env(
        port,
        upstream_port,
        config,
        std::env::var("IM_BENCH_GLIBC_TUNABLES").ok(),
    )
}

/// Start im-http, optionally with `GLIBC_TUNABLES` set.
pub fn start_im_env(
    port: u16,
    upstream_port: u16,
    config: &str,
    tunables: Option<String>,
) -> Result<Proc> {
    let path = std::env::temp_dir().join(format!("im-bench-{port}.toml"));
    std::fs::write(&path, config)?;
    let p = Proc(
        Command::new(release_bin("im-http"))
            .arg("--config")
            .arg(&path)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &format!("http://127.0.0.1:{upstream_port}"),
            ])
            .args(["--api-keys", KEY])
            .env("RUST_LOG", "error")
            .env_remove("IM_CONFIG")
            .envs(tunables.map(|t| ("GLIBC_TUNABLES", t)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting im-http")?,
    );
    wait_ready(port, "/health", None)?;
    Ok(p)
}

pub fn models_toml(slots_llm: u32) -> String {
    format!(
        "[[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\nmax_in_flight = {slots_llm}\n\n\
         [[models]]\nname = \"{VLM}\"\nkinds = [\"img2txt\", \"txt2txt\"]\nmax_in_flight = 2\n\n\
         [[models]]\nname = \"{SD}\"\nkinds = [\"txt2img\", \"img2img\"]\nmax_in_flight = 1\n"
    )
}

fn start_nginx(port: u16, upstream_port: u16) -> Result<Proc> {
    let dir = std::env::temp_dir().join(format!("im-bench-nginx-{port}"));
    std::fs::create_dir_all(&dir)?;
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
           upstream sim {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://sim;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let p = Proc(
        Command::new(nginx)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?,
    );
    wait_ready(port, "/readyz", None)?;
    Ok(p)
}

/// One oha run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub success: f64,
}

fn oha(
    url: &str,
    key: Option<&str>,
    body: &str,
    secs: u64,
    rate: Option<u32>,
    conns: u32,
) -> Result<Load> {
    let mut cmd = Command::new("oha");
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        &format!("{secs}s"),
        "-c",
        &conns.to_string(),
    ])
    .args([
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        body,
    ]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("x-api-key: {k}")]);
    }
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string()]);
    }
    let out = cmd
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .context("running oha")?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("oha output: {}", String::from_utf8_lossy(&out.stdout)))?;
    let ms = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(Load {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        success: v["summary"]["successRate"].as_f64().unwrap_or(0.0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Overhead: the same request stream straight to the zero-latency simulator, through nginx, and
/// through im-http, interleaved, at fixed rates and at maximum throughput.
pub fn overhead(out: &mut String, secs: u64, rounds: usize) -> Result<()> {
    let (sim_p, im_p, ngx_p) = (free_port(), free_port(), free_port());
    let _sim = start_sim(sim_p, 0.0, None)?;
    // Slots high enough that im's queue never holds work back here: this measures im's own cost.
    let cfg = format!(
        "policy = \"bounded\"\n[limits]\nmax_queued_total = 100000\n{}",
        models_toml(256)
    );
    let _im = start_im(im_p, sim_p, &cfg)?;
    let _ngx = start_nginx(ngx_p, sim_p)?;
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    let targets: [(&str, String, Option<&str>); 3] = [
        (
            "direct",
            format!("http://127.0.0.1:{sim_p}/v1/chat/completions"),
            None,
        ),
        (
            "nginx",
            format!("http://127.0.0.1:{ngx_p}/v1/chat/completions"),
            None,
        ),
        (
            "im-http",
            format!("http://127.0.0.1:{im_p}/v1/chat/completions"),
            Some(KEY),
        ),
    ];
    let scenarios: [(&str, Option<u32>, u32); 4] = [
        ("100 req/s", Some(100), 8),
        ("500 req/s", Some(500), 16),
        ("max, 16 conns", None, 16),
        ("max, 64 conns", None, 64),
    ];
    // Warm every path.
    for (_, url, key) in &targets {
        oha(url, *key, &body, 2, None, 8)?;
    }
    let _ = writeln!(
        out,
        "### 1. Overhead: direct vs nginx `proxy_pass` vs im-http\n"
    );
    let _ = writeln!(
        out,
        "Request: `POST /v1/chat/completions` (1 token) against localai-sim with `--time-scale 0` (zero latency). \
         im-http with auth, validation, queueing, metrics and logs on; nginx 1.22 with a keepalive upstream (128). \
         Load generator: oha ({secs} s per cell, {rounds} interleaved rounds, median). im's `max_in_flight` is set above the \
         connection count so its queue never holds work back: this isolates im's own cost.\n"
    );
    let _ = writeln!(
        out,
        "| load | target | req/s | p50 ms | p99 ms | success | throughput / direct | added p50 ms | added p99 ms |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut verdict = Vec::new();
    for (name, rate, conns) in scenarios {
        let mut cells: Vec<Vec<Load>> = vec![Vec::new(); 3];
        for r in 0..rounds {
            for i in 0..3 {
                let t = (i + r) % 3; // rotate the order so no target always goes first
                let (_, url, key) = &targets[t];
                cells[t].push(oha(url, *key, &body, secs, rate, conns)?);
            }
        }
        let med: Vec<Load> = cells
            .iter()
            .map(|c| Load {
                rps: median(c.iter().map(|l| l.rps).collect()),
                p50_ms: median(c.iter().map(|l| l.p50_ms).collect()),
                p99_ms: median(c.iter().map(|l| l.p99_ms).collect()),
                success: median(c.iter().map(|l| l.success).collect()),
            })
            .collect();
        let d = med[0];
        for (i, (tname, _, _)) in targets.iter().enumerate() {
            let m = med[i];
            let _ = writeln!(
                out,
                "| {name} | {tname} | {:.0} | {:.3} | {:.3} | {:.1}% | {:.2} | {} | {} |",
                m.rps,
                m.p50_ms,
                m.p99_ms,
                m.success * 100.0,
                m.rps / d.rps,
                if i == 0 {
                    "-".to_owned()
                } else {
                    format!("{:+.3}", m.p50_ms - d.p50_ms)
                },
                if i == 0 {
                    "-".to_owned()
                } else {
                    format!("{:+.3}", m.p99_ms - d.p99_ms)
                },
            );
        }
        let (n, im) = (med[1], med[2]);
        if rate.is_none() {
            verdict.push(format!(
                "{name}: im-http throughput ratio {:.2} vs nginx {:.2} ({})",
                im.rps / d.rps,
                n.rps / d.rps,
                if im.rps >= n.rps {
                    "target met"
                } else {
                    "target MISSED"
                }
            ));
        }
        if rate == Some(500) {
            let gap = (im.p50_ms - d.p50_ms) - (n.p50_ms - d.p50_ms);
            verdict.push(format!(
                "500 req/s: im-http adds {:+.3} ms at p50, nginx {:+.3} ms: im - nginx = {gap:+.3} ms ({})",
                im.p50_ms - d.p50_ms,
                n.p50_ms - d.p50_ms,
                if gap <= 0.1 { "target <= 0.1 ms met" } else { "target <= 0.1 ms MISSED" }
            ));
        }
    }
    let _ = writeln!(out);
    for v in verdict {
        let _ = writeln!(out, "- {v}");
    }
    let _ = writeln!(out);
    Ok(())
}
