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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

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

/// A place in a group's queue: the request and what the policy reads of it without looking it
/// up (neither changes while it waits).
#[derive(Clone, Copy, Debug)]
struct Waiter {
    id: RequestId,
    arrival: Time,
    /// The lane its last attempt failed on, for a retry.
    failed_on: Option<LaneId>,
    /// Its line.
    line: (Class, TenantId),
}

impl Waiter {
    fn of(id: RequestId, r: &Req) -> Waiter {
        Waiter {
            id,
            arrival: r.arrival,
            failed_on: r.failed_on,
            line: (r.class, r.tenant),
        }
    }
}

/// One class and tenant's waiting requests in a group, in order.
#[derive(Clone, Debug)]
struct Line {
    key: (Class, TenantId),
    waiters: VecDeque<Waiter>,
}

/// What decides whose turn it is in a group, besides the tenants' virtual service: the
/// per-tenant in-flight cap, and batch work's own starvation bound.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Turn {
    /// Lines of tenants with this many requests in flight wait.
    pub(super) cap: Option<u32>,
    /// `bounds.batch_starvation_after`, and now.
    pub(super) batch_bound: Option<(Duration, Time)>,
}

impl Turn {
    /// Whether `w` is a batch request that has waited its class's bound.
    fn overdue(&self, w: &Waiter) -> bool {
        w.line.0 == Class::Batch
            && self
                .batch_bound
                .is_some_and(|(after, now)| w.arrival + after <= now)
    }
}

/// The waiting requests of one group, a line per class and tenant. Entries may be tombstones
/// (no longer queued) except at the head of a line, which is always live; a line with none is
/// dropped.
#[derive(Clone, Debug, Default)]
pub(super) struct GroupQueue {
    lines: Vec<Line>,
    depth: usize,
    /// When the group last started a batch request that had waited its bound.
    overdue_batch_started: Option<Time>,
}

impl GroupQueue {
    /// Requests waiting.
    pub(super) fn depth(&self) -> usize {
        self.depth
    }

    /// The request dispatch serves next: the head of the line of the highest class, then of
    /// the tenant with the least virtual service (on a tie, the one with less waiting: a tenant
    /// that just became backlogged starts level with the least, and goes first rather than
    /// behind the flood it is level with), then the earliest. Lines of tenants at their
    /// in-flight cap wait.
    ///
    /// Batch work's own bound: once a batch request has waited `batch_starvation_after`, the
    /// group's overdue batch requests go before its interactive work, for one start, then not
    /// again until the bound has passed since (when the group started an overdue batch request
    /// last). So a batch flood gets at least one start per bound and group even under
    /// interactive work that fills the model (delayed, never starved), and costs interactive
    /// work at most that one service per bound.
    fn next(&self, fair: &Fairness, turn: Turn) -> Option<&Waiter> {
        if let [one] = self.lines.as_slice()
            && turn.cap.is_none()
        {
            return one.waiters.front();
        }
        let promote = turn.batch_bound.is_some_and(|(after, now)| {
            self.overdue_batch_started
                .is_none_or(|last| last + after <= now)
        });
        let rank = |w: &Waiter| match w.line.0 {
            Class::Batch if promote && turn.overdue(w) => 0,
            Class::Interactive => 1,
            Class::Batch => 2,
        };
        self.lines
            .iter()
            .filter_map(|l| l.waiters.front())
            .filter(|w| fair.may_start(w.line.1, turn.cap))
            .min_by(|a, b| {
                rank(a)
                    .cmp(&rank(b))
                    .then(fair.counter(a.line.1).total_cmp(&fair.counter(b.line.1)))
                    .then(fair.waiting(a.line.1).cmp(&fair.waiting(b.line.1)))
                    .then((a.arrival, a.id).cmp(&(b.arrival, b.id)))
            })
    }

    /// The request that has waited longest, and when it arrived (what the starvation bound,
    /// cost-aware loading and wake-ups read): the earliest head of all lines.
    pub(super) fn oldest(&self) -> Option<(RequestId, Time)> {
        if let [one] = self.lines.as_slice() {
            return one.waiters.front().map(|w| (w.id, w.arrival));
        }
        self.lines
            .iter()
            .filter_map(|l| l.waiters.front())
            .map(|w| (w.arrival, w.id))
            .min()
            .map(|(arrival, id)| (id, arrival))
    }

