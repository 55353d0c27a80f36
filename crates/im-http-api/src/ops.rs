//! Operations: metrics (JSON and Prometheus), queue status, health and readiness.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ErrorBody;
use crate::state::AppState;

/// Request counts, queue wait and processing percentiles, throughput per kind and model.
#[utoipa::path(get, path = "/get_request_metrics", tag = "operations",
    responses((status = 200, description = "Request metrics", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn request_metrics(State(st): State<AppState>) -> Response {
    axum::Json(st.engine.metrics().request_metrics()).into_response()
}

/// Error counts by kind, model and class, and the last 100 errors (sanitized).
#[utoipa::path(get, path = "/get_error_metrics", tag = "operations",
    responses((status = 200, description = "Error metrics", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn error_metrics(State(st): State<AppState>) -> Response {
    axum::Json(st.engine.metrics().error_metrics()).into_response()
}

/// Queue status as JSON.
pub async fn queue_json(st: &AppState) -> Value {
    let Some(s) = st.engine.status().await else {
        return json!({"accepting": false, "groups": [], "lanes": []});
    };
    let groups: Vec<Value> = s
        .groups
        .iter()
        .map(|g| json!({"kind": g.kind.as_str(), "model": g.model, "depth": g.depth,
                        "oldest_wait_ms": g.oldest_wait.map(|w| w.as_secs_f64() * 1000.0), "in_flight": g.in_flight}))
        .collect();
    let lanes: Vec<Value> = s
        .lanes
        .iter()
        .map(|l| json!({"name": l.name, "active": l.active.as_ref().map(|(k, m)| json!({"kind": k.as_str(), "model": m})),
                        "loaded": l.loaded, "in_flight": l.in_flight, "state": l.phase, "breaker": l.breaker.as_str()}))
        .collect();
    let c = &s.counters;
    json!({
        "accepting": s.accepting, "waiting": s.waiting, "in_flight": s.in_flight,
        "groups": groups, "lanes": lanes,
        "counters": {"accepted": c.accepted, "rejected": c.rejected, "dispatched": c.dispatched, "completed": c.completed,
                     "expired": c.expired, "cancelled": c.cancelled, "failed": c.failed, "retried": c.retried,
                     "exhausted": c.exhausted, "switches": c.switches, "model_switches": c.model_switches},
    })
}

/// Per group: depth, oldest wait, in flight; per lane: active group, loaded model, state, breaker.
#[utoipa::path(get, path = "/queue-status", tag = "operations",
    responses((status = 200, description = "Queue status", body = Object), (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn queue_status(State(st): State<AppState>) -> Response {
    axum::Json(queue_json(&st).await).into_response()
}

/// Liveness: the process answers. Needs no key.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Alive", body = Object)))]
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Readiness: im accepts work (not draining), every upstream answers and its breaker is closed.
/// Needs no key; without a valid key the body says only `ready`.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready", body = Object), (status = 503, description = "Not ready (draining, or see `lanes`)", body = Object)))]
pub async fn ready(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accepting = st.engine.status().await.is_some_and(|s| s.accepting);
    let lanes = st.engine.readiness().await;
    let ok = accepting && !lanes.is_empty() && lanes.iter().all(|l| l.ready());
    let detailed = !st.auth_enabled() || st.keys.check_headers(&headers).is_some();
    let body = if detailed {
        json!({"ready": ok, "accepting": accepting, "lanes": lanes.iter().map(|l| json!({"name": l.name, "reachable": l.reachable,
            "breaker": l.breaker, "error": l.error})).collect::<Vec<_>>()})
    } else {
        json!({"ready": ok})
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Prometheus text (metric names in the README).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.engine.metrics().render(),
    )
        .into_response()
}
