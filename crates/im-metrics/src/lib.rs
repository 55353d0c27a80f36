//! `im-metrics`: every metric im exports, in one place, grouped by the subsystem that records it.
//!
//! - [`names`] owns the metric names and labels of SPEC §7; nothing else spells them.
//! - [`Metrics::new`] makes an instance with its own Prometheus registry (metrics-exporter-
//!   prometheus, without its own HTTP listener, and not installed as the process's global
//!   recorder: two instances, two tests, never share a counter); [`Metrics::render`] produces
//!   the text for `GET /metrics`.
//! - What each subsystem records: [`Metrics::engine`] (requests, lanes, switches, breakers,
//!   errors), [`Metrics::http`] (im's overhead), [`Metrics::ws`] (sessions closed),
//!   [`Metrics::jobs`] (durable jobs, webhooks), [`Metrics::cluster`] (the lease, forwarding),
//!   [`Metrics::cache`] (the response cache).
//! - [`Metrics::request_metrics`] and [`Metrics::error_metrics`] are the JSON snapshots of the
//!   seed endpoints: per kind and model counts by outcome, wait and processing p50/p95/p99,
//!   throughput over the last minute and since start; error counts by kind, model and class and the
//!   last 100 errors with [`sanitize`]d parameters (no base64 payload, no key).
//!
//! The engine records into it from outside the scheduler core; the core never sees a metric.

mod engine;
mod lanes;
pub mod names;
mod registry;
mod sanitize;
mod subsystems;
mod tenants;

pub use engine::EngineMetrics;
pub use lanes::{LaneFigures, LaneStats};
pub use subsystems::{
    CacheMetrics, ClusterMetrics, ConfigMetrics, HttpMetrics, JobMetrics, WsMetrics,
};
pub use tenants::{InSystem, TenantFigures, TenantMetrics};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

pub use sanitize::{sanitize, sanitize_text};

const SAMPLES: usize = 2048;
const LAST_ERRORS: usize = 100;

/// A request's way out, as counted in `im_requests_total{outcome}`.
pub mod outcome {
    /// Answered by the upstream.
    pub const SUCCESS: &str = "success";
    /// The upstream failed it (permanent error or retries exhausted).
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// Its queue deadline passed.
    pub const EXPIRED: &str = "expired";
    /// Its caller went away.
    pub const CANCELLED: &str = "cancelled";
    /// Shutdown ended before it ran.
    pub const SHUTDOWN: &str = "shutdown";
    /// The upstream refused it as the caller's own error (400, 413, 422).
    pub const REFUSED: &str = "refused";
    /// A bug in im (a caught panic).
    pub const INTERNAL: &str = "internal";
}

#[derive(Default)]
struct Samples {
    ring: VecDeque<f64>,
}

impl Samples {
    fn push(&mut self, v: f64) {
        if self.ring.len() == SAMPLES {
            self.ring.pop_front();
        }
        self.ring.push_back(v);
    }

    fn quantiles(&self) -> Value {
        if self.ring.is_empty() {
            return json!(null);
        }
        let mut v: Vec<f64> = self.ring.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let q = |q: f64| (v[((v.len() - 1) as f64 * q).round() as usize] * 1000.0).round() / 1000.0;
        json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": q(1.0), "samples": v.len()})
    }
}

/// Successes per second over the last minute: 60 one-second buckets, fixed size.
struct LastMinute {
    /// `(second since start, count)` per bucket, indexed by the second modulo 60.
    buckets: [(u64, u64); 60],
}

impl Default for LastMinute {
    fn default() -> LastMinute {
        LastMinute {
            buckets: [(0, 0); 60],
        }
    }
}

impl LastMinute {
    fn add(&mut self, second: u64) {
        let b = &mut self.buckets[(second % 60) as usize];
        if b.0 != second {
            *b = (second, 0);
        }
        b.1 += 1;
    }

