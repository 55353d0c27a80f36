//! A request's life in the driver: admitted or refused, cancelled, its attempts' ends (plain,
//! streamed, panicked) turned into the core's outcomes, and its answer or error sent once.

use std::sync::Arc;
use std::time::Duration;

use im_metrics::{ErrorEntry, outcome};
use inference_queue::{
    Admission, CancelOutcome, LaneId, Outcome, RequestId, Resolution, Submit, Time,
};
use localai_client::{ClientError, ErrorClass};

use super::{Driver, Entry, Reply, meta_of};
use crate::attempt::Attempt;
use crate::job::{Completion, EngineError, Job, Output};
use crate::trace::RequestTrace;

/// One admitted request in this many has its predicted wait measured against its start (a
/// prediction replays the policy on a copy of the state: tens of microseconds at a hundred
/// queued, `cargo bench -p inference-queue --bench core`).
const PREDICTION_SAMPLE: u64 = 32;

impl Driver {
    /// The core's tenant for `job`'s owner (0 for work of no one tenant), its weight kept in
    /// step with the job's.
    fn tenant_of(&mut self, job: &Job) -> inference_queue::TenantId {
        let Some(owner) = &job.owner else {
            return inference_queue::TenantId::default();
        };
        let next = inference_queue::TenantId(self.tenants.len() as u32 + 1);
        let entry = self.tenants.entry(owner.clone()).or_insert((next, 1));
        let (id, weight) = *entry;
        if weight != job.weight {
            entry.1 = job.weight;
            self.core.set_weight(id, job.weight);
        }
        id
    }

    /// A caller submits `job`: admitted (and followed, when it asked for progress) or refused.
    pub(super) fn on_submit(
        &mut self,
        now: Time,
        ticket: u64,
        mut job: Job,
        reply: Reply,
        span: tracing::Span,
    ) {
        let progress = job.progress.take();
        let tenant = self.tenant_of(&job);
        // What admission predicts, to measure against its first dispatch: one request in
        // `PREDICTION_SAMPLE`.
        let predicted = if ticket.is_multiple_of(PREDICTION_SAMPLE) {
            self.core
                .predicted_wait(now, job.kind(), job.model())
                .ok()
                .flatten()
        } else {
            None
        };
        let sub = Submit {
            kind: job.kind(),
            model: job.model(),
            lane: None,
            deadline: job.deadline,
            bytes: job.payload_bytes(),
            tenant,
            class: job.class,
            cost: None,
            prefix: job.prefix.as_ref(),
        };
        match self.core.submit(now, sub) {
            Admission::Accepted(id) => {
                self.tickets.insert(ticket, id);
                if let Some(sink) = progress {
                    self.watchers.watch(id, sink);
                }
                let trace = RequestTrace::accepted(span, job.kind().as_str(), job.model());
                self.entries.insert(
                    id,
                    Box::new(Entry {
                        ticket,
                        job: Arc::new(job),
                        reply: Some(reply),
                        arrived: now,
                        waited: None,
                        attempts: 0,
                        abort: None,
                        last_error: None,
                        cancelled: false,
                        first_chunk: Duration::ZERO,
                        trace,
                        predicted,
                    }),
                );
                self.tell(now, id);
            }
            Admission::Rejected(r) => {
                let err = EngineError::from_rejection(r, job.kind());
                self.metrics
                    .engine()
                    .rejected(job.kind().as_str(), err.refusal_reason());
                // Keyed by a configured model only: a caller's made-up name is not a key.
                let known = self.core.model_id(job.model()).is_some();
                self.record_error(&job, &err, known);
                let _ = reply.send(Err(Box::new(err)));
            }
        }
    }

    /// The caller of `ticket` went away.
    pub(super) fn on_cancel(&mut self, now: Time, ticket: u64) {
        let Some(id) = self.tickets.get(&ticket).copied() else {
            return;
        };
        match self.core.cancel(now, id) {
            CancelOutcome::Removed => self.leave(id, outcome::CANCELLED, None),
            CancelOutcome::InFlight => {
                // The attempt keeps its slot until the upstream has really finished
                // (a cancelled request is never retried); its result is dropped.
                if let Some(e) = self.entries.get_mut(&id) {
                    e.cancelled = true;
                    e.reply = None;
                }
            }
            CancelOutcome::Unknown => {}
        }
    }

    /// Take the waiting requests known by `request_ids` out, each answered `Withdrawn`.
    pub(super) fn on_withdraw(
        &mut self,
        now: Time,
        request_ids: &std::collections::HashSet<String>,
    ) -> usize {
        let ids: Vec<RequestId> = self
            .entries
            .iter()
            .filter(|(_, e)| request_ids.contains(&e.job.request_id))
            .map(|(id, _)| *id)
            .collect();
        let mut taken = 0;
        for id in ids {
            if self.core.withdraw(now, id) {
                self.fail(id, EngineError::Withdrawn, outcome::CANCELLED);
                taken += 1;
            }
        }
        taken
    }

