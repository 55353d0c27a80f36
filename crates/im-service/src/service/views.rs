//! What the service shows of itself: models, backends, queues, placement and cache probes,
//! predicted waits, figures and errors, each as the caller may see it.

use std::sync::Arc;

use inference_queue::Kind;
use serde_json::{Value, json};

use super::Service;
use crate::auth::Principal;
use crate::error::ServiceError;

/// A prompt `/placement` looks up: a chat's messages or a completion's prompt.
#[derive(Clone, Debug)]
pub enum PromptProbe {
    /// A chat's messages, as a chat request sends them.
    Messages(Vec<localai_client::Message>),
    /// A completion's prompt.
    Text(String),
}

impl PromptProbe {
    /// A probe of a chat's `messages`, checked as a chat's are (the same errors, naming the
    /// message at fault).
    pub fn messages(messages: Vec<Value>) -> Result<PromptProbe, ServiceError> {
        crate::call::messages_of(messages.into_iter().map(Into::into).collect())
            .map(PromptProbe::Messages)
    }
}

impl Service {
    /// The configured models with the kinds each serves, OpenAI-shaped; `kinds_guessed` marks
    /// those whose kinds come from their names (their servers said nothing).
    pub fn models(&self) -> Value {
        let guessed = self.kinds_guessed();
        let data: Vec<Value> = self
            .engine
            .config()
            .models
            .iter()
            .map(|m| {
                json!({"id": m.name, "object": "model", "created": 0, "owned_by": "localai",
                       "kinds": m.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                       "kinds_guessed": guessed.contains(&m.name)})
            })
            .collect();
        json!({"object": "list", "data": data})
    }

    /// The models whose kinds were guessed from their names.
    fn kinds_guessed(&self) -> Vec<String> {
        self.shared
            .discovery
            .get()
            .map(|d| d.kinds_guessed())
            .unwrap_or_default()
    }

    /// `GET /status`: a report per backend (lane): health (from its breaker), upstream attempts,
    /// their success rate, average and p95 latency, the requests waiting for the models it has
    /// loaded, what runs on it, what it has loaded and the memory they take.
    pub async fn backend_status(&self) -> Value {
        let Some(s) = self.engine.status().await else {
            return json!({"accepting": false, "queue_size": 0, "backends": []});
        };
        let stats = self.engine.metrics().engine().lanes();
        let config = self.engine.config();
        let guessed = self.kinds_guessed();
        let backends: Vec<Value> = s
            .lanes
            .iter()
            .map(|l| {
                let f = stats.figures(&l.name);
                // The models it serves: those whose catalogue places them here (by lane name:
                // the configuration's lane indices are not the status's after a reload).
                let here = |o: &Vec<usize>| {
                    o.iter()
                        .any(|j| config.lanes.get(*j).is_some_and(|c| c.name == l.name))
                };
                let models: Vec<&str> = config
                    .models
                    .iter()
                    .filter(|m| m.only_lanes.as_ref().is_none_or(here))
                    .map(|m| m.name.as_str())
                    .collect();
                let queue_size: usize = s
                    .groups
                    .iter()
                    .filter(|g| l.resident.iter().any(|r| r.model == g.model))
                    .map(|g| g.depth)
                    .sum();
                let health = match l.breaker.as_str() {
                    "closed" => "healthy",
                    "half_open" => "recovering",
                    "retired" => "retired",
                    _ => "unhealthy",
                };
                json!({
                    "name": l.name, "health": health, "breaker": l.breaker.as_str(),
                    "requests": f.requests, "success_rate": f.success_rate,
                    "avg_latency_ms": f.avg_latency_ms, "p95_latency_ms": f.p95_latency_ms,
                    "queue_size": queue_size, "in_flight": l.in_flight,
                    "loaded_models": l.resident.iter().map(|r| &r.model).collect::<Vec<_>>(),
                    "models": models,
                    "kinds_guessed": models.iter().filter(|m| guessed.iter().any(|g| g == *m)).collect::<Vec<_>>(),
                    "memory_mb": l.memory_mb, "memory_used_mb": l.memory_used_mb(),
                    "active": l.active.as_ref().map(|(k, m)| json!({"kind": k.as_str(), "model": m})),
                    "prefix": prefix_view(l.prefix_blocks),
                })
            })
            .collect();
        json!({"accepting": s.accepting, "queue_size": s.waiting, "in_flight": s.in_flight,
               "backends": backends})
    }

    /// `GET /v1/queue/estimate`: the predicted wait of a request of `kind` for `model` sent now
    /// (`predicted_wait_ms` null when no backend may serve it now); nothing is queued.
    pub async fn estimate(&self, kind: &str, model: &str) -> Result<Value, ServiceError> {
        let kind = kind_named(kind)?;
        let wait = self.engine.estimate(kind, model).await?;
        Ok(json!({
            "kind": kind.as_str(), "model": model,
            "predicted_wait_ms": wait.map(|d| d.as_millis() as u64),
        }))
    }

