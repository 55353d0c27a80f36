//! Regression tests for the engine defects of issue 11, each against an upstream that shows it:
//! the simulator, or a small hand-made server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use im_engine::*;
use im_metrics::Metrics;
use inference_queue::{BreakerState, Config, Kind, ModelSpec};
use localai_client::{ChatRequest, ClientConfig, ImageRequest, LocalAiClient, Message};
use localai_sim::{SimConfig, SimServer};
use serde_json::json;

const LLM: &str = "llama-3.2-3b-instruct";
const SD: &str = "stablediffusion";

fn engine_for(url: &str, cfg: Config, client: impl FnOnce(&mut ClientConfig)) -> Engine {
    let mut cc = ClientConfig::new(url);
    client(&mut cc);
    let backend = LocalAiBackend::new(vec![LocalAiClient::new(cc).expect("client")]);
    Engine::start(cfg, Arc::new(backend), Metrics::new()).expect("engine")
}

fn config(models: Vec<ModelSpec>) -> Config {
    let mut c = Config {
        models,
        ..Config::default()
    };
    c.retry.base = Duration::from_millis(5);
    c.retry.cap = Duration::from_millis(20);
    c
}

fn chat_job(id: &str, model: &str, text: &str, stream: bool) -> Job {
    let req = ChatRequest {
        model: model.into(),
        messages: vec![Message::user(text)],
        temperature: None,
        max_tokens: Some(8),
        extra: Default::default(),
    };
    Job {
        request_id: id.into(),
        deadline: None,
        payload: Payload::Chat {
            req,
            stream,
            kind: Kind::Txt2Txt,
        },
        owner: None,
        weight: 1,
        class: Default::default(),
        progress: None,
        prefix: None,
    }
}

/// A loopback server for `app`; its URL.
async fn upstream(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

fn sse(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn chunk(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "model": LLM, "choices": [{"index": 0, "delta": {"content": text}}]})
    )
}

