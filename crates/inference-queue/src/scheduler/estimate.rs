//! Predicted waits: when a request of a group submitted now would start, from the state alone
//! (a pure function of the queues, the lanes and `now`).
//!
//! A wait is replayed ([`super::replay`]) while the system is small enough to copy; past that,
//! the fluid model here predicts.
//!
//! The model is a fluid one, per lane that may serve the group: the lane first finishes what
//! runs there (each running request's learned service time less what it has run, spread over
//! the model's slots) and drains its active group (with what arrives for it meanwhile, within
//! `max_batch` and `max_dwell`); then come the groups the policy serves before this one: every
//! waiting group of a kind earlier in the priority order, those of the same kind whose oldest
//! waiter is older, and lower-priority groups whose oldest waiter, older than this one's, will
//! have starved by then. Each group's work is shared by the lanes that may serve it, with a
//! load for a group whose model no lane holds. The wait for the group's turn is stretched by
//! the load of the higher-priority work that will arrive meanwhile (each group's arrival rate
//! times its service: 1 / (1 - load), as in a priority queue), never past the starvation
//! bound. Then the group's own waiting requests, and a load when the lane does not hold its
//! model. The prediction is the least over the lanes. `cargo xtask sim` measures its error on the policy table's traces.

use std::time::Duration;

use super::Scheduler;
use super::api::{GroupKey, Rejection};
use super::queues::{Group, ReqState};
use super::replay::{REPLAY_BELOW, Whose};
use crate::types::{Kind, LaneId, ModelId, RequestId, Time};

/// A waiting request's place, as its client may be told it ([`Scheduler::waiting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// 1 for the next request its group serves.
    pub position: usize,
    /// Its predicted start, from now; `None` when no lane may serve it now.
    pub eta: Option<Duration>,
    /// A lane loading its model now (a warm-up, an operator's load, or the first request
    /// after a switch carrying the load).
    pub loading: Option<LaneId>,
    /// Whether admission promised it a start within its deadline (early refusal predicted it
    /// would make it): the policy starts it first as its deadline nears.
    pub promised: bool,
}

impl Scheduler {
    /// The predicted wait of a request of `kind` for `model` submitted at `now`, until it starts
    /// (after the load it waits for, if any): the policy replayed on a copy of the state (at
    /// learned service and load times, with arrivals at each group's learned rate) while the
    /// system holds fewer than 1,024 requests, else a fluid model of the policy (the least over
    /// the healthy lanes that may serve it); `None` when no lane may serve it now. The same
    /// refusals as [`submit`](Self::submit) for unknown models and kinds.
    pub fn predicted_wait(
        &self,
        now: Time,
        kind: Kind,
        model: &str,
    ) -> Result<Option<Duration>, Rejection> {
        let m = self.serving(kind, model)?;
        Ok(self.wait_of(now, kind, m))
    }

    /// Where the waiting request `id` stands at `now`: its position in its group's order and
    /// its predicted start (as [`Self::predicted_wait`] predicts a new request's, for this one
    /// where it stands); `None` when it is not waiting (running, backing off, gone).
    pub fn waiting(&self, now: Time, id: RequestId) -> Option<Waiting> {
        let ahead = self.queues.ahead_in_group(id)?;
        let key = self.queues.group(self.queues.get(id)?.group).key;
        let eta = if self.queues.len() < REPLAY_BELOW && !self.replaying {
            self.replayed_wait(now, Whose::Waiting(id))
        } else {
            self.fluid_start(now, key, ahead)
        };
        Some(Waiting {
            position: ahead + 1,
            eta,
            loading: self.loading(key.model),
            promised: self.queues.get(id).is_some_and(|r| r.promised),
        })
    }

    /// The fluid model's predicted start of the waiting request `id`: the least over the lanes
    /// that may serve it, with only the requests its group serves before it ahead of it.
    pub(super) fn fluid_eta(&self, now: Time, id: RequestId) -> Option<Duration> {
        let ahead = self.queues.ahead_in_group(id)?;
        let key = self.queues.group(self.queues.get(id)?.group).key;
        self.fluid_start(now, key, ahead)
    }

    /// [`Self::fluid_eta`] of a request of group `key` with `ahead` of its group before it.
    fn fluid_start(&self, now: Time, key: GroupKey, ahead: usize) -> Option<Duration> {
        (0..self.lanes.len())
            .filter(|l| self.lanes[*l].is_closed() && key.lane.is_none_or(|p| p.0 == *l))
            .filter_map(|l| self.start_on(now, LaneId(l), key.kind, key.model, Some(ahead)))
            .min()
    }

