//! What goes in (a [`Job`]) and what comes out (a [`Completion`] or an [`EngineError`]).

use std::time::Duration;

use inference_queue::{Kind, Rejection};
use localai_client::{
    ChatChunk, ChatRequest, ChatResponse, ClientError, Content, ErrorClass, ImageRequest,
    ImagesResponse, JsonResponse, Message, RawResponse, Upload, truncate,
};
use tokio::sync::mpsc;

/// The upstream call a job makes; its kind and model are the payload's.
#[derive(Debug)]
pub enum Payload {
    /// txt2txt or img2txt.
    Chat {
        /// The request.
        req: ChatRequest,
        /// Stream chunks to the caller once dispatched.
        stream: bool,
        /// `Txt2Txt` or `Img2Txt`, decided at admission (an image in the messages, or the route).
        kind: Kind,
    },
    /// txt2img, or img2img when the request carries a `file`.
    Images(ImageRequest),
    /// An OpenAI-shaped call passed through as JSON: a text completion (`/v1/completions`).
    Json {
        /// The upstream route.
        path: &'static str,
        /// The body as the upstream gets it (`model` included; `stream` set to match).
        body: serde_json::Map<String, serde_json::Value>,
        /// Stream chunks to the caller once dispatched.
        stream: bool,
        /// The kind it is queued as.
        kind: Kind,
    },
    /// A JSON call whose answer is passed on as bytes: speech (`tts`, `/v1/audio/speech`).
    Speech {
        /// The body as the upstream gets it (`model` included).
        body: serde_json::Map<String, serde_json::Value>,
    },
    /// A multipart upload whose answer is passed on as bytes: a transcription (`stt`).
    Transcription(Upload),
}

impl Payload {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Chat { kind, .. } => *kind,
            Payload::Images(r) if r.file.is_some() => Kind::Img2Img,
            Payload::Images(_) => Kind::Txt2Img,
            Payload::Json { kind, .. } => *kind,
            Payload::Speech { .. } => Kind::Tts,
            Payload::Transcription(_) => Kind::Stt,
        }
    }

    /// Its model.
    pub fn model(&self) -> &str {
        match self {
            Payload::Chat { req, .. } => &req.model,
            Payload::Images(r) => &r.model,
            Payload::Json { body, .. } | Payload::Speech { body } => body
                .get("model")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(""),
            Payload::Transcription(u) => u.field("model").unwrap_or(""),
        }
    }
}

/// One request for the engine. The payload is moved in once and shared by reference between
/// attempts (never cloned per attempt or per layer).
#[derive(Debug)]
pub struct Job {
    /// The caller's id for logs and errors: the request's one identity outside the core.
    pub request_id: String,
    /// A queue deadline; only lowers the kind's default.
    pub deadline: Option<Duration>,
    /// The call.
    pub payload: Payload,
    /// Who it is for (its tenant), as the error log records it so that a tenant sees its own
    /// errors; `None` for work of no one tenant (a merged embedding batch).
    pub owner: Option<std::sync::Arc<str>>,
    /// Its owner's weight in fair share inside its group (1 unless configured).
    pub weight: u32,
    /// Its priority class inside its group.
    pub class: inference_queue::Class,
    /// Where to tell its caller how its wait goes (opt-in): its place at admission and every
    /// second while it waits, a load of its model; closed once it is dispatched or left.
    pub progress: Option<ProgressSink>,
    /// Its prompt's block chain, for prefix-aware placement (chats and completions).
    pub prefix: Option<inference_queue::PrefixChain>,
}

/// What a waiting request's caller is told ([`Job::progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Waiting: `position` 1 is served next in its group; `eta` its predicted start.
    Queued {
        /// Its place in its group's order.
        position: usize,
        /// Its predicted start from now, when a lane may serve it.
        eta: Option<Duration>,
    },
    /// A lane is loading its model (told once per lane).
    Loading {
        /// The model.
        model: String,
        /// The lane loading it.
        lane: String,
    },
}

/// The sending half of a job's progress.
pub type ProgressSink = mpsc::UnboundedSender<Progress>;

/// Figures about a finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The caller's id.
    pub request_id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its model.
    pub model: String,
    /// Time from submit to the dispatch of the answering attempt.
    pub queue_wait: Duration,
    /// Upstream time of the answering attempt (for a stream: until its response head).
    pub processing: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// The lane that answered.
    pub lane: usize,
}

/// Streamed chunks; ends after the last chunk, or with one error item.
pub type ChunkReceiver = mpsc::Receiver<Result<ChatChunk, ClientError>>;

