//! The fleet as it is: which upstream serves which model, read from each upstream at start,
//! every `discovery.refresh_s`, and when a request names a model no upstream lists.
//!
//! [`Fleet`] owns the configuration in force and the [`ModelSet`]; a reload changes the set's
//! configured part and the upstreams (through `Fleet::reconfigure`), a reading the lanes'
//! catalogues; both hand the scheduler the merged models through one path
//! (`topology::apply`). In cluster mode only the replica holding the scheduler lease
//! reads.

mod dns;
mod models;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use im_cluster::Fence;
use im_engine::{Engine, LocalAiBackend};
use im_service::{Discovery, Lookup};
use localai_client::{ClientError, LocalAiClient};

pub use dns::{DnsLanes, DnsUrl, lane_of_upstream};
pub use models::{Catalogue, ModelSet};

use crate::config::ImConfig;

/// How long one upstream's catalogue may take to read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Readings a miss may cause: at most one per this interval, whatever the names.
const MISS_READ_INTERVAL: Duration = Duration::from_secs(1);
/// Names remembered as recently missed (a full table looks for nothing new until it ages).
const MISSES_KEPT: usize = 4096;

/// The fleet's models and the configuration in force.
pub struct Fleet {
    engine: Engine,
    backend: Arc<LocalAiBackend>,
    fence: Fence,
    /// The configuration in force (models merged).
    running: Mutex<ImConfig>,
    /// Held for a whole reading or reconfiguration, so they apply one at a time.
    set: tokio::sync::Mutex<ModelSet>,
    /// The upstreams as configured (`dns+` ones not yet expanded into their addresses).
    declared: Mutex<Vec<crate::config::UpstreamEntry>>,
    /// The lanes of the `dns+` upstreams (locked only under `set`).
    dns: tokio::sync::Mutex<DnsLanes>,
    /// Readings completed since start.
    readings: std::sync::atomic::AtomicU64,
    /// When the last completed reading started.
    last_started: Mutex<Option<Instant>>,
    /// Whether some upstream was never reached (as of the last reading).
    unreached: std::sync::atomic::AtomicBool,
    misses: Mutex<Misses>,
}

#[derive(Default)]
struct Misses {
    /// Names missed recently, and when.
    names: HashMap<String, Instant>,
    /// When the last reading a miss asked for starts (it may be ahead).
    last_read: Option<Instant>,
}

impl Fleet {
    /// The fleet of a built im: `running` is its configuration (models already merged from
    /// `set`).
    pub(crate) fn new(
        engine: Engine,
        backend: Arc<LocalAiBackend>,
        fence: Fence,
        running: ImConfig,
        set: ModelSet,
        (declared, dns): (Vec<crate::config::UpstreamEntry>, DnsLanes),
    ) -> Arc<Fleet> {
        let unreached = set.has_unreached().into();
        Arc::new(Fleet {
            engine,
            backend,
            fence,
            running: Mutex::new(running),
            set: tokio::sync::Mutex::new(set),
            declared: Mutex::new(declared),
            dns: tokio::sync::Mutex::new(dns),
            readings: Default::default(),
            last_started: Mutex::new(None),
            unreached,
            misses: Mutex::new(Misses::default()),
        })
    }

