//! One group's queue: a line per priority class and tenant, which request is served next and
//! which has waited longest ([`GroupQueue`]); the group around it ([`Group`]) and its arrival
//! rate ([`Arrivals`]).

use std::collections::VecDeque;
use std::time::Duration;

use super::{Req, ReqState};
use crate::scheduler::api::GroupKey;
use crate::scheduler::fairness::Fairness;
use crate::scheduler::ids::IdMap;
use crate::types::{Class, LaneId, RequestId, TenantId, Time};

/// A place in a group's queue: the request and what the policy reads of it without looking it
/// up (neither changes while it waits).
#[derive(Clone, Copy, Debug)]
pub(super) struct Waiter {
    pub(super) id: RequestId,
    pub(super) arrival: Time,
    /// The lane its last attempt failed on, for a retry.
    pub(super) failed_on: Option<LaneId>,
    /// Its line.
    pub(super) line: (Class, TenantId),
}

impl Waiter {
    pub(super) fn of(id: RequestId, r: &Req) -> Waiter {
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
pub(super) struct Line {
    pub(super) key: (Class, TenantId),
    pub(super) waiters: VecDeque<Waiter>,
}

/// What decides whose turn it is in a group, besides the tenants' virtual service: the
/// per-tenant in-flight cap, and batch work's own starvation bound.
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::scheduler) struct Turn {
    /// Lines of tenants with this many requests in flight wait.
    pub(in crate::scheduler) cap: Option<u32>,
    /// `bounds.batch_starvation_after`, and now.
    pub(in crate::scheduler) batch_bound: Option<(Duration, Time)>,
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
pub(in crate::scheduler) struct GroupQueue {
    pub(super) lines: Vec<Line>,
    depth: usize,
    /// When the group last started a batch request that had waited its bound.
    overdue_batch_started: Option<Time>,
}

impl GroupQueue {
    /// Requests waiting.
    pub(in crate::scheduler) fn depth(&self) -> usize {
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
    pub(super) fn next(&self, fair: &Fairness, turn: Turn) -> Option<&Waiter> {
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
    pub(in crate::scheduler) fn oldest(&self) -> Option<(RequestId, Time)> {
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
    pub(super) fn ahead_of(
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
    pub(in crate::scheduler) fn has_interactive(&self) -> bool {
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

    pub(super) fn push_back(&mut self, w: Waiter) {
        self.line(w.line).push_back(w);
        self.depth += 1;
    }

    /// A retry goes back to the head of its line.
    pub(super) fn push_front(&mut self, w: Waiter) {
        self.line(w.line).push_front(w);
        self.depth += 1;
    }

    /// Insert in arrival (id) order in its line: a request moved here from another lane's group.
    pub(super) fn insert_in_order(&mut self, w: Waiter) {
        let line = self.line(w.line);
        let at = line.partition_point(|x| x.id < w.id);
        line.insert(at, w);
        self.depth += 1;
    }

    pub(super) fn remove(&mut self, id: RequestId, key: (Class, TenantId)) {
        self.line(key).retain(|x| x.id != id);
        self.depth -= 1;
    }

    /// One waiting request left (it was taken out of the map: a tombstone until it reaches the
    /// head).
    pub(super) fn left(&mut self) {
        self.depth -= 1;
    }

    /// Take [`Self::next`] out.
    pub(super) fn pop_next(&mut self, fair: &Fairness, turn: Turn) -> Option<RequestId> {
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
    pub(super) fn clean(&mut self, requests: &IdMap<Box<Req>>) {
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
pub(in crate::scheduler) struct Group {
    pub(in crate::scheduler) key: GroupKey,
    pub(in crate::scheduler) queue: GroupQueue,
    pub(in crate::scheduler) in_flight: u32,
    /// How often requests arrive, for the predicted waits.
    pub(in crate::scheduler) arrivals: Arrivals,
}

impl Group {
    /// Requests waiting.
    pub(in crate::scheduler) fn depth(&self) -> usize {
        self.queue.depth()
    }
}

/// A group's arrival rate: a moving mean of the gaps between its arrivals; and the queue
/// deadline its latest arrival had.
#[derive(Clone, Debug, Default)]
pub(in crate::scheduler) struct Arrivals {
    last: Option<Time>,
    /// The mean gap in seconds (`None` until two arrivals).
    gap: Option<f64>,
    /// From the latest arrival to its deadline.
    pub(in crate::scheduler) deadline: Option<Duration>,
}

impl Arrivals {
    /// Weight of the newest gap in the mean.
    const ALPHA: f64 = 0.05;

    /// A request with `deadline` arrived at `now`.
    pub(super) fn arrived(&mut self, now: Time, deadline: Time) {
        self.deadline = Some(deadline.saturating_since(now));
        if let Some(last) = self.last {
            let g = now.saturating_since(last).as_secs_f64();
            self.gap = Some(self.gap.map_or(g, |m| m + Self::ALPHA * (g - m)));
        }
        self.last = Some(now);
    }

    /// Arrivals per second at `now`: the mean gap's inverse, falling once the group has been
    /// silent for longer than its mean gap.
    pub(in crate::scheduler) fn per_sec(&self, now: Time) -> f64 {
        match (self.last, self.gap) {
            (Some(last), Some(gap)) => {
                let silent = now.saturating_since(last).as_secs_f64();
                1.0 / gap.max(silent).max(1e-3)
            }
            _ => 0.0,
        }
    }
}
