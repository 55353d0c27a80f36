//! The `im-fence` binary gates a simulated LocalAI: the newest token passes, an older one is 409;
//! with the cluster's secret only signed tokens count; it listens by im's listener rules.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_passes_the_newest_token_and_refuses_an_older_one() {
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .await
    .expect("sim");
    // Without a secret (the gate warns): any numeric token counts.
    let (_guard, url) = gate(&sim.url(), &[]);
    let call = |token: u64| {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("x-im-fence", token.to_string())
            .body(r#"{"model": "llama-3.2-3b-instruct", "messages": [{"role": "user", "content": "hi"}]}"#)
            .header("content-type", "application/json")
            .send()
    };
    assert_eq!(call(2).await.expect("send").status(), 200);
    assert_eq!(call(1).await.expect("send").status(), 409);
    assert_eq!(call(3).await.expect("send").status(), 200);
}

/// The wire form of a fencing token signed with `secret`: `<epoch>.<hex HMAC-SHA256 of
/// "im-fence/v1:<epoch>">` (what im's scheduler sends and every gate checks).
fn signed(secret: &str, epoch: u64) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("im-fence/v1:{epoch}").as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{epoch}.{sig}")
}

/// `im-fence` in front of `upstream` with `envs`; the process and its URL.
fn gate(upstream: &str, envs: &[(&str, &str)]) -> (Kill, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_im-fence"));
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .env_remove("IM_FENCE_SECRET")
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("im-fence starts");
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
    (Kill(child), url)
}

fn chat(url: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .body(r#"{"model": "llama-3.2-3b-instruct", "messages": [{"role": "user", "content": "hi"}]}"#)
        .header("content-type", "application/json");
    match token {
        Some(t) => r.header("x-im-fence", t),
        None => r,
    }
}

#[tokio::test]
async fn a_forged_token_is_refused_and_the_real_schedulers_calls_keep_passing() {
    // Regression (issue 27.1): `x-im-fence: 18446744073709551615` from anyone made the gate refuse
    // every later call of the real scheduler (502 "stale fencing token") until it restarted.
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .await
    .expect("sim");
    let secret = "a-shared-fence-secret";
    let (_gate, url) = gate(&sim.url(), &[("IM_FENCE_SECRET", secret)]);
    for forged in ["18446744073709551615", "18446744073709551615.00", "7"] {
        let r = chat(&url, Some(forged)).send().await.expect("send");
        assert!(
            r.status().is_client_error(),
            "a forged token is refused: {forged} got {}",
            r.status()
        );
    }
    let r = chat(&url, None).send().await.expect("send");
    assert!(
        r.status().is_client_error(),
        "a call without a token is refused: {}",
        r.status()
    );
    let r = reqwest::get(format!("{url}/v1/models"))
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        200,
        "reads pass unfenced (discovery, health checks)"
    );
    // The real scheduler (epoch 1, then a newer one) is served; the older one is refused and
    // told the newest epoch.
    assert_eq!(
        chat(&url, Some(&signed(secret, 1)))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    assert_eq!(
        chat(&url, Some(&signed(secret, 2)))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let stale = chat(&url, Some(&signed(secret, 1)))
        .send()
        .await
        .expect("send");
    assert_eq!(stale.status(), 409);
    assert_eq!(
        stale
            .headers()
            .get("x-im-fence-highest")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    assert_eq!(
        sim.state().stats().requests_total,
        2,
        "only the scheduler's calls reached LocalAI"
    );
}

#[test]
fn the_gate_listens_on_loopback_by_default() {
    // Regression (issue 27.1): it listened on 0.0.0.0 unless told otherwise.
    let out = Command::new(env!("CARGO_BIN_EXE_im-fence"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("127.0.0.1:8081"),
        "loopback by default: {help}"
    );
}

#[tokio::test]
async fn sigterm_drains_the_gate() {
    // Regression (issue 27.1): it stopped only on Ctrl-C; SIGTERM (what Docker and Kubernetes
    // send) killed it with its calls.
    let mut cfg = localai_sim::SimConfig::default();
    cfg.time_scale = 0.0;
    for m in &mut cfg.models {
        m.per_token_ms = 50.0;
    }
    let sim = localai_sim::SimServer::start(cfg).await.expect("sim");
    let secret = "s";
    let (mut gate, url) = gate(&sim.url(), &[("IM_FENCE_SECRET", secret)]);
    let running = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("x-im-fence", signed(secret, 1))
            .body(r#"{"model": "llama-3.2-3b-instruct", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}"#)
            .header("content-type", "application/json")
            .send(),
    );
    im_testkit::eventually(
        "the call passed on to LocalAI",
        std::time::Duration::from_secs(20),
        || async { sim.state().stats().requests_total >= 1 },
    )
    .await;
    let pid = gate.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let answered = running.await.expect("task");
    let code = gate.0.wait().expect("exits");
    assert!(
        answered.as_ref().is_ok_and(|r| r.status() == 200) && code.code() == Some(0),
        "SIGTERM drains: the running call {answered:?}, the exit {code:?}"
    );
}

#[tokio::test]
async fn idle_and_slow_connections_to_the_gate_are_closed() {
    // Regression (issue 27.1): plain `axum::serve`: no deadline for a first byte or headers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig::default())
        .await
        .expect("sim");
    let (_gate, url) = gate(&sim.url(), &[("IM_FENCE_SECRET", "s")]);
    let addr = url.trim_start_matches("http://").to_owned();
    let closed = |partial: &'static [u8]| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            s.write_all(partial).await.expect("write");
            let mut buf = [0u8; 256];
            matches!(
                tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf)).await,
                Ok(Ok(_) | Err(_))
            )
        }
    };
    let (idle, slow) = tokio::join!(
        closed(b""),
        closed(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    );
    assert!(
        idle && slow,
        "closed by the gate: idle {idle}, slow headers {slow}"
    );
}