async fn until_idle(engine: &Engine, within: Duration) {
    im_testkit::eventually("the engine idle", within, || async {
        let s = engine.status().await.expect("running");
        s.in_flight == 0 && s.waiting == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaving_during_a_load_keeps_the_slot_until_the_upstream_finished() {
    // Issue 11.3: a client that gave up during a diffusion model's load freed the slot at once;
    // the next chat request put a second model on the GPU (overcommit 1, peak resident 2).
    let sim = SimServer::start(SimConfig {
        time_scale: 0.02, // the image model loads in 240 ms
        lru_wait_ms: 0,   // a busy resident model is overcommitted at once, as a GPU would
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let engine = engine_for(
        &sim.url(),
        config(vec![
            ModelSpec::new(LLM, &[Kind::Txt2Txt], 4),
            ModelSpec::new(SD, &[Kind::Txt2Img], 1),
        ]),
        |_| {},
    );
    let image = Job {
        request_id: "img".into(),
        deadline: None,
        payload: Payload::Images(ImageRequest {
            model: SD.into(),
            prompt: "a fox".into(),
            width: 8,
            height: 8,
            steps: Some(1),
            ..ImageRequest::default()
        }),
        owner: None,
        weight: 1,
        class: Default::default(),
        progress: None,
        prefix: None,
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(60), engine.submit(image)).await;
    assert!(gave_up.is_err(), "the caller left during the load");
    let chat = engine
        .submit(chat_job("c", LLM, "hi", false))
        .await
        .expect("the chat runs after the image attempt ended");
    assert_eq!(chat.meta.attempts, 1);
    let stats = sim.state().stats();
    assert_eq!(
        (stats.overcommits, stats.peak_resident_models),
        (0, 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_frees_its_slot_after_the_idle_limit_with_or_without_its_caller() {
    // Issue 11.4: a stalled upstream stream held its slot forever, even after the client left.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(chunk("Hel"))]);
            let stall = futures_util::stream::pending();
            let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(first, stall));
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }),
    );
    let url = upstream(app).await;
    let engine = engine_for(
        &url,
        config(vec![ModelSpec::new(LLM, &[Kind::Txt2Txt], 1)]),
        |c| c.stream_idle = Duration::from_millis(200),
    );
    // A caller that reads: it gets the chunk, then an error item, and the slot is freed.
    let done = engine
        .submit(chat_job("a", LLM, "hi", true))
        .await
        .expect("started");
    let Output::Stream(mut rx) = done.output else {
        panic!("a stream")
    };
    assert!(rx.recv().await.expect("first").is_ok());
    let err = rx
        .recv()
        .await
        .expect("an error item")
        .expect_err("stalled");
    assert!(err.to_string().contains("stream idle"), "{err}");
    until_idle(&engine, Duration::from_secs(10)).await;
    // A caller that leaves after the first chunk: the slot is freed by the same limit.
    let done = engine
        .submit(chat_job("b", LLM, "hi", true))
        .await
        .expect("started");
    drop(done);
    until_idle(&engine, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_as_a_streams_first_event_is_retried_and_counts_against_the_breaker() {
    // Issue 11.12: it was classed permanent (though nothing reached the caller) and it reset the
    // breaker to closed, so /ready stayed green while every stream failed.
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/v1/chat/completions",
        post({
            let calls = calls.clone();
            move || async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    sse(
                        "data: {\"error\":{\"code\":500,\"message\":\"backend crashed\"}}\n\n"
                            .into(),
                    )
                } else {
                    sse(format!("{}data: [DONE]\n\n", chunk("ok")))
                }
            }
        }),
    );
    let url = upstream(app).await;
    let engine = engine_for(
        &url,
        config(vec![ModelSpec::new(LLM, &[Kind::Txt2Txt], 1)]),
        |_| {},
    );
    let done = engine
        .submit(chat_job("a", LLM, "hi", true))
        .await
        .expect("retried, then streamed");
    assert_eq!(done.meta.attempts, 2);

    // Every stream fails at its first event: the breaker opens.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async { sse("data: {\"error\":{\"message\":\"down\"}}\n\n".into()) }),
    );
    let url = upstream(app).await;
    let mut cfg = config(vec![ModelSpec::new(LLM, &[Kind::Txt2Txt], 1)]);
    cfg.retry.max_retries = 0;
    cfg.breaker.failure_threshold = 2;
    let engine = engine_for(&url, cfg, |_| {});
    for i in 0..2 {
        let e = engine
            .submit(chat_job(&format!("f{i}"), LLM, "hi", true))
            .await
            .expect_err("fails");
        assert_eq!(e.error_type(), "upstream_unavailable");
    }
    let status = engine.status().await.expect("running");
    assert!(
        matches!(status.lanes[0].breaker, BreakerState::Open { .. }),
        "{:?}",
        status.lanes[0].breaker
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_after_a_retry_keeps_the_upstream_error() {
    // Issue 11 (low): it reported "never dispatched" and lost the error it had.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|body: axum::body::Bytes| async move {
            let text = String::from_utf8_lossy(&body).into_owned();
            if text.contains("fail") {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": {"code": 503, "message": "capacity full"}})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
                return r;
            }
            // A slow upstream is under test: it holds the only slot past the retry's deadline.
            tokio::time::sleep(Duration::from_millis(600)).await;
            axum::Json(json!({"model": LLM, "choices": [{"message": {"content": "slow"}}]}))
                .into_response()
        }),
    );
    let url = upstream(app).await;
    let mut cfg = config(vec![ModelSpec::new(LLM, &[Kind::Txt2Txt], 1)]);
    cfg.retry.base = Duration::from_millis(50);
    cfg.retry.cap = Duration::from_millis(50);
    cfg.retry.jitter = 0.0;
    let engine = engine_for(&url, cfg, |_| {});
    // The failing request runs first and backs off; meanwhile a slow one takes the only slot,
    // so the retry waits in the queue until its deadline passes.
    let mut failing = chat_job("f", LLM, "fail", false);
    failing.deadline = Some(Duration::from_millis(300));
    let f = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(failing).await })
    };
    im_testkit::eventually(
        "the failing request tried",
        Duration::from_secs(10),
        || async {
            engine
                .status()
                .await
                .is_some_and(|s| s.counters.dispatched >= 1)
        },
    )
    .await;
    let s = {
        let e = engine.clone();
        tokio::spawn(async move { e.submit(chat_job("s", LLM, "slow", false)).await })
    };
    let err = f.await.expect("join").expect_err("expired");
    match &err {
        EngineError::DeadlineExceeded {
            attempts,
            last_error,
            ..
        } => {
            assert_eq!(*attempts, 1);
            assert!(
                last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("capacity full"),
                "{err}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("capacity full"), "{err}");
    s.await.expect("join").expect("the slow one answers");
}
