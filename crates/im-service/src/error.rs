//! The one error table of SPEC §3: every cause has a stable `type` and one status, used for HTTP
//! bodies, SSE error events and MCP tool errors alike. The status of each type is an exhaustive
//! `match` (the compiler checks every type has one), and the engine's errors map onto types by
//! another.

use std::time::Duration;

use im_engine::EngineError;
use serde::Serialize;

/// A stable error cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Malformed JSON, a wrong type, a missing or out-of-range field.
    InvalidRequest,
    /// No or a wrong API key.
    Unauthorized,
    /// The key lacks the scope the route needs.
    Forbidden,
    /// The model is not configured.
    UnknownModel,
    /// The model does not serve this kind.
    UnsupportedKind,
    /// No such route.
    NotFound,
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// The request conflicts with what runs (an unload of a busy model without `force`).
    Conflict,
    /// The body is over the limit.
    PayloadTooLarge,
    /// An idempotency key was used before for another request.
    IdempotencyKeyReused,
    /// The queue is full.
    QueueFull,
    /// The key's rate limit is reached.
    RateLimited,
    /// The queue deadline passed before dispatch.
    DeadlineExceeded,
    /// The upstream refused or failed the request.
    UpstreamError,
    /// The upstream is unreachable or keeps failing.
    UpstreamUnavailable,
    /// im is shutting down.
    ShuttingDown,
    /// A bug in im.
    Internal,
}

impl ErrorType {
    /// Every type, in the table's order.
    pub const ALL: [ErrorType; 17] = [
        ErrorType::InvalidRequest,
        ErrorType::Unauthorized,
        ErrorType::Forbidden,
        ErrorType::UnknownModel,
        ErrorType::NotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::Conflict,
        ErrorType::PayloadTooLarge,
        ErrorType::UnsupportedKind,
        ErrorType::IdempotencyKeyReused,
        ErrorType::QueueFull,
        ErrorType::RateLimited,
        ErrorType::Internal,
        ErrorType::UpstreamError,
        ErrorType::UpstreamUnavailable,
        ErrorType::ShuttingDown,
        ErrorType::DeadlineExceeded,
    ];

    /// The types a queued inference route can answer with (its rows of the table).
    pub const QUEUED: [ErrorType; 13] = [
        ErrorType::InvalidRequest,
        ErrorType::Unauthorized,
        ErrorType::Forbidden,
        ErrorType::UnknownModel,
        ErrorType::PayloadTooLarge,
        ErrorType::UnsupportedKind,
        ErrorType::QueueFull,
        ErrorType::RateLimited,
        ErrorType::Internal,
        ErrorType::UpstreamError,
        ErrorType::UpstreamUnavailable,
        ErrorType::ShuttingDown,
        ErrorType::DeadlineExceeded,
    ];

    /// Its HTTP status (also reported in MCP tool errors).
    pub const fn status(self) -> u16 {
        match self {
            ErrorType::InvalidRequest => 400,
            ErrorType::Unauthorized => 401,
            ErrorType::Forbidden => 403,
            ErrorType::UnknownModel | ErrorType::NotFound => 404,
            ErrorType::MethodNotAllowed => 405,
            ErrorType::Conflict => 409,
            ErrorType::PayloadTooLarge => 413,
            ErrorType::UnsupportedKind | ErrorType::IdempotencyKeyReused => 422,
            ErrorType::QueueFull | ErrorType::RateLimited => 429,
            ErrorType::Internal => 500,
            ErrorType::UpstreamError => 502,
            ErrorType::UpstreamUnavailable | ErrorType::ShuttingDown => 503,
            ErrorType::DeadlineExceeded => 504,
        }
    }

