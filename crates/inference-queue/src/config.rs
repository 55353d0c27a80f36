//! Configuration of the core, with defaults, presets and validation.

use std::collections::HashSet;
use std::time::Duration;

use crate::types::{Kind, TenantId};

/// One upstream model the scheduler may dispatch to.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The upstream model name (the `model` field of requests).
    pub name: String,
    /// The kinds this model serves.
    pub kinds: Vec<Kind>,
    /// How many requests of this model may run at once on one lane (llama.cpp slots; diffusers: 1).
    /// Shared by all groups of the model.
    pub max_in_flight: u32,
    /// The memory it takes on a lane, in MiB. `None`: it fills a lane's whole budget (the safe
    /// assumption when the size is unknown).
    pub size_mb: Option<u64>,
    /// What loading it is expected to cost before anything was observed (seeds the learned
    /// estimate). `None`: derived from `size_mb` (1 s per GiB, at least 1 s), else 10 s.
    pub load_time: Option<Duration>,
    /// The lanes it may run on (indexes into [`Config::lanes`]); `None`: any lane it fits.
    pub only_lanes: Option<Vec<usize>>,
    /// Slots on particular lanes where they differ from `max_in_flight` (servers of a fleet
    /// configured differently): `(lane, slots)`.
    pub slots_on: Vec<(usize, u32)>,
    /// The kinds it serves on particular lanes where they are fewer than `kinds` (servers of a
    /// fleet that say different things of one model): `(lane, kinds)`.
    pub kinds_on: Vec<(usize, Vec<Kind>)>,
}

impl ModelSpec {
    /// A model serving `kinds` with `max_in_flight` slots.
    pub fn new(name: impl Into<String>, kinds: &[Kind], max_in_flight: u32) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            kinds: kinds.to_vec(),
            max_in_flight,
            size_mb: None,
            load_time: None,
            only_lanes: None,
            slots_on: Vec::new(),
            kinds_on: Vec::new(),
        }
    }

    /// Whether it serves `kind` on `lane`.
    pub fn serves_on(&self, lane: usize, kind: Kind) -> bool {
        match self.kinds_on.iter().find(|(l, _)| *l == lane) {
            Some((_, kinds)) => kinds.contains(&kind),
            None => self.kinds.contains(&kind),
        }
    }

    /// The requests it runs at once on `lane`.
    pub fn slots(&self, lane: usize) -> u32 {
        self.slots_on
            .iter()
            .find(|(l, _)| *l == lane)
            .map_or(self.max_in_flight, |(_, s)| *s)
    }

    /// With a memory size in MiB.
    pub fn with_size_mb(mut self, size_mb: u64) -> ModelSpec {
        self.size_mb = Some(size_mb);
        self
    }

    /// With an expected load time.
    pub fn with_load_time(mut self, load_time: Duration) -> ModelSpec {
        self.load_time = Some(load_time);
        self
    }

    /// The load time to expect before any was observed.
    pub fn expected_load(&self) -> Duration {
        self.load_time.unwrap_or_else(|| match self.size_mb {
            Some(mb) => Duration::from_millis((mb * 1000 / 1024).max(1000)),
            None => Duration::from_secs(10),
        })
    }
}

/// One lane: an upstream server with its memory budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneSpec {
    /// Its name in metrics and reports.
    pub name: String,
    /// The memory its resident models may take together, in MiB. `None`: one model at a time
    /// (whatever its size), which is how a plain LocalAI or llama.cpp server behaves by default.
    pub memory_mb: Option<u64>,
}

impl LaneSpec {
    /// A lane that keeps one model resident.
    pub fn new(name: impl Into<String>) -> LaneSpec {
        LaneSpec {
            name: name.into(),
            memory_mb: None,
        }
    }

    /// With a memory budget in MiB: models are co-resident while their sizes fit.
    pub fn with_memory_mb(mut self, memory_mb: u64) -> LaneSpec {
        self.memory_mb = Some(memory_mb);
        self
    }
}

impl From<&str> for LaneSpec {
    fn from(name: &str) -> LaneSpec {
        LaneSpec::new(name)
    }
}

/// The bounds that keep drain-before-switch from starving anyone. `None` means unbounded.
///
/// All three `None` is the seeds' strict rule: an active group is left only when it is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Longest time one group stays active while other groups wait.
    pub max_dwell: Option<Duration>,
    /// Most requests dispatched from one activation of a group while other groups wait.
    pub max_batch: Option<u32>,
    /// A request waiting this long makes its group starving: starving groups are served oldest first
    /// and take the lane from a group whose oldest waiter is younger.
    pub starvation_after: Option<Duration>,
    /// A batch request waiting this long goes before its group's interactive work (inside a
    /// group, interactive requests otherwise always go first): batch work is delayed, never
    /// starved.
    pub batch_starvation_after: Option<Duration>,
}

