//! Placement by a balancer routing (`least_loaded`, `round_robin`, `best_performance`): each
//! request gets a lane when it arrives, and moves to another when its lane fails (a retry after a
//! failure there, or its breaker opening).

use super::*;
use crate::config::Routing;

impl Scheduler {
    /// The lane a balancer routing gives a request of `model`, avoiding `avoid`: among the
    /// healthy lanes that can host it (all that can host it when none is healthy).
    pub(super) fn place(&mut self, model: ModelId, avoid: Option<usize>) -> usize {
        let lane = self.peek_place(model, avoid);
        if self.cfg.routing == Routing::RoundRobin {
            self.round_robin = self.round_robin.wrapping_add(1);
        }
        lane
    }

    /// [`place`](Self::place) without taking a round-robin turn.
    pub(super) fn peek_place(&self, model: ModelId, avoid: Option<usize>) -> usize {
        let hosts: Vec<usize> = (0..self.lanes.len())
            .filter(|l| self.fits_lane(*l, model))
            .collect();
        let healthy: Vec<usize> = hosts
            .iter()
            .copied()
            .filter(|l| {
                Some(*l) != avoid && !matches!(self.lanes[*l].breaker, Breaker::Open { .. })
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
            .groups
            .iter()
            .filter(|g| g.key.lane == Some(LaneId(lane)))
            .map(|g| g.depth)
            .sum();
        waiting + self.lanes[lane].in_flight as usize
    }

    /// Seconds until `lane` would finish one more request: what it holds, plus one, times its
    /// mean learned service time (1 s before it learned any).
    fn expected_finish(&self, lane: usize) -> f64 {
        let learned: Vec<f64> = self.lanes[lane]
            .costs
            .iter()
            .filter_map(|c| c.service.map(|s| s.get().as_secs_f64()))
            .collect();
        let mean = if learned.is_empty() {
            1.0
        } else {
            learned.iter().sum::<f64>() / learned.len() as f64
        };
        (self.outstanding(lane) + 1) as f64 * mean
    }

    /// The group `(kind, model, lane)`, created if new.
    pub(super) fn group_for(&mut self, key: GroupKey) -> usize {
        if let Some(g) = self.group_index.get(&key) {
            return *g;
        }
        self.groups.push(Group {
            key,
            queue: VecDeque::new(),
            depth: 0,
            in_flight: 0,
        });
        self.group_index.insert(key, self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// Move a waiting request the routing placed to another lane (not `from`).
    pub(super) fn move_placed(&mut self, id: RequestId, from: usize) {
        let Some(r) = self.requests.get(&id) else {
            return;
        };
        let (old, state) = (r.group, r.state);
        let key = self.groups[old].key;
        let to = self.place(key.model, Some(from));
        if to == from {
            return;
        }
        let new = self.group_for(GroupKey {
            lane: Some(LaneId(to)),
            ..key
        });
        if state == ReqState::Queued {
            let g = &mut self.groups[old];
            g.queue.retain(|x| *x != id);
            g.depth -= 1;
            Self::clean_front(&mut self.groups[old], &self.requests);
            let g = &mut self.groups[new];
            // Keep the group in arrival (id) order.
            let at = g.queue.partition_point(|x| *x < id);
            g.queue.insert(at, id);
            g.depth += 1;
            Self::clean_front(&mut self.groups[new], &self.requests);
        }
        if let Some(r) = self.requests.get_mut(&id) {
            r.group = new;
        }
    }

    /// `lane`'s breaker opened: move the waiting requests the routing placed there to other lanes.
    pub(super) fn replace_from(&mut self, lane: usize) {
        if !self.cfg.routing.places_requests() {
            return;
        }
        let mut ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                r.placed
                    && matches!(r.state, ReqState::Queued | ReqState::Backoff { .. })
                    && self.groups[r.group].key.lane == Some(LaneId(lane))
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        for id in ids {
            self.move_placed(id, lane);
        }
    }
}
