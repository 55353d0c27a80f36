//! The response cache: the answers of deterministic requests, kept in memory for a while, so a
//! repeated request is answered without queueing or loading anything.
//!
//! Rules:
//! - Off by default; on only for the models listed in `[cache] models`.
//! - Only complete answers of deterministic requests are kept: a chat or text completion with
//!   `temperature` 0 or a fixed `seed`, an embedding or a rerank; never a stream, an image, audio
//!   or a transcription.
//! - The key is a SHA-256 of the request as the upstream gets it (kind, model, body) and of the
//!   tenant asking, so two requests that differ in any field are two entries, and no tenant is
//!   answered with another's answer (nor can it learn what another asked by timing a hit);
//!   `shared` drops the tenant from the key, for deployments whose tenants trust each other. The
//!   model name is in the key: a model reloaded under another name starts cold.
//! - Entries live `ttl` at most; the least recently used go first past `max_bytes` (each answer
//!   weighs its size in memory, at least `max_bytes / max_entries`, so `max_entries` bounds the
//!   count too); an answer larger than `max_answer_bytes` is not kept. Only successes are kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use im_engine::{Completion, Meta, Output, Payload};
use sha2::{Digest, Sha256};

/// `[cache]` as the service takes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheSettings {
    /// The models whose answers are kept (none: the cache is off).
    pub models: Vec<String>,
    /// The most answers kept.
    pub max_entries: u64,
    /// The most bytes of answers kept (their size in memory).
    pub max_bytes: u64,
    /// The largest answer kept.
    pub max_answer_bytes: u64,
    /// One cache for all tenants (else each tenant's answers are its own).
    pub shared: bool,
    /// How long an answer is kept.
    pub ttl: Duration,
}

/// A kept answer.
struct Entry {
    output: Output,
    lane: usize,
    /// Its weight: its size in memory, at least the count bound's share.
    weight: u32,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ResponseCache {
    entries: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    models: Arc<HashSet<String>>,
    shared: bool,
    max_answer_bytes: u64,
    /// What every entry weighs at least: `max_bytes / max_entries`.
    least: u64,
}

/// What an answer takes in memory: its bytes, and its parsed JSON (a `serde_json::Value` takes
/// a few times its text).
fn size(output: &Output) -> u64 {
    const PARSED: u64 = 4;
    match output {
        Output::Chat(c) => c.body.len() as u64 * (1 + PARSED),
        Output::Json(j) => j.body.len() as u64 * (1 + PARSED),
        Output::Images(i) => i.images.iter().map(|b| b.len() as u64).sum(),
        Output::Raw(r) => r.body.len() as u64,
        Output::Stream(_) => 0,
    }
}

impl ResponseCache {
    /// A cache for `settings`, or `None` when no model is listed.
    pub fn new(settings: &CacheSettings) -> Option<ResponseCache> {
        if settings.models.is_empty() || settings.max_entries == 0 {
            return None;
        }
        Some(ResponseCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(|_, e: &Arc<Entry>| e.weight)
                .time_to_live(settings.ttl)
                .build(),
            models: Arc::new(settings.models.iter().cloned().collect()),
            shared: settings.shared,
            max_answer_bytes: settings.max_answer_bytes,
            least: (settings.max_bytes / settings.max_entries).max(1),
        })
    }

    /// The key of `payload` asked by `tenant`, when its answer may be kept.
    pub fn key(&self, payload: &Payload, tenant: &str) -> Option<[u8; 32]> {
        if !self.models.contains(payload.model()) || !deterministic(payload) {
            return None;
        }
        let mut h = Sha256::new();
        if !self.shared {
            h.update(tenant.as_bytes());
            h.update([0]);
        }
        h.update(payload.kind().as_str().as_bytes());
        h.update([0]);
        match payload {
            Payload::Chat { req, .. } => h.update(serde_json::to_vec(req).ok()?),
            Payload::Json { path, body, .. } => {
                h.update(path.as_bytes());
                h.update([0]);
                h.update(serde_json::to_vec(body).ok()?);
            }
            _ => return None,
        }
        Some(h.finalize().into())
    }

