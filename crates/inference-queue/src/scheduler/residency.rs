//! Residency: what each lane holds in memory, what fits beside it, what to evict to make room,
//! and the costs learned per (lane, model).
//!
//! A lane without a memory budget holds one model (every model's footprint is the whole lane),
//! which is how a plain LocalAI or llama.cpp server behaves. A lane with a budget holds models
//! while their sizes fit; a model of unknown size takes the whole budget.

use std::time::Duration;

use super::Scheduler;
use crate::config::ModelSpec;
use crate::types::{Kind, LaneId, ModelId};

/// An exponentially weighted average of durations (each observation weighs 1/4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Ewma {
    secs: f64,
    /// `secs` as a duration, kept beside it: the policy reads it far more often than it changes.
    value: Duration,
}

impl Ewma {
    pub(super) fn seeded(d: Duration) -> Ewma {
        let secs = d.as_secs_f64();
        Ewma {
            secs,
            value: Duration::from_secs_f64(secs.max(0.0)),
        }
    }

    pub(super) fn observe(&mut self, d: Duration) {
        self.secs += (d.as_secs_f64() - self.secs) * 0.25;
        self.value = Duration::from_secs_f64(self.secs.max(0.0));
    }

    pub(super) fn get(self) -> Duration {
        self.value
    }
}

/// What a lane has learned about one model: how long loading it takes, how long a request runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Costs {
    pub(super) load: Ewma,
    /// `None` until a request of the model completed on the lane.
    pub(super) service: Option<Ewma>,
}

impl Costs {
    /// What is known of `model` before it ran: its configured (or estimated) load time.
    pub(super) fn seeded(model: &ModelSpec) -> Costs {
        Costs {
            load: Ewma::seeded(model.expected_load()),
            service: None,
        }
    }
}

/// What it takes to run a model on a lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// It is resident.
    Resident,
    /// It fits beside what is resident.
    Fits,
    /// It fits once these idle models are evicted (cheapest to reload first).
    Evict(Vec<ModelId>),
    /// Models with work in flight would have to go: wait for it (the switch barrier).
    Barrier,
}

impl Scheduler {
    /// The lane's memory in units of [`footprint`](Self::footprint).
    pub(super) fn capacity(&self, lane: usize) -> u64 {
        self.cfg.lanes[lane].memory_mb.unwrap_or(1)
    }

    /// What `model` takes on `lane`: its size, the whole budget when its size is unknown, one
    /// unit of a one-model lane.
    pub(super) fn footprint(&self, lane: usize, model: ModelId) -> u64 {
        match self.cfg.lanes[lane].memory_mb {
            None => 1,
            Some(budget) => self.cfg.models[model.0].size_mb.unwrap_or(budget),
        }
    }

    /// Whether `model` may ever run on `lane`: the lane is among its lanes and it fits there.
    pub(super) fn fits_lane(&self, lane: usize, model: ModelId) -> bool {
        !self.lanes[lane].retired
            && self.cfg.models[model.0]
                .only_lanes
                .as_ref()
                .is_none_or(|o| o.contains(&lane))
            && self.footprint(lane, model) <= self.capacity(lane)
    }

    /// Whether `lane` may serve `kind` of `model`, a kind the model serves: the model fits the
    /// lane, its catalogue there lists the kind, and its upstream has not refused the kind.
    pub(super) fn serves_on(&self, lane: usize, model: ModelId, kind: Kind) -> bool {
        let spec = &self.cfg.models[model.0];
        self.fits_lane(lane, model)
            && (spec.kinds_on.is_empty() || spec.serves_on(lane, kind))
            && !self.lanes[lane].refuses(model, kind)
    }

    /// The memory the lane's resident models take.
    pub(super) fn memory_used(&self, lane: usize) -> u64 {
        self.lanes[lane]
            .resident
            .iter()
            .map(|m| self.footprint(lane, *m))
            .sum()
    }

    /// What running `model` on `lane` takes now. On a lane with a budget an idle model is kept at
    /// least as long as reloading it would take since it was last used (the ski-rental rule,
    /// against thrashing between co-resident sets), unless the work that needs room is `urgent`
    /// (starving).
    pub(super) fn room(&self, lane: usize, model: ModelId, urgent: bool) -> Room {
        let l = &self.lanes[lane];
        if l.holds(model) {
            return Room::Resident;
        }
        let need = self.footprint(lane, model);
        let mut free = self.capacity(lane).saturating_sub(self.memory_used(lane));
        if need <= free {
            return Room::Fits;
        }
        let budgeted = self.cfg.lanes[lane].memory_mb.is_some();
        let mut idle: Vec<(bool, Duration, usize, ModelId)> = l
            .resident
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                l.running_of(**m) == 0 && (urgent || l.may_evict(**m, budgeted, self.now))
            })
            .map(|(lru, m)| (self.has_waiting(*m), l.costs[m.0].load.get(), lru, *m))
            .collect();
        // Cheapest to lose first: no work waits for it, then the shortest reload, then the least
        // recently used.
        idle.sort();
        let mut victims = Vec::new();
        for (_, _, _, m) in idle {
            if free >= need {
                break;
            }
            free += self.footprint(lane, m);
            victims.push(m);
        }
        if free >= need {
            Room::Evict(victims)
        } else {
            Room::Barrier
        }
    }

    /// Whether any request for `model` waits.
    pub(super) fn has_waiting(&self, model: ModelId) -> bool {
        self.queues.model_has_waiting(model)
    }

    /// Evict `model` from `lane` (it is idle).
    pub(super) fn evict(&mut self, lane: usize, model: ModelId) {
        self.lanes[lane].forget(model);
        self.counters.evictions += 1;
    }

    /// The learned (or seeded) load time of `model` on `lane`.
    pub fn expected_load(&self, lane: LaneId, model: ModelId) -> Duration {
        self.lanes[lane.0].expected_load(model)
    }

    /// The learned service time of `model` on `lane`, once one request completed there.
    pub fn expected_service(&self, lane: LaneId, model: ModelId) -> Option<Duration> {
        self.lanes[lane.0].expected_service(model)
    }
}
