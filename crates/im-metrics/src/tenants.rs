//! What each tenant used: requests by outcome, queue wait, tokens. Labelled by tenant name for
//! configured tenants and `other` for the rest (the service decides the label), so the label
//! set stays bounded.

use std::collections::BTreeMap;
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

/// A tenant's unit of work in im: counted in `im_tenant_in_flight` until dropped.
pub struct InSystem {
    metrics: Metrics,
    label: String,
}

impl Drop for InSystem {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.registry
            .gauge(names::TENANT_IN_FLIGHT, &[("tenant", self.label.clone())])
            .decrement(1.0);
        if let Some(t) = m.lock().tenants.get_mut(&self.label) {
            t.in_flight -= 1;
        }
    }
}

/// The tenants' metrics (see [`Metrics::tenants`]).
#[derive(Clone, Copy)]
pub struct TenantMetrics<'a>(pub(crate) &'a Metrics);

impl TenantMetrics<'_> {
    /// A unit of work of tenant `label` entered im; it counts as in flight until the guard is
    /// dropped (answered, failed or abandoned).
    pub fn entered(&self, label: &str) -> InSystem {
        let m = self.0;
        m.registry
            .gauge(names::TENANT_IN_FLIGHT, &[("tenant", label.to_owned())])
            .increment(1.0);
        m.lock()
            .tenants
            .entry(label.to_owned())
            .or_default()
            .in_flight += 1;
        InSystem {
            metrics: m.clone(),
            label: label.to_owned(),
        }
    }

    /// Tenant `label` was served `took` of upstream time in priority class `class`.
    pub fn served(&self, label: &str, class: &str, took: Duration) {
        let m = self.0;
        let labels = [("tenant", label.to_owned()), ("class", class.to_owned())];
        m.registry
            .histogram(names::TENANT_SERVICE_SECONDS, &labels)
            .record(took.as_secs_f64());
        m.lock()
            .tenants
            .entry(label.to_owned())
            .or_default()
            .served_s += took.as_secs_f64();
    }

    /// A unit of work of tenant `label` in priority class `class` ended with `outcome` (`ok` or
    /// an error type), after waiting `wait` in the queue and using `tokens`.
    pub fn request(
        &self,
        label: &str,
        class: &str,
        outcome: &str,
        wait: Option<Duration>,
        tokens: Option<u64>,
    ) {
        let m = self.0;
        let tenant = ("tenant", label.to_owned());
        m.registry
            .counter(
                names::TENANT_REQUESTS_TOTAL,
                &[tenant.clone(), ("outcome", outcome.to_owned())],
            )
            .increment(1);
        if let Some(w) = wait {
            m.registry
                .histogram(
                    names::TENANT_QUEUE_WAIT_SECONDS,
                    &[tenant.clone(), ("class", class.to_owned())],
                )
                .record(w.as_secs_f64());
        }
        if let Some(t) = tokens {
            m.registry
                .counter(names::TENANT_TOKENS_TOTAL, &[tenant])
                .increment(t);
        }
        let mut s = m.lock();
        let stats = s.tenants.entry(label.to_owned()).or_default();
        stats.requests += 1;
        stats.errors += u64::from(outcome != "ok");
        stats.tokens += tokens.unwrap_or(0);
        if let Some(w) = wait {
            stats.wait_ms_total += w.as_secs_f64() * 1000.0;
            stats.waited += 1;
        }
    }

    /// The Prometheus text with only tenant `only`'s labelled series (`None`: every tenant's):
    /// what a key that does not see every tenant reads at `/metrics`.
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
        let s = self.0.lock();
        let rows: Vec<Value> = s
            .tenants
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, t)| {
                json!({"tenant": name, "requests": t.requests, "errors": t.errors, "tokens": t.tokens,
                       "mean_wait_ms": (t.waited > 0).then(|| t.wait_ms_total / t.waited as f64),
                       "served_s": t.served_s, "in_flight": t.in_flight})
            })
            .collect();
        json!({ "tenants": rows })
    }
}

pub(crate) type Tenants = BTreeMap<String, TenantStats>;
