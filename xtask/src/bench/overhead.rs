//! Overhead: the same request stream straight to the zero-latency simulator, through nginx's
//! `proxy_pass`, through im-http, and through a bare hyper proxy (the floor of im's stack),
//! interleaved.

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

/// Microseconds of CPU the second bare proxy spends on each request besides passing it on: how
/// much a proxy's own work per request costs its throughput on this machine, beside im's.
const WORK_US: u64 = 8;

/// The command that starts the bare hyper proxy ([`BARE_PROXY`]) on `port` in front of
/// `upstream_port`, spending `work_us` of CPU on each request.
pub(super) fn bare_proxy_command(port: u16, upstream_port: u16, work_us: u64) -> Command {
    let mut cmd = Command::new(release_bin("examples").join(BARE_PROXY));
    cmd.args([
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{upstream_port}"),
        work_us.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// [`bare_proxy_command`], started and ready.
fn start_bare_proxy(port: u16, upstream_port: u16, work_us: u64) -> Result<Proc> {
    // It passes every path on: the simulator's readiness answers through it.
    start_ready(
        &mut bare_proxy_command(port, upstream_port, work_us),
        port,
        "/readyz",
    )
}

/// The command that starts nginx with `workers` worker processes on `port` in front of
/// `upstream_port` (a keepalive upstream, no access log), its configuration written beside it.
fn nginx_command(port: u16, upstream_port: u16, workers: usize) -> Result<Command> {
    let dir = std::env::temp_dir().join(format!("im-bench-nginx-{port}"));
    std::fs::create_dir_all(&dir)?;
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
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
    let mut cmd = Command::new(nginx);
    cmd.arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// nginx started by `cmd` (an [`nginx_command`], maybe pinned) and ready on `port`; held as
/// nginx before it is waited for, so a failed start still stops its workers.
fn start_nginx_with(mut cmd: Command, port: u16) -> Result<Nginx> {
    let nginx = Nginx(Proc(cmd.spawn().context("starting nginx")?));
    wait_ready(port, "/readyz", None)?;
    Ok(nginx)
}

/// The key the overhead runs send: its tenant has a weight.
pub(super) const TENANT_KEY: &str = "bench-tenant-key";

/// im-http's configuration in the overhead runs: the bench key belongs to a tenant with a
/// weight (fair share on), and slots are high enough that im's queue never holds work back (this
/// measures im's own cost).
pub(super) fn config() -> String {
    format!(
        "policy = \"bounded\"\n\
         keys = [{{ key = \"{TENANT_KEY}\", scopes = [\"infer\"], tenant = \"bench\" }}]\n\
         [limits]\nmax_queued_total = 100000\n\n\
         [[tenants]]\nname = \"bench\"\nweight = 2\n\n{}",
        models_toml(256)
    )
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

/// oha's figures for `conns` connections sending `body` to `url` for `secs` (at `rate` requests a
/// second, or as fast as they can), oha itself on `cpu` when given.
fn oha(
    url: &str,
    key: Option<&str>,
    body: &str,
    secs: u64,
    rate: Option<u32>,
    conns: u32,
    cpu: Option<usize>,
) -> Result<Load> {
    let mut cmd = Command::new("oha");
    if let Some(cpu) = cpu {
        cmd = on_cpu(cpu, &cmd);
    }
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

/// What the bare proxy with work says of the throughput target: at how much own work per request
/// (above the bare proxy) a proxy on this machine falls to 0.8 of nginx's throughput, from the
/// bare proxy's and the busy one's CPU per request and share of nginx's throughput (the line
/// through the two).
fn work_budget(bare: (f64, f64), busy: (f64, f64)) -> String {
    let ((cpu0, share0), (cpu1, share1)) = (bare, busy);
    let lost_per_us = (share0 - share1) / (cpu1 - cpu0);
    let budget = if lost_per_us > 0.0 && share0 > 0.8 {
        format!(
            "{:.0} µs of own work would leave 0.8",
            (share0 - 0.8) / lost_per_us
        )
    } else {
        "no budget read (the two bare proxies did not differ as expected)".to_owned()
    };
    format!(
        "the bare proxy spending {:.0} µs more reaches {share1:.2} of nginx's throughput (the bare one {share0:.2}): {budget}",
        cpu1 - cpu0
    )
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
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
    let cfg = config();
    let im = start_im(im_p, sim_p, &cfg)?;
    let ngx = start_nginx_with(nginx_command(ngx_p, sim_p, 2)?, ngx_p)?;
    let (bare_p, busy_p) = (free_port(), free_port());
    let bare = start_bare_proxy(bare_p, sim_p, 0)?;
    let busy = start_bare_proxy(busy_p, sim_p, WORK_US)?;
    // Whose CPU time counts as the proxy's, per target.
    let proxy_pid = [
        None,
        Some(ngx.0.0.id()),
        Some(im.0.id()),
        Some(bare.0.id()),
        Some(busy.0.id()),
    ];
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    let busy_name = format!("bare hyper proxy + {WORK_US} µs of work");
    let targets: [(&str, String, Option<&str>); 5] = [
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
            Some(TENANT_KEY),
        ),
        (
            "bare hyper proxy",
            format!("http://127.0.0.1:{bare_p}/v1/chat/completions"),
            None,
        ),
        (
            &busy_name,
            format!("http://127.0.0.1:{busy_p}/v1/chat/completions"),
            None,
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
        oha(url, *key, &body, 2, None, 8, None)?;
    }
    let _ = writeln!(
        out,
        "### 1. Overhead: direct vs nginx `proxy_pass` vs im-http vs a bare hyper proxy\n"
    );
    let _ = writeln!(
        out,
        "Request: `POST /v1/chat/completions` (1 token) against localai-sim with `--time-scale 0` (zero latency). \
         im-http with auth, validation, queueing and metrics on, logging at `RUST_LOG=error` (nginx's access log is off); nginx 1.22 with a keepalive upstream (128); \
         the bare hyper proxy (`crates/localai-client/examples/bare_proxy.rs`): hyper's server and client on im's runtime \
         (tokio's current-thread scheduler), bodies read whole and passed on, no routing, keys, queue, metrics or logs, the floor of im's stack; \
         and the same proxy spending {WORK_US} µs of CPU on each request (a busy loop), which measures what a proxy's own work per request costs its throughput on this machine, \
         where the load generator, the simulator and the proxy share two cores. \
         Load generator: oha ({secs} s per cell, {rounds} interleaved rounds, median). im's `max_in_flight` is set above the \
         connection count so its queue never holds work back: this isolates im's own cost. \
         im's configuration (beside `--api-keys {KEY}`; keys, validation, queueing, metrics, logs and the model-echo check are on by default):\n\n\
         ```toml\n{}```\n",
        cfg.trim_start()
    );
    let _ = writeln!(
        out,
        "| load | target | req/s | p50 ms | p99 ms | success | throughput / direct | added p50 ms | added p99 ms | proxy CPU µs/req | simulator CPU µs/req |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut verdict = Vec::new();
    for (name, rate, conns) in scenarios {
        let n_targets = targets.len();
        let mut cells: Vec<Vec<Load>> = vec![Vec::new(); n_targets];
        for r in 0..rounds {
            for i in 0..n_targets {
                let t = (i + r) % n_targets; // rotate the order so no target always goes first
                let (_, url, key) = &targets[t];
                let cpu = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);
                let (proxy0, sim0) = (cpu(proxy_pid[t]), cpu(Some(sim.0.id())));
                let mut load = oha(url, *key, &body, secs, rate, conns, None)?;
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
        let (n, im, bare, busy) = (med[1], med[2], med[3], med[4]);
        if rate.is_none() {
            let (im_ratio, nginx_ratio) = (im.rps / d.rps, n.rps / d.rps);
            let cpu = im.proxy_cpu_us / n.proxy_cpu_us;
            verdict.push(format!(
                "{name}: CPU per request im-http {:.0} µs, nginx {:.0} µs = {cpu:.1}x (target <= 2x {}); \
                 throughput / direct im-http {im_ratio:.2}, nginx {nginx_ratio:.2} = {:.2} of nginx's (target >= 0.8 {}; \
                 nginx's CPU per request over im-http's: {:.2}); the bare hyper proxy {:.0} µs and {:.2} of direct, so im's own work is {:.0} µs; \
                 {}; the simulator's own HTTP server {:.0} µs",
                im.proxy_cpu_us,
                n.proxy_cpu_us,
                met(cpu <= 2.0),
                im_ratio / nginx_ratio,
                met(im_ratio >= 0.8 * nginx_ratio),
                n.proxy_cpu_us / im.proxy_cpu_us,
                bare.proxy_cpu_us,
                bare.rps / d.rps,
                im.proxy_cpu_us - bare.proxy_cpu_us,
                work_budget(
                    (bare.proxy_cpu_us, bare.rps / n.rps),
                    (busy.proxy_cpu_us, busy.rps / n.rps)
                ),
                d.sim_cpu_us,
            ));
        }
        if rate == Some(500) {
            let gap = (im.p50_ms - d.p50_ms) - (n.p50_ms - d.p50_ms);
            verdict.push(format!(
                "500 req/s: im-http adds {:+.3} ms at p50, nginx {:+.3} ms: im - nginx = {gap:+.3} ms (target <= 0.2 ms {})",
                im.p50_ms - d.p50_ms,
                n.p50_ms - d.p50_ms,
                met(gap <= 0.2),
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

/// `cmd` to run on CPU `cpu` alone, its output discarded.
fn quiet_on_cpu(cpu: usize, cmd: &Command) -> Command {
    let mut pinned = on_cpu(cpu, cmd);
    pinned.stdout(Stdio::null()).stderr(Stdio::null());
    pinned
}

/// `cmd` started on CPU `cpu` alone, ready once `port` answers `path`.
fn start_on_cpu(cpu: usize, cmd: &Command, port: u16, path: &str) -> Result<Proc> {
    start_ready(&mut quiet_on_cpu(cpu, cmd), port, path)
}

/// Throughput with each proxy on a core of its own: the load generator and the simulator on CPU
/// 0, the proxy alone on CPU 1 (nginx with one worker; im-http and the bare proxy have one
/// thread each). On the shared cores of [`overhead()`] a proxy's throughput is its share of two
/// cores the load generator and the simulator also need, which its CPU per request sets; here the
/// proxy does not take CPU from what is behind it and in front of it, so the ratio reads whether
/// it keeps up with them, which is what a proxy's throughput means where it is deployed.
pub fn own_core(out: &mut String, secs: u64, rounds: usize) -> Result<()> {
    let _ = writeln!(out, "#### Each proxy on a core of its own\n");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        let _ = writeln!(out, "Skipped: this machine has one CPU.\n");
        return Ok(());
    }
    if Command::new("taskset").arg("--version").output().is_err() {
        let _ = writeln!(out, "Skipped: `taskset` (util-linux) is not installed.\n");
        return Ok(());
    }
    let (sim_p, im_p, ngx_p, bare_p) = (free_port(), free_port(), free_port(), free_port());
    let sim = start_on_cpu(0, &sim_command(sim_p, 0.0, None), sim_p, "/readyz")?;
    let ngx = start_nginx_with(quiet_on_cpu(1, &nginx_command(ngx_p, sim_p, 1)?), ngx_p)?;
    let im_cmd = im_command(&release_bin("im-http"), im_p, sim_p, &config(), &[])?;
    let im = start_on_cpu(1, &im_cmd, im_p, "/health")?;
    let bare = start_on_cpu(1, &bare_proxy_command(bare_p, sim_p, 0), bare_p, "/readyz")?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let targets: [(&str, String, Option<&str>, Option<u32>); 4] = [
        ("direct", url(sim_p), None, None),
        ("nginx (one worker)", url(ngx_p), None, Some(ngx.0.0.id())),
        ("im-http", url(im_p), Some(TENANT_KEY), Some(im.0.id())),
        ("bare hyper proxy", url(bare_p), None, Some(bare.0.id())),
    ];
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    for (_, url, key, _) in &targets {
        oha(url, *key, &body, 2, None, 8, Some(0))?;
    }
    let _ = writeln!(
        out,
        "The same request, configuration and rounds, with oha and the simulator on CPU 0 and the proxy alone on CPU 1 \
         (`taskset`; nginx with `worker_processes 1`). Above, on two shared cores, a proxy's throughput is the share of the \
         cores it leaves to the load generator and the simulator, so its ratio to direct is its CPU per request read again \
         (nginx's CPU over im-http's is printed beside it). Here the proxy takes nothing from them: the ratio reads whether it \
         keeps up with what is behind it, as where im runs in front of GPU servers.\n"
    );
    let _ = writeln!(
        out,
        "| load | target | req/s | throughput / direct | proxy CPU µs/req | the proxy's core busy |\n|---|---|---|---|---|---|"
    );
    let mut verdict = Vec::new();
    for conns in [16u32, 64] {
        let mut cells: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
        for r in 0..rounds {
            for i in 0..targets.len() {
                let t = (i + r) % targets.len();
                let (_, url, key, pid) = &targets[t];
                let cpu = || pid.map_or(0.0, cpu_seconds);
                let before = cpu();
                let mut load = oha(url, *key, &body, secs, None, conns, Some(0))?;
                load.proxy_cpu_us = (cpu() - before) * 1e6 / (load.rps * secs as f64).max(1.0);
                cells[t].push(load);
            }
        }
        let med: Vec<(f64, f64)> = cells
            .iter()
            .map(|c| {
                (
                    median(c.iter().map(|l| l.rps).collect()),
                    median(c.iter().map(|l| l.proxy_cpu_us).collect()),
                )
            })
            .collect();
        let direct = med[0].0;
        for (i, (name, ..)) in targets.iter().enumerate() {
            let (rps, cpu_us) = med[i];
            let (cpu, busy) = if i == 0 {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    format!("{cpu_us:.0}"),
                    format!("{:.0}%", cpu_us * rps / 1e4),
                )
            };
            let _ = writeln!(
                out,
                "| max, {conns} conns | {name} | {rps:.0} | {:.2} | {cpu} | {busy} |",
                rps / direct
            );
        }
        let (nginx_ratio, im_ratio) = (med[1].0 / direct, med[2].0 / direct);
        let (im_rps, im_cpu_us) = med[2];
        verdict.push(format!(
            "max, {conns} conns, each proxy on a core of its own: throughput / direct im-http {im_ratio:.2}, nginx {nginx_ratio:.2} = {:.2} of nginx's (target >= 0.8 {}); \
             im-http's core {:.0}% busy, so one core of im-http passes about {:.0} requests/s at most",
            im_ratio / nginx_ratio,
            met(im_ratio >= 0.8 * nginx_ratio),
            im_cpu_us * im_rps / 1e4,
            1e6 / im_cpu_us.max(1.0),
        ));
    }
    drop((sim, ngx, im, bare));
    let _ = writeln!(out);
    for v in verdict {
        let _ = writeln!(out, "- {v}");
    }
    let _ = writeln!(out);
    Ok(())
}

/// Allocations per proxied chat request: the allocation-counting build of im-http
/// ([`COUNTING_IM`]) with the overhead runs' configuration, `requests` chat requests over 16
/// connections, the process's allocations during them (less its idle rate) divided by the
/// requests served.
pub fn allocations(out: &mut String, requests: u32) -> Result<()> {
    let (sim_p, im_p) = (free_port(), free_port());
    let _sim = start_sim(sim_p, 0.0, None)?;
    let file = std::env::temp_dir().join(format!("im-bench-allocations-{im_p}"));
    let env = [("IM_ALLOCATIONS_FILE".to_owned(), file.display().to_string())];
    let _im = start_im_with(
        im_command(&release_bin(COUNTING_IM), im_p, sim_p, &config(), &env)?,
        im_p,
    )?;
    let url = format!("http://127.0.0.1:{im_p}/v1/chat/completions");
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    let count = || -> Result<u64> {
        // The file is rewritten ten times a second: wait for a fresh value.
        std::thread::sleep(std::time::Duration::from_millis(250));
        let s = std::fs::read_to_string(&file).context("reading the allocation count")?;
        let first = s.split_whitespace().next().unwrap_or_default();
        first.parse().context("parsing the allocation count")
    };
    oha(&url, Some(TENANT_KEY), &body, 2, None, 16, None)?;
    let idle0 = count()?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let idle1 = count()?;
    let idle_per_s = idle1.saturating_sub(idle0) as f64 / 1.25;
    let started = std::time::Instant::now();
    let before = count()?;
    let ok = Command::new("oha")
        .args([
            "--no-tui",
            "-n",
            &requests.to_string(),
            "-c",
            "16",
            "-m",
            "POST",
        ])
        .args(["-H", "content-type: application/json"])
        .args(["-H", &format!("x-api-key: {TENANT_KEY}")])
        .args(["-d", &body, &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running oha")?
        .success();
    let after = count()?;
    if !ok {
        anyhow::bail!("oha failed");
    }
    let background = idle_per_s * started.elapsed().as_secs_f64();
    let per_request = (after.saturating_sub(before) as f64 - background) / f64::from(requests);
    let _ = writeln!(
        out,
        "Allocations per proxied chat request (im-http built with `count-allocations`, {requests} requests over 16 connections, \
         the idle process's {idle_per_s:.0} allocations/s taken off): **{per_request:.0}** \
         (before the lean-path work, commit 9acf4a4: {ALLOCATIONS_BEFORE}).\n"
    );
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Allocations per proxied chat request measured by [`allocations`] on commit 9acf4a4, before
/// the lean-path work (2026-12-03).
const ALLOCATIONS_BEFORE: &str = "244";
