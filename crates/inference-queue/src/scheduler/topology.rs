//! Models and lanes changed while work waits and runs (a configuration reload).
//!
//! Ids stay stable: a model or lane is never removed from the tables, only retired. A retired
//! model is refused at admission (`unknown_model`) while what was accepted for it finishes; a
//! retired lane takes no new work (no group fits it), what runs there finishes, and the requests a
//! balancer had placed there move to the other lanes. New models and lanes are appended (new ids);
//! a name that comes back is brought back under its old id. A lane whose upstream changed forgets
//! what it had loaded, except what still runs there.

use super::Scheduler;
use super::lane::Lane;
use crate::config::{ConfigError, LaneSpec, ModelSpec};
use crate::types::{LaneId, ModelId, Time};

/// What [`Scheduler::set_topology`] changed, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopologyChange {
    /// Models that are new (or back).
    pub models_added: Vec<String>,
    /// Models no longer served.
    pub models_retired: Vec<String>,
    /// Lanes that are new (or back), with their ids.
    pub lanes_added: Vec<(String, LaneId)>,
    /// Lanes that take no more work.
    pub lanes_retired: Vec<String>,
}

impl TopologyChange {
    /// Whether nothing was added or retired.
    pub fn is_empty(&self) -> bool {
        self.models_added.is_empty()
            && self.models_retired.is_empty()
            && self.lanes_added.is_empty()
            && self.lanes_retired.is_empty()
    }
}

impl Scheduler {
    /// Serve `models` on `lanes` from now on (each list whole, as a configuration gives it;
    /// `only_lanes` index into `lanes`). Models and lanes are matched by name: specs of known
    /// ones are updated in place, unknown ones added, missing ones retired. `restarted` names
    /// lanes whose upstream changed: they forget their resident models (except those running).
    /// Refused, with nothing changed, when the lists are invalid.
    pub fn set_topology(
        &mut self,
        now: Time,
        models: &[ModelSpec],
        lanes: &[LaneSpec],
        restarted: &[String],
    ) -> Result<TopologyChange, ConfigError> {
        let mut candidate = self.cfg.clone();
        candidate.models = models.to_vec();
        candidate.lanes = lanes.to_vec();
        candidate.validate()?;
        self.advance(now);
        let mut change = TopologyChange::default();

        // Lanes first: models' `only_lanes` are translated into lane ids.
        let mut lane_ids = Vec::with_capacity(lanes.len());
        for spec in lanes {
            let id = match self.cfg.lanes.iter().position(|l| l.name == spec.name) {
                Some(i) => {
                    self.cfg.lanes[i].memory_mb = spec.memory_mb;
                    if self.lanes[i].retired {
                        self.lanes[i].retired = false;
                        change.lanes_added.push((spec.name.clone(), LaneId(i)));
                    }
                    i
                }
                None => {
                    let i = self.lanes.len();
                    self.cfg.lanes.push(spec.clone());
                    self.lanes
                        .push(Lane::new(&spec.name, &self.cfg.models, self.now));
                    change.lanes_added.push((spec.name.clone(), LaneId(i)));
                    i
                }
            };
            lane_ids.push(id);
        }
        let mut newly_retired = Vec::new();
        for i in 0..self.lanes.len() {
            if !lane_ids.contains(&i) && !self.lanes[i].retired {
                self.lanes[i].retired = true;
                change.lanes_retired.push(self.cfg.lanes[i].name.clone());
                newly_retired.push(i);
            }
        }
        for name in restarted {
            if let Some(i) = self.cfg.lanes.iter().position(|l| &l.name == name) {
                self.lanes[i].refused.clear();
                self.forget_residency(i);
            }
        }

        // Models.
        let mut kept = vec![false; self.cfg.models.len()];
        for spec in models {
            let mut spec = spec.clone();
            spec.only_lanes = spec
                .only_lanes
                .map(|ls| ls.iter().map(|l| lane_ids[*l]).collect());
            for (l, _) in &mut spec.slots_on {
                *l = lane_ids[*l];
            }
            for (l, _) in &mut spec.kinds_on {
                *l = lane_ids[*l];
            }
            match self.cfg.models.iter().position(|m| m.name == spec.name) {
                Some(i) => {
                    if !self.model_index.contains_key(&spec.name) {
                        self.model_index.insert(spec.name.clone(), ModelId(i));
                        change.models_added.push(spec.name.clone());
                    }
                    self.cfg.models[i] = spec;
                    kept[i] = true;
                }
                None => {
                    let i = self.cfg.models.len();
                    self.model_index.insert(spec.name.clone(), ModelId(i));
                    change.models_added.push(spec.name.clone());
                    for l in &mut self.lanes {
                        l.add_model(&spec);
                    }
                    self.cfg.models.push(spec);
                    kept.push(true);
                }
            }
        }
        for (i, keep) in kept.iter().enumerate() {
            let name = &self.cfg.models[i].name;
            if !keep && self.model_index.remove(name).is_some() {
                change.models_retired.push(name.clone());
            }
        }

        for lane in newly_retired {
            self.replace_from(lane);
        }
        self.pump();
        Ok(change)
    }

    /// Whether `model` is served (configured and not retired).
    pub(super) fn serves(&self, model: ModelId) -> bool {
        self.model_index.get(&self.cfg.models[model.0].name) == Some(&model)
    }

    /// The lane's upstream may hold anything now: keep only the models running there.
    pub(super) fn forget_residency(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        let idle: Vec<ModelId> = l
            .resident
            .iter()
            .copied()
            .filter(|m| l.running_of(*m) == 0)
            .collect();
        for m in idle {
            l.forget(m);
        }
    }
}
