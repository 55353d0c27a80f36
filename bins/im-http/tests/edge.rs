//! The edge holds (issue 27) against the real binary: connections that never send a byte cannot
//! hold the server, and bodies are not read before a key (or a signature) says who sends them,
//! on a scheduling replica or a follower.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_send_a_byte_cannot_hold_the_server() {
    // Regression (issue 27.2): with `http.max_connections = 50`, 50 sockets that never sent a
    // byte kept `/health` refused for as long as they stayed open (the header timer started at
    // the first byte).
    let s = start(&[
        "--set",
        "http.max_connections=50;http.header_read_timeout_s=1",
    ]);
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(addr(&s.url)).await.expect("connect"));
    }
    // The server accepts connections in the order they came: /health's comes after the 50.
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let health = format!("{}/health", s.url);
    im_testkit::eventually(
        "/health served while idle sockets are open",
        Duration::from_secs(6),
        || async { c.get(&health).send().await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    drop(idle);
}

/// Send `n` requests at once, each `POST path` declaring a 31 MiB body with `headers` and
/// trickling it in 256 KiB pieces; what the server answered each (its status line, or how the
/// connection ended).
async fn slow_bodies(url: &str, path: &str, headers: &str, n: usize) -> Vec<String> {
    const LEN: usize = 31 << 20;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, path, headers) = (addr(url), path.to_owned(), headers.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: im\r\nContent-Type: application/json\r\nContent-Length: {LEN}\r\n{headers}\r\n"
            );
            s.write_all(head.as_bytes()).await.expect("head");
            let piece = vec![b' '; 256 << 10];
            let (mut reader, mut writer) = s.into_split();
            let send = async {
                let mut sent = 0;
                while sent < LEN {
                    if writer.write_all(&piece).await.is_err() {
                        return;
                    }
                    sent += piece.len();
                    // A body trickling in is under test.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            let mut answer = Vec::new();
            let read = async {
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            tokio::join!(send, read);
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("(closed without an answer)")
                .to_owned()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// The open routes (no key needed) and a keyed one, with the bodies an attacker would trickle.
const ROUTES: [&str; 9] = [
    "/webhooks/ingest",
    "/health",
    "/ready",
    "/",
    "/dashboard",
    "/docs",
    "/openapi.json",
    "/ws/attacker",
    "/v1/chat/completions",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_keyless_bodies_on_open_routes_are_not_buffered() {
    // Regression (issue 27.3): 20 keyless connections each trickling 31 MiB into
    // `POST /webhooks/ingest` took RSS from 20 to 647 MB.
    let s = start(&[
        "--set",
        "jobs.inbound_secret=\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
    ]);
    let pid = s.child.id();
    let base = rss(pid);
    let mut peak = base;
    for path in ROUTES {
        let headers = if path == "/webhooks/ingest" {
            let now = im_jobs::now_ms() / 1000;
            format!(
                "webhook-id: msg_x\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v1,AAAA\r\n"
            )
        } else {
            String::new()
        };
        let sampled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let sampled = sampled.clone();
            tokio::spawn(async move {
                loop {
                    sampled.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                    // Sampling RSS every 10 ms is the measurement under test.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let answers = slow_bodies(&s.url, path, &headers, 20).await;
        sampler.abort();
        peak = peak
            .max(sampled.load(std::sync::atomic::Ordering::Relaxed))
            .max(rss(pid));
        assert!(
            answers
                .iter()
                .all(|a| !a.contains(" 200 ") && !a.contains(" 202 ")),
            "{path}: {answers:?}"
        );
    }
    let rose = peak.saturating_sub(base) >> 20;
    eprintln!(
        "open routes: RSS rose by {rose} MiB (from {} MiB)",
        base >> 20
    );
    assert!(
        rose < 50,
        "RSS rose by {rose} MiB (from {} MiB)",
        base >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_no_body_before_the_key() {
    // Regression (issue 27.3): a follower replica buffered any route's body before anyone checked
    // the key (10 connections: 19 to 332 MB), and answered 401 only once the body arrived.
    let redis = im_cluster::RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.0).await;
    let replicas = start_replicas(2, &[sim.url()], &redis);
    let (_, holder) = wait_for_lease(&redis, 0).await;
    let follower = replicas
        .iter()
        .find(|r| r.url != holder)
        .expect("a follower");
    let pid = follower.child.id();
    let base = rss(pid);
    let sampled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let sampled = sampled.clone();
        tokio::spawn(async move {
            loop {
                sampled.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                // Sampling RSS every 10 ms is the measurement under test.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut answers = slow_bodies(&follower.url, "/v1/chat/completions", "", 10).await;
    answers.extend(slow_bodies(&follower.url, "/v1/jobs", "x-api-key: wrong\r\n", 10).await);
    sampler.abort();
    let rose = sampled
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base)
        >> 20;
    assert!(
        answers
            .iter()
            .all(|a| !a.contains(" 200 ") && !a.contains(" 202 ")),
        "{answers:?}"
    );
    eprintln!(
        "follower: RSS rose by {rose} MiB (from {} MiB); answers like {:?}",
        base >> 20,
        answers.first()
    );
    assert!(
        rose < 50,
        "the follower's RSS rose by {rose} MiB (from {} MiB)",
        base >> 20
    );
}

/// A connection to `url` from the local address `from`.
async fn connect_from(from: &str, url: &str) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().expect("addr"))?;
    s.connect(addr(url).parse().expect("addr")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_from_one_peer_do_not_stop_another() {
    let s = start(&[
        "--set",
        "http.max_connections=1000;http.max_connections_per_peer=100;http.header_read_timeout_s=5",
    ]);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(c) = connect_from("127.0.0.2", &s.url).await {
            idle.push(c);
        }
    }
    let started = Instant::now();
    let other = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = other
        .get(format!("{}/health", s.url))
        .send()
        .await
        .expect("served");
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        took < Duration::from_secs(3),
        "served in {took:?}, before the idle sockets' first-byte deadline (5 s)"
    );
    // Every idle socket is closed: at once past the per-peer cap, the rest at the deadline.
    let closed_by = Instant::now() + Duration::from_secs(15);
    for mut c in idle {
        let mut buf = [0u8; 16];
        let left = closed_by.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, c.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "an idle socket is closed by the server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_counted_each_by_its_forwarded_address() {
    // Requests take seconds (LocalAI's real load and service times), so they stay in flight.
    let s = start_scaled(
        "1.0",
        &[
            "--set",
            "http.max_connections_per_peer=2;http.trusted_proxies=[\"127.0.0.4\"]",
        ],
    );
    let proxy = reqwest::Client::builder()
        .local_address("127.0.0.4".parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let chat = body_for("txt2txt", 1).1;
    let send = |client: &str| {
        proxy
            .post(format!("{}/txt2txt", s.url))
            .header("x-api-key", KEY)
            .header("x-forwarded-for", format!("203.0.113.7, {client}"))
            .json(&chat)
            .send()
    };
    // Three clients with two requests each through the one proxy: each within its own cap.
    let mut running = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for _ in 0..2 {
            running.push(tokio::spawn(send(client)));
        }
    }
    im_testkit::eventually(
        "the six requests in im",
        Duration::from_secs(20),
        || async {
            get_json(&s.url, "/queue-status", KEY).await["counters"]["accepted"]
                .as_u64()
                .is_some_and(|n| n >= 6)
        },
    )
    .await;
    // A third request of the first client is over its cap.
    let over = send("198.51.100.1").await.expect("answered");
    assert_eq!(over.status(), 429);
    for r in running {
        assert_eq!(r.await.expect("task").expect("answered").status(), 200);
    }
    // Without the proxy, one peer's third connection is closed.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.5", &s.url).await.expect("connect");
        c.write_all(b"GET /health HTTP/1.1\r\nHost: im\r\n\r\n")
            .await
            .expect("write");
        held.push(c);
    }
    // Accepted in the order they came: the third after the two held ones.
    let mut third = connect_from("127.0.0.5", &s.url).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed at once: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_http1_and_http2_with_prior_knowledge() {
    // The listener tells the versions apart by the HTTP/2 preface and serves each with its own
    // builder (a waiting HTTP/1 request holds no room for HTTP/2's state).
    let s = start(&[]);
    let chat = serde_json::json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    for (client, version) in [
        (reqwest::Client::new(), reqwest::Version::HTTP_11),
        (
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("client"),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let health = client
            .get(format!("{}/health", s.url))
            .send()
            .await
            .expect("health");
        assert_eq!((health.status().as_u16(), health.version()), (200, version));
        let answer = client
            .post(format!("{}/v1/chat/completions", s.url))
            .header("x-api-key", KEY)
            .json(&chat)
            .send()
            .await
            .expect("chat");
        assert_eq!((answer.status().as_u16(), answer.version()), (200, version));
        assert!(answer.headers().contains_key("x-request-id"));
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["model"], LLM, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_first_byte_could_begin_the_http2_preface_is_still_served() {
    // `P` may begin `PRI * HTTP/2.0`: the listener cannot tell yet and lets hyper-util's auto
    // server read on (without peeking the same byte again and again), which finds HTTP/1.
    let s = start(&[]);
    let mut c = TcpStream::connect(addr(&s.url)).await.expect("connect");
    c.write_all(b"P").await.expect("first byte");
    // The pause between the first byte and the rest is under test: it makes the listener's one
    // peek see `P` alone (no event tells when it peeked; a peek that saw more serves HTTP/1 too).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = format!(
        r#"{{"model":"{LLM}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":4}}"#
    );
    let rest = format!(
        "OST /v1/chat/completions HTTP/1.1\r\nHost: im\r\nx-api-key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(rest.as_bytes()).await.expect("the rest");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
