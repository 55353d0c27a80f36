//! Progress to the waiting client (issue 33): a stream in progress mode gets its headers once
//! admitted, SSE comments while it waits behind a model load (`: queued position=N eta_ms=M`,
//! `: loading model=X`), then its chunks; real clients (async-openai, OpenAI's Python SDK)
//! ignore the comments and get their answer.

mod common;

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use im_app::config::{ImConfig, KeyEntry, TenantEntry};
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use serde_json::{Value, json};

const LLM: &str = "llama-3.2-3b-instruct";
/// Loaded first, so that the chat model waits behind it and then loads.
const VISION: &str = "llava-1.6-mistral-7b";
/// A key whose tenant has `progress = true`.
const PROGRESSIVE_KEY: &str = "progressive-key";

/// im in front of the simulator at a fifth of real time (llava loads in 1.6 s, the chat model
/// in 1.2 s), with a tenant in progress mode.
async fn serve() -> (String, Built) {
    let mut cfg = ImConfig::default();
    cfg.jobs.enabled = false;
    cfg.api_keys = vec![DEMO_KEY.to_owned()];
    cfg.tenants = vec![TenantEntry {
        name: "watchers".into(),
        progress: true,
        ..Default::default()
    }];
    cfg.keys = vec![KeyEntry {
        key: PROGRESSIVE_KEY.into(),
        tenant: Some("watchers".into()),
        ..Default::default()
    }];
    let built = app::build(cfg, Some(Simulate { time_scale: 0.2 }))
        .await
        .expect("build");
    let url = common::listen(&built).await;
    (url, built)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": 8, "stream": stream})
}

/// A vision chat that loads llava and holds the lane while the test's request waits.
fn occupy(url: &str) -> tokio::task::JoinHandle<u16> {
    let url = url.to_owned();
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("x-api-key", DEMO_KEY)
            .json(&chat(VISION, false))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    })
}

/// Until llava's load is under way (the vision chat was dispatched).
async fn until_loading(url: &str) {
    let client = reqwest::Client::new();
    im_testkit::eventually("llava is loading", Duration::from_secs(10), || {
        let req = client
            .get(format!("{url}/queue-status"))
            .header("x-api-key", DEMO_KEY);
        async move {
            let v: Value = match req.send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            v["in_flight"].as_u64() > Some(0)
        }
    })
    .await;
}

