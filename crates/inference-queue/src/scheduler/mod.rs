//! The state machine: [`Scheduler`] composes the state of its parts, each a type that owns its
//! state and one room per concern:
//! - `api`: what goes in and comes out (submissions, outcomes, events);
//! - `queues`: [`Queues`](queues::Queues), every request in the system and the groups' queues
//!   (which request is served next, which has waited longest), deadlines, retries, the byte
//!   budget;
//! - `lane`: [`Lane`](lane::Lane), one upstream: its residency, running work, learned costs,
//!   lifecycle phase and breaker;
//! - `policy`: which group a lane serves next, the bounds, the switch barrier, dispatch;
//! - `deadlines`: with early refusal, the deadlines admission promised are kept;
//! - `residency`: what fits on a lane under its budget, what to evict; the learned costs' types;
//! - `placement`: balancer routings, placing requests and moving them off a failing lane;
//! - `advice`: where a request would go and why, without queueing it;
//! - `breaker`: what a breaker's change means (events, requests moved);
//! - `lifecycle`: operators' loads and unloads; `topology`: a reload's models and lanes;
//! - `ids`: the request-id hasher.

use std::collections::VecDeque;
use std::time::Duration;

use foldhash::HashMap;

mod advice;
mod api;
mod breaker;
mod deadlines;
mod estimate;
mod fairness;
mod ids;
mod lane;
mod lifecycle;
mod placement;
mod policy;
pub(crate) mod prefix;
mod queues;
mod replay;
mod residency;
mod topology;

pub use advice::{Advice, LaneOption, Why};
pub use api::*;
pub use estimate::Waiting;
use lane::{Breaker, Lane, Phase};
pub use lifecycle::{LoadOutcome, UnloadOutcome, UnloadRefusal};
pub use prefix::{PrefixChain, PrefixConfig};
use queues::{Queues, Req, ReqState};
pub use topology::TopologyChange;

use crate::config::{Config, ConfigError};
use crate::rng::Rng;
use crate::status::{BreakerState, Counters, GroupStatus, LaneStatus, ResidentModel, Status};
use crate::types::{Kind, LaneId, ModelId, RequestId, Time};

/// The scheduler core: a pure state machine. See the crate docs for the driving loop.
///
/// Method groups:
/// - **inputs** (each takes `now`): [`submit`](Self::submit), [`cancel`](Self::cancel),
///   [`complete`](Self::complete), [`lifecycle_done`](Self::lifecycle_done),
///   [`handle_timeout`](Self::handle_timeout), [`shutdown`](Self::shutdown),
///   [`abort_waiting`](Self::abort_waiting);
/// - **outputs**: [`poll_event`](Self::poll_event) (drain after every input),
///   [`poll_timeout`](Self::poll_timeout) (the next wake-up, re-read after every input);
/// - **getters**: [`status`](Self::status), [`counters`](Self::counters), [`models`](Self::models),
///   [`model_id`](Self::model_id), [`models_for`](Self::models_for).
#[derive(Clone)]
pub struct Scheduler {
    cfg: Config,
    priority: Vec<Kind>,
    now: Time,
    next_id: u64,
    accepting: bool,
    model_index: HashMap<String, ModelId>,
    queues: Queues,
    lanes: Vec<Lane>,
    events: VecDeque<Event>,
    counters: Counters,
    rng: Rng,
    /// The round-robin routing's turn.
    round_robin: usize,
    /// What a decision learns about models' homes (memory kept, contents not).
    homes: policy::Homes,
    /// Whether this is a copy a predicted wait replays ([`replay`]): its own predictions are
    /// the fluid model's.
    replaying: bool,
}

