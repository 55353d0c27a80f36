//! The seeds' second dialect: `POST /v1/infer` and `POST /v1/infer/stream` (`{model, prompt,
//! params}`), a text completion on the txt2txt queue, and `GET /`, what this API is and where its
//! documentation lives. A thin frontend: the body becomes the service's completion call.

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use im_engine::{Completion, Output};
use im_service::{Call, Caller, CompletionInput, ErrorType, ServiceError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::error::{HttpError, QueuedErrors};
use crate::seed::body;
use crate::state::{AppState, Arrived, figure_headers};
use crate::types;

/// The most stop sequences a request may give.
pub const MAX_STOP: usize = 4;

/// `POST /v1/infer`, `POST /v1/infer/stream`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// A model serving txt2txt.
    #[schema(min_length = 1)]
    pub model: String,
    /// The text to continue.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Generation parameters.
    #[serde(default)]
    pub params: Option<InferParams>,
}

/// Generation parameters of `/v1/infer`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferParams {
    /// Tokens to generate, 1 to 4096.
    #[schema(minimum = 1, maximum = 4096)]
    pub max_new_tokens: Option<u32>,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0.0 to 1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Up to four stop sequences.
    #[schema(max_items = 4)]
    pub stop: Option<Vec<String>>,
    /// Seed.
    pub seed: Option<i64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// The answer of `/v1/infer`.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct InferResponse {
    /// The request id (also `X-Request-Id`).
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The generated text.
    pub text: String,
    /// Why generation stopped (`stop`, `length`), as the upstream said.
    pub finish_reason: Option<String>,
    /// Token counts, as the upstream reported them.
    #[schema(value_type = Object)]
    pub usage: Value,
    /// Time spent waiting, upstream and in all.
    pub timings: Timings,
}

/// Where a request's time went, in milliseconds.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct Timings {
    /// Waiting in im's queue.
    pub queue_wait_ms: f64,
    /// At the upstream (for a stream: until its first chunk).
    pub processing_ms: f64,
    /// From arrival to the answer (for a stream: to its last event).
    pub total_ms: f64,
}

