//! Tenants: who shares im, and the one policy every way in goes through.
//!
//! A tenant is a team, an app or an agent: one or more keys (`[[keys]] tenant = "..."`; a key
//! without one is its own tenant). What a tenant may spend is configured once (`[[tenants]]`)
//! and charged once, by the replica that schedules, whatever carried the work: an HTTP request,
//! a WebSocket message, an MCP tool call, a job.
//!
//! - **Rates**: each key's requests per second, and its tenant's; and tokens per minute (work is
//!   admitted while the tenant's balance is positive, its actual usage is debited when known, a
//!   stream without usage is debited its `max_tokens`).
//! - **Quotas**: requests and payload bytes queued or running at once; jobs stored and their
//!   bytes (checked by the job service through [`TenantPolicy::job_quota`]).
//! - **Models**: an optional allow-list.
//!
//! The state a reload must not reset (a limiter's tokens, what is queued) lives in [`Usage`],
//! kept by tenant name and key across reloads; the limits are the configuration in force.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::DashMap;
use crate::auth::{KeyId, TenantId};
use crate::error::{ErrorType, ServiceError};

/// One `[[tenants]]` entry as the service takes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantSpec {
    /// Its name (what `[[keys]] tenant` refers to, and its label in metrics).
    pub name: String,
    /// Its share of contended capacity, relative to the others (fair shares).
    pub weight: u32,
    /// Its default priority class (fair shares).
    pub class: Option<String>,
    /// Requests per second and burst, over all its keys (`None`: no tenant limit).
    pub rate_limit: Option<(u32, u32)>,
    /// Tokens per minute (`None`: no limit).
    pub tokens_per_minute: Option<u64>,
    /// Requests queued or running at once.
    pub max_queued: Option<usize>,
    /// Payload bytes queued or running at once.
    pub max_queued_bytes: Option<u64>,
    /// Jobs stored (any status, until they expire).
    pub max_jobs: Option<usize>,
    /// Bytes of stored jobs (requests and results).
    pub max_job_bytes: Option<u64>,
    /// The models it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Its streams report their wait's progress unless a request says otherwise.
    pub progress: bool,
}

/// The tenants in force: their specs by name. A reload makes a new one.
#[derive(Clone, Debug, Default)]
pub struct TenantPolicy {
    specs: Arc<HashMap<String, TenantSpec>>,
    /// The stored-jobs quota of a tenant not configured: jobs, bytes.
    default_jobs: (usize, u64),
}

impl TenantPolicy {
    /// The policy of `specs`; a tenant not among them may store `default_jobs` (jobs, bytes).
    pub fn new(specs: &[TenantSpec], default_jobs: (usize, u64)) -> TenantPolicy {
        TenantPolicy {
            specs: Arc::new(specs.iter().map(|s| (s.name.clone(), s.clone())).collect()),
            default_jobs,
        }
    }

    /// The spec of `tenant`, if it is configured.
    pub fn spec(&self, tenant: &TenantId) -> Option<&TenantSpec> {
        self.specs.get(tenant.as_str())
    }

    /// The label `tenant` is counted under in metrics: its name when configured (or the one
    /// anonymous tenant), `other` for the rest, so the label set stays bounded.
    pub fn label(&self, tenant: &TenantId) -> Arc<str> {
        static OTHER: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("other"));
        if self.specs.contains_key(tenant.as_str()) || tenant.is_anonymous() {
            tenant.shared()
        } else {
            OTHER.clone()
        }
    }

    /// The stored-jobs quota of `tenant`: how many, how many bytes.
    pub fn job_quota(&self, tenant: &TenantId) -> (usize, u64) {
        let (jobs, bytes) = self.default_jobs;
        self.spec(tenant).map_or((jobs, bytes), |s| {
            (s.max_jobs.unwrap_or(jobs), s.max_job_bytes.unwrap_or(bytes))
        })
    }
}

/// Requests per second (0: off) and the burst above it.
struct RateLimit {
    limits: (u32, u32),
    limiter: Option<DefaultDirectRateLimiter>,
}

