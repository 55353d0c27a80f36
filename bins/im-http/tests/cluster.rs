//! Several `im-http` replicas on one real `redis-server`: one schedules, the others forward to it;
//! when it dies (SIGKILL) or stalls (SIGSTOP), another takes the lease and the fencing token keeps
//! the old one off the upstreams.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use im_cluster::RedisServer;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// What the clients of one replica saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    errors: Vec<String>,
    connection_errors: usize,
}

/// `n` mixed requests to `url` from `workers` workers.
async fn load(url: String, n: usize, workers: usize, done: Arc<AtomicUsize>) -> Seen {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (url, next, done) = (url.clone(), next.clone(), done.clone());
        set.spawn(async move {
            let c = client();
            let mut seen = Seen::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return seen;
                }
                let (path, body) = body_for(["txt2txt", "txt2img", "img2txt", "txt2txt"][i % 4], i);
                match c
                    .post(format!("{url}{path}"))
                    .header("x-api-key", KEY)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(_) => seen.ok += 1,
                        Err(e) => seen.errors.push(format!("request {i}: a broken body: {e}")),
                    },
                    Ok(r) => {
                        let status = r.status();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        seen.errors.push(format!("request {i}: {status} {v}"));
                    }
                    Err(e) if e.is_timeout() => seen.errors.push(format!("request {i} hung: {e}")),
                    Err(_) => seen.connection_errors += 1,
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let mut all = Seen::default();
    while let Some(s) = set.join_next().await {
        let s = s.expect("worker");
        all.ok += s.ok;
        all.connection_errors += s.connection_errors;
        all.errors.extend(s.errors);
    }
    all
}

