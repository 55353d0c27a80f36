//! im's configuration file: one TOML document, every field defaulted, loaded and validated here
//! (the binaries, `cargo xtask deploy-check` and the tests all use this loader).

use std::collections::BTreeMap;
use std::time::Duration;

use inference_queue::Kind;
use serde::{Deserialize, Serialize};

mod cluster;
mod core;
mod jobs;
mod sections;
mod telemetry;
mod tenants;

pub use cluster::ClusterEntry;
pub use jobs::{JobsEntry, platform_data_dir, stored_secret};
pub use sections::*;
pub use telemetry::TracingEntry;
pub use tenants::TenantEntry;

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
    /// Keys with scopes (`infer`, `admin`, `metrics`, `operator`), their own rate limits and
    /// their tenants, besides `api_keys` (which are `infer` and `metrics` keys with the default
    /// limit, each its own tenant).
    pub keys: Vec<KeyEntry>,
    /// Who shares im: each tenant's weight, class, rates, quotas and models.
    pub tenants: Vec<TenantEntry>,
    /// Serve without keys on a non-loopback address (a trusted network only).
    pub allow_unauthenticated: bool,
    /// Refuse an upstream answer that names another model than the one asked for (a server that
    /// answers unknown names with its default model); `models[].aliases` lists accepted renames.
    pub check_model_echo: bool,
    /// What to assume when the upstream does not say how many requests a model runs at once.
    pub discovery: DiscoveryEntry,
    /// Models and the kinds they serve. Empty: discovered from `/v1/models` at start.
    pub models: Vec<ModelEntry>,
    /// The task models of `POST /infer` (`[[registry]]`: name, version, upstream, template,
    /// aliases, description, default). Empty: the examples `summarizer:v1`, `sentiment:v1` and
    /// `generator:v1` on the first txt2txt model.
    pub registry: Vec<im_service::RegistryEntry>,
    /// Kind priority, highest first.
    pub priority: Vec<String>,
    /// `strict` (the seeds' rule) or `bounded` (the default).
    pub policy: PolicyName,
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
    pub log_format: LogFormat,
    /// Durable jobs and webhooks.
    pub jobs: JobsEntry,
    /// OpenTelemetry traces.
    pub tracing: TracingEntry,
    /// Several replicas on Redis (off: one process).
    pub cluster: ClusterEntry,
    /// The response cache.
    pub cache: CacheEntry,
}