    /// An attempt's stream gave its first chunk: the caller gets the stream.
    pub(super) fn on_stream_started(
        &mut self,
        id: RequestId,
        lane: LaneId,
        rx: crate::job::ChunkReceiver,
        processing: Duration,
    ) {
        self.switch_answered(lane);
        if let Some(e) = self.entries.get_mut(&id) {
            e.first_chunk = processing;
            let meta = meta_of(e, lane, processing);
            if let Some(reply) = e.reply.take() {
                let _ = reply.send(Ok(Box::new(Completion {
                    meta,
                    output: Output::Stream(rx),
                })));
            }
        }
    }

    /// A stream ended (`error` inside it, or `aborted` by the caller leaving).
    pub(super) fn on_stream_ended(
        &mut self,
        now: Time,
        id: RequestId,
        lane: LaneId,
        error: Option<ClientError>,
        aborted: bool,
    ) {
        // Nothing can be retried once chunks reached the caller: a failure inside the
        // stream ends the request (the caller saw an error item), and it says the
        // upstream is failing.
        let outcome = match (&error, aborted) {
            (Some(e), _) => Outcome::Permanent {
                upstream_fault: e.blames_upstream(),
            },
            (None, true) => Outcome::Aborted,
            (None, false) => Outcome::Success,
        };
        if let Some(e) = &error {
            self.metrics
                .engine()
                .upstream_error(&self.lanes[lane.0], &e.label());
        }
        let first_chunk = self
            .entries
            .get(&id)
            .map_or(Duration::ZERO, |e| e.first_chunk);
        let lane_ok = error.as_ref().is_none_or(|e| !e.blames_upstream());
        self.metrics
            .engine()
            .lanes()
            .attempt(&self.lanes[lane.0], lane_ok, first_chunk);
        if self.core.complete(now, id, outcome) == Resolution::Finished {
            let label = match (aborted, &error) {
                (true, _) => outcome::CANCELLED,
                (false, Some(_)) => outcome::UPSTREAM_ERROR,
                (false, None) => outcome::SUCCESS,
            };
            self.leave(id, label, None);
        }
    }

    /// An attempt panicked (caught): it completes as a failure.
    pub(super) fn on_panicked(
        &mut self,
        now: Time,
        id: RequestId,
        lane: LaneId,
        stream_started: bool,
        processing: Duration,
    ) {
        self.switch_answered(lane);
        self.metrics
            .engine()
            .lanes()
            .attempt(&self.lanes[lane.0], false, processing);
        let failed = Outcome::Permanent {
            upstream_fault: false,
        };
        if self.core.complete(now, id, failed) == Resolution::Finished {
            if stream_started {
                // The caller holds the stream; its end without a finish is its error.
                self.leave(id, outcome::INTERNAL, Some(processing));
            } else {
                self.fail(id, EngineError::Internal, outcome::INTERNAL);
            }
        }
    }

