//! The seeds' first dialect: task models with versions. `POST /infer` (`{text, model, version?,
//! parameters?}`) and `POST /infer/batch` (`{requests: [...]}`) answer envelopes
//! `{success, result, model_used, latency_ms, request_id, timestamp, metadata}`; `GET /models`
//! lists the registry. A thin frontend over the service's task models (`im_service::Registry`).

use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use im_service::api::bodies::TaskRequest;
use im_service::{Caller, Route, ServiceError};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::{HttpError, QueuedErrors};
use crate::respond::{body, json_route};
use crate::state::{AppState, Arrived};

/// `POST /infer/batch`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBatch {
    /// The requests, each like `POST /infer`'s body; answered in the same order (at most
    /// `http.max_batch_requests`, 32 by default).
    #[schema(value_type = Vec<TaskRequest>, min_items = 1, max_items = 32)]
    pub requests: Vec<Value>,
    /// Run each request as a durable job (`/v1/jobs`) and answer their ids at once (for
    /// callbacks, submit to `/v1/jobs` with a `callback_url`).
    #[serde(default, rename = "async")]
    pub run_async: bool,
}

/// Run a task model on one text: a summary, a sentiment label with its score, generated text.
/// Scheduled on the txt2txt queue like any request.
#[utoipa::path(post, path = "/infer", tag = "tasks", request_body = TaskRequest,
    responses(
        (status = 200, description = "`{success: true, result, model_used: \"name:version\", latency_ms, request_id, timestamp, metadata: {model_type, kind, queue_wait_ms, processing_ms}}`", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn infer(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Task, &st, &caller, arrived, b).await
}

/// Run several task requests: each is queued in its group like any request (a batch does not
/// jump the queue) and answered in order; one failing does not fail the others.
#[utoipa::path(post, path = "/infer/batch", tag = "tasks", request_body = TaskBatch,
    responses(
        (status = 200, description = "`{results: [envelope, ...], succeeded, failed, latency_ms}` in request order", body = Object),
        (status = 202, description = "With `async: true`: `{jobs: [{id, status, status_url}]}` in request order", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn infer_batch(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let started = Instant::now();
    let batch: TaskBatch = im_service::api::parse(&body(b, st.service.body_limit())?)?;
    let max = st.service.max_batch_requests();
    if batch.requests.is_empty() || batch.requests.len() > max {
        return Err(HttpError::invalid(
            "requests",
            format!("must hold 1 to {max} requests"),
        ));
    }
    if batch.run_async {
        return submit_batch(&st, &caller, batch).await;
    }
    let runs = batch.requests.into_iter().enumerate().map(|(i, raw)| {
        let caller = Caller {
            request_id: format!("{}-{i}", caller.request_id),
            ..caller.clone()
        };
        let service = st.service.clone();
        async move {
            let parsed = serde_json::from_value::<TaskRequest>(raw)
                .map_err(|e| ServiceError::invalid(format!("requests[{i}]"), e.to_string()));
            let (_, envelope) = service.task(parsed, &caller, Instant::now()).await;
            serde_json::to_value(envelope).unwrap_or(Value::Null)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let succeeded = results.iter().filter(|r| r["success"] == true).count();
    Ok(axum::Json(json!({
        "results": results,
        "succeeded": succeeded,
        "failed": results.len() - succeeded,
        "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
    }))
    .into_response())
}

/// `async: true`: every item becomes a job on `/infer`; `{jobs: [{id, status, status_url}]}` in
/// request order. Items are checked first, so either all become jobs or none does.
async fn submit_batch(
    st: &AppState,
    caller: &Caller,
    batch: TaskBatch,
) -> Result<Response, HttpError> {
    let jobs = crate::jobs::jobs_of(st)?;
    for (i, raw) in batch.requests.iter().enumerate() {
        serde_json::from_value::<TaskRequest>(raw.clone())
            .map_err(|e| HttpError::invalid(format!("requests[{i}]"), e.to_string()))?;
    }
    let owner = caller.tenant.to_string();
    let mut out = Vec::with_capacity(batch.requests.len());
    for raw in batch.requests {
        let s = crate::jobs::JobSubmission {
            kind: None,
            route: Some("/infer".to_owned()),
            body: raw,
            callback_url: None,
            idempotency_key: None,
        };
        let (job, _) = crate::jobs::submit(st, jobs, owner.clone(), &s, None).await?;
        out.push(json!({"id": job.id, "status": job.status.as_str(), "status_url": format!("/v1/jobs/{}", job.id)}));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"jobs": out}))).into_response())
}

/// The task models: names, versions, default version, kind, type and description.
#[utoipa::path(get, path = "/models", tag = "tasks",
    responses((status = 200, description = "`{models: [{name, versions, default_version, kind, model_type, description, aliases, upstream}]}`", body = Object),
              (status = 401, description = "No or a wrong API key", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn models(State(st): State<AppState>) -> Response {
    axum::Json(st.service.registry().list()).into_response()
}
