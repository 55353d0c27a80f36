//! What the engine records: requests leaving (counts, waits, processing, the seed endpoints'
//! snapshots), refusals, errors, and per lane switches, placements, breakers, in-flight work and
//! the timeline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::{ErrorEntry, GroupStats, LAST_ERRORS, LaneStats, Metrics, TIMELINE, names, outcome};

/// The engine's metrics (see [`Metrics::engine`]).
#[derive(Clone, Copy)]
pub struct EngineMetrics<'a>(pub(crate) &'a Metrics);

impl<'a> EngineMetrics<'a> {
    /// Per-lane attempt figures (for `/status`).
    pub fn lanes(self) -> &'a LaneStats {
        &self.0.lanes
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
        let m = self.0;
        let second = m.started.elapsed().as_secs();
        let mut s = m.lock();
        let models = match s.groups.get_mut(kind) {
            Some(g) => g,
            None => s.groups.entry(kind.to_owned()).or_default(),
        };
        let g = match models.get_mut(model) {
            Some(g) => g,
            None => models
                .entry(model.to_owned())
                .or_insert_with(|| GroupStats::new(&m.registry, kind, model)),
        };
        g.handles
            .done
            .entry(outcome)
            .or_insert_with(|| {
                m.registry.counter(
                    names::REQUESTS_TOTAL,
                    &[
                        ("kind", kind.to_owned()),
                        ("model", model.to_owned()),
                        ("outcome", outcome.to_owned()),
                    ],
                )
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
        self.0
            .registry
            .counter(
                names::REJECTIONS_TOTAL,
                &[("kind", kind.to_owned()), ("reason", reason.to_owned())],
            )
            .increment(1);
    }

    /// Record an error for `/get_error_metrics` (the message and params are sanitized here).
    pub fn error(&self, mut e: ErrorEntry) {
        // Anything that came from a caller is bounded before it is kept.
        if e.model.chars().count() > 64 {
            e.model = e.model.chars().take(64).collect::<String>() + "…";
        }
        e.message = crate::sanitize_text(&e.message);
        e.params = crate::sanitize(&e.params);
        if e.time_ms == 0 {
            e.time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        let mut s = self.0.lock();
        *s.errors_by
            .entry((e.kind.clone(), e.model.clone(), e.class.clone()))
            .or_default() += 1;
        if s.last_errors.len() == LAST_ERRORS {
            s.last_errors.pop_front();
        }
        s.last_errors.push_back(e);
    }

    /// A lane event for the timeline: `what` is `switch` (another group, same model), `load`
    /// (another model), `breaker_open` or `breaker_closed`.
    pub fn lane_event(&self, lane: &str, what: &'static str, kind: &str, model: &str) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.0.lock();
        if s.timeline.len() == TIMELINE {
            s.timeline.pop_front();
        }
        s.timeline.push_back(
            json!({"at_ms": at_ms, "lane": lane, "what": what, "kind": kind, "model": model}),
        );
    }

    /// A lane changed its active group.
    pub fn switched(&self, lane: &str, from_kind: &str, to_kind: &str) {
        self.0
            .registry
            .counter(
                names::SWITCHES_TOTAL,
                &[
                    ("lane", lane.to_owned()),
                    ("from_kind", from_kind.to_owned()),
                    ("to_kind", to_kind.to_owned()),
                ],
            )
            .increment(1);
    }

    /// A lane took up a group: `outcome` is `resident`, `cold_load` or `eviction` (see
    /// [`names::PLACEMENTS_TOTAL`]).
    pub fn placed(&self, lane: &str, outcome: &'static str) {
        self.0
            .registry
            .counter(
                names::PLACEMENTS_TOTAL,
                &[("lane", lane.to_owned()), ("outcome", outcome.to_owned())],
            )
            .increment(1);
    }

    /// A prompt of `blocks` blocks went to `lane`, `cached` of them sent there before.
    pub fn prefix(&self, lane: &str, model: &str, cached: usize, blocks: usize) {
        let m = self.0;
        let known = m
            .prefix_blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(lane)
            .and_then(|by_model| by_model.get(model))
            .cloned();
        let [hit, miss] = known.unwrap_or_else(|| {
            let counter = |is_cached: &str| {
                m.registry.counter(
                    names::PREFIX_BLOCKS_TOTAL,
                    &[
                        ("lane", lane.to_owned()),
                        ("model", model.to_owned()),
                        ("cached", is_cached.to_owned()),
                    ],
                )
            };
            let pair = [counter("true"), counter("false")];
            m.prefix_blocks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(lane.to_owned())
                .or_default()
                .insert(model.to_owned(), pair.clone());
            pair
        });
        hit.increment(cached as u64);
        miss.increment(blocks.saturating_sub(cached) as u64);
    }

    /// A request of `kind` first started `error` away from its predicted start.
    pub fn prediction_error(&self, kind: &str, error: Duration) {
        self.0
            .registry
            .histogram(
                names::PREDICTION_ERROR_SECONDS,
                &[("kind", kind.to_owned())],
            )
            .record(error.as_secs_f64());
    }

    /// A model switch took `d` until the new model's first answer.
    pub fn switch_seconds(&self, lane: &str, d: Duration) {
        self.0
            .registry
            .histogram(names::SWITCH_SECONDS, &[("lane", lane.to_owned())])
            .record(d.as_secs_f64());
    }

    /// A retry was scheduled.
    pub fn retry(&self, kind: &str, model: &str, reason: &str) {
        self.0
            .registry
            .counter(
                names::RETRIES_TOTAL,
                &[
                    ("kind", kind.to_owned()),
                    ("model", model.to_owned()),
                    ("reason", reason.to_owned()),
                ],
            )
            .increment(1);
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, lane: &str, class: &str) {
        self.0
            .registry
            .counter(
                names::UPSTREAM_ERRORS_TOTAL,
                &[("lane", lane.to_owned()), ("class", class.to_owned())],
            )
            .increment(1);
    }

    /// A lane's breaker changed.
    pub fn breaker(&self, lane: &str, open: bool) {
        self.0
            .registry
            .gauge(names::BREAKER_OPEN, &[("lane", lane.to_owned())])
            .set(if open { 1.0 } else { 0.0 });
    }

    /// A group's queue depth.
    pub fn queue_depth(&self, kind: &str, model: &str, depth: usize) {
        self.0
            .registry
            .gauge(
                names::QUEUE_DEPTH,
                &[("kind", kind.to_owned()), ("model", model.to_owned())],
            )
            .set(depth as f64);
    }

    /// A lane's in-flight count.
    pub fn in_flight(&self, lane: &str, n: u32) {
        self.0
            .registry
            .gauge(names::IN_FLIGHT, &[("lane", lane.to_owned())])
            .set(f64::from(n));
    }
}