impl Bounds {
    /// The seeds' behaviour: process each group completely before switching.
    pub const fn strict() -> Bounds {
        Bounds {
            max_dwell: None,
            max_batch: None,
            starvation_after: None,
            batch_starvation_after: None,
        }
    }
}

impl Default for Bounds {
    /// The bounded default: 120 s dwell, 64 requests a batch, starving after 90 s, batch work
    /// going first after 600 s.
    fn default() -> Bounds {
        Bounds {
            max_dwell: Some(Duration::from_secs(120)),
            max_batch: Some(64),
            starvation_after: Some(Duration::from_secs(90)),
            batch_starvation_after: Some(Duration::from_secs(600)),
        }
    }
}

/// Retry policy for transient upstream failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    /// Backoff before the first retry; doubles each time.
    pub base: Duration,
    /// Upper bound of one backoff (before honouring an upstream `Retry-After`).
    pub cap: Duration,
    /// Fraction of the backoff that is randomised, 0.0..=1.0 (0.5: between half and all of it).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
            jitter: 0.5,
        }
    }
}

/// Per-lane circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker stays open before one probe request is let through.
    pub cooldown: Duration,
    /// How often the driver checks lanes with the upstream's readiness route, reporting through
    /// [`crate::Scheduler::lane_health`]: a lane whose breaker is not closed rejoins at once when
    /// it answers, and an idle lane that stops answering counts failures like a failing request,
    /// so its breaker opens before work is sent to it. `None`: no checks, only probe requests
    /// close a breaker.
    pub health_check: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(10),
            health_check: Some(Duration::from_secs(2)),
        }
    }
}

/// Admission limits. A request over a limit is refused at once, never queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting (queued or backing off) across all groups.
    pub max_queued_total: usize,
    /// Requests waiting per kind (indexed by [`Kind::index`]); `None`: only the total applies.
    pub max_queued_per_kind: [Option<usize>; Kind::COUNT],
    /// The `Retry-After` hint given with a queue-full refusal.
    pub retry_after_hint: Duration,
    /// Payload bytes all requests in the system may hold together (queued or in flight): a byte
    /// budget, so that queued images cannot exhaust the process's memory.
    pub max_bytes_total: u64,
    /// Requests of one tenant running at once over the fleet (`None`: no cap): one tenant cannot
    /// hold every slot of a model while others wait.
    pub max_in_flight_per_tenant: Option<u32>,
    /// Refuse at admission a request whose predicted wait ([`crate::Scheduler::predicted_wait`])
    /// misses its deadline by more than this many percent (50: the prediction is over 1.5 times
    /// the deadline), rather than let it wait and expire. `None`: never.
    pub early_refusal_pct: Option<u32>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_queued_total: 10_000,
            max_queued_per_kind: [None; Kind::COUNT],
            retry_after_hint: Duration::from_secs(2),
            max_bytes_total: 256 * 1024 * 1024,
            max_in_flight_per_tenant: None,
            early_refusal_pct: None,
        }
    }
}

/// The whole configuration of a [`crate::Scheduler`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Kind priority, highest first. Kinds left out rank after the listed ones, in default order.
    pub priority: Vec<Kind>,
    /// Anti-starvation bounds.
    pub bounds: Bounds,
    /// Admission limits.
    pub limits: Limits,
    /// Queue deadline per kind (indexed by [`Kind::index`]); a request may only lower its own.
    pub default_deadline: [Duration; Kind::COUNT],
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// The per-lane breaker.
    pub breaker: BreakerConfig,
    /// After the switch barrier, ask the upstream to unload the old model before the new group starts.
    pub unload_on_switch: bool,
    /// Before a new model's first request, ask the upstream to load it.
    pub warm_up: bool,
    /// The models, each with its kinds and slots.
    pub models: Vec<ModelSpec>,
    /// The lanes (upstreams). At least one.
    pub lanes: Vec<LaneSpec>,
    /// How groups are spread over lanes.
    pub routing: Routing,
    /// Cost-aware switching: a lane loads a model for a group that is not starving only once the
    /// group's waiting (its depth times its oldest wait, in request-seconds) outweighs the
    /// learned cost of the switch (the load, plus reloading what it evicts).
    pub cost_aware: bool,
    /// Seed of the core's jitter generator.
    pub seed: u64,
    /// Tenants' weights in fair share, where not 1: a tenant of weight 2 is served twice the
    /// cost of one of weight 1 while both wait.
    pub tenant_weights: Vec<(TenantId, u32)>,
    /// Prefix-aware placement of requests that carry their prompt's chain (`None`: off).
    pub prefix: Option<crate::PrefixConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            priority: Kind::ALL.to_vec(),
            bounds: Bounds::default(),
            limits: Limits::default(),
            // Indexed by `Kind::index`: txt2txt, txt2img, img2img, img2txt, embed, rerank, tts, stt.
            default_deadline: [
                Duration::from_secs(120),
                Duration::from_secs(600),
                Duration::from_secs(600),
                Duration::from_secs(300),
                Duration::from_secs(60),
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(300),
            ],
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            unload_on_switch: false,
            warm_up: false,
            models: Vec::new(),
            lanes: vec![LaneSpec::new("default")],
            routing: Routing::default(),
            cost_aware: false,
            seed: 0x1D_5EED,
            tenant_weights: Vec::new(),
            prefix: Some(crate::PrefixConfig::default()),
        }
    }
}

