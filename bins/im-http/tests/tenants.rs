//! Tenants across real processes (issue 30): a key removed from a replica's configuration is
//! refused by that replica as soon as it reloaded, whoever schedules.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::*;

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
    let dir = temp_dir("im-tenants-cluster");
    let files: Vec<std::path::PathBuf> = (0..2).map(|i| dir.join(format!("im{i}.toml"))).collect();
    let mut replicas = Vec::new();
    for f in &files {
        std::fs::write(f, keys_config(&["k1", "k2"])).expect("write");
        let mut args = replica_args(&redis);
        args.drain(0..2); // no --api-keys: the keys are the file's
        let path = f.to_str().expect("utf-8").to_owned();
        let mut all: Vec<&str> = vec!["--config", &path];
        all.extend(args.iter().map(String::as_str));
        replicas.push(start_in_front_of(&[sim.url()], &all));
    }
    let (_, holder) = wait_for_lease(&redis, 0).await;
    let follower = replicas
        .iter()
        .position(|r| r.url != holder)
        .expect("a follower");
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
    let _ = std::fs::remove_dir_all(dir);
}
