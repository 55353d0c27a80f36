//! The job runner: takes queued jobs (at most `max_running` at once) through a [`Runner`] (the
//! HTTP frontend runs them as requests through its own router, so a job is validated, queued,
//! retried and answered exactly like the request it stands for), records their ends, and
//! recovers after a restart: jobs that were queued are queued again, jobs that were running are
//! started again (at-least-once; an idempotency key keeps a client's retry from making a second
//! job, and a job that reached a final state is never run again).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::job::{Job, Request, Status, Stored, Webhook};
use crate::signing::{Secret, random_id};
use crate::store::{JobStore, StoreError};
use crate::{deliver, guard};

/// What running a request answered.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The HTTP status code the request would have got.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: Bytes,
}

/// Runs one job's request.
#[async_trait::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Run `request` to its answer (dropping the future cancels it).
    async fn run(&self, request: &Request) -> Answer;
}

/// The jobs' settings (`[jobs]` in im's config).
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Jobs running at once; the rest wait as `queued`.
    pub max_running: usize,
    /// How long a final job (and its result) is kept.
    pub keep: Duration,
    /// Results larger than this (or not JSON) are kept as files.
    pub inline_max_bytes: usize,
    /// Whether callbacks may go to private and loopback addresses.
    pub allow_private_callbacks: bool,
    /// The secret outbound webhooks are signed with.
    pub webhook_secret: Secret,
    /// Delays between delivery attempts; after the last one fails the delivery is abandoned.
    pub retry_schedule: Vec<Duration>,
    /// One delivery attempt's timeout.
    pub delivery_timeout: Duration,
    /// The secret inbound webhooks must be signed with; none: `/webhooks/ingest` is off.
    pub inbound_secret: Option<Secret>,
    /// How far an inbound message's timestamp may be from now.
    pub tolerance_s: i64,
}