    /// How many waiting requests go before `id` (of line `key`) in the order [`Self::next`]
    /// follows: those ahead of it in its own line, every waiter of a higher class, and of the
    /// other lines of its class as many as it has ahead of it plus one (fair share between
    /// equals, tenants' weights aside); `None` when it is not waiting here.
    fn ahead_of(
        &self,
        id: RequestId,
        key: (Class, TenantId),
        requests: &IdMap<Box<Req>>,
    ) -> Option<usize> {
        let live = |w: &&Waiter| {
            requests
                .get(&w.id)
                .is_some_and(|r| r.state == ReqState::Queued)
        };
        let own = self.lines.iter().find(|l| l.key == key)?;
        let at = own.waiters.iter().position(|w| w.id == id)?;
        let mine = own.waiters.iter().take(at).filter(live).count();
        let rank = |c: Class| match c {
            Class::Interactive => 0,
            Class::Batch => 1,
        };
        let others: usize = self
            .lines
            .iter()
            .filter(|l| l.key != key)
            .map(|l| {
                let n = l.waiters.iter().filter(live).count();
                match rank(l.key.0).cmp(&rank(key.0)) {
                    std::cmp::Ordering::Less => n,
                    std::cmp::Ordering::Equal => n.min(mine + 1),
                    std::cmp::Ordering::Greater => 0,
                }
            })
            .sum();
        Some(mine + others)
    }

    /// Whether interactive requests wait here (not only batch work).
    pub(super) fn has_interactive(&self) -> bool {
        self.lines.iter().any(|l| l.key.0 == Class::Interactive)
    }

    /// The line of `key`, made on first use.
    fn line(&mut self, key: (Class, TenantId)) -> &mut VecDeque<Waiter> {
        let i = match self.lines.iter().position(|l| l.key == key) {
            Some(i) => i,
            None => {
                self.lines.push(Line {
                    key,
                    waiters: VecDeque::new(),
                });
                self.lines.len() - 1
            }
        };
        &mut self.lines[i].waiters
    }

    fn push_back(&mut self, w: Waiter) {
        self.line(w.line).push_back(w);
        self.depth += 1;
    }

    /// A retry goes back to the head of its line.
    fn push_front(&mut self, w: Waiter) {
        self.line(w.line).push_front(w);
        self.depth += 1;
    }

    /// Insert in arrival (id) order in its line: a request moved here from another lane's group.
    fn insert_in_order(&mut self, w: Waiter) {
        let line = self.line(w.line);
        let at = line.partition_point(|x| x.id < w.id);
        line.insert(at, w);
        self.depth += 1;
    }

    fn remove(&mut self, id: RequestId, key: (Class, TenantId)) {
        self.line(key).retain(|x| x.id != id);
        self.depth -= 1;
    }

    /// One waiting request left (it was taken out of the map: a tombstone until it reaches the
    /// head).
    fn left(&mut self) {
        self.depth -= 1;
    }

    /// Take [`Self::next`] out.
    fn pop_next(&mut self, fair: &Fairness, turn: Turn) -> Option<RequestId> {
        let w = *self.next(fair, turn)?;
        if turn.overdue(&w) {
            self.overdue_batch_started = turn.batch_bound.map(|(_, now)| now);
        }
        let (id, key) = (w.id, w.line);
        self.line(key).pop_front();
        self.depth -= 1;
        Some(id)
    }

    /// Drop tombstones at the heads, so that every head is live, and the lines left empty.
    fn clean(&mut self, requests: &IdMap<Box<Req>>) {
        let mut emptied = false;
        for line in &mut self.lines {
            while let Some(front) = line.waiters.front() {
                match requests.get(&front.id) {
                    Some(r) if r.state == ReqState::Queued => break,
                    _ => {
                        line.waiters.pop_front();
                    }
                }
            }
            emptied |= line.waiters.is_empty();
        }
        if emptied {
            self.lines.retain(|l| !l.waiters.is_empty());
        }
    }
}

