//! Instructions per proxied request, counted: im-http and the bare hyper proxy (the floor of its
//! stack) each serve the same chat requests under valgrind's callgrind, which counts every
//! user-space instruction a process executes. Unlike CPU time, the count does not move with the
//! load of a shared machine, so a change to the request path shows in it run after run. It
//! leaves out the kernel (the sockets' work, the same system calls for both: two `recvfrom`, two
//! `writev` per request) and what a cache miss costs. Where im's own instructions go: the
//! inclusive counts of its stages, by function name (the release build keeps its symbols).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::overhead::{TENANT_KEY, bare_proxy_command, config};
use super::*;

/// Stages of im's path whose inclusive counts are printed: what each is, and the function it is.
const STAGES: [(&str, &str); 5] = [
    (
        "the upstream exchange (the request built and sent, the answer read and its model checked)",
        "<im_engine::backend::LocalAiBackend as im_engine::backend::Backend>::chat::{{closure}}",
    ),
    (
        "the driver task (the core's decisions and records, the attempt's spawn, the answer sent)",
        "im_engine::driver::Driver::run::{{closure}}",
    ),
    (
        "the caller layer (request id, key, scope, the tenant's limits)",
        "<im_http_api::state::WithCaller<S> as tower_service::Service<",
    ),
    (
        "reading the request (its body parsed and validated)",
        "im_service::api::parse::parse",
    ),
    (
        "the answer's figure headers",
        "im_http_api::figures::figure_headers",
    ),
];

/// Requests sent before counting (connections opened, pools and tables grown).
const WARM_UP: u32 = 500;

/// One counted run: instructions in all, and the callgrind profile they came from.
struct Counted {
    total: u64,
    profile: std::path::PathBuf,
}

/// Run `cmd` under callgrind, listening on `port` (ready on `ready_path`); count what it executes
/// while `requests` chat requests pass through it over 4 connections.
fn counted(cmd: &Command, port: u16, ready_path: &str, requests: u32) -> Result<Counted> {
    let out = std::env::temp_dir().join(format!("im-bench-callgrind-{port}"));
    let mut under = Command::new("valgrind");
    under
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => under.env(k, v),
            None => under.env_remove(k),
        };
    }
    let p = Proc(under.spawn().context("starting valgrind")?);
    wait_ready(port, ready_path, None)?;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    send(&url, &body, WARM_UP)?;
    control(p.0.id(), "--zero")?;
    send(&url, &body, requests)?;
    control(p.0.id(), "--dump")?;
    // The dump goes to the profile's first numbered part.
    let profile = out.with_file_name(format!(
        "{}.1",
        out.file_name().unwrap_or_default().to_string_lossy()
    ));
    let total = total_of(&profile)?;
    drop(p);
    let _ = std::fs::remove_file(&out);
    Ok(Counted { total, profile })
}

/// `n` chat requests over 4 connections, every one answered 200.
fn send(url: &str, body: &str, n: u32) -> Result<()> {
    let out = Command::new("oha")
        .args(["--no-tui", "--output-format", "json", "-n", &n.to_string()])
        .args([
            "-c",
            "4",
            "-m",
            "POST",
            "-H",
            "content-type: application/json",
        ])
        .args(["-H", &format!("x-api-key: {TENANT_KEY}"), "-d", body, url])
        .stderr(Stdio::null())
        .output()
        .context("running oha")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha's output")?;
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    if ok != u64::from(n) {
        bail!("{ok} of {n} requests answered 200 under callgrind");
    }
    Ok(())
}

/// `callgrind_control what pid`.
fn control(pid: u32, what: &str) -> Result<()> {
    let ok = Command::new("callgrind_control")
        .args([what, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running callgrind_control")?
        .success();
    if !ok {
        bail!("callgrind_control {what} failed");
    }
    Ok(())
}

/// The instructions a callgrind profile counted (its `totals:` line, once the file is whole).
fn total_of(profile: &Path) -> Result<u64> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(text) = std::fs::read_to_string(profile)
            && let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|n| n.trim().parse().ok())
        {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no totals in {}", profile.display())
}

/// The largest inclusive count of a function whose name contains `name`, from
/// `callgrind_annotate --inclusive=yes`'s listing (`1,234 (5.6%)  file:function [object]`).
fn inclusive(listing: &str, name: &str) -> Option<u64> {
    listing
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().next()?.replace(',', "").parse().ok())
        .max()
}

/// Instructions per proxied chat request: im-http's and the bare proxy's, and im's stages.
pub fn instructions(out: &mut String, requests: u32) -> Result<()> {
    let sim_p = free_port();
    let _sim = start_sim(sim_p, 0.0, None)?;
    let bare_p = free_port();
    let bare = counted(
        &bare_proxy_command(bare_p, sim_p, 0),
        bare_p,
        "/readyz",
        requests,
    )?;
    let im_p = free_port();
    let im = counted(
        &im_command(&release_bin("im-http"), im_p, sim_p, &config(), &[])?,
        im_p,
        "/health",
        requests,
    )?;
    let per = |n: u64| n as f64 / f64::from(requests);
    let (im_per, bare_per) = (per(im.total), per(bare.total));
    let _ = writeln!(
        out,
        "Instructions per proxied chat request, counted (valgrind's callgrind, {requests} requests over 4 connections \
         after {WARM_UP} to warm up, user space only; the same on every run, whatever the machine's load): \
         im-http **{:.1} k**, the bare hyper proxy {:.1} k: im's own work is {:.1} k instructions, {:.2}x the floor's \
         whole count.\n",
        im_per / 1e3,
        bare_per / 1e3,
        (im_per - bare_per) / 1e3,
        (im_per - bare_per) / bare_per,
    );
    let listing = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(&im.profile)
        .output()
        .context("running callgrind_annotate")?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let _ = writeln!(
        out,
        "| stage of im's path (inclusive) | instructions per request | share of im-http's |\n|---|---|---|"
    );
    for (what, name) in STAGES {
        match inclusive(&listing, name) {
            Some(n) => {
                let _ = writeln!(
                    out,
                    "| {what} | {:.1} k | {:.0}% |",
                    per(n) / 1e3,
                    100.0 * n as f64 / im.total as f64
                );
            }
            None => {
                let _ = writeln!(out, "| {what} | not found (`{name}`) | - |");
            }
        }
    }
    out.push('\n');
    let _ = std::fs::remove_file(&im.profile);
    let _ = std::fs::remove_file(&bare.profile);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_read_as_its_largest_inclusive_count() {
        let listing = " 71,044,357 (34.10%)  ???:<im_engine::backend::LocalAiBackend as im_engine::backend::Backend>::chat::{{closure}} [im-http]\n\
                       1,000 ( 0.01%)  ???:<im_engine::backend::LocalAiBackend as im_engine::backend::Backend>::chat::{{closure}}'2 [im-http]\n\
                       33,143,615 (15.91%)  ???:im_engine::driver::Driver::run::{{closure}} [im-http]\n";
        assert_eq!(inclusive(listing, STAGES[0].1), Some(71_044_357));
        assert_eq!(inclusive(listing, STAGES[1].1), Some(33_143_615));
        assert_eq!(inclusive(listing, STAGES[4].1), None);
    }
}
