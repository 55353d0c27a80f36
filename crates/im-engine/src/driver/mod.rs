//! The driver: one tokio task that owns the scheduler core, runs its decisions and answers callers.
//! Its loop is here; a request's life in `requests`, the core's decisions carried out in
//! `events`, their translation into metrics and logs in `report`, health checks in `health`,
//! control messages in `control`, what waiting callers are told in `progress`.

mod control;
mod events;
mod health;
mod progress;
mod report;
mod requests;

use foldhash::HashMap;
use std::sync::Arc;
use std::time::Duration;

use im_metrics::{Metrics, outcome};
use inference_queue::{
    Advice, Config, FailReason, Kind, LaneId, LoadOutcome, Outcome, Rejection, RequestId,
    Scheduler, Status, Time, TopologyChange, UnloadOutcome, UnloadRefusal,
};
use localai_client::ClientError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::attempt::ModelEcho;
use crate::backend::Backend;
use crate::clock::Clock;
use crate::job::{Completion, EngineError, Job, Meta, Output};
use crate::trace::RequestTrace;

/// A request's answer as its channel carries it: boxed either way, so the channel a waiting
/// request holds has room for two pointers, not for the largest answer (256 bytes).
pub(crate) type Answered = Result<Box<Completion>, Box<EngineError>>;

pub(crate) type Reply = oneshot::Sender<Answered>;

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
    /// Take the waiting requests known by these ids out, answered `Withdrawn`; running ones go
    /// on. How many were taken out.
    Withdraw {
        request_ids: std::collections::HashSet<String>,
        reply: oneshot::Sender<usize>,
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
    /// A reading of the catalogues: the kinds upstreams refused are served again.
    RestoreKinds,
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
    /// A cache probe ([`inference_queue::Scheduler::prefix_probe`]): `owner` `None` sees every
    /// tenant's blocks.
    PrefixProbe {
        kind: Kind,
        model: String,
        chain: inference_queue::PrefixChain,
        owner: Option<Arc<str>>,
        reply: oneshot::Sender<Vec<(LaneId, usize)>>,
    },
    /// The predicted wait of a new request.
    Estimate {
        kind: Kind,
        model: String,
        reply: oneshot::Sender<Result<Option<std::time::Duration>, Rejection>>,
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
    last_error: Option<Box<ClientError>>,
    /// The caller went away while an attempt ran: the attempt finishes, its result is dropped.
    cancelled: bool,
    /// A running stream's time to its first chunk.
    first_chunk: Duration,
    /// Its spans.
    trace: RequestTrace,
    /// Its predicted wait at admission, until its first dispatch measures it.
    predicted: Option<Duration>,
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
    /// Boxed: the table keeps room to grow, and a request's 300-odd bytes are not multiplied
    /// by its slack (nor copied when it grows).
    entries: HashMap<RequestId, Box<Entry>>,
    tickets: HashMap<u64, RequestId>,
    switch_started: Vec<Option<Instant>>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    last_gauges: Instant,
    /// When the last round of health checks started.
    last_health: Instant,
    /// Per lane: a health check is under way.
    checking: Vec<bool>,
    /// The core's id and weight of each owner seen (owners are tenants: a bounded set).
    tenants: HashMap<Arc<str>, (inference_queue::TenantId, u32)>,
    /// The waiting requests whose callers follow their wait (`progress`).
    watchers: progress::Watchers,
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
            entries: HashMap::default(),
            tickets: HashMap::default(),
            switch_started: vec![None; n],
            shutdown: None,
            last_gauges: Instant::now(),
            last_health: Instant::now(),
            checking: vec![false; n],
            tenants: HashMap::default(),
            watchers: progress::Watchers::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut upkeep = tokio::time::interval(Duration::from_secs(1));
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for l in &self.lanes {
            self.metrics.engine().breaker(l, false);
            self.metrics.engine().in_flight(l, 0);
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
                    self.tell_watchers();
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

    /// One message, by what it is: a request's life, an attempt's end, a health check, or a
    /// control message.
    fn handle(&mut self, msg: Msg) {
        let now = self.clock.now();
        match msg {
            Msg::Submit {
                ticket,
                job,
                reply,
                span,
            } => self.on_submit(now, ticket, job, reply, span),
            Msg::Cancel { ticket } => self.on_cancel(now, ticket),
            Msg::Withdraw { request_ids, reply } => {
                let _ = reply.send(self.on_withdraw(now, &request_ids));
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
            } => self.on_stream_started(id, lane, rx, processing),
            Msg::StreamEnded {
                id,
                lane,
                error,
                aborted,
            } => self.on_stream_ended(now, id, lane, error, aborted),
            Msg::Panicked {
                id,
                lane,
                stream_started,
                processing,
            } => self.on_panicked(now, id, lane, stream_started, processing),
            Msg::Lifecycle { lane } => self.core.lifecycle_done(now, lane),
            Msg::Health { lane, healthy } => self.on_health(now, lane, healthy),
            control => self.control(now, control),
        }
    }

    /// The core's configuration without the models a reload retired (lanes keep their ids).
    fn served_config(&self) -> Config {
        let mut c = self.core.config().clone();
        c.models.retain(|m| self.core.model_id(&m.name).is_some());
        c
    }

    fn switch_answered(&mut self, lane: LaneId) {
        if let Some(started) = self.switch_started.get_mut(lane.0).and_then(Option::take) {
            self.metrics
                .engine()
                .switch_seconds(&self.lanes[lane.0], started.elapsed());
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

    fn update_gauges(&mut self) {
        self.last_gauges = Instant::now();
        let st = self.core.status(self.clock.now());
        for g in &st.groups {
            self.metrics
                .engine()
                .queue_depth(g.kind.as_str(), &g.model, g.depth);
        }
        for (l, ls) in st.lanes.iter().enumerate() {
            self.metrics
                .engine()
                .in_flight(&self.lanes[l], ls.in_flight);
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