/// How groups are spread over lanes (upstreams). Every lane pulls work when it can; the routing
/// decides which groups a lane may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// A lane leaves a group to another healthy lane that has the group's model loaded, unless the
    /// group waits long enough to be starving (and nothing serves it, or this lane is spare) or
    /// its queue is deeper than `replica_depth` requests per slot of the lanes serving it (then a
    /// second copy of the model is worth its load). A group nobody holds goes to the lane whose
    /// switch costs least, and until it starves not to one whose models have waiting work.
    Affinity {
        /// Waiting requests per slot of the serving lanes beyond which another lane may load the
        /// model too.
        replica_depth: u32,
    },
    /// Each request goes, when it arrives, to the healthy lane with the fewest requests waiting
    /// for it or running on it, whatever it has loaded (what a least-busy load balancer does).
    LeastLoaded,
    /// Each request goes, when it arrives, to the next healthy lane in turn (a round-robin
    /// balancer).
    RoundRobin,
    /// Each request goes, when it arrives, to the healthy lane with the shortest expected time
    /// to finish it: its requests ahead times its learned service time.
    BestPerformance,
    /// Each model belongs to one lane, by a hash of its name (a sticky load balancer).
    StickyHash,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing::Affinity { replica_depth: 12 }
    }
}

impl Routing {
    /// Its name in configuration and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Affinity { .. } => "affinity",
            Routing::LeastLoaded => "least_loaded",
            Routing::RoundRobin => "round_robin",
            Routing::BestPerformance => "best_performance",
            Routing::StickyHash => "sticky_hash",
        }
    }

    /// Whether it places each request on a lane when it arrives (a balancer), rather than
    /// letting lanes take groups (the default).
    pub fn places_requests(self) -> bool {
        matches!(
            self,
            Routing::LeastLoaded | Routing::RoundRobin | Routing::BestPerformance
        )
    }
}

/// The part of a [`Config`] that may change while requests wait and run
/// ([`Scheduler::set_policy`](crate::Scheduler::set_policy)): the order and bounds of switching,
/// admission limits and default deadlines. Models and lanes are the shape of the state and stay.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Kinds by priority.
    pub priority: Vec<Kind>,
    /// Anti-starvation bounds.
    pub bounds: Bounds,
    /// Admission limits (new requests only: what waits already stays).
    pub limits: Limits,
    /// Queue deadline per kind for requests submitted from now on.
    pub default_deadline: [Duration; Kind::COUNT],
}

