//! Advice: where a request would go now and why, without queueing it (the fleet's
//! `select_backend_for_inference`). Under `affinity` lanes pull work, so the advice is the lane
//! expected to start it first among those the routing lets take it.

use std::time::Duration;

use super::Scheduler;
use super::api::Rejection;
use super::residency::Room;
use crate::types::{Kind, LaneId};

/// Why [`Advice::lane`] was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The caller pinned the request to the lane.
    Pinned,
    /// A balancer routing places requests; this is its pick.
    Balancer(&'static str),
    /// The model is resident there.
    Resident,
    /// The model fits beside what is resident there: a load, no eviction.
    Load,
    /// The model is loaded there after evicting these models.
    Evict(Vec<String>),
}

impl Why {
    /// A sentence for people and models reading the advice.
    pub fn explain(&self) -> String {
        match self {
            Why::Pinned => "the request is pinned to this lane".to_owned(),
            Why::Balancer(name) => format!("the {name} routing places each request; this is its pick"),
            Why::Resident => "the model is loaded there: no load, earliest expected start".to_owned(),
            Why::Load => "no lane has the model loaded; it fits beside what this lane holds, with the earliest expected start".to_owned(),
            Why::Evict(models) => format!(
                "no lane has the model loaded; this lane starts it earliest after unloading {}",
                models.join(", ")
            ),
        }
    }
}

/// One lane as a candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct LaneOption {
    /// The lane.
    pub lane: LaneId,
    /// Its name.
    pub name: String,
    /// Its breaker is not open.
    pub healthy: bool,
    /// The model may run there and fits its budget.
    pub can_host: bool,
    /// The model is resident there.
    pub resident: bool,
    /// The routing lets the lane take the request now.
    pub routable: bool,
    /// Requests of the model waiting ahead, plus those running on the lane.
    pub ahead: usize,
    /// When it would start there, from learned load and service times (`None`: it cannot).
    pub expected_start: Option<Duration>,
}

/// Where a request would go now.
#[derive(Clone, Debug, PartialEq)]
pub struct Advice {
    /// The lane.
    pub lane: LaneId,
    /// Why.
    pub why: Why,
    /// Every lane, considered.
    pub lanes: Vec<LaneOption>,
}

impl Scheduler {
    /// Where a request of `kind` for `model` (optionally pinned to `lane`) would go now and why.
    /// Nothing is queued; the same refusals as [`submit`](Self::submit) for unknown models,
    /// kinds and lanes.
    pub fn advise(
        &self,
        kind: Kind,
        model: &str,
        lane: Option<LaneId>,
    ) -> Result<Advice, Rejection> {
        let m = self.serving(kind, model)?;
        if let Some(l) = lane {
            if l.0 >= self.lanes.len() {
                return Err(Rejection::UnknownLane(l.0));
            }
            if !self.fits_lane(l.0, m) {
                return Err(Rejection::LaneCannotHost {
                    model: model.to_owned(),
                    lane: l.0,
                });
            }
        }
        let holders: Vec<usize> = (0..self.lanes.len())
            .filter(|l| self.lanes[*l].holds(m) && self.healthy(*l))
            .collect();
        let waiting: usize = self
            .queues
            .groups()
            .filter(|(_, g)| g.key.model == m)
            .map(|(_, g)| g.depth())
            .sum();
        let slots = self.cfg.models[m.0].max_in_flight as usize;
        // Affinity sends a group to the lanes holding its model until it is deep enough for a
        // replica (or starving, which a new request is not).
        let replicate = match self.cfg.routing {
            crate::config::Routing::Affinity { replica_depth } => {
                waiting + 1 >= replica_depth as usize * slots * holders.len().max(1)
            }
            _ => true,
        };
        let lanes: Vec<LaneOption> = (0..self.lanes.len())
            .map(|l| {
                let can_host = self.fits_lane(l, m);
                let healthy = self.healthy(l);
                let routable = can_host
                    && healthy
                    && match self.cfg.routing {
                        crate::config::Routing::Affinity { .. } => {
                            holders.is_empty() || holders.contains(&l) || replicate
                        }
                        crate::config::Routing::StickyHash => self.sticky_lane(m) == l,
                        _ => true,
                    };
                let ahead = waiting + self.lanes[l].running_of(m) as usize;
                LaneOption {
                    lane: LaneId(l),
                    name: self.lanes[l].name.clone(),
                    healthy,
                    can_host,
                    resident: self.lanes[l].holds(m),
                    routable,
                    ahead,
                    expected_start: healthy
                        .then(|| self.predicted_start_on(self.now, LaneId(l), kind, m))
                        .flatten(),
                }
            })
            .collect();
        let (lane, why) = if let Some(l) = lane {
            (l, Why::Pinned)
        } else if self.cfg.routing.places_requests() {
            (
                LaneId(self.peek_place(m, kind, None)),
                Why::Balancer(self.cfg.routing.as_str()),
            )
        } else {
            let best = lanes
                .iter()
                .filter(|o| o.routable)
                .min_by_key(|o| (o.expected_start, !o.resident, o.lane))
                .or_else(|| lanes.iter().find(|o| o.can_host))
                .map_or(LaneId(0), |o| o.lane);
            let why = match self.room(best.0, m, false) {
                Room::Resident => Why::Resident,
                Room::Fits => Why::Load,
                Room::Evict(v) => {
                    Why::Evict(v.iter().map(|x| self.model_name(*x).to_owned()).collect())
                }
                Room::Barrier => Why::Evict(
                    self.lanes[best.0]
                        .resident
                        .iter()
                        .map(|x| self.model_name(*x).to_owned())
                        .collect(),
                ),
            };
            (best, why)
        };
        Ok(Advice { lane, why, lanes })
    }

    fn healthy(&self, lane: usize) -> bool {
        !matches!(self.lanes[lane].breaker, super::lane::Breaker::Open { .. })
    }
}