    /// The kept answer for `key`, as a completion for `request_id`.
    pub fn get(&self, key: &[u8; 32], payload: &Payload, request_id: &str) -> Option<Completion> {
        let entry = self.entries.get(key)?;
        Some(Completion {
            meta: Meta {
                request_id: request_id.to_owned(),
                kind: payload.kind(),
                model: payload.model().to_owned(),
                queue_wait: Duration::ZERO,
                processing: Duration::ZERO,
                attempts: 0,
                lane: entry.lane,
            },
            output: entry.output.try_clone()?,
        })
    }

    /// Keep `done` under `key` (a live stream, or an answer over the largest kept, is not).
    pub fn put(&self, key: [u8; 32], done: &Completion) {
        let bytes = size(&done.output);
        if bytes > self.max_answer_bytes {
            return;
        }
        if let Some(output) = done.output.try_clone() {
            let weight = u32::try_from(bytes.max(self.least)).unwrap_or(u32::MAX);
            self.entries.insert(
                key,
                Arc::new(Entry {
                    output,
                    lane: done.meta.lane,
                    weight,
                }),
            );
        }
    }

    /// The bytes of answers kept now.
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Whether the same request always gets the same answer.
fn deterministic(payload: &Payload) -> bool {
    let fixed = |temperature: Option<f64>, extra: &serde_json::Map<String, serde_json::Value>| {
        temperature == Some(0.0) || extra.get("seed").is_some_and(serde_json::Value::is_number)
    };
    match payload {
        Payload::Chat {
            req, stream: false, ..
        } => fixed(req.temperature, &req.extra),
        Payload::Json {
            path,
            body,
            stream: false,
            ..
        } => {
            path.ends_with("/embeddings")
                || path.ends_with("/rerank")
                || fixed(
                    body.get("temperature").and_then(serde_json::Value::as_f64),
                    body,
                )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_queue::Kind;
    use localai_client::ChatRequest;
    use serde_json::json;

    fn chat(temperature: Option<f64>, seed: Option<u64>, stream: bool, text: &str) -> Payload {
        let mut extra = serde_json::Map::new();
        if let Some(s) = seed {
            extra.insert("seed".into(), json!(s));
        }
        Payload::Chat {
            req: ChatRequest {
                model: "llm".into(),
                messages: vec![localai_client::Message::user(text)],
                temperature,
                max_tokens: None,
                extra,
            },
            stream,
            kind: Kind::Txt2Txt,
        }
    }

    fn cache(models: &[&str]) -> ResponseCache {
        ResponseCache::new(&CacheSettings {
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            max_entries: 100,
            max_bytes: 1 << 20,
            max_answer_bytes: 1 << 16,
            shared: false,
            ttl: Duration::from_secs(60),
        })
        .expect("on")
    }

    #[test]
    fn only_deterministic_complete_requests_of_listed_models_have_a_key() {
        let c = cache(&["llm"]);
        assert!(c.key(&chat(Some(0.0), None, false, "a"), "t").is_some());
        assert!(c.key(&chat(Some(0.7), Some(3), false, "a"), "t").is_some());
        assert!(
            c.key(&chat(Some(0.7), None, false, "a"), "t").is_none(),
            "sampled"
        );
        assert!(
            c.key(&chat(None, None, false, "a"), "t").is_none(),
            "default sampling"
        );
        assert!(
            c.key(&chat(Some(0.0), None, true, "a"), "t").is_none(),
            "streamed"
        );
        assert!(
            cache(&["other"])
                .key(&chat(Some(0.0), None, false, "a"), "t")
                .is_none()
        );
        let embed = Payload::Json {
            path: "/v1/embeddings",
            body: json!({"model": "llm", "input": "x"})
                .as_object()
                .cloned()
                .unwrap(),
            stream: false,
            kind: Kind::Embed,
        };
        assert!(c.key(&embed, "t").is_some(), "embeddings are deterministic");
        assert_ne!(
            c.key(&embed, "t"),
            c.key(&embed, "u"),
            "another tenant, another entry"
        );
        assert_ne!(
            c.key(&chat(Some(0.0), None, false, "a"), "t"),
            c.key(&chat(Some(0.0), None, false, "b"), "t"),
            "another prompt, another entry"
        );
        assert!(
            ResponseCache::new(&CacheSettings::default()).is_none(),
            "off by default"
        );
    }
}