/// One group: its key, its queue and what it runs.
#[derive(Clone, Debug)]
pub(super) struct Group {
    pub(super) key: GroupKey,
    pub(super) queue: GroupQueue,
    pub(super) in_flight: u32,
    /// How often requests arrive, for the predicted waits.
    pub(super) arrivals: Arrivals,
}

impl Group {
    /// Requests waiting.
    pub(super) fn depth(&self) -> usize {
        self.queue.depth()
    }
}

/// A group's arrival rate: a moving mean of the gaps between its arrivals; and the queue
/// deadline its latest arrival had.
#[derive(Clone, Debug, Default)]
pub(super) struct Arrivals {
    last: Option<Time>,
    /// The mean gap in seconds (`None` until two arrivals).
    gap: Option<f64>,
    /// From the latest arrival to its deadline.
    pub(super) deadline: Option<Duration>,
}

impl Arrivals {
    /// Weight of the newest gap in the mean.
    const ALPHA: f64 = 0.05;

    /// A request with `deadline` arrived at `now`.
    fn arrived(&mut self, now: Time, deadline: Time) {
        self.deadline = Some(deadline.saturating_since(now));
        if let Some(last) = self.last {
            let g = now.saturating_since(last).as_secs_f64();
            self.gap = Some(self.gap.map_or(g, |m| m + Self::ALPHA * (g - m)));
        }
        self.last = Some(now);
    }

    /// Arrivals per second at `now`: the mean gap's inverse, falling once the group has been
    /// silent for longer than its mean gap.
    pub(super) fn per_sec(&self, now: Time) -> f64 {
        match (self.last, self.gap) {
            (Some(last), Some(gap)) => {
                let silent = now.saturating_since(last).as_secs_f64();
                1.0 / gap.max(silent).max(1e-3)
            }
            _ => 0.0,
        }
    }
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

/// The arrivals of the queued requests, oldest first, so that the oldest waiter of all is found
/// without a pass over the groups (what the starvation bound reads at every choice). New requests
/// arrive in time order: a queue in arrival order takes them. A request queued again out of order
/// (a retry back from its back-off) goes to an ordered set beside it. Entries of requests no longer
/// queued are skipped when read and dropped from the fronts when the queues change; the rest are
/// dropped in one pass once they outnumber the waiting requests, so the index stays within a
/// small multiple of them.
#[derive(Clone, Debug, Default)]
struct OldestIndex {
    in_order: VecDeque<(Time, RequestId)>,
    out_of_order: BTreeSet<(Time, RequestId)>,
}

impl OldestIndex {
    /// Entries beyond twice the waiting requests (and this many) make the index drop them all.
    const SLACK: usize = 1024;

    fn queued(&mut self, arrival: Time, id: RequestId) {
        if self.in_order.back().is_none_or(|(t, _)| *t <= arrival) {
            self.in_order.push_back((arrival, id));
        } else {
            self.out_of_order.insert((arrival, id));
        }
    }

