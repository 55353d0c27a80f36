//! The policy: which group each lane serves next (starving, priority, loaded model, oldest), the
//! bounds, the switch barrier and lifecycle calls, and dispatch within `max_in_flight`.

use std::time::Duration;

use super::Scheduler;
use super::api::Event;
use super::lane::Phase;
use super::prefix::Pick;
use super::queues::{Group, GroupId, ReqState, Turn};
use super::residency::Room;
use crate::config::Routing;
use crate::types::{Kind, LaneId, ModelId, RequestId};

/// How many times slower than the fastest other lane a lane must be to count as slow.
pub const SLOW_FACTOR: f64 = 3.0;

/// What one decision learns about models, each computed once however many groups ask: a
/// group's eligibility depends on its model's homes, and a lane weighs every group at each
/// switch point. Valid while the state does not change (one `choose_next`, one `may_continue`);
/// [`Homes::reset`] forgets it all at once (a new generation), keeping the memory.
#[derive(Clone, Default)]
pub(super) struct Homes {
    generation: u32,
    /// Per model: the lane whose switch to it costs least.
    cheapest: Memo<Option<usize>>,
    /// Per (lane, model): whether loading it there evicts a model with waiting work, and
    /// whether another lane could host it.
    leaving: Memo<(bool, bool)>,
    /// Per (lane, model): whether the lane is a fast home of the model (holds it, not slow), and
    /// how many other healthy lanes are (for a group whose next request is no retry).
    owned: Memo<(bool, u64)>,
}

/// Values by index, each valid for the generation it was computed in.
#[derive(Clone)]
struct Memo<T>(Vec<(u32, T)>);

impl<T> Default for Memo<T> {
    fn default() -> Memo<T> {
        Memo(Vec::new())
    }
}

impl<T: Copy + Default> Memo<T> {
    fn get(&mut self, generation: u32, at: usize, f: impl FnOnce() -> T) -> T {
        if self.0.len() <= at {
            // Generation 0 is never current (a memo starts at 1): new entries are stale.
            self.0.resize(at + 1, (0, T::default()));
        }
        let entry = &mut self.0[at];
        if entry.0 != generation {
            *entry = (generation, f());
        }
        entry.1
    }
}

impl Homes {
    /// An empty memo.
    fn new() -> Homes {
        let mut homes = Homes::default();
        homes.reset();
        homes
    }

    /// Forget everything (the state changed).
    fn reset(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.generation == 1 {
            // Wrapped (or new): no entry may look current.
            *self = Homes {
                generation: 1,
                ..Homes::default()
            };
        }
    }

    /// Per group key (model and kind, without the lane).
    fn cheapest(&mut self, at: usize, f: impl FnOnce() -> Option<usize>) -> Option<usize> {
        self.cheapest.get(self.generation, at, f)
    }

    fn leaving(&mut self, at: usize, f: impl FnOnce() -> (bool, bool)) -> (bool, bool) {
        self.leaving.get(self.generation, at, f)
    }

    fn owned(&mut self, at: usize, f: impl FnOnce() -> (bool, u64)) -> (bool, u64) {
        self.owned.get(self.generation, at, f)
    }
}

impl Scheduler {
    pub(super) fn pump(&mut self) {
        for lane in 0..self.lanes.len() {
            self.pump_lane(lane);
        }
    }

    /// Whether `lane` may take work from `g`: it has work, is not pinned elsewhere, and the
    /// routing lets this lane serve it.
    pub(super) fn eligible(&self, lane: usize, g: &Group) -> bool {
        self.eligible_in(lane, g, &mut self.homes())
    }

    /// A memo for one decision.
    fn homes(&self) -> Homes {
        Homes::new()
    }