/// The lines of an SSE body that are comments or data, in order.
fn sse_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| l.starts_with(':') || l.starts_with("data:") || l.starts_with("event:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_reader_sees_its_place_then_the_load_then_the_chunks() {
    let (url, _im) = serve().await;
    let vision = occupy(&url);
    until_loading(&url).await;
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-api-key", DEMO_KEY)
        .header("x-im-progress", "true")
        .json(&chat(LLM, true))
        .send()
        .await
        .expect("send");
    // The headers came once the queue took it, while llava still loads.
    assert!(!vision.is_finished(), "headers only after the wait");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let body = resp.text().await.expect("body");
    let lines = sse_lines(&body);
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
    };
    let queued = at(": queued position=1 eta_ms=");
    let loading = at(&format!(": loading model={LLM} "));
    let first_chunk = at("data: {");
    let figures = at(": figures ");
    let done = at("data: [DONE]");
    assert!(
        queued < loading && loading < first_chunk && first_chunk < figures && figures < done,
        "{lines:#?}"
    );
    assert!(
        lines[figures].contains("x-attempts=1"),
        "{}",
        lines[figures]
    );
    assert!(body.contains("\"Simulated\""), "{body}");
    assert_eq!(vision.await.expect("vision"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_while_waiting_is_an_error_event_and_refusals_keep_their_status() {
    let (url, _im) = serve().await;
    let client = reqwest::Client::new();
    let post = |body: Value, progress: &str| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .header("x-api-key", DEMO_KEY)
            .header("x-im-progress", progress.to_owned())
            .json(&body)
            .send()
    };
    // The tenant's `progress` without a header.
    let post_as_watcher = |body: Value| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .header("x-api-key", PROGRESSIVE_KEY)
            .json(&body)
            .send()
    };
    // Refused before the queue took it: its status code, as without progress.
    let bad = post(
        json!({"model": LLM, "messages": [], "stream": true}),
        "true",
    )
    .await
    .expect("send");
    assert_eq!(bad.status(), 400);
    let unsure = post(chat(LLM, true), "maybe").await.expect("send");
    assert_eq!(unsure.status(), 400);
    assert!(unsure.text().await.expect("body").contains("X-Im-Progress"));

    // Admitted, then its deadline passes behind llava's load: an error event, then [DONE].
    let vision = occupy(&url);
    until_loading(&url).await;
    let mut short = chat(LLM, true);
    short["deadline_ms"] = json!(200);
    let resp = post_as_watcher(short).await.expect("send");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    let lines = sse_lines(&body);
    let error = lines
        .iter()
        .position(|l| *l == "event: error")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(lines[0].starts_with(": queued"), "{lines:#?}");
    let data: Value = serde_json::from_str(lines[error + 1].trim_start_matches("data: "))
        .unwrap_or_else(|e| panic!("{e}: {lines:#?}"));
    assert!(
        data["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{data}"
    );
    assert_eq!(lines.last(), Some(&"data: [DONE]"));
    assert_eq!(vision.await.expect("vision"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_streams_through_a_tenant_in_progress_mode() {
    let (url, _im) = serve().await;
    let vision = occupy(&url);
    until_loading(&url).await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{url}/v1"))
            .with_api_key(PROGRESSIVE_KEY),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model(LLM)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hi")
            .build()
            .expect("message")
            .into()])
        .max_tokens(8_u32)
        .stream(true)
        .build()
        .expect("request");
    let mut stream = client.chat().create_stream(request).await.expect("stream");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        for c in chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert!(text.contains("Simulated reply"), "{text}");
    assert_eq!(vision.await.expect("vision"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openais_python_sdk_streams_through_a_progress_request() {
    let (url, _im) = serve().await;
    let vision = occupy(&url);
    until_loading(&url).await;
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2])
stream = client.chat.completions.create(
    model=sys.argv[3], messages=[{"role": "user", "content": "hi"}], max_tokens=8,
    stream=True, extra_headers={"X-Im-Progress": "true"})
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"#;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &url, DEMO_KEY, LLM])
            .output()
    })
    .await
    .expect("joined")
    .expect("python3 runs (.ci/run installs the openai package)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Simulated reply"), "{stdout} {stderr}");
    assert_eq!(vision.await.expect("vision"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stream_hears_its_place_and_the_load_before_its_tokens() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (url, _im) = serve().await;
    let vision = occupy(&url);
    until_loading(&url).await;
    let mut req = format!("{}/ws/watcher", url.replacen("http", "ws", 1))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", DEMO_KEY.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let ask = json!({"type": "inference", "id": "w1", "model": LLM, "inputs": "hi",
                     "stream": true, "progress": true, "max_tokens": 8});
    ws.send(Message::Text(ask.to_string().into()))
        .await
        .expect("send");
    let mut types = Vec::new();
    while let Some(msg) = ws.next().await {
        let Ok(Message::Text(t)) = msg else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        assert_eq!(v["id"], "w1", "{v}");
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        if kind == "queued" {
            assert_eq!(v["position"], 1, "{v}");
        }
        if kind == "loading" {
            assert_eq!(v["model"], LLM, "{v}");
        }
        types.push(kind.clone());
        if kind == "result" || kind == "error" {
            break;
        }
    }
    let first = |t: &str| types.iter().position(|x| x == t);
    let (queued, loading, token, result) = (
        first("queued"),
        first("loading"),
        first("token"),
        first("result"),
    );
    assert!(
        queued.is_some() && queued < loading && loading < token && token < result,
        "{types:?}"
    );
    assert_eq!(vision.await.expect("vision"), 200);
}
