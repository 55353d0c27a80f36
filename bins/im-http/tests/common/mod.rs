//! What the end-to-end tests share: starting the real `im-http` binary (with its embedded
//! simulator or in front of given upstreams) and simulator processes, requests by kind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

pub const KEY: &str = "im-demo-key";
pub const LLM: &str = "llama-3.2-3b-instruct";
pub const VLM: &str = "llava-1.6-mistral-7b";
pub const SD: &str = "stablediffusion";

pub struct Server {
    pub child: Child,
    /// The job store directory made for it, removed with it.
    pub scratch: Option<im_testkit::TempDir>,
    pub url: String,
    /// The embedded simulator's URL (with `--simulate`).
    pub sim: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(extra: &[&str]) -> Server {
    start_scaled("0.01", extra)
}

/// `im-http --simulate` with its simulator's times scaled by `scale`.
pub fn start_scaled(scale: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--simulate", "--sim-time-scale", scale];
    args.extend_from_slice(extra);
    let (child, url, sim, scratch) = spawn_im_http(&args);
    Server {
        child,
        scratch,
        url,
        sim: sim.expect("sim line"),
    }
}

/// `im-http` in front of `upstreams`, with `extra` arguments.
pub fn start_in_front_of(upstreams: &[String], extra: &[&str]) -> Server {
    let list = upstreams.join(",");
    let mut args = vec!["--upstream", list.as_str()];
    args.extend_from_slice(extra);
    let (child, url, _, scratch) = spawn_im_http(&args);
    Server {
        child,
        scratch,
        url,
        sim: String::new(),
    }
}

/// `im-http` in front of `upstreams`, with `extra` arguments and `envs` set.
pub fn start_in_front_of_with_env(
    upstreams: &[String],
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Server {
    let list = upstreams.join(",");
    let mut args = vec!["--upstream", list.as_str()];
    args.extend_from_slice(extra);
    let (child, url, _, scratch) = spawn_im_http_with(&args, envs);
    Server {
        child,
        scratch,
        url,
        sim: String::new(),
    }
}

/// `im-http` with exactly `args` (and its own job store).
pub fn start_args(args: &[&str]) -> Server {
    let (child, url, sim, scratch) = spawn_im_http(args);
    Server {
        child,
        scratch,
        url,
        sim: sim.unwrap_or_default(),
    }
}

/// Start `im-http --listen 127.0.0.1:0 args...`; its URL (and its simulator's) from stderr.
fn spawn_im_http(args: &[&str]) -> (Child, String, Option<String>, Option<im_testkit::TempDir>) {
    spawn_im_http_with(args, &[])
}

/// [`spawn_im_http`] with `envs` set.
fn spawn_im_http_with(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Child, String, Option<String>, Option<im_testkit::TempDir>) {
    // Each server its own job store unless the test gives one (a store is one process's).
    let own_dir;
    let mut scratch = None;
    let mut args = args.to_vec();
    if !args.iter().any(|a| a.starts_with("jobs.dir=")) {
        let dir = im_testkit::scratch_dir("im-http");
        own_dir = format!("jobs.dir={}", dir.path().display());
        args.extend(["--set", own_dir.as_str()]);
        scratch = Some(dir);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-http"))
        .args(["--listen", "127.0.0.1:0"])
        .args(&args)
        .env_remove("IM_CONFIG")
        .env_remove("IM_API_KEYS")
        .env_remove("LOCALAI_URL")
        .env("RUST_LOG", "warn")
        // Traces, when a test exports them, leave within 100 ms.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("im-http starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let (mut url, mut sim) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        if let Some(rest) = line.strip_prefix("im-http: simulated LocalAI at ") {
            sim = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("im-http: listening on ") {
            url = Some(rest.split_whitespace().next().expect("url").to_owned());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, url.expect("listening line"), sim, scratch)
}

/// The `localai-sim` binary next to `im-http`, built first if it is not there yet.
pub fn sim_binary() -> PathBuf {
    let im = PathBuf::from(env!("CARGO_BIN_EXE_im-http"));
    let path = im.with_file_name(format!("localai-sim{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "localai-sim", "--bin", "localai-sim"]);
        if im.parent().is_some_and(|d| d.ends_with("release")) {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building localai-sim"
        );
    }
    path
}

/// The `im-fence` binary next to `im-http`, built first if it is not there yet.
pub fn fence_binary() -> PathBuf {
    let im = PathBuf::from(env!("CARGO_BIN_EXE_im-http"));
    let path = im.with_file_name(format!("im-fence{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "im-fence", "--bin", "im-fence"]);
        if im.parent().is_some_and(|d| d.ends_with("release")) {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building im-fence"
        );
    }
    path
}

/// An `im-fence` process in front of `upstream`, with `envs` set.
pub struct FenceProcess {
    pub child: Child,
    pub url: String,
}

impl FenceProcess {
    pub fn start(upstream: &str, envs: &[(&str, &str)]) -> FenceProcess {
        let mut child = Command::new(fence_binary())
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .env_remove("IM_FENCE_SECRET")
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("im-fence starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("im-fence: listening on ")
                    .and_then(|r| r.split(',').next())
                    .map(str::to_owned)
            })
            .expect("the listening line");
        std::thread::spawn(move || for _ in lines {});
        FenceProcess { child, url }
    }
}

impl Drop for FenceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `localai-sim` process on a fixed port (so that it can be restarted there).
pub struct SimProcess {
    pub child: Child,
    pub host: String,
    pub port: u16,
}

impl SimProcess {
    /// Start one on `port` (0: a free port) with `time_scale`; returns once it answers.
    pub async fn start(port: u16, time_scale: f64) -> SimProcess {
        SimProcess::start_with(port, time_scale, None).await
    }

    /// A free port on loopback (for a server started later).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// [`SimProcess::start`] with only the catalogue's models `installed` (`None`: all).
    pub async fn start_with(port: u16, time_scale: f64, installed: Option<&[&str]>) -> SimProcess {
        SimProcess::start_at("127.0.0.1", port, time_scale, installed).await
    }

    /// [`SimProcess::start_with`] on loopback address `host` (any of 127.0.0.0/8).
    pub async fn start_at(
        host: &str,
        port: u16,
        time_scale: f64,
        installed: Option<&[&str]>,
    ) -> SimProcess {
        let port = if port == 0 {
            SimProcess::free_port()
        } else {
            port
        };
        let mut args = vec![
            "--host".to_owned(),
            host.to_owned(),
            "--port".to_owned(),
            port.to_string(),
            "--time-scale".to_owned(),
            time_scale.to_string(),
        ];
        if let Some(list) = installed {
            args.push(format!("--installed={}", list.join(",")));
        }
        let child = Command::new(sim_binary())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("localai-sim starts");
        let sim = SimProcess {
            child,
            host: host.to_owned(),
            port,
        };
        let (c, ready) = (client(), format!("{}/readyz", sim.url()));
        im_testkit::eventually(&ready, Duration::from_secs(20), || async {
            c.get(&ready).send().await.is_ok()
        })
        .await;
        sim
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Kill it with SIGKILL, like a machine that dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its `/sim/stats`.
    pub async fn stats(&self) -> Value {
        client()
            .get(format!("{}/sim/stats", self.url()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("JSON")
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn png_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 2))
}

pub fn body_for(kind: &str, i: usize) -> (String, Value) {
    match kind {
        "txt2txt" => (
            "/txt2txt".into(),
            json!({"model": LLM, "messages": [{"role": "user", "content": format!("q{i}")}]}),
        ),
        "img2txt" => (
            "/img2txt".into(),
            json!({"model": VLM, "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", png_b64())}}]}]}),
        ),
        "txt2img" => (
            "/txt2img".into(),
            json!({"model": SD, "prompt": "fox", "width": 16, "height": 16, "steps": 2}),
        ),
        _ => (
            "/img2img".into(),
            json!({"model": SD, "prompt": "fox", "width": 16, "height": 16, "steps": 2, "file": png_b64()}),
        ),
    }
}

