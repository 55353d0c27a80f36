//! Models and upstreams changed by a reload: the upstream clients are added or repointed first
//! (a new lane's client must exist before the scheduler can dispatch to it), then the scheduler
//! takes the new models and lanes. Lanes are known by name (`upstreams[i].name`, `lane{i}` when
//! unnamed); a name whose URL changed is the same lane on a new server, which forgets what the old
//! one had loaded.

use im_engine::{Engine, LocalAiBackend};
use inference_queue::{LaneId, TopologyChange};

use crate::config::ImConfig;

/// Point the backend's lanes at `next`'s upstreams and hand the scheduler `next`'s models and
/// lanes. Refused whole (nothing changed in the scheduler) when they are invalid.
pub(crate) async fn apply(
    next: &ImConfig,
    engine: &Engine,
    backend: &LocalAiBackend,
    fence: &im_cluster::Fence,
) -> Result<TopologyChange, String> {
    let core = next.core().map_err(|e| e.to_string())?;
    let known: Vec<String> = engine
        .config()
        .lanes
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let clients = backend.clients();
    let mut restarted = Vec::new();
    let mut next_id = known.len();
    for (i, u) in next.upstreams.iter().enumerate() {
        let name = u.name(i);
        let client = crate::build::upstream_client(next, u, fence).map_err(|e| e.to_string())?;
        match known.iter().position(|k| *k == name) {
            Some(id) => {
                let old = clients[id].config();
                if old.base_url != client.config().base_url {
                    restarted.push(name);
                } else if old.api_key == client.config().api_key {
                    continue;
                }
                backend
                    .set_upstream(LaneId(id), client)
                    .map_err(|e| e.to_string())?;
            }
            None => {
                backend
                    .set_upstream(LaneId(next_id), client)
                    .map_err(|e| e.to_string())?;
                next_id += 1;
            }
        }
    }
    engine
        .set_topology(core.models, core.lanes, restarted)
        .await
        .map_err(|_| "im is shutting down".to_owned())?
        .map_err(|e| e.to_string())
}
