//! The requests in the system and the queues they wait in: [`Queues`] owns every request, every
//! group with its [`GroupQueue`], the deadline and retry calendars, the waiting counts and the
//! payload bytes held. It knows nothing of lanes or of the policy.
//!
//! A group's queue answers two questions, kept apart: which request is served next
//! ([`GroupQueue::next`], what dispatch takes) and which has waited longest
//! ([`GroupQueue::oldest`], what the starvation bound, cost-aware loading and wake-ups read).
//! A group keeps one line (a FIFO, retries back at its head) per priority class and tenant:
//! `next` is the head of the line of the highest class, then of the tenant with the least
//! virtual service ([`Fairness`]), then the earliest arrival; `oldest` is the earliest head of
//! all lines. With one tenant and one class there is one line: first come, first served. The
//! starvation bound, stated on `oldest`, holds whatever order `next` follows; batch work has a
//! bound of its own ([`GroupQueue::next`]).

use std::collections::BTreeSet;

use foldhash::HashMap;

mod group;
mod oldest;
#[cfg(test)]
mod tests;

use group::Waiter;
pub(super) use group::{Arrivals, Group, GroupQueue, Turn};
use oldest::OldestIndex;

use super::api::GroupKey;
use super::fairness::Fairness;
use super::ids::IdMap;
use crate::types::{Class, Kind, LaneId, ModelId, RequestId, TenantId, Time};

/// A group's index in [`Queues`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct GroupId(pub(super) usize);

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReqState {
    Queued,
    Backoff { until: Time },
    InFlight { lane: LaneId },
    CancelledInFlight { lane: LaneId },
}

/// A request in the system.
#[derive(Clone, Debug)]
pub(super) struct Req {
    pub(super) group: GroupId,
    pub(super) bytes: u64,
    pub(super) arrival: Time,
    pub(super) deadline: Time,
    pub(super) attempts: u32,
    pub(super) state: ReqState,
    /// The lane its last attempt failed on (transiently): its retry goes elsewhere if it can.
    pub(super) failed_on: Option<LaneId>,
    /// When its current attempt started.
    pub(super) started: Time,
    /// Whether its current attempt loads the model (the first after a load without warm-up).
    pub(super) cold: bool,
    /// Whether its current attempt started while another carried its model's load (it waited
    /// for part of the load: its time says nothing of the service).
    pub(super) behind_load: bool,
    /// Whether a balancer routing chose its lane (it moves when that lane fails); a caller's pin
    /// never moves.
    pub(super) placed: bool,
    /// Whose it is.
    pub(super) tenant: TenantId,
    /// Its priority class.
    pub(super) class: Class,
    /// Its cost as the caller estimated it (`None`: its service time).
    pub(super) cost: Option<f64>,
    /// What its tenant was charged when its current attempt started.
    pub(super) charged: f64,
    /// Its prompt's blocks (prefix-aware placement).
    pub(super) prefix: Option<super::PrefixChain>,
    /// Of its prompt's blocks, how many its current attempt's lane was sent before.
    pub(super) prefix_matched: usize,
    /// When its current attempt's lane was expected to be done with its prefill (and those
    /// sent there before it): an attempt that ends sooner says the lane prefills faster.
    pub(super) prefill_mark: Time,
    /// Whether admission promised it a start within its deadline (early refusal predicted it
    /// would make it): the policy keeps the promise ([`super::deadlines`]).
    pub(super) promised: bool,
}

/// Whether `id`, which arrived at `arrival`, waits in a queue.
fn queued_since(requests: &IdMap<Box<Req>>, arrival: Time, id: RequestId) -> bool {
    requests
        .get(&id)
        .is_some_and(|r| r.state == ReqState::Queued && r.arrival == arrival)
}

