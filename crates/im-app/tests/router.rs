//! Router tests with `oneshot` (no socket): every endpoint and every error type of the table.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use im_app::config::{ImConfig, ModelEntry};
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";

async fn app_with(f: impl FnOnce(&mut ImConfig)) -> (Router, Built) {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    f(&mut cfg);
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

async fn app() -> (Router, Built) {
    app_with(|_| {}).await
}

/// Waits until the engine's status shows `what`.
async fn until_status(b: &Built, what: &str, cond: impl Fn(&inference_queue::Status) -> bool) {
    let cond = &cond;
    im_testkit::eventually(what, Duration::from_secs(20), move || async move {
        b.engine.status().await.is_some_and(|s| cond(&s))
    })
    .await
}

fn post(path: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body.into()))
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("authorization", format!("Bearer {DEMO_KEY}"))
        .body(Body::empty())
        .expect("request")
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

/// Assert the error shape, type and (if given) param.
fn is_error(
    resp: &(StatusCode, axum::http::HeaderMap, Value),
    status: u16,
    kind: &str,
    param: Option<&str>,
) {
    let (s, h, v) = resp;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    if let Some(p) = param {
        assert_eq!(v["error"]["param"], p, "{v}");
    }
    assert!(
        h.contains_key("x-request-id"),
        "errors carry the request id too"
    );
}

fn png_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 1))
}

fn chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})
        .to_string()
}