    fn count(&self, now_second: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(s, _)| now_second.saturating_sub(*s) < 60 && *s <= now_second)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Prometheus handles of one group, registered once (label strings are not built per request).
struct GroupHandles {
    wait: metrics::Histogram,
    processing: metrics::Histogram,
    done: BTreeMap<&'static str, metrics::Counter>,
}

struct GroupStats {
    outcomes: BTreeMap<&'static str, u64>,
    wait_ms: Samples,
    processing_ms: Samples,
    last_minute: LastMinute,
    handles: GroupHandles,
}

impl GroupStats {
    fn new(registry: &registry::Registry, kind: &str, model: &str) -> GroupStats {
        let labels = [("kind", kind.to_owned()), ("model", model.to_owned())];
        GroupStats {
            outcomes: BTreeMap::new(),
            wait_ms: Samples::default(),
            processing_ms: Samples::default(),
            last_minute: LastMinute::default(),
            handles: GroupHandles {
                wait: registry.histogram(names::QUEUE_WAIT_SECONDS, &labels),
                processing: registry.histogram(names::PROCESSING_SECONDS, &labels),
                done: BTreeMap::new(),
            },
        }
    }
}

/// One entry of the last-errors list.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorEntry {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The request id.
    pub request_id: String,
    /// Kind.
    pub kind: String,
    /// Model.
    pub model: String,
    /// The error type of im's error table (`deadline_exceeded`, `upstream_error`, ...).
    pub class: String,
    /// The message sent to the caller (sanitized).
    pub message: String,
    /// The request's parameters, sanitized.
    pub params: Value,
    /// Whose request it was (its tenant): a tenant's views show its own errors only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Default)]
struct State {
    /// kind → model → stats: looked up with borrowed names, no allocation per request.
    groups: BTreeMap<String, BTreeMap<String, GroupStats>>,
    errors_by: BTreeMap<(String, String, String), u64>,
    last_errors: VecDeque<ErrorEntry>,
    ws_closed: BTreeMap<&'static str, u64>,
    timeline: VecDeque<Value>,
}

/// Lane events the timeline keeps (the dashboard shows the last minutes).
pub const TIMELINE: usize = 512;

/// Lane → model → the prefix-block counters (cached, uncached).
type PrefixCounters = BTreeMap<String, BTreeMap<String, [metrics::Counter; 2]>>;

/// The metrics of one im instance. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
    tenants: Arc<tenants::Tenants>,
    /// `im_overhead_seconds`, registered when first recorded.
    overhead: Arc<std::sync::OnceLock<metrics::Histogram>>,
    /// `im_prefix_blocks_total` by lane, then model: cached, uncached (a dispatch adds to them
    /// without building labels).
    prefix_blocks: Arc<std::sync::RwLock<PrefixCounters>>,
    started: Instant,
    registry: registry::Registry,
    lanes: LaneStats,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An instance with its own registry.
    pub fn new() -> Metrics {
        Metrics {
            state: Arc::default(),
            tenants: Arc::default(),
            overhead: Arc::default(),
            prefix_blocks: Arc::default(),
            started: Instant::now(),
            registry: registry::Registry::new(),
            lanes: LaneStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tenants_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<tenants::TenantFigures>>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Prometheus text for `GET /metrics`.
    pub fn render(&self) -> String {
        self.registry.render()
    }

    /// Drain histogram buffers; call every few seconds.
    pub fn run_upkeep(&self) {
        self.registry.run_upkeep();
    }

    /// What the engine records: requests, lanes, switches, breakers, errors.
    pub fn engine(&self) -> EngineMetrics<'_> {
        EngineMetrics(self)
    }

    /// What the HTTP frontend records: im's own overhead.
    pub fn http(&self) -> HttpMetrics<'_> {
        HttpMetrics(self)
    }