/// Every request in the system and the queues it waits in.
#[derive(Clone, Debug, Default)]
pub(super) struct Queues {
    /// Boxed: the table keeps room to grow (up to twice its requests), and a request's 176
    /// bytes are not multiplied by it.
    requests: IdMap<Box<Req>>,
    groups: Vec<Group>,
    index: HashMap<GroupKey, GroupId>,
    /// The groups of each model (by `ModelId`): a group's key never changes.
    of_model: Vec<Vec<GroupId>>,
    /// The groups of each kind (by `Kind::index`).
    of_kind: [Vec<GroupId>; Kind::COUNT],
    /// Queue deadlines of waiting requests, soonest first.
    deadlines: BTreeSet<(Time, RequestId)>,
    /// Retries backing off, soonest first.
    retries: BTreeSet<(Time, RequestId)>,
    waiting: usize,
    waiting_per_kind: [usize; Kind::COUNT],
    /// Payload bytes held by the requests in the system (waiting or in flight).
    bytes_held: u64,
    /// The tenants' virtual service and backlogs.
    pub(super) fair: Fairness,
    /// Who has waited longest of all, without weighing every group.
    oldest: OldestIndex,
}

impl Queues {
    /// Empty queues whose tenants weigh `weights` in fair share.
    pub(super) fn with_weights(weights: &[(TenantId, u32)]) -> Queues {
        let mut q = Queues::default();
        q.fair.set_weights(weights);
        q
    }

    // ----- reading -----

    /// A request.
    pub(super) fn get(&self, id: RequestId) -> Option<&Req> {
        self.requests.get(&id).map(|r| &**r)
    }

    /// How many waiting requests its group serves before the waiting request `id`
    /// ([`GroupQueue`]'s order); `None` when `id` is not waiting.
    pub(super) fn ahead_in_group(&self, id: RequestId) -> Option<usize> {
        let r = self.get(id).filter(|r| r.state == ReqState::Queued)?;
        self.group(r.group)
            .queue
            .ahead_of(id, (r.class, r.tenant), &self.requests)
    }

    /// A request, to change.
    pub(super) fn get_mut(&mut self, id: RequestId) -> Option<&mut Req> {
        self.requests.get_mut(&id).map(|r| &mut **r)
    }

    /// Every request in the system.
    pub(super) fn requests(&self) -> impl Iterator<Item = (RequestId, &Req)> {
        self.requests.iter().map(|(id, r)| (*id, &**r))
    }

    /// Requests in the system (waiting or running).
    pub(super) fn len(&self) -> usize {
        self.requests.len()
    }

    /// A group.
    pub(super) fn group(&self, g: GroupId) -> &Group {
        &self.groups[g.0]
    }

    /// Every group with its id.
    pub(super) fn groups(&self) -> impl Iterator<Item = (GroupId, &Group)> {
        self.groups.iter().enumerate().map(|(i, g)| (GroupId(i), g))
    }

    /// Whether any request for `model` waits in a queue.
    pub(super) fn model_has_waiting(&self, model: ModelId) -> bool {
        self.groups_of(model).any(|g| self.groups[g.0].depth() > 0)
    }

    /// The groups of `kind`, with their ids.
    pub(super) fn groups_of_kind(&self, kind: Kind) -> impl Iterator<Item = (GroupId, &Group)> {
        self.of_kind[kind.index()]
            .iter()
            .map(|g| (*g, &self.groups[g.0]))
    }

    /// When the request that has waited longest of all arrived (`None`: nothing waits): no
    /// later than any group's [`Self::oldest_arrival`].
    pub(super) fn oldest_arrival_of_all(&self) -> Option<Time> {
        self.oldest
            .first(|t, id| queued_since(&self.requests, t, id))
    }

    /// The oldest-arrival index after a change: its stale fronts dropped.
    fn settle_oldest(&mut self) {
        let requests = &self.requests;
        self.oldest
            .settle(self.waiting, |t, id| queued_since(requests, t, id));
    }

