//! Loads and unloads an operator asks for (`POST /models/load`, `/models/unload`), through the
//! scheduler rather than around it: a load is a warm-up at the lane's next idle moment; an unload
//! of a model with work in flight or waiting is refused unless forced, and a forced one stops
//! new work for the model on that lane and unloads it once its work in flight is done (the
//! barrier).

use super::Scheduler;
use super::api::{Event, Rejection};
use super::lane::Phase;
use super::residency::Room;
use crate::config::ConfigError;
use crate::types::{Kind, LaneId, ModelId, Time};

/// What [`Scheduler::load_model`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The model is resident on the lane already.
    Loaded,
    /// The lane loads it at its next idle moment.
    Scheduled,
}

/// What [`Scheduler::unload_model`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnloadOutcome {
    /// The model is not resident on the lane: nothing to do.
    NotLoaded,
    /// The model was not resident; the load an operator had asked for is called off.
    LoadCancelled,
    /// The lane unloads it now.
    Unloading,
    /// Forced: no new work for it on the lane; it is unloaded when its requests in flight end.
    AfterBarrier,
}

/// Why [`Scheduler::unload_model`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnloadRefusal {
    /// The model or lane is unknown.
    Rejected(Rejection),
    /// The model has work in flight or waiting; retry with `force` to unload it after the barrier.
    Busy {
        /// Its requests running on the lane.
        in_flight: u32,
        /// Its requests waiting.
        waiting: usize,
    },
}

impl Scheduler {
    /// Load `model` on `lane` (or where [`advise`](Self::advise) would send its work) at the
    /// lane's next idle moment.
    pub fn load_model(
        &mut self,
        now: Time,
        model: &str,
        lane: Option<LaneId>,
    ) -> Result<(LaneId, LoadOutcome), Rejection> {
        self.advance(now);
        let kind = self
            .model_id(model)
            .map_or(Kind::Txt2Txt, |m| self.cfg.models[m.0].kinds[0]);
        let lane = self.advise(kind, model, lane)?.lane;
        let m = self.model_id(model).expect("advise knows it");
        if self.lanes[lane.0].holds(m) {
            return Ok((lane, LoadOutcome::Loaded));
        }
        self.lanes[lane.0].preload = Some(m);
        self.pump();
        let outcome = if self.lanes[lane.0].holds(m) {
            LoadOutcome::Loaded
        } else {
            LoadOutcome::Scheduled
        };
        Ok((lane, outcome))
    }

    /// Change the policy while work waits and runs: priorities and bounds decide from the next
    /// choice on, limits the next admissions, deadlines the next submissions; nothing waiting
    /// or running is dropped. Refused (the running policy kept) when the result is invalid.
    pub fn set_policy(&mut self, now: Time, policy: &crate::Policy) -> Result<(), ConfigError> {
        let next = self.cfg.with_policy(policy);
        next.validate()?;
        self.advance(now);
        self.priority = next.full_priority();
        self.cfg = next;
        self.pump();
        Ok(())
    }

    /// Unload `model` from `lane`; refused while it has work unless `force`.
    pub fn unload_model(
        &mut self,
        now: Time,
        model: &str,
        lane: LaneId,
        force: bool,
    ) -> Result<UnloadOutcome, UnloadRefusal> {
        self.advance(now);
        let Some(m) = self.model_id(model) else {
            return Err(UnloadRefusal::Rejected(Rejection::UnknownModel {
                model: model.to_owned(),
                valid: self.models().map(str::to_owned).collect(),
            }));
        };
        if lane.0 >= self.lanes.len() {
            return Err(UnloadRefusal::Rejected(Rejection::UnknownLane(lane.0)));
        }
        let asked = self.lanes[lane.0].preload.take() == Some(m);
        if !self.lanes[lane.0].holds(m) {
            if matches!(self.lanes[lane.0].phase, Phase::Preloading { model } if model == m) {
                // Loading now: unloaded as soon as the load ends.
                self.lanes[lane.0].draining = Some(m);
                return Ok(UnloadOutcome::Unloading);
            }
            return Ok(if asked {
                UnloadOutcome::LoadCancelled
            } else {
                UnloadOutcome::NotLoaded
            });
        }
        let in_flight = self.lanes[lane.0].running_of(m);
        let waiting: usize = self
            .queues
            .groups()
            .filter(|(_, g)| g.key.model == m && self.eligible(lane.0, g))
            .map(|(_, g)| g.depth())
            .sum();
        if (in_flight > 0 || waiting > 0) && !force {
            return Err(UnloadRefusal::Busy { in_flight, waiting });
        }
        self.lanes[lane.0].draining = Some(m);
        self.pump();
        Ok(if in_flight > 0 {
            UnloadOutcome::AfterBarrier
        } else {
            UnloadOutcome::Unloading
        })
    }

    /// Carry out what an operator asked of `lane` when it can; whether it entered a phase (then
    /// the lane dispatches nothing until the phase ends).
    pub(super) fn manage(&mut self, lane: usize) -> bool {
        if let Some(m) = self.lanes[lane].draining
            && self.lanes[lane].running_of(m) == 0
        {
            self.lanes[lane].draining = None;
            if self.lanes[lane].holds(m) {
                self.evict(lane, m);
                self.unload(lane, None, &[m]);
                return true;
            }
        }
        let l = &self.lanes[lane];
        let Some(m) = l.preload else {
            return false;
        };
        if self.lanes[lane].holds(m) {
            self.lanes[lane].preload = None;
            return false;
        }
        // The next switch point: nothing in flight, and the active group drained or due to yield.
        let active_continues = l.active.is_some_and(|a| {
            self.queues.group(a).depth() > 0
                && self.lanes[lane].draining != Some(self.queues.group(a).key.model)
                && self.may_continue_alone(lane)
        });
        if l.in_flight > 0 || active_continues {
            return false;
        }
        match self.room(lane, m, true) {
            Room::Resident | Room::Barrier => false,
            Room::Fits => self.preload_now(lane, m),
            Room::Evict(victims) => {
                for v in &victims {
                    self.evict(lane, *v);
                }
                if self.cfg.unload_on_switch || self.cfg.lanes[lane].memory_mb.is_some() {
                    // Unload first; the next pump finds room and loads.
                    self.unload(lane, None, &victims);
                    true
                } else {
                    self.preload_now(lane, m)
                }
            }
        }
    }

    /// Whether the active group keeps the lane against an operator's load: under
    /// [`Bounds::strict`](crate::Bounds::strict) until it drains, else until a dwell or batch
    /// bound is hit.
    fn may_continue_alone(&self, lane: usize) -> bool {
        let b = self.cfg.bounds;
        let l = &self.lanes[lane];
        !(b.max_batch.is_some_and(|m| l.batch >= m)
            || b.max_dwell
                .is_some_and(|d| self.now.saturating_since(l.activated_at) >= d))
    }

    fn preload_now(&mut self, lane: usize, model: ModelId) -> bool {
        let l = &mut self.lanes[lane];
        l.phase = Phase::Preloading { model };
        l.phase_since = self.now;
        l.active = None;
        self.events.push_back(Event::WarmUp {
            lane: LaneId(lane),
            model,
        });
        true
    }
}
