//! The core's decisions, carried out: dispatches start attempts, expiries and shutdown failures
//! answer callers, lifecycle calls go to the upstream, switches and breakers are reported.

use inference_queue::{Event, FailReason};
use tokio::time::Instant;

use super::Driver;
use super::report::Report;
use crate::job::EngineError;
use im_metrics::outcome;

impl Driver {
    /// Drain the core's events.
    pub(super) fn process_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            match ev {
                Event::Dispatch {
                    id,
                    lane,
                    attempt,
                    waited,
                } => self.dispatch(id, lane, attempt, waited),
                Event::Expired { id, waited } => {
                    let (attempts, last_error) = self.entries.get(&id).map_or((0, None), |e| {
                        (e.attempts, e.last_error.as_ref().map(ToString::to_string))
                    });
                    let err = EngineError::DeadlineExceeded {
                        waited,
                        attempts,
                        last_error,
                    };
                    self.fail(id, err, outcome::EXPIRED);
                }
                Event::Failed {
                    id,
                    reason: FailReason::ShuttingDown,
                } => self.fail(id, EngineError::ShuttingDown, outcome::SHUTDOWN),
                Event::Failed {
                    id,
                    reason: FailReason::KindRefused,
                } => {
                    let Some((model, kind)) = self
                        .entries
                        .get(&id)
                        .map(|e| (e.job.model().to_owned(), e.job.kind()))
                    else {
                        continue;
                    };
                    let valid = self.core.models_for(kind);
                    let err = EngineError::UnsupportedKind { model, kind, valid };
                    self.fail(id, err, outcome::REFUSED);
                }
                Event::Unload { lane, model } => {
                    self.lifecycle(lane, self.core.model_name(model).to_owned(), true);
                }
                Event::WarmUp { lane, model } => {
                    self.lifecycle(lane, self.core.model_name(model).to_owned(), false);
                }
                Event::Switched {
                    lane,
                    from,
                    to,
                    model_changed,
                } => {
                    let report = Report {
                        metrics: &self.metrics,
                    };
                    let model = self.core.model_name(to.model);
                    report.switched(&self.lanes[lane.0], from, to, model_changed, model);
                    if model_changed {
                        self.switch_started[lane.0] = Some(Instant::now());
                    }
                }
                Event::BreakerOpened { lane } => self.report().breaker(&self.lanes[lane.0], true),
                Event::BreakerClosed { lane } => {
                    self.report().breaker(&self.lanes[lane.0], false);
                }
            }
        }
    }

    /// Where to record.
    pub(super) fn report(&self) -> Report<'_> {
        Report {
            metrics: &self.metrics,
        }
    }
}
