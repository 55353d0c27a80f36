//! The sections of im's configuration file besides the top level: models, keys, upstreams,
//! routing, batching, discovery, bounds, limits, retries, the breaker, HTTP. Each with its
//! defaults; validation is `ImConfig`'s.

use std::collections::BTreeMap;

use inference_queue::{Bounds, BreakerConfig, Limits, RetryPolicy};
use serde::{Deserialize, Serialize};

/// One model.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The upstream model name.
    pub name: String,
    /// Kinds it serves.
    pub kinds: Vec<String>,
    /// Requests it runs at once (llama.cpp slots; diffusers: 1). Absent: learned from the upstream
    /// (llama.cpp's `/props`), else the `discovery` default for its kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Other names the upstream may answer with for this model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The memory it takes on a GPU, in GiB (what an upstream's `memory_gib` budget counts).
    /// Absent: learned where the upstream lists it (`llama-server`'s `meta.size`, the weights),
    /// else it fills an upstream's whole budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<f64>,
    /// What one load is expected to take, in seconds, until im has measured it (absent: from
    /// `size_gib`, 1 s per GiB, else 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_time_s: Option<f64>,
    /// The upstreams (by name) it may run on; absent: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    /// Labels an upstream must carry for it to run there (`["gpu-80g"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The most tokens a request may ask of it (absent: `http.max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The most choices (`n`) a request may ask of it (absent: `http.max_choices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_choices: Option<u32>,
    /// Slots on particular upstreams (by name) where their servers report other than
    /// `max_in_flight`: learned from the catalogues, never configured.
    #[serde(skip)]
    pub slots_on: Vec<(String, u32)>,
    /// Discovered: its kinds were guessed from its name (its server said nothing of what it
    /// does); shown in `/v1/models` and `/status`. A guess never grants vision.
    #[serde(skip)]
    pub kinds_guessed: bool,
    /// Discovered: the kinds it serves on the upstreams (by name) whose catalogues list fewer
    /// than `kinds` (one server reports vision, another the same model without).
    #[serde(skip)]
    pub kinds_on: Vec<(String, Vec<String>)>,
}

/// One key with its scopes and its own rate limit.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key clients send.
    pub key: String,
    /// What it may do: `infer`, `admin`, `metrics` (default: `infer` and `metrics`).
    #[serde(default = "ordinary_scopes")]
    pub scopes: Vec<im_service::Scope>,
    /// Its requests per second (absent: `http.rate_limit_per_s`; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// Its burst (absent: `http.rate_limit_burst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// The tenant it belongs to (`[[tenants]] name`; absent: its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Default for KeyEntry {
    /// An empty key with the ordinary scopes and the default rate limit.
    fn default() -> KeyEntry {
        KeyEntry {
            key: String::new(),
            scopes: ordinary_scopes(),
            rate_limit_per_s: None,
            rate_limit_burst: None,
            tenant: None,
        }
    }
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("scopes", &self.scopes)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

fn ordinary_scopes() -> Vec<im_service::Scope> {
    im_service::Scope::ORDINARY.to_vec()
}

/// One upstream (a lane): its base URL, or a table naming it and its key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum UpstreamEntry {
    /// Just the base URL.
    Url(String),
    /// URL, name, key, memory and labels.
    Table(UpstreamTable),
}

/// An upstream given as a table.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTable {
    /// Base URL (`http://host:8080`), or `dns+http://name:port`: one lane per address the name
    /// resolves to (a Kubernetes headless Service), resolved again at every catalogue reading.
    pub url: String,
    /// The lane's name in status, metrics and logs (default: `default`, `lane1`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key this server needs (default: `upstream_api_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The memory its models may take together, in GiB: models whose `size_gib` fit stay
    /// loaded side by side (LocalAI's `--max-active-backends`, llama.cpp's `--models-max`).
    /// Absent: one model at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<f64>,
    /// Labels models can ask for (`["gpu-80g", "fast"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl std::fmt::Debug for UpstreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("memory_gib", &self.memory_gib)
            .field("labels", &self.labels)
            .finish()
    }
}

impl From<String> for UpstreamEntry {
    fn from(url: String) -> UpstreamEntry {
        UpstreamEntry::Url(url)
    }
}

impl From<&str> for UpstreamEntry {
    fn from(url: &str) -> UpstreamEntry {
        UpstreamEntry::Url(url.to_owned())
    }
}

impl UpstreamEntry {
    /// Its base URL.
    pub fn url(&self) -> &str {
        match self {
            UpstreamEntry::Url(u) | UpstreamEntry::Table(UpstreamTable { url: u, .. }) => u,
        }
    }

    /// Its lane name, given or made from its position `i`.
    pub fn name(&self, i: usize) -> String {
        match self {
            UpstreamEntry::Table(UpstreamTable { name: Some(n), .. }) => n.clone(),
            _ if i == 0 => "default".to_owned(),
            _ => format!("lane{i}"),
        }
    }

