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
    let req = Request::get(format!("/v1/queue/estimate?{query}"))
        .header("x-api-key", DEMO_KEY)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
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

    // Twenty chats queue (the model runs a few at a time): a new one would wait behind them.
    let running: Vec<_> = (0..20)
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
    for r in running {
        assert_eq!(r.await.expect("chat"), StatusCode::OK);
    }

    let (status, v) = estimate(&app, "kind=painting&model=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = estimate(&app, "kind=txt2txt&model=no-such-model").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = estimate(&app, &format!("kind=txt2img&model={LLM}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = estimate(&app, "kind=txt2txt").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}