    /// The groups of `model`.
    pub(super) fn groups_of(&self, model: ModelId) -> impl Iterator<Item = GroupId> + '_ {
        self.of_model.get(model.0).into_iter().flatten().copied()
    }

    /// Requests waiting (queued or backing off).
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Requests of `kind` waiting.
    pub(super) fn waiting_of(&self, kind: Kind) -> usize {
        self.waiting_per_kind[kind.index()]
    }

    /// Payload bytes held by the requests in the system.
    pub(super) fn bytes_held(&self) -> u64 {
        self.bytes_held
    }

    /// The lane the request `g` serves next last failed on, if it is a retry.
    pub(super) fn next_failed_on(&self, g: &Group, turn: Turn) -> Option<LaneId> {
        g.queue.next(&self.fair, turn).and_then(|w| w.failed_on)
    }

    /// Whether the request `g` serves next carries a prompt chain.
    pub(super) fn next_has_prompt(&self, g: &Group, turn: Turn) -> bool {
        g.queue
            .next(&self.fair, turn)
            .and_then(|w| self.requests.get(&w.id))
            .is_some_and(|r| r.prefix.is_some())
    }

    /// Whether `g` has a request that may start now (waiting, and of a tenant under `cap`).
    pub(super) fn dispatchable(&self, g: &Group, turn: Turn) -> bool {
        g.depth() > 0 && (turn.cap.is_none() || g.queue.next(&self.fair, turn).is_some())
    }

    /// When the group's oldest waiter arrived.
    pub(super) fn oldest_arrival(&self, g: &Group) -> Option<Time> {
        g.queue.oldest().map(|(_, arrival)| arrival)
    }

    /// The queue deadlines of the waiting requests, soonest first.
    pub(super) fn soonest_deadlines(&self) -> impl Iterator<Item = (Time, RequestId)> + '_ {
        self.deadlines.iter().copied()
    }

    /// The soonest deadline or retry, if any.
    pub(super) fn next_due(&self) -> Option<Time> {
        let d = self.deadlines.first().map(|(t, _)| *t);
        let r = self.retries.first().map(|(t, _)| *t);
        match (d, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- changing -----

    /// The group of `key`, made on first use.
    pub(super) fn group_for(&mut self, key: GroupKey) -> GroupId {
        if let Some(g) = self.index.get(&key) {
            return *g;
        }
        let id = GroupId(self.groups.len());
        let model = key.model.0;
        if self.of_model.len() <= model {
            self.of_model.resize_with(model + 1, Vec::new);
        }
        self.of_model[model].push(id);
        self.of_kind[key.kind.index()].push(id);
        self.groups.push(Group {
            key,
            queue: GroupQueue::default(),
            arrivals: Arrivals::default(),
            in_flight: 0,
        });
        self.index.insert(key, id);
        id
    }

    /// Queue a new request `id` at the back of its group.
    pub(super) fn enqueue(&mut self, id: RequestId, req: Req) {
        let (g, kind) = (req.group, self.groups[req.group.0].key.kind);
        self.deadlines.insert((req.deadline, id));
        self.bytes_held += req.bytes;
        self.groups[g.0].queue.push_back(Waiter::of(id, &req));
        self.groups[g.0].arrivals.arrived(req.arrival, req.deadline);
        self.fair.waits(req.tenant);
        self.settle_oldest();
        self.oldest.queued(req.arrival, id);
        self.requests.insert(id, Box::new(req));
        self.waiting += 1;
        self.waiting_per_kind[kind.index()] += 1;
    }

    /// Take the request `g` serves next (or `chosen`, one of [`Self::candidates`], in its place)
    /// out of its queue to run it: it keeps its bytes until it leaves the system.
    pub(super) fn take(
        &mut self,
        g: GroupId,
        turn: Turn,
        chosen: Option<RequestId>,
    ) -> Option<RequestId> {
        let key = chosen.and_then(|id| self.requests.get(&id).map(|r| (id, (r.class, r.tenant))));
        let group = &mut self.groups[g.0];
        let id = match key {
            Some((id, line)) => {
                group.queue.remove(id, line);
                id
            }
            None => group.queue.pop_next(&self.fair, turn)?,
        };
        group.in_flight += 1;
        let kind = group.key.kind;
        if let Some(r) = self.requests.get(&id) {
            self.deadlines.remove(&(r.deadline, id));
            self.fair.stops_waiting(r.tenant);
        }
        self.waiting -= 1;
        self.waiting_per_kind[kind.index()] -= 1;
        self.groups[g.0].queue.clean(&self.requests);
        // The taken request is still `Queued` here (its caller starts it): the next change drops
        // its entry.
        self.settle_oldest();
        Some(id)
    }

    /// The requests `g` would serve next, with their prompts: its next one, then up to
    /// `window - 1` more of the same class in arrival order (from the lines that may start).
    pub(super) fn candidates(
        &self,
        g: GroupId,
        turn: Turn,
        window: usize,
    ) -> Vec<(RequestId, Option<super::PrefixChain>)> {
        let q = &self.groups[g.0].queue;
        let Some(first) = q.next(&self.fair, turn).copied() else {
            return Vec::new();
        };
        let live = |w: &&Waiter| {
            w.id != first.id
                && w.line.0 == first.line.0
                && self
                    .requests
                    .get(&w.id)
                    .is_some_and(|r| r.state == ReqState::Queued)
        };
        let mut rest: Vec<&Waiter> = q
            .lines
            .iter()
            .filter(|l| self.fair.may_start(l.key.1, turn.cap))
            .flat_map(|l| l.waiters.iter().filter(live).take(window))
            .collect();
        rest.sort_by_key(|w| (w.arrival, w.id));
        std::iter::once(first.id)
            .chain(
                rest.into_iter()
                    .take(window.saturating_sub(1))
                    .map(|w| w.id),
            )
            .map(|id| (id, self.requests.get(&id).and_then(|r| r.prefix.clone())))
            .collect()
    }

    /// A running request of `g` ended its attempt.
    pub(super) fn attempt_ended(&mut self, g: GroupId) {
        self.groups[g.0].in_flight -= 1;
    }

    /// A running request's attempt failed: it backs off until `until`, then goes back to the head
    /// of its group ([`Self::due`]).
    pub(super) fn back_off(&mut self, id: RequestId, until: Time, failed_on: LaneId) {
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        r.state = ReqState::Backoff { until };
        r.failed_on = Some(failed_on);
        let kind = self.groups[r.group.0].key.kind;
        self.fair.waits(r.tenant);
        self.deadlines.insert((r.deadline, id));
        self.retries.insert((until, id));
        self.waiting += 1;
        self.waiting_per_kind[kind.index()] += 1;
    }

    /// Remove `id` from the system (it left) and give back its bytes.
    pub(super) fn release(&mut self, id: RequestId) -> Option<Req> {
        let r = *self.requests.remove(&id)?;
        self.bytes_held -= r.bytes;
        Some(r)
    }

    /// Take a waiting (queued or backing-off) request out of the queues and the system.
    pub(super) fn remove_waiting(&mut self, id: RequestId) -> Option<Req> {
        let r = self.release(id)?;
        self.deadlines.remove(&(r.deadline, id));
        self.fair.stops_waiting(r.tenant);
        let kind = self.groups[r.group.0].key.kind;
        self.waiting -= 1;
        self.waiting_per_kind[kind.index()] -= 1;
        match r.state {
            ReqState::Queued => {
                let g = &mut self.groups[r.group.0].queue;
                g.left();
                g.clean(&self.requests);
            }
            ReqState::Backoff { until } => {
                self.retries.remove(&(until, id));
            }
            _ => {}
        }
        self.settle_oldest();
        Some(r)
    }

    /// The first deadline due at `now`, taken out of the system: the expired request's id and
    /// arrival.
    pub(super) fn pop_expired(&mut self, now: Time) -> Option<(RequestId, Time)> {
        let &(t, id) = self.deadlines.first()?;
        if t > now {
            return None;
        }
        let arrival = self.requests.get(&id).map_or(now, |r| r.arrival);
        if self.remove_waiting(id).is_none() {
            self.deadlines.remove(&(t, id));
        }
        Some((id, arrival))
    }

    /// Retries due at `now` go back to the head of their groups.
    pub(super) fn due(&mut self, now: Time) {
        while let Some(&(t, id)) = self.retries.first() {
            if t > now {
                break;
            }
            self.retries.pop_first();
            if let Some(r) = self.requests.get_mut(&id) {
                r.state = ReqState::Queued;
                self.groups[r.group.0].queue.push_front(Waiter::of(id, r));
                self.oldest.queued(r.arrival, id);
            }
        }
    }

    /// Move the request `id` to group `to` (a placed request leaving a failing lane), in arrival
    /// order there when it is queued.
    pub(super) fn regroup(&mut self, id: RequestId, to: GroupId) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        let (from, state, waiter) = (r.group, r.state, Waiter::of(id, r));
        if state == ReqState::Queued {
            self.groups[from.0].queue.remove(id, waiter.line);
            self.groups[from.0].queue.clean(&self.requests);
            self.groups[to.0].queue.insert_in_order(waiter);
            self.groups[to.0].queue.clean(&self.requests);
        }
        if let Some(r) = self.requests.get_mut(&id) {
            r.group = to;
        }
    }
}