fn vision_body() -> String {
    json!({"model": VLM, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": png_b64()}}]}]}).to_string()
}

fn img_body(extra: Value) -> String {
    let mut v = json!({"model": SD, "prompt": "a fox", "width": 64, "height": 32, "steps": 2});
    v.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    v.to_string()
}

#[tokio::test]
async fn seed_routes_answer_with_the_figures() {
    let (app, _b) = app().await;
    for (path, body) in [
        ("/txt2txt", chat_body(LLM)),
        ("/img2txt", vision_body()),
        ("/txt2img", img_body(json!({}))),
        ("/img2img", img_body(json!({"file": png_b64()}))),
    ] {
        let (s, h, v) = send(&app, post(path, body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        for f in [
            "request_id",
            "model",
            "kind",
            "queue_wait_ms",
            "processing_ms",
            "attempts",
        ] {
            assert!(!v[f].is_null(), "{path} lacks {f}: {v}");
        }
        assert_eq!(
            h["x-request-id"].to_str().expect("ascii"),
            v["request_id"].as_str().expect("id")
        );
        assert_eq!(v["kind"], &path[1..]);
        if path.ends_with("img") {
            let img = base64::engine::general_purpose::STANDARD
                .decode(v["images"][0].as_str().expect("image"))
                .expect("b64");
            assert_eq!(localai_sim::image::png_size(&img), Some((64, 32)));
        } else {
            assert!(
                v["content"]
                    .as_str()
                    .expect("content")
                    .contains("Simulated reply")
            );
        }
    }
    let (_, _, v) = send(&app, post("/img2txt", vision_body())).await;
    assert!(
        v["content"]
            .as_str()
            .expect("content")
            .starts_with("I see an image"),
        "the image reached the model: {v}"
    );
}

#[tokio::test]
async fn openai_routes_keep_openai_shapes_and_send_figures_as_headers() {
    let (app, _b) = app().await;
    let (s, h, v) = send(&app, post("/v1/chat/completions", chat_body(LLM))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v.get("request_id").is_none(),
        "no foreign fields in OpenAI bodies"
    );
    for hdr in [
        "x-request-id",
        "x-queue-wait-ms",
        "x-processing-ms",
        "x-attempts",
        "x-im-overhead-ms",
    ] {
        assert!(h.contains_key(hdr), "{hdr}");
    }
    let (s, _, v) = send(&app, post("/v1/chat/completions", vision_body())).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .starts_with("I see an image")
    );
    let body =
        json!({"model": SD, "prompt": "a fox", "size": "32x16", "response_format": "b64_json"})
            .to_string();
    let (s, _, v) = send(&app, post("/v1/images/generations", body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["data"][0]["b64_json"].is_string() && v["created"].is_u64());
    let body =
        json!({"model": SD, "prompt": "edit", "size": "16x16", "file": png_b64()}).to_string();
    assert_eq!(
        send(&app, post("/v1/images/generations", body)).await.0,
        StatusCode::OK
    );
    let (s, _, v) = send(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        vec![
            LLM,
            VLM,
            SD,
            "bge-small-en-v1.5",
            "jina-reranker-v1-base-en",
            "whisper-1",
            "tts-1"
        ]
    );
}

#[tokio::test]
async fn streaming_sends_chunks_then_done() {
    let (app, _b) = app().await;
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "stream"}], "stream": true})
            .to_string();
    for path in ["/v1/chat/completions", "/txt2txt"] {
        let (s, h, v) = send(&app, post(path, body.clone())).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            h["content-type"]
                .to_str()
                .expect("ct")
                .starts_with("text/event-stream")
        );
        let text = v.as_str().expect("sse text");
        assert!(
            text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"),
            "{text}"
        );
        assert!(!text.contains("event: error"));
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let (app, _b) = app().await;
    send(&app, post("/txt2txt", chat_body(LLM))).await;
    let (s, _, v) = send(&app, get("/get_request_metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["total"], 1);
    for p in [
        "/get_error_metrics",
        "/mcp/get_request_metrics",
        "/mcp/get_error_metrics",
    ] {
        assert_eq!(send(&app, get(p)).await.0, StatusCode::OK, "{p}");
    }
    let (s, _, v) = send(&app, get("/queue-status")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["lanes"][0]["loaded"], LLM);
    assert_eq!(v["counters"]["completed"], 1);
    let (s, _, v) = send(&app, get("/ready")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ready"], true);
    let health = Request::get("/health").body(Body::empty()).expect("req");
    assert_eq!(
        send(&app, health).await.0,
        StatusCode::OK,
        "/health needs no key"
    );
    let (s, h, text) = send(&app, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain")
    );
    assert!(text.as_str().expect("text").contains("im_requests_total"));
    let (s, _, doc) = send(
        &app,
        Request::get("/openapi.json")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["paths"]["/txt2txt"].is_object());
    let (s, _, page) = send(
        &app,
        Request::get("/docs/").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.as_str().expect("html").contains("swagger"),
        "Swagger UI is served offline"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_naming_the_field() {
    let (app, _b) = app().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("/txt2txt", "{not json".into(), "body"),
        ("/txt2txt", String::new(), "body"),
        ("/txt2txt", json!({"model": LLM}).to_string(), "messages"),
        ("/txt2txt", json!({"model": 5, "messages": []}).to_string(), "model"),
        ("/txt2txt", json!({"model": LLM, "messages": []}).to_string(), "messages"),
        ("/txt2txt", json!({"model": LLM, "messages": [{"role": "user", "content": "x"}], "temperature": 2.5}).to_string(), "temperature"),
        ("/txt2txt", json!({"model": LLM, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).to_string(), "temperature"),
        ("/txt2txt", json!({"model": LLM, "messages": [{"role": "wizard", "content": "x"}]}).to_string(), "messages[0].role"),
        ("/txt2txt", json!({"model": LLM, "messages": [{"role": "user", "content": "x"}], "colour": 1}).to_string(), "colour"),
        ("/txt2img", img_body(json!({"width": 0})), "width"),
        ("/txt2img", img_body(json!({"height": 30})), "height"),
        ("/txt2img", img_body(json!({"width": 4096})), "width"),
        ("/txt2img", img_body(json!({"width": -8})), "width"),
        ("/txt2img", img_body(json!({"prompt": ""})), "prompt"),
        ("/txt2img", img_body(json!({"steps": 0})), "steps"),
        ("/txt2img", img_body(json!({"n": 9})), "n"),
        ("/img2img", img_body(json!({"file": "not base64 !!"})), "file"),
        ("/img2img", img_body(json!({"file": base64::engine::general_purpose::STANDARD.encode("just some text, not an image")})), "file"),
        ("/img2img", img_body(json!({})), "file"),
        ("/img2txt", chat_body(VLM), "messages"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}]}).to_string(), "model"),
        ("/v1/chat/completions", json!({"model": LLM, "messages": "hi"}).to_string(), "messages"),
        ("/v1/images/generations", json!({"model": SD, "prompt": "p", "size": "big"}).to_string(), "size"),
        ("/v1/images/generations", json!({"model": SD, "prompt": "p", "response_format": "url"}).to_string(), "response_format"),
    ];
    for (path, body, param) in cases {
        let resp = send(&app, post(path, body.clone())).await;
        is_error(&resp, 400, "invalid_request", Some(param));
    }
}

#[tokio::test]
async fn every_json_route_reads_its_body_as_axum_would_and_names_what_is_wrong() {
    // The caller layer serves these routes itself, not through axum's router: each still needs
    // its key first, answers a body that is not JSON 400 naming the body, a body over the limit
    // 413, and another method 405.
    let (app, _b) = app_with(|c| c.http.body_limit_bytes = 4096).await;
    let served: Vec<&str> = im_http_api::routes::ROUTES
        .iter()
        .filter(|e| e.serves.is_some())
        .map(|e| e.path)
        .collect();
    assert!(served.len() >= 14, "{served:?}");
    for path in served {
        let keyless = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from("{not json"))
            .expect("request");
        is_error(&send(&app, keyless).await, 401, "unauthorized", None);
        is_error(
            &send(&app, post(path, "{not json")).await,
            400,
            "invalid_request",
            Some("body"),
        );
        is_error(
            &send(&app, post(path, "x".repeat(5000))).await,
            413,
            "payload_too_large",
            None,
        );
        is_error(
            &send(&app, get(path)).await,
            405,
            "method_not_allowed",
            None,
        );
    }
}

