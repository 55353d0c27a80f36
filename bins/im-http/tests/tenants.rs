//! Tenants across real processes (issue 30): a key removed from a replica's configuration is
//! refused by that replica as soon as it reloaded, whoever schedules.

mod common;
#[path = "../../../crates/im-app/tests/support/refusals.rs"]
mod refusals;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::*;

/// The configuration of a replica in a cluster whose keys each lack one scope.
fn lacking_config() -> String {
    refusals::keys_lacking_each_scope()
        .into_iter()
        .map(|(key, scopes)| {
            let scopes: Vec<String> = scopes
                .iter()
                .map(|s| format!("\"{}\"", s.as_str()))
                .collect();
            format!(
                "[[keys]]\nkey = \"{key}\"\nscopes = [{}]\n",
                scopes.join(", ")
            )
        })
        .collect()
}

/// `n` replicas on `redis` in front of `upstream`, each from its own configuration file in `dir`
/// (written with `text`); the files, the replicas, and the scheduler's index.
async fn cluster(
    redis: &im_cluster::RedisServer,
    upstream: &str,
    dir: &std::path::Path,
    n: usize,
    text: &str,
) -> (Vec<std::path::PathBuf>, Vec<Server>, usize) {
    let files: Vec<std::path::PathBuf> = (0..n).map(|i| dir.join(format!("im{i}.toml"))).collect();
    let mut replicas = Vec::new();
    for f in &files {
        std::fs::write(f, text).expect("write");
        let mut args = replica_args(redis);
        args.drain(0..2); // no --api-keys: the keys are the file's
        let path = f.to_str().expect("utf-8").to_owned();
        let mut all: Vec<&str> = vec!["--config", &path];
        all.extend(args.iter().map(String::as_str));
        replicas.push(start_in_front_of(&[upstream.to_owned()], &all));
    }
    let (_, holder) = wait_for_lease(redis, 0).await;
    let scheduler = replicas
        .iter()
        .position(|r| r.url == holder)
        .expect("the holder is one of them");
    (files, replicas, scheduler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_a_key_without_the_scope_on_every_entry() {
    // The follower transport of the route-table check: each keyed route, job, WebSocket
    // message and MCP tool reached through a follower refuses a key that lacks its scope.
    let redis = im_cluster::RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.0).await;
    let scratch = im_testkit::scratch_dir("im-tenants-follower");
    let dir = scratch.path();
    let (_files, replicas, scheduler) =
        cluster(&redis, &sim.url(), dir, 2, &lacking_config()).await;
    let follower = &replicas[1 - scheduler];
    let checked = refusals::refused_everywhere(&follower.url).await;
    assert!(checked > 80, "{checked} checks");
}

/// A replica's configuration with the keys `keys` (each ordinary; `op` reads metrics).
fn keys_config(keys: &[&str]) -> String {
    let mut text =
        String::from("[[keys]]\nkey = \"op\"\nscopes = [\"infer\", \"metrics\", \"admin\"]\n");
    for k in keys {
        text.push_str(&format!("[[keys]]\nkey = \"{k}\"\n"));
    }
    text
}

/// Reloads so far on `url`, applied or refused.
async fn reloads(url: &str) -> u64 {
    get_text(url, "/metrics", "op")
        .await
        .lines()
        .filter(|l| l.starts_with("im_config_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn sighup(s: &Server) {
    let before = reloads(&s.url).await;
    let sent = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    im_testkit::eventually("the reload", Duration::from_secs(20), || async {
        reloads(&s.url).await > before
    })
    .await;
}

async fn chat_status(url: &str, key: &str) -> u16 {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-api-key", key)
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("answered")
        .status()
        .as_u16()
}

/// Whether a WebSocket of `key` to `url` is refused: the upgrade, or a close before an answer.
async fn ws_refused(url: &str, key: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws/revoked", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("header"));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
        return true;
    };
    if ws
        .send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .is_err()
    {
        return true;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return !t.contains("pong"),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_follower_dropped_is_refused_there_though_the_scheduler_still_has_it() {
    // Regression (issue 30): in cluster mode a follower whose reload dropped k2 still forwarded
    // k2's requests, and the scheduler answered 200.
    let redis = im_cluster::RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.0).await;
    let scratch = im_testkit::scratch_dir("im-tenants-cluster");
    let dir = scratch.path();
    let (files, replicas, scheduler) =
        cluster(&redis, &sim.url(), dir, 2, &keys_config(&["k1", "k2"])).await;
    let follower = 1 - scheduler;
    assert_eq!(chat_status(&replicas[follower].url, "k2").await, 200);
    std::fs::write(&files[follower], keys_config(&["k1"])).expect("write");
    sighup(&replicas[follower]).await;
    assert_eq!(chat_status(&replicas[follower].url, "k1").await, 200);
    let status = chat_status(&replicas[follower].url, "k2").await;
    assert_eq!(status, 401, "k2 is refused once the follower reloaded");
    // Over a WebSocket through the follower too (it relays the upgrade to the scheduler).
    assert!(
        ws_refused(&replicas[follower].url, "k2").await,
        "k2 is refused over WebSocket once the follower reloaded"
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket session of `key` to `url`, answering a ping.
async fn open_session(url: &str, key: &str) -> Socket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws/session", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("pong") => return ws,
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong from {url}: {other:?}"),
        }
    }
}

/// Whether `ws` is closed (a close frame, or the connection ended) within `within`.
async fn closed_within(ws: &mut Socket, within: Duration) -> bool {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_replica_by_replica_is_refused_by_each_once_it_reloaded() {
    // Revocation with real processes: three replicas, each with its own configuration file;
    // k2 is removed from each in turn (SIGHUP). Each refuses k2 over HTTP and WebSocket once it
    // reloaded, and k2's session open on it is closed; k1 goes on being served.
    let redis = im_cluster::RedisServer::start().expect("redis-server");
    let sim = SimProcess::start(0, 0.0).await;
    let scratch = im_testkit::scratch_dir("im-tenants-revoke");
    let dir = scratch.path();
    let (files, replicas, scheduler) =
        cluster(&redis, &sim.url(), dir, 3, &keys_config(&["k1", "k2"])).await;
    let mut sessions = Vec::new();
    for r in &replicas {
        assert_eq!(chat_status(&r.url, "k2").await, 200);
        sessions.push(open_session(&r.url, "k2").await);
    }
    // Followers first, the scheduler last: a follower that still knows k2 must not be what
    // keeps it served elsewhere, and the scheduler's own check is the last one standing.
    let mut order: Vec<usize> = (0..replicas.len()).filter(|i| *i != scheduler).collect();
    order.push(scheduler);
    for i in order {
        let r = &replicas[i];
        std::fs::write(&files[i], keys_config(&["k1"])).expect("write");
        sighup(r).await;
        let role = if i == scheduler {
            "scheduler"
        } else {
            "follower"
        };
        assert_eq!(
            chat_status(&r.url, "k2").await,
            401,
            "k2 over HTTP on the {role} {i}"
        );
        assert!(
            ws_refused(&r.url, "k2").await,
            "k2 over WebSocket on the {role} {i}"
        );
        assert!(
            closed_within(&mut sessions[i], Duration::from_secs(2)).await,
            "k2's open session on the {role} {i} is closed"
        );
        assert_eq!(chat_status(&r.url, "k1").await, 200, "k1 on the {role} {i}");
    }
}
