//! The cheap, cloneable handle frontends and embedders hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use im_metrics::Metrics;
use inference_queue::{
    Advice, Config, ConfigError, Kind, LaneId, LoadOutcome, Rejection, Scheduler, Status,
    TopologyChange, UnloadOutcome, UnloadRefusal,
};
use tokio::sync::{mpsc, oneshot};

use crate::attempt::ModelEcho;
use crate::backend::Backend;
use crate::clock::Clock;
use crate::driver::{Driver, Msg};
use crate::job::{Completion, EngineError, Job};

/// One lane's readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneReadiness {
    /// The lane's name.
    pub name: String,
    /// Whether the upstream answered `/readyz`.
    pub reachable: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// The upstream's error, when not reachable.
    pub error: Option<String>,
}

impl LaneReadiness {
    /// Reachable with a closed breaker.
    pub fn ready(&self) -> bool {
        self.reachable && self.breaker == "closed"
    }
}

struct Shared {
    /// The core's configuration as last changed (a reload changes policy, models and lanes).
    config: std::sync::RwLock<Arc<Config>>,
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    tickets: AtomicU64,
}

/// The engine: submit jobs, read status, shut down. Clone it freely; every clone talks to the same
/// driver task, which owns the scheduler core.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lanes", &self.config().lanes)
            .finish_non_exhaustive()
    }
}

/// Cancels its request when dropped before the answer arrived.
struct CancelOnDrop<'a> {
    tx: &'a mpsc::UnboundedSender<Msg>,
    ticket: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Msg::Cancel {
                ticket: self.ticket,
            });
        }
    }
}

/// The answer of a job [`Engine::submit`] queued; dropping it first cancels the request.
#[must_use = "dropping it cancels the request"]
pub struct Submitted<'a> {
    /// `None` when the engine had stopped.
    rx: Option<oneshot::Receiver<crate::driver::Answered>>,
    guard: CancelOnDrop<'a>,
}

impl std::future::Future for Submitted<'_> {
    type Output = Result<Completion, EngineError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else {
            return std::task::Poll::Ready(Err(EngineError::ShuttingDown));
        };
        let answer = std::task::ready!(std::pin::Pin::new(rx).poll(cx));
        this.rx = None;
        this.guard.armed = false;
        std::task::Poll::Ready(match answer {
            Ok(Ok(completion)) => Ok(*completion),
            Ok(Err(error)) => Err(*error),
            Err(_) => Err(EngineError::ShuttingDown),
        })
    }
}

impl Engine {
    /// Start the driver task on the current tokio runtime (every upstream answer must name the
    /// model asked for).
    pub fn start(
        config: Config,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
    ) -> Result<Engine, ConfigError> {
        Engine::start_with(config, backend, metrics, ModelEcho::default())
    }

    /// [`Engine::start`], with the model names upstreams may answer with (`echo`).
    pub fn start_with(
        config: Config,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        echo: ModelEcho,
    ) -> Result<Engine, ConfigError> {
        let core = Scheduler::new(config.clone())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver::new(
            core,
            Clock::start(),
            backend.clone(),
            metrics.clone(),
            Arc::new(echo),
            rx,
            tx.downgrade(),
        );
        tokio::spawn(driver.run());
        Ok(Engine {
            tx,
            shared: Arc::new(Shared {
                config: std::sync::RwLock::new(Arc::new(config)),
                backend,
                metrics,
                tickets: AtomicU64::new(1),
            }),
        })
    }

