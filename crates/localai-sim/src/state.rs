//! The simulated backend: which models are resident, loads, evictions, slots, and the counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::config::SimConfig;

#[derive(Clone, Debug, Default)]
struct ModelState {
    /// Listed and served (see [`SimConfig::installed`]).
    installed: bool,
    resident: bool,
    loading: bool,
    busy: u32,
    last_used: Option<Instant>,
}

/// What happened, for `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Model loads.
    pub loads: u64,
    /// Idle models evicted to make room.
    pub evictions: u64,
    /// Loads that went ahead while another resident model was busy and memory was short: two
    /// models competing for VRAM, what im must never cause.
    pub overcommits: u64,
    /// Explicit unloads through `/backend/shutdown`.
    pub unloads: u64,
    /// Most models resident at once.
    pub peak_resident_models: usize,
    /// Most models running requests at once.
    pub peak_concurrent_models: usize,
    /// Per model: most requests running at once.
    pub peak_concurrent_requests: BTreeMap<String, u32>,
    /// Simulated seconds spent loading (before time scaling).
    pub load_seconds: f64,
    /// Per model: inference requests received.
    pub requests: BTreeMap<String, u64>,
    /// Inference requests received.
    pub requests_total: u64,
    /// Inputs received by embedding and rerank calls (a call over a list counts each item).
    pub inputs_total: u64,
    /// Faults injected, by class.
    pub faults: BTreeMap<String, u64>,
    /// Models resident now.
    pub resident: Vec<String>,
    /// The largest fencing token (`x-im-fence`) seen: the newest scheduler's epoch.
    pub highest_fence: u64,
    /// Calls refused with 409 because their fencing token was older than the largest seen (a
    /// scheduler that lost its lease, still calling).
    pub fenced: u64,
    /// Inference calls naming a model this server does not have (answered 404).
    pub unknown_model: u64,
    /// Inference calls asking a model for a kind of work it does not do (llama-server: 501).
    pub kind_not_served: u64,
    /// Readings of the catalogue (`/v1/models`, `/v1/models/capabilities`).
    pub catalogue_reads: u64,
    /// Chat prompt tokens received.
    pub prompt_tokens: u64,
    /// Of those, the tokens the prompt cache held.
    pub cached_prompt_tokens: u64,
}

struct Inner {
    models: Vec<ModelState>,
    /// Per model: its prompt cache.
    prompts: Vec<crate::prompt_cache::PromptCache>,
    stats: Stats,
    rng: u64,
    /// The `traceparent` headers of the last requests that carried one.
    traceparents: std::collections::VecDeque<String>,
}

/// How many `traceparent` headers are kept.
const TRACEPARENTS_KEPT: usize = 4096;

/// Shared simulator state.
#[derive(Clone)]
pub struct SimState {
    pub(crate) cfg: Arc<SimConfig>,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    /// The GPU's compute: one prefill at a time.
    prefilling: Arc<tokio::sync::Mutex<()>>,
}

/// A held slot of a model; frees it on drop.
pub struct Slot {
    state: SimState,
    model: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut g = self.state.lock();
            let m = &mut g.models[self.model];
            m.busy -= 1;
            m.last_used = Some(Instant::now());
            // An overcommit is temporary, as on a GPU: once models go idle, memory over the
            // budget is reclaimed by evicting the least recently used idle ones.
            self.state.evict_over_budget(&mut g);
        }
        self.state.changed.notify_waiters();
    }
}

/// Each catalogue model's state at start: installed as `cfg.installed` says.
fn installed_at_start(cfg: &SimConfig) -> Vec<ModelState> {
    cfg.models
        .iter()
        .map(|m| ModelState {
            installed: cfg
                .installed
                .as_ref()
                .is_none_or(|list| list.contains(&m.name)),
            ..ModelState::default()
        })
        .collect()
}

