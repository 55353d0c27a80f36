//! Predicted waits by replay: the policy itself, run forward on a copy of the state.
//!
//! The fluid model ([`super::estimate`]) describes the policy in a formula; a replay runs it.
//! A copy of the scheduler takes a phantom request of the group asked about (or follows a
//! waiting one), then goes on alone: every attempt lasts its model's learned service time on
//! its lane (the attempts running now, what is left of it), an attempt that starts while its
//! model loads starts once the load is done, every load takes its learned time, each group's
//! requests keep arriving evenly at its learned rate with the deadline its latest one had (and
//! are admitted as the copy admits them, refused early by the fluid model), and the deadlines,
//! the bounds, the starvation rule, placement and fair share act as they will. The prediction
//! is when the phantom starts. `cargo xtask sim` finds the wait of a request nearly settled by
//! the state at its arrival (a state oracle that redraws the future moves it little), so what a
//! replay cannot know (the true service times, what arrives) costs far less than what a
//! formula leaves out.
//!
//! A replay costs a copy of the requests (the lanes' prefix indexes are shared, not copied:
//! prompts are placed in it as affinity alone places them) and a step per dispatch before the
//! phantom's: [`REPLAY_STEPS`] bound those, and past them the fluid model predicts the rest from
//! the replayed state.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::Scheduler;
use super::api::{Admission, Event, Outcome, Submit};
use super::lane::Phase;
use super::queues::{GroupId, Req, ReqState};
use crate::types::{Kind, LaneId, ModelId, RequestId, Time};

/// Dispatches a replay runs before the fluid model predicts the rest.
pub const REPLAY_STEPS: usize = 512;
/// Requests in the system under which a prediction is a replay (a copy of the state costs a
/// step per request); from there on, the fluid model predicts (a deep queue's wait is a sum of
/// many services, which a formula gets right).
pub const REPLAY_BELOW: usize = 1_024;

/// What the replay waits for: an attempt's end, or a lane's unload or load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Done(RequestId),
    Lifecycle(LaneId),
    /// The next of a group's arrivals, at its learned rate.
    Arrival(GroupId),
}

/// Whose start a replay predicts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Whose {
    /// A request of this kind for this model, submitted now.
    New(Kind, ModelId),
    /// This waiting request.
    Waiting(RequestId),
}

