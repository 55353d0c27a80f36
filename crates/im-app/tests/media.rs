//! The newer LocalAI routes against the simulator: rerank, speech (`/v1/audio/speech`, `/tts`),
//! transcription and image edits (multipart), each on its own kind's queue, with field-level
//! errors for bad input.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use im_app::config::ImConfig;
use im_app::{self as app, Built, DEMO_KEY, Simulate};
use serde_json::{Value, json};
use tower::ServiceExt;

const RERANK: &str = "jina-reranker-v1-base-en";
const TTS: &str = "tts-1";
const STT: &str = "whisper-1";
const SD: &str = "stablediffusion";
const LLM: &str = "llama-3.2-3b-instruct";

async fn app() -> (Router, Built) {
    let mut cfg = ImConfig::default();
    cfg.retry.base_ms = 1;
    cfg.retry.cap_ms = 5;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    (im_http_api::router(built.state.clone()), built)
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// One part of a multipart form: a text field, or a file (name, content type, bytes).
enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a str, &'a str, &'a [u8]),
}

fn post_form(path: &str, parts: &[Part<'_>]) -> Request<Body> {
    const B: &str = "im-test-boundary-7d1";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{B}\r\n").as_bytes());
        match p {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, ct, file_name, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: {ct}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
    Request::post(path)
        .header("x-api-key", DEMO_KEY)
        .header("content-type", format!("multipart/form-data; boundary={B}"))
        .body(Body::from(body))
        .expect("request")
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, bytes)
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
}

/// A refusal naming `param`, with the status asked for.
async fn refused(app: &Router, req: Request<Body>, status: StatusCode, param: &str) {
    let (s, _, b) = send(app, req).await;
    let v = json_of(&b);
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["param"], param, "{v}");
}