    /// The configuration in force.
    pub fn running(&self) -> ImConfig {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configured part of the model set.
    pub async fn configured(&self) -> Vec<crate::config::ModelEntry> {
        self.set.lock().await.configured().to_vec()
    }

    /// Catalogue readings done since start (each reads every upstream once).
    pub fn readings(&self) -> u64 {
        self.readings.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The upstreams as configured (a `dns+` one as one upstream).
    pub fn declared_upstreams(&self) -> Vec<crate::config::UpstreamEntry> {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Apply `next` (a reload; its upstreams as configured): its models become the configured
    /// part, its upstreams (their addresses, for `dns+` ones) the lanes; the merged models and
    /// the lanes go to the scheduler. Nothing changes when the scheduler refuses them.
    pub(crate) async fn reconfigure(
        &self,
        next: ImConfig,
    ) -> Result<(ImConfig, inference_queue::TopologyChange), String> {
        let mut set = self.set.lock().await;
        let declared = next.upstreams.clone();
        let next = self.dns.lock().await.expand(&next).await;
        let mut trial = set.clone();
        trial.set_configured(next.models.clone());
        let applied = self.apply(&mut set, trial, next).await?;
        *self.declared.lock().unwrap_or_else(|p| p.into_inner()) = declared;
        Ok(applied)
    }

    /// Make `next` the configuration in force, with `trial` (the set it changes) taking its
    /// lanes: the merged models and the lanes go to the scheduler; nothing changes when it
    /// refuses them.
    async fn apply(
        &self,
        set: &mut ModelSet,
        mut trial: ModelSet,
        mut next: ImConfig,
    ) -> Result<(ImConfig, inference_queue::TopologyChange), String> {
        trial.set_lanes(&next.lane_names());
        next.models = trial.merged();
        next.validate().map_err(|e| e.to_string())?;
        let change =
            crate::topology::apply(&next, &self.engine, &self.backend, &self.fence).await?;
        self.unreached
            .store(trial.has_unreached(), std::sync::atomic::Ordering::SeqCst);
        *set = trial;
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = next.clone();
        Ok((next, change))
    }

    /// Resolve the `dns+` upstreams again; addresses that came join as lanes, those that went
    /// are retired.
    async fn follow_dns(&self, set: &mut ModelSet) {
        let declared = self.declared_upstreams();
        if !declared
            .iter()
            .any(|u| u.url().starts_with(dns::DNS_PREFIX))
        {
            return;
        }
        let running = self.running();
        let next = self
            .dns
            .lock()
            .await
            .expand(&ImConfig {
                upstreams: declared,
                ..running.clone()
            })
            .await;
        if next.upstreams == running.upstreams {
            return;
        }
        let trial = set.clone();
        match self.apply(set, trial, next).await {
            Ok((_, change)) => tracing::info!(?change, "the upstreams' addresses changed"),
            Err(e) => {
                tracing::warn!(error = %e, "the upstreams' new addresses could not be applied")
            }
        }
    }

    /// Read every upstream's catalogue and apply what changed.
    pub async fn refresh(&self) {
        let mut set = self.set.lock().await;
        self.read_all(&mut set).await;
    }

    async fn read_all(&self, set: &mut ModelSet) {
        let started = Instant::now();
        self.follow_dns(set).await;
        let running = self.running();
        let lanes = self.engine.config().lanes.clone();
        let clients = self.backend.clients();
        let largest = running
            .upstreams
            .iter()
            .filter_map(|u| u.memory_gib())
            .reduce(f64::max);
        let reads = running.lane_names().into_iter().filter_map(|name: String| {
            let id = lanes.iter().position(|l| l.name == name)?;
            let client = clients.get(id)?.clone();
            let defaults = running.discovery.clone();
            Some(async move {
                let read = tokio::time::timeout(
                    READ_TIMEOUT,
                    crate::build::discover(&client, &defaults, largest),
                )
                .await;
                (name, catalogue_of(read))
            })
        });
        let mut listed = false;
        for (name, found) in futures_util::future::join_all(reads).await {
            listed |= matches!(found, Catalogue::Listed(_));
            set.read(&name, found);
        }
        if listed {
            // The catalogues report their kinds again: a kind refused since is tried again.
            self.engine.restore_kinds();
        }
        self.unreached
            .store(set.has_unreached(), std::sync::atomic::Ordering::SeqCst);
        let merged = set.merged();
        if merged != running.models {
            let mut next = running;
            next.models = merged;
            match crate::topology::apply(&next, &self.engine, &self.backend, &self.fence).await {
                Ok(change) => {
                    tracing::info!(?change, models = ?next.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
                        "the upstreams' catalogues changed");
                    *self.running.lock().unwrap_or_else(|p| p.into_inner()) = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the upstreams' catalogues could not be applied")
                }
            }
        }
        *self.last_started.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        self.readings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this replica reads the catalogues: alone, or holding the scheduler lease.
    fn reads(&self) -> bool {
        let clustered = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cluster
            .redis_url
            .is_some();
        !clustered || self.fence.token().is_some()
    }

    /// Read every `refresh` until the fleet is dropped.
    pub(crate) fn spawn_refresh(fleet: &Arc<Fleet>, refresh: Duration) {
        let weak: Weak<Fleet> = Arc::downgrade(fleet);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(fleet) = weak.upgrade() else { return };
                if fleet.reads() {
                    fleet.refresh().await;
                }
            }
        });
    }

    /// Look for `model` after a request named it and the scheduler did not know it: a name
    /// not missed recently waits (at most `discovery.miss_wait_ms`) for a reading that starts
    /// after it was missed. Readings a miss causes are at least [`MISS_READ_INTERVAL`] apart and
    /// shared by every miss waiting for them, so unknown names cannot drive discovery; a name
    /// missed again within `refresh_s` (at least a second) waits for nothing.
    async fn look_for(self: Arc<Fleet>, model: String) -> Lookup {
        let now = Instant::now();
        let (refresh, wait) = {
            let r = self.running.lock().unwrap_or_else(|p| p.into_inner());
            (
                Duration::from_secs_f64(r.discovery.refresh_s.max(1.0)),
                Duration::from_millis(r.discovery.miss_wait_ms),
            )
        };
        let read_at = {
            let mut m = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            m.names.retain(|_, at| now.duration_since(*at) < refresh);
            let recent = m.names.contains_key(&model) || m.names.len() >= MISSES_KEPT;
            if recent || !self.reads() {
                None
            } else {
                m.names.insert(model.clone(), now);
                // The next reading a miss may start: now, or a scheduled one, or one spaced
                // after the last.
                let at = match m.last_read {
                    Some(at) if at >= now => at,
                    Some(at) if now.duration_since(at) < MISS_READ_INTERVAL => {
                        at + MISS_READ_INTERVAL
                    }
                    _ => now,
                };
                (at.duration_since(now) < wait).then(|| {
                    m.last_read = Some(at);
                    at
                })
            }
        };
        if let Some(at) = read_at {
            let this = self.clone();
            // The reading runs to its end even when this request stops waiting for it.
            let reading = tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let mut set = this.set.lock().await;
                let started = this
                    .last_started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|s| s >= now);
                if !started {
                    this.read_all(&mut set).await;
                }
            });
            let _ = tokio::time::timeout(wait, reading).await;
        }
        if self.engine.config().models.iter().any(|m| m.name == model) {
            Lookup::Found
        } else if self.unreached.load(std::sync::atomic::Ordering::SeqCst) {
            Lookup::NotYet
        } else {
            Lookup::Unknown
        }
    }
}