impl Scheduler {
    /// When `whose` starts, from `now`, by replay (see the module's docs): `None` when no lane
    /// may serve it now.
    pub(super) fn replayed_wait(&self, now: Time, whose: Whose) -> Option<Duration> {
        let now = now.max(self.now);
        let mut copy = self.clone();
        copy.events.clear();
        // Admission in the copy refuses early by the fluid model (a replay in a replay would
        // never end).
        copy.replaying = true;
        copy.cfg.limits.max_queued_total = usize::MAX;
        // Prompts are placed as affinity places them: the copy shares the lanes' prefix indexes
        // and must not write to them.
        copy.cfg.prefix = None;
        let mut due: BinaryHeap<Reverse<(Time, Due)>> = BinaryHeap::new();
        let mut loads = Loads::default();
        for (id, r) in self.queues.requests() {
            if let ReqState::InFlight { lane } | ReqState::CancelledInFlight { lane } = r.state {
                let (_, ends) = self.attempt_times(&mut loads, r, lane, r.started);
                due.push(Reverse((ends.max(now), Due::Done(id))));
            }
        }
        for (l, lane) in self.lanes.iter().enumerate() {
            let ends = match lane.phase {
                Phase::Ready => continue,
                Phase::Unloading { .. } => now,
                Phase::Preloading { model } => lane.phase_since + lane.expected_load(model),
                Phase::WarmingUp { next } => {
                    lane.phase_since + lane.expected_load(self.queues.group(next).key.model)
                }
            };
            let times = match lane.phase {
                Phase::Unloading { left, .. } => left,
                _ => 1,
            };
            for _ in 0..times {
                due.push(Reverse((ends.max(now), Due::Lifecycle(LaneId(l)))));
            }
        }
        let phantom = match whose {
            Whose::Waiting(id) => id,
            Whose::New(kind, m) => match copy.submit(now, Submit::new(kind, self.model_name(m))) {
                // Not promised its deadline: its start with every promise made before kept.
                Admission::Accepted(id) => {
                    if let Some(r) = copy.queues.get_mut(id) {
                        r.promised = false;
                    }
                    id
                }
                // Refused as no real request would be (a lane filter, a bound on bytes): the
                // fluid model.
                Admission::Rejected(_) => return self.fluid_wait(now, kind, m),
            },
        };
        // What keeps arriving meanwhile: each group's requests at its learned rate, evenly.
        let gap = |g: GroupId| {
            let rate = self.queues.group(g).arrivals.per_sec(now);
            (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate))
        };
        for (g, _) in self.queues.groups() {
            if let Some(gap) = gap(g) {
                due.push(Reverse((now + gap, Due::Arrival(g))));
            }
        }
        let mut at = now;
        for _ in 0..REPLAY_STEPS {
            while let Some(ev) = copy.poll_event() {
                match ev {
                    Event::Dispatch { id, lane, .. } => {
                        let r = copy.queues.get(id).expect("a dispatched request is known");
                        let (start, ends) = copy.attempt_times(&mut loads, r, lane, at);
                        if id == phantom {
                            return Some(start.saturating_since(now));
                        }
                        due.push(Reverse((ends, Due::Done(id))));
                    }
                    Event::Unload { lane, .. } => due.push(Reverse((at, Due::Lifecycle(lane)))),
                    Event::WarmUp { lane, model } => {
                        due.push(Reverse((
                            at + copy.expected_load(lane, model),
                            Due::Lifecycle(lane),
                        )));
                    }
                    _ => {}
                }
            }
            let next_due = due.peek().map(|Reverse((t, _))| *t);
            let timer = copy.poll_timeout();
            match (next_due, timer) {
                (None, None) => return None,
                (Some(d), t) if t.is_none_or(|t| d <= t) => {
                    let Reverse((t, what)) = due.pop().expect("peeked");
                    at = t;
                    match what {
                        Due::Done(id) => {
                            copy.complete(t, id, Outcome::Success);
                        }
                        Due::Lifecycle(lane) => copy.lifecycle_done(t, lane),
                        Due::Arrival(g) => {
                            let group = self.queues.group(g);
                            let model = self.model_name(group.key.model);
                            copy.submit(
                                t,
                                Submit {
                                    lane: group.key.lane,
                                    deadline: group.arrivals.deadline,
                                    ..Submit::new(group.key.kind, model)
                                },
                            );
                            let gap = gap(g).expect("a group that arrives has a rate");
                            due.push(Reverse((t + gap, Due::Arrival(g))));
                        }
                    }
                }
                (_, t) => {
                    let t = t.expect("a timer comes first");
                    at = t;
                    copy.handle_timeout(t);
                }
            }
        }
        // Past the budget, the fluid model from where the replay got to.
        let elapsed = at.saturating_since(now);
        copy.fluid_eta(at, phantom).map(|eta| elapsed + eta)
    }

    /// When the attempt of `r` dispatched on `lane` at `at` starts (after the load it carries or
    /// waits for) and ends (after its learned service).
    fn attempt_times(&self, loads: &mut Loads, r: &Req, lane: LaneId, at: Time) -> (Time, Time) {
        let model = self.queues.group(r.group).key.model;
        let load = r.cold.then(|| self.expected_load(lane, model));
        let start = loads.start(lane, model, at, load);
        (start, start + self.service_on(lane, model))
    }

    /// The learned service time of `model` on `lane`, else the lane's mean.
    fn service_on(&self, lane: LaneId, model: ModelId) -> Duration {
        self.expected_service(lane, model)
            .unwrap_or_else(|| Duration::from_secs_f64(self.lanes[lane.0].mean_service_secs()))
    }
}

/// The loads the replay has seen start: per lane and model, when the model is ready. An attempt
/// dispatched while its model loads starts once it is ready, as a server does.
#[derive(Default)]
struct Loads(Vec<(LaneId, ModelId, Time)>);

impl Loads {
    /// When an attempt of `model` dispatched on `lane` at `at` starts: `load` is the load it
    /// carries (the first after a switch).
    fn start(&mut self, lane: LaneId, model: ModelId, at: Time, load: Option<Duration>) -> Time {
        if let Some(load) = load {
            self.0.retain(|(l, m, _)| (*l, *m) != (lane, model));
            self.0.push((lane, model, at + load));
            return at + load;
        }
        self.0
            .iter()
            .find(|(l, m, _)| (*l, *m) == (lane, model))
            .map_or(at, |(_, _, ready)| at.max(*ready))
    }
}
