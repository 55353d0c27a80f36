//! What a lane's circuit breaker changing means for the scheduler: events, and placed requests
//! moved off a lane whose breaker opened. The transitions themselves are [`Lane`]'s.

use super::Scheduler;
use super::api::{Event, Outcome};
use super::lane::Breaker;
use crate::types::{LaneId, RequestId, Time};

impl Scheduler {
    /// An attempt of `id` ended on `lane` with `outcome`: the lane's breaker learns from it.
    pub(super) fn update_breaker(&mut self, lane: usize, id: RequestId, outcome: Outcome) {
        let before = self.lanes[lane].record(self.cfg.breaker, self.now, id, outcome);
        self.breaker_changed(lane, before);
    }

    /// Emit the events of a breaker's change on `lane` from `before`, and move the placed
    /// requests off it when it opened.
    fn breaker_changed(&mut self, lane: usize, before: Breaker) {
        let lane_id = LaneId(lane);
        match (before, self.lanes[lane].breaker) {
            (Breaker::Closed { .. } | Breaker::HalfOpen { .. }, Breaker::Open { .. }) => {
                self.counters.breaker_opened += 1;
                self.events
                    .push_back(Event::BreakerOpened { lane: lane_id });
                self.replace_from(lane);
            }
            (Breaker::HalfOpen { .. } | Breaker::Open { .. }, Breaker::Closed { .. }) => {
                self.events
                    .push_back(Event::BreakerClosed { lane: lane_id });
            }
            _ => {}
        }
    }

    /// An active health check of `lane` answered (`healthy`) or failed. A healthy answer closes an
    /// open or half-open breaker (the lane rejoins at once). Failed checks of a closed breaker
    /// are counted apart from failed requests, and open it at the same threshold: an idle lane
    /// whose server died is taken out before work is sent to it, while checks that answer never
    /// hide failing requests. A failed check re-opens a half-open breaker.
    pub fn lane_health(&mut self, now: Time, lane: LaneId, healthy: bool) {
        self.advance(now);
        let cfg = self.cfg.breaker;
        let Some(l) = self.lanes.get_mut(lane.0) else {
            return;
        };
        let before = l.check(cfg, self.now, healthy);
        if healthy && !matches!(before, Breaker::Closed { .. }) {
            // It may have restarted: what it had loaded is unknown, so keep only what runs.
            self.forget_residency(lane.0);
        }
        self.breaker_changed(lane.0, before);
        self.pump();
    }
}
