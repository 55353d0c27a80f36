//! Durable jobs for im: work that outlives the connection that asked for it and a restart of
//! the process that runs it.
//!
//! - [`job`]: what a job is (its request, owner, status, result, webhook log).
//! - [`store`]: the [`JobStore`] trait and the embedded [`RedbStore`].
//! - [`runner`]: [`Jobs`], the service: submit, get, list, cancel; recovery after a restart;
//!   running through a [`Runner`] (the HTTP frontend's router).
//! - [`signing`]: Standard Webhooks signatures, checked against the specification's vector.
//! - [`guard`]: which callback destinations im may call (no private addresses unless allowed).
//! - `deliver`: outbound webhook delivery with the retry schedule.
//!
//! Delivery semantics: a job is run at least once. A job that was running when the process died
//! runs again on the next start (its `attempts` says so); a job that reached a final state never
//! runs again; a client that repeats a submission with the same idempotency key gets the first
//! job back instead of a second one. A webhook is delivered at least once, with the same
//! `webhook-id` on every attempt.

pub mod conformance;
mod deliver;
pub mod guard;
pub mod job;
pub mod runner;
pub mod signing;
pub mod store;

pub use deliver::payload;
pub use job::{Job, Request, Status, Stored};
pub use runner::{Answer, JobError, Jobs, JobsConfig, Runner, Submission, now_ms};
pub use signing::Secret;
pub use store::{JobStore, RedbStore, StoreError};

use serde_json::{Value, json};

/// A job as its owner sees it (`GET /v1/jobs/{id}`, and a webhook's `data`).
pub fn view(job: &Job) -> Value {
    let result = match &job.result {
        Some(Stored::Inline { value }) => value.clone(),
        Some(Stored::File {
            content_type,
            bytes,
            ..
        }) => json!({
            "content_type": content_type,
            "bytes": bytes,
            "url": format!("/v1/jobs/{}/result", job.id),
        }),
        None => Value::Null,
    };
    json!({
        "id": job.id,
        "status": job.status.as_str(),
        "status_url": format!("/v1/jobs/{}", job.id),
        "route": job.request.route,
        "attempts": job.attempts,
        "created_ms": job.created_ms,
        "started_ms": job.started_ms,
        "finished_ms": job.finished_ms,
        "result": result,
        "error": job.error,
        "idempotency_key": job.idempotency_key,
        "webhook": job.webhook.as_ref().map(|w| json!({
            "url": w.url,
            "message_id": w.message_id,
            "delivered": w.delivered,
            "abandoned": w.abandoned,
            "next_at_ms": w.next_at_ms,
            "deliveries": w.deliveries,
        })),
    })
}
