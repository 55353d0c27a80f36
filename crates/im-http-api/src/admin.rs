//! LocalAI's management routes (model gallery, backends), relayed to an upstream for keys with the
//! `admin` scope only. The routes that load or unload a model (`/backend/load`,
//! `/backend/shutdown`) are not relayed: the scheduler owns what is resident, and a path with
//! dot-segments (which LocalAI would resolve to one of them) is refused.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use im_service::{Caller, ServiceError};

use crate::error::HttpError;
use crate::respond::body;
use crate::state::AppState;

/// Relay a management request to an upstream (`X-Im-Lane`, default 0) and pass its answer back
/// whatever its status. The routes are the table's (`crate::routes`) with this handler.
#[utoipa::path(post, path = "/models/apply", tag = "admin",
    description = "LocalAI's management routes are relayed to the upstream (`X-Im-Lane`, default 0) for `admin` keys: `/models/available`, `/models/galleries`, `/models/apply`, `/models/delete/{name}`, `/models/jobs[/{uuid}]`, `/backends[/...]`, `/backend/monitor`, `/system`. Any method; the answer is the upstream's, status included.",
    request_body(content = Object, description = "As LocalAI takes it"),
    responses(
        (status = 200, description = "The upstream's answer", body = Object),
        (status = 401, description = "No or a wrong API key", body = crate::ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = crate::ErrorBody),
        (status = 503, description = "The upstream did not answer", body = crate::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn relay(
    State(st): State<AppState>,
    Extension(_caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let lane = match headers.get("x-im-lane") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or_else(|| ServiceError::invalid("x-im-lane", "must be an upstream index"))?,
    };
    if !im_edge::proxy::is_clean_path(uri.path()) {
        // LocalAI would resolve `/system/../backend/shutdown` to a route that is never relayed.
        return Err(HttpError::invalid(
            "path",
            "dot-segments (`.`, `..`, also percent-encoded) and encoded separators are not relayed",
        ));
    }
    let bytes = body(b, st.service.body_limit())?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let answer = st
        .service
        .manage(lane, method.as_str(), path, content_type, bytes)
        .await
        .map_err(|mut e| {
            // The lane is the `X-Im-Lane` header here.
            if e.param.as_deref() == Some("lane") {
                e.param = Some("x-im-lane".into());
            }
            e
        })?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = HeaderValue::from_str(&answer.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((status, [(header::CONTENT_TYPE, ct)], answer.body).into_response())
}