    /// [`Self::eligible`], with what is known of the models' homes in this decision.
    fn eligible_in(&self, lane: usize, g: &Group, homes: &mut Homes) -> bool {
        if !self.queues.dispatchable(g, self.turn())
            || g.key.lane.is_some_and(|l| l.0 != lane)
            || !self.serves_on(lane, g.key.model, g.key.kind)
            || self.lanes[lane].draining == Some(g.key.model)
        {
            return false;
        }
        if g.key.lane.is_some() {
            // Pinned here: the pin overrides the routing.
            return true;
        }
        if self.retry_goes_elsewhere(lane, g, homes) {
            return false;
        }
        self.routable(lane, g, homes) && self.worth_loading(lane, g)
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

    /// Whose turn it is inside a group, now.
    pub(super) fn turn(&self) -> Turn {
        Turn {
            cap: self.cfg.limits.max_in_flight_per_tenant,
            batch_bound: self
                .cfg
                .bounds
                .batch_starvation_after
                .map(|b| (b, self.now)),
        }
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
    fn retry_goes_elsewhere(&self, lane: usize, g: &Group, homes: &mut Homes) -> bool {
        let next_failed_here = self.queues.next_failed_on(g, self.turn()) == Some(LaneId(lane));
        next_failed_here
            && (0..self.lanes.len()).any(|m| {
                let l = &self.lanes[m];
                m != lane
                    && l.is_closed()
                    && self.serves_on(m, g.key.model, g.key.kind)
                    && (l.in_flight == 0 || l.holds(g.key.model))
                    && self.routable(m, g, homes)
            })
    }

    /// Whether the routing lets `lane` serve `g` (an unpinned group with work).
    fn routable(&self, lane: usize, g: &Group, homes: &mut Homes) -> bool {
        match self.cfg.routing {
            // Balancers place every request on a lane when it arrives: a group without a lane
            // exists only under another routing (a configuration reload), and any lane may take it.
            Routing::LeastLoaded | Routing::RoundRobin | Routing::BestPerformance => true,
            Routing::StickyHash => self.sticky_lane(g.key.model) == lane,
            Routing::Affinity { replica_depth } => self.affine(lane, g, replica_depth, homes),
        }
    }

    /// The healthy lane that can host `g`'s model and loses least by loading it: an idle lane
    /// first, then one whose models are all held elsewhere too, then one whose models have no
    /// waiting work; then the cheapest load; then the lowest index.
    pub(super) fn cheapest_home(&self, g: &Group) -> Option<usize> {
        let (model, kind) = (g.key.model, g.key.kind);
        let homes = || {
            (0..self.lanes.len()).filter(move |l| {
                self.lanes[*l].is_closed()
                    && self.serves_on(*l, model, kind)
                    && !self.slow(*l, model)
            })
        };
        let mut only = homes();
        if let (Some(one), None) = (only.next(), only.next()) {
            return Some(one); // nothing to weigh
        }
        homes().min_by_key(|l| {
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
    fn affine(&self, lane: usize, g: &Group, replica_depth: u32, homes: &mut Homes) -> bool {
        let (model, kind) = (g.key.model, g.key.kind);
        // Memos per (model, kind): lanes may refuse a kind of a model.
        let of_key = model.0 * Kind::COUNT + kind.index();
        let at = lane * self.cfg.models.len() * Kind::COUNT + of_key;
        let owners_but = |failed_on: Option<usize>| {
            self.lanes
                .iter()
                .enumerate()
                .filter(|(i, l)| {
                    *i != lane
                        && Some(*i) != failed_on
                        && self.lanes[*i].holds(model)
                        && self.serves_on(*i, model, kind)
                        && !self.slow(*i, model)
                        && l.is_closed()
                })
                .count() as u64
        };
        let (home, owners) = homes.owned(at, || {
            (
                self.lanes[lane].holds(model) && !self.slow(lane, model),
                owners_but(None),
            )
        });
        if home {
            return true;
        }
        // The load guard of prefix-aware placement: a spare lane takes a model's prompts once
        // more of them wait than the lanes holding it can start now, rather than idle while
        // they queue behind busy replicas.
        if self.cfg.prefix.is_some()
            && self.queues.next_has_prompt(g, self.turn())
            && self.spare(lane)
            && g.depth() > self.free_slots_elsewhere(lane, model)
        {
            return true;
        }
        // A lane that just failed the next request does not count as a home for its retry.
        let owners = match self.queues.next_failed_on(g, self.turn()) {
            None => owners,
            failed_on => owners_but(failed_on.map(|l| l.0)),
        };
        if owners == 0 {
            // Nobody holds it: the lane whose switch costs least takes it, so that lanes do not
            // all leave their models for it. Until it starves it does not evict a model with
            // waiting work when another lane could host it: a lane whose work runs dry soon is
            // a cheaper home than one whose model must come back after it.
            let (evicts_wanted, other_home) = homes.leaving(at, || {
                // Without another home, whether it evicts wanted work does not matter.
                if !self.other_home(lane, model, kind) {
                    return (false, false);
                }
                let evicts_wanted = match self.room(lane, model, false) {
                    Room::Resident | Room::Fits => false,
                    Room::Evict(victims) => victims.iter().any(|m| self.has_waiting(*m)),
                    Room::Barrier => self.lanes[lane]
                        .resident
                        .iter()
                        .any(|m| self.has_waiting(*m)),
                };
                (evicts_wanted, true)
            });
            if evicts_wanted && other_home && !self.starving(g) {
                return false;
            }
            return homes.cheapest(of_key, || self.cheapest_home(g)) == Some(lane);
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
            && homes.cheapest(of_key, || self.cheapest_home(g)) == Some(lane)
    }

    /// Slots of `model` free now on the other healthy lanes that hold it.
    fn free_slots_elsewhere(&self, lane: usize, model: ModelId) -> usize {
        (0..self.lanes.len())
            .filter(|o| *o != lane && self.lanes[*o].holds(model) && self.lanes[*o].is_closed())
            .map(|o| {
                let slots = self.cfg.models[model.0].slots(o);
                slots.saturating_sub(self.lanes[o].running_of(model)) as usize
            })
            .sum()
    }

    /// Whether `lane` is spare: idle, and none of its models has had work there for a
    /// starvation period (so none is likely to want it back soon).
    fn spare(&self, lane: usize) -> bool {
        let quiet = self.cfg.bounds.starvation_after.unwrap_or_default();
        self.lanes[lane].spare(self.now, quiet)
    }

    /// Whether a healthy lane other than `lane` could serve `kind` of `model`.
    fn other_home(&self, lane: usize, model: ModelId, kind: Kind) -> bool {
        (0..self.lanes.len())
            .any(|o| o != lane && self.serves_on(o, model, kind) && self.lanes[o].is_closed())
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
            if self.lanes[lane].running_of(model) >= self.cfg.models[model.0].slots(lane) {
                // Every group of the model is full here too (the slots are the model's): leave
                // them all out at once rather than find them one choice at a time. The active
                // group is left out only when it is the one chosen, as one at a time would.
                let active = self.lanes[lane].active;
                full.push(target);
                full.extend(self.queues.groups_of(model).filter(|h| {
                    *h != target && Some(*h) != active && self.queues.group(*h).depth() > 0
                }));
                if self.saturated(lane, model, active, &full) {
                    return;
                }
                continue;
            }
            // A promised request about to miss its deadline starts first; else prefix-aware
            // placement may leave what waits to a lane holding its prompt.
            let due = self.deadline_due(lane).filter(|(g, _)| *g == target);
            let chosen = match due {
                Some((_, id)) => Some(id),
                None => match self.pick_for(lane, target, now) {
                    Pick::Next => None,
                    Pick::Take(id) => Some(id),
                    Pick::Leave => {
                        full.push(target);
                        continue;
                    }
                },
            };
            if self.lanes[lane].active != Some(target) {
                let urgent = due.is_some() || self.starving(self.queues.group(target));
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
            self.dispatch_next(lane, target, chosen);
        }
    }

    /// Whether nothing more can start on `lane` now that `model`'s slots are all taken: a lane
    /// without a memory budget holds `model` alone and runs work of it, so any other model waits
    /// at the switch barrier; and the active group is among the `full` ones, so the next choice
    /// changes nothing of the lane's state. What the rest of the loop would decide, without
    /// weighing every group to find it out.
    fn saturated(
        &self,
        lane: usize,
        model: ModelId,
        active: Option<GroupId>,
        full: &[GroupId],
    ) -> bool {
        let l = &self.lanes[lane];
        self.cfg.lanes[lane].memory_mb.is_none()
            && l.resident.as_slice() == [model]
            && l.running_of(model) > 0
            && active.is_some_and(|a| full.contains(&a))
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
    /// Start `group`'s next request on `lane` (or `chosen`, one of its next ones).
    pub(super) fn dispatch_next(&mut self, lane: usize, group: GroupId, chosen: Option<RequestId>) {
        let Some(id) = self.queues.take(group, self.turn(), chosen) else {
            return;
        };
        let model = self.queues.group(group).key.model;
        if let (Some(p), Some((chain, tenant))) = (
            self.cfg.prefix,
            self.queues
                .get(id)
                .and_then(|r| Some((r.prefix.clone()?, r.tenant))),
        ) {
            let matched = self.lanes[lane].prefixes.matched(&chain);
            // Its prefill at the configured rate, but never longer than the lane's learned
            // service of the whole request: a rate set too slow for the server (the default
            // for a fast GPU) would otherwise keep the lane looking busy.
            let prefill = p.prefill_per_block * chain.len().saturating_sub(matched) as u32;
            let prefill = self
                .expected_service(LaneId(lane), model)
                .map_or(prefill, |service| prefill.min(service));
            self.lanes[lane]
                .prefixes
                .count(matched, chain.len(), self.now, prefill);
            self.lanes[lane]
                .prefixes
                .sent(&chain, tenant, p.blocks_per_lane);
            let mark = self.lanes[lane].prefixes.prefill_end();
            if let Some(r) = self.queues.get_mut(id) {
                r.prefix_matched = matched;
                r.prefill_mark = mark;
            }
        }
        let now = self.now;
        let l = &mut self.lanes[lane];
        let (cold, behind_load) = l.start(model, now);
        l.probe_with(id);
        let expected = self
            .expected_service(LaneId(lane), model)
            .map_or(1.0, |d| d.as_secs_f64());
        let r = self.queues.get_mut(id).expect("queue heads are live");
        // Its tenant is charged at dispatch (its estimate, else the learned service time) and
        // corrected when the attempt ends.
        let (tenant, cost) = (r.tenant, r.cost.unwrap_or(expected));
        r.charged = cost;
        r.state = ReqState::InFlight { lane: LaneId(lane) };
        r.started = now;
        r.cold = cold;
        r.behind_load = behind_load;
        r.attempts += 1;
        let attempt = r.attempts;
        let waited = now.saturating_since(r.arrival);
        self.queues.fair.charged(tenant, cost);
        self.queues.fair.started(tenant);
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
        // The memo's memory is kept between decisions; its contents never are.
        let mut homes = std::mem::take(&mut self.homes);
        let next = self.decide_with(lane, full, &mut homes);
        self.homes = homes;
        next
    }

    fn decide_with(&mut self, lane: usize, full: &[GroupId], homes: &mut Homes) -> Option<GroupId> {
        let active = self.lanes[lane].active;
        if let Some(a) = active
            && self.queues.dispatchable(self.queues.group(a), self.turn())
            && !full.contains(&a)
            && self.lanes[lane].draining != Some(self.queues.group(a).key.model)
            && !{
                homes.reset();
                self.retry_goes_elsewhere(lane, self.queues.group(a), homes)
            }
        {
            if self.lanes[lane].drained {
                // The group ran dry and got new work: a fresh activation for the bounds.
                let l = &mut self.lanes[lane];
                l.drained = false;
                l.activated_at = self.now;
                l.batch = 0;
            }
            homes.reset();
            if self.may_continue(lane, a, homes) {
                return Some(a);
            }
            homes.reset();
            return self.choose_next(lane, Some(a), full, homes).or(Some(a));
        }
        homes.reset();
        let next = self.choose_next(lane, None, full, homes);
        if next.is_none() && active.is_none_or(|a| !full.contains(&a)) {
            self.lanes[lane].drained = true;
        }
        next
    }

    /// Whether the lane may dispatch another request of its active group `a`: always, unless other
    /// groups wait and a dwell or batch bound is hit. Starvation never preempts the active group;
    /// it decides the choice at the next switch point (SPEC §2.4), so a busy lane keeps its batches.
    fn may_continue(&self, lane: usize, a: GroupId, homes: &mut Homes) -> bool {
        let b = self.cfg.bounds;
        if b == crate::config::Bounds::strict() {
            return true;
        }
        let others_waiting = self
            .queues
            .groups()
            .any(|(i, g)| i != a && self.eligible_in(lane, g, homes));
        if !others_waiting {
            return true;
        }
        if self.deadline_due(lane).is_some_and(|(g, _)| g != a) {
            return false;
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
    /// work; inside it, a group with interactive work before one with batch work only, then the
    /// group whose model is loaded, else the oldest waiter.
    fn choose_next(
        &self,
        lane: usize,
        exclude: Option<GroupId>,
        full: &[GroupId],
        homes: &mut Homes,
    ) -> Option<GroupId> {
        let considered =
            |i: GroupId, g: &Group, homes: &mut Homes| -> Option<(GroupId, crate::Time)> {
                if Some(i) == exclude || full.contains(&i) || !self.eligible_in(lane, g, homes) {
                    return None;
                }
                self.queues.oldest_arrival(g).map(|f| (i, f))
            };
        // Per kind, interactive work first, then the group whose model is loaded, else the
        // oldest waiter.
        let key = |i: GroupId, f: crate::Time| {
            let g = self.queues.group(i);
            (
                !g.queue.has_interactive(),
                !self.lanes[lane].holds(g.key.model),
                f,
                i,
            )
        };
        if let Some((g, _)) = self.deadline_due(lane)
            && Some(g) != exclude
            && !full.contains(&g)
        {
            return Some(g);
        }
        let starve_after = self.cfg.bounds.starvation_after;
        let none_starves = starve_after.is_none_or(|s| {
            self.queues
                .oldest_arrival_of_all()
                .is_none_or(|f| self.now.saturating_since(f) < s)
        });
        if none_starves {
            // Kind by kind in priority order, each group weighed only when its kind's turn comes.
            // Ranking is cheap and eligibility is not: the best-ranked group with work is weighed
            // first, and when it may take the lane (most often) the others need not be.
            return self.priority.iter().find_map(|kind| {
                let best_ranked = self
                    .queues
                    .groups_of_kind(*kind)
                    .filter(|(i, _)| Some(*i) != exclude && !full.contains(i))
                    .filter_map(|(i, g)| self.queues.oldest_arrival(g).map(|f| key(i, f)))
                    .min()?;
                let (_, _, _, first) = best_ranked;
                if self.eligible_in(lane, self.queues.group(first), homes) {
                    return Some(first);
                }
                self.queues
                    .groups_of_kind(*kind)
                    .filter(|(i, _)| *i != first)
                    .filter_map(|(i, g)| considered(i, g, homes))
                    .map(|(i, f)| key(i, f))
                    .min()
                    .map(|(_, _, _, i)| i)
            });
        }
        // One pass: each group's eligibility once (the costly part), the oldest starving group,
        // and per kind the best.
        let mut starving: Option<(crate::Time, GroupId)> = None;
        let mut best: [Option<(bool, bool, crate::Time, GroupId)>; crate::Kind::COUNT] =
            [None; crate::Kind::COUNT];
        for (i, g) in self.queues.groups() {
            let Some((i, f)) = considered(i, g, homes) else {
                continue;
            };
            if starve_after.is_some_and(|s| self.now.saturating_since(f) >= s)
                && starving.is_none_or(|b| (f, i) < b)
            {
                starving = Some((f, i));
            }
            let key = key(i, f);
            let slot = &mut best[g.key.kind.index()];
            if slot.is_none_or(|b| key < b) {
                *slot = Some(key);
            }
        }
        if let Some((_, i)) = starving {
            return Some(i);
        }
        self.priority
            .iter()
            .find_map(|kind| best[kind.index()].map(|(_, _, _, i)| i))
    }
}
