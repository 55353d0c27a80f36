//! The driver: one tokio task that owns the scheduler core, runs its decisions and answers callers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use im_metrics::{ErrorEntry, Metrics, outcome};
use inference_queue::{
    Admission, Advice, CancelOutcome, Config, Event, FailReason, Kind, LaneId, LoadOutcome,
    Outcome, Rejection, RequestId, Resolution, Scheduler, Status, Submit, Time, TopologyChange,
    UnloadOutcome, UnloadRefusal,
};
use localai_client::{ClientError, ErrorClass};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::attempt::{Attempt, ModelEcho};
use crate::backend::Backend;
use crate::clock::Clock;
use crate::job::{Completion, EngineError, Job, Meta, Output};
use crate::trace::RequestTrace;

pub(crate) type Reply = oneshot::Sender<Result<Completion, EngineError>>;

pub(crate) enum Msg {
    Submit {
        ticket: u64,
        job: Job,
        reply: Reply,
        /// The caller's span: the parent of the request's engine spans.
        span: tracing::Span,
    },
    Cancel {
        ticket: u64,
    },
    Attempt {
        id: RequestId,
        lane: LaneId,
        result: Result<Output, ClientError>,
        processing: Duration,
    },
    StreamStarted {
        id: RequestId,
        lane: LaneId,
        rx: crate::job::ChunkReceiver,
        processing: Duration,
    },
    StreamEnded {
        id: RequestId,
        lane: LaneId,
        error: Option<ClientError>,
        aborted: bool,
    },
    /// The attempt panicked (caught): it completes as a failure.
    Panicked {
        id: RequestId,
        lane: LaneId,
        stream_started: bool,
        processing: Duration,
    },
    Lifecycle {
        lane: LaneId,
    },
    Health {
        lane: LaneId,
        healthy: bool,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    SetPolicy {
        policy: inference_queue::Policy,
        reply: oneshot::Sender<Result<Config, inference_queue::ConfigError>>,
    },
    SetTopology {
        models: Vec<inference_queue::ModelSpec>,
        lanes: Vec<inference_queue::LaneSpec>,
        restarted: Vec<String>,
        reply: oneshot::Sender<Result<(TopologyChange, Config), inference_queue::ConfigError>>,
    },
    LoadModel {
        model: String,
        lane: Option<LaneId>,
        reply: oneshot::Sender<Result<(LaneId, LoadOutcome), Rejection>>,
    },
    UnloadModel {
        model: String,
        lane: LaneId,
        force: bool,
        reply: oneshot::Sender<Result<UnloadOutcome, UnloadRefusal>>,
    },
    Advise {
        kind: Kind,
        model: String,
        lane: Option<LaneId>,
        reply: oneshot::Sender<Result<Advice, Rejection>>,
    },
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

struct Entry {
    ticket: u64,
    job: Arc<Job>,
    reply: Option<Reply>,
    /// When the core accepted it (the core's clock).
    arrived: Time,
    /// Its queue wait as the core measured it at the answering dispatch.
    waited: Option<Duration>,
    attempts: u32,
    abort: Option<AbortHandle>,
    last_error: Option<ClientError>,
    /// The caller went away while an attempt ran: the attempt finishes, its result is dropped.
    cancelled: bool,
    /// A running stream's time to its first chunk.
    first_chunk: Duration,
    /// Its spans.
    trace: RequestTrace,
}

pub(crate) struct Driver {
    core: Scheduler,
    clock: Clock,
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    echo: Arc<ModelEcho>,
    lanes: Vec<String>,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::WeakUnboundedSender<Msg>,
    entries: HashMap<RequestId, Entry>,
    tickets: HashMap<u64, RequestId>,
    switch_started: Vec<Option<Instant>>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    last_gauges: Instant,
    /// When the last round of health checks started.
    last_health: Instant,
    /// Per lane: a health check is under way.
    checking: Vec<bool>,
}

impl Driver {
    pub(crate) fn new(
        core: Scheduler,
        clock: Clock,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        echo: Arc<ModelEcho>,
        rx: mpsc::UnboundedReceiver<Msg>,
        tx: mpsc::WeakUnboundedSender<Msg>,
    ) -> Driver {
        let lanes: Vec<String> = core.config().lanes.iter().map(|l| l.name.clone()).collect();
        let n = lanes.len();
        Driver {
            core,
            clock,
            backend,
            metrics,
            echo,
            lanes,
            rx,
            tx,
            entries: HashMap::new(),
            tickets: HashMap::new(),
            switch_started: vec![None; n],
            shutdown: None,
            last_gauges: Instant::now(),
            last_health: Instant::now(),
            checking: vec![false; n],
        }
    }

    pub(crate) async fn run(mut self) {
        let mut upkeep = tokio::time::interval(Duration::from_secs(1));
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for l in &self.lanes {
            self.metrics.breaker(l, false);
            self.metrics.in_flight(l, 0);
        }
        // One timer for the core's wake-ups, re-armed only when the wake-up time changes (not
        // created and dropped on every message).
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let wake = self.core.poll_timeout().map(|t| self.clock.instant(t));
            if wake != armed {
                timer.as_mut().reset(wake.unwrap_or(far));
                armed = wake;
            }
            let stop_at = self.shutdown.as_ref().map(|(at, _)| *at);
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(msg) => {
                        self.handle(msg);
                        // Take what else has arrived before deciding: one pass of the core's
                        // events for a burst of messages.
                        for _ in 0..64 {
                            match self.rx.try_recv() {
                                Ok(msg) => self.handle(msg),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Every handle is gone: nobody can be answered; stop now.
                        self.force_finish();
                        return;
                    }
                },
                _ = sleep_until(stop_at), if stop_at.is_some() => {
                    self.force_finish();
                    return;
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    timer.as_mut().reset(far);
                    let now = self.clock.now();
                    self.core.handle_timeout(now);
                }
                _ = upkeep.tick() => {
                    self.metrics.run_upkeep();
                    self.update_gauges();
                    self.health_checks();
                }
            }
            self.process_events();
            if self.last_gauges.elapsed() >= Duration::from_millis(100) {
                self.update_gauges();
            }
            if self.shutdown.is_some() && self.core.in_system() == 0 {
                self.update_gauges();
                if let Some((_, done)) = self.shutdown.take() {
                    for d in done {
                        let _ = d.send(());
                    }
                }
                return;
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.clock.now();
        match msg {
            Msg::Submit {
                ticket,
                job,
                reply,
                span,
            } => {
                let sub = Submit {
                    kind: job.kind(),
                    model: job.model(),
                    lane: None,
                    deadline: job.deadline,
                    bytes: job.payload_bytes(),
                };
                match self.core.submit(now, sub) {
                    Admission::Accepted(id) => {
                        self.tickets.insert(ticket, id);
                        let trace = RequestTrace::accepted(span, job.kind().as_str(), job.model());
                        self.entries.insert(
                            id,
                            Entry {
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
                            },
                        );
                    }
                    Admission::Rejected(r) => {
                        let err = EngineError::from_rejection(r, job.kind());
                        self.metrics.rejected(job.kind().as_str(), err.error_type());
                        // Keyed by a configured model only: a caller's made-up name is not a key.
                        let known = self.core.model_id(job.model()).is_some();
                        self.record_error(&job, &err, known);
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Msg::Cancel { ticket } => {
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
            Msg::Attempt {
                id,
                lane,
                result,
                processing,
            } => self.attempt_done(id, lane, result, processing),
            Msg::StreamStarted {
                id,
                lane,
                rx,
                processing,
            } => {
                self.switch_answered(lane);
                if let Some(e) = self.entries.get_mut(&id) {
                    e.first_chunk = processing;
                    let meta = meta_of(e, lane, processing);
                    if let Some(reply) = e.reply.take() {
                        let _ = reply.send(Ok(Completion {
                            meta,
                            output: Output::Stream(rx),
                        }));
                    }
                }
            }
            Msg::StreamEnded {
                id,
                lane,
                error,
                aborted,
            } => {
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
                    self.metrics.upstream_error(&self.lanes[lane.0], &e.label());
                }
                let first_chunk = self
                    .entries
                    .get(&id)
                    .map_or(Duration::ZERO, |e| e.first_chunk);
                let lane_ok = error.as_ref().is_none_or(|e| !e.blames_upstream());
                self.metrics
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
            Msg::Panicked {
                id,
                lane,
                stream_started,
                processing,
            } => {
                self.switch_answered(lane);
                self.metrics
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
            Msg::Lifecycle { lane } => self.core.lifecycle_done(now, lane),
            Msg::Health { lane, healthy } => {
                self.checking[lane.0] = false;
                tracing::debug!(lane = %self.lanes[lane.0], healthy, "health check");
                self.core.lane_health(now, lane, healthy);
            }
            Msg::Status { reply } => {
                let _ = reply.send(self.core.status(now));
            }
            Msg::SetPolicy { policy, reply } => {
                let result = self.core.set_policy(now, &policy);
                let _ = reply.send(result.map(|()| self.served_config()));
            }
            Msg::SetTopology {
                models,
                lanes,
                restarted,
                reply,
            } => {
                let result = self.core.set_topology(now, &models, &lanes, &restarted);
                if let Ok(change) = &result {
                    for (name, id) in &change.lanes_added {
                        if id.0 >= self.lanes.len() {
                            self.lanes.push(name.clone());
                            self.switch_started.push(None);
                            self.checking.push(false);
                            self.metrics.breaker(name, false);
                            self.metrics.in_flight(name, 0);
                        }
                    }
                    tracing::info!(?change, "models and lanes changed");
                }
                let _ = reply.send(result.map(|c| (c, self.served_config())));
            }
            Msg::LoadModel { model, lane, reply } => {
                let _ = reply.send(self.core.load_model(now, &model, lane));
            }
            Msg::UnloadModel {
                model,
                lane,
                force,
                reply,
            } => {
                let _ = reply.send(self.core.unload_model(now, &model, lane, force));
            }
            Msg::Advise {
                kind,
                model,
                lane,
                reply,
            } => {
                let _ = reply.send(self.core.advise(kind, &model, lane));
            }
            Msg::Shutdown { grace, done } => {
                self.core.shutdown(now);
                match &mut self.shutdown {
                    Some((_, waiting)) => waiting.push(done),
                    None => self.shutdown = Some((Instant::now() + grace, vec![done])),
                }
            }
        }
    }

    /// The core's configuration without the models a reload retired (lanes keep their ids).
    fn served_config(&self) -> Config {
        let mut c = self.core.config().clone();
        c.models.retain(|m| self.core.model_id(&m.name).is_some());
        c
    }

    fn attempt_done(
        &mut self,
        id: RequestId,
        lane: LaneId,
        result: Result<Output, ClientError>,
        processing: Duration,
    ) {
        let now = self.clock.now();
        self.switch_answered(lane);
        // The caller's own errors (a 400 for a bad input) say nothing about the backend.
        let lane_ok = result
            .as_ref()
            .map_or_else(|e| !e.blames_upstream(), |_| true);
        self.metrics
            .lanes()
            .attempt(&self.lanes[lane.0], lane_ok, processing);
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => {
                self.metrics.upstream_error(&self.lanes[lane.0], &e.label());
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
        match self.core.complete(now, id, outcome) {
            Resolution::Finished => match result {
                Ok(output) => {
                    if let Some(e) = self.entries.get_mut(&id) {
                        let meta = meta_of(e, lane, processing);
                        if let Some(reply) = e.reply.take() {
                            let _ = reply.send(Ok(Completion { meta, output }));
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
                    self.metrics
                        .retry(e.job.kind().as_str(), e.job.model(), &error.label());
                    e.last_error = Some(error);
                    e.abort = None;
                }
            }
            Resolution::Ignored => {}
        }
    }

    fn switch_answered(&mut self, lane: LaneId) {
        if let Some(started) = self.switch_started.get_mut(lane.0).and_then(Option::take) {
            self.metrics
                .switch_seconds(&self.lanes[lane.0], started.elapsed());
        }
    }

    fn process_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            match ev {
                Event::Dispatch {
                    id,
                    lane,
                    attempt,
                    waited,
                } => self.dispatch(id, lane, attempt, waited),
                Event::Expired { id, waited } => {
                    let (attempts, last_error) = self.entries.get(&id).map_or((0, None), |e| {
                        (e.attempts, e.last_error.as_ref().map(ToString::to_string))
                    });
                    self.fail(
                        id,
                        EngineError::DeadlineExceeded {
                            waited,
                            attempts,
                            last_error,
                        },
                        outcome::EXPIRED,
                    )
                }
                Event::Failed {
                    id,
                    reason: FailReason::ShuttingDown,
                } => self.fail(id, EngineError::ShuttingDown, outcome::SHUTDOWN),
                Event::Unload { lane, model } => {
                    self.lifecycle(lane, self.core.model_name(model).to_owned(), true)
                }
                Event::WarmUp { lane, model } => {
                    self.lifecycle(lane, self.core.model_name(model).to_owned(), false)
                }
                Event::Switched {
                    lane,
                    from,
                    to,
                    model_changed,
                } => {
                    let from_kind = from.map_or("none", |g| g.kind.as_str());
                    self.metrics
                        .switched(&self.lanes[lane.0], from_kind, to.kind.as_str());
                    let placement = match (model_changed, from) {
                        (false, _) => "resident",
                        (true, None) => "cold_load",
                        (true, Some(_)) => "eviction",
                    };
                    self.metrics.placed(&self.lanes[lane.0], placement);
                    self.metrics.lane_event(
                        &self.lanes[lane.0],
                        if model_changed { "load" } else { "switch" },
                        to.kind.as_str(),
                        self.core.model_name(to.model),
                    );
                    if model_changed {
                        self.switch_started[lane.0] = Some(Instant::now());
                    }
                    tracing::debug!(lane = %self.lanes[lane.0], from = from_kind, to = %to.kind,
                        model = %self.core.model_name(to.model), model_changed, "switch");
                }
                Event::BreakerOpened { lane } => {
                    tracing::warn!(lane = %self.lanes[lane.0], "breaker opened: upstream failing, holding the queue");
                    self.metrics.breaker(&self.lanes[lane.0], true);
                    self.metrics
                        .lane_event(&self.lanes[lane.0], "breaker_open", "", "");
                }
                Event::BreakerClosed { lane } => {
                    tracing::info!(lane = %self.lanes[lane.0], "breaker closed");
                    self.metrics.breaker(&self.lanes[lane.0], false);
                    self.metrics
                        .lane_event(&self.lanes[lane.0], "breaker_closed", "", "");
                }
            }
        }
    }

    /// Check lanes with their readiness route, at most once per `breaker.health_check` and one
    /// check at a time per lane; the answer goes to the core.
    /// - A lane whose breaker is open or half-open rejoins when the route answers 200.
    /// - An idle lane whose breaker is closed is checked too, so a server that died between
    ///   requests is found before work is sent to it: only an unreachable server counts against
    ///   it (any HTTP answer, such as llama.cpp's 503 while it loads a model, shows it is up).
    ///   A lane with requests running is judged by them.
    fn health_checks(&mut self) {
        let Some(every) = self.core.config().breaker.health_check else {
            return;
        };
        if self.last_health.elapsed() < every {
            return;
        }
        self.last_health = Instant::now();
        let status = self.core.status(self.clock.now());
        for (i, l) in status.lanes.iter().enumerate() {
            let closed = match l.breaker {
                inference_queue::BreakerState::Retired => continue,
                inference_queue::BreakerState::Closed => true,
                _ => false,
            };
            if self.checking[i] || (closed && l.in_flight > 0) {
                continue;
            }
            self.checking[i] = true;
            let (backend, tx, lane) = (self.backend.clone(), self.tx.clone(), LaneId(i));
            tokio::spawn(async move {
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), backend.ready(lane)).await;
                let healthy = match answer {
                    Ok(Ok(())) => true,
                    Ok(Err(ClientError::Status { .. })) => closed,
                    Ok(Err(_)) | Err(_) => false,
                };
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Msg::Health { lane, healthy });
                }
            });
        }
    }

    /// Unload (or warm up) `model` on `lane`, then tell the core. A failure does not stop the
    /// switch: an unload of a model that is not loaded is fine, and a failed warm-up means the
    /// first request loads the model.
    fn lifecycle(&self, lane: LaneId, model: String, unload: bool) {
        let backend = self.backend.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = if unload {
                backend.unload(lane, &model).await.map(|_| ())
            } else {
                backend.load(lane, &model).await
            };
            if let Err(e) = result {
                tracing::warn!(%model, error = %e, unload, "lifecycle call failed; switching anyway");
            }
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Msg::Lifecycle { lane });
            }
        });
    }

    fn dispatch(&mut self, id: RequestId, lane: LaneId, attempt: u32, waited: Duration) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.waited = Some(waited);
        e.attempts = attempt;
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
    fn fail(&mut self, id: RequestId, err: EngineError, label: &'static str) {
        if let Some(e) = self.entries.get_mut(&id) {
            let job = e.job.clone();
            self.record_error(&job, &err, true);
            if let Some(e) = self.entries.get_mut(&id)
                && let Some(reply) = e.reply.take()
            {
                let _ = reply.send(Err(err));
            }
        }
        self.leave(id, label, None);
    }

    /// Record `err` in the error metrics; `known_model`: key it by the job's model (a caller's
    /// unknown name is never a key).
    fn record_error(&self, job: &Job, err: &EngineError, known_model: bool) {
        self.metrics.error(ErrorEntry {
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
        });
    }

    /// Remove `id`'s bookkeeping and count it.
    fn leave(&mut self, id: RequestId, label: &'static str, processing: Option<Duration>) {
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
        self.metrics.request_done(
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

    fn update_gauges(&mut self) {
        self.last_gauges = Instant::now();
        let st = self.core.status(self.clock.now());
        for g in &st.groups {
            self.metrics.queue_depth(g.kind.as_str(), &g.model, g.depth);
        }
        for (l, ls) in st.lanes.iter().enumerate() {
            self.metrics.in_flight(&self.lanes[l], ls.in_flight);
        }
    }

    /// The grace period ended (or every handle is gone): answer everyone still here.
    fn force_finish(&mut self) {
        let now = self.clock.now();
        self.core.shutdown(now);
        self.core.abort_waiting(now, FailReason::ShuttingDown);
        self.process_events();
        let ids: Vec<RequestId> = self.entries.keys().copied().collect();
        for id in ids {
            if let Some(a) = self.entries.get_mut(&id).and_then(|e| e.abort.take()) {
                a.abort();
            }
            let _ = self.core.complete(now, id, Outcome::Aborted);
            self.fail(id, EngineError::ShuttingDown, outcome::SHUTDOWN);
        }
        self.process_events();
        self.update_gauges();
        if let Some((_, done)) = self.shutdown.take() {
            for d in done {
                let _ = d.send(());
            }
        }
    }
}

fn meta_of(e: &Entry, lane: LaneId, processing: Duration) -> Meta {
    Meta {
        request_id: e.job.request_id.clone(),
        kind: e.job.kind(),
        model: e.job.model().to_owned(),
        queue_wait: e.waited.unwrap_or(Duration::ZERO),
        processing,
        attempts: e.attempts,
        lane: lane.0,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