impl SimState {
    /// Fresh state for `cfg`.
    pub fn new(cfg: SimConfig) -> SimState {
        let rng = cfg.seed ^ 0x9E37_79B9_7F4A_7C15;
        let models = installed_at_start(&cfg);
        SimState {
            cfg: Arc::new(cfg),
            inner: Arc::new(Mutex::new(Inner {
                prompts: (0..models.len()).map(|_| Default::default()).collect(),
                models,
                stats: Stats::default(),
                rng,
                traceparents: Default::default(),
            })),
            changed: Arc::new(Notify::new()),
            prefilling: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// An installed model by name.
    pub fn model(&self, name: &str) -> Option<(usize, &crate::config::ModelCfg)> {
        let (i, m) = self.cfg.model(name)?;
        self.lock().models[i].installed.then_some((i, m))
    }

    /// The installed models, in the catalogue's order.
    pub fn installed_models(&self) -> Vec<&crate::config::ModelCfg> {
        let g = self.lock();
        self.cfg
            .models
            .iter()
            .zip(&g.models)
            .filter(|(_, s)| s.installed)
            .map(|(m, _)| m)
            .collect()
    }

    /// Whether catalogue model `i` is installed.
    pub fn installed(&self, i: usize) -> bool {
        self.lock().models[i].installed
    }

    /// Install `name` from the gallery (true), or remove it (false; it is unloaded). Whether
    /// the catalogue has it.
    pub fn set_installed(&self, name: &str, on: bool) -> bool {
        let Some((i, _)) = self.cfg.model(name) else {
            return false;
        };
        let mut g = self.lock();
        let m = &mut g.models[i];
        m.installed = on;
        if !on {
            m.resident = false;
        }
        true
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform float in [0, 1) from the seeded generator.
    pub fn random(&self) -> f64 {
        let mut g = self.lock();
        g.rng = g.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = g.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Count an injected fault.
    pub fn count_fault(&self, class: &str) {
        *self
            .lock()
            .stats
            .faults
            .entry(class.to_owned())
            .or_default() += 1;
    }

    /// Count an inference request.
    pub fn count_request(&self, model: &str) {
        let mut g = self.lock();
        g.stats.requests_total += 1;
        *g.stats.requests.entry(model.to_owned()).or_default() += 1;
    }

    /// Count a call naming a model this server does not have.
    pub fn count_unknown_model(&self) {
        self.lock().stats.unknown_model += 1;
    }

    /// Count a call asking a model for a kind of work it does not do.
    pub fn count_kind_not_served(&self) {
        self.lock().stats.kind_not_served += 1;
    }

    /// Count a reading of the catalogue.
    pub fn count_catalogue_read(&self) {
        self.lock().stats.catalogue_reads += 1;
    }

    /// Count the inputs of one embedding or rerank call.
    pub fn count_inputs(&self, n: usize) {
        self.lock().stats.inputs_total += n as u64;
    }

    /// Prefill `prompt` on `model`: what its cache lacks (all of it unless `reuse`), one prefill
    /// at a time on this server; how many of its tokens were cached and reused.
    pub async fn prefill(&self, model: usize, prompt: &str, reuse: bool) -> usize {
        let capacity = self.cfg.prompt_cache_tokens;
        let cached = {
            let mut g = self.lock();
            let cached = if capacity > 0 {
                g.prompts[model].serve(prompt, capacity, reuse)
            } else {
                0
            };
            let tokens = prompt.len() / crate::prompt_cache::CHARS_PER_TOKEN;
            g.stats.prompt_tokens += tokens as u64;
            g.stats.cached_prompt_tokens += cached.min(tokens) as u64;
            cached.min(tokens)
        };
        let uncached = prompt.len() / crate::prompt_cache::CHARS_PER_TOKEN - cached;
        let per_token = self.cfg.models[model].prefill_per_token_ms;
        if per_token > 0.0 && uncached > 0 {
            let _gpu = self.prefilling.lock().await;
            tokio::time::sleep(self.cfg.scaled(per_token * uncached as f64)).await;
        }
        cached
    }

    /// The counters, with the resident list filled in.
    pub fn stats(&self) -> Stats {
        let g = self.lock();
        let mut s = g.stats.clone();
        s.resident = g
            .models
            .iter()
            .enumerate()
            .filter(|(_, m)| m.resident)
            .map(|(i, _)| self.cfg.models[i].name.clone())
            .collect();
        s
    }

    /// Forget everything: no model resident, counters at zero.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.models = installed_at_start(&self.cfg);
        g.prompts = (0..g.models.len()).map(|_| Default::default()).collect();
        g.stats = Stats::default();
        g.rng = self.cfg.seed ^ 0x9E37_79B9_7F4A_7C15;
        g.traceparents.clear();
    }

    /// Check a call's fencing token against the largest seen (which it raises): whether the call
    /// may go on. A call with an older token comes from a scheduler that was replaced.
    pub fn admit_fence(&self, token: u64) -> Result<(), u64> {
        let mut g = self.lock();
        if token < g.stats.highest_fence {
            g.stats.fenced += 1;
            return Err(g.stats.highest_fence);
        }
        g.stats.highest_fence = token;
        Ok(())
    }

    /// Keep a request's W3C `traceparent` header (the last 4096 are kept).
    pub fn record_traceparent(&self, value: &str) {
        let mut g = self.lock();
        if g.traceparents.len() == TRACEPARENTS_KEPT {
            g.traceparents.pop_front();
        }
        g.traceparents.push_back(value.to_owned());
    }

    /// The `traceparent` headers received, oldest first: how a test sees that a caller's trace
    /// reached the server.
    pub fn traceparents(&self) -> Vec<String> {
        self.lock().traceparents.iter().cloned().collect()
    }

    /// Names of resident models.
    pub fn resident(&self) -> Vec<String> {
        self.stats().resident
    }

    /// Make `model` resident (loading it, evicting idle models as LocalAI's LRU would) and, if
    /// `slot`, take one of its slots, waiting while all are busy.
    pub async fn acquire(&self, model: usize, slot: bool) -> Option<Slot> {
        let started = Instant::now();
        let lru_wait = self.cfg.scaled(self.cfg.lru_wait_ms as f64);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let action = {
                let mut g = self.lock();
                let m = &g.models[model];
                if m.resident && !m.loading {
                    if !slot {
                        return None;
                    }
                    if m.busy < self.cfg.models[model].slots {
                        g.models[model].busy += 1;
                        self.record_concurrency(&mut g, model);
                        return Some(Slot {
                            state: self.clone(),
                            model,
                        });
                    }
                    Action::Wait
                } else if m.loading {
                    Action::Wait
                } else {
                    self.make_room(&mut g, model, started.elapsed() >= lru_wait)
                }
            };
            match action {
                Action::Wait => {
                    let remaining = lru_wait
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_millis(5));
                    let _ = tokio::time::timeout(remaining, notified).await;
                }
                Action::Load => {
                    // Like LocalAI, a load goes on when the client that caused it disconnects: it
                    // runs detached, so a dropped handler never leaves a model stuck "loading".
                    let this = self.clone();
                    let load = tokio::spawn(async move {
                        let d = this.cfg.scaled(this.cfg.models[model].load_ms as f64);
                        if !d.is_zero() {
                            tokio::time::sleep(d).await;
                        }
                        {
                            let mut g = this.lock();
                            g.models[model].loading = false;
                            g.stats.load_seconds += this.cfg.models[model].load_ms as f64 / 1000.0;
                        }
                        this.changed.notify_waiters();
                    });
                    let _ = load.await;
                }
            }
        }
    }

    /// Free memory for `model` by evicting idle residents; start its load if there is room (or if
    /// `force`, counting an overcommit).
    fn make_room(&self, g: &mut Inner, model: usize, force: bool) -> Action {
        let budget = self.cfg.budget_mb();
        let need = self.cfg.models[model].memory_mb;
        loop {
            let used = self.used_mb(g);
            if used + need <= budget || used == 0 {
                break;
            }
            match Self::lru_idle(g) {
                Some(v) => {
                    g.models[v].resident = false;
                    g.stats.evictions += 1;
                }
                None if force => {
                    g.stats.overcommits += 1;
                    break;
                }
                None => return Action::Wait,
            }
        }
        let m = &mut g.models[model];
        m.resident = true;
        m.loading = true;
        g.stats.loads += 1;
        let resident = g.models.iter().filter(|m| m.resident).count();
        g.stats.peak_resident_models = g.stats.peak_resident_models.max(resident);
        Action::Load
    }

    fn evict_over_budget(&self, g: &mut Inner) {
        let budget = self.cfg.budget_mb();
        while self.used_mb(g) > budget && g.models.iter().filter(|m| m.resident).count() > 1 {
            let Some(v) = Self::lru_idle(g) else { return };
            g.models[v].resident = false;
            g.stats.evictions += 1;
        }
    }

    /// Memory taken by resident models.
    fn used_mb(&self, g: &Inner) -> u64 {
        g.models
            .iter()
            .enumerate()
            .filter(|(_, m)| m.resident)
            .map(|(i, _)| self.cfg.models[i].memory_mb)
            .sum()
    }

    /// The least recently used resident model that is idle (not loading, no request running).
    fn lru_idle(g: &Inner) -> Option<usize> {
        g.models
            .iter()
            .enumerate()
            .filter(|(_, m)| m.resident && !m.loading && m.busy == 0)
            .min_by_key(|(_, m)| m.last_used)
            .map(|(i, _)| i)
    }

    fn record_concurrency(&self, g: &mut Inner, model: usize) {
        let busy = g.models[model].busy;
        let name = &self.cfg.models[model].name;
        let peak = g
            .stats
            .peak_concurrent_requests
            .entry(name.clone())
            .or_default();
        *peak = (*peak).max(busy);
        let running = g.models.iter().filter(|m| m.busy > 0).count();
        g.stats.peak_concurrent_models = g.stats.peak_concurrent_models.max(running);
    }

    /// Unload `model`: `Ok(false)` if it was not resident. Waits up to 30 s (scaled) for busy work.
    pub async fn unload(&self, model: usize) -> bool {
        let deadline = Instant::now() + self.cfg.scaled(30_000.0);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.lock();
                let m = &g.models[model];
                if !m.resident {
                    return false;
                }
                if (m.busy == 0 && !m.loading) || Instant::now() >= deadline {
                    g.models[model].resident = false;
                    g.stats.unloads += 1;
                    drop(g);
                    self.changed.notify_waiters();
                    return true;
                }
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

enum Action {
    Wait,
    Load,
}
