//! im's configuration file: one TOML document, every field defaulted, loaded and validated here
//! (the binaries, `cargo xtask deploy-check` and the tests all use this loader).

use std::collections::BTreeMap;
use std::time::Duration;

use inference_queue::{
    Bounds, BreakerConfig, Config as CoreConfig, Kind, Limits, ModelSpec, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// The whole file. See `deploy/im.example.toml` for a commented example.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    /// Address to listen on.
    pub listen: String,
    /// LocalAI servers, one lane each: a base URL, or a table with `url`, `name` and `api_key`.
    pub upstreams: Vec<UpstreamEntry>,
    /// Key sent to LocalAI, if it needs one.
    pub upstream_api_key: Option<String>,
    /// API keys clients must send. Empty: auth is off, which is refused on a non-loopback
    /// `listen` address unless `allow_unauthenticated` is set.
    pub api_keys: Vec<String>,
    /// Keys with scopes (`infer`, `admin`, `metrics`) and their own rate limits, besides
    /// `api_keys` (which are `infer` and `metrics` keys with the default limit).
    pub keys: Vec<KeyEntry>,
    /// Serve without keys on a non-loopback address (a trusted network only).
    pub allow_unauthenticated: bool,
    /// Refuse an upstream answer that names another model than the one asked for (a server that
    /// answers unknown names with its default model); `models[].aliases` lists accepted renames.
    pub check_model_echo: bool,
    /// What to assume when the upstream does not say how many requests a model runs at once.
    pub discovery: DiscoveryEntry,
    /// Models and the kinds they serve. Empty: discovered from `/v1/models` at start.
    pub models: Vec<ModelEntry>,
    /// Kind priority, highest first.
    pub priority: Vec<String>,
    /// `strict` (the seeds' rule) or `bounded` (the default).
    pub policy: String,
    /// Bounds for the bounded policy.
    pub bounds: BoundsEntry,
    /// Queue limits.
    pub limits: LimitsEntry,
    /// Queue deadlines per kind, in seconds.
    pub deadlines_s: BTreeMap<String, f64>,
    /// Retries.
    pub retry: RetryEntry,
    /// Circuit breaker.
    pub breaker: BreakerEntry,
    /// Unload the old model after the switch barrier.
    pub unload_on_switch: bool,
    /// Load the new model before its first request.
    pub warm_up: bool,
    /// HTTP limits.
    pub http: HttpEntry,
    /// Merging of concurrent embedding requests into one upstream call.
    pub batch: BatchEntry,
    /// How groups are spread over several upstreams.
    pub routing: RoutingEntry,
    /// Seconds that shutdown waits for queued and running work.
    pub shutdown_grace_s: f64,
    /// `text` or `json`.
    pub log_format: String,
}

/// One model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("scopes", &self.scopes)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .finish_non_exhaustive()
    }
}

fn ordinary_scopes() -> Vec<im_service::Scope> {
    im_service::Scope::ORDINARY.to_vec()
}

/// One upstream (a lane): its base URL, or a table naming it and its key.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum UpstreamEntry {
    /// Just the base URL.
    Url(String),
    /// URL, name and key.
    Table {
        /// Base URL (`http://host:8080`).
        url: String,
        /// The lane's name in status, metrics and logs (default: `default`, `lane1`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The key this server needs (default: `upstream_api_key`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key: Option<String>,
    },
}

impl std::fmt::Debug for UpstreamEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamEntry::Url(u) => write!(f, "{u:?}"),
            UpstreamEntry::Table { url, name, api_key } => f
                .debug_struct("Upstream")
                .field("url", url)
                .field("name", name)
                .field("api_key", &api_key.as_ref().map(|_| "<set>"))
                .finish(),
        }
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
            UpstreamEntry::Url(u) | UpstreamEntry::Table { url: u, .. } => u,
        }
    }

    /// Its lane name, given or made from its position `i`.
    pub fn name(&self, i: usize) -> String {
        match self {
            UpstreamEntry::Table { name: Some(n), .. } => n.clone(),
            _ if i == 0 => "default".to_owned(),
            _ => format!("lane{i}"),
        }
    }

    /// Its own key, if it has one.
    pub fn api_key(&self) -> Option<&str> {
        match self {
            UpstreamEntry::Table { api_key, .. } => api_key.as_deref(),
            UpstreamEntry::Url(_) => None,
        }
    }
}