pub async fn post(c: &reqwest::Client, url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = c
        .post(format!("{url}{path}"))
        .header("x-api-key", KEY)
        .json(body)
        .send()
        .await
        .expect("answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET url+path` with `key`: the body as text (`/metrics`).
pub async fn get_text(url: &str, path: &str, key: &str) -> String {
    client()
        .get(format!("{url}{path}"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("text")
}

/// `GET url+path` with `key`: the JSON body.
pub async fn get_json(url: &str, path: &str, key: &str) -> Value {
    let text = get_text(url, path, key).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON from {path}: {e}: {text}"))
}

pub const KINDS: [&str; 4] = ["txt2txt", "txt2img", "img2img", "img2txt"];

/// The lease of the replicas tests start, in seconds.
pub const LEASE_S: f64 = 1.5;

pub fn replica_args(redis: &im_cluster::RedisServer) -> Vec<String> {
    vec![
        "--api-keys".into(),
        KEY.into(),
        "--redis-url".into(),
        redis.url(),
        "--set".into(),
        format!(
            "cluster.lease_s={LEASE_S};cluster.failover_wait_s=30;breaker.failure_threshold=2;\
             breaker.cooldown_s=1;breaker.health_check_s=0.5;retry.base_ms=20;retry.cap_ms=200"
        ),
    ]
}

/// `n` replicas on `redis` in front of `upstreams`.
pub fn start_replicas(
    n: usize,
    upstreams: &[String],
    redis: &im_cluster::RedisServer,
) -> Vec<Server> {
    let args = replica_args(redis);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..n)
        .map(|_| start_in_front_of(upstreams, &args))
        .collect()
}

/// The lease as Redis holds it: (epoch, the holder's URL).
pub fn lease(redis: &im_cluster::RedisServer) -> Option<(u64, String)> {
    let mut c = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let v: Option<String> = redis::cmd("GET")
        .arg("im:scheduler:lease")
        .query(&mut c)
        .expect("GET");
    let v = v?;
    let mut parts = v.split(' ');
    let epoch = parts.next()?.parse().ok()?;
    let url = parts.nth(1)?.to_owned();
    Some((epoch, url))
}

/// The lease once its epoch is above `newer_than` (within 20 s).
pub async fn wait_for_lease(redis: &im_cluster::RedisServer, newer_than: u64) -> (u64, String) {
    im_testkit::until(
        "a replica to take the lease",
        Duration::from_secs(20),
        || std::future::ready(lease(redis).filter(|(e, _)| *e > newer_than)),
    )
    .await
}
