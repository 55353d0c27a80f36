//! Outbound webhooks: when a job reaches its final state, im POSTs `{type, timestamp, data}` to
//! its `callback_url`, signed by the Standard Webhooks rules, and retries on the schedule until
//! a 2xx answer. A 410 Gone disables the endpoint for every later job; a destination that
//! resolves to a private address (unless allowed) is refused. Every attempt goes into the job's
//! delivery log. The message id stays the same across retries so a receiver can drop repeats.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::guard;
use crate::job::{Delivery, Job};
use crate::runner::{Inner, now_ms};
use crate::signing::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Deliver due webhooks (the schedule is kept in memory, rebuilt from the store at start),
/// woken by finished jobs or when the next one is due. Each delivery waits in its destination
/// origin's queue (at most `deliveries_per_origin` in progress there) and never holds up the
/// schedule or another origin's deliveries.
pub(crate) async fn deliveries(inner: Arc<Inner>) {
    loop {
        let now = now_ms();
        let (due, next_at) = {
            let mut schedule = inner.due.lock().unwrap_or_else(|p| p.into_inner());
            let later = schedule.split_off(&(now + 1, String::new()));
            let due = std::mem::replace(&mut *schedule, later);
            (due, schedule.first().map(|(t, _)| *t))
        };
        for (_, id) in due {
            let inner = inner.clone();
            tokio::spawn(async move {
                let key = id.clone();
                match inner.call(move |s| s.get(&key)).await {
                    Ok(Some(job)) if job.webhook_pending() => {
                        let origin = job
                            .webhook
                            .as_ref()
                            .map_or_else(String::new, |w| origin(&w.url));
                        let queue = inner
                            .origins
                            .entry(origin)
                            .or_insert_with(|| {
                                Arc::new(tokio::sync::Semaphore::new(
                                    inner.cfg.deliveries_per_origin.max(1),
                                ))
                            })
                            .clone();
                        let (Ok(_mine), Ok(_any)) = (
                            queue.acquire_owned().await,
                            inner.delivering.clone().acquire_owned().await,
                        ) else {
                            return;
                        };
                        attempt(&inner, job).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "job store failed; the delivery is retried");
                        inner.schedule_delivery(now_ms() + 1000, &id);
                    }
                }
            });
        }
        let wait = next_at.map_or(Duration::from_secs(1), |t| {
            Duration::from_millis((t - now_ms()).clamp(1, 1000) as u64)
        });
        tokio::select! {
            () = inner.wake_delivery.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The origin of `url` (`scheme://host:port`): what deliveries queue by.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

/// The body a webhook carries: `type` (`job.succeeded`, `job.failed`, `job.cancelled`),
/// `timestamp`, and `data`, the job as `GET /v1/jobs/{id}` shows it.
pub fn payload(job: &Job) -> serde_json::Value {
    json!({
        "type": format!("job.{}", job.status.as_str()),
        "timestamp": job.finished_ms.unwrap_or_else(now_ms),
        "data": crate::view(job),
    })
}

async fn attempt(inner: &Inner, mut job: Job) {
    let Some(hook) = job.webhook.clone() else {
        return;
    };
    let at_ms = now_ms();
    let (status, error, outcome) = send(inner, &job, &hook.url).await;
    let w = job.webhook.as_mut().expect("it has one");
    w.deliveries.push(Delivery {
        at_ms,
        status,
        error,
    });
    match outcome {
        "delivered" => {
            w.delivered = true;
            w.next_at_ms = None;
        }
        "gone" | "refused" => {
            w.abandoned = true;
            w.next_at_ms = None;
        }
        _ => {
            // Failed: the next delay of the schedule, or give up.
            let failures = w.deliveries.len() - 1;
            match inner.cfg.retry_schedule.get(failures) {
                Some(delay) => w.next_at_ms = Some(now_ms() + delay.as_millis() as i64),
                None => {
                    w.abandoned = true;
                    w.next_at_ms = None;
                    inner.metrics.jobs().delivery("abandoned");
                }
            }
        }
    }
    inner.metrics.jobs().delivery(outcome);
    if outcome == "gone" {
        let url = hook.url.clone();
        if let Err(e) = inner.call(move |s| s.disable_endpoint(&url)).await {
            tracing::error!(error = %e, "job store failed");
        }
    }
    let stored = job.clone();
    if let Err(e) = inner.call(move |s| s.put(&stored)).await {
        tracing::error!(job = %job.id, error = %e, "job store failed; the delivery is retried");
    }
    if let Some(at) = job.webhook.as_ref().and_then(|w| w.next_at_ms) {
        inner.schedule_delivery(at, &job.id);
    }
}

/// One POST: (status, error, outcome).
async fn send(inner: &Inner, job: &Job, url: &str) -> (Option<u16>, Option<String>, &'static str) {
    let key = url.to_owned();
    match inner.call(move |s| s.endpoint_disabled(&key)).await {
        Ok(true) => {
            return (
                None,
                Some("the endpoint answered 410 Gone before; it is disabled".to_owned()),
                "gone",
            );
        }
        Ok(false) => {}
        Err(e) => return (None, Some(e.to_string()), "failed"),
    }
    let dest = match guard::resolve(url, inner.cfg.allow_private_callbacks).await {
        Ok(d) => d,
        Err(e @ guard::GuardError::Private(_)) => return (None, Some(e.to_string()), "refused"),
        Err(e) => return (None, Some(e.to_string()), "failed"),
    };
    // Connect to the address that passed the check, whatever DNS answers next.
    let client = match reqwest::Client::builder()
        .resolve(&dest.host, dest.addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(inner.cfg.delivery_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return (None, Some(e.to_string()), "failed"),
    };
    let body = payload(job).to_string();
    let hook = job.webhook.as_ref().expect("it has one");
    let timestamp = now_ms() / 1000;
    let signature = inner
        .cfg
        .webhook_secret
        .sign(&hook.message_id, timestamp, body.as_bytes());
    let sent = client
        .post(dest.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("im/", env!("CARGO_PKG_VERSION")))
        .header(ID_HEADER, &hook.message_id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None, "delivered"),
        Ok(r) if r.status() == reqwest::StatusCode::GONE => (
            Some(410),
            Some("410 Gone: the endpoint is disabled".to_owned()),
            "gone",
        ),
        Ok(r) => (Some(r.status().as_u16()), None, "failed"),
        Err(e) => (None, Some(e.to_string()), "failed"),
    }
}