/// How groups are spread over lanes (upstreams).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingEntry {
    /// `affinity` (a lane leaves a group to the lane that has its model loaded), `least_loaded`
    /// (any free lane takes any group) or `sticky_hash` (each model has one lane).
    pub strategy: String,
    /// Under affinity: waiting requests per serving slot beyond which another lane loads the model
    /// too.
    pub replica_depth: u32,
}

impl Default for RoutingEntry {
    fn default() -> RoutingEntry {
        let replica_depth = match inference_queue::Routing::default() {
            inference_queue::Routing::Affinity { replica_depth } => replica_depth,
            _ => 12,
        };
        RoutingEntry {
            strategy: "affinity".into(),
            replica_depth,
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

/// Defaults for what discovery cannot learn.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryEntry {
    /// Requests at once for a language model (chat, vision) whose server does not report slots.
    pub llm_slots: u32,
    /// Requests at once for an image model (diffusers serve one).
    pub image_slots: u32,
}

impl Default for DiscoveryEntry {
    fn default() -> DiscoveryEntry {
        DiscoveryEntry {
            llm_slots: 4,
            image_slots: 1,
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
}

impl Default for BoundsEntry {
    fn default() -> BoundsEntry {
        let b = Bounds::default();
        BoundsEntry {
            max_dwell_s: b.max_dwell.map_or(0.0, |d| d.as_secs_f64()),
            max_batch: b.max_batch.unwrap_or(0),
            starvation_after_s: b.starvation_after.map_or(0.0, |d| d.as_secs_f64()),
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
    /// past it requests are refused with 429. Size it well under the process's memory limit.
    pub max_queued_bytes: u64,
}

impl Default for LimitsEntry {
    fn default() -> LimitsEntry {
        LimitsEntry {
            max_queued_total: Limits::default().max_queued_total,
            max_queued_per_kind: BTreeMap::new(),
            max_queued_bytes: Limits::default().max_bytes_total,
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
}

impl Default for BreakerEntry {
    fn default() -> BreakerEntry {
        let b = BreakerConfig::default();
        BreakerEntry {
            failure_threshold: b.failure_threshold,
            cooldown_s: b.cooldown.as_secs_f64(),
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
}

impl Default for HttpEntry {
    fn default() -> HttpEntry {
        HttpEntry {
            body_limit_bytes: 32 * 1024 * 1024,
            max_image_side: 2048,
            rate_limit_per_s: 0,
            rate_limit_burst: 10,
            mcp_allowed_hosts: Vec::new(),
            image_url_allowlist: Vec::new(),
            header_read_timeout_s: 10.0,
            body_idle_timeout_s: 30.0,
            body_total_timeout_s: 300.0,
            max_connections: 16384,
        }
    }
}

impl Default for ImConfig {
    fn default() -> ImConfig {
        ImConfig {
            listen: "127.0.0.1:8000".into(),
            upstreams: vec!["http://localhost:8080".into()],
            upstream_api_key: None,
            api_keys: Vec::new(),
            keys: Vec::new(),
            allow_unauthenticated: false,
            check_model_echo: true,
            discovery: DiscoveryEntry::default(),
            models: Vec::new(),
            priority: Kind::ALL.iter().map(|k| k.to_string()).collect(),
            policy: "bounded".into(),
            bounds: BoundsEntry::default(),
            limits: LimitsEntry::default(),
            deadlines_s: BTreeMap::new(),
            retry: RetryEntry::default(),
            breaker: BreakerEntry::default(),
            unload_on_switch: false,
            warm_up: false,
            http: HttpEntry::default(),
            batch: BatchEntry::default(),
            routing: RoutingEntry::default(),
            shutdown_grace_s: 30.0,
            log_format: "text".into(),
        }
    }
}

/// A configuration error naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse (the message names the line and field).
    #[error("config: {0}")]
    Toml(String),
    /// A field is invalid.
    #[error("config: `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The longest duration a setting may hold (a year): longer ones would overflow the clock.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn secs(field: &str, v: f64) -> Result<Option<Duration>, ConfigError> {
    if !v.is_finite() || v < 0.0 {
        return Err(invalid(field, "must be a number of seconds >= 0"));
    }
    if v > MAX_SECONDS {
        return Err(invalid(
            field,
            format!("must be at most {MAX_SECONDS} seconds (a year)"),
        ));
    }
    Ok((v > 0.0).then(|| Duration::from_secs_f64(v)))
}

fn millis(field: &str, v: u64) -> Result<Duration, ConfigError> {
    if v as f64 / 1000.0 > MAX_SECONDS {
        return Err(invalid(field, "must be at most a year"));
    }
    Ok(Duration::from_millis(v))
}

/// The TOML key of a field the scheduler core names in its validation errors.
fn toml_key(core_field: &str) -> String {
    const KEYS: &[(&str, &str)] = &[
        ("bounds.max_dwell", "bounds.max_dwell_s"),
        ("bounds.starvation_after", "bounds.starvation_after_s"),
        ("retry.base", "retry.base_ms"),
        ("retry.cap", "retry.cap_ms"),
        ("breaker.cooldown", "breaker.cooldown_s"),
        ("limits.max_bytes_total", "limits.max_queued_bytes"),
        ("lanes", "upstreams"),
    ];
    if let Some(kind) = core_field.strip_prefix("default_deadline.") {
        return format!("deadlines_s.{kind}");
    }
    KEYS.iter()
        .find(|(core, _)| *core == core_field)
        .map_or_else(|| core_field.to_owned(), |(_, key)| (*key).to_owned())
}

fn kind(field: &str, s: &str) -> Result<Kind, ConfigError> {
    s.parse()
        .map_err(|e: inference_queue::ParseKindError| invalid(field, e.to_string()))
}

impl ImConfig {
    /// Parse TOML text; unknown fields are errors.
    pub fn from_toml(text: &str) -> Result<ImConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Apply `path=value` overrides (`--set bounds.max_batch=8`), values parsed as TOML (bare words as strings).
    pub fn with_overrides(self, sets: &[String]) -> Result<ImConfig, ConfigError> {
        if sets.is_empty() {
            return Ok(self);
        }
        let mut doc = toml::Value::try_from(&self).map_err(|e| ConfigError::Toml(e.to_string()))?;
        for set in sets {
            let (path, raw) = set
                .split_once('=')
                .ok_or_else(|| invalid(set, "expected path=value"))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|t| t.get("v").cloned())
                .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
            let mut cur = &mut doc;
            let parts: Vec<&str> = path.trim().split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let table = cur
                    .as_table_mut()
                    .ok_or_else(|| invalid(path, "is not a table"))?;
                if i + 1 == parts.len() {
                    table.insert((*p).to_owned(), value.clone());
                    break;
                }
                cur = table
                    .entry((*p).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
        }
        doc.try_into()
            .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))
    }

    /// The scheduler configuration, validated; `models` must be filled in (configured or discovered).
    pub fn core(&self) -> Result<CoreConfig, ConfigError> {
        let mut c = CoreConfig::default();
        c.priority = self
            .priority
            .iter()
            .enumerate()
            .map(|(i, k)| kind(&format!("priority[{i}]"), k))
            .collect::<Result<_, _>>()?;
        c.bounds = match self.policy.as_str() {
            "strict" => Bounds::strict(),
            "bounded" => Bounds {
                max_dwell: secs("bounds.max_dwell_s", self.bounds.max_dwell_s)?,
                max_batch: (self.bounds.max_batch > 0).then_some(self.bounds.max_batch),
                starvation_after: secs(
                    "bounds.starvation_after_s",
                    self.bounds.starvation_after_s,
                )?,
            },
            other => {
                return Err(invalid(
                    "policy",
                    format!("{other:?}: expected \"strict\" or \"bounded\""),
                ));
            }
        };
        c.limits.max_queued_total = self.limits.max_queued_total;
        c.limits.max_bytes_total = self.limits.max_queued_bytes;
        for (k, v) in &self.limits.max_queued_per_kind {
            let field = format!("limits.max_queued_per_kind.{k}");
            c.limits.max_queued_per_kind[kind(&field, k)?.index()] = Some(*v);
        }
        for (k, v) in &self.deadlines_s {
            let field = format!("deadlines_s.{k}");
            let d = secs(&field, *v)?.ok_or_else(|| invalid(&field, "must be positive"))?;
            c.default_deadline[kind(&field, k)?.index()] = d;
        }
        c.retry = RetryPolicy {
            max_retries: self.retry.max_retries,
            base: millis("retry.base_ms", self.retry.base_ms)?,
            cap: millis("retry.cap_ms", self.retry.cap_ms)?,
            jitter: self.retry.jitter,
        };
        c.breaker = BreakerConfig {
            failure_threshold: self.breaker.failure_threshold,
            cooldown: secs("breaker.cooldown_s", self.breaker.cooldown_s)?.unwrap_or_default(),
        };
        c.routing = match self.routing.strategy.as_str() {
            "affinity" => inference_queue::Routing::Affinity {
                replica_depth: self.routing.replica_depth,
            },
            "least_loaded" => inference_queue::Routing::LeastLoaded,
            "sticky_hash" => inference_queue::Routing::StickyHash,
            other => {
                return Err(invalid(
                    "routing.strategy",
                    format!(
                        "{:?} is not one of \"affinity\", \"least_loaded\", \"sticky_hash\"",
                        im_engine::truncate(other, 32)
                    ),
                ));
            }
        };
        c.unload_on_switch = self.unload_on_switch;
        c.warm_up = self.warm_up;
        c.lanes = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| u.name(i))
            .collect();
        c.models = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let kinds = m
                    .kinds
                    .iter()
                    .map(|k| kind(&format!("models[{i}].kinds"), k))
                    .collect::<Result<Vec<_>, _>>()?;
                let slots = m
                    .max_in_flight
                    .unwrap_or_else(|| self.discovery.slots_for(&m.kinds));
                Ok(ModelSpec::new(m.name.clone(), &kinds, slots))
            })
            .collect::<Result<_, ConfigError>>()?;
        c.validate()
            .map_err(|e| invalid(toml_key(&e.field), e.message))?;
        Ok(c)
    }

    /// Check everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_outside_core()?;
        if self.models.is_empty() {
            // Discovery fills them in; check the rest with a placeholder.
            let mut probe = self.clone();
            probe.models = vec![ModelEntry {
                name: "probe".into(),
                kinds: vec!["txt2txt".into()],
                max_in_flight: Some(1),
                aliases: Vec::new(),
            }];
            probe.core()?;
        } else {
            self.core()?;
        }
        Ok(())
    }

    /// Everything [`Self::validate`] checks except the scheduler's part, which [`Self::core`]
    /// checks when it builds it (so that a start validates each part once).
    pub fn validate_outside_core(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return Err(invalid("upstreams", "at least one LocalAI URL"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let url = u.url();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    format!("upstreams[{i}]"),
                    "must be an http:// or https:// URL",
                ));
            }
            let name = u.name(i);
            if name.trim().is_empty() || name.len() > 64 {
                return Err(invalid(
                    format!("upstreams[{i}].name"),
                    "1 to 64 characters",
                ));
            }
            if !names.insert(name) {
                return Err(invalid(
                    format!("upstreams[{i}].name"),
                    "two upstreams have the same name",
                ));
            }
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8000", self.listen),
            ));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(invalid("log_format", "\"text\" or \"json\""));
        }
        if self.http.body_limit_bytes < 1024 {
            return Err(invalid("http.body_limit_bytes", "at least 1024"));
        }
        if self.http.max_image_side < 8 {
            return Err(invalid("http.max_image_side", "at least 8"));
        }
        secs("shutdown_grace_s", self.shutdown_grace_s)?;
        for (field, v) in [
            (
                "http.header_read_timeout_s",
                self.http.header_read_timeout_s,
            ),
            ("http.body_idle_timeout_s", self.http.body_idle_timeout_s),
            ("http.body_total_timeout_s", self.http.body_total_timeout_s),
        ] {
            secs(field, v)?.ok_or_else(|| invalid(field, "must be positive"))?;
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "at least 1"));
        }
        if !(1..=2048).contains(&self.batch.max_inputs) {
            return Err(invalid("batch.max_inputs", "between 1 and 2048"));
        }
        if self.batch.flush_ms > 10_000 {
            return Err(invalid("batch.flush_ms", "at most 10000 (10 s)"));
        }
        let loopback = self
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        for (i, k) in self.keys.iter().enumerate() {
            if k.key.trim().is_empty() {
                return Err(invalid(format!("keys[{i}].key"), "must not be empty"));
            }
            if k.scopes.is_empty() {
                return Err(invalid(
                    format!("keys[{i}].scopes"),
                    "at least one of \"infer\", \"admin\", \"metrics\"",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for k in self.api_keys.iter().chain(self.keys.iter().map(|k| &k.key)) {
            if !k.trim().is_empty() && !seen.insert(k.trim()) {
                return Err(invalid("keys", "a key is configured twice"));
            }
        }
        if !self.has_keys() && !loopback && !self.allow_unauthenticated {
            return Err(invalid(
                "api_keys",
                format!(
                    "no API key is configured and {} is not a loopback address: set IM_API_KEYS, \
                     or allow_unauthenticated = true on a trusted network",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Every key with its scopes: `api_keys` as ordinary keys, then `keys`.
    pub fn key_specs(&self) -> Vec<im_service::KeySpec> {
        let default = (self.http.rate_limit_per_s, self.http.rate_limit_burst);
        self.api_keys
            .iter()
            .map(im_service::KeySpec::ordinary)
            .chain(self.keys.iter().map(|k| im_service::KeySpec {
                key: k.key.clone(),
                scopes: k.scopes.clone(),
                rate_limit: (k.rate_limit_per_s.is_some() || k.rate_limit_burst.is_some()).then(
                    || {
                        (
                            k.rate_limit_per_s.unwrap_or(default.0),
                            k.rate_limit_burst.unwrap_or(default.1),
                        )
                    },
                ),
            }))
            .collect()
    }

    /// Whether any key is configured (authentication is on).
    pub fn has_keys(&self) -> bool {
        self.api_keys
            .iter()
            .chain(self.keys.iter().map(|k| &k.key))
            .any(|k| !k.trim().is_empty())
    }

    /// The service's settings: keys, rate limit, input limits, body limit.
    pub fn service_settings(&self) -> im_service::ServiceSettings {
        im_service::ServiceSettings {
            keys: self.key_specs(),
            rate_limit: (self.http.rate_limit_per_s, self.http.rate_limit_burst),
            limits: im_service::InputLimits {
                max_image_side: self.http.max_image_side,
                image_url_allowlist: self.http.image_url_allowlist.clone(),
            },
            body_limit: self.http.body_limit_bytes,
            batch: im_engine::BatchSettings {
                max_inputs: self.batch.max_inputs as usize,
                flush: Duration::from_millis(self.batch.flush_ms),
            },
        }
    }

    /// The listener's limits.
    pub fn serve_limits(&self) -> im_http_api::serve::ServeLimits {
        let h = &self.http;
        im_http_api::serve::ServeLimits {
            header_read_timeout: Duration::from_secs_f64(h.header_read_timeout_s),
            body_idle_timeout: Duration::from_secs_f64(h.body_idle_timeout_s),
            body_total_timeout: Duration::from_secs_f64(h.body_total_timeout_s),
            max_connections: h.max_connections,
            ..im_http_api::serve::ServeLimits::default()
        }
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_s.clamp(0.0, MAX_SECONDS))
    }
}

/// Kinds for a discovered model name, by what LocalAI model names usually say. Configure
/// `models` explicitly when the guess is wrong.
pub fn guess_kinds(name: &str) -> Vec<String> {
    let n = name.to_ascii_lowercase();
    let image = [
        "diffusion",
        "sdxl",
        "sd-",
        "sd1",
        "sd3",
        "flux",
        "dreamshaper",
        "stablediffusion",
    ];
    let vision = [
        "llava",
        "vision",
        "-vl",
        "moondream",
        "bakllava",
        "minicpm-v",
        "gemma-3",
    ];
    // LocalAI's usual names for its other kinds (checked first: "bge-reranker" is a reranker).
    let others: [(&[&str], &str); 4] = [
        (&["rerank"], "rerank"),
        (&["whisper", "transcri", "stt"], "stt"),
        (&["piper", "bark", "kokoro", "tts", "speech"], "tts"),
        (&["embed", "bge-", "e5-", "minilm", "nomic"], "embed"),
    ];
    if let Some((_, kind)) = others
        .iter()
        .find(|(patterns, _)| patterns.iter().any(|p| n.contains(p)))
    {
        vec![(*kind).to_owned()]
    } else if image.iter().any(|p| n.contains(p)) {
        vec!["txt2img".into(), "img2img".into()]
    } else if vision.iter().any(|p| n.contains(p)) {
        vec!["img2txt".into(), "txt2txt".into()]
    } else {
        vec!["txt2txt".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_overrides_apply() {
        let c = ImConfig::default()
            .with_overrides(&["bounds.max_batch=8".into(), "policy=strict".into()])
            .expect("ok");
        assert_eq!((c.bounds.max_batch, c.policy.as_str()), (8, "strict"));
        c.validate().expect("valid");
    }

    #[test]
    fn upstreams_are_urls_or_tables_with_a_name_and_a_key() {
        let text = "upstreams = [\"http://a:8080\", { url = \"http://b:8080\", name = \"gpu1\", api_key = \"s3cret\" }]\n";
        let c = ImConfig::from_toml(text).expect("both forms");
        assert_eq!(c.upstreams[0].url(), "http://a:8080");
        assert_eq!(
            (
                c.upstreams[1].url(),
                c.upstreams[1].name(1),
                c.upstreams[1].api_key()
            ),
            ("http://b:8080", "gpu1".to_owned(), Some("s3cret"))
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the key stays out of logs"
        );
        let text = "[[upstreams]]\nurl = \"http://a:8080\"\nname = \"x\"\n[[upstreams]]\nurl = \"http://b:8080\"\nname = \"x\"\n";
        let e = ImConfig::from_toml(text)
            .and_then(|c| c.validate().map(|()| c))
            .expect_err("a name twice");
        assert!(e.to_string().contains("upstreams[1].name"), "{e}");
    }

    #[test]
    fn routing_is_read_and_checked() {
        let mut c = ImConfig::default();
        c.upstreams = vec!["http://a:8080".into(), "http://b:8080".into()];
        c.models = vec![ModelEntry {
            name: "m".into(),
            kinds: vec!["txt2txt".into()],
            max_in_flight: Some(1),
            aliases: Vec::new(),
        }];
        let core = c.core().expect("valid");
        assert_eq!(core.lanes, vec!["default".to_owned(), "lane1".to_owned()]);
        assert_eq!(
            core.routing,
            inference_queue::Routing::Affinity { replica_depth: 12 }
        );
        c.routing.strategy = "sticky_hash".into();
        assert_eq!(
            c.core().expect("valid").routing,
            inference_queue::Routing::StickyHash
        );
        c.routing.strategy = "random".into();
        let e = c.core().expect_err("unknown strategy").to_string();
        assert!(e.contains("routing.strategy"), "{e}");
        c.routing.strategy = "affinity".into();
        c.routing.replica_depth = 0;
        let e = c.core().expect_err("zero depth").to_string();
        assert!(e.contains("routing.replica_depth"), "{e}");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = ImConfig::from_toml("listen = 5").expect_err("type");
        assert!(e.to_string().contains("listen"), "{e}");
        let e = ImConfig::from_toml("nope = 1").expect_err("unknown");
        assert!(e.to_string().contains("nope"), "{e}");
        let mut c = ImConfig::default();
        c.priority = vec!["txt2txt".into(), "chat".into()];
        assert!(
            c.validate()
                .expect_err("kind")
                .to_string()
                .contains("priority[1]")
        );
        let mut c = ImConfig::default();
        c.bounds.max_dwell_s = -1.0;
        assert!(
            c.validate()
                .expect_err("neg")
                .to_string()
                .contains("bounds.max_dwell_s")
        );
    }

    #[test]
    fn absurd_durations_are_refused_by_their_toml_keys_never_panics() {
        // Regression (issue 11, low): 1e20 panicked, 1e19 overflowed the clock later.
        for v in ["1e20", "1e19", "1e300", "-1", "nan", "inf"] {
            let text = format!("[deadlines_s]\ntxt2txt = {v}\n");
            if let Ok(c) = ImConfig::from_toml(&text) {
                let e = c.validate().expect_err(v).to_string();
                assert!(e.contains("deadlines_s.txt2txt"), "{v}: {e}");
            }
        }
        let c = ImConfig::from_toml("[retry]\nbase_ms = 18446744073709551615\n").expect("parses");
        assert!(
            c.validate()
                .expect_err("huge")
                .to_string()
                .contains("retry.base_ms")
        );
        let c = ImConfig::from_toml("[breaker]\ncooldown_s = 0.0\n").expect("parses");
        assert!(
            c.validate()
                .expect_err("zero")
                .to_string()
                .contains("breaker.cooldown_s"),
            "core errors name the TOML key"
        );
    }

    #[test]
    fn no_keys_on_a_public_address_is_refused_unless_allowed() {
        let mut c = ImConfig::default();
        c.listen = "0.0.0.0:8000".into();
        assert!(
            c.validate()
                .expect_err("open")
                .to_string()
                .contains("api_keys")
        );
        c.allow_unauthenticated = true;
        c.validate().expect("explicitly allowed");
        c.allow_unauthenticated = false;
        c.api_keys = vec!["k".into()];
        c.validate().expect("keyed");
    }

    #[test]
    fn kinds_are_guessed_from_names() {
        assert_eq!(guess_kinds("stablediffusion"), vec!["txt2img", "img2img"]);
        assert_eq!(
            guess_kinds("llava-1.6-mistral-7b"),
            vec!["img2txt", "txt2txt"]
        );
        assert_eq!(guess_kinds("qwen3-8b"), vec!["txt2txt"]);
        assert_eq!(guess_kinds("bge-reranker-v2-m3"), vec!["rerank"]);
        assert_eq!(guess_kinds("whisper-1"), vec!["stt"]);
        assert_eq!(guess_kinds("voice-en-us-amy-low-piper"), vec!["tts"]);
        assert_eq!(guess_kinds("text-embedding-ada-002"), vec!["embed"]);
        assert_eq!(guess_kinds("nomic-embed-text"), vec!["embed"]);
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn the_committed_example_loads_and_matches_the_defaults() {
        let text = include_str!("../../../deploy/im.example.toml");
        let cfg = ImConfig::from_toml(text).expect("deploy/im.example.toml parses");
        cfg.validate().expect("and validates");
        let mut expected = ImConfig::default();
        expected.models = cfg.models.clone();
        expected.deadlines_s = cfg.deadlines_s.clone();
        assert_eq!(cfg, expected, "the example documents the defaults");
        assert_eq!(cfg.core().expect("core").models.len(), 7);
    }
}