impl Default for ImConfig {
    fn default() -> ImConfig {
        ImConfig {
            listen: "127.0.0.1:8000".into(),
            upstreams: vec!["http://localhost:8080".into()],
            upstream_api_key: None,
            api_keys: Vec::new(),
            keys: Vec::new(),
            tenants: Vec::new(),
            allow_unauthenticated: false,
            check_model_echo: true,
            discovery: DiscoveryEntry::default(),
            models: Vec::new(),
            registry: Vec::new(),
            priority: Kind::ALL.iter().map(|k| k.to_string()).collect(),
            policy: PolicyName::Bounded,
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
            log_format: LogFormat::Text,
            jobs: JobsEntry::default(),
            tracing: TracingEntry::default(),
            cluster: ClusterEntry::default(),
            cache: CacheEntry::default(),
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
                ..Default::default()
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
        self.validate_registry()?;
        self.jobs.validate()?;
        self.tracing.validate()?;
        self.cluster.validate()?;
        self.validate_cache()?;
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let url = u.url();
            match crate::fleet::DnsUrl::parse(url) {
                Some(Err(e)) => return Err(invalid(format!("upstreams[{i}]"), e)),
                Some(Ok(_)) => {}
                None if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(invalid(
                        format!("upstreams[{i}]"),
                        "must be an http:// or https:// URL (or dns+http://name:port: a lane \
                         per address the name resolves to)",
                    ));
                }
                None => {}
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
        if self.http.body_limit_bytes < 1024 {
            return Err(invalid("http.body_limit_bytes", "at least 1024"));
        }
        if self.http.max_image_side < 8 {
            return Err(invalid("http.max_image_side", "at least 8"));
        }
        if self.http.max_tokens == 0 {
            return Err(invalid("http.max_tokens", "at least 1"));
        }
        if self.http.max_choices == 0 {
            return Err(invalid("http.max_choices", "at least 1"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.max_tokens == Some(0) {
                return Err(invalid(format!("models[{i}].max_tokens"), "at least 1"));
            }
            if m.max_choices == Some(0) {
                return Err(invalid(format!("models[{i}].max_choices"), "at least 1"));
            }
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
        if self.http.max_connections_per_peer == 0 {
            return Err(invalid("http.max_connections_per_peer", "at least 1"));
        }
        secs("http.idle_timeout_s", self.http.idle_timeout_s)?
            .ok_or_else(|| invalid("http.idle_timeout_s", "must be positive"))?;
        im_edge::Peers::parse_proxies(&self.http.trusted_proxies)
            .map_err(|e| invalid("http.trusted_proxies", e))?;
        if self.limits.max_queued_bytes < self.http.body_limit_bytes as u64 {
            return Err(invalid(
                "limits.max_queued_bytes",
                format!(
                    "at least http.body_limit_bytes ({}): a request the body limit lets in must be able to queue",
                    self.http.body_limit_bytes
                ),
            ));
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
                    "at least one of \"infer\", \"admin\", \"metrics\", \"operator\"",
                ));
            }
        }
        tenants::validate(&self.tenants, &self.keys)?;
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
                tenant: k.tenant.clone(),
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

    /// The tenants as the service takes them.
    pub fn tenant_specs(&self) -> Vec<im_service::TenantSpec> {
        self.tenants
            .iter()
            .map(|t| tenants::spec(t, self.http.rate_limit_burst, self.jobs.tenant_quota()))
            .collect()
    }

    /// The service's settings: keys, tenants, rate limit, input limits, body limit.
    pub fn service_settings(&self) -> im_service::ServiceSettings {
        im_service::ServiceSettings {
            keys: self.key_specs(),
            tenants: self.tenant_specs(),
            default_job_quota: self.jobs.tenant_quota(),
            rate_limit: (self.http.rate_limit_per_s, self.http.rate_limit_burst),
            limits: im_service::InputLimits {
                max_image_side: self.http.max_image_side,
                image_url_allowlist: self.http.image_url_allowlist.clone(),
                max_tokens: self.http.max_tokens,
                max_choices: self.http.max_choices,
                models: self
                    .models
                    .iter()
                    .filter(|m| m.max_tokens.is_some() || m.max_choices.is_some())
                    .map(|m| {
                        let bounds = im_service::ModelBounds {
                            max_tokens: m.max_tokens,
                            max_choices: m.max_choices,
                        };
                        (m.name.clone(), bounds)
                    })
                    .collect(),
            },
            body_limit: self.http.body_limit_bytes,
            batch: im_engine::BatchSettings {
                max_inputs: self.batch.max_inputs as usize,
                flush: Duration::from_millis(self.batch.flush_ms),
            },
            registry: self.registry_or_examples(),
            max_batch_requests: self.http.max_batch_requests,
            cache: im_service::CacheSettings {
                models: self.cache.models.clone(),
                max_entries: self.cache.max_entries,
                max_bytes: self.cache.max_mib.saturating_mul(1 << 20),
                max_answer_bytes: self.cache.max_answer_kib.saturating_mul(1 << 10),
                shared: self.cache.shared,
                ttl: Duration::from_secs_f64(self.cache.ttl_s.clamp(0.001, MAX_SECONDS)),
            },
        }
    }

    /// `[cache]`: a positive TTL and size; listed models configured (when models are listed).
    fn validate_cache(&self) -> Result<(), ConfigError> {
        let c = &self.cache;
        if !(c.ttl_s.is_finite() && c.ttl_s > 0.0 && c.ttl_s <= MAX_SECONDS) {
            return Err(invalid(
                "cache.ttl_s",
                "a positive number of seconds, at most a year",
            ));
        }
        if c.max_entries == 0 {
            return Err(invalid("cache.max_entries", "must be positive"));
        }
        if c.max_mib == 0 || c.max_mib > 1 << 20 {
            return Err(invalid("cache.max_mib", "1 to 1048576 (1 TiB)"));
        }
        if c.max_answer_kib == 0 || c.max_answer_kib > c.max_mib.saturating_mul(1024) {
            return Err(invalid(
                "cache.max_answer_kib",
                "positive, and at most cache.max_mib",
            ));
        }
        for (i, m) in c.models.iter().enumerate() {
            if !self.models.is_empty() && !self.models.iter().any(|e| &e.name == m) {
                return Err(invalid(
                    format!("cache.models[{i}]"),
                    format!("{m:?} is not a configured model"),
                ));
            }
        }
        Ok(())
    }

    /// Each task model: a name without `:`, a version, once each, on a configured txt2txt model
    /// (when models are configured rather than discovered).
    fn validate_registry(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.registry.iter().enumerate() {
            let field = |f: &str| format!("registry[{i}].{f}");
            if e.name.trim().is_empty() || e.name.contains(':') {
                return Err(invalid(field("name"), "must be a name without ':'"));
            }
            if e.version.trim().is_empty() || e.version.contains(':') {
                return Err(invalid(field("version"), "must be a version without ':'"));
            }
            if !seen.insert((e.name.as_str(), e.version.as_str())) {
                return Err(invalid(
                    field("version"),
                    format!("{} is listed twice", e.id()),
                ));
            }
            if !self.models.is_empty()
                && !self
                    .models
                    .iter()
                    .any(|m| m.name == e.upstream && m.kinds.iter().any(|k| k == "txt2txt"))
            {
                return Err(invalid(
                    field("upstream"),
                    format!(
                        "{:?} is not a configured model serving txt2txt",
                        im_engine::truncate(&e.upstream, 64)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The configured task models, else the examples on the first model serving txt2txt.
    pub fn registry_or_examples(&self) -> im_service::Registry {
        if !self.registry.is_empty() {
            return im_service::Registry::new(self.registry.clone());
        }
        self.models
            .iter()
            .find(|m| m.kinds.iter().any(|k| k == "txt2txt"))
            .map_or_else(im_service::Registry::default, |m| {
                im_service::Registry::examples(&m.name)
            })
    }

    /// The listener's limits.
    pub fn serve_limits(&self) -> im_edge::ServeLimits {
        let h = &self.http;
        im_edge::ServeLimits {
            header_read_timeout: Duration::from_secs_f64(h.header_read_timeout_s),
            idle_timeout: Duration::from_secs_f64(h.idle_timeout_s),
            body_idle_timeout: Duration::from_secs_f64(h.body_idle_timeout_s),
            body_total_timeout: Duration::from_secs_f64(h.body_total_timeout_s),
            max_connections: h.max_connections,
            ..im_edge::ServeLimits::default()
        }
    }

    /// The listener's per-peer policy: the cap per client, the trusted proxies, and the secret
    /// replicas prove themselves with.
    pub fn peers(&self) -> std::sync::Arc<im_edge::Peers> {
        let proxies = im_edge::Peers::parse_proxies(&self.http.trusted_proxies).unwrap_or_default();
        std::sync::Arc::new(im_edge::Peers::new(
            self.http
                .max_connections_per_peer
                .min(self.http.max_connections),
            proxies,
            self.cluster.secret(),
        ))
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_s.clamp(0.0, MAX_SECONDS))
    }
}

/// Kinds for a discovered model name, by what LocalAI model names usually say: the last resort,
/// when the server says nothing of the model. A name never grants vision (`img2txt`): a text
/// model sent an image answers without an error (llama-cpp-python drops the image), so vision
/// needs evidence (the server's modalities, `/props`, or the configuration). Configure `models`
/// explicitly when the guess is wrong.
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
    } else {
        vec!["txt2txt".into()]
    }
}

#[cfg(test)]
mod key_trace;
#[cfg(test)]
mod tests;