async fn submit_jobs(url: &str, n: usize) -> Vec<String> {
    let c = client();
    let mut ids = Vec::new();
    for i in 0..n {
        let (path, body) = body_for(if i % 2 == 0 { "txt2txt" } else { "txt2img" }, 1000 + i);
        let (status, v) = post(&c, url, "/v1/jobs", &json!({"route": path, "body": body})).await;
        assert_eq!(status, 202, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_scheduling_replica_loses_nothing_the_others_accepted_and_its_lanes_move_within_a_lease()
 {
    let redis = RedisServer::start().expect("redis-server");
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(SimProcess::start(0, 0.02).await);
    }
    let upstreams: Vec<String> = sims.iter().map(SimProcess::url).collect();
    let mut replicas = start_replicas(3, &upstreams, &redis);
    let (epoch, holder) = wait_for_lease(&redis, 0).await;
    let victim = replicas
        .iter()
        .position(|r| r.url == holder)
        .unwrap_or_else(|| panic!("the holder {holder} is one of the replicas"));
    let survivor = replicas[(victim + 1) % 3].url.clone();

    // Every replica answers for the whole fleet: the scheduler's view.
    for r in &replicas {
        let s = get_json(&r.url, "/status", KEY).await;
        assert_eq!(s["backends"].as_array().map(Vec::len), Some(3), "{s}");
    }

    let jobs = submit_jobs(&survivor, 8).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut loads = Vec::new();
    for r in &replicas {
        loads.push(tokio::spawn(load(r.url.clone(), 60, 4, done.clone())));
    }
    im_testkit::eventually("45 requests answered", Duration::from_secs(120), || async {
        done.load(Ordering::SeqCst) >= 45
    })
    .await;
    let killed_at = Instant::now();
    let _ = replicas[victim].child.kill();
    let _ = replicas[victim].child.wait();
    // A request sent right after the kill, through a survivor: served once the lease moves.
    let probe = post(
        &client(),
        &survivor,
        "/txt2txt",
        &body_for("txt2txt", 9999).1,
    )
    .await;
    let served_again = killed_at.elapsed();
    assert_eq!(probe.0, 200, "{probe:?}");
    let (new_epoch, new_holder) = wait_for_lease(&redis, epoch).await;
    assert_ne!(new_holder, holder);

    let mut seen = Vec::new();
    for l in loads {
        seen.push(l.await.expect("load"));
    }
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.errors.is_empty(),
            "replica {i}: every request ends in 200 or (on the killed one) a connection error: {s:?}"
        );
        if i == victim {
            assert_eq!(s.ok + s.connection_errors, 60, "{s:?}");
        } else {
            assert_eq!(
                (s.ok, s.connection_errors),
                (60, 0),
                "replica {i} completes everything it accepted: {s:?}"
            );
        }
    }
    assert!(
        seen[victim].connection_errors > 0,
        "the victim was killed mid-run: {:?}",
        seen[victim]
    );

    // Jobs the dead scheduler held run on the new one, each to one result.
    let c = client();
    for id in &jobs {
        let path = format!("/v1/jobs/{id}");
        let v = im_testkit::until(
            &format!("job {id} to end"),
            Duration::from_secs(30),
            || async {
                let v = get_json(&survivor, &path, KEY).await;
                (!["queued", "running"].contains(&v["status"].as_str().unwrap_or(""))).then_some(v)
            },
        )
        .await;
        assert_eq!(v["status"], "succeeded", "{v}");
        assert!(
            v["attempts"].as_u64().is_some_and(|a| (1..=2).contains(&a)),
            "{v}"
        );
        let r = c
            .get(format!("{survivor}/v1/jobs/{id}/result"))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("result");
        assert_eq!(r.status(), 200);
    }

    for (i, s) in sims.iter().enumerate() {
        let st = s.stats().await;
        assert_eq!(st["overcommits"], 0, "sim {i}: {st}");
        assert_eq!(st["fenced"], 0, "sim {i}: no stale scheduler called: {st}");
        let fence = st["highest_fence"].as_u64().unwrap_or(0);
        assert!(
            fence == epoch || fence == new_epoch,
            "sim {i}: calls carry the token: {st}"
        );
    }
    // The metrics say who schedules, and that followers sent work again after the kill.
    let mut resent = 0.0;
    for (i, r) in replicas.iter().enumerate().filter(|(i, _)| *i != victim) {
        let text = get_text(&r.url, "/metrics", KEY).await;
        let scheduler = if r.url == new_holder { 1 } else { 0 };
        assert!(
            text.contains(&format!("im_cluster_scheduler {scheduler}")),
            "replica {i}: {text}"
        );
        assert!(
            text.contains(&format!("im_cluster_epoch {new_epoch}")),
            "replica {i}"
        );
        resent += sample(&text, "im_forwarded_total{outcome=\"resent\"}");
    }
    assert!(
        resent >= 1.0,
        "requests held through the failover were sent again"
    );
    let limit = Duration::from_secs_f64(LEASE_S)
        + Duration::from_secs_f64(LEASE_S / 3.0)
        + Duration::from_secs(2);
    eprintln!("the lanes were served again {served_again:?} after the kill (lease {LEASE_S} s)");
    assert!(
        served_again < limit,
        "served again after {served_again:?}, over the lease plus a retry ({limit:?})"
    );
}

