//! Promised deadlines are kept: a waiting request about to miss the queue deadline admission
//! promised it is served before the policy's order would serve it.
//!
//! With early refusal (`limits.early_refusal_pct`), admission predicts each request's wait and
//! promises a start within its deadline to those predicted to make it. The policy's order
//! (priority, draining a group before switching, the bounds) keeps those promises on average; a
//! burst of work the prediction did not see, or a group that keeps a lane for its whole dwell,
//! breaks them one by one. So when a promised request's deadline comes within a lane's guard,
//! the lane ends its group's turn and starts it: of the promised requests the lane may serve,
//! the one whose deadline is soonest, before its group's own order.
//!
//! A new request's predicted wait (what admission promises on) is its start in the policy's
//! order with every promise already made kept, its own deadline not yet promised: a replay of
//! the scheduler in which the new request is never the one rescued, so that admission promises
//! only what fits beside the promises it made before.
//!
//! The guard is [`GUARD_SERVICES`] times the longest learned service of what the lane holds:
//! the wait for its next free slot, the drain of a switch, and the other promised requests due
//! before this one. Only promises are kept this way: without early refusal, or for a request
//! admitted past its predicted deadline within the margin, serving whatever is about to expire
//! first would be earliest-deadline-first in overload, where each rescue costs a switch and the
//! switches make everything late (measured by hand on `cargo xtask sim`'s early-refusal trace
//! left to wait: 2,049 loads where the policy's order makes 263, and half as many requests
//! served).

use std::time::Duration;

use super::Scheduler;
use super::queues::{GroupId, ReqState};
use crate::types::{LaneId, RequestId};

/// How many of the soonest deadlines a decision looks at (within the guard): requests not
/// promised, or that the lane may not serve, are passed over, and a decision stays short.
const LOOK_AHEAD: usize = 64;

/// The guard in services of what the lane holds. Chosen on the early-refusal rows of `cargo
/// xtask sim` over three seeds: at 6 and 8 a few dozen promises still broke in eight hours,
/// at 12 none to ten, at 20 the lanes switched so early that more broke again.
const GUARD_SERVICES: u32 = 12;

impl Scheduler {
    /// How long before its deadline a promised request is served first on `lane`.
    pub(super) fn deadline_guard(&self, lane: usize) -> Duration {
        let l = &self.lanes[lane];
        let longest = l
            .resident
            .iter()
            .filter_map(|m| self.expected_service(LaneId(lane), *m))
            .max()
            .unwrap_or_else(|| Duration::from_secs_f64(l.mean_service_secs()));
        longest * GUARD_SERVICES
    }

    /// The promised request `lane` must start now to keep its deadline, and its group: of the
    /// promised requests the lane may serve, the one whose deadline is soonest, when it is
    /// within the lane's guard, and its tenant under its cap of requests running. It starts
    /// before its group's order (its class, its tenant's share, its line's arrival order)
    /// would start it: the deadline was promised.
    pub(super) fn deadline_due(&self, lane: usize) -> Option<(GroupId, RequestId)> {
        self.cfg.limits.early_refusal_pct?;
        let horizon = self.now + self.deadline_guard(lane);
        let cap = self.cfg.limits.max_in_flight_per_tenant;
        self.queues
            .soonest_deadlines()
            .take(LOOK_AHEAD)
            .take_while(|(t, _)| *t <= horizon)
            .find_map(|(t, id)| {
                let r = self.queues.get(id)?;
                let g = self.queues.group(r.group);
                (t > self.now
                    && r.promised
                    && r.state == ReqState::Queued
                    && self.queues.fair.may_start(r.tenant, cap)
                    && self.eligible(lane, g))
                .then_some((r.group, id))
            })
    }
}
