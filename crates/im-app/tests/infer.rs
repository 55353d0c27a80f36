//! The seeds' `/v1/infer` dialect and `GET /` against the simulator.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::ImConfig;
use im_app::{self as app, Built, Simulate};
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";

async fn app() -> (Router, Built) {
    let built = app::build(ImConfig::default(), Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

async fn post(app: &Router, path: &str, body: &Value) -> (StatusCode, HeaderMap, String) {
    let (status, headers, bytes) = common::post_json(app, path, body).await;
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn infer_answers_text_with_usage_and_timings() {
    let (app, built) = app().await;
    let body = json!({"model": LLM, "prompt": "Once upon a time",
                      "params": {"max_new_tokens": 8, "temperature": 0.2, "top_p": 0.9, "stop": ["\n"]}});
    let (s, h, text) = post(&app, "/v1/infer", &body).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["model"], LLM);
    assert_eq!(
        v["id"],
        h["x-request-id"].to_str().expect("ascii"),
        "one identity"
    );
    assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["usage"]["completion_tokens"].is_u64(), "{v}");
    for t in ["queue_wait_ms", "processing_ms", "total_ms"] {
        assert!(
            v["timings"][t].as_f64().is_some_and(|x| x >= 0.0),
            "{t}: {v}"
        );
    }
    let st = built.engine.status().await.expect("running");
    assert!(
        st.groups.iter().any(|g| g.kind.as_str() == "txt2txt"),
        "on the txt2txt queue"
    );
}

/// The SSE events of a stream body as (event, data).
fn sse_events(text: &str) -> Vec<(&str, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = "message";
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            data.map(|d| (event, d))
        })
        .collect()
}

/// An upstream whose completion streams send one piece and then stop mid-answer.
async fn upstream_that_stops_mid_stream() -> String {
    use axum::routing::post;
    async fn partial() -> impl axum::response::IntoResponse {
        (
            [("content-type", "text/event-stream")],
            "data: {\"id\":\"c1\",\"object\":\"text_completion\",\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\"Once\",\"finish_reason\":null}]}\n\n",
        )
    }
    let app = Router::new()
        .route("/v1/completions", post(partial))
        .route("/completions", post(partial));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_stream_cut_short_by_the_upstream_ends_with_an_error_event() {
    let mut cfg = ImConfig::default();
    cfg.upstreams = vec![upstream_that_stops_mid_stream().await.as_str().into()];
    cfg.api_keys = vec![app::DEMO_KEY.into()];
    cfg.models = vec![im_app::config::ModelEntry {
        name: "m".into(),
        kinds: vec!["txt2txt".into()],
        max_in_flight: Some(1),
        ..Default::default()
    }];
    cfg.check_model_echo = false;
    cfg.jobs.enabled = false;
    let built = app::build(cfg, None).await.expect("build");
    let app = im_http_api::router(built.state.clone());
    let body = json!({"model": "m", "prompt": "Tell me", "params": {"max_new_tokens": 6}});
    let (s, _, text) = post(&app, "/v1/infer/stream", &body).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let events = sse_events(&text);
    assert!(
        events.iter().any(|(e, _)| *e == "token"),
        "the piece that came: {text}"
    );
    let (last, error) = events.last().expect("events");
    assert_eq!(
        *last, "error",
        "the stream ends with an error event: {text}"
    );
    assert!(error["error"]["message"].is_string(), "{error}");
    assert!(!events.iter().any(|(e, _)| *e == "done"), "{text}");
}

#[tokio::test]
async fn infer_stream_sends_tokens_then_done() {
    let (app, _built) = app().await;
    let body = json!({"model": LLM, "prompt": "Tell me", "params": {"max_new_tokens": 6}});
    let (s, h, text) = post(&app, "/v1/infer/stream", &body).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(
        h["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let events = sse_events(&text);
    let tokens: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| *e == "token")
        .map(|(_, d)| d)
        .collect();
    assert!(tokens.len() > 1, "several tokens: {text}");
    let (last, done) = events.last().expect("events");
    assert_eq!(*last, "done", "the stream ends with done: {text}");
    assert_eq!(done["usage"]["completion_tokens"], tokens.len(), "{done}");
    assert!(done["finish_reason"].is_string(), "{done}");
    assert!(done["timings"]["total_ms"].as_f64().is_some(), "{done}");
    assert!(!events.iter().any(|(e, _)| *e == "error"));
}

#[tokio::test]
async fn infer_refuses_bad_parameters_by_name() {
    let (app, _built) = app().await;
    let cases = [
        (json!({"prompt": "x"}), "model"),
        (json!({"model": LLM}), "prompt"),
        (json!({"model": LLM, "prompt": ""}), "prompt"),
        (
            json!({"model": LLM, "prompt": "x", "params": {"top_p": 1.5}}),
            "params.top_p",
        ),
        (
            json!({"model": LLM, "prompt": "x", "params": {"max_new_tokens": 0}}),
            "params.max_new_tokens",
        ),
        (
            json!({"model": LLM, "prompt": "x", "params": {"temperature": 3}}),
            "params.temperature",
        ),
        (
            json!({"model": LLM, "prompt": "x", "params": {"stop": ["a", "b", "c", "d", "e"]}}),
            "params.stop",
        ),
        (
            json!({"model": LLM, "prompt": "x", "params": {"deadline_ms": 0}}),
            "params.deadline_ms",
        ),
    ];
    for path in ["/v1/infer", "/v1/infer/stream"] {
        for (body, param) in &cases {
            let (s, _, text) = post(&app, path, body).await;
            let v: Value = serde_json::from_str(&text).expect("JSON error");
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
            assert_eq!(v["error"]["param"], *param, "{path} {body}: {v}");
        }
        let (s, _, text) = post(
            &app,
            path,
            &json!({"model": LLM, "prompt": "x", "params": {"beams": 2}}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "an unknown parameter: {text}");
        let (s, _, _) = post(&app, path, &json!({"model": "nope", "prompt": "x"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn root_says_what_the_api_is_without_a_key() {
    let (app, _built) = app().await;
    let resp = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(v["name"], "im");
    assert_eq!(v["docs"], "/docs");
    assert!(v["version"].is_string());
    let routes = v["routes"].as_array().expect("routes");
    for (method, path) in [
        ("POST", "/v1/infer"),
        ("POST", "/v1/infer/stream"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/queue-status"),
    ] {
        assert!(
            routes
                .iter()
                .any(|r| r["method"] == method && r["path"] == path),
            "{method} {path} listed: {v}"
        );
    }
}
