//! End to end: the real `im-http` binary with `--simulate`, driven over HTTP with reqwest.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_on_both_route_families_auth_and_streaming() {
    let s = start(&[]);
    let c = client();
    for (i, k) in KINDS.iter().enumerate() {
        let (path, body) = body_for(k, i);
        let (st, v) = post(&c, &s.url, &path, &body).await;
        assert_eq!(st, 200, "{k}: {v}");
        assert_eq!(v["kind"], *k);
    }
    let (st, v) = post(
        &c,
        &s.url,
        "/v1/chat/completions",
        &json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!((st, v["object"].as_str()), (200, Some("chat.completion")));
    let (st, v) = post(
        &c,
        &s.url,
        "/v1/images/generations",
        &json!({"model": SD, "prompt": "p", "size": "16x16"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let sse = c
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(KEY)
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "stream"}], "stream": true}))
        .send()
        .await
        .expect("stream");
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let text = sse.text().await.expect("text");
    assert!(text.contains("chat.completion.chunk") && text.trim_end().ends_with("[DONE]"));
    let r = c
        .get(format!("{}/queue-status", s.url))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "unauthorized");
    assert_eq!(
        c.get(format!("{}/health", s.url))
            .send()
            .await
            .expect("ok")
            .status(),
        200
    );
    let (st, v) = post(
        &c,
        &s.url,
        "/txt2img",
        &json!({"model": SD, "prompt": "p", "width": 12, "height": 16}),
    )
    .await;
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("width")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_concurrent_load_never_overcommits_the_simulator() {
    let s = start(&[]);
    let c = client();
    let jobs = (0..60).map(|i| {
        let c = c.clone();
        let url = s.url.clone();
        tokio::spawn(async move {
            let (path, body) = body_for(KINDS[i % 4], i);
            post(&c, &url, &path, &body).await.0
        })
    });
    for st in futures_util::future::join_all(jobs).await {
        assert_eq!(st.expect("join"), 200);
    }
    let stats: Value = c
        .get(format!("{}/sim/stats", s.sim))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["overcommits"], 0, "{stats}");
    assert_eq!(stats["peak_resident_models"], 1, "{stats}");
    let q: Value = c
        .get(format!("{}/queue-status", s.url))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("q")
        .json()
        .await
        .expect("json");
    assert_eq!(
        q["counters"]["model_switches"], stats["loads"],
        "one load per model switch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_leaves_no_request_unanswered() {
    let mut s = start(&["--set", "shutdown_grace_s=0.3"]);
    let c = client();
    let jobs: Vec<_> = (0..40)
        .map(|i| {
            let c = c.clone();
            let url = s.url.clone();
            tokio::spawn(async move {
                let (path, body) = body_for(KINDS[i % 4], i);
                post(&c, &url, &path, &body).await
            })
        })
        .collect();
    im_testkit::eventually("the 40 requests in im", Duration::from_secs(30), || async {
        get_json(&s.url, "/queue-status", KEY).await["counters"]["accepted"]
            .as_u64()
            .is_some_and(|n| n >= 40)
    })
    .await;
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let mut ok = 0;
    let mut shut = 0;
    for j in jobs {
        let (st, v) = j.await.expect("every request got an HTTP answer");
        match st {
            200 => ok += 1,
            503 => {
                assert_eq!(v["error"]["type"], "shutting_down", "{v}");
                shut += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok + shut, 40);
    let status = s.child.wait().expect("exits");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_clear_4xx_over_the_socket() {
    let s = start(&["--set", "http.body_limit_bytes=65536"]);
    let c = client();
    let not_image = base64::engine::general_purpose::STANDARD.encode("plain text, not an image");
    let chat = |extra: Value| {
        let mut v = json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}]});
        v.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        v
    };
    let img = |extra: Value| {
        let mut v = json!({"model": SD, "prompt": "fox", "width": 64, "height": 64});
        v.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        v
    };
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            "/txt2txt",
            chat(json!({"temperature": 3.0})),
            400,
            "invalid_request",
            Some("temperature"),
        ),
        (
            "/txt2txt",
            chat(json!({"temperature": "warm"})),
            400,
            "invalid_request",
            Some("temperature"),
        ),
        (
            "/txt2txt",
            json!({"model": LLM}),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            "/txt2img",
            img(json!({"width": 0})),
            400,
            "invalid_request",
            Some("width"),
        ),
        (
            "/txt2img",
            img(json!({"height": 100})),
            400,
            "invalid_request",
            Some("height"),
        ),
        (
            "/txt2img",
            img(json!({"width": 8192})),
            400,
            "invalid_request",
            Some("width"),
        ),
        (
            "/img2img",
            img(json!({"file": "%%% not base64"})),
            400,
            "invalid_request",
            Some("file"),
        ),
        (
            "/img2img",
            img(json!({"file": not_image})),
            400,
            "invalid_request",
            Some("file"),
        ),
        (
            "/img2txt",
            json!({"model": VLM, "messages": [{"role": "user", "content": "no image here"}]}),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            "/txt2txt",
            chat(json!({"model": "gpt-9"})),
            404,
            "unknown_model",
            Some("model"),
        ),
        (
            "/txt2img",
            img(json!({"model": LLM})),
            422,
            "unsupported_kind",
            Some("model"),
        ),
        (
            "/img2img",
            img(json!({"file": "A".repeat(100_000)})),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for (path, body, status, kind, param) in cases {
        let (st, v) = post(&c, &s.url, path, &body).await;
        assert_eq!(
            (st, v["error"]["type"].as_str()),
            (status, Some(kind)),
            "{path}: {v}"
        );
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{path}: {v}");
        }
    }
    let raw = c
        .post(format!("{}/txt2txt", s.url))
        .header("x-api-key", KEY)
        .body("{\"model\": ")
        .send()
        .await
        .expect("answered");
    assert_eq!(raw.status(), 400);
    let v: Value = raw.json().await.expect("json");
    assert_eq!(
        (v["error"]["type"].as_str(), v["error"]["param"].as_str()),
        (Some("invalid_request"), Some("body"))
    );
    let nowhere = c
        .get(format!("{}/nowhere", s.url))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("answered");
    assert_eq!(nowhere.status(), 404);
    let v: Value = nowhere.json().await.expect("JSON 404");
    assert_eq!(v["error"]["type"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_while_clients_are_served() {
    // Regression (issue 11.6): unfinished headers held a socket open indefinitely.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&["--set", "http.header_read_timeout_s=1"]);
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let mut sock = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        sock.write_all(b"POST /txt2txt HTTP/1.1\r\nHost: x\r\nX-Partial: ")
            .await
            .expect("partial header");
        sockets.push(sock);
    }
    // A normal client keeps being served meanwhile.
    let (status, _) = post(&client(), &s.url, "/txt2txt", &body_for("txt2txt", 1).1).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    for mut sock in sockets {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 408 before the close is fine
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow socket stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_not_waited_for() {
    // Regression (issue 11.6): slow bodies had no read timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&["--set", "http.body_idle_timeout_s=1"]);
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /txt2txt HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\": "
    );
    sock.write_all(head.as_bytes()).await.expect("partial body");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was held open");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("timed out"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_im_http_while_an_mcp_event_stream_is_open() {
    // Regression (issue 11.10): the process exited only when the MCP client closed its
    // `GET /mcp` stream; under Kubernetes that ends in SIGKILL and loses the queue.
    let mut s = start(&["--set", "shutdown_grace_s=1"]);
    let c = client();
    let mcp = format!("{}/mcp", s.url);
    let init = c
        .post(&mcp)
        .header("x-api-key", KEY)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(init.status(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .expect("a session")
        .to_str()
        .expect("ascii")
        .to_owned();
    let _ = init.bytes().await;
    let note = c
        .post(&mcp)
        .header("x-api-key", KEY)
        .header("mcp-session-id", &session)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .expect("initialized");
    assert!(note.status().is_success(), "{}", note.status());
    let stream = c
        .get(&mcp)
        .header("x-api-key", KEY)
        .header("mcp-session-id", &session)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("event stream");
    assert_eq!(stream.status(), 200);
    let pid = s.child.id();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = im_testkit::until(
        "im to exit with the MCP stream open",
        Duration::from_secs(15),
        || std::future::ready(s.child.try_wait().expect("wait")),
    )
    .await;
    assert!(status.success(), "{status:?}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_image_strings_get_answers_and_never_wedge_the_lane() {
    // Regression (issue 11.1, 11.2), over the socket where they showed: a non-ASCII image string
    // in /txt2txt held its slot until the caller left; in /img2img and /v1/images/generations the
    // connection closed with no response.
    let s = start(&[]);
    let c = client();
    let bad = "é".repeat(40);
    let chat = json!({"model": LLM, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": bad}}]}]});
    let (status, _) = post(&c, &s.url, "/txt2txt", &chat).await;
    assert!((200..500).contains(&status), "{status}");
    let edit = json!({"model": SD, "file": bad, "prompt": "p", "width": 8, "height": 8});
    let (status, v) = post(&c, &s.url, "/img2img", &edit).await;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (400, json!("file")),
        "{v}"
    );
    let generation = json!({"model": SD, "file": bad, "prompt": "p", "size": "8x8"});
    let (status, v) = post(&c, &s.url, "/v1/images/generations", &generation).await;
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (400, json!("file")),
        "{v}"
    );
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(20),
        post(&c, &s.url, "/txt2txt", &body_for("txt2txt", 7).1),
    )
    .await
    .expect("the lane is not wedged");
    assert_eq!(status, 200);
}

/// The seeds' first and second dialects over the socket, as their examples call them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_models_batches_and_infer_streams_over_the_socket() {
    let s = start(&[]);
    let c = client();
    let (status, v) = post(
        &c,
        &s.url,
        "/infer",
        &json!({"text": "Artificial intelligence is transforming industries around the world.",
                "model": "summarizer", "version": "v1", "parameters": {"max_length": 50, "min_length": 10}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // The envelope's fields and types, exactly.
    assert_eq!(v["success"], true);
    assert!(v["result"]["summary_text"].is_string(), "{v}");
    assert_eq!(v["model_used"], "summarizer:v1");
    assert!(v["latency_ms"].is_f64(), "{v}");
    assert!(v["request_id"].is_string(), "{v}");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    for (k, want) in [("model_type", "summarization"), ("kind", "txt2txt")] {
        assert_eq!(v["metadata"][k], want, "{v}");
    }
    assert!(v["metadata"]["queue_wait_ms"].is_f64() && v["metadata"]["processing_ms"].is_f64());

    let (status, v) = post(
        &c,
        &s.url,
        "/infer/batch",
        &json!({"requests": [
            {"text": "I love it", "model": "sentiment"},
            {"text": "x", "model": "missing"},
            {"text": "Once upon a time", "model": "generator", "parameters": {"num_return_sequences": 2}}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let r = v["results"].as_array().expect("results");
    assert_eq!(r[0]["result"]["label"], "positive");
    assert_eq!(r[1]["success"], false);
    assert_eq!(r[2]["result"].as_array().map(Vec::len), Some(2));

    let resp = c
        .post(format!("{}/v1/infer/stream", s.url))
        .header("x-api-key", KEY)
        .json(&json!({"model": LLM, "prompt": "Tell me a story", "params": {"max_new_tokens": 16}}))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    assert!(body.contains("event: token"), "{body}");
    let last = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .expect("events");
    assert!(
        last.starts_with("event: done"),
        "the stream ends with its final event: {last}"
    );
}