    /// Whether the running request `id`'s attempt carries its model's load (the first on its
    /// lane after a switch without warm-up).
    pub fn carries_load(&self, id: RequestId) -> bool {
        self.queues
            .get(id)
            .is_some_and(|r| r.cold && matches!(r.state, ReqState::InFlight { .. }))
    }

    /// A lane loading `m` now: warming it up, preloading it, or running the request that
    /// carries its load.
    fn loading(&self, m: ModelId) -> Option<LaneId> {
        use super::lane::Phase;
        let phased = self.lanes.iter().position(|x| match x.phase {
            Phase::Preloading { model } => model == m,
            Phase::WarmingUp { next } => self.queues.group(next).key.model == m,
            _ => false,
        });
        phased.map(LaneId).or_else(|| {
            self.queues.requests().find_map(|(_, r)| match r.state {
                ReqState::InFlight { lane }
                    if r.cold && self.queues.group(r.group).key.model == m =>
                {
                    Some(lane)
                }
                _ => None,
            })
        })
    }

    /// [`Self::predicted_wait`] of a model already resolved (admission has it): a replay while
    /// the system holds fewer than [`REPLAY_BELOW`] requests, the fluid model beyond.
    pub(super) fn wait_of(&self, now: Time, kind: Kind, m: ModelId) -> Option<Duration> {
        if self.queues.len() < REPLAY_BELOW && !self.replaying {
            self.replayed_wait(now, Whose::New(kind, m))
        } else {
            self.fluid_wait(now, kind, m)
        }
    }

    /// The fluid model's prediction: the least over the lanes.
    pub(super) fn fluid_wait(&self, now: Time, kind: Kind, m: ModelId) -> Option<Duration> {
        (0..self.lanes.len())
            .filter(|l| self.lanes[*l].is_closed())
            .filter_map(|l| self.predicted_start_on(now, LaneId(l), kind, m))
            .min()
    }

    /// When a request of `kind` for `m` submitted at `now` would start on `lane`, from now
    /// (`None`: the lane may not serve it).
    pub(super) fn predicted_start_on(
        &self,
        now: Time,
        lane: LaneId,
        kind: Kind,
        m: ModelId,
    ) -> Option<Duration> {
        self.start_on(now, lane, kind, m, None)
    }

