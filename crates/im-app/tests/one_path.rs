//! One path per request (issue 28): a job standing for a route is answered exactly as that route
//! over HTTP: the same status, content type and body, ids and timings aside.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::ImConfig;
use im_app::{self as app, DEMO_KEY, Simulate};
use im_service::Route;
use serde_json::{Value, json};
use tower::ServiceExt;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";

fn png_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 2))
}

/// A valid body for every route a job may stand for.
fn body_for(route: Route) -> Value {
    let chat = json!([{"role": "user", "content": "hello"}]);
    match route {
        Route::Txt2Txt | Route::ChatCompletions => {
            json!({"model": LLM, "messages": chat, "temperature": 0})
        }
        Route::Img2Txt => json!({"model": VLM, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", png_b64())}}]}]}),
        Route::Txt2Img => {
            json!({"model": SD, "prompt": "fox", "width": 8, "height": 8, "steps": 1, "seed": 7})
        }
        Route::Img2Img => {
            json!({"model": SD, "file": png_b64(), "prompt": "fox", "width": 8, "height": 8, "steps": 1, "seed": 7})
        }
        Route::Completions => json!({"model": LLM, "prompt": "once upon", "max_tokens": 4}),
        Route::Embeddings => json!({"model": "bge-small-en-v1.5", "input": ["a", "b"]}),
        Route::ImageGenerations => {
            json!({"model": SD, "prompt": "fox", "size": "8x8", "step": 1, "seed": 7})
        }
        Route::Rerank => {
            json!({"model": "jina-reranker-v1-base-en", "query": "q", "documents": ["a", "b c"]})
        }
        Route::Speech => json!({"model": "tts-1", "input": "hello there"}),
        Route::Infer => {
            json!({"model": LLM, "prompt": "once upon", "params": {"max_new_tokens": 4}})
        }
        Route::Task => json!({"text": "im schedules requests.", "model": "summarizer"}),
        Route::InferStream => unreachable!("not a job"),
    }
}

/// What varies between two runs of the same request: ids, clocks, timings.
const VARYING: [&str; 10] = [
    "id",
    "request_id",
    "created",
    "queue_wait_ms",
    "processing_ms",
    "total_ms",
    "latency_ms",
    "timestamp",
    "system_fingerprint",
    "timings",
];

fn without_varying(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for k in VARYING {
                o.remove(k);
            }
            o.values_mut().for_each(without_varying);
        }
        Value::Array(a) => a.iter_mut().for_each(without_varying),
        _ => {}
    }
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ct, bytes.to_vec())
}

/// The answer as something to compare: JSON without what varies, else the bytes.
fn comparable(content_type: &str, body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) if content_type.starts_with("application/json") => {
            without_varying(&mut v);
            v
        }
        _ => json!({"bytes": body.len(), "content_type": content_type}),
    }
}

async fn as_job(app: &Router, route: Route, body: &Value) -> (u16, String, Vec<u8>) {
    let (status, _, submitted) = send(
        app,
        "POST",
        "/v1/jobs",
        Some(&json!({"route": route.path(), "body": body})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&submitted)
    );
    let id = serde_json::from_slice::<Value>(&submitted).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("/v1/jobs/{id}");
    let job = im_testkit::until("the job to end", Duration::from_secs(20), || async {
        let (_, _, b) = send(app, "GET", &path, None).await;
        let job: Value = serde_json::from_slice(&b).expect("json");
        ["succeeded", "failed"]
            .contains(&job["status"].as_str().unwrap_or(""))
            .then_some(job)
    })
    .await;
    match job["status"].as_str() {
        Some("succeeded") => {
            let (status, ct, b) = send(app, "GET", &format!("/v1/jobs/{id}/result"), None).await;
            assert_eq!(status, StatusCode::OK);
            (200, ct, b)
        }
        Some("failed") => {
            let status = job["error"]["status"].as_u64().unwrap_or(0) as u16;
            let mut e = job["error"].clone();
            if let Some(o) = e.as_object_mut() {
                o.remove("status");
            }
            (
                status,
                "application/json".into(),
                json!({"error": e}).to_string().into_bytes(),
            )
        }
        _ => panic!("{route:?}: the job did not end: {job}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_route_answers_as_a_job_exactly_as_over_http() {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.0 }))
        .await
        .expect("build");
    let app = im_http_api::router(built.state.clone());
    let mut compared = 0;
    for route in im_http_api::routes::job_routes() {
        let body = body_for(route);
        let (status, ct, http_body) = send(&app, "POST", route.path(), Some(&body)).await;
        let (job_status, job_ct, job_body) = as_job(&app, route, &body).await;
        assert_eq!(status.as_u16(), job_status, "{route:?}: the same status");
        assert_eq!(
            status,
            StatusCode::OK,
            "{route:?}: {}",
            String::from_utf8_lossy(&http_body)
        );
        assert_eq!(
            ct.split(';').next(),
            job_ct.split(';').next(),
            "{route:?}: the same content type"
        );
        assert_eq!(
            comparable(&ct, &http_body),
            comparable(&job_ct, &job_body),
            "{route:?}: the same answer"
        );
        compared += 1;
    }
    assert_eq!(compared, im_http_api::routes::job_routes().count());
    // A refusal too: the same status and error as over HTTP.
    let bad = json!({"model": LLM, "messages": []});
    let (status, ct, http_body) = send(&app, "POST", "/txt2txt", Some(&bad)).await;
    let (job_status, job_ct, job_body) = as_job(&app, Route::Txt2Txt, &bad).await;
    assert_eq!((status.as_u16(), job_status), (400, 400));
    assert_eq!(comparable(&ct, &http_body), comparable(&job_ct, &job_body));
}
