//! The seeds' second dialect: `POST /v1/infer` and `POST /v1/infer/stream` (`{model, prompt,
//! params}`), a text completion on the txt2txt queue, and `GET /`, what this API is and where its
//! documentation lives. The routes are the service's (see [`crate::respond`]); this module only
//! writes `/v1/infer/stream`'s events.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use im_service::api::bodies::{InferRequest, InferResponse};
use im_service::{Caller, ChunkStream, Figures, Route, StreamItem};
use serde_json::{Value, json};

use crate::error::{HttpError, QueuedErrors};
use crate::respond::json_route;
use crate::state::{AppState, Arrived};

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
    json_route(Route::Infer, &st, &caller, arrived, b).await
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
    json_route(Route::InferStream, &st, &caller, arrived, b).await
}

struct Tokens {
    stream: ChunkStream,
    tokens: u64,
    finish: Option<String>,
    before_done: Option<Event>,
}

/// `/v1/infer/stream`'s response for `stream`.
pub(crate) fn token_events(
    stream: ChunkStream,
    figures: &Figures,
    arrived: Arrived,
    id: &str,
    model: String,
) -> Response {
    crate::stream::sse(token_event_stream(
        stream, figures, arrived, id, model, None,
    ))
}

/// `/v1/infer/stream`'s events for `stream`; `before_done` goes just before `done`.
pub(crate) fn token_event_stream(
    stream: ChunkStream,
    figures: &Figures,
    arrived: Arrived,
    id: &str,
    model: String,
    before_done: Option<Event>,
) -> impl futures_util::Stream<Item = Event> + Send + 'static {
    let (queue_wait, processing) = (figures.queue_wait, figures.processing);
    let started = arrived.at;
    let id = id.to_owned();
    let state = Tokens {
        stream,
        tokens: 0,
        finish: None,
        before_done,
    };
    let events = futures_util::stream::unfold(state, move |mut p| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            let events = match p.stream.next().await? {
                StreamItem::Chunk {
                    raw, finish_reason, ..
                } => {
                    if finish_reason.is_some() {
                        p.finish = finish_reason;
                    }
                    let text = chunk_text(&raw);
                    if text.is_empty() {
                        Vec::new()
                    } else {
                        p.tokens += 1;
                        vec![
                            Event::default()
                                .event("token")
                                .data(json!({"text": text}).to_string()),
                        ]
                    }
                }
                StreamItem::Failed(err) => {
                    vec![Event::default().event("error").data(err.body().to_string())]
                }
                StreamItem::End => {
                    let done = json!({
                        "id": id, "model": model, "finish_reason": p.finish,
                        "usage": {"completion_tokens": p.tokens},
                        "timings": {"queue_wait_ms": ms(queue_wait), "processing_ms": ms(processing),
                                    "total_ms": ms(started.elapsed())},
                    });
                    let mut events: Vec<Event> = p.before_done.take().into_iter().collect();
                    events.push(Event::default().event("done").data(done.to_string()));
                    events
                }
            };
            Some((events, p))
        }
    });
    futures_util::StreamExt::flat_map(events, futures_util::stream::iter)
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
