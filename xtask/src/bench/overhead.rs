//! Overhead: the same request stream straight to the zero-latency simulator, through nginx's
//! `proxy_pass`, and through im-http, interleaved.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use super::*;

/// nginx's master: stopped with SIGTERM, which also stops its workers (a SIGKILL would leave
/// them running).
struct Nginx(Proc);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.0.id().to_string()).status();
        for _ in 0..50 {
            if matches!(self.0.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn start_nginx(port: u16, upstream_port: u16) -> Result<Nginx> {
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
    let nginx = Nginx(p);
    wait_ready(port, "/readyz", None)?;
    Ok(nginx)
}

/// One oha run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub success: f64,
    /// CPU time per request of the proxy in front (im-http or nginx with its workers), in µs.
    pub proxy_cpu_us: f64,
    /// CPU time per request of the simulator behind, in µs.
    pub sim_cpu_us: f64,
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
        ..Load::default()
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
    let sim = start_sim(sim_p, 0.0, None)?;
    // Slots high enough that im's queue never holds work back here: this measures im's own cost.
    let cfg = format!(
        "policy = \"bounded\"\n[limits]\nmax_queued_total = 100000\n{}",
        models_toml(256)
    );
    let im = start_im(im_p, sim_p, &cfg)?;
    let ngx = start_nginx(ngx_p, sim_p)?;
    // Whose CPU time counts as the proxy's, per target.
    let proxy_pid = [None, Some(ngx.0.0.id()), Some(im.0.id())];
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
        "| load | target | req/s | p50 ms | p99 ms | success | throughput / direct | added p50 ms | added p99 ms | proxy CPU µs/req | simulator CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut verdict = Vec::new();
    for (name, rate, conns) in scenarios {
        let mut cells: Vec<Vec<Load>> = vec![Vec::new(); 3];
        for r in 0..rounds {
            for i in 0..3 {
                let t = (i + r) % 3; // rotate the order so no target always goes first
                let (_, url, key) = &targets[t];
                let cpu = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);
                let (proxy0, sim0) = (cpu(proxy_pid[t]), cpu(Some(sim.0.id())));
                let mut load = oha(url, *key, &body, secs, rate, conns)?;
                let requests = (load.rps * secs as f64).max(1.0);
                load.proxy_cpu_us = (cpu(proxy_pid[t]) - proxy0) * 1e6 / requests;
                load.sim_cpu_us = (cpu(Some(sim.0.id())) - sim0) * 1e6 / requests;
                cells[t].push(load);
            }
        }
        let med: Vec<Load> = cells
            .iter()
            .map(|c| Load {
                rps: median(c.iter().map(|l| l.rps).collect()),
                p50_ms: median(c.iter().map(|l| l.p50_ms).collect()),
                p99_ms: median(c.iter().map(|l| l.p99_ms).collect()),
                success: median(c.iter().map(|l| l.success).collect()),
                proxy_cpu_us: median(c.iter().map(|l| l.proxy_cpu_us).collect()),
                sim_cpu_us: median(c.iter().map(|l| l.sim_cpu_us).collect()),
            })
            .collect();
        let d = med[0];
        for (i, (tname, _, _)) in targets.iter().enumerate() {
            let m = med[i];
            let _ = writeln!(
                out,
                "| {name} | {tname} | {:.0} | {:.3} | {:.3} | {:.1}% | {:.2} | {} | {} | {} | {:.0} |",
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
                if i == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.0}", m.proxy_cpu_us)
                },
                m.sim_cpu_us,
            );
        }
        let (n, im) = (med[1], med[2]);
        if rate.is_none() {
            verdict.push(format!(
                "{name}: im-http throughput ratio {:.2} vs nginx {:.2} (target >= 0.5 {}); CPU per request: im-http {:.0} µs, nginx {:.0} µs, the simulator's own HTTP server {:.0} µs",
                im.rps / d.rps,
                n.rps / d.rps,
                if im.rps / d.rps >= 0.5 { "met" } else { "MISSED" },
                im.proxy_cpu_us,
                n.proxy_cpu_us,
                d.sim_cpu_us,
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