/// The upstream's answer.
#[derive(Debug)]
pub enum Output {
    /// A chat completion.
    Chat(ChatResponse),
    /// Images.
    Images(ImagesResponse),
    /// An answer passed through as JSON.
    Json(JsonResponse),
    /// An answer passed through as bytes with its content type (audio, a transcript).
    Raw(RawResponse),
    /// A chat stream, live.
    Stream(ChunkReceiver),
}

impl Output {
    /// A copy of a complete answer (a live stream cannot be copied).
    pub fn try_clone(&self) -> Option<Output> {
        Some(match self {
            Output::Chat(c) => Output::Chat(c.clone()),
            Output::Images(i) => Output::Images(i.clone()),
            Output::Json(j) => Output::Json(j.clone()),
            Output::Raw(r) => Output::Raw(r.clone()),
            Output::Stream(_) => return None,
        })
    }
}

/// A request's result.
#[derive(Debug)]
pub struct Completion {
    /// The figures.
    pub meta: Meta,
    /// The answer.
    pub output: Output,
}

/// Why a request did not get an answer. [`EngineError::error_type`] is the stable type of im's
/// one error table (SPEC §3), shared by HTTP, SSE and MCP.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A queue limit is reached.
    #[error("the {scope} queue is full; retry after {}s", retry_after.as_secs().max(1))]
    QueueFull {
        /// `total` or a kind.
        scope: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The work ahead of it would outlast its queue deadline by a margin (the core's predicted
    /// wait): refused at once rather than left to wait and expire.
    #[error(
        "the work queued ahead would take about {}s, past this request's queue deadline of {}s: retry after {}s, or with a longer deadline",
        predicted.as_secs().max(1), deadline.as_secs(), predicted.as_secs().max(1)
    )]
    WouldExpire {
        /// The predicted wait.
        predicted: Duration,
        /// Its queue deadline.
        deadline: Duration,
    },
    /// The request alone holds more payload than the byte budget of the queues: it can never run.
    #[error(
        "the request holds {bytes} bytes of payload, more than the queues' whole budget of {budget} bytes (`limits.max_queued_bytes`)"
    )]
    TooLarge {
        /// Its payload bytes.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// The model is not configured.
    #[error("unknown model {model:?}; valid models for {kind}: {}", list(valid))]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The kind asked for.
        kind: Kind,
        /// Models serving the kind.
        valid: Vec<String>,
    },
    /// The model does not serve the kind.
    #[error(
        "model {model:?} does not serve {kind}; valid models for {kind}: {}",
        list(valid)
    )]
    UnsupportedKind {
        /// The model.
        model: String,
        /// The kind.
        kind: Kind,
        /// Models serving the kind.
        valid: Vec<String>,
    },
    /// The queue deadline passed before dispatch (or before a retry could run).
    #[error("deadline exceeded: waited {:.1}s in the queue{}", waited.as_secs_f64(), after_attempts(*attempts, last_error.as_deref()))]
    DeadlineExceeded {
        /// How long it waited.
        waited: Duration,
        /// Attempts made before the deadline passed (0: never dispatched).
        attempts: u32,
        /// The upstream error of the last attempt, if there was one.
        last_error: Option<String>,
    },
    /// The upstream refused the request as the caller's own error (400, 413, 422: too long a
    /// prompt, a field it rejects); answered with the upstream's status, never retried.
    #[error("{message}")]
    Refused {
        /// The upstream's status.
        status: u16,
        /// The upstream's message, summarised.
        message: String,
        /// The upstream's error code (`context_length_exceeded`), if any.
        code: Option<String>,
        /// The field the upstream named, if any.
        param: Option<String>,
    },
    /// A bug in im (a panic was caught); the request did not complete.
    #[error("internal error in im while running the request; it was not completed")]
    Internal,
    /// Taken out of the queue before it ran: the key it was sent with was revoked.
    #[error("the API key this request was sent with was revoked while it waited")]
    Withdrawn,
    /// The upstream refused or failed it for good.
    #[error("upstream error after {attempts} attempt(s): {error}")]
    Upstream {
        /// The last upstream error.
        error: ClientError,
        /// Attempts made.
        attempts: u32,
    },
    /// The upstream is unreachable or kept failing transiently.
    #[error("upstream unavailable after {attempts} attempt(s): {error}")]
    UpstreamUnavailable {
        /// The last upstream error.
        error: ClientError,
        /// Attempts made.
        attempts: u32,
    },
    /// im is shutting down.
    #[error("im is shutting down; the request was not run")]
    ShuttingDown,
}

