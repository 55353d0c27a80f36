//! What goes in (a [`Job`]) and what comes out (a [`Completion`] or an [`EngineError`]).

use std::time::Duration;

use inference_queue::{Kind, Rejection};
use localai_client::{
    ChatChunk, ChatRequest, ChatResponse, ClientError, ErrorClass, ImageRequest, ImagesResponse,
};
use tokio::sync::mpsc;

/// The upstream call a job makes.
#[derive(Debug)]
pub enum Payload {
    /// txt2txt or img2txt.
    Chat {
        /// The request.
        req: ChatRequest,
        /// Stream chunks to the caller once dispatched.
        stream: bool,
    },
    /// txt2img or img2img.
    Images(ImageRequest),
}

/// One request for the engine. The payload is moved in once and shared by reference between
/// attempts (never cloned per attempt or per layer).
#[derive(Debug)]
pub struct Job {
    /// The caller's id for logs and errors.
    pub request_id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its model.
    pub model: String,
    /// A queue deadline; only lowers the kind's default.
    pub deadline: Option<Duration>,
    /// The call.
    pub payload: Payload,
}

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
    /// A chat stream, live.
    Stream(ChunkReceiver),
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
    /// The queue deadline passed before dispatch.
    #[error("deadline exceeded: waited {:.1}s in the queue without being dispatched", waited.as_secs_f64())]
    DeadlineExceeded {
        /// How long it waited.
        waited: Duration,
    },
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
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::UnknownModel { .. } => "unknown_model",
            EngineError::UnsupportedKind { .. } => "unsupported_kind",
            EngineError::DeadlineExceeded { .. } => "deadline_exceeded",
            EngineError::Upstream { .. } => "upstream_error",
            EngineError::UpstreamUnavailable { .. } => "upstream_unavailable",
            EngineError::ShuttingDown => "shutting_down",
        }
    }

    /// `Retry-After` to send with it, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::QueueFull { retry_after, .. } => Some(*retry_after),
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
                },
                retry_after,
            },
            Rejection::UnknownModel { model, valid } => {
                EngineError::UnknownModel { model, kind, valid }
            }
            Rejection::KindNotServed { model, kind, valid } => {
                EngineError::UnsupportedKind { model, kind, valid }
            }
            Rejection::UnknownLane(l) => EngineError::UnknownModel {
                model: format!("lane {l}"),
                kind,
                valid: vec![],
            },
            Rejection::ShuttingDown => EngineError::ShuttingDown,
        }
    }

    /// The error for an attempt that will not be retried.
    pub fn from_upstream(error: ClientError, attempts: u32) -> EngineError {
        match error.class() {
            ErrorClass::Transient => EngineError::UpstreamUnavailable { error, attempts },
            ErrorClass::Permanent | ErrorClass::Protocol => {
                EngineError::Upstream { error, attempts }
            }
        }
    }
}
