//! Errors over HTTP: the service's one table ([`im_service::ErrorType`]) rendered as a status,
//! a JSON body and `Retry-After`, and the same table generating the OpenAPI error responses.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use im_service::{ErrorType, ServiceError};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, ResponseBuilder};

/// The body of every error: `{"error": {"type", "message", "param", "code"}}`.
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
    #[schema(example = "invalid_request")]
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The upstream's own error code when it refused the request (`context_length_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A service error on its way to an HTTP caller.
#[derive(Clone, Debug)]
pub struct HttpError(pub ServiceError);

impl HttpError {
    /// An error of `kind`.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> HttpError {
        HttpError(ServiceError::new(kind, message))
    }

    /// A 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> HttpError {
        HttpError(ServiceError::invalid(param, message))
    }
}

impl From<ServiceError> for HttpError {
    fn from(e: ServiceError) -> HttpError {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(e.body())).into_response();
        if let Some(d) = e.retry_after
            && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// The error responses of the queued inference routes, for the OpenAPI document: generated from
/// the table ([`ErrorType::QUEUED`]), so the document cannot drift from what the code answers.
pub struct QueuedErrors;

impl utoipa::IntoResponses for QueuedErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut by_status: BTreeMap<u16, Vec<ErrorType>> = BTreeMap::new();
        for t in ErrorType::QUEUED {
            by_status.entry(t.status()).or_default().push(t);
        }
        by_status
            .into_iter()
            .map(|(status, types)| {
                let description = types
                    .iter()
                    .map(|t| format!("`{}`: {}", t.as_str(), t.describe()))
                    .collect::<Vec<_>>()
                    .join("; ");
                let response = ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build();
                (status.to_string(), RefOr::T(response))
            })
            .collect()
    }
}
