//! The scheduler's configuration from im's: priorities, bounds, limits, deadlines, retries,
//! breaker, routing and prefix placement, the models and the lanes, each error naming the TOML
//! key it came from.

use std::time::Duration;

use inference_queue::{Bounds, BreakerConfig, Config as CoreConfig, Kind, ModelSpec, RetryPolicy};

use super::{
    ConfigError, ImConfig, MAX_SECONDS, ModelEntry, PolicyName, TOKENS_PER_PREFIX_BLOCK, invalid,
    secs,
};

/// GiB (as configured) to MiB (as the core counts).
fn mib(field: &str, gib: f64) -> Result<u64, ConfigError> {
    if !gib.is_finite() || gib <= 0.0 || gib > 1_000_000.0 {
        return Err(invalid(field, "must be a number of GiB > 0"));
    }
    Ok(((gib * 1024.0).round() as u64).max(1))
}

fn millis(field: &str, v: u64) -> Result<Duration, ConfigError> {
    if v as f64 / 1000.0 > MAX_SECONDS {
        return Err(invalid(field, "must be at most a year"));
    }
    Ok(Duration::from_millis(v))
}

/// The TOML key of a field the scheduler core names in its validation errors.
fn toml_key(core_field: &str) -> String {
    const KEYS: &[(&str, &str)] = &[
        ("bounds.max_dwell", "bounds.max_dwell_s"),
        ("bounds.starvation_after", "bounds.starvation_after_s"),
        (
            "bounds.batch_starvation_after",
            "bounds.batch_starvation_after_s",
        ),
        ("retry.base", "retry.base_ms"),
        ("retry.cap", "retry.cap_ms"),
        ("breaker.cooldown", "breaker.cooldown_s"),
        ("limits.max_bytes_total", "limits.max_queued_bytes"),
    ];
    if let Some(kind) = core_field.strip_prefix("default_deadline.") {
        return format!("deadlines_s.{kind}");
    }
    if let Some(rest) = core_field.strip_prefix("lanes") {
        let rest = rest.replace(".memory_mb", ".memory_gib");
        return format!("upstreams{rest}");
    }
    if let Some(rest) = core_field.strip_prefix("models")
        && rest.ends_with(".size_mb")
    {
        return format!("models{}", rest.replace(".size_mb", ".size_gib"));
    }
    KEYS.iter()
        .find(|(core, _)| *core == core_field)
        .map_or_else(|| core_field.to_owned(), |(_, key)| (*key).to_owned())
}

fn kind(field: &str, s: &str) -> Result<Kind, ConfigError> {
    s.parse()
        .map_err(|e: inference_queue::ParseKindError| invalid(field, e.to_string()))
}

