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
    /// Run `request` for `owner` (the tenant that submitted it: what it is charged to) to its
    /// answer (dropping the future cancels it).
    async fn run(&self, owner: &str, request: &Request) -> Answer;
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
    /// The largest inbound webhook body read (the route has no key: it must stay small).
    pub ingest_body_limit: usize,
    /// Deliveries in progress at once per destination origin (scheme, host, port): a slow or
    /// dead receiver holds only its own deliveries back.
    pub deliveries_per_origin: usize,
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
    /// An idempotency key was used before for another request.
    #[error(
        "idempotency key {0:?} was used before with another request; use a new key for a new request"
    )]
    IdempotencyKeyReused(String),
    /// An inbound webhook did not verify.
    #[error("the webhook signature does not verify: {0}")]
    Unverified(#[from] crate::signing::SigningError),
    /// Inbound webhooks are not configured.
    #[error("inbound webhooks are off: set `jobs.inbound_secret`")]
    IngestOff,
    /// The owner's stored jobs are at its quota.
    #[error("{0}")]
    Quota(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A submission.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Who submits (its tenant).
    pub owner: String,
    /// What the owner may store: jobs, bytes (`None`: no quota).
    pub quota: Option<(usize, u64)>,
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
    transitions: tokio::sync::Mutex<()>,
    wake: Notify,
    pub(crate) wake_delivery: Notify,
    slots: Arc<Semaphore>,
    /// Each destination origin's delivery permits.
    pub(crate) origins: DashMap<String, Arc<Semaphore>>,
    /// Deliveries in progress at once, over all origins.
    pub(crate) delivering: Arc<Semaphore>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Jobs {
    /// Start the job service over `store`: recover what a previous run left (on the calling
    /// thread, before anything is served), then run jobs and deliver webhooks in the background.
    /// From then on every store call runs on the blocking pool (`Inner::call`): a slow disk or
    /// a stalled Redis holds no runtime worker, so requests that need no store go on.
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
            transitions: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            wake_delivery: Notify::new(),
            slots,
            origins: DashMap::new(),
            delivering: Arc::new(Semaphore::new(256)),
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
        if let Some((max_jobs, max_bytes)) = s.quota {
            let owner = s.owner.clone();
            let (jobs, bytes) = self.inner.call(move |st| st.usage(&owner)).await?;
            let adding = serde_json::to_vec(&s.request).map_or(0, |b| b.len() as u64);
            if jobs >= max_jobs {
                return Err(JobError::Quota(format!(
                    "this tenant has {jobs} jobs stored, its quota (`tenants.max_jobs`, default `jobs.max_jobs_per_tenant`); jobs are kept until they expire or are cancelled"
                )));
            }
            if bytes + adding > max_bytes {
                return Err(JobError::Quota(format!(
                    "this tenant's stored jobs take {bytes} bytes and this one {adding} more, over its quota of {max_bytes} (`tenants.max_job_bytes`, default `jobs.max_bytes_per_tenant_mib`)"
                )));
            }
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
        let stored = {
            let job = job.clone();
            self.inner.call(move |s| s.insert_idempotent(&job)).await?
        };
        let new = stored.id == job.id;
        // A retry must ask for the same work (route and body); what it asks to be told (the
        // callback) does not make it another request.
        if !new && stored.request != job.request {
            return Err(JobError::IdempotencyKeyReused(
                job.idempotency_key.unwrap_or_default(),
            ));
        }
        if new {
            self.inner.lock_pending().push_back(job.id.clone());
            self.inner.gauge();
            self.inner.wake.notify_one();
        }
        Ok((stored, new))
    }

    /// Job `id`, whoever owns it (for `admin` keys).
    pub async fn get_any(&self, id: &str) -> Result<Job, JobError> {
        let key = id.to_owned();
        self.inner
            .call(move |s| s.get(&key))
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// The owner's job `id`.
    pub async fn get(&self, owner: &str, id: &str) -> Result<Job, JobError> {
        match self.get_any(id).await {
            Ok(j) if j.owner == owner => Ok(j),
            Ok(_) => Err(JobError::NotFound(id.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// A page of `owner`'s jobs (everyone's when `None`, for operators), newest first, after
    /// `cursor`, at most `limit`, optionally only those in `status`; and the cursor of the next
    /// page when there may be one. Read through the store's index by owner: a page reads its
    /// jobs (and one more to know whether another page follows), not every tenant's.
    pub async fn list(
        &self,
        owner: Option<&str>,
        status: Option<Status>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Job>, Option<String>), JobError> {
        let owner = owner.map(str::to_owned);
        let page = self
            .inner
            .call(move |s| {
                let mut found = Vec::new();
                let mut after = cursor;
                loop {
                    // Without a filter one read of limit + 1 answers; with one, read on.
                    let want = if status.is_none() {
                        limit + 1
                    } else {
                        limit.max(64)
                    };
                    let batch = s.page(owner.as_deref(), after.as_deref(), want)?;
                    let exhausted = batch.len() < want;
                    after = batch.last().map(Job::cursor);
                    found.extend(
                        batch
                            .into_iter()
                            .filter(|j| status.is_none_or(|st| j.status == st)),
                    );
                    if found.len() > limit || exhausted {
                        break;
                    }
                }
                let more = found.len() > limit;
                found.truncate(limit);
                let next = if more {
                    found.last().map(Job::cursor)
                } else {
                    None
                };
                Ok((found, next))
            })
            .await?;
        Ok(page)
    }

    /// Cancel the owner's live job `id`: a running one's request is dropped (the queue cancels
    /// it), and its webhook reports the cancellation.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Job, JobError> {
        let _transition = self.inner.transitions.lock().await;
        let mut job = self.get(owner, id).await?;
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
        self.inner.finish(&mut job, "cancelled").await?;
        Ok(job)
    }

    /// A result kept beside its job (see [`Stored::File`]).
    pub async fn result(&self, name: &str) -> Result<Option<Vec<u8>>, JobError> {
        let name = name.to_owned();
        Ok(self.inner.call(move |s| s.result(&name)).await?)
    }

    /// Check an inbound Standard Webhooks message's headers before its body is read: inbound
    /// webhooks are on, the id and timestamp are there, the timestamp is within the tolerance,
    /// and the id was not accepted before.
    pub async fn check_inbound(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
    ) -> Result<(), JobError> {
        let secret = self
            .inner
            .cfg
            .inbound_secret
            .as_ref()
            .ok_or(JobError::IngestOff)?;
        secret.check_timestamp(id, timestamp, now_ms() / 1000, self.inner.cfg.tolerance_s)?;
        let id = id.unwrap_or_default().to_owned();
        let key = id.clone();
        if self.inner.call(move |s| s.sighted(&key)).await? {
            return Err(JobError::Replayed(id));
        }
        Ok(())
    }

    /// Verify an inbound message's signature over its body (after [`Self::check_inbound`]).
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
        secret.verify(
            id,
            timestamp,
            signature,
            body,
            now_ms() / 1000,
            self.inner.cfg.tolerance_s,
        )?;
        Ok(())
    }

    /// Use up an inbound message's id, once its body was verified and validated: a sender that
    /// fixed an invalid body may resend it under the same id, an accepted one is never taken
    /// twice.
    pub async fn accept_inbound(&self, id: &str) -> Result<(), JobError> {
        let key = id.to_owned();
        if !self
            .inner
            .call(move |s| s.first_sighting(&key, now_ms()))
            .await?
        {
            return Err(JobError::Replayed(id.to_owned()));
        }
        Ok(())
    }

    /// The largest inbound webhook body read.
    pub fn ingest_body_limit(&self) -> usize {
        self.inner.cfg.ingest_body_limit
    }

    /// Jobs queued and running now.
    pub fn counts(&self) -> (usize, usize) {
        (self.inner.lock_pending().len(), self.inner.running.len())
    }
}

impl Inner {
    /// Run a store call on the blocking pool: a slow disk or a stalled Redis holds no runtime
    /// worker.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| StoreError::Db(format!("a job store call did not finish: {e}")))?
    }

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
        self.metrics.jobs().counts(queued, self.running.len());
    }

    /// Store a job that reached its final state and schedule its webhook.
    async fn finish(&self, job: &mut Job, outcome: &'static str) -> Result<(), StoreError> {
        let now = now_ms();
        if let Some(w) = &mut job.webhook {
            w.next_at_ms = Some(now);
        }
        let stored = job.clone();
        self.call(move |s| s.put(&stored)).await?;
        if job.webhook.is_some() {
            self.schedule_delivery(now, &job.id);
        }
        self.metrics.jobs().completed(outcome);
        self.gauge();
        if job.webhook.is_some() {
            self.wake_delivery.notify_one();
        }
        Ok(())
    }

    /// Keep an answer: JSON up to the inline limit in the store, anything else as a file.
    async fn keep(&self, id: &str, answer: &Answer) -> Result<Stored, StoreError> {
        let json = answer.content_type.starts_with("application/json");
        if json
            && answer.body.len() <= self.cfg.inline_max_bytes
            && let Ok(value) = serde_json::from_slice::<Value>(&answer.body)
        {
            return Ok(Stored::Inline { value });
        }
        let ext = if json { "json" } else { "bin" };
        let name = format!("{id}.{ext}");
        let (file, body) = (name.clone(), answer.body.clone());
        self.call(move |s| s.put_result(&file, &body)).await?;
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
        let _transition = inner.transitions.lock().await;
        let key = id.to_owned();
        let Some(mut job) = inner.call(move |s| s.get(&key)).await? else {
            return Ok(());
        };
        if job.status.is_final() {
            return Ok(());
        }
        job.status = Status::Running;
        job.attempts += 1;
        job.started_ms = Some(now_ms());
        let stored = job.clone();
        inner.call(move |s| s.put(&stored)).await?;
        job
    };
    let mut backoff = Duration::from_millis(200);
    let answer = loop {
        let answer = inner.runner.run(&job.owner, &job.request).await;
        if !come_back_later(answer.status) {
            break answer;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    };
    // Cancelled while it ran? Then the cancellation is its end.
    let _transition = inner.transitions.lock().await;
    let key = id.to_owned();
    if inner
        .call(move |s| s.get(&key))
        .await?
        .is_none_or(|j| j.status == Status::Cancelled)
    {
        return Ok(());
    }
    job.finished_ms = Some(now_ms());
    let outcome = if (200..300).contains(&answer.status) {
        job.status = Status::Succeeded;
        job.result = Some(inner.keep(&job.id, &answer).await?);
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
    inner.finish(&mut job, outcome).await
}

/// Forget final jobs past their keep time (and their result files), and old inbound message ids.
async fn sweep(inner: Arc<Inner>) {
    let every = (inner.cfg.keep / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = now_ms();
        let keep_ms = inner.cfg.keep.as_millis() as i64;
        let forget_before = now - 2 * 1000 * inner.cfg.tolerance_s;
        // Through the index of finished jobs: the expired ones, a batch at a time.
        let swept = inner
            .call(move |s| {
                loop {
                    let expired = s.finished_before(now - keep_ms, 256)?;
                    let last = expired.len() < 256;
                    for job in expired.iter().filter(|j| !j.webhook_pending()) {
                        s.remove(job)?;
                    }
                    if last || expired.iter().all(Job::webhook_pending) {
                        break;
                    }
                }
                s.forget_sightings(forget_before)
            })
            .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "sweeping expired jobs failed; trying again later");
        }
    }
}
