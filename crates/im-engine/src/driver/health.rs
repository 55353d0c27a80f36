//! Active health checks of the lanes, and their answers.

use std::time::Duration;

use inference_queue::{LaneId, Time};
use localai_client::ClientError;
use tokio::time::Instant;

use super::{Driver, Msg};

impl Driver {
    /// Check lanes with their readiness route, at most once per `breaker.health_check` and one
    /// check at a time per lane; the answer goes to the core.
    /// - A lane whose breaker is open or half-open rejoins when the route answers 200.
    /// - An idle lane whose breaker is closed is checked too, so a server that died between
    ///   requests is found before work is sent to it: only an unreachable server counts against
    ///   it (any HTTP answer, such as llama.cpp's 503 while it loads a model, shows it is up).
    ///   A lane with requests running is judged by them.
    pub(super) fn health_checks(&mut self) {
        let Some(every) = self.core.config().breaker.health_check else {
            return;
        };
        if self.last_health.elapsed() < every {
            return;
        }
        self.last_health = Instant::now();
        let status = self.core.status(self.clock.now());
        for (i, l) in status.lanes.iter().enumerate() {
            let closed = match l.breaker {
                inference_queue::BreakerState::Retired => continue,
                inference_queue::BreakerState::Closed => true,
                _ => false,
            };
            if self.checking[i] || (closed && l.in_flight > 0) {
                continue;
            }
            self.checking[i] = true;
            let (backend, tx, lane) = (self.backend.clone(), self.tx.clone(), LaneId(i));
            tokio::spawn(async move {
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), backend.ready(lane)).await;
                let healthy = match answer {
                    Ok(Ok(())) => true,
                    Ok(Err(ClientError::Status { .. })) => closed,
                    Ok(Err(_)) | Err(_) => false,
                };
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Msg::Health { lane, healthy });
                }
            });
        }
    }

    /// A health check of `lane` answered.
    pub(super) fn on_health(&mut self, now: Time, lane: LaneId, healthy: bool) {
        self.checking[lane.0] = false;
        tracing::debug!(lane = %self.lanes[lane.0], healthy, "health check");
        self.core.lane_health(now, lane, healthy);
    }
}
