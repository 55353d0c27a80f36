//! `cargo xtask bench`, split by what it measures: [`overhead`] (direct vs nginx vs im-http),
//! [`scheduling`] (a mixed trace straight to LocalAI vs through im), [`memory`] (RSS with queued
//! payloads), [`load`] (the seeds' load scenarios), [`replicas`] (embedded vs 3 replicas on Redis), [`instructions`] (instructions per request, counted), [`prefix`] (prefix-aware placement over two servers with prompt caches). This module holds what they share: processes,
//! ports, readiness, the tools they install. Everything runs on loopback; every figure is a ratio
//! measured side by side in one run.

pub mod batching;
pub mod instructions;
pub mod load;
pub mod memory;
pub mod overhead;
pub mod prefix;
pub mod replicas;
pub mod scheduling;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::json;

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

/// CPU time (user + system, in seconds) a process and its children (nginx's workers) have used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |pid: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces) start at ") ".
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: f64 = ticks(&pid.to_string()) + children.split_whitespace().map(ticks).sum::<f64>();
    total / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
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

/// Install the Debian `package` with apt-get, unless it is `present`.
fn apt_install(package: &str, present: bool) -> Result<()> {
    if present {
        return Ok(());
    }
    eprintln!("bench: installing {package} (Debian)");
    let _ = Command::new("apt-get").arg("update").status();
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .status()?
        .success();
    if !ok {
        bail!("apt-get install {package} failed");
    }
    Ok(())
}

/// Whether `program` runs with `arg` (a version flag).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok()
}

/// Install what the benchmark needs: Debian's redis, nginx and valgrind, and `oha` (a well-kept
/// Rust load generator).
pub fn ensure_tools() -> Result<()> {
    apt_install("redis-server", runs("redis-server", "--version"))?;
    apt_install(
        "nginx-light",
        runs("nginx", "-v") || Path::new("/usr/sbin/nginx").exists(),
    )?;
    // The instruction counts of `instructions` (callgrind and its control script).
    apt_install("valgrind", runs("valgrind", "--version"))?;
    if !runs("oha", "--version") {
        eprintln!("bench: installing oha with cargo install (a few minutes, once)");
        let ok = Command::new("cargo")
            .args(["install", "oha", "--locked"])
            .status()?
            .success();
        if !ok {
            bail!("could not install oha");
        }
    }
    // The allocation-counting im-http first (kept under its own name), then the real one: the
    // two differ only in the binary crate, so the second build relinks it. Then the bare proxy.
    let build = |what: &[&str]| -> Result<()> {
        let ok = Command::new("cargo")
            .args(["build", "--release"])
            .args(what)
            .current_dir(root())
            .status()?
            .success();
        if !ok {
            bail!("release build of {what:?} failed");
        }
        Ok(())
    };
    let servers = ["-p", "im-http", "-p", "localai-sim"];
    build(&[&servers[..], &["--features", "im-http/count-allocations"]].concat())?;
    std::fs::copy(release_bin("im-http"), release_bin(COUNTING_IM))
        .context("keeping the allocation-counting im-http")?;
    build(&servers)?;
    build(&[
        "-p",
        "localai-client",
        "--example",
        BARE_PROXY,
        "--example",
        BARE_WAITING,
    ])
}

/// The overhead runs' floor: a bare buffering proxy on hyper (`localai-client`'s example), built
/// by [`ensure_tools`] into `target/release/examples`.
pub const BARE_PROXY: &str = "bare_proxy";

/// The memory run's floor: a bare hyper server that holds every request unanswered
/// (`localai-client`'s example), built beside [`BARE_PROXY`].
pub const BARE_WAITING: &str = "bare_waiting";

/// The im-http built with `count-allocations` ([`ensure_tools`] keeps it beside the real one).
pub const COUNTING_IM: &str = "im-http-count-allocations";

pub fn start_sim(port: u16, time_scale: f64, config: Option<&Path>) -> Result<Proc> {
    start_ready(&mut sim_command(port, time_scale, config), port, "/readyz")
}

/// `cmd` started, and ready once `port` answers `path` (killed if it never does).
pub fn start_ready(cmd: &mut Command, port: u16, path: &str) -> Result<Proc> {
    let p = Proc(
        cmd.spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?,
    );
    wait_ready(port, path, None)?;
    Ok(p)
}

/// The command that starts localai-sim on `port` at `time_scale`, its output discarded.
pub fn sim_command(port: u16, time_scale: f64, config: Option<&Path>) -> Command {
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
    cmd
}

/// `cmd` run on one CPU only (through `taskset`, which execs it: the process is the command's),
/// with the same arguments and environment; its output is the caller's to set.
pub fn on_cpu(cpu: usize, cmd: &Command) -> Command {
    let mut pinned = Command::new("taskset");
    pinned
        .arg("-c")
        .arg(cpu.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => pinned.env(k, v),
            None => pinned.env_remove(k),
        };
    }
    pinned
}

/// Start im-http on `port` in front of `upstream_port` with `config`.
pub fn start_im(port: u16, upstream_port: u16, config: &str) -> Result<Proc> {
    start_im_with(
        im_command(&release_bin("im-http"), port, upstream_port, config, &[])?,
        port,
    )
}

/// The command that starts the im-http binary at `bin` on `port` in front of `upstream_port`
/// with `config` (written to a file it reads) and `env` set, its output discarded.
pub fn im_command(
    bin: &Path,
    port: u16,
    upstream_port: u16,
    config: &str,
    env: &[(String, String)],
) -> Result<Command> {
    let path = std::env::temp_dir().join(format!("im-bench-{port}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
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
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// Start im-http by `cmd` (an [`im_command`]) and wait until it answers on `port`.
pub fn start_im_with(mut cmd: Command, port: u16) -> Result<Proc> {
    start_ready(&mut cmd, port, "/health")
}

pub fn models_toml(slots_llm: u32) -> String {
    format!(
        "[[models]]\nname = \"{LLM}\"\nkinds = [\"txt2txt\"]\nmax_in_flight = {slots_llm}\n\n\
         [[models]]\nname = \"{VLM}\"\nkinds = [\"img2txt\", \"txt2txt\"]\nmax_in_flight = 2\n\n\
         [[models]]\nname = \"{SD}\"\nkinds = [\"txt2img\", \"img2img\"]\nmax_in_flight = 1\n"
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client")
}

pub fn png_b64(side: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(side, side, 9))
}

pub async fn answered_ok(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    }
}

pub fn q(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}
