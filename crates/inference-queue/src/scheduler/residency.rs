//! Residency: what each lane holds in memory, what fits beside it, what to evict to make room,
//! and the costs learned per (lane, model).
//!
//! A lane without a memory budget holds one model (every model's footprint is the whole lane),
//! which is how a plain LocalAI or llama.cpp server behaves. A lane with a budget holds models
//! while their sizes fit; a model of unknown size takes the whole budget.

use super::*;

/// An exponentially weighted average of durations (each observation weighs 1/4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Ewma {
    secs: f64,
}

impl Ewma {
    pub(super) fn seeded(d: Duration) -> Ewma {
        Ewma {
            secs: d.as_secs_f64(),
        }
    }

    pub(super) fn observe(&mut self, d: Duration) {
        self.secs += (d.as_secs_f64() - self.secs) * 0.25;
    }

    pub(super) fn get(self) -> Duration {
        Duration::from_secs_f64(self.secs.max(0.0))
    }
}

/// What a lane has learned about one model: how long loading it takes, how long a request runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Costs {
    pub(super) load: Ewma,
    /// `None` until a request of the model completed on the lane.
    pub(super) service: Option<Ewma>,
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

    /// The memory the lane's resident models take.
    pub(super) fn memory_used(&self, lane: usize) -> u64 {
        self.lanes[lane]
            .resident
            .iter()
            .map(|m| self.footprint(lane, *m))
            .sum()
    }

    /// Requests of `model` running on `lane`.
    pub(super) fn running_of(&self, lane: usize, model: ModelId) -> u32 {
        self.lanes[lane]
            .running
            .iter()
            .find(|(m, _)| *m == model)
            .map_or(0, |(_, n)| *n)
    }

    /// Whether `model` is resident on `lane` (a model with work in flight always is).
    pub(super) fn holds(&self, lane: usize, model: ModelId) -> bool {
        self.lanes[lane].resident.contains(&model)
    }

    /// What running `model` on `lane` takes now. On a lane with a budget an idle model is kept at
    /// least as long as reloading it would take since it was last used (the ski-rental rule,
    /// against thrashing between co-resident sets), unless the work that needs room is `urgent`
    /// (starving).
    pub(super) fn room(&self, lane: usize, model: ModelId, urgent: bool) -> Room {
        if self.holds(lane, model) {
            return Room::Resident;
        }
        let need = self.footprint(lane, model);
        let mut free = self.capacity(lane).saturating_sub(self.memory_used(lane));
        if need <= free {
            return Room::Fits;
        }
        let l = &self.lanes[lane];
        let mut idle: Vec<(bool, Duration, usize, ModelId)> = l
            .resident
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                self.running_of(lane, **m) == 0 && (urgent || self.may_evict(lane, **m))
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

    /// Whether the idle `model` has been idle on `lane` as long as reloading it would take (always
    /// on a lane without a budget, which swaps as soon as its model is idle).
    fn may_evict(&self, lane: usize, model: ModelId) -> bool {
        let l = &self.lanes[lane];
        self.cfg.lanes[lane].memory_mb.is_none()
            || self.now >= l.used_at[model.0] + l.costs[model.0].load.get()
    }

    /// Whether any request for `model` waits.
    pub(super) fn has_waiting(&self, model: ModelId) -> bool {
        self.groups
            .iter()
            .any(|g| g.key.model == model && g.depth > 0)
    }

    /// Make `model` the lane's most recently used resident model.
    pub(super) fn touch(&mut self, lane: usize, model: ModelId) {
        let r = &mut self.lanes[lane].resident;
        r.retain(|m| *m != model);
        r.push(model);
    }

    /// Forget that `model` is resident on `lane` (it was evicted).
    pub(super) fn evict(&mut self, lane: usize, model: ModelId) {
        debug_assert_eq!(self.running_of(lane, model), 0, "evicting a busy model");
        self.lanes[lane].resident.retain(|m| *m != model);
        self.counters.evictions += 1;
    }

    pub(super) fn add_running(&mut self, lane: usize, model: ModelId) {
        let running = &mut self.lanes[lane].running;
        match running.iter_mut().find(|(m, _)| *m == model) {
            Some((_, n)) => *n += 1,
            None => running.push((model, 1)),
        }
    }

    pub(super) fn remove_running(&mut self, lane: usize, model: ModelId) {
        let running = &mut self.lanes[lane].running;
        if let Some(i) = running.iter().position(|(m, _)| *m == model) {
            running[i].1 -= 1;
            if running[i].1 == 0 {
                running.swap_remove(i);
            }
        }
    }

    /// A request of `model` that ran `took` on `lane` succeeded: learn from it. The first request
    /// after a load that was not a separate warm-up carries the load.
    pub(super) fn learn(&mut self, lane: usize, model: ModelId, took: Duration, cold: bool) {
        let c = &mut self.lanes[lane].costs[model.0];
        match (cold, &mut c.service) {
            (true, Some(s)) => c.load.observe(took.saturating_sub(s.get())),
            (true, None) => c.load.observe(took),
            (false, Some(s)) => s.observe(took),
            (false, None) => c.service = Some(Ewma::seeded(took)),
        }
    }

    /// The learned (or seeded) load time of `model` on `lane`.
    pub fn expected_load(&self, lane: LaneId, model: ModelId) -> Duration {
        self.lanes[lane.0].costs[model.0].load.get()
    }

    /// The learned service time of `model` on `lane`, once one request completed there.
    pub fn expected_service(&self, lane: LaneId, model: ModelId) -> Option<Duration> {
        self.lanes[lane.0].costs[model.0].service.map(Ewma::get)
    }
}
