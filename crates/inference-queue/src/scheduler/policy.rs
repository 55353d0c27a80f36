//! The policy: which group each lane serves next (starving, priority, loaded model, oldest), the
//! bounds, the switch barrier and lifecycle calls, and dispatch within `max_in_flight`.

use std::time::Duration;

use super::Scheduler;
use super::api::Event;
use super::lane::Phase;
use super::queues::{Group, GroupId, ReqState};
use super::residency::Room;
use crate::config::Routing;
use crate::types::{LaneId, ModelId};

/// How many times slower than the fastest other lane a lane must be to count as slow.
pub const SLOW_FACTOR: f64 = 3.0;

impl Scheduler {
    pub(super) fn pump(&mut self) {
        for lane in 0..self.lanes.len() {
            self.pump_lane(lane);
        }
    }

    /// Whether `lane` may take work from `g`: it has work, is not pinned elsewhere, and the
    /// routing lets this lane serve it.
    pub(super) fn eligible(&self, lane: usize, g: &Group) -> bool {
        if g.depth() == 0
            || g.key.lane.is_some_and(|l| l.0 != lane)
            || !self.fits_lane(lane, g.key.model)
            || self.lanes[lane].draining == Some(g.key.model)
        {
            return false;
        }
        if g.key.lane.is_some() {
            // Pinned here: the pin overrides the routing.
            return true;
        }
        if self.retry_goes_elsewhere(lane, g) {
            return false;
        }
        self.routable(lane, g) && self.worth_loading(lane, g)
    }

    /// Under cost-aware switching: whether `g` may make `lane` load its model now (always when
    /// the model is resident or `g` starves; else once its waiting outweighs the switch).
    pub(super) fn worth_loading(&self, lane: usize, g: &Group) -> bool {
        if !self.cfg.cost_aware || self.lanes[lane].holds(g.key.model) || self.starving(g) {
            return true;
        }
        let Some(front) = self.queues.oldest_arrival(g) else {
            return true;
        };
        let pressure = g.depth() as f64 * self.now.saturating_since(front).as_secs_f64();
        pressure >= self.switch_cost(lane, g.key.model).as_secs_f64()
    }

    /// The learned cost of loading `model` on `lane`: its load, plus the reload of the models it
    /// evicts.
    pub(super) fn switch_cost(&self, lane: usize, model: ModelId) -> Duration {
        let load = |m: ModelId| self.expected_load(LaneId(lane), m);
        let evicted: Duration = match self.room(lane, model, false) {
            Room::Resident | Room::Fits => Duration::ZERO,
            Room::Evict(v) => v.iter().map(|m| load(*m)).sum(),
            Room::Barrier => self.lanes[lane].resident.iter().map(|m| load(*m)).sum(),
        };
        load(model) + evicted
    }

    /// Whether the oldest waiter of `g` has waited past the starvation bound.
    pub(super) fn starving(&self, g: &Group) -> bool {
        self.cfg.bounds.starvation_after.is_some_and(|s| {
            self.queues
                .oldest_arrival(g)
                .is_some_and(|f| self.now.saturating_since(f) >= s)
        })
    }

    /// A request whose last attempt failed on `lane` is retried on another healthy lane that the
    /// routing lets serve its group and that can start it soon (it is idle or has the model), when
    /// there is one; else it stays with `lane` rather than wait on a busy one.
    pub(super) fn retry_goes_elsewhere(&self, lane: usize, g: &Group) -> bool {
        let next_failed_here = self
            .queues
            .next_of(g)
            .is_some_and(|r| r.failed_on == Some(LaneId(lane)));
        next_failed_here
            && (0..self.lanes.len()).any(|m| {
                let l = &self.lanes[m];
                m != lane
                    && l.is_closed()
                    && self.fits_lane(m, g.key.model)
                    && (l.in_flight == 0 || l.holds(g.key.model))
                    && self.routable(m, g)
            })
    }

    /// Whether the routing lets `lane` serve `g` (an unpinned group with work).
    fn routable(&self, lane: usize, g: &Group) -> bool {
        match self.cfg.routing {
            // Balancers place every request on a lane when it arrives: a group without a lane
            // exists only under another routing (a configuration reload), and any lane may take it.
            Routing::LeastLoaded | Routing::RoundRobin | Routing::BestPerformance => true,
            Routing::StickyHash => self.sticky_lane(g.key.model) == lane,
            Routing::Affinity { replica_depth } => self.affine(lane, g, replica_depth),
        }
    }