    /// Its memory budget in GiB, if it has one.
    pub fn memory_gib(&self) -> Option<f64> {
        match self {
            UpstreamEntry::Table(t) => t.memory_gib,
            UpstreamEntry::Url(_) => None,
        }
    }

    /// Its labels.
    pub fn labels(&self) -> &[String] {
        match self {
            UpstreamEntry::Table(t) => &t.labels,
            UpstreamEntry::Url(_) => &[],
        }
    }

    /// Its own key, if it has one.
    pub fn api_key(&self) -> Option<&str> {
        match self {
            UpstreamEntry::Table(t) => t.api_key.as_deref(),
            UpstreamEntry::Url(_) => None,
        }
    }
}

/// The scheduling policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// The seeds' rule: drain each queue completely before switching.
    Strict,
    /// The default: the seeds' rule within `[bounds]`, so nothing starves.
    #[default]
    Bounded,
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How groups are spread over lanes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Groups go where their model is loaded, or where loading it costs least.
    #[default]
    Affinity,
    /// A balancer: each request to the lane with the least outstanding work when it arrives.
    LeastLoaded,
    /// A balancer: each request to the next lane in turn.
    RoundRobin,
    /// A balancer: each request to the lane expected to finish it first.
    BestPerformance,
    /// Each model has one lane (a hash of its name).
    StickyHash,
}

impl Strategy {
    /// The core's routing.
    pub fn routing(self, replica_depth: u32) -> inference_queue::Routing {
        use inference_queue::Routing;
        match self {
            Strategy::Affinity => Routing::Affinity { replica_depth },
            Strategy::LeastLoaded => Routing::LeastLoaded,
            Strategy::RoundRobin => Routing::RoundRobin,
            Strategy::BestPerformance => Routing::BestPerformance,
            Strategy::StickyHash => Routing::StickyHash,
        }
    }
}

/// Tokens in one block of a prompt's chain (64 characters).
pub const TOKENS_PER_PREFIX_BLOCK: u64 = 16;

/// How groups are spread over lanes (upstreams).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingEntry {
    /// `affinity` (the default: groups go where their model is loaded, or where loading it costs
    /// least), or a balancer to compare with: `least_loaded`, `round_robin`, `best_performance`
    /// (each request placed when it arrives, whatever is loaded), `sticky_hash` (each model has
    /// one lane).
    pub strategy: Strategy,
    /// Under affinity: waiting requests per serving slot beyond which another lane loads the model
    /// too.
    pub replica_depth: u32,
    /// Load a model for a group that is not starving only once the group's depth times its
    /// oldest wait outweighs the learned cost of the switch (see `benches/results/policy-table.md`).
    pub cost_aware: bool,
    /// Under affinity: chats go to the lane whose server holds most of their prompt (a
    /// conversation's history, a shared system prompt), see `benches/results/policy-table.md`.
    pub prefix_aware: bool,
    /// How many of a group's next requests a free lane chooses among.
    pub prefix_window: usize,
    /// Past this wait of a group's oldest request, the group's own order holds.
    pub prefix_max_skip_ms: u64,
    /// Tokens of prompt each upstream keeps cached, as im assumes (its prompt cache: llama.cpp's
    /// `--cache-ram`, or its slots' context): what im remembers per lane.
    pub prefix_cache_tokens: u64,
    /// Milliseconds an upstream spends prefilling 1,000 prompt tokens it has not cached: what a
    /// lane that lacks a prompt adds against the lane that holds it (default 250: llama.cpp on a
    /// GPU at about 4,000 tokens a second).
    pub prefix_prefill_ms_per_1k_tokens: u64,
}

impl Default for RoutingEntry {
    fn default() -> RoutingEntry {
        let replica_depth = match inference_queue::Routing::default() {
            inference_queue::Routing::Affinity { replica_depth } => replica_depth,
            _ => 12,
        };
        let prefix = inference_queue::PrefixConfig::default();
        RoutingEntry {
            strategy: Strategy::Affinity,
            replica_depth,
            cost_aware: inference_queue::Config::default().cost_aware,
            prefix_aware: true,
            prefix_window: prefix.window,
            prefix_max_skip_ms: prefix.max_skip.as_millis() as u64,
            prefix_cache_tokens: prefix.blocks_per_lane as u64 * TOKENS_PER_PREFIX_BLOCK,
            // Microseconds per token are milliseconds per 1,000 tokens.
            prefix_prefill_ms_per_1k_tokens: prefix.prefill_per_block.as_micros() as u64
                / TOKENS_PER_PREFIX_BLOCK,
        }
    }
}

