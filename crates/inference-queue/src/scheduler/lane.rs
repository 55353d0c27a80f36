//! One lane (an upstream) as the core sees it: [`Lane`] owns its residency (what it holds, least
//! recently used first, and what runs per model), the costs it learned per model, its lifecycle
//! phase and its circuit breaker, with the methods that change them. The policy decides; a lane
//! keeps its own books.

use std::time::Duration;

use super::api::Outcome;
use super::queues::GroupId;
use super::residency::{Costs, Ewma};
use crate::config::{BreakerConfig, ModelSpec};
use crate::types::{Kind, ModelId, RequestId, Time};

/// A lane's circuit breaker: only failures that blame the upstream count; a half-open lane lets
/// one probe through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Breaker {
    Closed { failures: u32 },
    Open { until: Time },
    HalfOpen { probe: Option<RequestId> },
}

/// What a lane is doing besides serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Ready,
    /// Waiting for `left` unloads before `next` starts (`None`: a management unload).
    Unloading {
        next: Option<GroupId>,
        left: u32,
    },
    /// Loading `model` because an operator asked for it (`POST /models/load`).
    Preloading {
        model: ModelId,
    },
    WarmingUp {
        next: GroupId,
    },
}

/// The requests of one model running on a lane.
#[derive(Clone, Debug)]
struct Running {
    model: ModelId,
    count: u32,
    /// Their start times' sum, in seconds since the epoch.
    started_sum: f64,
}

#[derive(Clone, Debug)]
pub(super) struct Lane {
    pub(super) name: String,
    pub(super) active: Option<GroupId>,
    /// Resident models, least recently used first. Every model with work in flight is here.
    pub(super) resident: Vec<ModelId>,
    /// Models loaded without a warm-up whose first request has not started yet.
    pub(super) cold: Vec<ModelId>,
    /// Models whose load rides on an attempt in flight here (the first after a load without
    /// warm-up): the attempts that start beside it wait for the load too.
    loading: Vec<ModelId>,
    pub(super) in_flight: u32,
    /// Requests in flight per model.
    running: Vec<Running>,
    /// Learned per model (indexed by [`ModelId`]).
    pub(super) costs: Vec<Costs>,
    /// Per model: when a request of it last started or ended here.
    pub(super) used_at: Vec<Time>,
    /// When the current lifecycle phase began.
    pub(super) phase_since: Time,
    /// A model an operator asked to load here, at the lane's next idle moment.
    pub(super) preload: Option<ModelId>,
    /// The prompt blocks sent here (prefix-aware placement).
    pub(super) prefixes: super::prefix::PrefixIndex,
    /// A model an operator asked to unload here: no new work for it, unloaded once idle.
    pub(super) draining: Option<ModelId>,
    pub(super) phase: Phase,
    pub(super) activated_at: Time,
    pub(super) batch: u32,
    pub(super) drained: bool,
    pub(super) breaker: Breaker,
    /// Active health checks failed in a row. Counted apart from request failures: a check
    /// answered says the server is up, not that its requests succeed.
    failed_checks: u32,
    /// Removed from the configuration: no new work; what runs here finishes.
    pub(super) retired: bool,
    /// The kinds its upstream refused for a model (501 `not_supported_error`): no such work
    /// goes here until a reading of its catalogue restores them.
    pub(super) refused: Vec<(ModelId, Kind)>,
}

impl Lane {
    /// A lane that holds nothing, with the models' configured costs, as of `now`.
    pub(super) fn new(name: &str, models: &[ModelSpec], now: Time) -> Lane {
        Lane {
            name: name.to_owned(),
            active: None,
            resident: Vec::new(),
            cold: Vec::new(),
            loading: Vec::new(),
            in_flight: 0,
            running: Vec::new(),
            costs: models.iter().map(Costs::seeded).collect(),
            used_at: vec![Time::ZERO; models.len()],
            phase_since: now,
            preload: None,
            prefixes: super::prefix::PrefixIndex::default(),
            draining: None,
            phase: Phase::Ready,
            activated_at: now,
            batch: 0,
            drained: true,
            breaker: Breaker::Closed { failures: 0 },
            failed_checks: 0,
            retired: false,
            refused: Vec::new(),
        }
    }

    /// A model the configuration added: its seeded costs.
    pub(super) fn add_model(&mut self, spec: &ModelSpec) {
        self.costs.push(Costs::seeded(spec));
        self.used_at.push(Time::ZERO);
    }

