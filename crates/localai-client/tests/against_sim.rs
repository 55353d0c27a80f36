//! The client against the simulator (and a few hand-made broken servers) on 127.0.0.1:0.

use std::time::Duration;

use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt;
use localai_client::*;
use localai_sim::{Faults, SimConfig, SimServer, StreamErrorDialect};
use serde_json::json;

const LLM: &str = "llama-3.2-3b-instruct";
const VLM: &str = "llava-1.6-mistral-7b";
const SD: &str = "stablediffusion";

async fn sim(f: impl FnOnce(&mut SimConfig)) -> (SimServer, LocalAiClient) {
    let mut cfg = SimConfig {
        time_scale: 0.001,
        ..SimConfig::default()
    };
    f(&mut cfg);
    let s = SimServer::start(cfg).await.expect("sim starts");
    let c = LocalAiClient::new(ClientConfig::new(s.url())).expect("client");
    (s, c)
}

fn chat_req(model: &str, content: serde_json::Value) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            localai_client::Message::try_from(json!({"role": "user", "content": content}))
                .expect("a message"),
        ],
        temperature: Some(0.2),
        max_tokens: Some(8),
        extra: Default::default(),
    }
}

#[tokio::test]
async fn chat_plain_and_streaming() {
    let (_s, c) = sim(|_| {}).await;
    let r = c
        .chat(&chat_req(LLM, json!("hello there")))
        .await
        .expect("chat");
    assert!(r.content().contains("hello there"), "{}", r.content());
    assert_eq!(r.raw["object"], "chat.completion");
    let mut stream = c
        .chat_stream(&chat_req(LLM, json!("stream me")))
        .await
        .expect("stream");
    let mut text = String::new();
    let mut finished = false;
    while let Some(item) = stream.next().await {
        let chunk = item.expect("chunk");
        text.push_str(&chunk.delta);
        finished |= chunk.finish_reason.as_deref() == Some("stop");
    }
    assert!(finished && text.contains("stream me"), "{text}");
}

#[tokio::test]
async fn stream_errors_in_both_dialects_become_error_items() {
    for dialect in [StreamErrorDialect::V4, StreamErrorDialect::V3] {
        let (_s, c) = sim(|c| {
            c.faults.stream_error = 1.0;
            c.stream_error_dialect = dialect;
        })
        .await;
        let mut stream = c
            .chat_stream(&chat_req(LLM, json!("x")))
            .await
            .expect("head is 200");
        let mut err = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                err = Some(e);
            }
        }
        let e = err.expect("an error item");
        assert!(matches!(e, ClientError::Stream(_)), "{dialect:?}: {e:?}");
        assert!(e.to_string().contains("simulated failure"));
    }
}

