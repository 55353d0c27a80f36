//! Durable jobs over HTTP: `POST /v1/jobs` (any JSON inference body im accepts, by `kind` or
//! `route`), `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/result`, `DELETE /v1/jobs/{id}`,
//! `GET /v1/jobs`, and signed job submissions on `POST /webhooks/ingest`. A job stands for one
//! of the service's routes ([`im_service::Route`]) and runs through the service exactly as that
//! route's HTTP request does (im-app's job runner), so it is validated, queued, retried and
//! answered the same way.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use im_jobs::{JobError, Jobs, Request as JobRequest, Status, Stored, Submission};
use im_service::{Caller, ErrorType, Route, ServiceError};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::HttpError;
use crate::respond::body;
use crate::state::AppState;

/// `POST /v1/jobs`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSubmission {
    /// The kind of work, standing for its route: `txt2txt`, `txt2img`, `img2img`, `img2txt`,
    /// `embed`, `rerank`, `tts`. Give `kind` or `route`.
    pub kind: Option<String>,
    /// The route the body is for, e.g. `/v1/chat/completions` or `/infer`.
    pub route: Option<String>,
    /// The request body, exactly as that route takes it (no `stream`).
    #[schema(value_type = Object)]
    pub body: Value,
    /// Where to POST the job's final state (Standard Webhooks signed).
    #[schema(max_length = 2048)]
    pub callback_url: Option<String>,
    /// A repeated submission with the same key (per API key) answers the first job.
    #[schema(max_length = 256)]
    pub idempotency_key: Option<String>,
}

/// The job service, or 404 when jobs are off.
pub(crate) fn jobs_of(st: &AppState) -> Result<&Jobs, HttpError> {
    st.jobs.get().ok_or_else(|| {
        HttpError::new(
            ErrorType::NotFound,
            "durable jobs are off on this server (see `[jobs]` in the configuration)",
        )
    })
}

fn job_error(e: JobError) -> HttpError {
    let err = match &e {
        JobError::NotFound(_) | JobError::IngestOff => {
            ServiceError::new(ErrorType::NotFound, e.to_string())
        }
        JobError::Final { .. } | JobError::Replayed(_) => {
            ServiceError::new(ErrorType::Conflict, e.to_string())
        }
        JobError::IdempotencyKeyReused(_) => ServiceError {
            param: Some("idempotency_key".into()),
            ..ServiceError::new(ErrorType::IdempotencyKeyReused, e.to_string())
        },
        JobError::Invalid { field, message } => ServiceError::invalid(*field, message.clone()),
        JobError::Unverified(_) => ServiceError::new(ErrorType::Unauthorized, e.to_string()),
        JobError::Quota(_) => ServiceError::new(ErrorType::QueueFull, e.to_string())
            .retry_after(std::time::Duration::from_secs(60)),
        JobError::Store(_) => ServiceError::new(ErrorType::Internal, e.to_string()),
    };
    HttpError(err)
}

/// Turn a submission into the request a job runs, or a 400 naming the field.
pub fn job_request(s: &JobSubmission) -> Result<JobRequest, ServiceError> {
    let kinds = || {
        crate::routes::job_routes()
            .filter_map(Route::job_kind)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let route = match (&s.kind, &s.route) {
        (Some(_), Some(_)) => return Err(ServiceError::invalid("route", "give `kind` or `route`, not both")),
        (None, None) => return Err(ServiceError::invalid("kind", format!("give `kind` ({}) or `route`", kinds()))),
        (Some(kind), None) => Route::for_job_kind(kind)
            .ok_or_else(|| ServiceError::invalid("kind", format!("{:?} is not a kind a job can run; the kinds: {} (stt takes a file upload: not a job)", im_service::truncate(kind, 32), kinds())))?,
        (None, Some(route)) => crate::routes::job_routes().find(|r| r.path() == route).ok_or_else(|| {
            let routes: Vec<&str> = crate::routes::job_routes().map(Route::path).collect();
            ServiceError::invalid("route", format!("{:?} is not a route a job can run; the routes: {}", im_service::truncate(route, 64), routes.join(", ")))
        })?,
    };
    if !s.body.is_object() {
        return Err(ServiceError::invalid(
            "body",
            "must be a JSON object: the route's request body",
        ));
    }
    if s.body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ServiceError::invalid(
            "body.stream",
            "a job is not streamed; leave `stream` out and read the result",
        ));
    }
    if let Some(url) = &s.callback_url {
        im_jobs::guard::parse(url)
            .map_err(|e| ServiceError::invalid("callback_url", e.to_string()))?;
    }
    if s.idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ServiceError::invalid(
            "idempotency_key",
            "1 to 256 characters",
        ));
    }
    Ok(JobRequest {
        route: route.path().to_owned(),
        body: s.body.clone(),
    })
}

