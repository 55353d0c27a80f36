//! Placement by a balancer routing (`least_loaded`, `round_robin`, `best_performance`): each
//! request gets a lane when it arrives, and moves to another when its lane fails (a retry after a
//! failure there, or its breaker opening).

use super::Scheduler;
use super::api::GroupKey;
use super::queues::ReqState;
use crate::config::Routing;
use crate::types::{Kind, LaneId, ModelId, RequestId};

impl Scheduler {
    /// The lane a balancer routing gives a request of `model`, avoiding `avoid`: among the
    /// healthy lanes that can host it (all that can host it when none is healthy).
    pub(super) fn place(&mut self, model: ModelId, kind: Kind, avoid: Option<usize>) -> usize {
        let lane = self.peek_place(model, kind, avoid);
        if self.cfg.routing == Routing::RoundRobin {
            self.round_robin = self.round_robin.wrapping_add(1);
        }
        lane
    }

    /// [`place`](Self::place) without taking a round-robin turn.
    pub(super) fn peek_place(&self, model: ModelId, kind: Kind, avoid: Option<usize>) -> usize {
        let mut hosts: Vec<usize> = (0..self.lanes.len())
            .filter(|l| self.serves_on(*l, model, kind))
            .collect();
        if hosts.is_empty() {
            // Every lane refuses the kind (a reload retired the one that did not): it waits
            // where the model fits, until a reading restores the kind or its deadline passes.
            hosts = (0..self.lanes.len())
                .filter(|l| self.fits_lane(*l, model))
                .collect();
        }
        let healthy: Vec<usize> = hosts
            .iter()
            .copied()
            .filter(|l| {
                Some(*l) != avoid
                    && !matches!(self.lanes[*l].breaker, super::lane::Breaker::Open { .. })
            })
            .collect();
        let pool = if healthy.is_empty() { hosts } else { healthy };
        match self.cfg.routing {
            Routing::RoundRobin => pool[self.round_robin.wrapping_add(1) % pool.len()],
            Routing::BestPerformance => *pool
                .iter()
                .min_by(|a, b| {
                    self.expected_finish(**a)
                        .total_cmp(&self.expected_finish(**b))
                        .then(a.cmp(b))
                })
                .expect("a model fits some lane (validated)"),
            _ => *pool
                .iter()
                .min_by_key(|l| (self.outstanding(**l), **l))
                .expect("a model fits some lane (validated)"),
        }
    }

    /// Requests placed on or pinned to `lane` that wait, plus those running there.
    fn outstanding(&self, lane: usize) -> usize {
        let waiting: usize = self
            .queues
            .groups()
            .filter(|(_, g)| g.key.lane == Some(LaneId(lane)))
            .map(|(_, g)| g.depth())
            .sum();
        waiting + self.lanes[lane].in_flight as usize
    }

    /// Seconds until `lane` would finish one more request: what it holds, plus one, times its
    /// mean learned service time (1 s before it learned any).
    fn expected_finish(&self, lane: usize) -> f64 {
        (self.outstanding(lane) + 1) as f64 * self.lanes[lane].mean_service_secs()
    }

    /// The group `(kind, model, lane)`, created if new.
    pub(super) fn move_placed(&mut self, id: RequestId, from: usize) {
        let Some(r) = self.queues.get(id) else {
            return;
        };
        let key = self.queues.group(r.group).key;
        let to = self.place(key.model, key.kind, Some(from));
        if to == from {
            return;
        }
        let new = self.queues.group_for(GroupKey {
            lane: Some(LaneId(to)),
            ..key
        });
        self.queues.regroup(id, new);
    }

    pub(super) fn replace_from(&mut self, lane: usize) {
        self.replace_from_where(lane, |_| true);
    }

    /// [`Self::replace_from`] for the requests of the groups `which` picks.
    pub(super) fn replace_from_where(&mut self, lane: usize, which: impl Fn(&GroupKey) -> bool) {
        if !self.cfg.routing.places_requests() {
            return;
        }
        let mut ids: Vec<RequestId> = self
            .queues
            .requests()
            .filter(|(_, r)| {
                let key = self.queues.group(r.group).key;
                r.placed
                    && matches!(r.state, ReqState::Queued | ReqState::Backoff { .. })
                    && key.lane == Some(LaneId(lane))
                    && which(&key)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        for id in ids {
            self.move_placed(id, lane);
        }
    }
}
