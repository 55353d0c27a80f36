//! The seeds' example calls (`examples/seed-calls/`), run verbatim with real clients (curl,
//! Python `requests`, a WebSocket client) against `im-http --config deploy/im.example.toml
//! --simulate`: only the host, the port and the key are theirs to change.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn start_with_example_config(extra: &[&str]) -> Server {
    let config = repo().join("deploy/im.example.toml");
    let mut args = vec!["--config", config.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    start(&args)
}

/// Run one of the example files with `program`, pointed at `s`; its standard output.
fn run(program: &str, file: &str, s: &Server) -> String {
    run_with_key(program, file, s, KEY)
}

fn run_with_key(program: &str, file: &str, s: &Server, key: &str) -> String {
    let path = repo().join("examples/seed-calls").join(file);
    let out = Command::new(program)
        .arg(&path)
        .env("IM_URL", &s.url)
        .env("IM_KEY", key)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "{file} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn the_first_documents_curl_lines() {
    let s = start_with_example_config(&[]);
    let answers = json_lines(&run("bash", "infer.sh", &s));
    assert_eq!(answers.len(), 5, "{answers:?}");
    let [summary, sentiment, generated, batch, models] = &answers[..] else {
        unreachable!()
    };
    assert_eq!(summary["success"], true, "{summary}");
    assert_eq!(summary["model_used"], "summarizer:v1");
    assert!(summary["result"]["summary_text"].is_string(), "{summary}");
    assert_eq!(sentiment["model_used"], "sentiment:v1");
    assert_eq!(sentiment["result"]["label"], "positive", "{sentiment}");
    let score = sentiment["result"]["score"].as_f64().expect("a score");
    assert!((0.0..=1.0).contains(&score), "{sentiment}");
    assert_eq!(
        generated["result"].as_array().map(Vec::len),
        Some(2),
        "two sequences: {generated}"
    );
    let items = batch["results"].as_array().expect("batch results");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["result"]["label"], "positive", "in order: {batch}");
    assert_eq!(items[1]["result"]["label"], "negative", "in order: {batch}");
    assert!(items[2]["result"]["summary_text"].is_string(), "{batch}");
    let names: Vec<&str> = models["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for want in ["summarizer", "sentiment", "generator"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
}

#[test]
fn the_second_documents_python_requests_example_and_streaming_curl() {
    let s = start_with_example_config(&[]);
    let answers = json_lines(&run("python3", "v1_infer.py", &s));
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0]["docs"], "/docs");
    assert!(
        answers[0]["routes"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    let generated = &answers[1];
    assert!(generated["text"].is_string(), "{generated}");
    assert!(
        generated["usage"]["completion_tokens"].is_u64(),
        "{generated}"
    );
    assert!(generated["timings"]["total_ms"].is_f64(), "{generated}");

    let events = run("bash", "stream.sh", &s);
    let events: Vec<&str> = events
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert!(events.len() >= 2, "tokens, then the end: {events:?}");
    assert!(events[0].contains("\"text\""), "a token first: {events:?}");
    let last = events.last().expect("events");
    assert!(last.starts_with("event: done"), "ends with done: {last}");
    assert!(
        last.contains("\"usage\"") && last.contains("\"timings\""),
        "{last}"
    );
}

#[test]
fn the_third_documents_status_and_model_management_calls() {
    let s = start_with_example_config(&[
        "--set",
        r#"keys=[{key="ops-key", scopes=["infer", "metrics", "admin"]}]"#,
    ]);
    let answers = json_lines(&run_with_key("bash", "ops.sh", &s, "ops-key"));
    assert_eq!(answers.len(), 3, "{answers:?}");
    let backends = answers[0]["backends"].as_array().expect("backends");
    assert!(!backends.is_empty(), "{}", answers[0]);
    for field in [
        "health",
        "requests",
        "success_rate",
        "avg_latency_ms",
        "p95_latency_ms",
        "queue_size",
        "loaded_models",
    ] {
        assert!(backends[0].get(field).is_some(), "{field}: {}", answers[0]);
    }
    let (load, unload) = (&answers[1], &answers[2]);
    assert_eq!(load["model"], "llava-1.6-mistral-7b", "{load}");
    assert!(
        matches!(load["status"].as_str(), Some("loaded" | "scheduled")),
        "{load}"
    );
    assert_eq!(unload["model"], "llava-1.6-mistral-7b", "{unload}");
    assert!(
        unload["backends"].as_array().is_some_and(|b| !b.is_empty()),
        "{unload}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_third_documents_websocket_messages() {
    let s = start_with_example_config(&[]);
    let url = s.url.replacen("http://", "ws://", 1) + "/ws/browser-1";
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let messages = std::fs::read_to_string(repo().join("examples/seed-calls/ws-messages.jsonl"))
        .expect("messages");
    let mut sent = Vec::new();
    for line in messages.lines().filter(|l| !l.trim().is_empty()) {
        let line = line.replace("im-demo-key", KEY);
        ws.send(Message::Text(line.clone().into()))
            .await
            .expect("send");
        sent.push(serde_json::from_str::<Value>(&line).expect("JSON")["type"].clone());
    }
    // Every message is answered: authenticated, subscribed (and updates), the inference's tokens
    // and result, the status, the pong; nothing is an error.
    let mut seen = std::collections::BTreeSet::new();
    let wanted = [
        "authenticated",
        "subscribed",
        "token",
        "result",
        "status",
        "pong",
    ];
    while !wanted.iter().all(|w| seen.contains(*w)) {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap_or_else(|_| panic!("answers to {sent:?}; got only {seen:?}"))
            .expect("open")
            .expect("a frame");
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).expect("JSON");
        assert_ne!(v["type"], "error", "{v}");
        seen.insert(v["type"].as_str().expect("type").to_owned());
    }
}
