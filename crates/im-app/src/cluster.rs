//! Joining the replicas of a distributed im (`[cluster] redis_url`): take part in the scheduler
//! lease on a thread of its own; on taking it, write with its fencing token and start the job
//! service on the Redis store; on losing it, stop the process (see `im_cluster::lease`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use im_cluster::{Holder, Lease, LeaseSettings, RedisJobStore, Role};
use tokio::sync::watch;

use crate::build::{BuildError, Built};

/// This replica's part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Who schedules, as this replica knows it.
    pub role: watch::Receiver<Role>,
    /// This replica's id.
    pub replica: String,
    /// Where the other replicas reach this one.
    pub url: String,
    lease: Duration,
    failover_wait: Duration,
    metrics: im_metrics::Metrics,
    /// What this replica sends to prove itself to the scheduler (with a fence secret).
    proof: Option<String>,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The exit code of a replica that lost its scheduler lease (a supervisor restarts it as a new
/// replica, which follows).
pub const LOST_LEASE_EXIT: i32 = 75;

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Join the cluster when `[cluster] redis_url` is set (`local` is where this replica listens);
/// `None` in the embedded mode.
pub fn join(built: &Built, local: SocketAddr) -> Result<Option<Cluster>, BuildError> {
    let cfg = &built.config.cluster;
    let Some(redis_url) = cfg.redis_url.clone() else {
        return Ok(None);
    };
    let host = hostname();
    let replica = format!("{host}-{}", &im_jobs::signing::random_id("")[..8]);
    let url = cfg.advertise_url.clone().unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("http://{host}:{}", local.port())
        } else {
            format!("http://{local}")
        }
    });
    let failed = |e: &dyn std::fmt::Display| BuildError::Cluster(e.to_string());
    let lease = Lease::new(LeaseSettings {
        redis_url: redis_url.clone(),
        prefix: cfg.key_prefix.clone(),
        replica: replica.clone(),
        url: url.clone(),
        ttl: cfg.lease(),
    })
    .map_err(|e| failed(&e))?;
    let (role_tx, role) = watch::channel(Role::Unknown);
    let stop = Arc::new(AtomicBool::new(false));
    let promote = promotion(built, redis_url);
    let fence = built.fence.clone();
    let lost = |why: &str| {
        tracing::error!(
            reason = why,
            "this replica lost the scheduler lease; stopping so that nothing it started outlives it"
        );
        eprintln!("im: lost the scheduler lease ({why}); exiting");
        std::process::exit(LOST_LEASE_EXIT);
    };
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("im-lease".into())
        .spawn(move || lease.run(role_tx, fence, promote, lost, flag))
        .map_err(|e| failed(&e))?;
    tracing::info!(%replica, %url, "joined the cluster");
    let proof = cfg.secret().map(|s| s.prove(&replica));
    tokio::spawn(export_role(role.clone(), built.engine.metrics().clone()));
    Ok(Some(Cluster {
        role,
        replica,
        url,
        lease: cfg.lease(),
        failover_wait: cfg.failover_wait(),
        metrics: built.engine.metrics().clone(),
        proof,
        stop,
        draining: Arc::new(AtomicBool::new(false)),
        thread: Some(thread),
    }))
}

/// What taking the lease starts (the lease has set the fencing token upstream calls and job writes
/// carry): the job service over the Redis store, recovering what the previous scheduler left.
fn promotion(built: &Built, redis_url: String) -> impl FnOnce(&Holder) + Send + 'static {
    let runtime = tokio::runtime::Handle::current();
    let fence = built.fence.clone();
    let config = built.config.clone();
    let jobs = built.state.jobs.clone();
    let service = built.service.clone();
    let metrics = built.engine.metrics().clone();
    move |_: &Holder| {
        if !config.jobs.enabled {
            return;
        }
        let _in_runtime = runtime.enter();
        let started = RedisJobStore::new(&redis_url, &config.cluster.key_prefix, fence)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                let settings = crate::build::jobs_settings(&config, || {
                    let text = store
                        .shared_secret(&im_jobs::Secret::generate())
                        .map_err(|e| e.to_string())?;
                    im_jobs::Secret::parse(&text).map_err(|e| e.to_string())
                })?;
                let runner = Arc::new(crate::jobs::ServiceRunner(service));
                im_jobs::Jobs::start(Arc::new(store), runner, settings, metrics)
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(j) => {
                jobs.set(j);
                tracing::info!("durable jobs on, in Redis");
            }
            Err(e) => {
                // A scheduler without its jobs would leave them waiting: let another replica try.
                tracing::error!(error = %e, "starting the job service on Redis failed");
                eprintln!("im: starting the job service on Redis failed: {e}; exiting");
                std::process::exit(LOST_LEASE_EXIT);
            }
        }
    }
}

/// Keep `im_cluster_scheduler` and `im_cluster_epoch` on what the lease says.
async fn export_role(mut role: watch::Receiver<Role>, metrics: im_metrics::Metrics) {
    loop {
        let (scheduler, epoch) = match &*role.borrow_and_update() {
            Role::Scheduler(h) => (true, h.epoch),
            Role::Follower(h) => (false, h.epoch),
            Role::Unknown => (false, 0),
        };
        metrics.cluster().role(scheduler, epoch);
        if role.changed().await.is_err() {
            return;
        }
    }
}

impl Cluster {
    /// The HTTP layer that forwards to the scheduler, checking keys with `service`'s.
    pub fn forwarder(
        &self,
        service: &im_service::Service,
        config: &crate::config::ImConfig,
    ) -> im_http_api::forward::Forwarder {
        let body_limit = config.http.body_limit_bytes;
        im_http_api::forward::Forwarder::new(
            service.clone(),
            config.jobs.ingest_body_limit_kib * 1024,
            self.role.clone(),
            self.replica.clone(),
            self.lease,
            self.failover_wait,
            body_limit,
            self.draining.clone(),
            self.metrics.clone(),
            self.proof.clone(),
        )
    }

    /// The flag a shutdown sets first: from then on work the followers forward here is sent back
    /// to them (they hold it until the next scheduler takes the lease, released by [`leave`]).
    ///
    /// [`leave`]: Cluster::leave
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Leave (a clean shutdown): a held lease is released, so another replica takes over at once.
    pub fn leave(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