/// Who owns what `caller` submits (its tenant), and whether it sees every tenant's jobs (an
/// `admin` or `operator` key).
fn owner(st: &AppState, caller: &Caller) -> (String, bool) {
    (
        caller.tenant.to_string(),
        st.service.sees_all(&caller.principal()),
    )
}

fn accepted(job: &im_jobs::Job, new: bool) -> Response {
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let url = format!("/v1/jobs/{}", job.id);
    (
        status,
        [(header::LOCATION, url.clone())],
        axum::Json(json!({"id": job.id, "status": job.status.as_str(), "status_url": url})),
    )
        .into_response()
}

/// Submit `s` as `owner` (a tenant, within its stored-jobs quota); the job and whether it is
/// new (not an idempotent repeat).
pub async fn submit(
    st: &AppState,
    jobs: &Jobs,
    owner: String,
    s: &JobSubmission,
    idempotency_header: Option<String>,
) -> Result<(im_jobs::Job, bool), HttpError> {
    let request = job_request(s)?;
    let quota = st
        .service
        .tenants()
        .job_quota(&im_service::TenantId::new(&owner));
    let sub = Submission {
        quota: Some(quota),
        owner,
        request,
        callback_url: s.callback_url.clone(),
        idempotency_key: s.idempotency_key.clone().or(idempotency_header),
    };
    jobs.submit(sub).await.map_err(job_error)
}