#[tokio::test]
async fn raw_base64_images_reach_the_vision_model() {
    let (_s, c) = sim(|_| {}).await;
    let png = B64.encode(localai_sim::image::png(4, 4, 1));
    let content =
        json!([{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": png}]);
    let r = c.chat(&chat_req(VLM, content)).await.expect("vision chat");
    assert!(
        r.content().starts_with("I see an image"),
        "the image was dropped: {}",
        r.content()
    );
}

#[tokio::test]
async fn txt2img_and_img2img_return_pngs_of_the_requested_size() {
    let (s, c) = sim(|_| {}).await;
    let req = ImageRequest {
        model: SD.into(),
        prompt: "a red fox".into(),
        negative_prompt: Some("blurry".into()),
        width: 64,
        height: 48,
        steps: Some(4),
        n: Some(2),
        ..ImageRequest::default()
    };
    let r = c.images(&req).await.expect("txt2img");
    assert_eq!(r.images.len(), 2);
    let png = B64.decode(&r.images[0]).expect("base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().expect("a valid PNG");
    assert_eq!((reader.info().width, reader.info().height), (64, 48));
    let file = format!("data:image/png;base64,{}", r.images[0]);
    let edit = ImageRequest {
        file: Some(file.into()),
        n: None,
        ..req
    };
    assert_eq!(c.images(&edit).await.expect("img2img").images.len(), 1);
    assert_eq!(s.state().stats().requests[SD], 2);
}

#[tokio::test]
async fn discovery_and_lifecycle() {
    let (_s, c) = sim(|_| {}).await;
    c.ready().await.expect("ready");
    let models = c.models().await.expect("models");
    assert_eq!(
        models,
        vec![
            LLM.to_owned(),
            VLM.to_owned(),
            SD.to_owned(),
            "bge-small-en-v1.5".to_owned(),
            "jina-reranker-v1-base-en".to_owned(),
            "whisper-1".to_owned(),
            "tts-1".to_owned()
        ]
    );
    assert!(c.loaded_models().await.expect("system").is_empty());
    c.load(LLM).await.expect("load");
    assert_eq!(
        c.loaded_models().await.expect("system"),
        vec![LLM.to_owned()]
    );
    assert!(c.unload(LLM).await.expect("unload"));
    assert!(!c.unload(LLM).await.expect("second unload is a 404"));
}

#[tokio::test]
async fn every_fault_class_is_classified() {
    type Case = (fn(&mut Faults), ErrorClass, &'static str);
    let cases: Vec<Case> = vec![
        (|f| f.error_500 = 1.0, ErrorClass::Transient, "status_500"),
        (|f| f.error_503 = 1.0, ErrorClass::Transient, "status_503"),
        (
            |f| f.drop_connection = 1.0,
            ErrorClass::Transient,
            "dropped",
        ),
    ];
    for (set, class, label) in cases {
        let (_s, c) = sim(|c| set(&mut c.faults)).await;
        let e = c.chat(&chat_req(LLM, json!("x"))).await.expect_err("fault");
        assert_eq!((e.class(), e.label().as_str()), (class, label), "{e:?}");
        if label == "status_503" {
            assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        }
        let img = ImageRequest {
            model: SD.into(),
            prompt: "p".into(),
            width: 8,
            height: 8,
            ..Default::default()
        };
        assert_eq!(c.images(&img).await.expect_err("fault").class(), class);
    }
    let (_s, c) = sim(|c| {
        c.faults.slow = 1.0;
        c.faults.slow_ms = 1_000_000;
    })
    .await;
    let mut cfg = c.config().clone();
    cfg.chat_total = Duration::from_millis(50);
    let c = LocalAiClient::new(cfg).expect("client");
    let e = c
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("timeout");
    // Sent, then timed out: the upstream may still be running it, so it is not retried.
    assert!(
        matches!(e, ClientError::Timeout { .. }) && e.class() == ErrorClass::TimedOut,
        "{e:?}"
    );
}

#[tokio::test]
async fn permanent_errors_carry_the_upstream_message() {
    let (_s, c) = sim(|_| {}).await;
    let e = c
        .chat(&chat_req("nope", json!("x")))
        .await
        .expect_err("unknown model");
    assert_eq!((e.status(), e.class()), (Some(404), ErrorClass::Permanent));
    assert!(e.to_string().contains("not found"));
    let bad = ImageRequest {
        model: LLM.into(),
        prompt: "p".into(),
        width: 8,
        height: 8,
        ..Default::default()
    };
    assert_eq!(
        c.images(&bad).await.expect_err("wrong kind").status(),
        Some(400)
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    let c = LocalAiClient::new(ClientConfig::new(url)).expect("client");
    let e = c
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("refused");
    assert!(
        matches!(e, ClientError::Connect(_)) && e.is_transient(),
        "{e:?}"
    );
}

async fn broken(app: axum::Router) -> LocalAiClient {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    LocalAiClient::new(ClientConfig::new(url)).expect("client")
}

#[tokio::test]
async fn malformed_upstream_bodies_are_protocol_errors_never_panics() {
    use axum::http::{StatusCode, header};
    use axum::routing::post;
    let json_ct = [(header::CONTENT_TYPE, "application/json")];
    let c = broken(axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move { (json_ct, "{\"choices\": [") }),
    ))
    .await;
    assert_eq!(
        c.chat(&chat_req(LLM, json!("x")))
            .await
            .expect_err("truncated")
            .class(),
        ErrorClass::Protocol
    );

    let c = broken(axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async { axum::response::Html("<html>ok?</html>") }),
    ))
    .await;
    assert_eq!(
        c.chat(&chat_req(LLM, json!("x")))
            .await
            .expect_err("html 200")
            .class(),
        ErrorClass::Protocol
    );

    let c = broken(axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            (
                StatusCode::BAD_GATEWAY,
                axum::response::Html("<html>502 Bad Gateway</html>"),
            )
                .into_response()
        }),
    ))
    .await;
    let e = c
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("html 502");
    assert_eq!((e.status(), e.class()), (Some(502), ErrorClass::Transient));
    assert!(e.to_string().contains("non-JSON error page"));

    let sse_ct = [(header::CONTENT_TYPE, "text/event-stream")];
    let c = broken(axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            (
                sse_ct,
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            )
        }),
    ))
    .await;
    let mut s = c
        .chat_stream(&chat_req(LLM, json!("x")))
        .await
        .expect("head");
    assert!(s.next().await.expect("one chunk").is_ok());
    let e = s.next().await.expect("then an error").expect_err("cut");
    assert_eq!(e.class(), ErrorClass::Protocol);
    assert!(s.next().await.is_none());
}

