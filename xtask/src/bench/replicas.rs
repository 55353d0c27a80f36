//! Replicas: the embedded mode (one im-http) against three im-http replicas on Redis, in front of
//! the same four zero-latency simulators. At a fixed 100 req/s the added median latency of the
//! distributed path (a third of the requests land on the scheduler, two thirds are forwarded to
//! it by a follower); then closed-loop throughput through each.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::*;

fn start_replica(port: u16, upstreams: &str, redis: Option<&str>) -> Result<Proc> {
    let path = std::env::temp_dir().join(format!("im-bench-replica-{port}.toml"));
    std::fs::write(&path, models_toml(4))?;
    let mut cmd = Command::new(release_bin("im-http"));
    cmd.arg("--config")
        .arg(&path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", upstreams, "--api-keys", KEY])
        .env("RUST_LOG", "error")
        .env_remove("IM_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = redis {
        cmd.args(["--redis-url", url]);
    }
    let p = Proc(cmd.spawn().context("starting im-http")?);
    wait_ready(port, "/health", None)?;
    Ok(p)
}

/// Chat request `i` to the im-http on `port`: whether it was answered 200.
async fn chat(c: &reqwest::Client, port: u16, i: usize) -> bool {
    let body = json!({"model": LLM, "messages": [{"role": "user", "content": format!("q{i}")}], "max_tokens": 4});
    let r = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await;
    answered_ok(r).await
}

/// `rate` requests per second for `secs`, round-robin over `ports`; latencies (ms) of the ones
/// answered 200 with the port each went to, and how many were not answered 200.
async fn open_loop(ports: &[u16], rate: u32, secs: u64) -> (Vec<(u16, f64)>, usize) {
    let c = client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    for i in 0..(rate as u64 * secs) as usize {
        tick.tick().await;
        let (c, port) = (c.clone(), ports[i % ports.len()]);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            chat(&c, port, i)
                .await
                .then(|| (port, t.elapsed().as_secs_f64() * 1000.0))
        }));
    }
    let (mut ok, mut failed) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok(Some(ms)) => ok.push(ms),
            _ => failed += 1,
        }
    }
    (ok, failed)
}

/// Requests per second answered 200 by `workers` closed-loop clients over `secs`.
async fn throughput(ports: &[u16], workers: usize, secs: u64) -> f64 {
    let c = client();
    let end = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, done, port) = (c.clone(), done.clone(), ports[w % ports.len()]);
        tasks.push(tokio::spawn(async move {
            let mut i = w * 1_000_000;
            while Instant::now() < end {
                if chat(&c, port, i).await {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs as f64
}

/// The port of the replica holding the scheduler lease.
fn scheduler_port(redis_url: &str) -> Result<u16> {
    let mut c = redis::Client::open(redis_url)?.get_connection()?;
    let lease: String = redis::cmd("GET").arg("im:scheduler:lease").query(&mut c)?;
    lease
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in the lease {lease:?}"))
}

pub async fn replicas(out: &mut String, secs: u64) -> Result<()> {
    let redis =
        im_cluster::RedisServer::start().context("redis-server (apt-get install redis-server)")?;
    let sim_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _sims: Vec<Proc> = sim_ports
        .iter()
        .map(|&p| start_sim(p, 0.0, None))
        .collect::<Result<_>>()?;
    let upstreams = sim_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let embedded_port = free_port();
    let _embedded = start_replica(embedded_port, &upstreams, None)?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _replicas: Vec<Proc> = ports
        .iter()
        .map(|&p| start_replica(p, &upstreams, Some(&redis.url())))
        .collect::<Result<_>>()?;
    // Until a replica holds the lease, the others have nowhere to forward.
    let (warm, _) = open_loop(&ports, 50, 1).await;
    anyhow::ensure!(!warm.is_empty(), "the replicas never answered");
    let _ = open_loop(&[embedded_port], 50, 1).await;

    let (embedded, e_failed) = open_loop(&[embedded_port], 100, secs).await;
    let (cluster, c_failed) = open_loop(&ports, 100, secs).await;
    let scheduler = scheduler_port(&redis.url())?;
    let ms = |keep: &dyn Fn(u16) -> bool, v: &[(u16, f64)]| -> Vec<f64> {
        v.iter()
            .filter(|(p, _)| keep(*p))
            .map(|(_, m)| *m)
            .collect()
    };
    let direct = ms(&|p| p == scheduler, &cluster);
    let forwarded = ms(&|p| p != scheduler, &cluster);
    let (embedded, cluster) = (ms(&|_| true, &embedded), ms(&|_| true, &cluster));
    let (e50, c50) = (q(&embedded, 0.5), q(&cluster, 0.5));
    let (e99, c99) = (q(&embedded, 0.99), q(&cluster, 0.99));
    let e_tp = throughput(&[embedded_port], 32, secs).await;
    let c_tp = throughput(&ports, 32, secs).await;
    writeln!(
        out,
        "\n## Replicas: 1 embedded vs 3 on Redis (4 zero-latency simulators)\n\n\
         At 100 req/s for {secs} s (chat, one model); the 3 replicas take the requests round-robin, \
         so two thirds are forwarded by a follower to the replica holding the scheduler lease.\n\n\
         | mode | median ms | p99 ms | failed | closed-loop req/s (32 clients) |\n|---|---|---|---|---|\n\
         | embedded (1 process) | {e50:.2} | {e99:.2} | {e_failed} | {e_tp:.0} |\n\
         | 3 replicas on Redis | {c50:.2} | {c99:.2} | {c_failed} | {c_tp:.0} |\n\
         | ... sent to the scheduling replica | {:.2} | {:.2} | | |\n\
         | ... sent to a follower (forwarded) | {:.2} | {:.2} | | |\n\n\
         Added median latency of the distributed path: **{:.2} ms** (target ≤ 1 ms); throughput ratio \
         3 replicas / embedded: **{:.2}x** (the scheduler does every upstream call either way; \
         replicas add availability and frontends, not scheduling capacity).",
        q(&direct, 0.5),
        q(&direct, 0.99),
        q(&forwarded, 0.5),
        q(&forwarded, 0.99),
        c50 - e50,
        c_tp / e_tp
    )?;
    Ok(())
}
