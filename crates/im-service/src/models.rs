//! Operators' loads and unloads (`POST /models/load`, `POST /models/unload`), through the
//! scheduler: a load is a warm-up at the lane's next switch point; an unload of a model with work
//! is refused with 409 unless forced, and a forced one waits for the barrier.

use im_engine::EngineError;
use inference_queue::{Kind, LaneId, LoadOutcome, UnloadOutcome, UnloadRefusal};
use serde_json::{Value, json};

use crate::error::{ErrorType, ServiceError};
use crate::service::Service;

impl Service {
    /// The lane called `name`, or a 400 naming `field` and listing the backends.
    pub(crate) fn lane_named(&self, field: &str, name: &str) -> Result<LaneId, ServiceError> {
        let lanes = &self.engine().config().lanes;
        lanes
            .iter()
            .position(|l| l.name == name)
            .map(LaneId)
            .ok_or_else(|| {
                ServiceError::invalid(
                    field,
                    format!(
                        "no backend named {:?}; the backends: {}",
                        im_engine::truncate(name, 64),
                        lanes
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    fn lane_name(&self, lane: LaneId) -> String {
        self.engine().config().lanes[lane.0].name.clone()
    }

    /// `POST /models/load`: `model` on `backend` (or where its work would go).
    pub async fn load_model(
        &self,
        model: &str,
        backend: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let lane = backend.map(|b| self.lane_named("backend", b)).transpose()?;
        let (lane, outcome) = self
            .engine()
            .load_model(model, lane)
            .await?
            .map_err(|r| ServiceError::from(EngineError::from_rejection(r, Kind::Txt2Txt)))?;
        Ok(json!({
            "model": model,
            "backend": self.lane_name(lane),
            "status": match outcome {
                LoadOutcome::Loaded => "loaded",
                LoadOutcome::Scheduled => "scheduled",
            },
        }))
    }

    /// `POST /models/unload`: `model` from `backend` (or from every backend holding it).
    pub async fn unload_model(
        &self,
        model: &str,
        backend: Option<&str>,
        force: bool,
    ) -> Result<Value, ServiceError> {
        let lanes: Vec<LaneId> = match backend {
            Some(b) => vec![self.lane_named("backend", b)?],
            // Every backend: one may hold it, be loading it, or have a load of it pending.
            None => (0..self.engine().config().lanes.len())
                .map(LaneId)
                .collect(),
        };
        let mut done = Vec::new();
        for lane in lanes {
            let outcome = match self.engine().unload_model(model, lane, force).await? {
                Ok(o) => o,
                Err(UnloadRefusal::Rejected(r)) => {
                    return Err(EngineError::from_rejection(r, Kind::Txt2Txt).into());
                }
                Err(UnloadRefusal::Busy { in_flight, waiting }) => {
                    return Err(ServiceError::new(
                        ErrorType::Conflict,
                        format!(
                            "{:?} has {in_flight} request(s) running and {waiting} waiting on backend {}; send \"force\": true to unload it once they finish",
                            im_engine::truncate(model, 64),
                            self.lane_name(lane)
                        ),
                    ));
                }
            };
            done.push(json!({
                "backend": self.lane_name(lane),
                "status": match outcome {
                    UnloadOutcome::NotLoaded => "not_loaded",
                    UnloadOutcome::LoadCancelled => "load_cancelled",
                    UnloadOutcome::Unloading => "unloading",
                    UnloadOutcome::AfterBarrier => "after_barrier",
                },
            }));
        }
        Ok(json!({"model": model, "backends": done}))
    }
}