/// The value of the Prometheus sample `series` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scheduler_is_replaced_and_fenced_off_the_upstream_when_it_resumes() {
    let redis = RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.02).await;
    let mut replicas = start_replicas(2, &[sim.url()], &redis);
    let (epoch, holder) = wait_for_lease(&redis, 0).await;
    let a = replicas
        .iter()
        .position(|r| r.url == holder)
        .expect("holder");
    let b = 1 - a;
    let (a_url, b_url) = (replicas[a].url.clone(), replicas[b].url.clone());
    let chat = body_for("txt2txt", 1).1;
    assert_eq!(post(&client(), &b_url, "/txt2txt", &chat).await.0, 200);
    assert_eq!(sim.stats().await["highest_fence"], epoch);

    // A stalls. A request through B waits for it, then for its lease to lapse, then B serves it.
    signal(&replicas[a].child, "-STOP");
    let through_b = tokio::spawn({
        let (url, chat) = (b_url.clone(), chat.clone());
        async move { post(&client(), &url, "/txt2txt", &chat).await }
    });
    // A request straight to the stalled A: its socket is accepted, nothing answers yet.
    let to_a = tokio::spawn({
        let (url, chat) = (a_url.clone(), chat.clone());
        async move {
            client()
                .post(format!("{url}/txt2txt"))
                .header("x-api-key", KEY)
                .json(&chat)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let (new_epoch, new_holder) = wait_for_lease(&redis, epoch).await;
    assert_eq!(new_holder, b_url, "B took the lease");
    let (status, v) = through_b.await.expect("task");
    assert_eq!(status, 200, "{v}");
    assert_eq!(sim.stats().await["highest_fence"], new_epoch);

    // A resumes believing it schedules: whatever it sends the upstream is refused, and it stops.
    signal(&replicas[a].child, "-CONT");
    let answered = to_a.await.expect("task");
    assert_ne!(
        answered.ok(),
        Some(200),
        "the stale scheduler never gets an answer from the upstream"
    );
    let code = im_testkit::until(
        "the stale scheduler to stop",
        Duration::from_secs(20),
        || {
            std::future::ready(
                replicas[a]
                    .child
                    .try_wait()
                    .expect("wait")
                    .map(|s| s.code()),
            )
        },
    )
    .await;
    assert_eq!(code, Some(75), "it exits as one that lost its lease");
    let st = sim.stats().await;
    assert_eq!(st["overcommits"], 0, "{st}");
    assert_eq!(st["highest_fence"], new_epoch, "{st}");
    eprintln!("stale calls refused by the fence: {}", st["fenced"]);
    // B goes on serving.
    assert_eq!(post(&client(), &b_url, "/txt2txt", &chat).await.0, 200);
}

/// The follower of two replicas, once the other holds the lease.
async fn follower_of_two(
    redis: &RedisServer,
    sim: &SimProcess,
    extra: &str,
) -> (Vec<Server>, String, String) {
    let mut args = replica_args(redis);
    let set = args.last_mut().expect("--set value");
    set.push(';');
    set.push_str(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicas: Vec<Server> = (0..2)
        .map(|_| start_in_front_of(&[sim.url()], &args))
        .collect();
    let (_, holder) = wait_for_lease(redis, 0).await;
    let follower = replicas
        .iter()
        .find(|r| r.url != holder)
        .expect("a follower")
        .url
        .clone();
    (replicas, holder, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_as_the_scheduler_streams_websockets_and_views_included() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let redis = RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.02).await;
    let (_replicas, scheduler, follower) =
        follower_of_two(&redis, &sim, "http.rate_limit_per_s=0").await;

    // A stream through the follower arrives as the scheduler sends it: chunks, then [DONE].
    let r = client()
        .post(format!("{follower}/v1/chat/completions"))
        .header("x-api-key", KEY)
        .json(&json!({"model": LLM, "stream": true, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "count"}]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let text = r.text().await.expect("body");
    let chunks = text.lines().filter(|l| l.starts_with("data: {")).count();
    assert!(
        chunks >= 2 && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );

    // A WebSocket session through the follower: the scheduler authenticates it and answers.
    let url = follower.replacen("http://", "ws://", 1) + "/ws/through-a-follower";
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    for m in [
        json!({"type": "auth", "api_key": KEY}),
        json!({"type": "inference", "model": LLM, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"type": "ping"}),
    ] {
        ws.send(Message::Text(m.to_string().into()))
            .await
            .expect("send");
    }
    let mut seen = std::collections::BTreeSet::new();
    while !["authenticated", "result", "pong"]
        .iter()
        .all(|w| seen.contains(*w))
    {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?}"))
            .expect("open")
            .expect("frame");
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).expect("JSON");
        assert_ne!(v["type"], "error", "{v}");
        seen.insert(v["type"].as_str().unwrap_or("").to_owned());
    }
    // A session the scheduler refuses is closed through the follower with its code.
    let (mut refused, _) = tokio_tungstenite::connect_async(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            follower.replacen("http://", "ws://", 1) + "/ws/bad",
        )
        .map(|mut r| {
            r.headers_mut()
                .insert("x-api-key", "wrong".parse().expect("header"));
            r
        })
        .expect("request"),
    )
    .await
    .expect("upgrade");
    let closed = tokio::time::timeout(Duration::from_secs(10), refused.next())
        .await
        .expect("closed in time");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001, "{frame:?}");
        }
        other => panic!("a wrong key closes the session with 4001: {other:?}"),
    }

    // The views are the scheduler's: the same counters through either replica.
    let via_follower = get_json(&follower, "/queue-status", KEY).await;
    let via_scheduler = get_json(&scheduler, "/queue-status", KEY).await;
    let accepted = via_scheduler["counters"]["accepted"].as_u64().unwrap_or(0);
    assert!(accepted >= 2, "{via_scheduler}");
    assert_eq!(
        via_follower["counters"]["accepted"], accepted,
        "{via_follower}"
    );
    let metrics = get_json(&follower, "/get_request_metrics", KEY).await;
    assert!(
        metrics.to_string().contains(LLM),
        "the seed metrics are the fleet's: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rate_limit_holds_across_replicas() {
    let redis = RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.02).await;
    let (_replicas, scheduler, follower) = follower_of_two(
        &redis,
        &sim,
        "http.rate_limit_per_s=1;http.rate_limit_burst=3",
    )
    .await;
    // Six requests at once, half through each replica: one budget of 3 for the key, not 3 each
    // (which would let all six through). The bucket refills a token a second: on a loaded
    // machine the six may take over a second to arrive, and a refilled token is the limit
    // working, not a second budget.
    let c = client();
    let started = std::time::Instant::now();
    let mut set = JoinSet::new();
    for i in 0..6 {
        let (c, url) = (
            c.clone(),
            if i % 2 == 0 {
                scheduler.clone()
            } else {
                follower.clone()
            },
        );
        set.spawn(async move {
            c.get(format!("{url}/v1/models"))
                .header("x-api-key", KEY)
                .send()
                .await
                .expect("answered")
                .status()
                .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.expect("task"));
    }
    let elapsed = started.elapsed();
    statuses.sort_unstable();
    let refilled = elapsed.as_secs() as usize;
    assert!(
        refilled < 3,
        "six requests took {elapsed:?}: too slow to tell one budget from two"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429) && (3..=3 + refilled).contains(&ok),
        "one limit for the fleet: {statuses:?} in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_stopped_for_a_rolling_update_hands_over_without_failing_a_request() {
    let redis = RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.02).await;
    let (mut replicas, scheduler, follower) =
        follower_of_two(&redis, &sim, "shutdown_grace_s=10").await;
    let (epoch, _) = lease(&redis).expect("lease");
    let done = Arc::new(AtomicUsize::new(0));
    let through_follower = tokio::spawn(load(follower.clone(), 60, 4, done.clone()));
    im_testkit::eventually("15 requests answered", Duration::from_secs(120), || async {
        done.load(Ordering::SeqCst) >= 15
    })
    .await;
    let old = replicas
        .iter_mut()
        .find(|r| r.url == scheduler)
        .expect("scheduler");
    signal(&old.child, "-TERM");
    let stopped = Instant::now();
    let seen = through_follower.await.expect("load");
    assert!(
        seen.errors.is_empty() && seen.connection_errors == 0,
        "{seen:?}"
    );
    assert_eq!(seen.ok, 60, "{seen:?}");
    let code = old.child.wait().expect("wait").code();
    assert_eq!(code, Some(0), "a clean stop");
    let (new_epoch, holder) = wait_for_lease(&redis, epoch).await;
    assert_eq!(
        (new_epoch, holder),
        (epoch + 1, follower),
        "the follower schedules now"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "released on stopping, not left to expire"
    );
    assert_eq!(sim.stats().await["overcommits"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_is_alive_but_not_ready_and_refuses_work_after_the_failover_wait() {
    let sim = SimProcess::start(0, 0.02).await;
    let nowhere = format!("redis://127.0.0.1:{}/", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    });
    let im = start_in_front_of(
        &[sim.url()],
        &[
            "--api-keys",
            KEY,
            "--redis-url",
            &nowhere,
            "--set",
            "cluster.lease_s=0.3;cluster.failover_wait_s=0.6",
        ],
    );
    let c = client();
    let health = c
        .get(format!("{}/health", im.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let ready = c
        .get(format!("{}/ready", im.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert!(
        body["cluster"]
            .as_str()
            .is_some_and(|m| m.contains("Redis")),
        "{body}"
    );
    let (status, v) = post(&c, &im.url, "/txt2txt", &body_for("txt2txt", 1).1).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no scheduling replica")),
        "{v}"
    );
    assert_eq!(
        sim.stats().await["requests_total"],
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_does_not_lock_the_scheduler_out_of_its_gates() {
    // Regression (issue 27.1): after `FLUSHALL` (a lost volume, a failover to a lagging replica)
    // the next scheduler took epoch 1 while the gates had seen 2, and every call was refused.
    let secret = [("IM_FENCE_SECRET", "a-shared-fence-secret")];
    let redis = RedisServer::start().expect("redis-server");
    let mut c = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis");
    // Earlier schedulers came and went: the gates have seen epoch 5 and more.
    let _: () = redis::cmd("SET")
        .arg("im:scheduler:epoch")
        .arg(5)
        .query(&mut c)
        .expect("SET");
    let sim = SimProcess::start(0, 0.02).await;
    let gate = FenceProcess::start(&sim.url(), &secret);
    let args = replica_args(&redis);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replicas: Vec<Server> = (0..2)
        .map(|_| start_in_front_of_with_env(std::slice::from_ref(&gate.url), &args, &secret))
        .collect();
    let (epoch, holder) = wait_for_lease(&redis, 0).await;
    let a = replicas
        .iter()
        .position(|r| r.url == holder)
        .expect("holder");
    let survivor = replicas[1 - a].url.clone();
    let chat = body_for("txt2txt", 1).1;
    assert_eq!(post(&client(), &survivor, "/txt2txt", &chat).await.0, 200);
    assert!(epoch > 5);
    // An outsider's forged maximal token is refused and moves nothing.
    let forged = client()
        .post(format!("{}/v1/chat/completions", gate.url))
        .header("x-im-fence", "18446744073709551615")
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(forged.status(), 401);
    assert_eq!(post(&client(), &survivor, "/txt2txt", &chat).await.0, 200);

    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(load(survivor.clone(), 40, 4, done.clone()));
    im_testkit::eventually("8 requests answered", Duration::from_secs(120), || async {
        done.load(Ordering::SeqCst) >= 8
    })
    .await;
    let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
    // The next scheduler takes the lease with epoch 1 (Redis forgot 6 and more); its calls pass
    // the gate within a lease of its taking over: refused once, its epoch raised above the gate's.
    let took_over = im_testkit::until("the survivor's lease", Duration::from_secs(20), || {
        std::future::ready(
            lease(&redis)
                .filter(|(_, url)| *url == survivor)
                .map(|_| Instant::now()),
        )
    })
    .await;
    let (status, body) = post(&client(), &survivor, "/txt2txt", &chat).await;
    // The body says which refusal it was, should this ever fail (it did once on a loaded CI
    // machine: a 503 right after the takeover, not reproduced since).
    assert_eq!(status, 200, "{body}");
    let passed = took_over.elapsed();
    eprintln!("the new scheduler's calls passed the gate {passed:?} after it took over");
    assert!(
        passed < Duration::from_secs_f64(LEASE_S),
        "within one lease: {passed:?}"
    );
    let seen = load.await.expect("load");
    assert!(
        seen.errors.is_empty() && seen.connection_errors == 0 && seen.ok == 40,
        "every request through the surviving replica is served: {seen:?}"
    );
    let (raised, _) = lease(&redis).expect("a lease");
    assert_eq!(
        raised,
        epoch + 1,
        "the epoch went above what the gate had seen ({epoch}), once: refusals of calls sent \
         before the raise ask for no more"
    );
    let _ = replicas[a].child.wait();
}