impl RateLimit {
    fn new((per_s, burst): (u32, u32)) -> RateLimit {
        RateLimit {
            limits: (per_s, burst),
            limiter: NonZeroU32::new(per_s).map(|rate| {
                let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
            }),
        }
    }

    /// Take one, or say when to come back.
    fn take(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// A tenant's token balance: refilled at its per-minute rate up to one minute's worth.
struct TokenBalance {
    balance: f64,
    at: Instant,
}

/// What a tenant is using now, kept across reloads.
#[derive(Default)]
pub(crate) struct Usage {
    queued: AtomicUsize,
    queued_bytes: AtomicU64,
    tokens: Mutex<Option<TokenBalance>>,
}

/// The rate limiters and usage of every key and tenant seen, kept across reloads.
#[derive(Default)]
pub(crate) struct Meters {
    keys: DashMap<KeyId, Arc<RateLimit>>,
    tenants: DashMap<TenantId, Arc<RateLimit>>,
    usage: DashMap<TenantId, Arc<Usage>>,
}

fn limited(what: &str, wait: Duration) -> ServiceError {
    ServiceError::new(ErrorType::RateLimited, format!("{what} reached"))
        .retry_after(wait.max(Duration::from_secs(1)))
}

impl Meters {
    /// The limiter of `id` for `limits`: the one kept, unless the limits changed.
    fn limiter<K: std::hash::Hash + Eq + Clone>(
        map: &DashMap<K, Arc<RateLimit>>,
        id: &K,
        limits: (u32, u32),
    ) -> Arc<RateLimit> {
        if let Some(l) = map.get(id)
            && l.limits == limits
        {
            return l.clone();
        }
        let fresh = Arc::new(RateLimit::new(limits));
        map.insert(id.clone(), fresh.clone());
        fresh
    }

    /// Charge one unit of work: the key's rate, the tenant's rate, the tenant's token balance.
    pub(crate) fn charge(
        &self,
        key: Option<(KeyId, (u32, u32))>,
        tenant: &TenantId,
        spec: Option<&TenantSpec>,
    ) -> Result<(), ServiceError> {
        if let Some((id, limits)) = key {
            Self::limiter(&self.keys, &id, limits)
                .take()
                .map_err(|w| limited("rate limit for this API key", w))?;
        }
        let Some(spec) = spec else {
            return Ok(());
        };
        if let Some(limits) = spec.rate_limit {
            Self::limiter(&self.tenants, tenant, limits)
                .take()
                .map_err(|w| {
                    limited("rate limit for this tenant (`tenants.rate_limit_per_s`)", w)
                })?;
        }
        if let Some(per_minute) = spec.tokens_per_minute {
            let usage = self.usage(tenant);
            let mut tokens = usage.tokens.lock().unwrap_or_else(|p| p.into_inner());
            let b = refill(&mut tokens, per_minute);
            if b.balance <= 0.0 {
                let wait = Duration::from_secs_f64(-b.balance / per_minute as f64 * 60.0 + 1.0);
                return Err(limited(
                    "token rate for this tenant (`tenants.tokens_per_minute`)",
                    wait,
                ));
            }
        }
        Ok(())
    }

    /// Debit `tokens` the tenant's work used.
    pub(crate) fn debit_tokens(&self, tenant: &TenantId, spec: Option<&TenantSpec>, tokens: u64) {
        let Some(per_minute) = spec.and_then(|s| s.tokens_per_minute) else {
            return;
        };
        let usage = self.usage(tenant);
        let mut balance = usage.tokens.lock().unwrap_or_else(|p| p.into_inner());
        refill(&mut balance, per_minute).balance -= tokens as f64;
    }

    pub(crate) fn usage(&self, tenant: &TenantId) -> Arc<Usage> {
        self.usage.entry(tenant.clone()).or_default().clone()
    }

    /// Hold a place for `bytes` of work of `tenant` within its quotas, until the guard drops.
    pub(crate) fn hold(
        &self,
        tenant: &TenantId,
        spec: Option<&TenantSpec>,
        bytes: u64,
    ) -> Result<Held, ServiceError> {
        let usage = self.usage(tenant);
        let queued = usage.queued.fetch_add(1, Ordering::SeqCst) + 1;
        let held_bytes = usage.queued_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let held = Held { usage, bytes };
        if let Some(spec) = spec {
            if spec.max_queued.is_some_and(|m| queued > m) {
                return Err(quota(format!(
                    "this tenant has {} requests queued or running, its quota (`tenants.max_queued`)",
                    queued - 1
                )));
            }
            if spec.max_queued_bytes.is_some_and(|m| held_bytes > m) {
                return Err(quota(format!(
                    "this tenant's queued payloads would take {held_bytes} bytes, over its quota (`tenants.max_queued_bytes`)"
                )));
            }
        }
        Ok(held)
    }
}

fn refill(tokens: &mut Option<TokenBalance>, per_minute: u64) -> &mut TokenBalance {
    let now = Instant::now();
    let full = per_minute as f64;
    let b = tokens.get_or_insert(TokenBalance {
        balance: full,
        at: now,
    });
    let refilled = now.duration_since(b.at).as_secs_f64() / 60.0 * full;
    b.balance = (b.balance + refilled).min(full);
    b.at = now;
    b
}

/// The error for work over a tenant's quota.
pub fn quota(message: String) -> ServiceError {
    ServiceError::new(ErrorType::QueueFull, message).retry_after(Duration::from_secs(1))
}

/// A place within a tenant's quotas; given back when dropped.
pub(crate) struct Held {
    usage: Arc<Usage>,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.usage.queued.fetch_sub(1, Ordering::SeqCst);
        self.usage
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(f: impl FnOnce(&mut TenantSpec)) -> TenantSpec {
        let mut s = TenantSpec {
            name: "team".into(),
            weight: 1,
            ..TenantSpec::default()
        };
        f(&mut s);
        s
    }

    #[test]
    fn a_tenants_rate_is_shared_by_its_keys() {
        let m = Meters::default();
        let spec = tenant(|s| s.rate_limit = Some((1, 2)));
        let t = TenantId::new("team");
        let (a, b) = (KeyId(1), KeyId(2));
        assert!(m.charge(Some((a, (0, 1))), &t, Some(&spec)).is_ok());
        assert!(m.charge(Some((b, (0, 1))), &t, Some(&spec)).is_ok());
        let e = m
            .charge(Some((a, (0, 1))), &t, Some(&spec))
            .expect_err("the burst of 2 is spent");
        assert!(
            e.line().contains("tenants.rate_limit_per_s"),
            "{}",
            e.line()
        );
    }

    #[test]
    fn tokens_are_admitted_while_the_balance_is_positive_and_debited_after() {
        let m = Meters::default();
        let spec = tenant(|s| s.tokens_per_minute = Some(100));
        let t = TenantId::new("team");
        assert!(m.charge(None, &t, Some(&spec)).is_ok());
        m.debit_tokens(&t, Some(&spec), 150);
        let e = m.charge(None, &t, Some(&spec)).expect_err("overdrawn");
        assert!(e.line().contains("tokens_per_minute"), "{}", e.line());
    }

    #[test]
    fn quotas_hold_places_and_give_them_back() {
        let m = Meters::default();
        let spec = tenant(|s| {
            s.max_queued = Some(2);
            s.max_queued_bytes = Some(100);
        });
        let t = TenantId::new("team");
        let first = m.hold(&t, Some(&spec), 10).expect("1");
        let _second = m.hold(&t, Some(&spec), 10).expect("2");
        let e = m
            .hold(&t, Some(&spec), 10)
            .err()
            .expect("a third is over the quota");
        assert!(e.line().contains("tenants.max_queued"), "{}", e.line());
        drop(first);
        assert!(m.hold(&t, Some(&spec), 10).is_ok(), "given back");
        let e = m.hold(&t, Some(&spec), 200).err().expect("too many bytes");
        assert!(e.line().contains("max_queued_bytes"), "{}", e.line());
    }

    #[test]
    fn labels_stay_bounded() {
        let p = TenantPolicy::new(&[tenant(|_| {})], (10, 100));
        assert_eq!(&*p.label(&TenantId::new("team")), "team");
        assert_eq!(&*p.label(&TenantId::new("key-0123456789abcdef")), "other");
        assert_eq!(&*p.label(&TenantId::anonymous()), "anonymous");
    }
}
