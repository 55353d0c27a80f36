//! MCP with a real client (rmcp's client side): stdio by spawning the binary, streamable HTTP
//! standalone and mounted in im-http, and `--remote` into im-http's queue.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use im_app::config::ImConfig;
use im_app::{self as app, DEMO_KEY, Simulate};
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";
const TOOLS: [&str; 14] = [
    "txt2txt",
    "txt2img",
    "img2img",
    "img2txt",
    "get_request_metrics",
    "get_error_metrics",
    "queue_status",
    "list_models",
    "list_inference_backends",
    "get_backend_status",
    "get_supported_tasks",
    "select_backend_for_inference",
    "route_inference_request",
    "estimate_wait",
];

type Client = RunningService<RoleClient, ()>;

fn bin() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-mcp"));
    c.env_remove("IM_API_KEYS")
        .env_remove("IM_CONFIG")
        .env_remove("LOCALAI_URL")
        .env("RUST_LOG", "warn");
    c
}

async fn stdio_client(args: &[&str]) -> Client {
    let mut cmd = bin();
    cmd.args(args);
    let transport = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn im-mcp")
        .0;
    ().serve(transport).await.expect("initialize over stdio")
}

async fn http_client(url: &str, key: &str) -> Client {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    cfg.auth_header = Some(key.to_owned());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), cfg);
    ().serve(transport)
        .await
        .expect("initialize over streamable HTTP")
}

async fn call(c: &Client, tool: &'static str, args: Value) -> CallToolResult {
    let mut p = CallToolRequestParams::new(tool);
    p.arguments = args.as_object().cloned();
    c.call_tool(p).await.expect("tools/call answered")
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| {
            if let ContentBlock::Text(t) = c {
                Some(t.text.clone())
            } else {
                None
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn png_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 5))
}