#[tokio::test]
async fn a_body_sent_in_pieces_is_read_whole_and_its_limit_counts_every_piece() {
    let (app, _b) = app_with(|c| c.http.body_limit_bytes = 4096).await;
    let in_pieces = |body: String, piece: usize| {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body
            .into_bytes()
            .chunks(piece)
            .map(|c| Ok(c.to_vec()))
            .collect();
        Request::post("/v1/chat/completions")
            .header("x-api-key", DEMO_KEY)
            .header("content-type", "application/json")
            .body(Body::from_stream(futures_util::stream::iter(pieces)))
            .expect("request")
    };
    let whole = send(&app, post("/v1/chat/completions", chat_body(LLM))).await;
    assert_eq!(whole.0, StatusCode::OK, "{}", whole.2);
    for piece in [1, 7, 4096] {
        let (status, _, v) = send(&app, in_pieces(chat_body(LLM), piece)).await;
        assert_eq!(status, StatusCode::OK, "pieces of {piece}: {v}");
        assert_eq!(v["model"], whole.2["model"], "{v}");
        assert_eq!(v["object"], "chat.completion", "{v}");
    }
    // Over the limit only once the pieces are added up.
    let padded = json!({"model": LLM, "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = send(&app, in_pieces(padded.to_string(), 1000)).await;
    is_error(&r, 413, "payload_too_large", None);
    // A piece that is not JSON once put together with the others.
    let r = send(&app, in_pieces(chat_body(LLM).replace('}', "]"), 5)).await;
    is_error(&r, 400, "invalid_request", Some("body"));
}

/// A model of the simulator's catalogue that a test removes from it.
const GONE: &str = "llava-1.6-mistral-7b";

#[tokio::test]
async fn every_error_type_of_the_table() {
    let (app, b) = app_with(|c| {
        c.models = vec![
            ModelEntry {
                name: LLM.into(),
                kinds: vec!["txt2txt".into()],
                max_in_flight: Some(1),
                aliases: Vec::new(),
                ..Default::default()
            },
            ModelEntry {
                name: SD.into(),
                kinds: vec!["txt2img".into(), "img2img".into()],
                max_in_flight: Some(1),
                aliases: Vec::new(),
                ..Default::default()
            },
            ModelEntry {
                name: GONE.into(),
                kinds: vec!["txt2txt".into()],
                max_in_flight: Some(1),
                aliases: Vec::new(),
                ..Default::default()
            },
        ];
        c.discovery.refresh_s = 0.0;
        c.http.body_limit_bytes = 64 * 1024;
        c.limits.max_queued_total = 2;
    })
    .await;
    // unauthorized
    let no_key = Request::post("/txt2txt")
        .body(Body::from(chat_body(LLM)))
        .expect("req");
    is_error(&send(&app, no_key).await, 401, "unauthorized", None);
    let wrong = Request::get("/queue-status")
        .header("x-api-key", "nope")
        .body(Body::empty())
        .expect("req");
    is_error(&send(&app, wrong).await, 401, "unauthorized", None);
    // unknown_model lists the valid ones; unsupported_kind too
    let r = send(&app, post("/txt2txt", chat_body("gpt-9"))).await;
    is_error(&r, 404, "unknown_model", Some("model"));
    assert!(r.2["error"]["message"].as_str().expect("msg").contains(LLM));
    let r = send(&app, post("/txt2img", img_body(json!({"model": LLM})))).await;
    is_error(&r, 422, "unsupported_kind", Some("model"));
    assert!(r.2["error"]["message"].as_str().expect("msg").contains(SD));
    // not_found, method_not_allowed
    is_error(&send(&app, get("/nowhere")).await, 404, "not_found", None);
    is_error(
        &send(&app, get("/txt2txt")).await,
        405,
        "method_not_allowed",
        None,
    );
    // payload_too_large
    let big = img_body(json!({"file": "A".repeat(100 * 1024)}));
    is_error(
        &send(&app, post("/img2img", big)).await,
        413,
        "payload_too_large",
        None,
    );
    // upstream_error: the simulator no longer has GONE, removed after im read its catalogue
    // (404 upstream → 502, not retried)
    let sim = b.sim.as_ref().expect("simulated").url().to_owned();
    let removed = reqwest::Client::new()
        .post(format!("{sim}/models/delete/{GONE}"))
        .send()
        .await
        .expect("sim answers");
    assert!(removed.status().is_success());
    let r = send(&app, post("/txt2txt", chat_body(GONE))).await;
    is_error(&r, 502, "upstream_error", None);
    assert!(
        r.2["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("not found")
    );
    // deadline_exceeded: a long image job holds the lane; a queued chat with a 1 ms deadline expires
    let slow = img_body(json!({"steps": 150, "n": 4, "width": 8, "height": 8})); // ~190 ms at this time scale
    let busy = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post("/txt2img", slow)).await }
    });
    until_status(&b, "the image running", |s| s.in_flight == 1).await;
    let body =
        json!({"model": LLM, "messages": [{"role": "user", "content": "x"}], "deadline_ms": 1})
            .to_string();
    let r = send(&app, post("/txt2txt", body)).await;
    is_error(&r, 504, "deadline_exceeded", None);
    // queue_full: two waiting fill the queue; the third is refused at once with Retry-After
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, post("/txt2txt", chat_body(LLM))).await })
        })
        .collect();
    until_status(&b, "two chats waiting", |s| s.waiting == 2).await;
    let r = send(&app, post("/txt2txt", chat_body(LLM))).await;
    is_error(&r, 429, "queue_full", None);
    assert!(r.1.contains_key("retry-after"));
    assert_eq!(busy.await.expect("join").0, StatusCode::OK);
    for w in waiting {
        assert_eq!(w.await.expect("join").0, StatusCode::OK);
    }
    // shutting_down
    b.engine.shutdown(Duration::from_millis(10)).await;
    is_error(
        &send(&app, post("/txt2txt", chat_body(LLM))).await,
        503,
        "shutting_down",
        None,
    );
}