    /// When a request of `kind` for `m` would start on `lane`, from `now`, with `ahead` of its
    /// group's waiting requests `before` it (`None`: all of them, a new request).
    fn start_on(
        &self,
        now: Time,
        lane: LaneId,
        kind: Kind,
        m: ModelId,
        before: Option<usize>,
    ) -> Option<Duration> {
        let (l, now) = (lane.0, now.max(self.now));
        if !self.serves_on(l, m, kind) {
            return None;
        }
        let own = self
            .queues
            .groups()
            .find(|(_, g)| g.key.kind == kind && g.key.model == m && g.key.lane.is_none())
            .map(|(_, g)| g);
        let since = own
            .and_then(|g| self.queues.oldest_arrival(g))
            .unwrap_or(now);
        let rank = |k: Kind| self.priority.iter().position(|p| *p == k);
        let our_rank = rank(kind)?;
        let ahead = |g: &Group| {
            g.depth() > 0
                && !(g.key.kind == kind && g.key.model == m)
                && match rank(g.key.kind) {
                    Some(r) if r < our_rank => true,
                    Some(r) if r == our_rank => {
                        self.queues.oldest_arrival(g).is_some_and(|f| f < since)
                    }
                    _ => false,
                }
        };
        let held_anywhere = |model: ModelId| self.lanes.iter().any(|x| x.holds(model));
        let serving = |g: &Group| {
            (0..self.lanes.len())
                .filter(|x| {
                    self.lanes[*x].is_closed()
                        && g.key.lane.is_none_or(|p| p.0 == *x)
                        && self.serves_on(*x, g.key.model, g.key.kind)
                })
                .count()
                .max(1) as f64
        };
        let here = |g: &Group| {
            g.key.lane.is_none_or(|p| p.0 == l) && self.serves_on(l, g.key.model, g.key.kind)
        };
        let secs = |model: ModelId| self.service_secs(l, model);
        let slots = |model: ModelId| f64::from(self.cfg.models[model.0].slots(l).max(1));
        let load = |model: ModelId| self.expected_load(lane, model).as_secs_f64();
        let work = |g: &Group| {
            let mut w = g.depth() as f64 * secs(g.key.model) / slots(g.key.model);
            if !held_anywhere(g.key.model) {
                w += load(g.key.model);
            }
            w / serving(g)
        };
        let mut t = self.running_left(l, now);
        // The active group drains first (within the bounds), whatever its priority.
        let active = self.lanes[l].active.filter(|a| {
            let g = self.queues.group(*a);
            g.depth() > 0 && !ahead(g) && !(g.key.kind == kind && g.key.model == m)
        });
        if let Some(a) = active {
            let g = self.queues.group(a);
            let b = self.cfg.bounds;
            let x = &self.lanes[l];
            let turn = secs(g.key.model) / slots(g.key.model);
            // What arrives for it meanwhile joins the drain (a fluid queue: its depth over one
            // less its load), within the batch bound.
            let busy = (g.arrivals.per_sec(now) * turn / serving(g)).min(0.95);
            let mut drain = g.depth() as f64 * turn / (1.0 - busy);
            if let Some(mb) = b.max_batch {
                drain = drain.min(mb.saturating_sub(x.batch) as f64 * turn);
            }
            if let Some(d) = b.max_dwell {
                let dwelt = now.saturating_since(x.activated_at);
                drain = drain.min(d.saturating_sub(dwelt).as_secs_f64());
            }
            t += drain;
        }
        for (_, g) in self.queues.groups().filter(|(_, g)| ahead(g) && here(g)) {
            t += work(g);
        }
        // Lower-priority groups whose oldest waiter, older than ours, starves before our turn
        // come first too.
        if let Some(starve) = self.cfg.bounds.starvation_after {
            let base = t;
            for (_, g) in self.queues.groups() {
                let skip = g.depth() == 0
                    || ahead(g)
                    || Some(g.key) == own.map(|o| o.key)
                    || active.is_some_and(|a| self.queues.group(a).key == g.key)
                    || !here(g);
                let Some(oldest) = self.queues.oldest_arrival(g).filter(|_| !skip) else {
                    continue;
                };
                let waited = now.saturating_since(oldest).as_secs_f64() + base;
                if oldest < since && waited >= starve.as_secs_f64() {
                    t += work(g);
                }
            }
        }
        // Work of higher priority that arrives while this one waits for its group's turn goes
        // first too: as in a priority queue, that wait stretches by 1 / (1 - its load)
        // (Cobham), the load capped so that a saturated lane predicts long waits, not infinite
        // ones; and never past the starvation bound, which gives the group its turn.
        let higher: f64 = self
            .queues
            .groups()
            .filter(|(_, g)| rank(g.key.kind).is_some_and(|r| r < our_rank) && here(g))
            .map(|(_, g)| {
                g.arrivals.per_sec(now) * secs(g.key.model) / slots(g.key.model) / serving(g)
            })
            .sum();
        let stretched = t / (1.0 - higher.min(0.9));
        t = match self.cfg.bounds.starvation_after {
            Some(starve) => {
                let left = starve.as_secs_f64() - now.saturating_since(since).as_secs_f64();
                stretched.min(t.max(left))
            }
            None => stretched,
        };
        let own_depth = before.unwrap_or_else(|| own.map_or(0, Group::depth)) as f64;
        t += own_depth * secs(m) / slots(m) / own.map_or(1.0, serving);
        if !self.lanes[l].holds(m) {
            t += load(m);
        }
        Some(Duration::from_secs_f64(t))
    }

    /// Seconds from `now` until what runs on `lane` is done, spread over its slots: per model,
    /// its running requests' learned service less what they have run (from the lane's sums,
    /// without a walk over the requests).
    fn running_left(&self, lane: usize, now: Time) -> f64 {
        let now = now.saturating_since(Time::ZERO).as_secs_f64();
        self.lanes[lane]
            .running()
            .map(|(model, count, started_sum)| {
                let n = f64::from(count);
                let ran = n * now - started_sum;
                let slots = f64::from(self.cfg.models[model.0].slots(lane).max(1));
                (n * self.service_secs(lane, model) - ran).max(0.0) / slots
            })
            .sum()
    }

    /// The learned service time of `model` on `lane`, else the lane's mean, in seconds.
    fn service_secs(&self, lane: usize, model: ModelId) -> f64 {
        self.expected_service(LaneId(lane), model)
            .map_or_else(|| self.lanes[lane].mean_service_secs(), |d| d.as_secs_f64())
    }
}