/// One chat answer, status 200, as `body` (JSON).
async fn answering(body: &'static str) -> LocalAiClient {
    use axum::http::header;
    use axum::routing::post;
    let json_ct = [(header::CONTENT_TYPE, "application/json")];
    broken(axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move { (json_ct, body) }),
    ))
    .await
}

#[tokio::test]
async fn chat_answers_are_taken_by_their_shape_and_their_text_read_when_asked() {
    // Tool calls: no text, still an answer, passed on as it came.
    let tools = r#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"weather","arguments":"{}"}}]}}]}"#;
    let r = answering(tools)
        .await
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect("an answer of tool calls");
    assert_eq!(
        (r.content(), r.body.as_ref()),
        (String::new(), tools.as_bytes())
    );

    // LocalAI v3.5-v4.0: a failure inside the model, answered 200 with its text.
    let e = answering(r#"{"choices":[{"message":{"content":"Internal error: out of memory"}}]}"#)
        .await
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("an internal error");
    assert!(
        matches!(&e, ClientError::Stream(m) if m == "out of memory"),
        "{e:?}"
    );
    // The same words elsewhere are text.
    let r = answering(r#"{"choices":[{"message":{"content":"It said: Internal error: none"}}]}"#)
        .await
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect("text that quotes the marker");
    assert_eq!(r.content(), "It said: Internal error: none");

    // JSON that is no chat completion.
    let e = answering(r#"{"object":"list","data":[]}"#)
        .await
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("no choices");
    assert_eq!(e.class(), ErrorClass::Protocol);
}

#[test]
fn retry_after_parses() {
    assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
}

#[tokio::test]
async fn upstream_bodies_over_the_limit_are_protocol_errors() {
    // Issue 11 (low): no size limit on upstream bodies.
    let (_s, c) = sim(|_| {}).await;
    let mut cfg = c.config().clone();
    cfg.max_body = 64;
    let c = LocalAiClient::new(cfg).expect("client");
    let img = ImageRequest {
        model: SD.into(),
        prompt: "p".into(),
        width: 64,
        height: 64,
        ..Default::default()
    };
    let e = c.images(&img).await.expect_err("too big");
    assert_eq!(e.class(), ErrorClass::Protocol, "{e}");
    assert!(e.to_string().contains("over the limit"), "{e}");
}

/// A fencing gate that refuses every call with `status`, having seen epoch 9.
async fn gate_refusing(
    status: u16,
    raised: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) -> LocalAiClient {
    use axum::http::StatusCode;
    use axum::routing::post;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            let status = StatusCode::from_u16(status).expect("status");
            (
                status,
                [("x-im-fence-highest", "9")],
                axum::Json(json!({"error": {"message": "fenced"}})),
            )
                .into_response()
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    let mut cfg = ClientConfig::new(url);
    cfg.fence_hook = Some(FenceHook::new(move |highest| {
        raised.lock().expect("lock").push(highest)
    }));
    LocalAiClient::new(cfg).expect("client")
}

#[tokio::test]
async fn only_a_stale_token_asks_for_a_higher_epoch() {
    let raised = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stale = gate_refusing(409, raised.clone()).await;
    let e = stale
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("409");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(
        *raised.lock().expect("lock"),
        [9],
        "the gate's highest epoch is reported"
    );
    // An unsigned token is refused at any epoch: raising ours would change nothing.
    let unsigned = gate_refusing(401, raised.clone()).await;
    let e = unsigned
        .chat(&chat_req(LLM, json!("x")))
        .await
        .expect_err("401");
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    assert_eq!(
        *raised.lock().expect("lock"),
        [9],
        "no raise asked for a 401"
    );
}