    /// Queue `job` (at once: the driver holds it from here on) and return its answer to await.
    /// Dropping that future cancels the request: it leaves the queue and never reaches the
    /// upstream (or, if running, its upstream call is abandoned). A waiting caller holds only
    /// the [`Submitted`] handle, a few words, not the job.
    pub fn submit(&self, job: Job) -> Submitted<'_> {
        let ticket = self.shared.tickets.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Msg::Submit {
                ticket,
                job,
                reply,
                span: tracing::Span::current(),
            })
            .is_ok();
        Submitted {
            rx: sent.then_some(rx),
            guard: CancelOnDrop {
                tx: &self.tx,
                ticket,
                armed: sent,
            },
        }
    }

    /// Take the waiting requests known by `request_ids` out of the queues, each answered
    /// [`EngineError::Withdrawn`]; the ones running go on. How many were taken out.
    pub async fn withdraw(&self, request_ids: std::collections::HashSet<String>) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Withdraw { request_ids, reply }).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// A snapshot of the queues and lanes; `None` once the engine stopped.
    pub async fn status(&self) -> Option<Status> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Status { reply }).ok()?;
        rx.await.ok()
    }

    /// Where a request of `kind` for `model` would go now and why, without queueing it.
    pub async fn advise(
        &self,
        kind: Kind,
        model: &str,
        lane: Option<LaneId>,
    ) -> Result<Advice, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Advise {
                kind,
                model: model.to_owned(),
                lane,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(|r| EngineError::from_rejection(r, kind))
    }

    /// For each lane that may serve `model`: how many leading blocks of `chain` it was sent, by
    /// `owner` only (`None`: by anyone, an operator's view). An empty answer: nothing of the
    /// owner's anywhere, or the engine stopped.
    pub async fn prefix_probe(
        &self,
        kind: Kind,
        model: &str,
        chain: inference_queue::PrefixChain,
        owner: Option<Arc<str>>,
    ) -> Vec<(LaneId, usize)> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::PrefixProbe {
            kind,
            model: model.to_owned(),
            chain,
            owner,
            reply,
        };
        if self.tx.send(msg).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The predicted wait of a request of `kind` for `model` submitted now
    /// ([`inference_queue::Scheduler::predicted_wait`]); `None` when no lane may serve it now.
    pub async fn estimate(&self, kind: Kind, model: &str) -> Result<Option<Duration>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Estimate {
                kind,
                model: model.to_owned(),
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(|r| EngineError::from_rejection(r, kind))
    }

    /// Change the scheduler's policy (priorities, bounds, limits, deadlines) while work waits
    /// and runs; an invalid one is refused and the running one kept.
    pub async fn set_policy(
        &self,
        policy: inference_queue::Policy,
    ) -> Result<Result<(), inference_queue::ConfigError>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::SetPolicy { policy, reply })
            .map_err(|_| EngineError::ShuttingDown)?;
        let result = rx.await.map_err(|_| EngineError::ShuttingDown)?;
        Ok(result.map(|config| self.set_config(config)))
    }

    /// The upstreams' catalogues were read again: kinds an upstream refused for a model (501)
    /// are sent there again (see [`inference_queue::Scheduler::restore_kinds`]).
    pub fn restore_kinds(&self) {
        let _ = self.tx.send(Msg::RestoreKinds);
    }

    /// Serve `models` on `lanes` from now on, matched by name (see
    /// [`inference_queue::Scheduler::set_topology`]): new lanes need their upstream in the backend
    /// first, at the ids they get (appended in `lanes` order). Nothing waiting or running is
    /// dropped; an invalid change is refused whole.
    pub async fn set_topology(
        &self,
        models: Vec<inference_queue::ModelSpec>,
        lanes: Vec<inference_queue::LaneSpec>,
        restarted: Vec<String>,
    ) -> Result<Result<TopologyChange, inference_queue::ConfigError>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::SetTopology {
                models,
                lanes,
                restarted,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        let result = rx.await.map_err(|_| EngineError::ShuttingDown)?;
        Ok(result.map(|(change, config)| {
            self.set_config(config);
            change
        }))
    }

    fn set_config(&self, config: Config) {
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Load `model` on `lane` (or where its work would go) at the lane's next switch point.
    pub async fn load_model(
        &self,
        model: &str,
        lane: Option<LaneId>,
    ) -> Result<Result<(LaneId, LoadOutcome), Rejection>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::LoadModel {
                model: model.to_owned(),
                lane,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Unload `model` from `lane`; refused while it has work unless `force`.
    pub async fn unload_model(
        &self,
        model: &str,
        lane: LaneId,
        force: bool,
    ) -> Result<Result<UnloadOutcome, UnloadRefusal>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::UnloadModel {
                model: model.to_owned(),
                lane,
                force,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Stop intake, let queued and running work finish within `grace`, answer the rest with
    /// [`EngineError::ShuttingDown`]. Returns when every request has left.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { grace, done }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Readiness of every lane in service (a retired one is left out): its upstream answers and
    /// its breaker is closed.
    pub async fn readiness(&self) -> Vec<LaneReadiness> {
        let status = self.status().await;
        let mut out = Vec::new();
        for (i, name) in self.config().lanes.iter().enumerate() {
            let retired = status
                .as_ref()
                .and_then(|s| s.lanes.get(i))
                .is_some_and(|l| l.breaker == inference_queue::BreakerState::Retired);
            if retired {
                continue;
            }
            let probe =
                tokio::time::timeout(Duration::from_secs(3), self.shared.backend.ready(LaneId(i)))
                    .await;
            let (reachable, error) = match probe {
                Ok(Ok(())) => (true, None),
                Ok(Err(e)) => (false, Some(e.to_string())),
                Err(_) => (false, Some("no answer within 3 s".to_owned())),
            };
            let breaker = status
                .as_ref()
                .and_then(|s| s.lanes.get(i))
                .map_or("unknown", |l| l.breaker.as_str());
            out.push(LaneReadiness {
                name: name.name.clone(),
                reachable,
                breaker,
                error,
            });
        }
        out
    }

    /// The scheduler configuration in force (a snapshot: a reload may change it). Its models
    /// are those served; its lanes are all lanes by id, retired ones included (their status says
    /// `retired`).
    pub fn config(&self) -> Arc<Config> {
        self.shared
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Models serving `kind`.
    pub fn models_for(&self, kind: Kind) -> Vec<String> {
        self.config()
            .models
            .iter()
            .filter(|m| m.kinds.contains(&kind))
            .map(|m| m.name.clone())
            .collect()
    }

    /// The kinds `model` serves, if it is served.
    pub fn kinds_of(&self, model: &str) -> Option<Vec<Kind>> {
        self.config()
            .models
            .iter()
            .find(|m| m.name == model)
            .map(|m| m.kinds.clone())
    }

    /// The metrics recorder.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }
}
