//! `im-metrics`: every metric im exports, in one place.
//!
//! - [`names`] owns the metric names and labels of SPEC §7; nothing else spells them.
//! - [`Metrics::new`] installs the metrics-exporter-prometheus recorder (once per process, without
//!   its own HTTP listener) and [`Metrics::render`] produces the text for `GET /metrics`.
//! - [`Metrics::request_metrics`] and [`Metrics::error_metrics`] are the JSON snapshots of the
//!   seed endpoints: per kind and model counts by outcome, wait and processing p50/p95/p99,
//!   throughput over the last minute and since start; error counts by kind, model and class and the
//!   last 100 errors with [`sanitize`]d parameters (no base64 payload, no key).
//!
//! The engine records into it from outside the scheduler core; the core never sees a metric.

mod lanes;
pub mod names;
mod sanitize;

pub use lanes::{LaneFigures, LaneStats};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use serde_json::{Value, json};

pub use sanitize::{sanitize, sanitize_text};

const SAMPLES: usize = 2048;
const LAST_ERRORS: usize = 100;

/// Latency buckets (seconds) for queue wait and processing: from 1 ms to 30 min.
const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];
/// Buckets for im's own overhead (seconds): 10 µs to 100 ms.
const FAST_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1,
];

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(names::OVERHEAD_SECONDS.into()), FAST_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SLOW_BUCKETS)
            })
            .expect("bucket lists are non-empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already installed (an embedding program's): render our own,
            // unregistered one, so that /metrics still answers.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

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
    fn new(kind: &str, model: &str) -> GroupStats {
        GroupStats {
            outcomes: BTreeMap::new(),
            wait_ms: Samples::default(),
            processing_ms: Samples::default(),
            last_minute: LastMinute::default(),
            handles: GroupHandles {
                wait: metrics::histogram!(names::QUEUE_WAIT_SECONDS, "kind" => kind.to_owned(), "model" => model.to_owned()),
                processing: metrics::histogram!(names::PROCESSING_SECONDS, "kind" => kind.to_owned(), "model" => model.to_owned()),
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

/// The recorder of one im instance. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
    started: Instant,
    prom: &'static PrometheusHandle,
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
    /// A recorder; installs the Prometheus recorder on first use in the process.
    pub fn new() -> Metrics {
        Metrics {
            state: Arc::default(),
            started: Instant::now(),
            prom: prometheus(),
            lanes: LaneStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per-lane attempt figures (for `/status`).
    pub fn lanes(&self) -> &LaneStats {
        &self.lanes
    }

    /// Prometheus text for `GET /metrics`.
    pub fn render(&self) -> String {
        self.prom.render()
    }

    /// Drain histogram buffers; call every few seconds.
    pub fn run_upkeep(&self) {
        self.prom.run_upkeep();
    }

    /// A request left with `outcome` (see [`outcome`]).
    pub fn request_done(
        &self,
        kind: &str,
        model: &str,
        outcome: &'static str,
        wait: Option<Duration>,
        processing: Option<Duration>,
    ) {
        let second = self.started.elapsed().as_secs();
        let mut s = self.lock();
        let models = match s.groups.get_mut(kind) {
            Some(m) => m,
            None => s.groups.entry(kind.to_owned()).or_default(),
        };
        let g = match models.get_mut(model) {
            Some(g) => g,
            None => models
                .entry(model.to_owned())
                .or_insert_with(|| GroupStats::new(kind, model)),
        };
        g.handles
            .done
            .entry(outcome)
            .or_insert_with(|| {
                metrics::counter!(names::REQUESTS_TOTAL, "kind" => kind.to_owned(), "model" => model.to_owned(), "outcome" => outcome)
            })
            .increment(1);
        *g.outcomes.entry(outcome).or_default() += 1;
        if let Some(w) = wait {
            g.handles.wait.record(w.as_secs_f64());
            g.wait_ms.push(w.as_secs_f64() * 1000.0);
        }
        if let Some(p) = processing {
            g.handles.processing.record(p.as_secs_f64());
            g.processing_ms.push(p.as_secs_f64() * 1000.0);
        }
        if outcome == outcome::SUCCESS {
            g.last_minute.add(second);
        }
    }

    /// A request was refused at admission.
    pub fn rejected(&self, kind: &str, reason: &'static str) {
        metrics::counter!(names::REJECTIONS_TOTAL, "kind" => kind.to_owned(), "reason" => reason)
            .increment(1);
    }

    /// A lane event for the timeline: `what` is `switch` (another group, same model), `load`
    /// (another model), `breaker_open` or `breaker_closed`.
    pub fn lane_event(&self, lane: &str, what: &'static str, kind: &str, model: &str) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.lock();
        if s.timeline.len() == TIMELINE {
            s.timeline.pop_front();
        }
        s.timeline.push_back(
            json!({"at_ms": at_ms, "lane": lane, "what": what, "kind": kind, "model": model}),
        );
    }

    /// The last lane events, oldest first.
    pub fn timeline(&self) -> Value {
        Value::Array(self.lock().timeline.iter().cloned().collect())
    }

    /// im closed a WebSocket session for `reason` (see [`names::WS_CLOSED_TOTAL`]).
    pub fn ws_closed(&self, reason: &'static str) {
        metrics::counter!(names::WS_CLOSED_TOTAL, "reason" => reason).increment(1);
        *self.lock().ws_closed.entry(reason).or_default() += 1;
    }

    /// WebSocket sessions this instance closed for `reason`.
    pub fn ws_closed_count(&self, reason: &str) -> u64 {
        self.lock().ws_closed.get(reason).copied().unwrap_or(0)
    }

    /// A response cache lookup for `model`: a hit or a miss.
    pub fn cache(&self, model: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!(names::CACHE_TOTAL, "model" => model.to_owned(), "result" => result)
            .increment(1);
    }

    /// This replica's part in a cluster: whether it schedules, and the lease epoch it knows.
    pub fn cluster_role(&self, scheduler: bool, epoch: u64) {
        metrics::gauge!(names::CLUSTER_SCHEDULER).set(if scheduler { 1.0 } else { 0.0 });
        metrics::gauge!(names::CLUSTER_EPOCH).set(epoch as f64);
    }

    /// A follower's forwarding of one request: `answered`, `resent` or `unavailable`.
    pub fn forwarded(&self, outcome: &'static str) {
        metrics::counter!(names::FORWARDED_TOTAL, "outcome" => outcome).increment(1);
    }

    /// A lane changed its active group.
    pub fn switched(&self, lane: &str, from_kind: &str, to_kind: &str) {
        metrics::counter!(names::SWITCHES_TOTAL, "lane" => lane.to_owned(), "from_kind" => from_kind.to_owned(), "to_kind" => to_kind.to_owned())
            .increment(1);
    }

    /// A lane took up a group: `outcome` is `resident`, `cold_load` or `eviction` (see
    /// [`names::PLACEMENTS_TOTAL`]).
    pub fn placed(&self, lane: &str, outcome: &'static str) {
        metrics::counter!(names::PLACEMENTS_TOTAL, "lane" => lane.to_owned(), "outcome" => outcome)
            .increment(1);
    }

    /// A model switch took `d` until the new model's first answer.
    pub fn switch_seconds(&self, lane: &str, d: Duration) {
        metrics::histogram!(names::SWITCH_SECONDS, "lane" => lane.to_owned())
            .record(d.as_secs_f64());
    }

    /// A retry was scheduled.
    pub fn retry(&self, kind: &str, model: &str, reason: &str) {
        metrics::counter!(names::RETRIES_TOTAL, "kind" => kind.to_owned(), "model" => model.to_owned(), "reason" => reason.to_owned())
            .increment(1);
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, lane: &str, class: &str) {
        metrics::counter!(names::UPSTREAM_ERRORS_TOTAL, "lane" => lane.to_owned(), "class" => class.to_owned()).increment(1);
    }

    /// A lane's breaker changed.
    pub fn breaker(&self, lane: &str, open: bool) {
        metrics::gauge!(names::BREAKER_OPEN, "lane" => lane.to_owned()).set(if open {
            1.0
        } else {
            0.0
        });
    }

    /// A group's queue depth.
    pub fn queue_depth(&self, kind: &str, model: &str, depth: usize) {
        metrics::gauge!(names::QUEUE_DEPTH, "kind" => kind.to_owned(), "model" => model.to_owned())
            .set(depth as f64);
    }

    /// A lane's in-flight count.
    pub fn in_flight(&self, lane: &str, n: u32) {
        metrics::gauge!(names::IN_FLIGHT, "lane" => lane.to_owned()).set(f64::from(n));
    }

    /// How many durable jobs are queued and running now.
    pub fn jobs(&self, queued: usize, running: usize) {
        metrics::gauge!(names::JOBS, "status" => "queued").set(queued as f64);
        metrics::gauge!(names::JOBS, "status" => "running").set(running as f64);
    }

    /// A durable job reached its final state (see [`names::JOBS_COMPLETED_TOTAL`]).
    pub fn job_completed(&self, outcome: &'static str) {
        metrics::counter!(names::JOBS_COMPLETED_TOTAL, "outcome" => outcome).increment(1);
    }

    /// A webhook delivery attempt ended (see [`names::WEBHOOK_DELIVERIES_TOTAL`]).
    pub fn webhook_delivery(&self, outcome: &'static str) {
        metrics::counter!(names::WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).increment(1);
    }

    /// Time im added to one request outside queue wait and upstream time.
    pub fn overhead(&self, d: Duration) {
        metrics::histogram!(names::OVERHEAD_SECONDS).record(d.as_secs_f64());
    }

    /// Record an error for `/get_error_metrics` (the message and params are sanitized here).
    pub fn error(&self, mut e: ErrorEntry) {
        // Anything that came from a caller is bounded before it is kept.
        if e.model.chars().count() > 64 {
            e.model = e.model.chars().take(64).collect::<String>() + "…";
        }
        e.message = sanitize_text(&e.message);
        e.params = sanitize(&e.params);
        if e.time_ms == 0 {
            e.time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        let mut s = self.lock();
        *s.errors_by
            .entry((e.kind.clone(), e.model.clone(), e.class.clone()))
            .or_default() += 1;
        if s.last_errors.len() == LAST_ERRORS {
            s.last_errors.pop_front();
        }
        s.last_errors.push_back(e);
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

    /// The JSON of `GET /get_error_metrics`.
    pub fn error_metrics(&self) -> Value {
        let s = self.lock();
        let counts: Vec<Value> = s
            .errors_by
            .iter()
            .map(|((kind, model, class), n)| json!({"kind": kind, "model": model, "class": class, "count": n}))
            .collect();
        let total: u64 = s.errors_by.values().sum();
        json!({"total": total, "counts": counts, "last_errors": s.last_errors})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_count_and_rank() {
        let m = Metrics::new();
        for i in 1..=100u64 {
            m.request_done(
                "txt2txt",
                "llm",
                outcome::SUCCESS,
                Some(Duration::from_millis(i)),
                Some(Duration::from_millis(10)),
            );
        }
        m.request_done(
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
            m.error(ErrorEntry {
                time_ms: 0,
                request_id: format!("r{i}"),
                kind: "img2img".into(),
                model: "sd".into(),
                class: "upstream_error".into(),
                message: "boom".into(),
                params: json!({"file": "QUJD".repeat(40)}),
            });
        }
        let e = m.error_metrics();
        assert_eq!(e["total"], 150);
        assert_eq!(e["last_errors"].as_array().unwrap().len(), 100);
        assert_eq!(e["last_errors"][0]["request_id"], "r50");
        assert_eq!(e["last_errors"][0]["params"]["file"], "<base64: 160 bytes>");
    }

    #[test]
    fn rendered_text_parses_and_names_are_ours() {
        let m = Metrics::new();
        m.request_done(
            "txt2img",
            "sd",
            outcome::SUCCESS,
            Some(Duration::from_millis(3)),
            Some(Duration::from_secs(2)),
        );
        m.overhead(Duration::from_micros(40));
        m.breaker("default", false);
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
}