async fn queued_kinds(built: &Built) -> Vec<String> {
    let st = built.engine.status().await.expect("running");
    st.groups
        .iter()
        .map(|g| g.kind.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn rerank_orders_documents_on_the_rerank_queue() {
    let (app, built) = app().await;
    for path in ["/v1/rerank", "/rerank"] {
        let body = json!({"model": RERANK, "query": "red fox",
            "documents": ["a blue whale", "the red fox jumps", "a fox"], "top_n": 2});
        let (s, h, b) = send(&app, post_json(path, &body)).await;
        let v = json_of(&b);
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 2, "top_n is honoured: {v}");
        assert_eq!(results[0]["index"], 1, "the best match first: {v}");
        assert!(h.contains_key("x-queue-wait-ms"));
    }
    assert!(queued_kinds(&built).await.contains(&"rerank".to_owned()));
    let bad = [
        (json!({"model": RERANK, "documents": ["a"]}), "query"),
        (
            json!({"model": RERANK, "query": "", "documents": ["a"]}),
            "query",
        ),
        (json!({"model": RERANK, "query": "q"}), "documents"),
        (
            json!({"model": RERANK, "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": RERANK, "query": "q", "documents": ["a", 5]}),
            "documents[1]",
        ),
        (
            json!({"model": RERANK, "query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": RERANK, "query": "q", "documents": ["a"], "top_n": "x"}),
            "top_n",
        ),
        (
            json!({"model": RERANK, "query": "q", "documents": ["a"], "rank_by": 1}),
            "rank_by",
        ),
        (json!({"query": "q", "documents": ["a"]}), "model"),
    ];
    for (body, param) in bad {
        refused(
            &app,
            post_json("/v1/rerank", &body),
            StatusCode::BAD_REQUEST,
            param,
        )
        .await;
    }
    let (s, _, b) = send(
        &app,
        post_json(
            "/v1/rerank",
            &json!({"model": LLM, "query": "q", "documents": ["a"]}),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a chat model does not rerank: {}",
        json_of(&b)
    );
}

#[tokio::test]
async fn speech_answers_audio_on_both_routes() {
    let (app, built) = app().await;
    for path in ["/v1/audio/speech", "/audio/speech", "/tts"] {
        let body = json!({"model": TTS, "input": "Hello from im.", "voice": "alloy"});
        let (s, h, b) = send(&app, post_json(path, &body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {}", json_of(&b));
        assert_eq!(h["content-type"], "audio/wav", "{path}");
        assert_eq!(&b[..4], b"RIFF", "{path}: a WAV file");
        let secs = localai_sim::audio::wav_seconds(&b).expect("a readable WAV");
        assert!(secs > 0.5, "{path}: the audio follows the text ({secs} s)");
        assert!(h.contains_key("x-processing-ms"), "{path}");
    }
    assert!(queued_kinds(&built).await.contains(&"tts".to_owned()));
    let long = "x".repeat(im_service::MAX_SPEECH_CHARS + 1);
    let bad = [
        (json!({"model": TTS}), "input"),
        (json!({"model": TTS, "input": ""}), "input"),
        (json!({"model": TTS, "input": 3}), "input"),
        (json!({"model": TTS, "input": long}), "input"),
        (json!({"model": TTS, "input": "hi", "pitch": 2}), "pitch"),
        (json!({"model": "", "input": "hi"}), "model"),
    ];
    for (body, param) in bad {
        refused(
            &app,
            post_json("/v1/audio/speech", &body),
            StatusCode::BAD_REQUEST,
            param,
        )
        .await;
    }
}

#[tokio::test]
async fn transcription_takes_a_multipart_upload() {
    let (app, built) = app().await;
    let audio = localai_sim::audio::wav(2_000, 1);
    for path in ["/v1/audio/transcriptions", "/audio/transcriptions"] {
        let req = post_form(
            path,
            &[
                Part::Text("model", STT),
                Part::Text("language", "en"),
                Part::File("file", "audio/wav", "hello.wav", &audio),
            ],
        );
        let (s, h, b) = send(&app, req).await;
        let v = json_of(&b);
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        assert!(
            v["text"].as_str().is_some_and(|t| t.contains("2.0 s")),
            "the upstream heard the whole file: {v}"
        );
        assert!(h.contains_key("x-request-id"));
    }
    // The format asked for is passed on, and so is the upstream's answer.
    let req = post_form(
        "/v1/audio/transcriptions",
        &[
            Part::Text("model", STT),
            Part::Text("response_format", "text"),
            Part::File("file", "audio/wav", "a.wav", &audio),
        ],
    );
    let (s, h, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    assert!(String::from_utf8_lossy(&b).starts_with("Simulated transcription"));
    assert!(queued_kinds(&built).await.contains(&"stt".to_owned()));

    let file = Part::File("file", "audio/wav", "a.wav", &audio);
    let path = "/v1/audio/transcriptions";
    let bad: [(Vec<Part<'_>>, &str); 6] = [
        (vec![Part::Text("model", STT)], "file"),
        (
            vec![
                Part::Text("model", STT),
                Part::File("file", "audio/wav", "a.wav", b""),
            ],
            "file",
        ),
        (
            vec![Part::File("file", "audio/wav", "a.wav", &audio)],
            "model",
        ),
        (
            vec![
                Part::Text("model", STT),
                Part::Text("response_format", "mp3"),
                Part::File("file", "audio/wav", "a.wav", &audio),
            ],
            "response_format",
        ),
        (
            vec![
                Part::Text("model", STT),
                Part::Text("temperature", "3"),
                Part::File("file", "audio/wav", "a.wav", &audio),
            ],
            "temperature",
        ),
        (
            vec![Part::Text("model", STT), Part::Text("beam", "5"), file],
            "beam",
        ),
    ];
    for (parts, param) in bad {
        refused(
            &app,
            post_form(path, &parts),
            StatusCode::BAD_REQUEST,
            param,
        )
        .await;
    }
    // Not a multipart body at all.
    refused(
        &app,
        post_json(path, &json!({"model": STT})),
        StatusCode::BAD_REQUEST,
        "body",
    )
    .await;
}

#[tokio::test]
async fn image_edits_take_a_multipart_image_and_queue_as_img2img() {
    let (app, built) = app().await;
    let png = localai_sim::image::png(16, 16, 3);
    for path in ["/v1/images/edits", "/images/edits"] {
        let req = post_form(
            path,
            &[
                Part::File("image", "image/png", "in.png", &png),
                Part::Text("prompt", "make it blue"),
                Part::Text("model", SD),
                Part::Text("size", "64x32"),
                Part::Text("step", "2"),
            ],
        );
        let (s, h, b) = send(&app, req).await;
        let v = json_of(&b);
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        assert_eq!(v["data"].as_array().map(Vec::len), Some(1), "{v}");
        assert!(v["data"][0]["b64_json"].is_string());
        assert!(h.contains_key("x-queue-wait-ms"));
    }
    assert!(queued_kinds(&built).await.contains(&"img2img".to_owned()));
    let path = "/v1/images/edits";
    let img = || Part::File("image", "image/png", "in.png", &png);
    let bad: [(Vec<Part<'_>>, &str); 6] = [
        (
            vec![Part::Text("prompt", "p"), Part::Text("model", SD)],
            "image",
        ),
        (vec![img(), Part::Text("model", SD)], "prompt"),
        (vec![img(), Part::Text("prompt", "p")], "model"),
        (
            vec![
                img(),
                Part::Text("prompt", "p"),
                Part::Text("model", SD),
                Part::Text("size", "60x60"),
            ],
            "size",
        ),
        (
            vec![
                img(),
                Part::Text("prompt", "p"),
                Part::Text("model", SD),
                Part::Text("n", "many"),
            ],
            "n",
        ),
        (
            vec![
                Part::File("image", "image/png", "in.png", b"not an image"),
                Part::Text("prompt", "p"),
                Part::Text("model", SD),
            ],
            "image",
        ),
    ];
    for (parts, param) in bad {
        refused(
            &app,
            post_form(path, &parts),
            StatusCode::BAD_REQUEST,
            param,
        )
        .await;
    }
    let with_mask = post_form(
        path,
        &[
            img(),
            Part::File("mask", "image/png", "m.png", &png),
            Part::Text("prompt", "p"),
            Part::Text("model", SD),
        ],
    );
    refused(&app, with_mask, StatusCode::BAD_REQUEST, "mask").await;
}

#[tokio::test]
async fn unknown_models_and_oversized_uploads_are_refused_by_field() {
    let (app, _built) = app().await;
    let unknown = [
        (
            "/v1/rerank",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
        ),
        ("/v1/audio/speech", json!({"model": "nope", "input": "hi"})),
        ("/tts", json!({"model": "nope", "input": "hi"})),
        ("/v1/embeddings", json!({"model": "nope", "input": "hi"})),
        ("/v1/completions", json!({"model": "nope", "prompt": "hi"})),
    ];
    for (path, body) in unknown {
        let (s, _, b) = send(&app, post_json(path, &body)).await;
        let v = json_of(&b);
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(v["error"]["type"], "unknown_model", "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("valid models")),
            "{path}: the message lists the valid ones: {v}"
        );
    }
    let audio = localai_sim::audio::wav(500, 2);
    let req = post_form(
        "/v1/audio/transcriptions",
        &[
            Part::Text("model", "nope"),
            Part::File("file", "audio/wav", "a.wav", &audio),
        ],
    );
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", json_of(&b));

    // Uploads over the body limit: 413, for a file and for a form.
    let mut cfg = ImConfig::default();
    cfg.http.body_limit_bytes = 64 * 1024;
    let built = app::build(cfg, Some(Simulate { time_scale: 0.001 }))
        .await
        .expect("build");
    let small = im_http_api::router(built.state.clone());
    let big = vec![7u8; 200 * 1024];
    for (path, parts) in [
        (
            "/v1/audio/transcriptions",
            vec![
                Part::Text("model", STT),
                Part::File("file", "audio/wav", "big.wav", &big),
            ],
        ),
        (
            "/v1/images/edits",
            vec![
                Part::File("image", "image/png", "big.png", &big),
                Part::Text("prompt", "p"),
                Part::Text("model", SD),
            ],
        ),
    ] {
        let (s, _, b) = send(&small, post_form(path, &parts)).await;
        let v = json_of(&b);
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {v}");
        assert_eq!(v["error"]["type"], "payload_too_large", "{path}: {v}");
    }
    let long_text = "x".repeat(100 * 1024);
    let (s, _, _) = send(
        &small,
        post_json(
            "/v1/audio/speech",
            &json!({"model": TTS, "input": long_text}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}