    /// Its wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::Forbidden => "forbidden",
            ErrorType::UnknownModel => "unknown_model",
            ErrorType::UnsupportedKind => "unsupported_kind",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::Conflict => "conflict",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorType::QueueFull => "queue_full",
            ErrorType::RateLimited => "rate_limited",
            ErrorType::DeadlineExceeded => "deadline_exceeded",
            ErrorType::UpstreamError => "upstream_error",
            ErrorType::UpstreamUnavailable => "upstream_unavailable",
            ErrorType::ShuttingDown => "shutting_down",
            ErrorType::Internal => "internal",
        }
    }

    /// What it means, for a person (the OpenAPI document's response descriptions).
    pub const fn describe(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "Invalid request: `param` names the offending field",
            ErrorType::Unauthorized => "No or a wrong API key",
            ErrorType::Forbidden => {
                "The API key lacks the scope this route needs (`infer`, `admin` or `metrics`)"
            }
            ErrorType::UnknownModel => "Unknown model; the message lists the valid ones",
            ErrorType::UnsupportedKind => {
                "The model does not serve this kind; the message lists the ones that do"
            }
            ErrorType::NotFound => "No such route",
            ErrorType::MethodNotAllowed => "Method not allowed on this route",
            ErrorType::Conflict => {
                "The model has work in flight or waiting; send `force: true` to unload it after the barrier"
            }
            ErrorType::PayloadTooLarge => "The body is over the limit",
            ErrorType::IdempotencyKeyReused => {
                "The idempotency key was used before with another request"
            }
            ErrorType::QueueFull => {
                "A queue limit (requests or payload bytes) is reached; see `Retry-After`"
            }
            ErrorType::RateLimited => "The key's rate limit is reached; see `Retry-After`",
            ErrorType::DeadlineExceeded => "The queue deadline passed before the request could run",
            ErrorType::UpstreamError => "The upstream refused or failed the request",
            ErrorType::UpstreamUnavailable => "The upstream is unavailable; see `Retry-After`",
            ErrorType::ShuttingDown => "im is shutting down",
            ErrorType::Internal => "A bug in im; the request was not completed",
        }
    }

    /// The type of an engine error: one exhaustive match, checked by the compiler.
    pub fn of_engine(e: &EngineError) -> ErrorType {
        match e {
            EngineError::QueueFull { .. } | EngineError::WouldExpire { .. } => ErrorType::QueueFull,
            EngineError::TooLarge { .. } => ErrorType::PayloadTooLarge,
            EngineError::UnknownModel { .. } => ErrorType::UnknownModel,
            EngineError::UnsupportedKind { .. } => ErrorType::UnsupportedKind,
            EngineError::DeadlineExceeded { .. } => ErrorType::DeadlineExceeded,
            EngineError::Upstream { .. } => ErrorType::UpstreamError,
            EngineError::UpstreamUnavailable { .. } => ErrorType::UpstreamUnavailable,
            EngineError::ShuttingDown => ErrorType::ShuttingDown,
            EngineError::Refused { .. } => ErrorType::InvalidRequest,
            EngineError::Internal => ErrorType::Internal,
            EngineError::Withdrawn => ErrorType::Unauthorized,
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call did not get an answer, as every frontend reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceError {
    /// The cause.
    pub kind: ErrorType,
    /// What went wrong, for a person (sanitised: no payloads, no keys).
    pub message: String,
    /// The offending field.
    pub param: Option<String>,
    /// When to retry.
    pub retry_after: Option<Duration>,
    /// The upstream's own error code, when it refused the request (`context_length_exceeded`).
    pub code: Option<String>,
    /// The status when it is not the table's: the upstream's own 4xx for a refused request.
    pub status_override: Option<u16>,
}

impl ServiceError {
    /// An error of `kind`.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            code: None,
            status_override: None,
        }
    }

    /// A 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ServiceError {
        ServiceError {
            param: Some(param.into()),
            ..ServiceError::new(ErrorType::InvalidRequest, message)
        }
    }

    /// With a `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> ServiceError {
        self.retry_after = Some(d);
        self
    }

    /// Its status: the table's, or the upstream's own for a refused request.
    pub fn status(&self) -> u16 {
        self.status_override.unwrap_or(self.kind.status())
    }

    /// The body every frontend shows: `{"error": {"type", "message", "param"?, "code"?}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut e = serde_json::Map::new();
        e.insert("type".into(), self.kind.as_str().into());
        e.insert("message".into(), self.message.clone().into());
        if let Some(p) = &self.param {
            e.insert("param".into(), p.clone().into());
        }
        if let Some(c) = &self.code {
            e.insert("code".into(), c.clone().into());
        }
        serde_json::json!({ "error": e })
    }

    /// One line for MCP tool errors: `type (status): message [field: param]`.
    pub fn line(&self) -> String {
        match &self.param {
            Some(p) => format!(
                "{} ({}): {} [field: {p}]",
                self.kind,
                self.status(),
                self.message
            ),
            None => format!("{} ({}): {}", self.kind, self.status(), self.message),
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line())
    }
}

impl std::error::Error for ServiceError {}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> ServiceError {
        let kind = ErrorType::of_engine(&e);
        let (param, code, status_override) = match &e {
            EngineError::UnknownModel { .. } | EngineError::UnsupportedKind { .. } => {
                (Some("model".to_owned()), None, None)
            }
            // The caller's own error, as the upstream judged it: its status, code and field.
            EngineError::Refused {
                status,
                code,
                param,
                ..
            } => (param.clone(), code.clone(), Some(*status)),
            _ => (None, None, None),
        };
        ServiceError {
            kind,
            message: im_metrics::sanitize_text(&e.to_string()),
            param,
            retry_after: e.retry_after(),
            code,
            status_override,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_type_has_its_status() {
        let spec = [
            ("invalid_request", 400),
            ("unauthorized", 401),
            ("unknown_model", 404),
            ("queue_full", 429),
            ("deadline_exceeded", 504),
            ("upstream_error", 502),
            ("upstream_unavailable", 503),
            ("payload_too_large", 413),
            ("shutting_down", 503),
        ];
        for (name, status) in spec {
            let t = ErrorType::ALL
                .into_iter()
                .find(|t| t.as_str() == name)
                .unwrap_or_else(|| panic!("SPEC type {name} missing"));
            assert_eq!(t.status(), status, "{name}");
        }
    }
}