/// Dynamic batching of embeddings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchEntry {
    /// The most inputs one merged embedding call carries (1: no merging).
    pub max_inputs: u32,
    /// Milliseconds a batch waits for more requests after its first arrived.
    pub flush_ms: u64,
}

impl Default for BatchEntry {
    fn default() -> BatchEntry {
        let d = im_engine::BatchSettings::default();
        BatchEntry {
            max_inputs: d.max_inputs as u32,
            flush_ms: d.flush.as_millis() as u64,
        }
    }
}

/// How the fleet's models are found (each upstream's `/v1/models`), and defaults for what
/// discovery cannot learn.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryEntry {
    /// Requests at once for a language model (chat, vision) whose server does not report slots.
    pub llm_slots: u32,
    /// Requests at once for an image model (diffusers serve one).
    pub image_slots: u32,
    /// Seconds between two readings of every upstream's catalogue (0: only at start and on a
    /// miss).
    pub refresh_s: f64,
    /// How long a request naming a model no upstream lists waits for the catalogues to be read
    /// again, in milliseconds (one reading at a time; a name missed recently is not looked for
    /// again for `refresh_s`).
    pub miss_wait_ms: u64,
    /// A hosts(5) file where the names of `dns+http://` upstreams are looked up before the
    /// system resolver, read at every resolution (addresses a tool writes; tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<String>,
}

impl Default for DiscoveryEntry {
    fn default() -> DiscoveryEntry {
        DiscoveryEntry {
            llm_slots: 4,
            image_slots: 1,
            refresh_s: 30.0,
            miss_wait_ms: 2_000,
            hosts_file: None,
        }
    }
}

impl DiscoveryEntry {
    /// The default slots for a model serving `kinds`.
    pub fn slots_for(&self, kinds: &[String]) -> u32 {
        if kinds.iter().any(|k| k == "txt2img" || k == "img2img") {
            self.image_slots
        } else {
            self.llm_slots
        }
    }
}

/// Anti-starvation bounds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BoundsEntry {
    /// Seconds one group may stay active while others wait (0: unbounded).
    pub max_dwell_s: f64,
    /// Requests one group may dispatch while others wait (0: unbounded).
    pub max_batch: u32,
    /// Seconds after which a waiting request's group goes first at the next switch (0: never).
    pub starvation_after_s: f64,
    /// Seconds after which a waiting batch request goes before its group's interactive work
    /// (0: never; batch work then waits while interactive work of its model does).
    pub batch_starvation_after_s: f64,
}