    /// The earliest arrival of a request that `live` says is queued.
    fn first(&self, live: impl Fn(Time, RequestId) -> bool) -> Option<Time> {
        let a = self.in_order.iter().find(|(t, id)| live(*t, *id));
        let b = self.out_of_order.iter().find(|(t, id)| live(*t, *id));
        match (a, b) {
            (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
            (a, b) => a.or(b).map(|(t, _)| *t),
        }
    }

    /// Drop the entries of requests no longer queued from the fronts, or from everywhere once
    /// there are too many of them.
    fn settle(&mut self, waiting: usize, live: impl Fn(Time, RequestId) -> bool) {
        if self.in_order.len() + self.out_of_order.len() > 2 * waiting + Self::SLACK {
            self.in_order.retain(|(t, id)| live(*t, *id));
            self.out_of_order.retain(|(t, id)| live(*t, *id));
            return;
        }
        while let Some((t, id)) = self.in_order.front()
            && !live(*t, *id)
        {
            self.in_order.pop_front();
        }
        while let Some((t, id)) = self.out_of_order.first()
            && !live(*t, *id)
        {
            self.out_of_order.pop_first();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(group: GroupId, arrival: Time, tenant: u32) -> Req {
        Req {
            group,
            bytes: 0,
            arrival,
            deadline: arrival + Duration::from_secs(1 << 20),
            attempts: 0,
            state: ReqState::Queued,
            failed_on: None,
            started: arrival,
            cold: false,
            behind_load: false,
            placed: false,
            tenant: TenantId(tenant),
            class: Class::default(),
            cost: None,
            charged: 0.0,
            prefix: None,
            prefix_matched: 0,
            prefill_mark: arrival,
            promised: false,
        }
    }

    /// The earliest arrival of a queued request, by looking at every one.
    fn oldest_by_scan(q: &Queues) -> Option<Time> {
        q.requests()
            .filter(|(_, r)| r.state == ReqState::Queued)
            .map(|(_, r)| r.arrival)
            .min()
    }

    /// The oldest waiter of all, as the starvation bound reads it, is the earliest arrival of the
    /// queued requests whatever happened to them: served in any group's order, cancelled, failed
    /// and queued again at their line's head (out of arrival order); while one request is left
    /// waiting and thousands pass it, the index stays bounded.
    #[test]
    fn the_oldest_waiter_of_all_is_the_earliest_queued_arrival() {
        let mut q = Queues::default();
        let groups: Vec<GroupId> = (0..6)
            .map(|i| {
                q.group_for(GroupKey {
                    kind: Kind::ALL[i % Kind::ALL.len()],
                    model: ModelId(i / 2),
                    lane: None,
                })
            })
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut roll = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = Time::ZERO;
        let mut next_id = 0u64;
        let mut running: Vec<RequestId> = Vec::new();
        // One request of the last group that nobody serves: everything else passes it.
        let patient = RequestId(u64::MAX);
        q.enqueue(patient, req(groups[5], now, 0));
        for step in 0..40_000 {
            now += Duration::from_millis(1);
            if step == 20_000 {
                // From here on, the oldest changes as requests come and go.
                q.remove_waiting(patient);
            }
            match roll(10) {
                0..=3 => {
                    let g = groups[roll(5) as usize];
                    q.enqueue(RequestId(next_id), req(g, now, roll(3) as u32));
                    next_id += 1;
                }
                4..=6 => {
                    if let Some(id) = q.take(groups[roll(5) as usize], Turn::default(), None) {
                        q.get_mut(id).expect("taken").state =
                            ReqState::InFlight { lane: LaneId(0) };
                        running.push(id);
                    }
                }
                7 if !running.is_empty() => {
                    // A running request fails and backs off for a while.
                    let id = running.swap_remove(roll(running.len() as u64) as usize);
                    let g = q.get(id).expect("running").group;
                    q.attempt_ended(g);
                    q.back_off(id, now + Duration::from_millis(roll(50)), LaneId(0));
                }
                8 => {
                    if let Some(id) = running.pop() {
                        let g = q.get(id).expect("running").group;
                        q.attempt_ended(g);
                        q.release(id);
                    }
                }
                7 => {}
                _ => {
                    // A waiting request is cancelled.
                    let waiting: Vec<RequestId> = q
                        .requests()
                        .filter(|(id, r)| r.state == ReqState::Queued && *id != patient)
                        .map(|(id, _)| id)
                        .take(8)
                        .collect();
                    if let Some(id) = waiting.get(roll(8) as usize) {
                        q.remove_waiting(*id);
                    }
                }
            }
            q.due(now);
            assert_eq!(
                q.oldest_arrival_of_all(),
                oldest_by_scan(&q),
                "at step {step}"
            );
            if step < 20_000 {
                assert_eq!(q.oldest_arrival_of_all(), Some(Time::ZERO));
            }
            let held = q.oldest.in_order.len() + q.oldest.out_of_order.len();
            assert!(
                held <= 2 * q.waiting() + OldestIndex::SLACK + 2,
                "{held} entries held"
            );
        }
    }
}