    /// The healthy lane that can host `g`'s model and loses least by loading it: an idle lane
    /// first, then one whose models are all held elsewhere too, then one whose models have no
    /// waiting work; then the cheapest load; then the lowest index.
    pub(super) fn cheapest_home(&self, g: &Group) -> Option<usize> {
        let model = g.key.model;
        (0..self.lanes.len())
            .filter(|l| {
                self.lanes[*l].is_closed() && self.fits_lane(*l, model) && !self.slow(*l, model)
            })
            .min_by_key(|l| {
                let lane = &self.lanes[*l];
                let sole = lane
                    .resident
                    .iter()
                    .any(|m| (0..self.lanes.len()).all(|o| o == *l || !self.lanes[o].holds(*m)));
                let wanted = lane.resident.iter().any(|m| self.has_waiting(*m));
                (
                    lane.in_flight > 0,
                    sole && wanted,
                    wanted,
                    self.switch_cost(*l, model),
                    *l,
                )
            })
    }

    /// Whether `lane` is slow for `model`: its learned service time is more than
    /// [`SLOW_FACTOR`] times the fastest other healthy lane's. A slow lane leaves the model's
    /// groups to faster lanes that hold it unless they are deep or starving.
    pub(super) fn slow(&self, lane: usize, model: ModelId) -> bool {
        let Some(here) = self.expected_service(LaneId(lane), model) else {
            return false;
        };
        (0..self.lanes.len())
            .filter(|i| *i != lane && self.lanes[*i].is_closed() && self.fits_lane(*i, model))
            .filter_map(|i| self.expected_service(LaneId(i), model))
            .min()
            .is_some_and(|best| here > best.mul_f64(SLOW_FACTOR))
    }

    /// The lane a model belongs to under [`Routing::StickyHash`]: FNV-1a of its name, over the
    /// lanes in service.
    pub(super) fn sticky_lane(&self, model: ModelId) -> usize {
        let name = &self.cfg.models[model.0].name;
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // Over the lanes in service: a reload that retires a lane rehashes its models.
        let serving = || (0..self.lanes.len()).filter(|l| !self.lanes[*l].retired);
        match serving().count() {
            0 => 0,
            n => serving().nth((h % n as u64) as usize).unwrap_or(0),
        }
    }

