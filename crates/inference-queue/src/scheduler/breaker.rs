//! The per-lane circuit breaker: only failures that blame the upstream count; a half-open lane
//! lets one probe through.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Breaker {
    Closed { failures: u32 },
    Open { until: Time },
    HalfOpen { probe: Option<RequestId> },
}

impl Scheduler {
    pub(super) fn update_breaker(&mut self, lane: usize, id: RequestId, outcome: Outcome) {
        let cfg = self.cfg.breaker;
        let now = self.now;
        let l = &mut self.lanes[lane];
        let before = l.breaker;
        // A failure says something about the lane only when it blames the upstream; one that
        // belongs to a single request (or an abort) leaves the breaker as it is, releasing a
        // half-open probe so that another request can probe.
        let fault = match outcome {
            Outcome::Success => Some(false),
            Outcome::Transient { upstream_fault, .. } | Outcome::Permanent { upstream_fault } => {
                upstream_fault.then_some(true)
            }
            Outcome::Aborted => None,
        };
        l.breaker = match (fault, l.breaker) {
            (None, Breaker::HalfOpen { probe: Some(p) }) if p == id => {
                Breaker::HalfOpen { probe: None }
            }
            (None, b) => b,
            (Some(false), _) => Breaker::Closed { failures: 0 },
            (Some(true), Breaker::Closed { failures }) => {
                if failures + 1 >= cfg.failure_threshold {
                    Breaker::Open {
                        until: now + cfg.cooldown,
                    }
                } else {
                    Breaker::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (Some(true), Breaker::HalfOpen { .. }) => Breaker::Open {
                until: now + cfg.cooldown,
            },
            (Some(true), open @ Breaker::Open { .. }) => open,
        };
        self.breaker_changed(lane, before);
    }

    /// Emit the events of a breaker's change on `lane` from `before`, and move the placed
    /// requests off it when it opened.
    fn breaker_changed(&mut self, lane: usize, before: Breaker) {
        let l = &self.lanes[lane];
        let lane_id = LaneId(lane);
        match (before, l.breaker) {
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
}

impl Scheduler {
    /// An active health check of `lane` answered (`healthy`) or failed. A healthy answer closes an
    /// open or half-open breaker (the lane rejoins at once). Failed checks of a closed breaker
    /// are counted apart from failed requests, and open it at the same threshold: an idle lane
    /// whose server died is taken out before work is sent to it, while checks that answer never
    /// hide failing requests. A failed check re-opens a half-open breaker.
    pub fn lane_health(&mut self, now: Time, lane: LaneId, healthy: bool) {
        self.advance(now);
        let Some(l) = self.lanes.get_mut(lane.0) else {
            return;
        };
        let before = l.breaker;
        let cfg = self.cfg.breaker;
        l.failed_checks = if healthy { 0 } else { l.failed_checks + 1 };
        l.breaker = match (healthy, before) {
            (true, Breaker::Closed { failures }) => Breaker::Closed { failures },
            (true, _) => Breaker::Closed { failures: 0 },
            (false, Breaker::Closed { .. }) if l.failed_checks >= cfg.failure_threshold => {
                l.failed_checks = 0;
                Breaker::Open {
                    until: self.now + cfg.cooldown,
                }
            }
            (false, closed @ Breaker::Closed { .. }) => closed,
            (false, Breaker::HalfOpen { .. }) => Breaker::Open {
                until: self.now + cfg.cooldown,
            },
            (false, open @ Breaker::Open { .. }) => open,
        };
        if healthy && !matches!(before, Breaker::Closed { .. }) {
            // It may have restarted: what it had loaded is unknown, so keep only what runs.
            self.forget_residency(lane.0);
        }
        self.breaker_changed(lane.0, before);
        self.pump();
    }
}