impl JobsConfig {
    /// The Standard Webhooks retry schedule (after the first attempt): 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h.
    pub fn standard_schedule() -> Vec<Duration> {
        [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }
}

/// Why a job call failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job (for this owner).
    #[error("no job {0:?}")]
    NotFound(String),
    /// The job is final already.
    #[error("job {id:?} is {status} already")]
    Final {
        /// The job.
        id: String,
        /// Its final status.
        status: &'static str,
    },
    /// A field is invalid.
    #[error("`{field}`: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An inbound webhook was seen before.
    #[error("webhook message {0:?} was received already")]
    Replayed(String),
    /// An inbound webhook did not verify.
    #[error("the webhook signature does not verify: {0}")]
    Unverified(#[from] crate::signing::SigningError),
    /// Inbound webhooks are not configured.
    #[error("inbound webhooks are off: set `jobs.inbound_secret`")]
    IngestOff,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A submission.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Who submits (a key fingerprint).
    pub owner: String,
    /// What to run.
    pub request: Request,
    /// Where to report the end.
    pub callback_url: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
}

/// The job service. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn JobStore>,
    runner: Arc<dyn Runner>,
    pub(crate) cfg: JobsConfig,
    pub(crate) metrics: im_metrics::Metrics,
    pending: Mutex<VecDeque<String>>,
    /// Webhook deliveries due: (when, job id).
    pub(crate) due: Mutex<std::collections::BTreeSet<(i64, String)>>,
    running: DashMap<String, tokio::task::AbortHandle>,
    /// Held across each read-check-write of a job's status (start, cancel, finish), so that a
    /// cancellation is never overwritten by a run starting or ending at the same moment.
    transitions: Mutex<()>,
    wake: Notify,
    pub(crate) wake_delivery: Notify,
    slots: Arc<Semaphore>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Jobs {
    /// Start the job service over `store`: recover what a
    /// previous run left, then run jobs and deliver webhooks in the background.
    pub fn start(
        store: Arc<dyn JobStore>,
        runner: Arc<dyn Runner>,
        cfg: JobsConfig,
        metrics: im_metrics::Metrics,
    ) -> Result<Jobs, StoreError> {
        let slots = Arc::new(Semaphore::new(cfg.max_running.max(1)));
        let inner = Arc::new(Inner {
            store,
            runner,
            cfg,
            metrics,
            pending: Mutex::default(),
            due: Mutex::default(),
            running: DashMap::new(),
            transitions: Mutex::new(()),
            wake: Notify::new(),
            wake_delivery: Notify::new(),
            slots,
        });
        let jobs = Jobs { inner };
        jobs.recover()?;
        tokio::spawn(dispatch(jobs.inner.clone()));
        tokio::spawn(deliver::deliveries(jobs.inner.clone()));
        tokio::spawn(sweep(jobs.inner.clone()));
        Ok(jobs)
    }

    /// Queue again what was queued or running when the process stopped.
    fn recover(&self) -> Result<(), StoreError> {
        let all = self.inner.store.all()?;
        for job in all.iter().filter(|j| j.webhook_pending()) {
            let at = job.webhook.as_ref().and_then(|w| w.next_at_ms).unwrap_or(0);
            self.inner.schedule_delivery(at, &job.id);
        }
        let mut live: Vec<Job> = all.into_iter().filter(|j| !j.status.is_final()).collect();
        live.sort_by_key(|j| j.created_ms);
        let mut pending = self.inner.lock_pending();
        for mut job in live {
            if job.status == Status::Running {
                tracing::info!(job = %job.id, "job was running when im stopped; running it again");
                job.status = Status::Queued;
                self.inner.store.put(&job)?;
            }
            pending.push_back(job.id);
        }
        drop(pending);
        self.inner.gauge();
        Ok(())
    }

    /// Accept a job. A callback URL is checked now (so a bad one is refused at once); a repeated
    /// idempotency key answers the job it made first. The job, and whether it is new.
    pub async fn submit(&self, s: Submission) -> Result<(Job, bool), JobError> {
        if let Some(url) = &s.callback_url {
            guard::resolve(url, self.inner.cfg.allow_private_callbacks)
                .await
                .map_err(|e| JobError::Invalid {
                    field: "callback_url",
                    message: e.to_string(),
                })?;
        }
        let job = Job {
            id: random_id("job_"),
            owner: s.owner,
            idempotency_key: s.idempotency_key,
            request: s.request,
            status: Status::Queued,
            attempts: 0,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            result: None,
            error: None,
            webhook: s.callback_url.map(|url| Webhook {
                url,
                message_id: random_id("msg_"),
                ..Webhook::default()
            }),
        };
        let stored = self.inner.store.insert_idempotent(&job)?;
        let new = stored.id == job.id;
        if new {
            self.inner.lock_pending().push_back(job.id.clone());
            self.inner.gauge();
            self.inner.wake.notify_one();
        }
        Ok((stored, new))
    }

    /// Job `id`, whoever owns it (for `admin` keys).
    pub fn get_any(&self, id: &str) -> Result<Job, JobError> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// The owner's job `id`.
    pub fn get(&self, owner: &str, id: &str) -> Result<Job, JobError> {
        match self.inner.store.get(id)? {
            Some(j) if j.owner == owner => Ok(j),
            _ => Err(JobError::NotFound(id.to_owned())),
        }
    }

    /// The owner's jobs, newest first, at most `limit`, optionally only those in `status`.
    pub fn list(
        &self,
        owner: &str,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Job>, JobError> {
        self.list_where(|j| j.owner == owner, status, limit)
    }

    /// Everyone's jobs (for `admin` keys), as [`list`](Self::list).
    pub fn list_all(&self, status: Option<Status>, limit: usize) -> Result<Vec<Job>, JobError> {
        self.list_where(|_| true, status, limit)
    }

    fn list_where(
        &self,
        mine: impl Fn(&Job) -> bool,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Job>, JobError> {
        let mut jobs: Vec<Job> = self
            .inner
            .store
            .all()?
            .into_iter()
            .filter(|j| mine(j) && status.is_none_or(|s| j.status == s))
            .collect();
        jobs.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// Cancel the owner's live job `id`: a running one's request is dropped (the queue cancels
    /// it), and its webhook reports the cancellation.
    pub fn cancel(&self, owner: &str, id: &str) -> Result<Job, JobError> {
        let _transition = self.inner.transition();
        let mut job = self.get(owner, id)?;
        if job.status.is_final() {
            return Err(JobError::Final {
                id: job.id,
                status: job.status.as_str(),
            });
        }
        if let Some((_, task)) = self.inner.running.remove(id) {
            task.abort();
        }
        job.status = Status::Cancelled;
        job.finished_ms = Some(now_ms());
        self.inner.finish(&mut job, "cancelled")?;
        Ok(job)
    }

    /// A result kept beside its job (see [`Stored::File`]).
    pub fn result(&self, name: &str) -> Result<Option<Vec<u8>>, JobError> {
        Ok(self.inner.store.result(name)?)
    }

    /// Verify an inbound Standard Webhooks message and queue the job it carries (as `owner`
    /// `webhook`): the signature against `jobs.inbound_secret`, the timestamp within the
    /// tolerance, and the message id never seen before.
    pub fn verify_inbound(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), JobError> {
        let secret = self
            .inner
            .cfg
            .inbound_secret
            .as_ref()
            .ok_or(JobError::IngestOff)?;
        let now = now_ms();
        secret.verify(
            id,
            timestamp,
            signature,
            body,
            now / 1000,
            self.inner.cfg.tolerance_s,
        )?;
        let id = id.unwrap_or_default();
        if !self.inner.store.first_sighting(id, now)? {
            return Err(JobError::Replayed(id.to_owned()));
        }
        Ok(())
    }

    /// Jobs queued and running now.
    pub fn counts(&self) -> (usize, usize) {
        (self.inner.lock_pending().len(), self.inner.running.len())
    }
}

impl Inner {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deliver job `id`'s webhook at `at_ms`.
    pub(crate) fn schedule_delivery(&self, at_ms: i64, id: &str) {
        self.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at_ms, id.to_owned()));
    }

    fn gauge(&self) {
        let queued = self.lock_pending().len();
        self.metrics.jobs(queued, self.running.len());
    }

    /// The lock of status changes (see `transitions`).
    fn transition(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a job that reached its final state and schedule its webhook.
    fn finish(&self, job: &mut Job, outcome: &'static str) -> Result<(), StoreError> {
        let now = now_ms();
        if let Some(w) = &mut job.webhook {
            w.next_at_ms = Some(now);
        }
        self.store.put(job)?;
        if job.webhook.is_some() {
            self.schedule_delivery(now, &job.id);
        }
        self.metrics.job_completed(outcome);
        self.gauge();
        if job.webhook.is_some() {
            self.wake_delivery.notify_one();
        }
        Ok(())
    }

    /// Keep an answer: JSON up to the inline limit in the store, anything else as a file.
    fn keep(&self, id: &str, answer: &Answer) -> Result<Stored, StoreError> {
        let json = answer.content_type.starts_with("application/json");
        if json
            && answer.body.len() <= self.cfg.inline_max_bytes
            && let Ok(value) = serde_json::from_slice::<Value>(&answer.body)
        {
            return Ok(Stored::Inline { value });
        }
        let ext = if json { "json" } else { "bin" };
        let name = format!("{id}.{ext}");
        self.store.put_result(&name, &answer.body)?;
        Ok(Stored::File {
            name,
            content_type: answer.content_type.clone(),
            bytes: answer.body.len() as u64,
        })
    }
}

/// Whether an answer means "try again later" rather than an end: im refused for load (429 queue
/// full or rate limited, 503 shutting down or no healthy backend).
fn come_back_later(status: u16) -> bool {
    status == 429 || status == 503
}

/// Start queued jobs while there are free slots.
async fn dispatch(inner: Arc<Inner>) {
    loop {
        let permit = match inner.slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let next = inner.lock_pending().pop_front();
        let Some(id) = next else {
            drop(permit);
            tokio::select! {
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let task = tokio::spawn(run_one(inner.clone(), id.clone(), permit));
        inner.running.insert(id, task.abort_handle());
        inner.gauge();
    }
}

async fn run_one(inner: Arc<Inner>, id: String, _permit: tokio::sync::OwnedSemaphorePermit) {
    if let Err(e) = run_job(&inner, &id).await {
        tracing::error!(job = %id, error = %e, "job store failed; the job stays queued for the next start");
    }
    inner.running.remove(&id);
    inner.gauge();
}

async fn run_job(inner: &Inner, id: &str) -> Result<(), StoreError> {
    let mut job = {
        let _transition = inner.transition();
        let Some(mut job) = inner.store.get(id)? else {
            return Ok(());
        };
        if job.status.is_final() {
            return Ok(());
        }
        job.status = Status::Running;
        job.attempts += 1;
        job.started_ms = Some(now_ms());
        inner.store.put(&job)?;
        job
    };
    let mut backoff = Duration::from_millis(200);
    let answer = loop {
        let answer = inner.runner.run(&job.request).await;
        if !come_back_later(answer.status) {
            break answer;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    };
    // Cancelled while it ran? Then the cancellation is its end.
    let _transition = inner.transition();
    if inner
        .store
        .get(id)?
        .is_none_or(|j| j.status == Status::Cancelled)
    {
        return Ok(());
    }
    job.finished_ms = Some(now_ms());
    let outcome = if (200..300).contains(&answer.status) {
        job.status = Status::Succeeded;
        job.result = Some(inner.keep(&job.id, &answer)?);
        "succeeded"
    } else {
        job.status = Status::Failed;
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or_else(
            |_| json!({"error": {"type": "internal", "message": String::from_utf8_lossy(&answer.body)}}),
        );
        let mut error = body.get("error").cloned().unwrap_or(body);
        if let Some(e) = error.as_object_mut() {
            e.insert("status".to_owned(), json!(answer.status));
        }
        job.error = Some(error);
        "failed"
    };
    inner.finish(&mut job, outcome)
}

/// Forget final jobs past their keep time (and their result files), and old inbound message ids.
async fn sweep(inner: Arc<Inner>) {
    let every = (inner.cfg.keep / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = now_ms();
        let keep_ms = inner.cfg.keep.as_millis() as i64;
        if let Ok(all) = inner.store.all() {
            for job in all {
                let old = job.finished_ms.is_some_and(|f| now - f > keep_ms);
                if job.status.is_final() && old && !job.webhook_pending() {
                    let _ = inner.store.remove(&job);
                }
            }
        }
        let _ = inner
            .store
            .forget_sightings(now - 2 * 1000 * inner.cfg.tolerance_s);
    }
}