/// Every tool listed with a schema, every tool called, an error as isError.
async fn exercise(c: &Client) {
    let tools = c.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    let mut want = TOOLS.to_vec();
    want.sort();
    assert_eq!(names, want);
    for t in &tools {
        assert_eq!(
            t.input_schema.get("type").and_then(Value::as_str),
            Some("object"),
            "{}",
            t.name
        );
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} needs a description an agent can act on",
            t.name
        );
    }
    let r = call(c, "txt2txt", json!({"model": LLM, "prompt": "hello"})).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("hello"));
    let r = call(
        c,
        "img2txt",
        json!({"model": VLM, "prompt": "what?", "image": png_b64()}),
    )
    .await;
    assert!(text(&r).starts_with("I see an image"), "{}", text(&r));
    for (tool, args) in [
        (
            "txt2img",
            json!({"model": SD, "prompt": "fox", "width": 16, "height": 16, "steps": 2}),
        ),
        (
            "img2img",
            json!({"model": SD, "prompt": "fox", "width": 16, "height": 8, "steps": 2, "file": png_b64()}),
        ),
    ] {
        let r = call(c, tool, args).await;
        let img = r
            .content
            .iter()
            .find_map(|c| {
                if let ContentBlock::Image(i) = c {
                    Some(i.clone())
                } else {
                    None
                }
            })
            .expect("image content");
        assert_eq!(img.mime_type, "image/png");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&img.data)
            .expect("base64");
        assert!(
            localai_sim::image::png_size(&bytes).is_some(),
            "{tool} returns a PNG"
        );
    }
    for tool in [
        "get_request_metrics",
        "get_error_metrics",
        "queue_status",
        "list_models",
        "list_inference_backends",
        "get_supported_tasks",
    ] {
        let r = call(c, tool, json!({})).await;
        let v: Value = serde_json::from_str(&text(&r)).expect("JSON text");
        assert!(v.is_object(), "{tool}");
    }
    let backends: Value =
        serde_json::from_str(&text(&call(c, "list_inference_backends", json!({})).await))
            .expect("JSON");
    let name = backends["backends"][0]["name"]
        .as_str()
        .expect("a backend")
        .to_owned();
    let one: Value = serde_json::from_str(&text(
        &call(c, "get_backend_status", json!({"name": name})).await,
    ))
    .expect("JSON");
    assert_eq!(one["name"], name);
    assert!(
        one["requests"].as_u64().is_some_and(|n| n > 0),
        "it served the calls above: {one}"
    );
    let r = call(c, "get_backend_status", json!({"name": "no-such-gpu"})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains(&name),
        "the error lists the backends: {}",
        text(&r)
    );
    // Where a chat would go, without running it: the one backend, and why.
    let placed: Value = serde_json::from_str(&text(
        &call(
            c,
            "select_backend_for_inference",
            json!({"task": "txt2txt", "model": LLM}),
        )
        .await,
    ))
    .expect("JSON");
    assert_eq!(placed["backend"], name, "{placed}");
    assert!(placed["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(placed["backends"][0]["can_host"], true, "{placed}");
    let r = call(
        c,
        "select_backend_for_inference",
        json!({"task": "chat", "model": LLM}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("kind"), "names the field: {}", text(&r));
    // How long a chat sent now would wait, without sending it; what cannot be served is refused.
    let estimate: Value = serde_json::from_str(&text(
        &call(c, "estimate_wait", json!({"task": "txt2txt", "model": LLM})).await,
    ))
    .expect("JSON");
    assert!(estimate["predicted_wait_ms"].is_u64(), "{estimate}");
    let r = call(
        c,
        "estimate_wait",
        json!({"task": "txt2txt", "model": "gpt-9"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("unknown_model"), "{}", text(&r));
    // Routed and run: the placement first, then the answer.
    let r = call(
        c,
        "route_inference_request",
        json!({"task": "txt2txt", "model": LLM, "prompt": "routed hello"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let ContentBlock::Text(first) = &r.content[0] else {
        panic!("the placement comes first: {:?}", r.content);
    };
    let note: Value = serde_json::from_str(&first.text).expect("placement JSON");
    assert_eq!(note["placed_on"], name);
    assert!(text(&r).contains("routed hello"), "{}", text(&r));
    let tasks: Value =
        serde_json::from_str(&text(&call(c, "get_supported_tasks", json!({})).await))
            .expect("JSON");
    assert!(
        tasks["tasks"]["txt2txt"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == LLM)),
        "{tasks}"
    );
    let r = call(
        c,
        "txt2img",
        json!({"model": SD, "prompt": "fox", "width": 12, "height": 16}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains("invalid_request") && text(&r).contains("width"),
        "{}",
        text(&r)
    );
    let r = call(c, "txt2txt", json!({"model": "gpt-9", "prompt": "x"})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains("unknown_model") && text(&r).contains(LLM),
        "{}",
        text(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_every_tool_and_concurrent_calls_share_the_queue() {
    let c = stdio_client(&["--simulate", "--sim-time-scale", "0.01"]).await;
    exercise(&c).await;
    let calls = (0..9).map(|i| {
        let (tool, args) = match i % 3 {
            0 => ("txt2txt", json!({"model": LLM, "prompt": format!("q{i}")})),
            1 => (
                "txt2img",
                json!({"model": SD, "prompt": "p", "width": 8, "height": 8, "steps": 1}),
            ),
            _ => (
                "img2txt",
                json!({"model": VLM, "prompt": "?", "image": png_b64()}),
            ),
        };
        let c = &c;
        async move { call(c, tool, args).await }
    });
    for r in futures_util::future::join_all(calls).await {
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
    }
    let q: Value =
        serde_json::from_str(&text(&call(&c, "queue_status", json!({})).await)).expect("json");
    let switches = q["counters"]["model_switches"].as_u64().expect("counter");
    // 4 + 9 calls over 3 models: drain-before-switch keeps model loads well below one per call.
    assert!(switches <= 9, "{q}");
    c.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_standalone_requires_a_key() {
    let mut cmd = bin();
    cmd.args([
        "--simulate",
        "--sim-time-scale",
        "0.01",
        "--http",
        "127.0.0.1:0",
    ])
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await.expect("read") {
        if let Some(rest) = line.strip_prefix("im-mcp: streamable HTTP on ") {
            url = Some(rest.trim().to_owned());
            break;
        }
    }
    let url = url.expect("address line");
    let plain = reqwest::Client::new()
        .post(&url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(plain.status(), 401, "no key, no MCP");
    let c = http_client(&url, DEMO_KEY).await;
    exercise(&c).await;
    c.cancel().await.expect("close");
}

/// im-http in-process (the same wiring as the binary) on a loopback port.
async fn im_http() -> (String, im_app::Built) {
    im_http_with(0.01, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_in_im_http_behind_the_same_key() {
    let (url, _built) = im_http().await;
    let mcp = format!("{url}/mcp");
    let no_key = reqwest::Client::new()
        .post(&mcp)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(no_key.status(), 401);
    let c = http_client(&mcp, DEMO_KEY).await;
    exercise(&c).await;
    c.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mode_uses_im_http_queue() {
    let (url, built) = im_http().await;
    let c = stdio_client(&["--remote", &url, "--api-key", DEMO_KEY]).await;
    for i in 0..3 {
        let r = call(
            &c,
            "txt2txt",
            json!({"model": LLM, "prompt": format!("remote {i}")}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
    }
    let status = built.engine.status().await.expect("running");
    assert_eq!(
        status.counters.completed, 3,
        "im-http's own queue served the MCP calls"
    );
    let q: Value = reqwest::Client::new()
        .get(format!("{url}/queue-status"))
        .header("x-api-key", DEMO_KEY)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("q")
        .json()
        .await
        .expect("json");
    assert_eq!(q["counters"]["completed"], 3);
    let bad = stdio_client(&["--remote", &url, "--api-key", "wrong"]).await;
    let r = call(&bad, "list_models", json!({})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("unauthorized"));
    c.cancel().await.expect("close");
    bad.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tool_calls_run_in_the_scheduler_order() {
    let (url, built) = im_http().await;
    let c = http_client(&format!("{url}/mcp"), DEMO_KEY).await;
    let peer = c.peer().clone();
    // A long image job holds the lane (150 steps x 4 images at time scale 0.01: ~1.8 s).
    let busy = {
        let p = peer.clone();
        tokio::spawn(async move {
            let mut params = CallToolRequestParams::new("txt2img");
            params.arguments =
                json!({"model": SD, "prompt": "p", "width": 8, "height": 8, "steps": 150, "n": 4})
                    .as_object()
                    .cloned();
            p.call_tool(params).await
        })
    };
    until_status(&built, "the image running", |s| s.in_flight == 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (queued, (tool, args)) in [
        (
            "img2txt",
            json!({"model": VLM, "prompt": "?", "image": png_b64()}),
        ),
        (
            "img2img",
            json!({"model": SD, "prompt": "p", "width": 8, "height": 8, "steps": 1, "file": png_b64()}),
        ),
        ("txt2txt", json!({"model": LLM, "prompt": "first"})),
    ]
    .into_iter()
    .enumerate()
    {
        let (p, tx) = (peer.clone(), tx.clone());
        tokio::spawn(async move {
            let mut params = CallToolRequestParams::new(tool);
            params.arguments = args.as_object().cloned();
            let r = p.call_tool(params).await.expect("answered");
            let _ = tx.send((tool, r.is_error));
        });
        // In this order: each queued before the next is sent.
        until_status(&built, "the call queued", |s| s.waiting == queued + 1).await;
    }
    drop(tx);
    assert_ne!(
        busy.await.expect("join").expect("answered").is_error,
        Some(true)
    );
    let mut order = Vec::new();
    while let Some((tool, err)) = rx.recv().await {
        assert_ne!(err, Some(true), "{tool}");
        order.push(tool);
    }
    // Kind priority (txt2txt > txt2img > img2img > img2txt) decides once the lane frees, whatever the arrival order.
    assert_eq!(order, vec!["txt2txt", "img2img", "img2txt"]);
    c.cancel().await.expect("close");
}

/// im-http in-process with `f` applied to its configuration, MCP mounted; its URL.
async fn im_http_with(time_scale: f64, f: impl FnOnce(&mut ImConfig)) -> (String, im_app::Built) {
    let mut cfg = ImConfig::default();
    f(&mut cfg);
    let built = app::build(cfg, Some(Simulate { time_scale }))
        .await
        .expect("build");
    let router = im_app::http_app(&built, None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, router).await });
    (url, built)
}

/// Hold the lane of `url` with a long image job; returns its task.
fn hold_the_lane(url: &str) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = url.to_owned();
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/txt2img"))
            .header("x-api-key", DEMO_KEY)
            .json(
                &json!({"model": SD, "prompt": "p", "width": 8, "height": 8, "steps": 150, "n": 4}),
            )
            .send()
            .await
    })
}

/// The engine's counters once it counted `n` cancellations (within `within`).
async fn cancelled(built: &im_app::Built, n: u64, within: Duration) -> inference_queue::Counters {
    im_testkit::until("the cancellations", within, || async {
        Some(built.engine.status().await.expect("running").counters).filter(|c| c.cancelled >= n)
    })
    .await
}

/// Waits until the engine's status shows `what`.
async fn until_status(
    built: &im_app::Built,
    what: &str,
    cond: impl Fn(&inference_queue::Status) -> bool,
) {
    let cond = &cond;
    im_testkit::eventually(what, Duration::from_secs(20), move || async move {
        built.engine.status().await.is_some_and(|s| cond(&s))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_cancellation_takes_the_call_out_of_the_queue() {
    // Regression (issue 11.9): MCP tool calls could never be cancelled.
    use rmcp::model::{CallToolRequest, ClientRequest};
    use rmcp::service::PeerRequestOptions;
    let (url, built) = im_http_with(0.01, |_| {}).await;
    let busy = hold_the_lane(&url);
    until_status(&built, "the image running", |s| s.in_flight == 1).await;
    let c = http_client(&format!("{url}/mcp"), DEMO_KEY).await;
    let mut p = CallToolRequestParams::new("txt2txt");
    p.arguments = json!({"model": LLM, "prompt": "hi"}).as_object().cloned();
    let handle = c
        .peer()
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(p)),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("sent");
    until_status(&built, "the call queued", |s| s.waiting == 1).await;
    handle
        .cancel(Some("changed my mind".into()))
        .await
        .expect("cancelled");
    let counters = cancelled(&built, 1, Duration::from_secs(3)).await;
    assert_eq!(counters.cancelled, 1, "{counters:?}");
    busy.await.expect("join").expect("image answered");
    let counters = built.engine.status().await.expect("running").counters;
    assert_eq!(
        counters.dispatched, 1,
        "the cancelled call never ran: {counters:?}"
    );
    c.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_mcp_client_cancels_its_queued_call() {
    // Regression (issue 11.9): a vanished MCP client's call stayed queued and then ran. rmcp
    // gives a closed session's handlers 5 s to answer, then cancels them.
    let (url, built) = im_http_with(0.04, |_| {}).await; // the image job holds the lane ~7 s
    let busy = hold_the_lane(&url);
    until_status(&built, "the image running", |s| s.in_flight == 1).await;
    let c = http_client(&format!("{url}/mcp"), DEMO_KEY).await;
    let mut p = CallToolRequestParams::new("txt2txt");
    p.arguments = json!({"model": LLM, "prompt": "hi"}).as_object().cloned();
    let _ = tokio::time::timeout(Duration::from_millis(200), c.call_tool(p)).await;
    c.cancel().await.expect("session closed");
    let counters = cancelled(&built, 1, Duration::from_secs(8)).await;
    assert_eq!(counters.cancelled, 1, "{counters:?}");
    busy.await.expect("join").expect("image answered");
    let counters = built.engine.status().await.expect("running").counters;
    assert_eq!(
        counters.dispatched, 1,
        "the cancelled call never ran: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_are_charged_to_the_callers_own_key_once() {
    // Regression (issue 11.9): all in-process MCP traffic was charged to the first key.
    let (url, _built) = im_http_with(0.01, |c| {
        c.api_keys = vec!["key-one".into(), "key-two".into()];
        c.http.rate_limit_per_s = 1;
        c.http.rate_limit_burst = 4;
    })
    .await;
    let http = reqwest::Client::new();
    for _ in 0..4 {
        let r = http
            .get(format!("{url}/v1/models"))
            .header("x-api-key", "key-one")
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
    }
    // key-one is spent; key-two's MCP session (initialize, initialized, one call) is not.
    let c = http_client(&format!("{url}/mcp"), "key-two").await;
    let r = call(&c, "list_models", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains(LLM));
    c.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_image_through_the_mcp_chat_tool_does_not_hold_the_lane() {
    // Regression (issue 11.1): through the MCP txt2txt tool the slot stayed held after the
    // client and its session had gone.
    let (url, built) = im_http_with(0.01, |_| {}).await;
    let c = http_client(&format!("{url}/mcp"), DEMO_KEY).await;
    let bad = "é".repeat(40);
    let messages =
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}]);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        call(&c, "txt2txt", json!({"model": LLM, "messages": messages})),
    )
    .await
    .expect("answered");
    c.cancel().await.expect("close");
    let status = built.engine.status().await.expect("running");
    assert_eq!((status.in_flight, status.waiting), (0, 0));
    let c = http_client(&format!("{url}/mcp"), DEMO_KEY).await;
    let r = call(
        &c,
        "txt2txt",
        json!({"model": LLM, "prompt": "still there?"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    c.cancel().await.expect("close");
}

fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn im_mcp_over_http_stops_on_sigterm() {
    // Regression (issue 11.10): `im-mcp --http` ignored SIGTERM and never shut its engine down.
    let mut child = bin()
        .args(["--http", "127.0.0.1:0", "--simulate", "--api-keys", "k1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await.expect("read") {
        if let Some(rest) = line.strip_prefix("im-mcp: streamable HTTP on ") {
            url = Some(rest.trim().to_owned());
            break;
        }
    }
    let url = url.expect("listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let c = http_client(&url, "k1").await;
    sigterm(child.id().expect("pid"));
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("status");
    assert!(status.success(), "{status:?}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_keeps_the_callers_request_id() {
    // Issue 12: MCP calls used to get a new id from an in-process router round trip.
    let (url, _built) = im_http_with(0.01, |_| {}).await;
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp"));
    cfg.auth_header = Some(DEMO_KEY.to_owned());
    cfg.custom_headers.insert(
        reqwest::header::HeaderName::from_static("x-request-id"),
        reqwest::header::HeaderValue::from_static("caller-id-42"),
    );
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), cfg);
    let c: Client = ().serve(transport).await.expect("initialize");
    let r = call(&c, "txt2txt", json!({"model": LLM, "prompt": "hi"})).await;
    assert!(text(&r).contains("request caller-id-42 on"), "{}", text(&r));
    c.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn im_mcp_over_http_keeps_the_listener_rules() {
    // Issue 27: every binary that listens closes a socket that never sends a byte, and caps the
    // connections of one peer.
    use tokio::io::AsyncReadExt;
    let mut child = bin()
        .args(["--http", "127.0.0.1:0", "--simulate", "--api-keys", "k1"])
        .args([
            "--set",
            "http.header_read_timeout_s=1;http.max_connections_per_peer=4",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await.expect("read") {
        if let Some(rest) = line.strip_prefix("im-mcp: streamable HTTP on ") {
            url = Some(rest.trim().trim_end_matches("/mcp").to_owned());
            break;
        }
    }
    let addr = url
        .expect("listening")
        .trim_start_matches("http://")
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The fifth is over the peer's cap: closed at once; the others at the first-byte deadline.
    for mut s in idle {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "closed by the server: {read:?}"
        );
    }
}