    /// `GET /placement`: where a request of `kind` for `model` (optionally on the backend named
    /// `backend`) would go now and why, with every backend considered; nothing is queued. With a
    /// `prompt`, also how much of it each backend was sent before: for `who`'s own tenant's
    /// prompts only (every tenant's for an operator), so that a probe never tells one tenant
    /// what another sent.
    pub async fn placement(
        &self,
        who: &Principal,
        kind: &str,
        model: &str,
        backend: Option<&str>,
        prompt: Option<&PromptProbe>,
    ) -> Result<Value, ServiceError> {
        let kind = kind_named(kind)?;
        let lane = backend.map(|b| self.lane_named("backend", b)).transpose()?;
        let a = self.engine.advise(kind, model, lane).await?;
        let cached = match prompt {
            Some(p) => Some(self.probe(who, kind, model, p).await?),
            None => None,
        };
        let options: Vec<Value> = a
            .lanes
            .iter()
            .map(|o| {
                let mut v = json!({"backend": o.name, "healthy": o.healthy, "can_host": o.can_host,
                       "model_loaded": o.resident, "eligible": o.routable, "ahead": o.ahead,
                       "expected_start_ms": o.expected_start.map(|d| d.as_millis() as u64)});
                if let Some((_, per_lane)) = &cached {
                    let blocks = per_lane
                        .iter()
                        .find(|(l, _)| *l == o.lane)
                        .map_or(0, |(_, m)| *m);
                    v["prompt_cached_chars"] = json!(blocks * crate::call::prompt::BLOCK_CHARS);
                }
                v
            })
            .collect();
        let chosen = &a.lanes[a.lane.0];
        let mut out = json!({
            "kind": kind.as_str(), "model": model,
            "backend": chosen.name,
            "routing": self.engine.config().routing.as_str(),
            "reason": a.why.explain(),
            "model_loaded": chosen.resident,
            "expected_start_ms": chosen.expected_start.map(|d| d.as_millis() as u64),
            "evicts": match &a.why { inference_queue::Why::Evict(m) => m.clone(), _ => Vec::new() },
            "backends": options,
        });
        if let Some((blocks, per_lane)) = cached {
            // Where the prompt would go: the eligible backend holding most of it (the one
            // chosen above on a tie), as far as the caller may know.
            let best = a
                .lanes
                .iter()
                .filter(|o| o.routable)
                .map(|o| {
                    let m = per_lane
                        .iter()
                        .find(|(l, _)| *l == o.lane)
                        .map_or(0, |(_, m)| *m);
                    (m, o.lane == a.lane, o)
                })
                .max_by_key(|(m, chosen, _)| (*m, *chosen));
            let (matched, backend) =
                best.map_or((0, chosen.name.as_str()), |(m, _, o)| (m, o.name.as_str()));
            let chars = crate::call::prompt::BLOCK_CHARS;
            out["prompt"] = json!({
                "backend": backend,
                "cached_chars": matched * chars,
                "prompt_chars": blocks * chars,
                "cached_share": if blocks == 0 { 0.0 } else { matched as f64 / blocks as f64 },
                "own_tenant_only": !self.sees_all(who),
            });
        }
        Ok(out)
    }

    /// The blocks of `prompt` and, per lane, how many of them it was sent (as `who` may know).
    async fn probe(
        &self,
        who: &Principal,
        kind: Kind,
        model: &str,
        prompt: &PromptProbe,
    ) -> Result<(usize, Vec<(inference_queue::LaneId, usize)>), ServiceError> {
        // Seeded with the model as the request names it, as a request's chain is.
        let chain = match prompt {
            PromptProbe::Messages(m) => crate::call::prompt::chain_of_messages(model, m),
            PromptProbe::Text(t) => crate::call::prompt::chain_of_text(model, t),
        };
        let Some(chain) = chain else {
            return Ok((0, Vec::new()));
        };
        let owner = (!self.sees_all(who)).then(|| who.tenant.shared());
        let blocks = chain.len();
        Ok((
            blocks,
            self.engine.prefix_probe(kind, model, chain, owner).await,
        ))
    }