/// The call of an infer body, checked field by field.
fn infer_call(
    b: &Bytes,
    stream: bool,
    limits: &im_service::InputLimits,
) -> Result<(Call, String), ServiceError> {
    let r: InferRequest = types::parse(b)?;
    let p = r.params.unwrap_or_default();
    if p.max_new_tokens.is_some_and(|n| !(1..=4096).contains(&n)) {
        return Err(ServiceError::invalid(
            "params.max_new_tokens",
            "must be between 1 and 4096",
        ));
    }
    if p.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ServiceError::invalid(
            "params.top_p",
            "must be between 0.0 and 1.0",
        ));
    }
    if p.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ServiceError::invalid(
            "params.temperature",
            "must be between 0.0 and 2.0",
        ));
    }
    if p.stop.as_ref().is_some_and(|s| s.len() > MAX_STOP) {
        return Err(ServiceError::invalid(
            "params.stop",
            format!("at most {MAX_STOP} stop sequences"),
        ));
    }
    if p.deadline_ms == Some(0) {
        return Err(ServiceError::invalid(
            "params.deadline_ms",
            "must be at least 1 (milliseconds)",
        ));
    }
    let mut extra = Map::new();
    if let Some(t) = p.top_p {
        extra.insert("top_p".into(), t.into());
    }
    if let Some(s) = p.stop {
        extra.insert("stop".into(), s.into());
    }
    if let Some(s) = p.seed {
        extra.insert("seed".into(), s.into());
    }
    let model = r.model.clone();
    let call = Call::completion(
        CompletionInput {
            model: r.model,
            prompt: Value::String(r.prompt),
            temperature: p.temperature,
            max_tokens: p.max_new_tokens,
            stream,
            deadline_ms: p.deadline_ms,
            extra,
            ..CompletionInput::default()
        },
        limits,
    )
    .map_err(|mut e| {
        if e.param.as_deref() == Some("max_tokens") {
            e.param = Some("params.max_new_tokens".into());
        }
        e
    })?;
    Ok((call, model))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A text completion on the txt2txt queue, answered as `{id, model, text, finish_reason, usage,
/// timings}`.
#[utoipa::path(post, path = "/v1/infer", tag = "infer", request_body = InferRequest,
    responses(
        (status = 200, description = "The generated text with usage and timings", body = InferResponse),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn infer(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let (call, model) = infer_call(
        &body(b, st.service.body_limit())?,
        false,
        st.service.limits(),
    )?;
    let done = st.service.run(call, &caller).await?;
    let raw = match &done.output {
        Output::Json(j) => &j.raw,
        _ => {
            return Err(HttpError::new(
                ErrorType::Internal,
                "expected a completion from the upstream",
            ));
        }
    };
    let choice = &raw["choices"][0];
    let answer = InferResponse {
        id: caller.request_id.clone(),
        model: raw["model"].as_str().map_or(model, str::to_owned),
        text: choice["text"].as_str().unwrap_or_default().to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        usage: raw.get("usage").cloned().unwrap_or(Value::Null),
        timings: Timings {
            queue_wait_ms: ms(done.meta.queue_wait),
            processing_ms: ms(done.meta.processing),
            total_ms: ms(arrived.0.elapsed()),
        },
    };
    let mut resp = axum::Json(answer).into_response();
    figure_headers(&st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

/// The text of a completion chunk (`choices[0].text`, or a chat delta's content).
fn chunk_text(raw: &Value) -> &str {
    let c = &raw["choices"][0];
    c["text"]
        .as_str()
        .or_else(|| c["delta"]["content"].as_str())
        .unwrap_or_default()
}

/// The same completion as server-sent events: `token` events (`{"text"}`), then one `done`
/// event (`{id, model, finish_reason, usage: {completion_tokens}, timings}`), or an `error`
/// event in the error table's shape when the stream fails.
#[utoipa::path(post, path = "/v1/infer/stream", tag = "infer", request_body = InferRequest,
    responses(
        (status = 200, description = "SSE: `token` events `{\"text\"}`, then `done` `{id, model, finish_reason, usage, timings}`; `error` on failure", content_type = "text/event-stream", body = String),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn infer_stream(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let (call, model) = infer_call(
        &body(b, st.service.body_limit())?,
        true,
        st.service.limits(),
    )?;
    let done = st.service.run(call, &caller).await?;
    Ok(token_events(&st, done, arrived, caller.request_id, model))
}

struct Progress {
    rx: im_engine::ChunkReceiver,
    tokens: u64,
    finish: Option<String>,
    ended: bool,
}

fn token_events(
    st: &AppState,
    done: Completion,
    arrived: Arrived,
    id: String,
    model: String,
) -> Response {
    let mut headers = axum::http::HeaderMap::new();
    figure_headers(st, &mut headers, &done, arrived);
    let (queue_wait, processing) = (done.meta.queue_wait, done.meta.processing);
    let Output::Stream(rx) = done.output else {
        return HttpError::new(ErrorType::Internal, "expected a stream").into_response();
    };
    let started: Instant = arrived.0;
    let state = Progress {
        rx,
        tokens: 0,
        finish: None,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, move |mut p| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            if p.ended {
                return None;
            }
            let error = |message: String| {
                let err = ServiceError::new(ErrorType::UpstreamError, message);
                Event::default().event("error").data(err.body().to_string())
            };
            let event = match p.rx.recv().await {
                Some(Ok(chunk)) => {
                    if let Some(f) = &chunk.finish_reason {
                        p.finish = Some(f.clone());
                    }
                    let text = chunk_text(&chunk.raw);
                    if text.is_empty() {
                        None
                    } else {
                        p.tokens += 1;
                        Some(
                            Event::default()
                                .event("token")
                                .data(json!({"text": text}).to_string()),
                        )
                    }
                }
                Some(Err(e)) => {
                    p.ended = true;
                    Some(error(im_metrics::sanitize_text(&e.to_string())))
                }
                None if p.finish.is_some() => {
                    p.ended = true;
                    let done = json!({
                        "id": id, "model": model, "finish_reason": p.finish,
                        "usage": {"completion_tokens": p.tokens},
                        "timings": {"queue_wait_ms": ms(queue_wait), "processing_ms": ms(processing),
                                    "total_ms": ms(started.elapsed())},
                    });
                    Some(Event::default().event("done").data(done.to_string()))
                }
                None => {
                    p.ended = true;
                    Some(error(
                        "the upstream stream ended before completion".to_owned(),
                    ))
                }
            };
            Some((event, p))
        }
    });
    let events =
        futures_util::StreamExt::filter_map(events, |e| async move { e.map(Ok::<_, Infallible>) });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut().extend(headers);
    resp
}

/// What this API is: its name, version, routes and where its documentation lives. Needs no key.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "`{name, version, description, docs, openapi, routes: [{method, path, summary}]}`", body = Object)))]
pub async fn root() -> Response {
    axum::Json(root_document()).into_response()
}

/// The document `GET /` answers, built from the OpenAPI document (one list of routes).
pub fn root_document() -> Value {
    use utoipa::OpenApi;
    let doc = crate::ApiDoc::openapi();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                routes.push(json!({"method": method, "path": path, "summary": op.summary}));
            }
        }
    }
    json!({
        "name": "im",
        "description": "An inference manager for LocalAI: queues requests per kind and model, drains one group before switching models.",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "routes": routes,
    })
}