fn after_attempts(attempts: u32, last: Option<&str>) -> String {
    match (attempts, last) {
        (0, _) => " without being dispatched".to_owned(),
        (n, Some(e)) => format!(" after {n} attempt(s); the last upstream error: {e}"),
        (n, None) => format!(" after {n} attempt(s)"),
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none configured".to_owned()
    } else {
        v.join(", ")
    }
}

impl EngineError {
    /// The stable type of im's error table.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::QueueFull { .. } | EngineError::WouldExpire { .. } => "queue_full",
            EngineError::TooLarge { .. } => "payload_too_large",
            EngineError::UnknownModel { .. } => "unknown_model",
            EngineError::UnsupportedKind { .. } => "unsupported_kind",
            EngineError::DeadlineExceeded { .. } => "deadline_exceeded",
            EngineError::Upstream { .. } => "upstream_error",
            EngineError::UpstreamUnavailable { .. } => "upstream_unavailable",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::Refused { .. } => "invalid_request",
            EngineError::Internal => "internal",
            EngineError::Withdrawn => "unauthorized",
        }
    }

    /// Why admission refused it, as `im_rejections_total` labels it: its error type, or
    /// `would_expire` for a request the prediction says would miss its deadline.
    pub fn refusal_reason(&self) -> &'static str {
        match self {
            EngineError::WouldExpire { .. } => "would_expire",
            other => other.error_type(),
        }
    }

    /// `Retry-After` to send with it, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::QueueFull { retry_after, .. } => Some(*retry_after),
            EngineError::WouldExpire { predicted, .. } => Some(*predicted),
            EngineError::UpstreamUnavailable { error, .. } => {
                error.retry_after().or(Some(Duration::from_secs(5)))
            }
            _ => None,
        }
    }

    /// The error for a refused admission.
    pub fn from_rejection(r: Rejection, kind: Kind) -> EngineError {
        match r {
            Rejection::QueueFull { scope, retry_after } => EngineError::QueueFull {
                scope: match scope {
                    inference_queue::QueueScope::Total => "total".into(),
                    inference_queue::QueueScope::Kind(k) => k.to_string(),
                    inference_queue::QueueScope::Bytes => "payload byte budget of the".into(),
                },
                retry_after,
            },
            Rejection::UnknownModel { model, valid } => EngineError::UnknownModel {
                model: truncate(&model, 64),
                kind,
                valid,
            },
            Rejection::KindNotServed { model, kind, valid } => EngineError::UnsupportedKind {
                model: truncate(&model, 64),
                kind,
                valid,
            },
            Rejection::UnknownLane(l) => EngineError::UnknownModel {
                model: format!("lane {l}"),
                kind,
                valid: vec![],
            },
            Rejection::LaneCannotHost { model, lane } => EngineError::UnknownModel {
                model: format!("{} on lane {lane}", truncate(&model, 64)),
                kind,
                valid: vec![],
            },
            Rejection::TooLarge { bytes, budget } => EngineError::TooLarge { bytes, budget },
            Rejection::ShuttingDown => EngineError::ShuttingDown,
            Rejection::WouldExpire {
                predicted,
                deadline,
            } => EngineError::WouldExpire {
                predicted,
                deadline,
            },
        }
    }

    /// The error for an attempt that will not be retried.
    pub fn from_upstream(error: ClientError, attempts: u32) -> EngineError {
        if error.is_caller_error()
            && let ClientError::Status {
                status,
                message,
                code,
                param,
                ..
            } = error
        {
            return EngineError::Refused {
                status,
                message,
                code,
                param,
            };
        }
        match error.class() {
            ErrorClass::Transient | ErrorClass::TimedOut => {
                EngineError::UpstreamUnavailable { error, attempts }
            }
            ErrorClass::Permanent | ErrorClass::Protocol => {
                EngineError::Upstream { error, attempts }
            }
        }
    }
}

impl Job {
    /// A job for `payload`, known as `request_id`.
    pub fn new(request_id: impl Into<String>, payload: Payload, deadline: Option<Duration>) -> Job {
        Job {
            request_id: request_id.into(),
            deadline,
            payload,
            owner: None,
            weight: 1,
            class: inference_queue::Class::Interactive,
            progress: None,
            prefix: None,
        }
    }

    /// Its kind (the payload's).
    pub fn kind(&self) -> Kind {
        self.payload.kind()
    }

    /// Its model (the payload's).
    pub fn model(&self) -> &str {
        self.payload.model()
    }

