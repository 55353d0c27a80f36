//! One error type that classifies every failure as transient, permanent or protocol.

use std::time::Duration;

/// How the engine should treat a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying: connection refused or reset, timeouts, 500/502/503/504, a model loading.
    Transient,
    /// Retrying cannot help: 400, 401, 403, 404, 413, 422.
    Permanent,
    /// LocalAI answered something that is not its API: a body that does not parse, a wrong content
    /// type, a stream cut without `[DONE]`.
    Protocol,
}

/// A failed call to LocalAI. Messages never contain request bodies, images or keys.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to LocalAI: {0}")]
    Connect(String),
    /// A timeout fired.
    #[error("LocalAI timed out after {after:?} waiting for {phase}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// `first byte`, `response` or `connect`.
        phase: &'static str,
    },
    /// The connection dropped while the request or response was in transit.
    #[error("connection to LocalAI dropped: {0}")]
    Dropped(String),
    /// LocalAI answered with an error status.
    #[error("LocalAI returned {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// LocalAI's message (from its error envelope when there is one).
        message: String,
        /// The `Retry-After` header, parsed.
        retry_after: Option<Duration>,
    },
    /// An error reported inside a stream that had started (either LocalAI dialect).
    #[error("LocalAI reported an error inside the stream: {0}")]
    Stream(String),
    /// The answer is not LocalAI's API.
    #[error("malformed response from LocalAI: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::Connect(_) | ClientError::Timeout { .. } | ClientError::Dropped(_) => {
                ErrorClass::Transient
            }
            ClientError::Stream(_) => ErrorClass::Transient,
            ClientError::Protocol(_) => ErrorClass::Protocol,
            ClientError::Status {
                status, message, ..
            } => match status {
                500 if is_unknown_model(message) => ErrorClass::Permanent,
                500 | 502 | 503 | 504 | 408 | 429 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
        }
    }

    /// Whether the engine may retry it.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The upstream's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The upstream's status, if it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether LocalAI said the model is still loading.
    pub fn is_loading(&self) -> bool {
        matches!(self, ClientError::Status { status: 503, message, .. } if message.to_ascii_lowercase().contains("loading"))
    }

    /// A short label for metrics: `connect`, `timeout`, `dropped`, `status_503`, `stream`, `protocol`.
    pub fn label(&self) -> String {
        match self {
            ClientError::Connect(_) => "connect".into(),
            ClientError::Timeout { .. } => "timeout".into(),
            ClientError::Dropped(_) => "dropped".into(),
            ClientError::Status { status, .. } => format!("status_{status}"),
            ClientError::Stream(_) => "stream".into(),
            ClientError::Protocol(_) => "protocol".into(),
        }
    }

    pub(crate) fn from_reqwest(
        e: reqwest::Error,
        after: Duration,
        phase: &'static str,
    ) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout { after, phase }
        } else if e.is_connect() {
            ClientError::Connect(root_cause(&e))
        } else if e.is_decode() {
            ClientError::Protocol(root_cause(&e))
        } else {
            // Request or body errors: reset, closed before the message completed.
            ClientError::Dropped(root_cause(&e))
        }
    }
}

fn is_unknown_model(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("could not load model") && m.contains("no such")
}

/// The innermost message of an error chain, without the URL (which may hold credentials).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Parse `Retry-After`: delay seconds (HTTP dates are rare from LocalAI and treated as absent).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}
