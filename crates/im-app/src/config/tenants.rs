//! `[[tenants]]`: who shares im (teams, apps, agents), what each may spend and use. Keys name
//! their tenant (`[[keys]] tenant = "..."`); a key without one is its own tenant, with the
//! defaults.

use serde::{Deserialize, Serialize};

use super::{ConfigError, KeyEntry, invalid};

/// One `[[tenants]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// Its name: what `keys[].tenant` refers to, its label in metrics, the owner of its jobs.
    pub name: String,
    /// Its share of contended capacity relative to the other tenants' (fair shares).
    #[serde(default = "one")]
    pub weight: u32,
    /// Its requests' default priority class (fair shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Requests per second over all its keys (absent: no tenant limit, only the keys' own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// The burst above its rate (absent: `http.rate_limit_burst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Tokens per minute: work is admitted while its balance is positive, and debited what it
    /// used (a stream without usage: its `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests queued or running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<usize>,
    /// Payload bytes queued or running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
    /// Jobs stored at once (absent: `jobs.max_jobs_per_tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<usize>,
    /// Bytes of stored jobs, requests and results (absent: `jobs.max_bytes_per_tenant_mib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_job_bytes: Option<u64>,
    /// The models it may use (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Its streaming requests get their wait's progress as SSE comments unless one says
    /// `X-Im-Progress: false` (without it: only those that say `X-Im-Progress: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
}

fn one() -> u32 {
    1
}

impl Default for TenantEntry {
    fn default() -> TenantEntry {
        TenantEntry {
            name: String::new(),
            weight: 1,
            class: None,
            rate_limit_per_s: None,
            rate_limit_burst: None,
            tokens_per_minute: None,
            max_queued: None,
            max_queued_bytes: None,
            max_jobs: None,
            max_job_bytes: None,
            models: None,
            progress: false,
        }
    }
}

/// The tenants are well formed and every key's tenant is one of them.
pub(super) fn validate(tenants: &[TenantEntry], keys: &[KeyEntry]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let field = |f: &str| format!("tenants[{i}].{f}");
        if t.name.trim().is_empty() || t.name.len() > 64 {
            return Err(invalid(field("name"), "1 to 64 characters"));
        }
        if ["anonymous", "other"].contains(&t.name.as_str()) || t.name.starts_with("key-") {
            return Err(invalid(
                field("name"),
                "`anonymous`, `other` and names starting `key-` are im's own",
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(invalid(field("name"), "a tenant is configured twice"));
        }
        if t.weight == 0 || t.weight > 1000 {
            return Err(invalid(field("weight"), "1 to 1000"));
        }
        if t.class
            .as_deref()
            .is_some_and(|c| c != "interactive" && c != "batch")
        {
            return Err(invalid(field("class"), "`interactive` or `batch`"));
        }
        if t.models.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                field("models"),
                "list at least one model, or leave it out",
            ));
        }
        for (what, zero) in [
            ("max_queued", t.max_queued == Some(0)),
            ("max_queued_bytes", t.max_queued_bytes == Some(0)),
            ("max_jobs", t.max_jobs == Some(0)),
            ("max_job_bytes", t.max_job_bytes == Some(0)),
            ("tokens_per_minute", t.tokens_per_minute == Some(0)),
        ] {
            if zero {
                return Err(invalid(
                    field(what),
                    "must be positive (leave it out for no limit)",
                ));
            }
        }
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(t) = &k.tenant
            && !names.contains(t.as_str())
        {
            return Err(invalid(
                format!("keys[{i}].tenant"),
                format!("{t:?} is not a configured tenant (`[[tenants]] name`)"),
            ));
        }
    }
    Ok(())
}

/// The service's view of `t`, with `default_burst` for a rate without its own burst and the
/// job quotas' defaults.
pub(super) fn spec(
    t: &TenantEntry,
    default_burst: u32,
    jobs: (usize, u64),
) -> im_service::TenantSpec {
    im_service::TenantSpec {
        name: t.name.clone(),
        weight: t.weight,
        class: t.class.clone(),
        rate_limit: t
            .rate_limit_per_s
            .map(|r| (r, t.rate_limit_burst.unwrap_or(default_burst))),
        tokens_per_minute: t.tokens_per_minute,
        max_queued: t.max_queued,
        max_queued_bytes: t.max_queued_bytes,
        max_jobs: Some(t.max_jobs.unwrap_or(jobs.0)),
        max_job_bytes: Some(t.max_job_bytes.unwrap_or(jobs.1)),
        models: t.models.clone(),
        progress: t.progress,
    }
}