/// An invalid configuration, naming the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scheduler config: `{field}`: {message}")]
pub struct ConfigError {
    /// The field, as a dotted path (`bounds.max_batch`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    /// Check every field. [`crate::Scheduler::new`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.priority.is_empty() {
            return Err(err("priority", "must list at least one kind"));
        }
        let mut seen = HashSet::new();
        for k in &self.priority {
            if !seen.insert(*k) {
                return Err(err("priority", format!("kind {k} is listed twice")));
            }
        }
        let b = &self.bounds;
        if b.max_dwell == Some(Duration::ZERO) {
            return Err(err("bounds.max_dwell", "must be positive (or unbounded)"));
        }
        if b.max_batch == Some(0) {
            return Err(err("bounds.max_batch", "must be at least 1 (or unbounded)"));
        }
        if b.starvation_after == Some(Duration::ZERO) {
            return Err(err(
                "bounds.starvation_after",
                "must be positive (or unbounded)",
            ));
        }
        if b.batch_starvation_after == Some(Duration::ZERO) {
            return Err(err(
                "bounds.batch_starvation_after",
                "must be positive (or unbounded)",
            ));
        }
        if self.limits.max_bytes_total == 0 {
            return Err(err("limits.max_bytes_total", "must be at least 1"));
        }
        if self.limits.max_in_flight_per_tenant == Some(0) {
            return Err(err(
                "limits.max_in_flight_per_tenant",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if self.limits.max_queued_total == 0 {
            return Err(err("limits.max_queued_total", "must be at least 1"));
        }
        for k in Kind::ALL {
            if self.limits.max_queued_per_kind[k.index()] == Some(0) {
                return Err(err(
                    format!("limits.max_queued_per_kind.{k}"),
                    "must be at least 1",
                ));
            }
            if self.default_deadline[k.index()].is_zero() {
                return Err(err(format!("default_deadline.{k}"), "must be positive"));
            }
        }
        let r = &self.retry;
        if !(0.0..=1.0).contains(&r.jitter) || r.jitter.is_nan() {
            return Err(err("retry.jitter", "must be between 0.0 and 1.0"));
        }
        if r.base.is_zero() && r.max_retries > 0 {
            return Err(err(
                "retry.base",
                "must be positive when retries are enabled",
            ));
        }
        if r.cap < r.base {
            return Err(err("retry.cap", "must not be below retry.base"));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(err("breaker.failure_threshold", "must be at least 1"));
        }
        if self.breaker.cooldown.is_zero() {
            return Err(err("breaker.cooldown", "must be positive"));
        }
        if self.breaker.health_check == Some(Duration::ZERO) {
            return Err(err("breaker.health_check", "must be positive (or off)"));
        }
        if self.lanes.is_empty() {
            return Err(err("lanes", "at least one lane (upstream) is needed"));
        }
        if let Some(p) = &self.prefix
            && !(1..=64).contains(&p.window)
        {
            return Err(err("routing.prefix_window", "1 to 64 requests"));
        }
        if let Routing::Affinity { replica_depth: 0 } = self.routing {
            return Err(err("routing.replica_depth", "must be at least 1"));
        }
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(err(format!("models[{i}].name"), "must not be empty"));
            }
            if !names.insert(m.name.as_str()) {
                return Err(err(
                    format!("models[{i}].name"),
                    format!("model {:?} is listed twice", m.name),
                ));
            }
            if m.kinds.is_empty() {
                return Err(err(
                    format!("models[{i}].kinds"),
                    "must serve at least one kind",
                ));
            }
            if m.max_in_flight == 0 {
                return Err(err(
                    format!("models[{i}].max_in_flight"),
                    "must be at least 1",
                ));
            }
            if m.size_mb == Some(0) {
                return Err(err(format!("models[{i}].size_mb"), "must be at least 1"));
            }
            if let Some((lane, slots)) = m
                .slots_on
                .iter()
                .find(|(l, s)| *l >= self.lanes.len() || *s == 0)
            {
                return Err(err(
                    format!("models[{i}].slots_on"),
                    format!(
                        "{slots} slots on lane {lane}: the lane must exist, the slots be at least 1"
                    ),
                ));
            }
            if let Some((lane, kinds)) = m.kinds_on.iter().find(|(l, kinds)| {
                *l >= self.lanes.len() || kinds.iter().any(|k| !m.kinds.contains(k))
            }) {
                return Err(err(
                    format!("models[{i}].kinds_on"),
                    format!(
                        "{kinds:?} on lane {lane}: the lane must exist, the kinds be among the model's"
                    ),
                ));
            }
            if let Some(only) = &m.only_lanes {
                if only.is_empty() {
                    return Err(err(
                        format!("models[{i}].only_lanes"),
                        "must name at least one lane",
                    ));
                }
                if let Some(bad) = only.iter().find(|l| **l >= self.lanes.len()) {
                    return Err(err(
                        format!("models[{i}].only_lanes"),
                        format!("lane {bad} does not exist"),
                    ));
                }
            }
            let allowed = |l: usize| m.only_lanes.as_ref().is_none_or(|o| o.contains(&l));
            if let Some(mb) = m.size_mb
                && self
                    .lanes
                    .iter()
                    .enumerate()
                    .all(|(l, spec)| !allowed(l) || spec.memory_mb.is_some_and(|b| b < mb))
            {
                return Err(err(
                    format!("models[{i}].size_mb"),
                    format!("{mb} MiB fits no memory budget of the lanes it may use"),
                ));
            }
        }
        for (i, l) in self.lanes.iter().enumerate() {
            if l.memory_mb == Some(0) {
                return Err(err(format!("lanes[{i}].memory_mb"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// This configuration with `policy`'s settings.
    pub fn with_policy(&self, policy: &Policy) -> Config {
        Config {
            priority: policy.priority.clone(),
            bounds: policy.bounds,
            limits: policy.limits,
            default_deadline: policy.default_deadline,
            ..self.clone()
        }
    }

    /// Its settings an operator may change while work is queued.
    pub fn policy(&self) -> Policy {
        Policy {
            priority: self.priority.clone(),
            bounds: self.bounds,
            limits: self.limits,
            default_deadline: self.default_deadline,
        }
    }

    /// The full priority order: the listed kinds, then the others in default order.
    pub fn full_priority(&self) -> Vec<Kind> {
        let mut order = self.priority.clone();
        for k in Kind::ALL {
            if !order.contains(&k) {
                order.push(k);
            }
        }
        order
    }
}
