//! Answers in each route's own shape: the seeds' JSON with the figures, OpenAI's bodies as the
//! upstream sent them, `/v1/infer`'s and `/infer`'s envelopes. The same bytes whether an HTTP
//! client or a job gets them.

use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::bodies::{InferResponse, Timings};
use super::route::Route;
use crate::auth::Caller;
use crate::done::{ChunkStream, Done, Figures, Reply};
use crate::error::{ErrorType, ServiceError};
use crate::registry::{RegistryEntry, TaskAnswer};

/// A route's answer.
#[derive(Debug)]
pub enum Answer {
    /// A complete answer.
    Body {
        /// Its status: 200, or a task envelope's error status.
        status: u16,
        /// Its content type (JSON's without an allocation).
        content_type: std::borrow::Cow<'static, str>,
        /// Its bytes.
        body: Bytes,
        /// The figures of the request that ran (sent as headers over HTTP).
        figures: Option<Figures>,
    },
    /// A stream, live: chat or completion chunks (`/v1/infer/stream` turns them into token
    /// events).
    Stream {
        /// The chunks.
        stream: ChunkStream,
        /// The figures, as far as they are known when the stream starts.
        figures: Figures,
        /// The model the caller named.
        model: String,
    },
}

const JSON: &str = "application/json";

fn json_answer(body: Bytes, figures: Figures) -> Answer {
    Answer::Body {
        status: 200,
        content_type: JSON.into(),
        body,
        figures: Some(figures),
    }
}

fn serialized<T: Serialize>(v: &T, figures: Figures) -> Result<Answer, ServiceError> {
    let body = serde_json::to_vec(v).map_err(|e| {
        ServiceError::new(
            ErrorType::Internal,
            format!("an answer did not serialise: {e}"),
        )
    })?;
    Ok(json_answer(Bytes::from(body), figures))
}

/// The figures every seed response carries.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(as = Figures)]
pub struct SeedFigures {
    /// im's id of the request (also in `X-Request-Id`).
    pub request_id: String,
    /// The model.
    pub model: String,
    /// The kind.
    pub kind: String,
    /// Time in the queue.
    pub queue_wait_ms: f64,
    /// Upstream time of the answering attempt.
    pub processing_ms: f64,
    /// Attempts made (1 without retries).
    pub attempts: u32,
}

impl From<&Figures> for SeedFigures {
    fn from(f: &Figures) -> SeedFigures {
        SeedFigures {
            request_id: f.request_id.clone(),
            model: f.model.clone(),
            kind: f.kind.to_string(),
            queue_wait_ms: ms(f.queue_wait),
            processing_ms: ms(f.processing),
            attempts: f.attempts,
        }
    }
}

/// Response of `/txt2txt` and `/img2txt`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TextResult {
    /// The figures.
    #[serde(flatten)]
    pub figures: SeedFigures,
    /// The answer.
    pub content: String,
    /// The upstream's OpenAI-shaped completion.
    #[schema(value_type = Object)]
    pub completion: Value,
}

/// Response of `/txt2img` and `/img2img`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImageResult {
    /// The figures.
    #[serde(flatten)]
    pub figures: SeedFigures,
    /// Base64 PNG images.
    pub images: Vec<String>,
    /// Unix time of creation.
    pub created: u64,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The answer of a call on `route` that finished as `done`; `model` is the model the caller
/// named.
pub(super) fn of(
    route: Route,
    done: Done,
    model: &str,
    caller: &Caller,
    arrived: Instant,
) -> Result<Answer, ServiceError> {
    let Done { figures, reply } = done;
    if let Reply::Stream(stream) = reply {
        return Ok(Answer::Stream {
            stream,
            figures,
            model: model.to_owned(),
        });
    }
    match route {
        Route::Txt2Txt | Route::Img2Txt | Route::Txt2Img | Route::Img2Img => seed(reply, figures),
        Route::Infer | Route::InferStream => infer(reply, figures, model, caller, arrived),
        _ => openai(reply, figures),
    }
}

/// The seeds' answers: JSON with the figures.
fn seed(reply: Reply, figures: Figures) -> Result<Answer, ServiceError> {
    match reply {
        Reply::Chat { raw, .. } => serialized(
            &TextResult {
                figures: SeedFigures::from(&figures),
                content: raw.chat_text(),
                completion: raw.into_value(),
            },
            figures,
        ),
        Reply::Images { created, images } => serialized(
            &ImageResult {
                figures: SeedFigures::from(&figures),
                images,
                created,
            },
            figures,
        ),
        other => openai(other, figures),
    }
}