impl Default for BoundsEntry {
    fn default() -> BoundsEntry {
        let b = Bounds::default();
        BoundsEntry {
            max_dwell_s: b.max_dwell.map_or(0.0, |d| d.as_secs_f64()),
            max_batch: b.max_batch.unwrap_or(0),
            starvation_after_s: b.starvation_after.map_or(0.0, |d| d.as_secs_f64()),
            batch_starvation_after_s: b.batch_starvation_after.map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Queue limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsEntry {
    /// Requests waiting in all queues.
    pub max_queued_total: usize,
    /// Requests waiting per kind.
    pub max_queued_per_kind: BTreeMap<String, usize>,
    /// Payload bytes (messages, images) all queued and running requests may hold together;
    /// past it requests are refused with 429 (one that could never fit: 413). At least
    /// `http.body_limit_bytes`; size it well under the process's memory limit.
    pub max_queued_bytes: u64,
    /// Requests of one tenant running at once over the fleet (absent: no cap), so that one
    /// tenant cannot hold every slot of a model while others wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_tenant: Option<u32>,
    /// Early refusal: refuse at once (429 with `Retry-After`) a request whose predicted wait
    /// misses its queue deadline by more than this many percent, rather than let it wait and
    /// expire; and keep the deadline of every request admitted with a predicted wait within it
    /// (it is served first as its deadline nears). Absent, the default: off, requests wait until
    /// their deadline. 0 refuses whatever is predicted to miss its deadline, which under
    /// overload leaves about one expiry in the queue for 300 without it (the early-refusal rows
    /// of `benches/results/policy-table.md`); a larger margin admits requests that will likely
    /// expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_refusal_pct: Option<u32>,
}

impl Default for LimitsEntry {
    fn default() -> LimitsEntry {
        LimitsEntry {
            max_queued_total: Limits::default().max_queued_total,
            max_queued_per_kind: BTreeMap::new(),
            max_queued_bytes: Limits::default().max_bytes_total,
            max_in_flight_per_tenant: None,
            early_refusal_pct: None,
        }
    }
}

/// Retries.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryEntry {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff, ms.
    pub base_ms: u64,
    /// Backoff cap, ms.
    pub cap_ms: u64,
    /// Randomised share of the backoff, 0..=1.
    pub jitter: f64,
}

impl Default for RetryEntry {
    fn default() -> RetryEntry {
        let r = RetryPolicy::default();
        RetryEntry {
            max_retries: r.max_retries,
            base_ms: r.base.as_millis() as u64,
            cap_ms: r.cap.as_millis() as u64,
            jitter: r.jitter,
        }
    }
}

/// Circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerEntry {
    /// Consecutive transient failures that open it.
    pub failure_threshold: u32,
    /// Seconds it stays open.
    pub cooldown_s: f64,
    /// Seconds between active health checks of each lane (its readiness route): an answer
    /// closes an open breaker; an idle lane that does not answer counts a failure. 0: off.
    pub health_check_s: f64,
}

impl Default for BreakerEntry {
    fn default() -> BreakerEntry {
        let b = BreakerConfig::default();
        BreakerEntry {
            failure_threshold: b.failure_threshold,
            cooldown_s: b.cooldown.as_secs_f64(),
            health_check_s: b.health_check.map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// HTTP limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpEntry {
    /// Body limit in bytes (images travel as base64).
    pub body_limit_bytes: usize,
    /// Largest image side accepted, pixels.
    pub max_image_side: u32,
    /// The most tokens a chat or completion may ask for (`max_tokens`,
    /// `max_completion_tokens`); a model's own `max_tokens` overrides it.
    pub max_tokens: u32,
    /// The most choices a chat or completion may ask for (`n`, `best_of`); a model's own
    /// `max_choices` overrides it.
    pub max_choices: u32,
    /// Per-key requests per second (0: no limit).
    pub rate_limit_per_s: u32,
    /// Burst above the rate.
    pub rate_limit_burst: u32,
    /// Host names accepted by the MCP endpoint (its DNS-rebinding guard); empty: loopback only.
    pub mcp_allowed_hosts: Vec<String>,
    /// URL prefixes an image URL in a chat may start with (the upstream fetches it from its own
    /// network); empty: image URLs are refused, send base64 or data URIs.
    pub image_url_allowlist: Vec<String>,
    /// Seconds a client has to send a request's headers; idle keep-alive connections close after it.
    pub header_read_timeout_s: f64,
    /// Seconds a request body may pause between two pieces.
    pub body_idle_timeout_s: f64,
    /// Seconds a whole request body may take.
    pub body_total_timeout_s: f64,
    /// Open connections at most; keep it above `limits.max_queued_total` (each waiting request
    /// holds its connection).
    pub max_connections: usize,
    /// Open connections one client may hold (a client behind `trusted_proxies`: requests in
    /// flight), so that no single client can hold the server (at most `max_connections`).
    pub max_connections_per_peer: usize,
    /// Seconds a connection with no request in flight stays open (HTTP/1 keep-alive and HTTP/2).
    pub idle_timeout_s: f64,
    /// Proxies in front of im (CIDRs or addresses: the compose nginx, an ingress): their
    /// connections are not counted per peer; each request counts against the client its
    /// `X-Forwarded-For` names.
    pub trusted_proxies: Vec<String>,
    /// The most requests one `POST /infer/batch` may carry.
    pub max_batch_requests: usize,
}

impl Default for HttpEntry {
    fn default() -> HttpEntry {
        HttpEntry {
            body_limit_bytes: 32 * 1024 * 1024,
            max_image_side: 2048,
            max_tokens: im_service::DEFAULT_MAX_TOKENS,
            max_choices: im_service::DEFAULT_MAX_CHOICES,
            rate_limit_per_s: 0,
            rate_limit_burst: 10,
            mcp_allowed_hosts: Vec::new(),
            image_url_allowlist: Vec::new(),
            header_read_timeout_s: 10.0,
            body_idle_timeout_s: 30.0,
            body_total_timeout_s: 300.0,
            max_connections: 16384,
            max_connections_per_peer: 1024,
            idle_timeout_s: 120.0,
            trusted_proxies: Vec::new(),
            max_batch_requests: 32,
        }
    }
}

/// `[cache]`: the response cache (deterministic requests only; see `im_service::CacheSettings`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheEntry {
    /// The models whose answers are kept; empty (the default): the cache is off.
    pub models: Vec<String>,
    /// The most answers kept (least recently used go first).
    pub max_entries: u64,
    /// The most MiB of answers kept (their size in memory; least recently used go first).
    pub max_mib: u64,
    /// The largest answer kept, in KiB.
    pub max_answer_kib: u64,
    /// One cache for every tenant (off: each tenant's answers are its own, so no tenant learns
    /// what another asked).
    pub shared: bool,
    /// Seconds an answer is kept.
    pub ttl_s: f64,
}

impl Default for CacheEntry {
    fn default() -> CacheEntry {
        CacheEntry {
            models: Vec::new(),
            max_entries: 10_000,
            max_mib: 64,
            max_answer_kib: 1024,
            shared: false,
            ttl_s: 300.0,
        }
    }
}