/// The service's seam, over a fleet it does not keep alive.
pub(crate) struct FleetDiscovery(pub(crate) Weak<Fleet>);

impl Discovery for FleetDiscovery {
    fn kinds_guessed(&self) -> Vec<String> {
        self.0.upgrade().map_or_else(Vec::new, |f| {
            f.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .models
                .iter()
                .filter(|m| m.kinds_guessed)
                .map(|m| m.name.clone())
                .collect()
        })
    }

    fn missed(&self, model: &str) -> BoxFuture<'static, Lookup> {
        let fleet = self.0.upgrade();
        let model = model.to_owned();
        Box::pin(async move {
            match fleet {
                Some(f) => f.look_for(model).await,
                None => Lookup::Unknown,
            }
        })
    }
}

/// What a reading of one upstream's catalogue says.
pub(crate) fn catalogue_of(
    read: Result<Result<Vec<crate::config::ModelEntry>, ClientError>, tokio::time::error::Elapsed>,
) -> Catalogue {
    match read {
        Ok(Ok(list)) => Catalogue::Listed(list),
        Ok(Err(ClientError::Status {
            status: 404 | 405 | 501,
            ..
        })) => Catalogue::Unlisted,
        Ok(Err(_)) | Err(_) => Catalogue::Unreached,
    }
}

/// Read every client's catalogue at start, at once.
pub(crate) async fn read_at_start(
    clients: &[LocalAiClient],
    names: &[String],
    config: &ImConfig,
    largest: Option<f64>,
) -> ModelSet {
    let mut set = ModelSet::new(config.models.clone(), names);
    let reads = clients.iter().zip(names).map(|(c, name)| async move {
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            crate::build::discover(c, &config.discovery, largest),
        )
        .await;
        (name.clone(), catalogue_of(read))
    });
    for (name, found) in futures_util::future::join_all(reads).await {
        if found == Catalogue::Unreached {
            tracing::warn!(upstream = %name, "upstream not reachable at start: it joins when it answers");
        }
        set.read(&name, found);
    }
    set
}