/// Accept a job: any JSON inference body im takes, run without a connection held open. The
/// job survives a restart of im (queued again, or run again if it was running: at least once);
/// its result is kept for `jobs.keep_hours`; a `callback_url` gets its end, signed.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobSubmission,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as `idempotency_key`")),
    responses(
        (status = 202, description = "`{id, status: queued, status_url}`", body = Object),
        (status = 200, description = "An idempotent repeat: the first job's `{id, status, status_url}`", body = Object),
        (status = 400, description = "Invalid submission, naming the field", body = crate::ErrorBody),
        (status = 401, description = "No or a wrong API key", body = crate::ErrorBody),
        (status = 404, description = "Jobs are off on this server", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let jobs = jobs_of(&st)?;
    let bytes = body(b, st.service.body_limit())?;
    let budget = st.service.engine().config().limits.max_bytes_total;
    if bytes.len() as u64 > budget {
        // It could never be admitted to the queues: refused now, not left `running` forever.
        return Err(HttpError::new(
            ErrorType::PayloadTooLarge,
            format!("the job's request is over the queues' byte budget of {budget} bytes"),
        ));
    }
    let s: JobSubmission = im_service::api::parse(&bytes)?;
    let header_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (job, new) = submit(&st, jobs, owner(&st, &caller).0, &s, header_key).await?;
    Ok(accepted(&job, new))
}

async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<im_jobs::Job, HttpError> {
    let jobs = jobs_of(st)?;
    let (me, all) = owner(st, caller);
    let job = if all {
        jobs.get_any(id).await
    } else {
        jobs.get(&me, id).await
    };
    job.map_err(job_error)
}

/// A job: its status, timings, attempts, result (inline JSON, or where to fetch a large or
/// binary one), error, and its webhook's delivery log.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "`{id, status: queued|running|succeeded|failed|cancelled, status_url, route, attempts, created_ms, started_ms, finished_ms, result, error, webhook}`", body = Object),
        (status = 404, description = "No such job for this key", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = visible(&st, &caller, &id).await?;
    Ok(axum::Json(im_jobs::view(&job)).into_response())
}

/// A succeeded job's result as the route answered it (its content type), inline or from its
/// file.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The answer, as the route gave it"),
        (status = 404, description = "No such job, or no result (yet)", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn result(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = visible(&st, &caller, &id).await?;
    let none = || {
        HttpError::new(
            ErrorType::NotFound,
            format!("job {id:?} has no result: it is {}", job.status.as_str()),
        )
    };
    match &job.result {
        Some(Stored::Inline { value }) => Ok(axum::Json(value.clone()).into_response()),
        Some(Stored::File {
            name, content_type, ..
        }) => {
            let bytes = jobs_of(&st)?
                .result(name)
                .await
                .map_err(job_error)?
                .ok_or_else(none)?;
            Ok(([(header::CONTENT_TYPE, content_type.clone())], bytes).into_response())
        }
        None => Err(none()),
    }
}

/// Cancel a queued or running job (its queued request is cancelled); 409 if it is final.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The cancelled job", body = Object),
        (status = 404, description = "No such job for this key", body = crate::ErrorBody),
        (status = 409, description = "The job is final already", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = visible(&st, &caller, &id).await?;
    let job = jobs_of(&st)?
        .cancel(&job.owner, &id)
        .await
        .map_err(job_error)?;
    Ok(axum::Json(im_jobs::view(&job)).into_response())
}

/// `GET /v1/jobs` filters.
#[derive(Clone, Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this status.
    pub status: Option<String>,
    /// At most this many (1-1000, default 100), newest first.
    pub limit: Option<usize>,
    /// The page after this one: `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The caller's jobs, newest first (an `admin` key sees everyone's).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses(
        (status = 200, description = "`{jobs: [job, ...], next_cursor}`: `next_cursor` (when not null) asks for the next page", body = Object),
        (status = 400, description = "Invalid filter", body = crate::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let jobs = jobs_of(&st)?;
    let Query(q) = q.map_err(|e| HttpError::invalid("query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(serde_json::from_value::<Status>(json!(s)).map_err(|_| {
            HttpError::invalid(
                "status",
                "one of queued, running, succeeded, failed, cancelled",
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(HttpError::invalid("limit", "1 to 1000"));
    }
    if q.cursor.as_ref().is_some_and(|c| c.len() > 128) {
        return Err(HttpError::invalid(
            "cursor",
            "not a cursor this server gave",
        ));
    }
    let (me, all) = owner(&st, &caller);
    let (found, next) = jobs
        .list((!all).then_some(me.as_str()), status, limit, q.cursor)
        .await
        .map_err(job_error)?;
    let views: Vec<Value> = found.iter().map(im_jobs::view).collect();
    Ok(axum::Json(json!({"jobs": views, "next_cursor": next})).into_response())
}

/// A job submitted by a signed webhook (Standard Webhooks: `webhook-id`, `webhook-timestamp`,
/// `webhook-signature` over the raw body, with `jobs.inbound_secret`): the body is a
/// `POST /v1/jobs` submission. The headers are checked before the body is read (the route has no
/// key: the signature is the credential), the body is read up to `jobs.ingest_body_limit_kib`,
/// the signature verified, the submission validated, and only then is the `webhook-id` used up,
/// so a sender that fixes an invalid body may resend it under the same id. Refused when the
/// signature does not verify (401), the timestamp is over five minutes off (401), the
/// `webhook-id` was accepted before (409) or the body is over the limit (413).
#[utoipa::path(post, path = "/webhooks/ingest", tag = "jobs", request_body = JobSubmission,
    responses(
        (status = 202, description = "`{id, status: queued, status_url}`", body = Object),
        (status = 400, description = "Invalid submission", body = crate::ErrorBody),
        (status = 401, description = "The signature or timestamp does not verify", body = crate::ErrorBody),
        (status = 404, description = "Inbound webhooks are off (no `jobs.inbound_secret`)", body = crate::ErrorBody),
        (status = 409, description = "This `webhook-id` was received already", body = crate::ErrorBody),
        (status = 413, description = "The body is over `jobs.ingest_body_limit_kib`", body = crate::ErrorBody)))]
pub async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, HttpError> {
    let jobs = jobs_of(&st)?;
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (id, timestamp) = (
        h(im_jobs::signing::ID_HEADER),
        h(im_jobs::signing::TIMESTAMP_HEADER),
    );
    jobs.check_inbound(id, timestamp).await.map_err(job_error)?;
    let limit = jobs.ingest_body_limit();
    let too_large = || {
        HttpError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "an inbound webhook's body is at most {limit} bytes (`jobs.ingest_body_limit_kib`)"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(raw, limit)
        .await
        .map_err(|_| too_large())?;
    jobs.verify_inbound(id, timestamp, h(im_jobs::signing::SIGNATURE_HEADER), &bytes)
        .map_err(job_error)?;
    let s: JobSubmission = im_service::api::parse(&bytes)?;
    job_request(&s)?;
    jobs.accept_inbound(id.unwrap_or_default())
        .await
        .map_err(job_error)?;
    let (job, new) = submit(&st, jobs, "webhook".to_owned(), &s, None).await?;
    Ok(accepted(&job, new))
}