    /// `GET /queue-status`.
    pub async fn queue_status(&self) -> Value {
        let Some(s) = self.engine.status().await else {
            return json!({"accepting": false, "groups": [], "lanes": []});
        };
        let mut groups: Vec<Value> = Vec::with_capacity(s.groups.len());
        for g in &s.groups {
            // What a request of the group sent now would wait.
            let predicted = self.engine.estimate(g.kind, &g.model).await.ok().flatten();
            groups.push(json!({"kind": g.kind.as_str(), "model": g.model, "depth": g.depth,
                "oldest_wait_ms": g.oldest_wait.map(|w| w.as_secs_f64() * 1000.0), "in_flight": g.in_flight,
                "predicted_wait_ms": predicted.map(|w| w.as_millis() as u64)}));
        }
        let lanes: Vec<Value> = s
            .lanes
            .iter()
            .map(|l| json!({"name": l.name, "active": l.active.as_ref().map(|(k, m)| json!({"kind": k.as_str(), "model": m})),
                            "loaded": l.loaded(), "in_flight": l.in_flight, "state": l.phase, "breaker": l.breaker.as_str(),
                            "resident": l.resident.iter().map(|r| json!({"model": r.model, "in_flight": r.in_flight, "memory_mb": r.memory_mb})).collect::<Vec<_>>(),
                            "memory_mb": l.memory_mb, "memory_used_mb": l.memory_used_mb(),
                            "prefix": prefix_view(l.prefix_blocks)}))
            .collect();
        let c = &s.counters;
        json!({
            "accepting": s.accepting, "waiting": s.waiting, "in_flight": s.in_flight,
            "groups": groups, "lanes": lanes,
            "counters": {"accepted": c.accepted, "rejected": c.rejected, "dispatched": c.dispatched, "completed": c.completed,
                         "expired": c.expired, "cancelled": c.cancelled, "failed": c.failed, "retried": c.retried,
                         "exhausted": c.exhausted, "switches": c.switches, "model_switches": c.model_switches,
                         "evictions": c.evictions},
        })
    }

    /// Request counts, waits and throughput per kind and model.
    pub fn request_metrics(&self) -> Value {
        self.engine.metrics().request_metrics()
    }

    /// The last lane events (switches, loads, breakers), oldest first.
    pub fn timeline(&self) -> Value {
        self.engine.metrics().timeline()
    }

    /// The tenant label `who`'s views are limited to; `None` for a key that sees every tenant.
    fn own_label(&self, who: &Principal) -> Option<Arc<str>> {
        (!self.sees_all(who)).then(|| self.tenants().label(&who.tenant))
    }

    /// What each tenant used, as `who` may see it: every tenant's, or its own.
    pub fn tenant_metrics(&self, who: &Principal) -> Value {
        let own = self.own_label(who);
        self.engine.metrics().tenants().snapshot(own.as_deref())
    }

    /// The Prometheus text as `who` may read it: every tenant's labelled series, or its own.
    pub fn prometheus(&self, who: &Principal) -> String {
        let own = self.own_label(who);
        self.engine.metrics().tenants().render_for(own.as_deref())
    }

    /// The bytes of answers the response cache keeps now (0 when it is off).
    pub fn cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.bytes())
    }

    /// Error counts and the last errors (sanitised), as `who` may see them: every tenant's, or
    /// the counts and its own tenant's last errors.
    pub fn error_metrics(&self, who: &Principal) -> Value {
        let all = self.sees_all(who);
        self.engine
            .metrics()
            .error_metrics_of((!all).then(|| who.tenant.as_str()))
    }

    /// Readiness: accepting (not draining), every upstream reachable, every breaker closed. The
    /// body has the details when `detailed`, else only `ready`.
    pub async fn readiness(&self, detailed: bool) -> (bool, Value) {
        let accepting = self.engine.status().await.is_some_and(|s| s.accepting);
        let lanes = self.engine.readiness().await;
        let ok = accepting && !lanes.is_empty() && lanes.iter().all(|l| l.ready());
        let body = if detailed {
            json!({"ready": ok, "accepting": accepting, "lanes": lanes.iter().map(|l| json!({"name": l.name, "reachable": l.reachable,
                "breaker": l.breaker, "error": l.error})).collect::<Vec<_>>()})
        } else {
            json!({ "ready": ok })
        };
        (ok, body)
    }
}

/// The kind named `name` (a query's `kind`), or a 400 that lists the kinds.
fn kind_named(name: &str) -> Result<Kind, ServiceError> {
    name.parse().map_err(|_| {
        ServiceError::invalid(
            "kind",
            format!(
                "{:?} is not a kind; the kinds: {}",
                im_engine::truncate(name, 32),
                Kind::ALL.map(|k| k.as_str()).join(", ")
            ),
        )
    })
}

/// A lane's prompt blocks (prefix-aware placement) as `/status` and `/queue-status` show them:
/// sent there, sent there before, and the share (the hit rate; `null` before any).
fn prefix_view((sent, cached): (u64, u64)) -> Value {
    json!({"blocks_sent": sent, "blocks_cached": cached,
           "hit_rate": (sent > 0).then(|| cached as f64 / sent as f64)})
}
