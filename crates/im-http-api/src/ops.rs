//! Operations: metrics (JSON and Prometheus), queue status, health and readiness.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{ErrorBody, HttpError};
use crate::state::AppState;

/// Request counts, queue wait and processing percentiles, throughput per kind and model.
#[utoipa::path(get, path = "/get_request_metrics", tag = "operations",
    responses((status = 200, description = "Request metrics", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn request_metrics(State(st): State<AppState>) -> Response {
    axum::Json(st.service.request_metrics()).into_response()
}

/// Error counts by kind, model and class, and the last 100 errors (sanitized): every tenant's
/// for an `admin` or `operator` key, the caller's own tenant's for the rest.
#[utoipa::path(get, path = "/get_error_metrics", tag = "operations",
    responses((status = 200, description = "Error metrics", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn error_metrics(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<im_service::Caller>,
) -> Response {
    axum::Json(st.service.error_metrics(&caller.principal())).into_response()
}

/// Per group: depth, oldest wait, in flight; per lane: active group, loaded model, state, breaker.
#[utoipa::path(get, path = "/queue-status", tag = "operations",
    responses((status = 200, description = "Queue status", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn queue_status(State(st): State<AppState>) -> Response {
    axum::Json(st.service.queue_status().await).into_response()
}

/// Liveness: the process answers. Needs no key.
/// A report per backend (lane): health, requests, success rate, latency, queue, loaded models.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "`{accepting, queue_size, in_flight, backends: [{name, health, breaker, requests, success_rate, avg_latency_ms, p95_latency_ms, queue_size, in_flight, loaded_models, active}]}`", body = Object),
              (status = 401, description = "No or a wrong API key", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn status(State(st): State<AppState>) -> Response {
    axum::Json(st.service.backend_status().await).into_response()
}

/// The query of `GET /placement`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlacementQuery {
    /// The kind of work: txt2txt, txt2img, img2img, img2txt, embed, rerank, tts, stt.
    pub kind: String,
    /// The model.
    pub model: String,
    /// Only this backend (a pinned request).
    pub backend: Option<String>,
    /// A completion's prompt to look up in each backend's prompt cache (prefix-aware placement):
    /// how much of it each was sent, counting only your own tenant's requests (every tenant's
    /// for an admin or operator key).
    pub prompt: Option<String>,
    /// A chat's messages to look up likewise: a JSON array as a chat request sends it.
    pub messages: Option<String>,
}

/// Where a request would go now and why (the fleet's `select_backend_for_inference`): the
/// backend, the reason (model loaded there, a load, the models it would unload), its expected
/// start, and every backend considered. With `prompt` or `messages`, also which backend holds
/// most of that prompt and how much (`prompt`, and `prompt_cached_chars` per backend), as far as
/// the caller's own tenant sent it. Nothing is queued.
#[utoipa::path(get, path = "/placement", tag = "operations", params(PlacementQuery),
    responses((status = 200, description = "`{kind, model, backend, routing, reason, model_loaded, expected_start_ms, evicts, backends: [{backend, healthy, can_host, model_loaded, eligible, ahead, expected_start_ms, prompt_cached_chars?}], prompt?: {backend, cached_chars, prompt_chars, cached_share, own_tenant_only}}`", body = Object),
              (status = 400, description = "An unknown kind or backend, or `messages` that is not a JSON array", body = ErrorBody),
              (status = 401, description = "No or a wrong API key", body = ErrorBody),
              (status = 404, description = "An unknown model", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn placement(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<im_service::Caller>,
    query: Result<axum::extract::Query<PlacementQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match kind_and_model(query) {
        Ok(q) => q,
        Err(e) => return crate::error::HttpError::from(e).into_response(),
    };
    let probe = match (q.prompt, q.messages.as_deref()) {
        (_, Some(m)) => match serde_json::from_str::<Vec<serde_json::Value>>(m)
            .map_err(|e| {
                im_service::ServiceError::invalid(
                    "messages",
                    format!("not a JSON array of messages: {e}"),
                )
            })
            .and_then(im_service::PromptProbe::messages)
        {
            Ok(probe) => Some(probe),
            Err(e) => return crate::error::HttpError::from(e).into_response(),
        },
        (Some(p), None) => Some(im_service::PromptProbe::Text(p)),
        (None, None) => None,
    };
    match st
        .service
        .placement(
            &caller.principal(),
            &q.kind,
            &q.model,
            q.backend.as_deref(),
            probe.as_ref(),
        )
        .await
    {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => crate::error::HttpError::from(e).into_response(),
    }
}

/// A query that names a kind and a model, or the error (400) that says so.
fn kind_and_model<Q>(
    query: Result<axum::extract::Query<Q>, axum::extract::rejection::QueryRejection>,
) -> Result<Q, im_service::ServiceError> {
    query.map(|q| q.0).map_err(|e| {
        im_service::ServiceError::invalid(
            "query",
            format!("{} (needs kind and model)", e.body_text()),
        )
    })
}

/// The query of `GET /v1/queue/estimate`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EstimateQuery {
    /// The kind of work: txt2txt, txt2img, img2img, img2txt, embed, rerank, tts, stt.
    pub kind: String,
    /// The model.
    pub model: String,
}

/// The predicted wait of a request sent now: what runs, the groups the policy serves first and
/// the model's own queue, at learned service and load times. Nothing is queued.
#[utoipa::path(get, path = "/v1/queue/estimate", tag = "operations", params(EstimateQuery),
    responses((status = 200, description = "`{kind, model, predicted_wait_ms}` (null: no backend may serve it now)", body = Object),
              (status = 400, description = "An unknown kind", body = ErrorBody),
              (status = 401, description = "No or a wrong API key", body = ErrorBody),
              (status = 404, description = "An unknown model", body = ErrorBody),
              (status = 422, description = "The model does not serve the kind", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn estimate(
    State(st): State<AppState>,
    query: Result<axum::extract::Query<EstimateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match kind_and_model(query) {
        Ok(q) => q,
        Err(e) => return crate::error::HttpError::from(e).into_response(),
    };
    match st.service.estimate(&q.kind, &q.model).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => crate::error::HttpError::from(e).into_response(),
    }
}

#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Alive", body = Object)))]
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Readiness: im accepts work (not draining), every upstream answers and its breaker is closed.
/// Needs no key; without a valid key the body says only `ready`.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready", body = Object), (status = 503, description = "Not ready (draining, or see `lanes`)", body = Object)))]
pub async fn ready(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let detailed = !st.service.auth_enabled()
        || st
            .service
            .authenticate(crate::state::key_of(&headers), false)
            .is_ok();
    let (ok, body) = st.service.readiness(detailed).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Prometheus text (metric names in the README); series labelled by tenant: every tenant's for
/// an `admin` or `operator` key, the caller's own tenant's for the rest.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn metrics(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<im_service::Caller>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.service.prometheus(&caller.principal()),
    )
        .into_response()
}

/// Reload the configuration file (as SIGHUP does): keys, priorities, policy and bounds, limits,
/// deadlines and rate limits change without dropping queued or running work. A file that does
/// not validate, or changes what needs a restart, is refused and the running configuration
/// stays. Needs an `admin` key.
#[utoipa::path(post, path = "/admin/reload", tag = "operations",
    responses(
        (status = 200, description = "`{reloaded: true, changed: [setting, ...]}`", body = Object),
        (status = 400, description = "Refused: the file is invalid or changes settings that need a restart (named); nothing changed", body = crate::ErrorBody),
        (status = 401, description = "No or a wrong API key", body = crate::ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = crate::ErrorBody),
        (status = 404, description = "This server was not started from a configuration it can reload", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn reload(State(st): State<AppState>) -> Result<Response, HttpError> {
    let Some(r) = &st.reload else {
        return Err(HttpError::new(
            im_service::ErrorType::NotFound,
            "this server cannot reload its configuration",
        ));
    };
    match r.reload().await {
        Ok(changed) => {
            tracing::info!(?changed, "configuration reloaded");
            Ok(
                axum::Json(serde_json::json!({"reloaded": true, "changed": changed}))
                    .into_response(),
            )
        }
        Err(why) => {
            tracing::warn!(error = %why, "configuration reload refused");
            Err(HttpError::invalid("config", why))
        }
    }
}

/// The live dashboard: one page with its scripts and styles inside (no CDN, works offline). It
/// asks for a key with the `metrics` scope, then follows the WebSocket topics `queue`, `lanes`,
/// `requests`, `timeline` and `errors`. The page itself holds no data, so it needs no key.
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "The dashboard (HTML)", content_type = "text/html")))]
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}