impl Scheduler {
    /// A scheduler for `cfg`, or the first invalid field.
    pub fn new(cfg: Config) -> Result<Scheduler, ConfigError> {
        cfg.validate()?;
        let model_index = cfg
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), ModelId(i)))
            .collect();
        let lanes = cfg
            .lanes
            .iter()
            .map(|spec| Lane::new(&spec.name, &cfg.models, Time::ZERO))
            .collect();
        let queues = Queues::with_weights(&cfg.tenant_weights);
        Ok(Scheduler {
            priority: cfg.full_priority(),
            rng: Rng::new(cfg.seed),
            cfg,
            now: Time::ZERO,
            next_id: 1,
            accepting: true,
            model_index,
            queues,
            lanes,
            events: VecDeque::new(),
            counters: Counters::default(),
            round_robin: usize::MAX,
            homes: policy::Homes::default(),
            replaying: false,
        })
    }

    // ----- getters -----

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The names of the models served (a reload may have retired others).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.cfg
            .models
            .iter()
            .enumerate()
            .filter(|(i, _)| self.serves(ModelId(*i)))
            .map(|(_, m)| m.name.as_str())
    }

    /// The name of a model.
    pub fn model_name(&self, id: ModelId) -> &str {
        &self.cfg.models[id.0].name
    }

    /// The id of a model name.
    pub fn model_id(&self, name: &str) -> Option<ModelId> {
        self.model_index.get(name).copied()
    }

    /// The models that serve `kind`.
    pub fn models_for(&self, kind: Kind) -> Vec<String> {
        self.cfg
            .models
            .iter()
            .enumerate()
            .filter(|(i, _)| self.serves(ModelId(*i)) && self.serves_kind(ModelId(*i), kind))
            .map(|(_, m)| m)
            .map(|m| m.name.clone())
            .collect()
    }

    /// The lifetime counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Payload bytes held by the requests in the system (never above `limits.max_bytes_total`).
    pub fn bytes_held(&self) -> u64 {
        self.queues.bytes_held()
    }

    /// Requests currently waiting (queued or backing off) plus running.
    pub fn in_system(&self) -> usize {
        self.queues.len()
    }

    /// Whether intake is open.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The latest `now` seen.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The key of a request's group, if the request is in the system.
    pub fn group_of(&self, id: RequestId) -> Option<GroupKey> {
        self.queues.get(id).map(|r| self.queues.group(r.group).key)
    }

    /// A snapshot of every group and lane, with waits measured at `now`.
    pub fn status(&self, now: Time) -> Status {
        let now = now.max(self.now);
        let groups = self
            .queues
            .groups()
            .map(|(_, g)| GroupStatus {
                kind: g.key.kind,
                model: self.model_name(g.key.model).to_owned(),
                lane: g.key.lane.map(|l| l.0),
                depth: g.depth(),
                oldest_wait: self
                    .queues
                    .oldest_arrival(g)
                    .map(|a| now.saturating_since(a)),
                in_flight: g.in_flight,
            })
            .collect();
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .map(|(i, l)| LaneStatus {
                name: l.name.clone(),
                active: l.active.map(|g| {
                    let k = self.queues.group(g).key;
                    (k.kind, self.model_name(k.model).to_owned())
                }),
                resident: l
                    .resident
                    .iter()
                    .map(|m| ResidentModel {
                        model: self.model_name(*m).to_owned(),
                        in_flight: l.running_of(*m),
                        memory_mb: self.cfg.lanes[i].memory_mb.map(|_| self.footprint(i, *m)),
                    })
                    .collect(),
                memory_mb: self.cfg.lanes[i].memory_mb,
                in_flight: l.in_flight,
                prefix_blocks: l.prefixes.counts(),
                phase: match l.phase {
                    Phase::Ready => "ready",
                    Phase::Unloading { .. } => "unloading",
                    Phase::WarmingUp { .. } => "warming_up",
                    Phase::Preloading { .. } => "preloading",
                },
                breaker: match l.breaker {
                    _ if l.retired => BreakerState::Retired,
                    Breaker::Closed { .. } => BreakerState::Closed,
                    Breaker::Open { until } => BreakerState::Open {
                        remaining: until.saturating_since(now),
                    },
                    Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
                },
            })
            .collect();
        Status {
            groups,
            lanes,
            waiting: self.queues.waiting(),
            in_flight: self.lanes.iter().map(|l| l.in_flight as usize).sum(),
            accepting: self.accepting,
            counters: self.counters.clone(),
        }
    }

    // ----- outputs -----

    /// The next decision, if any. Drain until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if anything is timed.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.queues.next_due();
        let mut take = |c: Time| t = Some(t.map_or(c, |x| x.min(c)));
        for l in self.lanes.iter().filter(|l| !l.retired) {
            // A retired lane's breaker never half-opens: its pump returns at once.
            if let Breaker::Open { until } = l.breaker {
                take(until);
            }
        }
        // A lane with a budget keeps an idle model as long as reloading it would take: wake up
        // when one may go.
        for (lane, l) in self.lanes.iter().enumerate() {
            if self.cfg.lanes[lane].memory_mb.is_none() || self.queues.waiting() == 0 || l.retired {
                continue;
            }
            for m in l.resident.iter().filter(|m| l.running_of(**m) == 0) {
                let t = l.used_at[m.0] + l.expected_load(*m);
                if t > self.now {
                    take(t);
                }
            }
        }
        // Under cost-aware switching a group becomes worth a load as it waits: wake up then.
        if self.cfg.cost_aware {
            for (lane, l) in self.lanes.iter().enumerate() {
                if l.phase != Phase::Ready {
                    continue;
                }
                for (_, g) in self.queues.groups().filter(|(_, g)| g.depth() > 0) {
                    if l.holds(g.key.model) || !self.fits_lane(lane, g.key.model) {
                        continue;
                    }
                    if let Some(f) = self.queues.oldest_arrival(g) {
                        let cost = self.switch_cost(lane, g.key.model);
                        let due = f + cost.div_f64(g.depth() as f64);
                        if due > self.now {
                            take(due);
                        }
                    }
                }
            }
        }
        // Under affinity an idle lane may leave a group to the lane that has its model, until the
        // group starves: wake up when it does, so the idle lane can take it then.
        if let (crate::config::Routing::Affinity { .. }, Some(s)) =
            (self.cfg.routing, self.cfg.bounds.starvation_after)
            && self.lanes.len() > 1
            && self.lanes.iter().any(|l| l.in_flight == 0)
        {
            for (_, g) in self.queues.groups().filter(|(_, g)| g.depth() > 0) {
                if let Some(f) = self.queues.oldest_arrival(g)
                    && f + s > self.now
                {
                    take(f + s);
                }
            }
        }
        t
    }

    // ----- inputs -----

    /// Offer a request. Accepted requests leave later through exactly one of: a
    /// [`Resolution`] other than `Retry`/`Ignored`, an [`Event::Expired`], an [`Event::Failed`], or
    /// [`CancelOutcome::Removed`].
    pub fn submit(&mut self, now: Time, req: Submit<'_>) -> Admission {
        self.advance(now);
        let admission = self.admit(req);
        match &admission {
            Admission::Accepted(_) => {
                // A deadline that is already due (zero) expires here, before any dispatch.
                self.advance(now);
                self.pump();
            }
            Admission::Rejected(_) => self.counters.rejected += 1,
        }
        admission
    }

    fn admit(&mut self, req: Submit<'_>) -> Admission {
        if !self.accepting {
            return Admission::Rejected(Rejection::ShuttingDown);
        }
        let model = match self.serving(req.kind, req.model) {
            Ok(m) => m,
            Err(r) => return Admission::Rejected(r),
        };
        if let Some(l) = req.lane
            && l.0 >= self.lanes.len()
        {
            return Admission::Rejected(Rejection::UnknownLane(l.0));
        }
        if let Some(l) = req.lane
            && !self.fits_lane(l.0, model)
        {
            return Admission::Rejected(Rejection::LaneCannotHost {
                model: req.model.to_owned(),
                lane: l.0,
            });
        }
        if req.bytes > self.cfg.limits.max_bytes_total {
            return Admission::Rejected(Rejection::TooLarge {
                bytes: req.bytes,
                budget: self.cfg.limits.max_bytes_total,
            });
        }
        let retry_after = self.cfg.limits.retry_after_hint;
        if self.queues.waiting() >= self.cfg.limits.max_queued_total {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Total,
                retry_after,
            });
        }
        let ki = req.kind.index();
        if let Some(limit) = self.cfg.limits.max_queued_per_kind[ki]
            && self.queues.waiting_of(req.kind) >= limit
        {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Kind(req.kind),
                retry_after,
            });
        }
        if self.queues.bytes_held().saturating_add(req.bytes) > self.cfg.limits.max_bytes_total {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Bytes,
                retry_after,
            });
        }
        let default = self.cfg.default_deadline[ki];
        let within = req.deadline.map_or(default, |d| d.min(default));
        // With early refusal, admission promises a start within the deadline to what it
        // predicts will make it, and refuses what it predicts will miss it by the margin.
        let mut promised = false;
        if let Some(pct) = self.cfg.limits.early_refusal_pct {
            let predicted = if self.queues.waiting() > 0 {
                self.wait_of(self.now, req.kind, model)
            } else {
                Some(Duration::ZERO)
            };
            if let Some(predicted) = predicted {
                if predicted.as_secs_f64() > within.as_secs_f64() * (1.0 + f64::from(pct) / 100.0) {
                    return Admission::Rejected(Rejection::WouldExpire {
                        predicted,
                        deadline: within,
                    });
                }
                promised = predicted <= within;
            }
        }
        let placed = req.lane.is_none() && self.cfg.routing.places_requests();
        let lane = if placed {
            Some(LaneId(self.place(model, req.kind, None)))
        } else {
            req.lane
        };
        let group = self.queues.group_for(GroupKey {
            kind: req.kind,
            model,
            lane,
        });
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let deadline = self.now + within;
        self.queues.enqueue(
            id,
            Req {
                group,
                bytes: req.bytes,
                arrival: self.now,
                deadline,
                attempts: 0,
                state: ReqState::Queued,
                failed_on: None,
                started: Time::ZERO,
                cold: false,
                behind_load: false,
                placed,
                tenant: req.tenant,
                class: req.class,
                cost: req.cost,
                charged: 0.0,
                prefix: req.prefix.cloned(),
                prefix_matched: 0,
                prefill_mark: Time::ZERO,
                promised,
            },
        );
        self.counters.accepted += 1;
        Admission::Accepted(id)
    }

    /// The caller of `id` went away.
    pub fn cancel(&mut self, now: Time, id: RequestId) -> CancelOutcome {
        self.advance(now);
        let Some(state) = self.queues.get(id).map(|r| r.state) else {
            return CancelOutcome::Unknown;
        };
        let outcome = match state {
            ReqState::Queued | ReqState::Backoff { .. } => {
                self.queues.remove_waiting(id);
                self.counters.cancelled += 1;
                CancelOutcome::Removed
            }
            ReqState::InFlight { lane } => {
                if let Some(r) = self.queues.get_mut(id) {
                    r.state = ReqState::CancelledInFlight { lane };
                }
                CancelOutcome::InFlight
            }
            ReqState::CancelledInFlight { .. } => CancelOutcome::InFlight,
        };
        self.pump();
        outcome
    }

    /// Take `id` out if it is still waiting (queued or backing off), as a cancel would; leave it
    /// be if it runs. Whether it was taken out.
    pub fn withdraw(&mut self, now: Time, id: RequestId) -> bool {
        let waiting = self
            .queues
            .get(id)
            .is_some_and(|r| matches!(r.state, ReqState::Queued | ReqState::Backoff { .. }));
        waiting && self.cancel(now, id) == CancelOutcome::Removed
    }

    /// An attempt of `id` ended with `outcome`.
    /// Tenant `t` weighs `weight` in fair share from now on.
    pub fn set_weight(&mut self, t: crate::types::TenantId, weight: u32) {
        self.queues.fair.set_weight(t, weight);
    }

    pub fn complete(&mut self, now: Time, id: RequestId, outcome: Outcome) -> Resolution {
        self.advance(now);
        let Some(req) = self.queues.get(id) else {
            self.counters.ignored += 1;
            return Resolution::Ignored;
        };
        let (lane, cancelled) = match req.state {
            ReqState::InFlight { lane } => (lane, false),
            ReqState::CancelledInFlight { lane } => (lane, true),
            _ => {
                self.counters.ignored += 1;
                return Resolution::Ignored;
            }
        };
        let (group, attempts, deadline, placed) =
            (req.group, req.attempts, req.deadline, req.placed);
        let (started, cold, behind_load) = (req.started, req.cold, req.behind_load);
        let (tenant, charged, estimated) = (req.tenant, req.charged, req.cost.is_some());
        let prefill_mark = req.prefill_mark;
        let model = self.queues.group(group).key.model;
        self.queues.fair.ended(tenant);
        let l = &mut self.lanes[lane.0];
        l.prefixes.prefilled(prefill_mark, self.now);
        l.end(model, started, self.now, cold);
        if outcome == Outcome::Success && !behind_load {
            l.learn(model, self.now.saturating_since(started), cold);
        }
        if !estimated {
            // Fair share counts service time when the caller gave no cost: what the attempt
            // took replaces what was charged for it. A load is not the tenant's service (it
            // serves whoever uses the model next): a cold attempt counts the learned service.
            let took = if cold {
                self.expected_service(lane, model)
                    .map_or(0.0, |d| d.as_secs_f64())
            } else {
                self.now.saturating_since(started).as_secs_f64()
            };
            self.queues.fair.served(tenant, took - charged);
        }
        self.queues.attempt_ended(group);
        self.update_breaker(lane.0, id, outcome);

        let resolution = match outcome {
            Outcome::Transient { retry_after, .. } if !cancelled => {
                let delay = self.backoff(attempts).max(retry_after.unwrap_or_default());
                let at = self.now + delay;
                // No retry past the queue deadline: the caller gets the upstream's error now
                // rather than a deadline error later.
                if attempts > self.cfg.retry.max_retries || at >= deadline {
                    self.queues.release(id);
                    self.counters.exhausted += 1;
                    Resolution::Exhausted { attempts }
                } else {
                    self.queues.back_off(id, at, lane);
                    self.counters.retried += 1;
                    if placed {
                        self.move_placed(id, lane.0);
                    }
                    Resolution::Retry {
                        at,
                        attempt: attempts + 1,
                    }
                }
            }
            _ => {
                self.queues.release(id);
                if cancelled || outcome == Outcome::Aborted {
                    self.counters.cancelled += 1;
                } else {
                    self.counters.completed += 1;
                }
                Resolution::Finished
            }
        };
        self.pump();
        resolution
    }

    /// The [`Event::Unload`] or [`Event::WarmUp`] the lane was told to do has ended (either way:
    /// a failed unload or warm-up does not stop the switch; the first request loads the model).
    pub fn lifecycle_done(&mut self, now: Time, lane: LaneId) {
        self.advance(now);
        let Some(l) = self.lanes.get(lane.0) else {
            return;
        };
        match l.phase {
            Phase::Ready => self.counters.ignored += 1,
            Phase::Unloading { next, left } if left > 1 => {
                self.lanes[lane.0].phase = Phase::Unloading {
                    next,
                    left: left - 1,
                };
            }
            Phase::Unloading { next: None, .. } => self.lanes[lane.0].phase = Phase::Ready,
            Phase::Unloading {
                next: Some(next), ..
            } => {
                if self.cfg.warm_up {
                    self.warm_up(lane.0, next);
                } else {
                    self.lanes[lane.0].phase = Phase::Ready;
                    self.activate(lane.0, next);
                }
            }
            Phase::Preloading { model } => {
                let took = self.now.saturating_since(l.phase_since);
                let l = &mut self.lanes[lane.0];
                l.learn_load(model, took);
                l.touch(model);
                l.phase = Phase::Ready;
                l.preload = None;
                l.used_at[model.0] = self.now;
            }
            Phase::WarmingUp { next } => {
                let model = self.queues.group(next).key.model;
                let took = self.now.saturating_since(l.phase_since);
                self.lanes[lane.0].learn_load(model, took);
                self.lanes[lane.0].phase = Phase::Ready;
                self.activate(lane.0, next);
                self.lanes[lane.0].cold.retain(|m| *m != model);
            }
        }
        self.pump();
    }

    /// Time passed: expire deadlines, wake retries, half-open breakers, dispatch.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        self.pump();
    }

    /// Stop intake: every later [`submit`](Self::submit) is refused with
    /// [`Rejection::ShuttingDown`]. Waiting and running work goes on.
    pub fn shutdown(&mut self, now: Time) {
        self.advance(now);
        self.accepting = false;
    }

    /// Fail every waiting request with `reason` (the end of a shutdown grace period). Running work
    /// is untouched: the driver completes or aborts it.
    pub fn abort_waiting(&mut self, now: Time, reason: FailReason) {
        self.advance(now);
        self.fail_waiting(reason, |_| true);
    }

    /// `lane`'s upstream refused `kind` for `model` (llama-server's 501 `not_supported_error`:
    /// an embeddings call to a chat model): no more such work goes there. When no lane that
    /// could serve the model serves the kind any more, the model no longer serves it (new
    /// requests are refused with [`Rejection::KindNotServed`]) and the waiting ones fail with
    /// [`FailReason::KindRefused`]. Until [`Self::restore_kinds`].
    pub fn refuse_kind(&mut self, now: Time, lane: LaneId, model: &str, kind: Kind) {
        self.advance(now);
        let (Some(m), Some(l)) = (self.model_id(model), self.lanes.get_mut(lane.0)) else {
            return;
        };
        if !l.refuses(m, kind) {
            l.refused.push((m, kind));
        }
        if self.serves_kind(m, kind) {
            // What a balancer placed there goes to a lane that still serves it.
            self.replace_from_where(lane.0, |k| k.model == m && k.kind == kind);
        } else {
            let groups: Vec<queues::GroupId> = self
                .queues
                .groups()
                .filter(|(_, g)| g.key.model == m && g.key.kind == kind)
                .map(|(i, _)| i)
                .collect();
            self.fail_waiting(FailReason::KindRefused, |r| groups.contains(&r.group));
        }
        self.pump();
    }

    /// A reading of the upstreams' catalogues reported their kinds again: the kinds refused by
    /// [`Self::refuse_kind`] are served again.
    pub fn restore_kinds(&mut self, now: Time) {
        self.advance(now);
        for l in &mut self.lanes {
            l.refused.clear();
        }
        self.pump();
    }

    /// The model named `model`, when it is known and serves `kind`; else the refusal
    /// ([`Rejection::UnknownModel`], [`Rejection::KindNotServed`], each listing the models that
    /// serve the kind).
    pub(super) fn serving(&self, kind: Kind, model: &str) -> Result<ModelId, Rejection> {
        let Some(m) = self.model_id(model) else {
            return Err(Rejection::UnknownModel {
                model: model.to_owned(),
                valid: self.models_for(kind),
            });
        };
        if !self.serves_kind(m, kind) {
            return Err(Rejection::KindNotServed {
                model: model.to_owned(),
                kind,
                valid: self.models_for(kind),
            });
        }
        Ok(m)
    }

    /// Whether `model` serves `kind`: configured so, and some lane that may host it has not
    /// refused it (with no such lane at all, configured is enough).
    pub(super) fn serves_kind(&self, model: ModelId, kind: Kind) -> bool {
        if !self.cfg.models[model.0].kinds.contains(&kind) {
            return false;
        }
        if self.cfg.models[model.0].kinds_on.is_empty()
            && self.lanes.iter().all(|l| l.refused.is_empty())
        {
            return true;
        }
        let mut hosts = (0..self.lanes.len()).filter(|l| self.fits_lane(*l, model));
        let mut any = false;
        let open = hosts.any(|l| {
            any = true;
            self.serves_on(l, model, kind)
        });
        open || !any
    }

    /// Fail the waiting requests `which` picks with `reason`.
    fn fail_waiting(&mut self, reason: FailReason, which: impl Fn(&queues::Req) -> bool) {
        let mut ids: Vec<RequestId> = self
            .queues
            .requests()
            .filter(|(_, r)| matches!(r.state, ReqState::Queued | ReqState::Backoff { .. }))
            .filter(|(_, r)| which(r))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        for id in ids {
            self.queues.remove_waiting(id);
            self.counters.failed += 1;
            self.events.push_back(Event::Failed { id, reason });
        }
    }
}

impl Scheduler {
    /// Time passes to `now` (never backwards): deadlines due expire, retries due go back to the
    /// head of their groups.
    pub(super) fn advance(&mut self, now: Time) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        while let Some((id, arrival)) = self.queues.pop_expired(now) {
            self.counters.expired += 1;
            self.events.push_back(Event::Expired {
                id,
                waited: now.saturating_since(arrival),
            });
        }
        self.queues.due(now);
    }

    /// The backoff before retry `attempts + 1`: capped exponential, with seeded jitter.
    pub(super) fn backoff(&mut self, attempts: u32) -> std::time::Duration {
        let r = self.cfg.retry;
        let exp = attempts.saturating_sub(1).min(30);
        let raw = r.base.saturating_mul(1u32 << exp).min(r.cap);
        let keep = 1.0 - r.jitter * self.rng.next_f64();
        raw.mul_f64(keep)
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("now", &self.now)
            .field("in_system", &self.queues.len())
            .field("waiting", &self.queues.waiting())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}