#[tokio::test]
async fn upstream_unavailable_and_rate_limited() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![dead.into()];
    cfg.api_keys = vec!["k1".into(), "k2".into()];
    cfg.models = vec![ModelEntry {
        name: LLM.into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(1),
        aliases: Vec::new(),
        ..Default::default()
    }];
    cfg.retry.max_retries = 0;
    cfg.http.rate_limit_per_s = 1;
    cfg.http.rate_limit_burst = 2;
    cfg.jobs.enabled = false; // no job store: these tests would share the data directory
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());
    let req = |key: &str| {
        Request::post("/txt2txt")
            .header("x-api-key", key)
            .body(Body::from(chat_body(LLM)))
            .expect("req")
    };
    let r = send(&app, req("k1")).await;
    is_error(&r, 503, "upstream_unavailable", None);
    assert!(r.1.contains_key("retry-after"));
    let (s, _, v) = send(
        &app,
        Request::get("/ready")
            .header("x-api-key", "k1")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["lanes"][0]["reachable"], false);
    send(&app, req("k1")).await;
    let r = send(&app, req("k1")).await;
    is_error(&r, 429, "rate_limited", None);
    assert!(r.1.contains_key("retry-after"));
    assert_ne!(
        send(&app, req("k2")).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "limits are per key"
    );
}

