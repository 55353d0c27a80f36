//! The oldest waiter of all without a pass over the groups ([`OldestIndex`]).

use std::collections::{BTreeSet, VecDeque};

use crate::types::{RequestId, Time};

/// The arrivals of the queued requests, oldest first, so that the oldest waiter of all is found
/// without a pass over the groups (what the starvation bound reads at every choice). New requests
/// arrive in time order: a queue in arrival order takes them. A request queued again out of order
/// (a retry back from its back-off) goes to an ordered set beside it. Entries of requests no longer
/// queued are skipped when read and dropped from the fronts when the queues change; the rest are
/// dropped in one pass once they outnumber the waiting requests, so the index stays within a
/// small multiple of them.
#[derive(Clone, Debug, Default)]
pub(super) struct OldestIndex {
    in_order: VecDeque<(Time, RequestId)>,
    out_of_order: BTreeSet<(Time, RequestId)>,
}

impl OldestIndex {
    /// Entries beyond twice the waiting requests (and this many) make the index drop them all.
    pub(super) const SLACK: usize = 1024;

    pub(super) fn queued(&mut self, arrival: Time, id: RequestId) {
        if self.in_order.back().is_none_or(|(t, _)| *t <= arrival) {
            self.in_order.push_back((arrival, id));
        } else {
            self.out_of_order.insert((arrival, id));
        }
    }

    /// The earliest arrival of a request that `live` says is queued.
    pub(super) fn first(&self, live: impl Fn(Time, RequestId) -> bool) -> Option<Time> {
        let a = self.in_order.iter().find(|(t, id)| live(*t, *id));
        let b = self.out_of_order.iter().find(|(t, id)| live(*t, *id));
        match (a, b) {
            (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
            (a, b) => a.or(b).map(|(t, _)| *t),
        }
    }

    /// Drop the entries of requests no longer queued from the fronts, or from everywhere once
    /// there are too many of them.
    pub(super) fn settle(&mut self, waiting: usize, live: impl Fn(Time, RequestId) -> bool) {
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

    /// Entries held, live or not.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }
}
