//! What each tenant used: requests by outcome, queue wait, tokens. Labelled by tenant name for
//! configured tenants and `other` for the rest (the service decides the label), so the label
//! set stays bounded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Metrics, names};

/// One tenant's figures for the dashboard.
#[derive(Default)]
pub(crate) struct TenantStats {
    requests: u64,
    errors: u64,
    tokens: u64,
    wait_ms_total: f64,
    waited: u64,
    served_s: f64,
    in_flight: i64,
}

/// One tenant's metric handles, registered the first time each is used and kept: a request
/// touches its tenant's figures without building label strings or looking keys up.
pub struct TenantFigures {
    label: String,
    in_flight: metrics::Gauge,
    /// By class: interactive, batch.
    service: [OnceLock<metrics::Histogram>; 2],
    wait: [OnceLock<metrics::Histogram>; 2],
    served_ok: OnceLock<metrics::Counter>,
    tokens: OnceLock<metrics::Counter>,
    stats: Mutex<TenantStats>,
    metrics: Metrics,
}

/// A unit of work in the system for its tenant (`im_tenant_in_flight`), until dropped.
pub struct InSystem(Arc<TenantFigures>);

impl Drop for InSystem {
    fn drop(&mut self) {
        self.0.in_flight.decrement(1.0);
        self.0.stats().in_flight -= 1;
    }
}

fn class_index(class: &str) -> usize {
    usize::from(class == "batch")
}

impl TenantFigures {
    fn stats(&self) -> std::sync::MutexGuard<'_, TenantStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn labelled(&self, extra: Option<(&'static str, &str)>) -> Vec<(&'static str, String)> {
        let mut labels = vec![("tenant", self.label.clone())];
        labels.extend(extra.map(|(k, v)| (k, v.to_owned())));
        labels
    }

    /// A unit of work entered the system.
    pub fn entered(self: &Arc<Self>) -> InSystem {
        self.in_flight.increment(1.0);
        self.stats().in_flight += 1;
        InSystem(self.clone())
    }

    /// A unit of work of `class` was served in `took`.
    pub fn served(&self, class: &str, took: Duration) {
        let reg = &self.metrics.registry;
        self.service[class_index(class)]
            .get_or_init(|| {
                reg.histogram(
                    names::TENANT_SERVICE_SECONDS,
                    &self.labelled(Some(("class", class))),
                )
            })
            .record(took.as_secs_f64());
        self.stats().served_s += took.as_secs_f64();
    }

    /// A unit of work of `class` ended with `outcome` (`ok` or an error type), after waiting
    /// `wait` in the queue, having used `tokens`.
    pub fn request(&self, class: &str, outcome: &str, wait: Option<Duration>, tokens: Option<u64>) {
        let reg = &self.metrics.registry;
        let outcome_counter = |o: &str| {
            reg.counter(
                names::TENANT_REQUESTS_TOTAL,
                &self.labelled(Some(("outcome", o))),
            )
        };
        if outcome == "ok" {
            self.served_ok
                .get_or_init(|| outcome_counter("ok"))
                .increment(1);
        } else {
            outcome_counter(outcome).increment(1);
        }
        if let Some(w) = wait {
            self.wait[class_index(class)]
                .get_or_init(|| {
                    reg.histogram(
                        names::TENANT_QUEUE_WAIT_SECONDS,
                        &self.labelled(Some(("class", class))),
                    )
                })
                .record(w.as_secs_f64());
        }
        if let Some(t) = tokens {
            self.tokens
                .get_or_init(|| reg.counter(names::TENANT_TOKENS_TOTAL, &self.labelled(None)))
                .increment(t);
        }
        let mut stats = self.stats();
        stats.requests += 1;
        stats.errors += u64::from(outcome != "ok");
        stats.tokens += tokens.unwrap_or(0);
        if let Some(w) = wait {
            stats.wait_ms_total += w.as_secs_f64() * 1000.0;
            stats.waited += 1;
        }
    }
}

/// The tenants' metrics (see [`Metrics::tenants`]).
#[derive(Clone, Copy)]
pub struct TenantMetrics<'a>(pub(crate) &'a Metrics);

impl TenantMetrics<'_> {
    /// The figures of the tenant labelled `label`: looked up by reference (registered the first
    /// time).
    pub fn of(&self, label: &str) -> Arc<TenantFigures> {
        let m = self.0;
        if let Some(f) = m.tenants_read().get(label) {
            return f.clone();
        }
        let mut all = m.tenants.write().unwrap_or_else(|p| p.into_inner());
        all.entry(label.to_owned())
            .or_insert_with(|| {
                Arc::new(TenantFigures {
                    label: label.to_owned(),
                    in_flight: m
                        .registry
                        .gauge(names::TENANT_IN_FLIGHT, &[("tenant", label.to_owned())]),
                    service: Default::default(),
                    wait: Default::default(),
                    served_ok: OnceLock::new(),
                    tokens: OnceLock::new(),
                    stats: Mutex::default(),
                    metrics: m.clone(),
                })
            })
            .clone()
    }

    pub fn render_for(&self, only: Option<&str>) -> String {
        let text = self.0.render();
        let Some(own) = only else { return text };
        let own = format!(
            "tenant=\"{}\"",
            own.replace('\\', "\\\\").replace('"', "\\\"")
        );
        text.lines()
            .filter(|l| l.starts_with('#') || !l.contains("tenant=\"") || l.contains(&own))
            .flat_map(|l| [l, "\n"])
            .collect()
    }

    /// Every tenant's figures (`only`: that one's), for the dashboard.
    pub fn snapshot(&self, only: Option<&str>) -> Value {
        let all = self.0.tenants_read();
        let rows: Vec<Value> = all
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, f)| {
                let t = f.stats();
                json!({"tenant": name, "requests": t.requests, "errors": t.errors, "tokens": t.tokens,
                       "mean_wait_ms": (t.waited > 0).then(|| t.wait_ms_total / t.waited as f64),
                       "served_s": t.served_s, "in_flight": t.in_flight})
            })
            .collect();
        json!({ "tenants": rows })
    }
}

/// Every tenant's figures, by label (sorted, for the views).
pub(crate) type Tenants = RwLock<BTreeMap<String, Arc<TenantFigures>>>;
