//! Predicted waits for clients (issue 33): `GET /v1/queue/estimate` answers what a request sent
//! now would wait, from the same rule the core uses for placement advice.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::{self as app, DEMO_KEY, Simulate};
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";

async fn estimate(app: &Router, query: &str) -> (StatusCode, Value) {
    get(app, &format!("/v1/queue/estimate?{query}")).await
}

/// `GET path` with the demo key: its status and JSON (or text as a JSON string).
async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
    let req = Request::get(path)
        .header("x-api-key", DEMO_KEY)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = || Value::String(String::from_utf8_lossy(&bytes).into_owned());
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| text()),
    )
}

fn wait_ms(v: &Value) -> u64 {
    v["predicted_wait_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_grows_with_the_queue_and_refuses_what_the_queue_would() {
    let mut cfg = im_app::config::ImConfig::default();
    cfg.jobs.enabled = false;
    cfg.limits.early_refusal_pct = Some(10);
    let built = app::build(cfg, Some(Simulate { time_scale: 0.2 }))
        .await
        .expect("build");
    let app = im_http_api::router(built.state.clone());
    let chat =
        json!({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64});
    // The model loads, and its service time is learned.
    for _ in 0..3 {
        assert_eq!(
            common::post_json(&app, "/v1/chat/completions", &chat)
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, idle) = estimate(&app, &format!("kind=txt2txt&model={LLM}")).await;
    assert_eq!(status, StatusCode::OK, "{idle}");
    let idle = wait_ms(&idle);

    // Forty chats queue (the model runs a few at a time): a new one would wait behind them.
    let running: Vec<_> = (0..40)
        .map(|_| {
            let (app, chat) = (app.clone(), chat.clone());
            tokio::spawn(async move {
                common::post_json(&app, "/v1/chat/completions", &chat)
                    .await
                    .0
            })
        })
        .collect();
    im_testkit::eventually("the chats queue", Duration::from_secs(10), || {
        let app = app.clone();
        async move {
            let (_, v) = estimate(&app, &format!("kind=txt2txt&model={LLM}")).await;
            wait_ms(&v) > idle
        }
    })
    .await;
    // `/queue-status` says the same per group.
    let (_, queues) = get(&app, "/queue-status").await;
    let group = queues["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["model"] == LLM))
        .unwrap_or_else(|| panic!("{queues}"));
    assert!(group["predicted_wait_ms"].as_u64() > Some(0), "{group}");
    // A chat whose deadline the queue would miss is refused at once, with when to come back.
    let mut hurried = chat.clone();
    hurried["deadline_ms"] = json!(1);
    let (status, headers, body) = common::post_json(&app, "/v1/chat/completions", &hurried).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:?}");
    assert!(headers.contains_key("retry-after"));
    for r in running {
        assert_eq!(r.await.expect("chat"), StatusCode::OK);
    }
    // Refusals by reason, and the predictions measured against the starts (one in 32 sampled:
    // 44 chats admitted).
    let (_, metrics) = get(&app, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.lines().any(|l| l.starts_with("im_rejections_total")
            && l.contains("reason=\"would_expire\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("im_prediction_error_seconds_count{kind=\"txt2txt\"}")),
        "{metrics}"
    );

    let (status, v) = estimate(&app, "kind=painting&model=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = estimate(&app, "kind=txt2txt&model=no-such-model").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = estimate(&app, &format!("kind=txt2img&model={LLM}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = estimate(&app, "kind=txt2txt").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}