    /// Affinity: `lane` leaves `g` to the healthy lanes that have its model loaded, unless `g` is
    /// starving or waits deeper than `replica_depth` requests per slot of those lanes.
    fn affine(&self, lane: usize, g: &Group, replica_depth: u32) -> bool {
        let model = g.key.model;
        if self.lanes[lane].holds(model) && !self.slow(lane, model) {
            return true;
        }
        // A lane that just failed the next request does not count as a home for its retry.
        let failed_on = self
            .queues
            .next_of(g)
            .and_then(|r| r.failed_on)
            .map(|l| l.0);
        let owners = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                *i != lane
                    && Some(*i) != failed_on
                    && self.lanes[*i].holds(model)
                    && self.fits_lane(*i, model)
                    && !self.slow(*i, model)
                    && l.is_closed()
            })
            .count() as u64;
        if owners == 0 {
            // Nobody holds it: the lane whose switch costs least takes it, so that lanes do not
            // all leave their models for it. Until it starves it does not evict a model with
            // waiting work when another lane could host it: a lane whose work runs dry soon is
            // a cheaper home than one whose model must come back after it.
            let evicts_wanted = match self.room(lane, model, false) {
                Room::Resident | Room::Fits => false,
                Room::Evict(victims) => victims.iter().any(|m| self.has_waiting(*m)),
                Room::Barrier => self.lanes[lane]
                    .resident
                    .iter()
                    .any(|m| self.has_waiting(*m)),
            };
            if evicts_wanted && !self.starving(g) && self.other_home(lane, model) {
                return false;
            }
            return self.cheapest_home(g) == Some(lane);
        }
        let slots = u64::from(self.cfg.models[model.0].max_in_flight) * owners;
        if g.depth() as u64 >= u64::from(replica_depth) * slots {
            return true;
        }
        // A starving group gets one more lane: the one whose switch costs least. One with
        // requests running is being served (its oldest waiter waits for its own work ahead), so
        // it takes only a spare lane; a busier one helps it only past `replica_depth`.
        self.starving(g)
            && (g.in_flight == 0 || self.spare(lane))
            && self.cheapest_home(g) == Some(lane)
    }

    /// Whether `lane` is spare: idle, and none of its models has had work there for a
    /// starvation period (so none is likely to want it back soon).
    fn spare(&self, lane: usize) -> bool {
        let quiet = self.cfg.bounds.starvation_after.unwrap_or_default();
        self.lanes[lane].spare(self.now, quiet)
    }

    /// Whether a healthy lane other than `lane` could host `model`.
    fn other_home(&self, lane: usize, model: ModelId) -> bool {
        (0..self.lanes.len())
            .any(|o| o != lane && self.fits_lane(o, model) && self.lanes[o].is_closed())
    }

    pub(super) fn pump_lane(&mut self, lane: usize) {
        if self.lanes[lane].retired {
            // Removed by a reload: what runs there finishes; nothing new starts.
            return;
        }
        // Groups whose model has no free slot here: another resident model may still take work.
        let mut full: Vec<GroupId> = Vec::new();
        loop {
            let now = self.now;
            let l = &mut self.lanes[lane];
            if !l.admits_work(now) || l.phase != Phase::Ready || self.manage(lane) {
                return;
            }
            let Some(target) = self.decide(lane, &full) else {
                return;
            };
            let model = self.queues.group(target).key.model;
            if self.lanes[lane].running_of(model) >= self.cfg.models[model.0].max_in_flight {
                full.push(target);
                continue;
            }
            if self.lanes[lane].active != Some(target) {
                let urgent = self.starving(self.queues.group(target));
                match self.room(lane, model, urgent) {
                    Room::Resident => {}
                    // The switch barrier: wait for the work of the models that must make room.
                    Room::Barrier => return,
                    Room::Evict(victims) => {
                        for v in &victims {
                            self.evict(lane, *v);
                        }
                        // A lane with a budget is told what to unload (it would pick by its own
                        // rule otherwise); a one-model lane swaps by itself unless asked to.
                        if self.cfg.unload_on_switch || self.cfg.lanes[lane].memory_mb.is_some() {
                            self.unload(lane, Some(target), &victims);
                            return;
                        }
                        if self.cfg.warm_up {
                            self.warm_up(lane, target);
                            return;
                        }
                    }
                    Room::Fits => {
                        if self.cfg.warm_up {
                            self.warm_up(lane, target);
                            return;
                        }
                    }
                }
                self.activate(lane, target);
            }
            self.dispatch_next(lane, target);
        }
    }

    /// Enter the unloading phase: unload `victims`, then start `next` (if any).
    pub(super) fn unload(&mut self, lane: usize, next: Option<GroupId>, victims: &[ModelId]) {
        let l = &mut self.lanes[lane];
        l.phase = Phase::Unloading {
            next,
            left: victims.len() as u32,
        };
        l.phase_since = self.now;
        for model in victims {
            self.events.push_back(Event::Unload {
                lane: LaneId(lane),
                model: *model,
            });
        }
    }

    /// Enter the warm-up phase: load `next`'s model, then start `next`.
    pub(super) fn warm_up(&mut self, lane: usize, next: GroupId) {
        let model = self.queues.group(next).key.model;
        let l = &mut self.lanes[lane];
        l.phase = Phase::WarmingUp { next };
        l.phase_since = self.now;
        self.events.push_back(Event::WarmUp {
            lane: LaneId(lane),
            model,
        });
    }

    /// Make `group` the lane's active group.
    pub(super) fn activate(&mut self, lane: usize, group: GroupId) {
        let now = self.now;
        let key = self.queues.group(group).key;
        let l = &mut self.lanes[lane];
        let model_changed = !l.holds(key.model);
        l.touch(key.model);
        if model_changed {
            l.cold.push(key.model);
        }
        let from = l.active.map(|g| self.queues.group(g).key);
        l.active = Some(group);
        l.activated_at = now;
        l.batch = 0;
        l.drained = false;
        if from != Some(key) {
            self.counters.switches += 1;
            if model_changed {
                self.counters.model_switches += 1;
            }
            self.events.push_back(Event::Switched {
                lane: LaneId(lane),
                from,
                to: key,
                model_changed,
            });
        }
    }

    /// Dispatch the request `group` serves next on `lane`.
    pub(super) fn dispatch_next(&mut self, lane: usize, group: GroupId) {
        let Some(id) = self.queues.take_next(group) else {
            return;
        };
        let model = self.queues.group(group).key.model;
        let now = self.now;
        let l = &mut self.lanes[lane];
        let cold = l.start(model, now);
        l.probe_with(id);
        let r = self.queues.get_mut(id).expect("queue heads are live");
        r.state = ReqState::InFlight { lane: LaneId(lane) };
        r.started = now;
        r.cold = cold;
        r.attempts += 1;
        let attempt = r.attempts;
        let waited = now.saturating_since(r.arrival);
        self.counters.dispatched += 1;
        self.events.push_back(Event::Dispatch {
            id,
            lane: LaneId(lane),
            attempt,
            waited,
        });
    }

    /// The group the lane should dispatch from next, if any has work, leaving out `full` (groups
    /// whose model has no free slot on the lane).
    pub(super) fn decide(&mut self, lane: usize, full: &[GroupId]) -> Option<GroupId> {
        let active = self.lanes[lane].active;
        if let Some(a) = active
            && self.queues.group(a).depth() > 0
            && !full.contains(&a)
            && self.lanes[lane].draining != Some(self.queues.group(a).key.model)
            && !self.retry_goes_elsewhere(lane, self.queues.group(a))
        {
            if self.lanes[lane].drained {
                // The group ran dry and got new work: a fresh activation for the bounds.
                let l = &mut self.lanes[lane];
                l.drained = false;
                l.activated_at = self.now;
                l.batch = 0;
            }
            if self.may_continue(lane, a) {
                return Some(a);
            }
            return self.choose_next(lane, Some(a), full).or(Some(a));
        }
        let next = self.choose_next(lane, None, full);
        if next.is_none() && active.is_none_or(|a| !full.contains(&a)) {
            self.lanes[lane].drained = true;
        }
        next
    }

    /// Whether the lane may dispatch another request of its active group `a`: always, unless other
    /// groups wait and a dwell or batch bound is hit. Starvation never preempts the active group;
    /// it decides the choice at the next switch point (SPEC §2.4), so a busy lane keeps its batches.
    pub(super) fn may_continue(&self, lane: usize, a: GroupId) -> bool {
        let b = self.cfg.bounds;
        if b == crate::config::Bounds::strict() {
            return true;
        }
        let others_waiting = self
            .queues
            .groups()
            .any(|(i, g)| i != a && self.eligible(lane, g));
        if !others_waiting {
            return true;
        }
        let l = &self.lanes[lane];
        if b.max_batch.is_some_and(|m| l.batch >= m) {
            return false;
        }
        if b.max_dwell
            .is_some_and(|d| self.now.saturating_since(l.activated_at) >= d)
        {
            return false;
        }
        true
    }

    /// SPEC §2.3: first a starving group (oldest waiter first), else the highest-priority kind with
    /// work; inside it, the group whose model is loaded, else the oldest waiter.
    pub(super) fn choose_next(
        &self,
        lane: usize,
        exclude: Option<GroupId>,
        full: &[GroupId],
    ) -> Option<GroupId> {
        let candidates = || {
            self.queues
                .groups()
                .filter(move |(i, g)| {
                    Some(*i) != exclude && !full.contains(i) && self.eligible(lane, g)
                })
                .filter_map(|(i, g)| self.queues.oldest_arrival(g).map(|f| (i, g, f)))
        };
        if let Some(s) = self.cfg.bounds.starvation_after {
            let starving = candidates()
                .filter(|(_, _, f)| self.now.saturating_since(*f) >= s)
                .min_by_key(|(i, _, f)| (*f, *i));
            if let Some((i, _, _)) = starving {
                return Some(i);
            }
        }
        for kind in &self.priority {
            let best = candidates()
                .filter(|(_, g, _)| g.key.kind == *kind)
                .min_by_key(|(i, g, f)| (!self.lanes[lane].holds(g.key.model), *f, *i));
            if let Some((i, _, _)) = best {
                return Some(i);
            }
        }
        None
    }
}