#[tokio::test]
async fn openai_text_completions_plain_and_streaming_share_the_queue() {
    let (app, built) = app().await;
    let body = json!({"model": LLM, "prompt": "Once upon", "max_tokens": 3});
    let (status, headers, v) = send(&app, post("/v1/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Once upon"),
        "{v}"
    );
    assert!(headers.contains_key("x-queue-wait-ms"));
    let body = json!({"model": LLM, "prompt": ["Once", "upon"], "stream": true});
    let (status, _, v) = send(&app, post("/v1/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    let text = v.as_str().unwrap_or("");
    assert!(
        text.contains("text_completion") && text.contains("[DONE]"),
        "{text}"
    );
    assert!(!text.contains("event: error"), "{text}");
    let counters = built.engine.status().await.expect("running").counters;
    assert_eq!(counters.completed, 2, "both went through the scheduler");
    for (bad, param) in [
        (json!({"model": LLM}), "prompt"),
        (json!({"model": LLM, "prompt": ""}), "prompt"),
        (json!({"model": LLM, "prompt": 5}), "prompt"),
        (
            json!({"model": LLM, "prompt": "x", "temperature": 9}),
            "temperature",
        ),
        (
            json!({"model": LLM, "prompt": "x", "backend": "y"}),
            "backend",
        ),
        (json!({"prompt": "x"}), "model"),
    ] {
        let (status, _, v) = send(&app, post("/v1/completions", bad.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["param"], param, "{bad}: {v}");
    }
    let (status, _, v) = send(
        &app,
        post(
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn openai_embeddings_run_on_the_embed_queue() {
    const EMBED: &str = "bge-small-en-v1.5";
    let (app, built) = app().await;
    let body = json!({"model": EMBED, "input": ["first", "second"]});
    let (status, headers, v) = send(&app, post("/v1/embeddings", body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(
        (v["data"][0]["index"].clone(), v["data"][1]["index"].clone()),
        (json!(0), json!(1))
    );
    assert!(
        v["data"][0]["embedding"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(headers.contains_key("x-queue-wait-ms"));
    let st = built.engine.status().await.expect("running");
    assert!(
        st.groups.iter().any(|g| g.kind.as_str() == "embed"),
        "queued as embed"
    );
    for (bad, param) in [
        (json!({"model": EMBED}), "input"),
        (json!({"model": EMBED, "input": 5}), "input"),
        (json!({"model": EMBED, "input": []}), "input"),
        (
            json!({"model": EMBED, "input": "x", "backend": "y"}),
            "backend",
        ),
    ] {
        let (status, _, v) = send(&app, post("/v1/embeddings", bad.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["param"], param, "{bad}: {v}");
    }
    let (status, _, v) = send(
        &app,
        post(
            "/v1/embeddings",
            json!({"model": LLM, "input": "x"}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a chat model does not embed: {v}"
    );
    // LocalAI's route without the /v1 prefix is served too.
    let body = json!({"model": EMBED, "input": "without the prefix"});
    let (status, _, v) = send(&app, post("/embeddings", body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}