    /// What the WebSocket frontend records: sessions closed.
    pub fn ws(&self) -> WsMetrics<'_> {
        WsMetrics(self)
    }

    /// What durable jobs record: jobs and webhook deliveries.
    pub fn jobs(&self) -> JobMetrics<'_> {
        JobMetrics(self)
    }

    /// What a replica records: the lease, forwarding.
    pub fn cluster(&self) -> ClusterMetrics<'_> {
        ClusterMetrics(self)
    }

    /// What each tenant used.
    pub fn tenants(&self) -> TenantMetrics<'_> {
        TenantMetrics(self)
    }

    /// What configuration reloads record.
    pub fn config(&self) -> ConfigMetrics<'_> {
        ConfigMetrics(self)
    }

    /// What the response cache records: hits and misses.
    pub fn cache(&self) -> CacheMetrics<'_> {
        CacheMetrics(self)
    }

    /// The last lane events, oldest first.
    pub fn timeline(&self) -> Value {
        Value::Array(self.lock().timeline.iter().cloned().collect())
    }

    /// The JSON of `GET /get_request_metrics`.
    pub fn request_metrics(&self) -> Value {
        let s = self.lock();
        let uptime = self.started.elapsed().as_secs_f64().max(1e-9);
        let second = self.started.elapsed().as_secs();
        let mut total = 0u64;
        let groups: Vec<Value> = s
            .groups
            .iter()
            .flat_map(|(kind, models)| models.iter().map(move |(model, g)| (kind, model, g)))
            .map(|(kind, model, g)| {
                let count: u64 = g.outcomes.values().sum();
                total += count;
                let ok = g.outcomes.get(outcome::SUCCESS).copied().unwrap_or(0);
                let last_minute = g.last_minute.count(second);
                json!({
                    "kind": kind, "model": model, "count": count, "outcomes": g.outcomes,
                    "queue_wait_ms": g.wait_ms.quantiles(), "processing_ms": g.processing_ms.quantiles(),
                    "throughput": {"last_minute_per_s": last_minute as f64 / 60.0, "since_start_per_s": ok as f64 / uptime},
                })
            })
            .collect();
        json!({"uptime_s": uptime, "total": total, "groups": groups})
    }

    /// The JSON of `GET /get_error_metrics`, every tenant's errors.
    pub fn error_metrics(&self) -> Value {
        self.error_metrics_of(None)
    }

    /// The JSON of `GET /get_error_metrics` as `tenant` sees it (`None`: as an operator sees
    /// it): the counts of all (aggregates, by known models), the last errors of its own
    /// requests only.
    pub fn error_metrics_of(&self, tenant: Option<&str>) -> Value {
        let s = self.lock();
        let counts: Vec<Value> = s
            .errors_by
            .iter()
            .map(|((kind, model, class), n)| json!({"kind": kind, "model": model, "class": class, "count": n}))
            .collect();
        let total: u64 = s.errors_by.values().sum();
        let last: Vec<&ErrorEntry> = s
            .last_errors
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.tenant.as_deref() == Some(t)))
            .collect();
        json!({"total": total, "counts": counts, "last_errors": last})
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn snapshots_count_and_rank() {
        let m = Metrics::new();
        for i in 1..=100u64 {
            m.engine().request_done(
                "txt2txt",
                "llm",
                outcome::SUCCESS,
                Some(Duration::from_millis(i)),
                Some(Duration::from_millis(10)),
            );
        }
        m.engine().request_done(
            "txt2txt",
            "llm",
            outcome::EXPIRED,
            Some(Duration::from_secs(5)),
            None,
        );
        let v = m.request_metrics();
        let g = &v["groups"][0];
        assert_eq!(g["count"], 101);
        assert_eq!(g["outcomes"]["success"], 100);
        assert_eq!(g["queue_wait_ms"]["max"], 5000.0);
        assert!(g["throughput"]["last_minute_per_s"].as_f64().unwrap() > 1.0);
        for i in 0..150 {
            m.engine().error(ErrorEntry {
                time_ms: 0,
                request_id: format!("r{i}"),
                kind: "img2img".into(),
                model: "sd".into(),
                class: "upstream_error".into(),
                message: "boom".into(),
                params: json!({"file": "QUJD".repeat(40)}),
                tenant: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            });
        }
        let e = m.error_metrics();
        assert_eq!(e["total"], 150);
        assert_eq!(e["last_errors"].as_array().unwrap().len(), 100);
        assert_eq!(e["last_errors"][0]["request_id"], "r50");
        assert_eq!(e["last_errors"][0]["params"]["file"], "<base64: 160 bytes>");
        // A tenant sees the counts of all and its own last errors only.
        let odd = m.error_metrics_of(Some("odd"));
        assert_eq!(odd["total"], 150);
        let own = odd["last_errors"].as_array().unwrap();
        assert_eq!(own.len(), 50);
        assert!(own.iter().all(|e| e["tenant"] == "odd"));
    }

    #[test]
    fn every_metric_is_in_the_readmes_table() {
        let readme = include_str!("../../../README.md");
        let missing: Vec<&str> = names::ALL
            .iter()
            .copied()
            .filter(|n| !readme.contains(&format!("| `{n}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "README's metrics table lacks {missing:?}"
        );
    }

    #[test]
    fn rendered_text_parses_and_names_are_ours() {
        let m = Metrics::new();
        m.engine().request_done(
            "txt2img",
            "sd",
            outcome::SUCCESS,
            Some(Duration::from_millis(3)),
            Some(Duration::from_secs(2)),
        );
        m.http().overhead(Duration::from_micros(40));
        m.engine().breaker("default", false);
        let text = m.render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        for name in [names::REQUESTS_TOTAL, names::BREAKER_OPEN] {
            assert!(
                scrape.samples.iter().any(|s| s.metric == name),
                "{name} missing"
            );
        }
        assert!(scrape.samples.iter().any(|s| s.metric
            == format!("{}_bucket", names::QUEUE_WAIT_SECONDS)
            || s.metric == names::QUEUE_WAIT_SECONDS));
    }

    #[test]
    fn two_instances_never_share_a_count() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.engine().rejected("txt2txt", "queue_full");
        a.cluster().forwarded("answered");
        let sample = |m: &Metrics, series: &str| {
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        };
        let rejected = r#"im_rejections_total{kind="txt2txt",reason="queue_full"}"#;
        assert_eq!(sample(&a, rejected), Some(1.0));
        assert_eq!(sample(&b, rejected), None, "b counted nothing");
        assert_eq!(
            sample(&a, r#"im_forwarded_total{outcome="answered"}"#),
            Some(1.0)
        );
        assert!(!b.render().contains("im_forwarded_total"));
    }
}