impl ImConfig {
    /// The scheduler configuration, validated; `models` must be filled in (configured or discovered).
    pub fn core(&self) -> Result<CoreConfig, ConfigError> {
        let mut c = CoreConfig::default();
        c.priority = self
            .priority
            .iter()
            .enumerate()
            .map(|(i, k)| kind(&format!("priority[{i}]"), k))
            .collect::<Result<_, _>>()?;
        c.bounds = match self.policy {
            PolicyName::Strict => Bounds::strict(),
            PolicyName::Bounded => Bounds {
                max_dwell: secs("bounds.max_dwell_s", self.bounds.max_dwell_s)?,
                max_batch: (self.bounds.max_batch > 0).then_some(self.bounds.max_batch),
                starvation_after: secs(
                    "bounds.starvation_after_s",
                    self.bounds.starvation_after_s,
                )?,
                batch_starvation_after: None,
            },
        };
        // Inside a group, under either policy: batch work is delayed, never starved.
        c.bounds.batch_starvation_after = secs(
            "bounds.batch_starvation_after_s",
            self.bounds.batch_starvation_after_s,
        )?;
        c.limits.max_queued_total = self.limits.max_queued_total;
        c.limits.max_bytes_total = self.limits.max_queued_bytes;
        c.limits.max_in_flight_per_tenant = self.limits.max_in_flight_per_tenant;
        c.limits.early_refusal_pct = self.limits.early_refusal_pct;
        for (k, v) in &self.limits.max_queued_per_kind {
            let field = format!("limits.max_queued_per_kind.{k}");
            c.limits.max_queued_per_kind[kind(&field, k)?.index()] = Some(*v);
        }
        for (k, v) in &self.deadlines_s {
            let field = format!("deadlines_s.{k}");
            let d = secs(&field, *v)?.ok_or_else(|| invalid(&field, "must be positive"))?;
            c.default_deadline[kind(&field, k)?.index()] = d;
        }
        c.retry = RetryPolicy {
            max_retries: self.retry.max_retries,
            base: millis("retry.base_ms", self.retry.base_ms)?,
            cap: millis("retry.cap_ms", self.retry.cap_ms)?,
            jitter: self.retry.jitter,
        };
        c.breaker = BreakerConfig {
            failure_threshold: self.breaker.failure_threshold,
            cooldown: secs("breaker.cooldown_s", self.breaker.cooldown_s)?.unwrap_or_default(),
            health_check: secs("breaker.health_check_s", self.breaker.health_check_s)?,
        };
        c.routing = self.routing.strategy.routing(self.routing.replica_depth);
        c.cost_aware = self.routing.cost_aware;
        c.prefix = self
            .routing
            .prefix_aware
            .then(|| inference_queue::PrefixConfig {
                window: self.routing.prefix_window,
                max_skip: Duration::from_millis(self.routing.prefix_max_skip_ms),
                blocks_per_lane: (self.routing.prefix_cache_tokens / TOKENS_PER_PREFIX_BLOCK).max(1)
                    as usize,
                prefill_per_block: Duration::from_micros(
                    self.routing.prefix_prefill_ms_per_1k_tokens * TOKENS_PER_PREFIX_BLOCK,
                ),
            });
        c.unload_on_switch = self.unload_on_switch;
        c.warm_up = self.warm_up;
        c.lanes = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let mut lane = inference_queue::LaneSpec::new(u.name(i));
                if let Some(gib) = u.memory_gib() {
                    lane.memory_mb = Some(mib(&format!("upstreams[{i}].memory_gib"), gib)?);
                }
                Ok(lane)
            })
            .collect::<Result<_, ConfigError>>()?;
        c.models = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let kinds = m
                    .kinds
                    .iter()
                    .map(|k| kind(&format!("models[{i}].kinds"), k))
                    .collect::<Result<Vec<_>, _>>()?;
                let slots = m
                    .max_in_flight
                    .unwrap_or_else(|| self.discovery.slots_for(&m.kinds));
                let mut spec = ModelSpec::new(m.name.clone(), &kinds, slots);
                if let Some(gib) = m.size_gib {
                    spec.size_mb = Some(mib(&format!("models[{i}].size_gib"), gib)?);
                }
                if let Some(s) = m.load_time_s {
                    let field = format!("models[{i}].load_time_s");
                    spec.load_time =
                        Some(secs(&field, s)?.ok_or_else(|| invalid(&field, "must be positive"))?);
                }
                spec.only_lanes = self.lanes_for(i, m)?;
                let names = self.lane_names();
                spec.slots_on = m
                    .slots_on
                    .iter()
                    .filter_map(|(lane, s)| Some((names.iter().position(|n| n == lane)?, *s)))
                    .collect();
                for (lane, kinds) in &m.kinds_on {
                    if let Some(at) = names.iter().position(|n| n == lane) {
                        let field = format!("models[{i}].kinds");
                        let kinds = kinds
                            .iter()
                            .map(|k| kind(&field, k))
                            .collect::<Result<Vec<_>, _>>()?;
                        spec.kinds_on.push((at, kinds));
                    }
                }
                Ok(spec)
            })
            .collect::<Result<_, ConfigError>>()?;
        c.validate()
            .map_err(|e| invalid(toml_key(&e.field), e.message))?;
        Ok(c)
    }

    /// The upstreams' (lanes') names, in order.
    pub fn lane_names(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .enumerate()
            .map(|(j, u)| u.name(j))
            .collect()
    }

    /// The upstreams model `i` may use, by its `upstreams` and `labels`; `None`: any.
    fn lanes_for(&self, i: usize, m: &ModelEntry) -> Result<Option<Vec<usize>>, ConfigError> {
        if m.upstreams.is_empty() && m.labels.is_empty() {
            return Ok(None);
        }
        let names = self.lane_names();
        let of = |lane: &str, n: &str| crate::fleet::lane_of_upstream(lane, n);
        if let Some(bad) = m
            .upstreams
            .iter()
            .find(|n| !names.iter().any(|lane| of(lane, n)))
        {
            return Err(invalid(
                format!("models[{i}].upstreams"),
                format!(
                    "{:?} is not an upstream name (upstreams: {names:?})",
                    im_engine::truncate(bad, 64)
                ),
            ));
        }
        let lanes: Vec<usize> = self
            .upstreams
            .iter()
            .enumerate()
            .filter(|(j, u)| {
                (m.upstreams.is_empty() || m.upstreams.iter().any(|n| of(&names[*j], n)))
                    && m.labels.iter().all(|l| u.labels().contains(l))
            })
            .map(|(j, _)| j)
            .collect();
        if lanes.is_empty() {
            return Err(invalid(
                format!("models[{i}].labels"),
                "no upstream carries these labels (among the upstreams it may use)",
            ));
        }
        Ok(Some(lanes))
    }
}