/// OpenAI's answers: the upstream's body as it came (nothing re-serialised), images as
/// `{"created", "data": [{"b64_json"}]}`.
fn openai(reply: Reply, figures: Figures) -> Result<Answer, ServiceError> {
    Ok(match reply {
        Reply::Chat { body, .. } | Reply::Json { body, .. } => json_answer(body, figures),
        Reply::Images { created, images } => {
            let data: Vec<Value> = images.into_iter().map(|b| json!({"b64_json": b})).collect();
            return serialized(&json!({"created": created, "data": data}), figures);
        }
        Reply::Raw { content_type, body } => Answer::Body {
            status: 200,
            content_type: content_type.into(),
            body,
            figures: Some(figures),
        },
        Reply::Stream(_) => unreachable!("streams are answered before"),
    })
}

/// `/v1/infer`'s answer: `{id, model, text, finish_reason, usage, timings}`.
fn infer(
    reply: Reply,
    figures: Figures,
    model: &str,
    caller: &Caller,
    arrived: Instant,
) -> Result<Answer, ServiceError> {
    let Reply::Json { raw, .. } = reply else {
        return Err(ServiceError::new(
            ErrorType::Internal,
            "expected a completion from the upstream",
        ));
    };
    let choice = &raw["choices"][0];
    let answer = InferResponse {
        id: caller.request_id.clone(),
        model: raw["model"].as_str().unwrap_or(model).to_owned(),
        text: choice["text"].as_str().unwrap_or_default().to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        usage: raw.get("usage").cloned().unwrap_or(Value::Null),
        timings: Timings {
            queue_wait_ms: ms(figures.queue_wait),
            processing_ms: ms(figures.processing),
            total_ms: ms(arrived.elapsed()),
        },
    };
    serialized(&answer, figures)
}

/// `/infer`'s envelope: `{success, result | error, model_used, latency_ms, request_id,
/// timestamp, metadata}`, with the error table's status when it failed.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Envelope {
    /// Whether the task ran.
    pub success: bool,
    /// The task's result (the template's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why it did not run: `{type, message, param?}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// `name:version` of the task model.
    pub model_used: Option<String>,
    /// Milliseconds from arrival to the answer.
    pub latency_ms: f64,
    /// The request id.
    pub request_id: String,
    /// When it was answered, ISO 8601 UTC.
    pub timestamp: String,
    /// `{model_type, kind, queue_wait_ms, processing_ms}` of a success.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The envelope of one task request: its status and body.
pub fn envelope(
    request_id: &str,
    arrived: Instant,
    entry: Option<&RegistryEntry>,
    outcome: Result<TaskAnswer, ServiceError>,
) -> (u16, Envelope) {
    let mut e = Envelope {
        success: outcome.is_ok(),
        result: None,
        error: None,
        model_used: entry.map(RegistryEntry::id),
        latency_ms: ms(arrived.elapsed()),
        request_id: request_id.to_owned(),
        timestamp: timestamp(),
        metadata: None,
    };
    let status = match outcome {
        Ok(a) => {
            e.result = Some(a.result);
            e.metadata = Some(json!({
                "model_type": entry.map(|e| e.template.as_str()),
                "kind": "txt2txt",
                "queue_wait_ms": ms(a.queue_wait),
                "processing_ms": ms(a.processing),
            }));
            200
        }
        Err(err) => {
            e.error = Some(err.body()["error"].clone());
            err.status()
        }
    };
    (status, e)
}

/// The task route's answer.
pub(super) fn task(
    request_id: &str,
    arrived: Instant,
    entry: Option<&RegistryEntry>,
    outcome: Result<TaskAnswer, ServiceError>,
) -> Answer {
    let (status, e) = envelope(request_id, arrived, entry, outcome);
    Answer::Body {
        status,
        content_type: JSON.into(),
        body: Bytes::from(serde_json::to_vec(&e).unwrap_or_default()),
        figures: None,
    }
}

/// Now in ISO 8601, UTC, with milliseconds.
fn timestamp() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
