//! Configuration reload (SIGHUP, `POST /admin/reload`): the file is read and validated again, and
//! what may change while requests wait and run is applied: keys and their scopes and rate limits,
//! priorities, the policy and its bounds, admission limits and deadlines, models and upstreams
//! (see `topology`). Nothing queued or in flight is dropped. A file that does not load or
//! validate, or that changes what only a restart can (listen address, routing, ...), is refused
//! whole and the running configuration stays; the refusal names the fields.

use std::sync::{Arc, Mutex};

use im_engine::Engine;
use im_service::Service;

use crate::config::ImConfig;

/// The top-level settings a reload applies; everything else needs a restart.
pub const RELOADABLE: &[&str] = &[
    "api_keys",
    "keys",
    "tenants",
    "priority",
    "policy",
    "bounds",
    "limits",
    "deadlines_s",
    "models",
    "upstreams",
];

/// Settings inside `[http]` a reload applies.
pub const RELOADABLE_HTTP: &[&str] = &["rate_limit_per_s", "rate_limit_burst"];

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error("the configuration is invalid; the running one stays: {0}")]
    Invalid(String),
    /// It changes settings that need a restart.
    #[error("these settings change only with a restart; nothing was reloaded: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
    /// im is shutting down.
    #[error("im is shutting down")]
    ShuttingDown,
}

type Loader = dyn Fn() -> anyhow::Result<ImConfig> + Send + Sync;

/// Reloads the configuration into a running im. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    load: Arc<Loader>,
    /// What the loader gave at start-up or at the last reload (before `build` filled in models).
    loaded: Arc<Mutex<ImConfig>>,
    /// The configuration in force and the model set.
    fleet: Arc<crate::fleet::Fleet>,
    engine: Engine,
    service: Service,
    demo_key: bool,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// The top-level fields (and `http.` ones) whose values differ between `a` and `b`, leaving out
/// the reloadable ones.
fn restart_only_changes(a: &ImConfig, b: &ImConfig) -> Vec<String> {
    let table = |c: &ImConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (ta, tb) = (table(a), table(b));
    let mut changed = Vec::new();
    let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for k in keys {
        if RELOADABLE.contains(&k.as_str()) {
            continue;
        }
        let (va, vb) = (ta.get(k), tb.get(k));
        if k == "http" {
            let inner = |v: Option<&toml::Value>| -> toml::Table {
                let mut t = v.and_then(|v| v.as_table()).cloned().unwrap_or_default();
                t.retain(|name, _| !RELOADABLE_HTTP.contains(&name));
                t
            };
            let (ia, ib) = (inner(va), inner(vb));
            let names: std::collections::BTreeSet<&String> = ia.keys().chain(ib.keys()).collect();
            changed.extend(
                names
                    .into_iter()
                    .filter(|n| ia.get(*n) != ib.get(*n))
                    .map(|n| format!("http.{n}")),
            );
        } else if va != vb {
            changed.push(k.clone());
        }
    }
    changed
}

impl Reloader {
    /// A reloader for a running im: `load` reads the configuration as at start-up (file, flags,
    /// environment); `loaded` is what it gave then; `built` is im.
    pub fn new(
        load: impl Fn() -> anyhow::Result<ImConfig> + Send + Sync + 'static,
        loaded: ImConfig,
        built: &crate::Built,
    ) -> Reloader {
        Reloader {
            load: Arc::new(load),
            loaded: Arc::new(Mutex::new(loaded)),
            fleet: built.fleet.clone(),
            engine: built.engine.clone(),
            service: built.service.clone(),
            demo_key: built.sim.is_some(),
        }
    }

    /// Read the configuration again and apply it; the settings that changed. Counted in
    /// `im_config_reloads_total` either way.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let outcome = self.apply().await;
        self.engine.metrics().config().reloaded(outcome.is_ok());
        outcome
    }

    async fn apply(&self) -> Result<Vec<String>, ReloadError> {
        let mut fresh = (self.load)().map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
        let before = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let restart = restart_only_changes(&before, &fresh);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        // What would run: the running configuration with the reloadable settings of the file.
        let running = self.fleet.running();
        let mut next = running.clone();
        if self.demo_key && !fresh.has_keys() {
            fresh.api_keys = vec![crate::DEMO_KEY.to_owned()];
        }
        next.api_keys = fresh.api_keys.clone();
        next.keys = fresh.keys.clone();
        next.tenants = fresh.tenants.clone();
        next.priority = fresh.priority.clone();
        next.policy = fresh.policy;
        next.bounds = fresh.bounds.clone();
        next.limits = fresh.limits.clone();
        next.deadlines_s = fresh.deadlines_s.clone();
        next.http.rate_limit_per_s = fresh.http.rate_limit_per_s;
        next.http.rate_limit_burst = fresh.http.rate_limit_burst;
        // Models and upstreams change when the file changes them: otherwise the running ones stay
        // (the embedded simulator's URL and catalogue). The file's models are the configured
        // part of the fleet's model set; with none, the upstreams' catalogues are the models.
        next.models = if fresh.models != before.models {
            fresh.models.clone()
        } else {
            self.fleet.configured().await
        };
        next.upstreams = if fresh.upstreams != before.upstreams {
            fresh.upstreams.clone()
        } else {
            self.fleet.declared_upstreams()
        };
        next.validate()
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let (next, topology) = self
            .fleet
            .reconfigure(next)
            .await
            .map_err(ReloadError::Invalid)?;
        let core = next
            .core()
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let mut changed = Vec::new();
        let as_table = |c: &ImConfig| toml::Value::try_from(c).ok();
        let (old, new) = (as_table(&running), as_table(&next));
        for k in RELOADABLE {
            if old.as_ref().and_then(|t| t.get(k)) != new.as_ref().and_then(|t| t.get(k)) {
                changed.push((*k).to_owned());
            }
        }
        for k in RELOADABLE_HTTP {
            let get =
                |t: &Option<toml::Value>| t.as_ref().and_then(|t| t.get("http")?.get(k)).cloned();
            if get(&old) != get(&new) {
                changed.push(format!("http.{k}"));
            }
        }
        if !topology.is_empty() {
            tracing::info!(?topology, "reload: models and upstreams changed");
        }
        self.engine
            .set_policy(core.policy())
            .await
            .map_err(|_| ReloadError::ShuttingDown)?
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        self.service.set_keys(
            &next.key_specs(),
            (next.http.rate_limit_per_s, next.http.rate_limit_burst),
            &next.tenant_specs(),
        );
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(changed)
    }
}

#[async_trait::async_trait]
impl im_http_api::Reload for Reloader {
    async fn reload(&self) -> Result<Vec<String>, String> {
        Reloader::reload(self).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_outside_the_reloadable_ones_need_a_restart() {
        let a = ImConfig::default();
        let mut b = a.clone();
        b.priority = vec!["img2txt".into()];
        b.api_keys = vec!["k".into()];
        b.http.rate_limit_per_s = 7;
        assert!(restart_only_changes(&a, &b).is_empty());
        b.listen = "0.0.0.0:9".into();
        b.http.body_limit_bytes = 1;
        b.routing.replica_depth = 3;
        assert_eq!(
            restart_only_changes(&a, &b),
            ["http.body_limit_bytes", "listen", "routing"]
        );
    }
}