    /// The bytes of payload the job holds (messages' text and images, an image file), for the
    /// scheduler's byte budget.
    pub fn payload_bytes(&self) -> u64 {
        fn text_bytes(v: &serde_json::Value) -> u64 {
            match v {
                serde_json::Value::String(s) => s.len() as u64,
                serde_json::Value::Array(a) => a.iter().map(text_bytes).sum(),
                serde_json::Value::Object(o) => o.values().map(text_bytes).sum(),
                _ => 8,
            }
        }
        match &self.payload {
            Payload::Chat { req, .. } => {
                let content = |c: &Content| match c {
                    Content::Text(t) => t.len() as u64,
                    Content::Parts(parts) => parts.iter().map(text_bytes).sum(),
                };
                req.messages
                    .iter()
                    .map(|m| m.role.as_str().len() as u64 + content(&m.content))
                    .sum::<u64>()
                    + 64
            }
            Payload::Images(r) => {
                (r.prompt.len() + r.file.as_ref().map_or(0, |f| f.len())) as u64 + 64
            }
            Payload::Json { body, .. } | Payload::Speech { body } => {
                body.values().map(text_bytes).sum::<u64>() + 64
            }
            Payload::Transcription(u) => {
                (u.file.len()
                    + u.fields
                        .iter()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>()) as u64
                    + 64
            }
        }
    }

    /// The job's parameters for error reports: small values as they are, long texts cut and
    /// payloads as their size. Built from summaries, never by copying a payload.
    pub fn params(&self) -> serde_json::Value {
        use serde_json::json;
        match &self.payload {
            Payload::Chat { req, stream, .. } => json!({
                "model": truncate(&req.model, 64),
                "messages": req.messages.iter().take(16).map(summarize_message).collect::<Vec<_>>(),
                "temperature": req.temperature, "max_tokens": req.max_tokens, "stream": stream,
            }),
            Payload::Images(r) => json!({
                "model": truncate(&r.model, 64), "prompt": truncate(&r.prompt, 200),
                "negative_prompt": r.negative_prompt.as_deref().map(|n| truncate(n, 200)),
                "width": r.width, "height": r.height, "steps": r.steps, "seed": r.seed, "n": r.n,
                "file": r.file.as_ref().map(|f| format!("<base64: {} bytes>", f.len())),
            }),
            Payload::Json {
                path, body, stream, ..
            } => json!({
                "path": path, "stream": stream,
                "body": summarize_value(&serde_json::Value::Object(
                    body.iter().take(16).map(|(k, v)| (k.clone(), summarize_value(v))).collect(),
                )),
            }),
            Payload::Speech { body } => json!({
                "path": "/v1/audio/speech",
                "body": summarize_value(&serde_json::Value::Object(
                    body.iter().take(16).map(|(k, v)| (k.clone(), summarize_value(v))).collect(),
                )),
            }),
            Payload::Transcription(u) => json!({
                "path": "/v1/audio/transcriptions",
                "fields": u.fields.iter().take(16)
                    .map(|(n, v)| (truncate(n, 64), serde_json::Value::String(truncate(v, 200))))
                    .collect::<serde_json::Map<_, _>>(),
                "file": format!("<{}: {} bytes>", truncate(&u.file_type, 64), u.file.len()),
            }),
        }
    }
}

/// A summary of a JSON value: strings over 200 characters become their first 200 (or, for
/// payloads, their size); containers are summarised element by element (at most 16 each).
fn summarize_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() > 200 => summarize_text(s),
        Value::Array(a) => Value::Array(a.iter().take(16).map(summarize_value).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .take(16)
                .map(|(k, v)| (truncate(k, 64), summarize_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A text as [`summarize_value`] summarises one: as it is up to 200 bytes, then its first 200
/// characters, or its size when it looks like a payload.
fn summarize_text(s: &str) -> serde_json::Value {
    let text = if s.len() <= 200 {
        s.to_owned()
    } else if s.starts_with("data:") || !s.as_bytes()[..64].contains(&b' ') {
        format!("<base64: {} bytes>", s.len())
    } else {
        format!("{} ({} bytes)", truncate(s, 200), s.len())
    };
    serde_json::Value::String(text)
}

/// A message summarised: its role, and its text or parts summarised.
fn summarize_message(m: &Message) -> serde_json::Value {
    let content = match &m.content {
        Content::Text(t) => summarize_text(t),
        Content::Parts(parts) => {
            serde_json::Value::Array(parts.iter().take(16).map(summarize_value).collect())
        }
    };
    serde_json::json!({"role": m.role.as_str(), "content": content})
}