    // ----- residency -----

    /// Whether its upstream refused `kind` for `model`.
    pub(super) fn refuses(&self, model: ModelId, kind: Kind) -> bool {
        !self.refused.is_empty() && self.refused.contains(&(model, kind))
    }

    /// Whether `model` is resident (a model with work in flight always is).
    pub(super) fn holds(&self, model: ModelId) -> bool {
        self.resident.contains(&model)
    }

    /// Requests of `model` running here.
    pub(super) fn running_of(&self, model: ModelId) -> u32 {
        self.running
            .iter()
            .find(|r| r.model == model)
            .map_or(0, |r| r.count)
    }

    /// What runs here: each model with its count and the sum of their start times (seconds
    /// since the epoch), for the predicted waits.
    pub(super) fn running(&self) -> impl Iterator<Item = (ModelId, u32, f64)> + '_ {
        self.running
            .iter()
            .map(|r| (r.model, r.count, r.started_sum))
    }

    /// Make `model` the most recently used resident model.
    pub(super) fn touch(&mut self, model: ModelId) {
        self.resident.retain(|m| *m != model);
        self.resident.push(model);
    }

    /// Forget that `model` is resident (evicted, or unknown after a restart).
    pub(super) fn forget(&mut self, model: ModelId) {
        // Its server's prompt cache went with it.
        self.prefixes.clear();
        self.loading.retain(|m| *m != model);
        debug_assert_eq!(self.running_of(model), 0, "forgetting a busy model");
        self.resident.retain(|m| *m != model);
    }

    /// A request of `model` starts here at `now`; whether it is the first after a load without
    /// warm-up (it carries the load), and whether it starts while that load is under way (it
    /// waits for part of it).
    pub(super) fn start(&mut self, model: ModelId, now: Time) -> (bool, bool) {
        let cold = self.cold.contains(&model);
        self.cold.retain(|m| *m != model);
        let behind = !cold && self.loading.contains(&model);
        if cold {
            self.loading.push(model);
        }
        let at = now.saturating_since(Time::ZERO).as_secs_f64();
        match self.running.iter_mut().find(|r| r.model == model) {
            Some(r) => {
                r.count += 1;
                r.started_sum += at;
            }
            None => self.running.push(Running {
                model,
                count: 1,
                started_sum: at,
            }),
        }
        self.touch(model);
        self.used_at[model.0] = now;
        self.in_flight += 1;
        self.batch += 1;
        (cold, behind)
    }

    /// A request of `model` started at `started` ended here at `now`.
    pub(super) fn end(&mut self, model: ModelId, started: Time, now: Time, cold: bool) {
        self.in_flight -= 1;
        if cold {
            self.loading.retain(|m| *m != model);
        }
        self.used_at[model.0] = now;
        if let Some(i) = self.running.iter().position(|r| r.model == model) {
            let r = &mut self.running[i];
            r.count -= 1;
            r.started_sum -= started.saturating_since(Time::ZERO).as_secs_f64();
            if r.count == 0 {
                self.running.swap_remove(i);
            }
        }
    }

    /// Whether the idle `model` has been idle as long as reloading it would take (always on a
    /// lane without a budget, which swaps as soon as its model is idle).
    pub(super) fn may_evict(&self, model: ModelId, budgeted: bool, now: Time) -> bool {
        !budgeted || now >= self.used_at[model.0] + self.costs[model.0].load.get()
    }

    /// Whether it is spare at `now`: idle, and none of its models has had work here for `quiet`.
    pub(super) fn spare(&self, now: Time, quiet: Duration) -> bool {
        self.in_flight == 0
            && self
                .resident
                .iter()
                .all(|m| now.saturating_since(self.used_at[m.0]) >= quiet)
    }

    // ----- learned costs -----

    /// A request of `model` that ran `took` succeeded: learn from it. The first request after a
    /// load that was not a separate warm-up carries the load.
    pub(super) fn learn(&mut self, model: ModelId, took: Duration, cold: bool) {
        let c = &mut self.costs[model.0];
        match (cold, &mut c.service) {
            (true, Some(s)) => c.load.observe(took.saturating_sub(s.get())),
            (true, None) => c.load.observe(took),
            (false, Some(s)) => s.observe(took),
            (false, None) => c.service = Some(Ewma::seeded(took)),
        }
    }

    /// A load of `model` took `took` (a warm-up, a preload).
    pub(super) fn learn_load(&mut self, model: ModelId, took: Duration) {
        self.costs[model.0].load.observe(took);
    }

    /// The learned (or seeded) load time of `model`.
    pub(super) fn expected_load(&self, model: ModelId) -> Duration {
        self.costs[model.0].load.get()
    }

    /// The learned service time of `model`, once one request completed here.
    pub(super) fn expected_service(&self, model: ModelId) -> Option<Duration> {
        self.costs[model.0].service.map(Ewma::get)
    }

    /// The mean learned service time of its models (1 s when none is known).
    pub(super) fn mean_service_secs(&self) -> f64 {
        let learned: Vec<f64> = self
            .costs
            .iter()
            .filter_map(|c| c.service.map(|s| s.get().as_secs_f64()))
            .collect();
        if learned.is_empty() {
            1.0
        } else {
            learned.iter().sum::<f64>() / learned.len() as f64
        }
    }

    // ----- the breaker -----

    /// Whether its breaker is closed (it takes work as usual).
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.breaker, Breaker::Closed { .. })
    }

    /// An attempt of `id` ended here with `outcome`: the breaker's new state; the state before.
    /// A failure says something about the lane only when it blames the upstream; one that belongs
    /// to a single request (or an abort) leaves the breaker as it is, releasing a half-open probe
    /// so that another request can probe.
    pub(super) fn record(
        &mut self,
        cfg: BreakerConfig,
        now: Time,
        id: RequestId,
        outcome: Outcome,
    ) -> Breaker {
        let before = self.breaker;
        let fault = match outcome {
            Outcome::Success => Some(false),
            Outcome::Transient { upstream_fault, .. } | Outcome::Permanent { upstream_fault } => {
                upstream_fault.then_some(true)
            }
            Outcome::Aborted => None,
        };
        self.breaker = match (fault, before) {
            (None, Breaker::HalfOpen { probe: Some(p) }) if p == id => {
                Breaker::HalfOpen { probe: None }
            }
            (None, b) => b,
            (Some(false), _) => Breaker::Closed { failures: 0 },
            (Some(true), Breaker::Closed { failures }) => {
                if failures + 1 >= cfg.failure_threshold {
                    Breaker::Open {
                        until: now + cfg.cooldown,
                    }
                } else {
                    Breaker::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (Some(true), Breaker::HalfOpen { .. }) => Breaker::Open {
                until: now + cfg.cooldown,
            },
            (Some(true), open @ Breaker::Open { .. }) => open,
        };
        before
    }

    /// An active health check answered (`healthy`) or failed: the breaker's new state; the state
    /// before. A healthy answer closes an open or half-open breaker. Failed checks of a closed
    /// breaker are counted apart from failed requests and open it at the same threshold; a failed
    /// check re-opens a half-open breaker.
    pub(super) fn check(&mut self, cfg: BreakerConfig, now: Time, healthy: bool) -> Breaker {
        let before = self.breaker;
        self.failed_checks = if healthy { 0 } else { self.failed_checks + 1 };
        self.breaker = match (healthy, before) {
            (true, Breaker::Closed { failures }) => Breaker::Closed { failures },
            (true, _) => Breaker::Closed { failures: 0 },
            (false, Breaker::Closed { .. }) if self.failed_checks >= cfg.failure_threshold => {
                self.failed_checks = 0;
                Breaker::Open {
                    until: now + cfg.cooldown,
                }
            }
            (false, closed @ Breaker::Closed { .. }) => closed,
            (false, Breaker::HalfOpen { .. }) => Breaker::Open {
                until: now + cfg.cooldown,
            },
            (false, open @ Breaker::Open { .. }) => open,
        };
        before
    }

    /// At a pump: whether the breaker lets work start now (an open one half-opens once its
    /// cooldown passed; a half-open one with its probe out does not).
    pub(super) fn admits_work(&mut self, now: Time) -> bool {
        match self.breaker {
            Breaker::Open { until } if now < until => false,
            Breaker::Open { .. } => {
                self.breaker = Breaker::HalfOpen { probe: None };
                true
            }
            Breaker::HalfOpen { probe: Some(_) } => false,
            _ => true,
        }
    }

    /// A request `id` was dispatched here: a half-open breaker's probe.
    pub(super) fn probe_with(&mut self, id: RequestId) {
        if let Breaker::HalfOpen { probe } = &mut self.breaker {
            *probe = Some(id);
        }
    }
}
