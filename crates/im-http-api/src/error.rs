//! The one error table of SPEC §3: every cause has a stable `type` and one status, used for JSON
//! bodies, SSE error events and (through `im-mcp`) MCP tool errors alike.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use im_engine::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// A stable error cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Malformed JSON, a wrong type, a missing or out-of-range field.
    InvalidRequest,
    /// No or a wrong API key.
    Unauthorized,
    /// The model is not configured.
    UnknownModel,
    /// The model does not serve this kind.
    UnsupportedKind,
    /// No such route.
    NotFound,
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// The body is over the limit.
    PayloadTooLarge,
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

/// The table: every type, its HTTP status. One place; tests walk it.
pub const TABLE: &[(ErrorType, u16)] = &[
    (ErrorType::InvalidRequest, 400),
    (ErrorType::Unauthorized, 401),
    (ErrorType::UnknownModel, 404),
    (ErrorType::NotFound, 404),
    (ErrorType::MethodNotAllowed, 405),
    (ErrorType::PayloadTooLarge, 413),
    (ErrorType::UnsupportedKind, 422),
    (ErrorType::QueueFull, 429),
    (ErrorType::RateLimited, 429),
    (ErrorType::Internal, 500),
    (ErrorType::UpstreamError, 502),
    (ErrorType::UpstreamUnavailable, 503),
    (ErrorType::ShuttingDown, 503),
    (ErrorType::DeadlineExceeded, 504),
];

impl ErrorType {
    /// Its HTTP status.
    pub fn status(self) -> StatusCode {
        let code = TABLE
            .iter()
            .find(|(t, _)| *t == self)
            .map_or(500, |(_, c)| *c);
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::UnknownModel => "unknown_model",
            ErrorType::UnsupportedKind => "unsupported_kind",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::QueueFull => "queue_full",
            ErrorType::RateLimited => "rate_limited",
            ErrorType::DeadlineExceeded => "deadline_exceeded",
            ErrorType::UpstreamError => "upstream_error",
            ErrorType::UpstreamUnavailable => "upstream_unavailable",
            ErrorType::ShuttingDown => "shutting_down",
            ErrorType::Internal => "internal",
        }
    }

    /// The type of an engine error: one exhaustive match, checked by the compiler.
    fn from_engine(e: &EngineError) -> ErrorType {
        match e {
            EngineError::QueueFull { .. } => ErrorType::QueueFull,
            EngineError::UnknownModel { .. } => ErrorType::UnknownModel,
            EngineError::UnsupportedKind { .. } => ErrorType::UnsupportedKind,
            EngineError::DeadlineExceeded { .. } => ErrorType::DeadlineExceeded,
            EngineError::Upstream { .. } => ErrorType::UpstreamError,
            EngineError::UpstreamUnavailable { .. } => ErrorType::UpstreamUnavailable,
            EngineError::ShuttingDown => ErrorType::ShuttingDown,
            EngineError::Refused { .. } => ErrorType::InvalidRequest,
            EngineError::Internal => ErrorType::Internal,
        }
    }
}

/// The body of every error: `{"error": {"type", "message", "param"}}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error's fields.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The stable cause (see the table in the README).
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "invalid_request")]
    pub kind: ErrorType,
    /// What went wrong, for a person.
    pub message: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The upstream's own error code when it refused the request (`context_length_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// An error on its way to the caller.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The cause.
    pub kind: ErrorType,
    /// The message.
    pub message: String,
    /// The offending field.
    pub param: Option<String>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The upstream's error code, when it refused the request.
    pub code: Option<String>,
    /// The status, when it is not the table's (the upstream's own 4xx for a refused request).
    pub status: Option<StatusCode>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            code: None,
            status: None,
        }
    }

    /// A 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(ErrorType::InvalidRequest, message)
        }
    }

    /// With a `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> ApiError {
        self.retry_after = Some(d);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                message: self.message.clone(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }

    /// The JSON text of the body (for SSE error events and MCP).
    pub fn json(&self) -> String {
        serde_json::to_string(&self.body())
            .unwrap_or_else(|_| "{\"error\":{\"type\":\"internal\"}}".into())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let kind = ErrorType::from_engine(&e);
        let (param, code, status) = match &e {
            EngineError::UnknownModel { .. } | EngineError::UnsupportedKind { .. } => {
                (Some("model".to_owned()), None, None)
            }
            // The caller's own error, as the upstream judged it: its status, code and field.
            EngineError::Refused {
                status,
                code,
                param,
                ..
            } => (
                param.clone(),
                code.clone(),
                StatusCode::from_u16(*status).ok(),
            ),
            _ => (None, None, None),
        };
        ApiError {
            kind,
            message: im_metrics::sanitize_text(&e.to_string()),
            param,
            retry_after: e.retry_after(),
            code,
            status,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| self.kind.status());
        let mut r = (status, axum::Json(self.body())).into_response();
        if let Some(d) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// The error responses every queued route can give (its rows of the table), for the OpenAPI
/// document. Never constructed: handlers answer with [`ApiError`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum QueuedErrors {
    /// Invalid request: `param` names the offending field.
    #[response(status = 400)]
    InvalidRequest(ErrorBody),
    /// No or a wrong API key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Unknown model; the message lists the valid ones.
    #[response(status = 404)]
    UnknownModel(ErrorBody),
    /// The body is over the limit.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The model does not serve this kind; the message lists the ones that do.
    #[response(status = 422)]
    UnsupportedKind(ErrorBody),
    /// Queue full or rate limited; see `Retry-After`.
    #[response(status = 429)]
    QueueFull(ErrorBody),
    /// The upstream refused or failed the request.
    #[response(status = 502)]
    UpstreamError(ErrorBody),
    /// The upstream is unavailable, or im is shutting down; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The queue deadline passed before dispatch.
    #[response(status = 504)]
    DeadlineExceeded(ErrorBody),
}
