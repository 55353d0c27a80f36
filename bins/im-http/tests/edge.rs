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
#[should_panic(expected = "served while idle sockets are open")]
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut served = false;
    while started.elapsed() < Duration::from_secs(6) {
        if let Ok(r) = c.get(format!("{}/health", s.url)).send().await
            && r.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "/health is served while idle sockets are open");
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
#[should_panic(expected = "RSS rose by")]
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
    assert!(
        rose < 50,
        "RSS rose by {rose} MiB (from {} MiB)",
        base >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "the follower's RSS rose by")]
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
    assert!(
        rose < 50,
        "the follower's RSS rose by {rose} MiB (from {} MiB)",
        base >> 20
    );
}
