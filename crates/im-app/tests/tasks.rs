//! The seeds' first dialect against the simulator: task models with versions (`/infer`,
//! `/infer/batch`, `GET /models`), out of the box with the default configuration.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::ImConfig;
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn app() -> (Router, Built) {
    let built = app::build(ImConfig::default(), Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

async fn post(app: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let (status, _, bytes) = common::post_json(app, path, body).await;
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

fn assert_envelope(v: &Value, model_used: &str) {
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["model_used"], model_used, "{v}");
    assert!(v["latency_ms"].as_f64().is_some_and(|x| x >= 0.0), "{v}");
    assert!(
        v["request_id"].as_str().is_some_and(|x| !x.is_empty()),
        "{v}"
    );
    let ts = v["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.contains('T'), "ISO 8601 UTC: {ts}");
    assert_eq!(v["metadata"]["kind"], "txt2txt");
    for f in ["queue_wait_ms", "processing_ms"] {
        assert!(
            v["metadata"][f].as_f64().is_some_and(|x| x >= 0.0),
            "{f}: {v}"
        );
    }
}

#[tokio::test]
async fn the_first_documents_examples_work_out_of_the_box() {
    let (app, built) = app().await;
    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "The quick brown fox jumps over the lazy dog, again and again.",
                "model": "summarizer", "version": "v1",
                "parameters": {"max_length": 20, "min_length": 5}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v, "summarizer:v1");
    assert_eq!(v["metadata"]["model_type"], "summarization");
    assert!(
        v["result"]["summary_text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );

    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "I love this product!", "model": "sentiment:v1"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v, "sentiment:v1");
    assert_eq!(
        v["result"]["label"], "positive",
        "parsed from the JSON answer: {v}"
    );
    assert!(
        v["result"]["score"]
            .as_f64()
            .is_some_and(|x| (0.0..=1.0).contains(&x)),
        "{v}"
    );
    let (_, v) = post(
        &app,
        "/infer",
        &json!({"text": "This was terrible.", "model": "sentiment"}),
    )
    .await;
    assert_eq!(v["result"]["label"], "negative", "{v}");

    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "Once upon a time", "model": "generator",
                "parameters": {"max_length": 16, "num_return_sequences": 3}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v, "generator:v1");
    let texts = v["result"].as_array().expect("a list");
    assert_eq!(texts.len(), 3, "{v}");
    assert!(texts.iter().all(|t| t["generated_text"].is_string()), "{v}");
    // Everything ran on the txt2txt queue.
    let st = built.engine.status().await.expect("running");
    assert!(
        st.groups.iter().all(|g| g.kind.as_str() == "txt2txt"),
        "{st:?}"
    );
}

#[tokio::test]
async fn failures_use_the_envelope_and_the_error_tables_status() {
    let (app, _built) = app().await;
    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "hi", "model": "summarizer:v9"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["type"], "unknown_model");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("summarizer:v1")),
        "{v}"
    );
    let (s, v) = post(&app, "/infer", &json!({"text": "", "model": "summarizer"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "text", "{v}");
    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "hi", "model": "summarizer", "parameters": {"max_length": 5, "min_length": 9}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "parameters.min_length", "{v}");
    let (s, v) = post(
        &app,
        "/infer",
        &json!({"text": "hi", "model": "summarizer", "colour": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["success"], false, "{v}");
}

#[tokio::test]
async fn a_batch_answers_in_order_and_one_failure_fails_only_itself() {
    let (app, _built) = app().await;
    let (s, v) = post(
        &app,
        "/infer/batch",
        &json!({"requests": [
            {"text": "Great news today", "model": "sentiment:v1"},
            {"text": "hello", "model": "nope"},
            {"text": "A long text to shorten.", "model": "summarizer"},
            {"text": 5, "model": "summarizer"},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["model_used"], "sentiment:v1");
    assert_eq!(r[0]["result"]["label"], "positive", "{v}");
    assert_eq!(r[1]["success"], false);
    assert_eq!(r[1]["error"]["type"], "unknown_model");
    assert_eq!(r[2]["model_used"], "summarizer:v1");
    assert_eq!(r[3]["success"], false);
    assert_eq!(r[3]["error"]["param"], "requests[3]", "{v}");
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(2))
    );
    let ids: Vec<&str> = r.iter().filter_map(|x| x["request_id"].as_str()).collect();
    assert_eq!(ids.len(), 4);
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "each item has its own id: {ids:?}"
    );

    let too_many = json!({"requests": vec![json!({"text": "x", "model": "sentiment"}); 33]});
    let (s, v) = post(&app, "/infer/batch", &too_many).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "requests");
}

#[tokio::test]
async fn models_lists_the_registry() {
    let (app, _built) = app().await;
    let req = Request::get("/models")
        .header("x-api-key", DEMO_KEY)
        .body(Body::empty())
        .expect("request");
    let resp = app.oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
    let names: Vec<&str> = v["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["summarizer", "sentiment", "generator"]);
    assert_eq!(v["models"][0]["default_version"], "v1");
    assert_eq!(v["models"][1]["model_type"], "sentiment-analysis");
    assert!(
        v["models"][2]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
}