    pub(super) fn attempt_done(
        &mut self,
        id: RequestId,
        lane: LaneId,
        result: Result<Output, ClientError>,
        processing: Duration,
    ) {
        let now = self.clock.now();
        self.switch_answered(lane);
        // The caller's own errors (a 400 for a bad input) say nothing about the backend.
        self.report()
            .attempt(&self.lanes[lane.0], result.as_ref().err(), processing);
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => {
                let upstream_fault = e.blames_upstream();
                match e.class() {
                    ErrorClass::Transient => Outcome::Transient {
                        retry_after: e.retry_after(),
                        upstream_fault,
                    },
                    ErrorClass::Permanent | ErrorClass::Protocol | ErrorClass::TimedOut => {
                        Outcome::Permanent { upstream_fault }
                    }
                }
            }
        };
        let refused = match &result {
            Err(e) if e.refuses_kind() => self.entries.get(&id).map(|e| e.job.clone()),
            _ => None,
        };
        let resolution = self.core.complete(now, id, outcome);
        if let Some(job) = refused {
            self.kind_refused(now, lane, &job);
        }
        match resolution {
            Resolution::Finished => match result {
                Ok(output) => {
                    if let Some(e) = self.entries.get_mut(&id) {
                        let meta = meta_of(e, lane, processing);
                        if let Some(reply) = e.reply.take() {
                            let _ = reply.send(Ok(Box::new(Completion { meta, output })));
                        }
                    }
                    self.leave(id, outcome::SUCCESS, Some(processing));
                }
                Err(error) => {
                    let attempts = self.entries.get(&id).map_or(1, |e| e.attempts);
                    let err = EngineError::from_upstream(error, attempts);
                    let label = match err {
                        EngineError::Refused { .. } => outcome::REFUSED,
                        _ => outcome::UPSTREAM_ERROR,
                    };
                    self.fail(id, err, label);
                }
            },
            Resolution::Exhausted { attempts } => {
                let error = result
                    .err()
                    .unwrap_or_else(|| ClientError::Protocol("exhausted without an error".into()));
                self.fail(
                    id,
                    EngineError::from_upstream(error, attempts),
                    outcome::UPSTREAM_ERROR,
                );
            }
            Resolution::Retry { .. } => {
                if let (Some(e), Err(error)) = (self.entries.get_mut(&id), result) {
                    self.metrics.engine().retry(
                        e.job.kind().as_str(),
                        e.job.model(),
                        &error.label(),
                    );
                    e.last_error = Some(Box::new(error));
                    e.abort = None;
                }
            }
            Resolution::Ignored => {}
        }
    }

    /// `lane`'s upstream said it does not do `job`'s kind of work for its model (501): such
    /// work goes to other lanes, or is refused by im itself, until a reading of the catalogues
    /// restores it.
    fn kind_refused(&mut self, now: Time, lane: LaneId, job: &Job) {
        let (model, kind) = (job.model(), job.kind());
        tracing::warn!(lane = %self.lanes[lane.0], %model, %kind,
            "the upstream does not serve this kind of work for this model (501): not sent there again until its catalogue is read");
        self.core.refuse_kind(now, lane, model, kind);
    }

    pub(super) fn dispatch(&mut self, id: RequestId, lane: LaneId, attempt: u32, waited: Duration) {
        self.dispatched_watcher(id, lane);
        if let (Some((cached, blocks)), Some(e)) =
            (self.core.prefix_match(id), self.entries.get(&id))
        {
            self.metrics
                .engine()
                .prefix(&self.lanes[lane.0], e.job.model(), cached, blocks);
        }
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.waited = Some(waited);
        e.attempts = attempt;
        if let Some(predicted) = e.predicted.take() {
            let error = predicted.abs_diff(waited);
            self.metrics
                .engine()
                .prediction_error(e.job.kind().as_str(), error);
        }
        let job = e.job.clone();
        let span = e.trace.dispatched(
            &self.lanes[lane.0],
            attempt,
            job.kind().as_str(),
            job.model(),
        );
        let Some(tx) = self.tx.upgrade() else { return };
        let attempt = Attempt {
            id,
            lane,
            job,
            backend: self.backend.clone(),
            tx,
            echo: self.echo.clone(),
            span,
        };
        let task = tokio::spawn(attempt.run());
        if let Some(e) = self.entries.get_mut(&id) {
            e.abort = Some(task.abort_handle());
        }
    }

    /// Answer `id` with `err` and let it leave.
    pub(super) fn fail(&mut self, id: RequestId, err: EngineError, label: &'static str) {
        if let Some(e) = self.entries.get_mut(&id) {
            let job = e.job.clone();
            self.record_error(&job, &err, true);
            if let Some(e) = self.entries.get_mut(&id)
                && let Some(reply) = e.reply.take()
            {
                let _ = reply.send(Err(Box::new(err)));
            }
        }
        self.leave(id, label, None);
    }

    /// Record `err` in the error metrics; `known_model`: key it by the job's model (a caller's
    /// unknown name is never a key).
    fn record_error(&self, job: &Job, err: &EngineError, known_model: bool) {
        self.metrics.engine().error(ErrorEntry {
            time_ms: 0,
            request_id: job.request_id.clone(),
            kind: job.kind().to_string(),
            model: if known_model {
                job.model().to_owned()
            } else {
                "(unknown)".to_owned()
            },
            class: err.error_type().to_owned(),
            message: err.to_string(),
            params: job.params(),
            tenant: job.owner.as_deref().map(str::to_owned),
        });
    }

    /// Remove `id`'s bookkeeping and count it.
    pub(super) fn leave(
        &mut self,
        id: RequestId,
        label: &'static str,
        processing: Option<Duration>,
    ) {
        self.watchers.forget(id);
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        let label = if e.cancelled {
            outcome::CANCELLED
        } else {
            label
        };
        self.tickets.remove(&e.ticket);
        e.trace.left(label);
        let wait = e
            .waited
            .or_else(|| Some(self.clock.now().saturating_since(e.arrived)));
        self.metrics.engine().request_done(
            e.job.kind().as_str(),
            e.job.model(),
            label,
            wait,
            processing,
        );
        tracing::info!(
            request_id = %e.job.request_id, kind = %e.job.kind(), model = %e.job.model(),
            wait_ms = wait.map_or(0, |w| w.as_millis() as u64),
            processing_ms = processing.map_or(0, |p| p.as_millis() as u64),
            attempts = e.attempts, outcome = label, "request"
        );
    }
}
