//! What the frontends, durable jobs, replicas and the response cache record.

use std::time::Duration;

use crate::{Metrics, names};

/// The HTTP frontend's metrics (see [`Metrics::http`]).
#[derive(Clone, Copy)]
pub struct HttpMetrics<'a>(pub(crate) &'a Metrics);

impl HttpMetrics<'_> {
    /// Time im added to one request outside queue wait and upstream time.
    pub fn overhead(&self, d: Duration) {
        let m = self.0;
        m.overhead
            .get_or_init(|| m.registry.histogram(names::OVERHEAD_SECONDS, &[]))
            .record(d.as_secs_f64());
    }
}

/// The WebSocket frontend's metrics (see [`Metrics::ws`]).
#[derive(Clone, Copy)]
pub struct WsMetrics<'a>(pub(crate) &'a Metrics);

impl WsMetrics<'_> {
    /// im closed a session for `reason` (see [`names::WS_CLOSED_TOTAL`]).
    pub fn closed(&self, reason: &'static str) {
        self.0
            .registry
            .counter(names::WS_CLOSED_TOTAL, &[("reason", reason.to_owned())])
            .increment(1);
        *self.0.lock().ws_closed.entry(reason).or_default() += 1;
    }

    /// Sessions this instance closed for `reason`.
    pub fn closed_count(&self, reason: &str) -> u64 {
        self.0.lock().ws_closed.get(reason).copied().unwrap_or(0)
    }
}

/// Durable jobs' metrics (see [`Metrics::jobs`]).
#[derive(Clone, Copy)]
pub struct JobMetrics<'a>(pub(crate) &'a Metrics);

impl JobMetrics<'_> {
    /// How many jobs are queued and running now.
    pub fn counts(&self, queued: usize, running: usize) {
        let r = &self.0.registry;
        r.gauge(names::JOBS, &[("status", "queued".to_owned())])
            .set(queued as f64);
        r.gauge(names::JOBS, &[("status", "running".to_owned())])
            .set(running as f64);
    }

    /// A job reached its final state (see [`names::JOBS_COMPLETED_TOTAL`]).
    pub fn completed(&self, outcome: &'static str) {
        self.0
            .registry
            .counter(
                names::JOBS_COMPLETED_TOTAL,
                &[("outcome", outcome.to_owned())],
            )
            .increment(1);
    }

    /// A webhook delivery attempt ended (see [`names::WEBHOOK_DELIVERIES_TOTAL`]).
    pub fn delivery(&self, outcome: &'static str) {
        self.0
            .registry
            .counter(
                names::WEBHOOK_DELIVERIES_TOTAL,
                &[("outcome", outcome.to_owned())],
            )
            .increment(1);
    }
}

/// A replica's metrics (see [`Metrics::cluster`]).
#[derive(Clone, Copy)]
pub struct ClusterMetrics<'a>(pub(crate) &'a Metrics);

impl ClusterMetrics<'_> {
    /// This replica's part: whether it schedules, and the lease epoch it knows.
    pub fn role(&self, scheduler: bool, epoch: u64) {
        let r = &self.0.registry;
        r.gauge(names::CLUSTER_SCHEDULER, &[])
            .set(if scheduler { 1.0 } else { 0.0 });
        r.gauge(names::CLUSTER_EPOCH, &[]).set(epoch as f64);
    }

    /// A follower's forwarding of one request: `answered`, `resent` or `unavailable`.
    pub fn forwarded(&self, outcome: &'static str) {
        self.0
            .registry
            .counter(names::FORWARDED_TOTAL, &[("outcome", outcome.to_owned())])
            .increment(1);
    }
}

/// What configuration reloads record (see [`Metrics::config`]).
#[derive(Clone, Copy)]
pub struct ConfigMetrics<'a>(pub(crate) &'a Metrics);

impl ConfigMetrics<'_> {
    /// A reload: applied, or refused.
    pub fn reloaded(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.0
            .registry
            .counter(
                names::CONFIG_RELOADS_TOTAL,
                &[("outcome", outcome.to_owned())],
            )
            .increment(1);
    }
}

/// The response cache's metrics (see [`Metrics::cache`]).
#[derive(Clone, Copy)]
pub struct CacheMetrics<'a>(pub(crate) &'a Metrics);

impl CacheMetrics<'_> {
    /// A lookup for `model`: a hit or a miss.
    pub fn lookup(&self, model: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.0
            .registry
            .counter(
                names::CACHE_TOTAL,
                &[("model", model.to_owned()), ("result", result.to_owned())],
            )
            .increment(1);
    }

    /// The cache keeps `bytes` of answers now.
    pub fn bytes(&self, bytes: u64) {
        self.0
            .registry
            .gauge(names::CACHE_BYTES, &[])
            .set(bytes as f64);
    }
}
