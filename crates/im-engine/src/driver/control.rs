//! Control messages: status, a new policy or topology, operators' loads and unloads, advice,
//! shutdown. Each answers its caller at once.

use inference_queue::Time;
use tokio::time::Instant;

use super::{Driver, Msg};

impl Driver {
    /// A control message (any message that is not part of a request's life).
    pub(super) fn control(&mut self, now: Time, msg: Msg) {
        match msg {
            Msg::Status { reply } => {
                let _ = reply.send(self.core.status(now));
            }
            Msg::SetPolicy { policy, reply } => {
                let result = self.core.set_policy(now, &policy);
                let _ = reply.send(result.map(|()| self.served_config()));
            }
            Msg::SetTopology {
                models,
                lanes,
                restarted,
                reply,
            } => {
                let result = self.core.set_topology(now, &models, &lanes, &restarted);
                if let Ok(change) = &result {
                    for (name, id) in &change.lanes_added {
                        if id.0 >= self.lanes.len() {
                            self.lanes.push(name.clone());
                            self.switch_started.push(None);
                            self.checking.push(false);
                            self.metrics.engine().breaker(name, false);
                            self.metrics.engine().in_flight(name, 0);
                        }
                    }
                    tracing::info!(?change, "models and lanes changed");
                }
                let _ = reply.send(result.map(|c| (c, self.served_config())));
            }
            Msg::RestoreKinds => self.core.restore_kinds(now),
            Msg::Estimate { kind, model, reply } => {
                let _ = reply.send(self.core.predicted_wait(now, kind, &model));
            }
            Msg::LoadModel { model, lane, reply } => {
                let _ = reply.send(self.core.load_model(now, &model, lane));
            }
            Msg::UnloadModel {
                model,
                lane,
                force,
                reply,
            } => {
                let _ = reply.send(self.core.unload_model(now, &model, lane, force));
            }
            Msg::Advise {
                kind,
                model,
                lane,
                reply,
            } => {
                let _ = reply.send(self.core.advise(kind, &model, lane));
            }
            Msg::PrefixProbe {
                kind,
                model,
                chain,
                owner,
                reply,
            } => {
                let _ = reply.send(self.prefix_probe(kind, &model, &chain, owner));
            }
            Msg::Shutdown { grace, done } => {
                self.core.shutdown(now);
                match &mut self.shutdown {
                    Some((_, waiting)) => waiting.push(done),
                    None => self.shutdown = Some((Instant::now() + grace, vec![done])),
                }
            }
            _ => unreachable!("requests are handled before"),
        }
    }

    /// A cache probe as `owner` may see it (`None`: every tenant's blocks); an owner the core
    /// never saw sent nothing anywhere.
    fn prefix_probe(
        &self,
        kind: inference_queue::Kind,
        model: &str,
        chain: &[u64],
        owner: Option<std::sync::Arc<str>>,
    ) -> Vec<(inference_queue::LaneId, usize)> {
        let tenant = match owner {
            None => None,
            Some(o) => match self.tenants.get(&o) {
                Some((id, _)) => Some(*id),
                None => return Vec::new(),
            },
        };
        self.core.prefix_probe(kind, model, chain, tenant)
    }
}
