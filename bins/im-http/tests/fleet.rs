//! The fleet with real processes: `im-http` in front of three `localai-sim` processes on loopback
//! under a mixed load. In one run a server is killed with SIGKILL mid-run and restarted later; in
//! another one server is ten times slower than the others.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::task::JoinSet;

/// What a load run saw: answers by class. Every request must end in one of them.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    explicit_errors: usize,
}

/// `n` mixed requests from `concurrency` workers. Each gets an answer within the client's 30 s
/// timeout (else the test fails: a hanging request): 200, or an error status with the error
/// table's JSON body and a message.
async fn mixed_load(url: &str, n: usize, concurrency: usize, done: Arc<AtomicUsize>) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (url, next, done) = (url.to_owned(), next.clone(), done.clone());
        set.spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return tally;
                }
                let (path, body) = body_for(KINDS[i % KINDS.len()], i);
                let r = c
                    .post(format!("{url}{path}"))
                    .header("x-api-key", KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status == 200 {
                    tally.ok += 1;
                } else {
                    assert!(status >= 400, "request {i}: status {status}");
                    assert!(
                        v["error"]["message"]
                            .as_str()
                            .is_some_and(|m| !m.is_empty()),
                        "request {i}: an explicit error names what went wrong: {v}"
                    );
                    tally.explicit_errors += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let mut total = Tally::default();
    while let Some(t) = set.join_next().await {
        let t = t.expect("worker");
        total.ok += t.ok;
        total.explicit_errors += t.explicit_errors;
    }
    total
}

async fn backend(url: &str, name: &str) -> Value {
    let v = get_json(url, "/status", KEY).await;
    v["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no backend {name} in {v}"))
}

fn im_args() -> Vec<&'static str> {
    vec![
        "--api-keys",
        KEY,
        "--set",
        "breaker.failure_threshold=2;breaker.cooldown_s=1;breaker.health_check_s=0.5;retry.base_ms=20;retry.cap_ms=200;retry.max_retries=4",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_request_its_work_moves_and_it_rejoins() {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(SimProcess::start(0, 0.02).await);
    }
    let urls: Vec<String> = sims.iter().map(SimProcess::url).collect();
    let im = start_in_front_of(&urls, &im_args());
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (url, done) = (im.url.clone(), done.clone());
        async move { mixed_load(&url, 240, 12, done).await }
    });
    im_testkit::eventually("60 requests answered", Duration::from_secs(120), || async {
        done.load(Ordering::SeqCst) >= 60
    })
    .await;
    let before_kill = sims[1].stats().await;
    sims[1].kill();
    im_testkit::eventually(
        "150 requests answered",
        Duration::from_secs(120),
        || async { done.load(Ordering::SeqCst) >= 150 },
    )
    .await;
    let port = sims[1].port;
    sims[1] = SimProcess::start(port, 0.02).await;
    let tally = load.await.expect("load");
    assert_eq!(tally.ok + tally.explicit_errors, 240, "{tally:?}");
    assert!(
        tally.ok >= 200,
        "the others took the dead server's work: {tally:?}"
    );
    // It rejoins: its health check answers, its breaker closes, and it serves again.
    im_testkit::eventually("lane1 healthy again", Duration::from_secs(30), || async {
        backend(&im.url, "lane1").await["health"] == "healthy"
    })
    .await;
    let again = mixed_load(&im.url, 90, 12, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(again.ok, 90, "{again:?}");
    let after = sims[1].stats().await;
    assert!(
        after["requests_total"].as_u64().is_some_and(|n| n > 0),
        "the restarted server serves again: {after}"
    );
    for (i, s) in [
        before_kill,
        sims[0].stats().await,
        after,
        sims[2].stats().await,
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(s["overcommits"], 0, "stats {i}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_takes_less_and_loses_nothing() {
    let sims = vec![
        SimProcess::start(0, 0.01).await,
        SimProcess::start(0, 0.01).await,
        SimProcess::start(0, 0.1).await, // ten times slower
    ];
    let urls: Vec<String> = sims.iter().map(SimProcess::url).collect();
    // Replicas early, so that every server meets every model and speeds can be compared.
    let mut args = im_args();
    args.extend(["--set", "routing.replica_depth=1"]);
    let im = start_in_front_of(&urls, &args);
    let tally = mixed_load(&im.url, 240, 12, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(tally.ok, 240, "{tally:?}");
    let mut served = Vec::new();
    for s in &sims {
        let st = s.stats().await;
        assert_eq!(st["overcommits"], 0, "{st}");
        served.push(st["requests_total"].as_u64().unwrap_or(0));
    }
    assert!(
        served[2] < served[0].min(served[1]),
        "the slow server takes the smallest share: {served:?}"
    );
}
