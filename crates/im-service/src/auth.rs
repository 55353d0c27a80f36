//! Who is calling: API keys (compared in constant time), per-key rate limits, and the [`Caller`]
//! every call runs as.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use crate::error::{ErrorType, ServiceError};

/// A configured key, by its position in the list (never the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub usize);

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference: every queued route, `/v1/models`, MCP tools.
    Infer,
    /// LocalAI's management routes im proxies (model gallery, backends).
    Admin,
    /// Metrics and status: `/metrics`, the JSON metrics, `/queue-status`.
    Metrics,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Infer, Scope::Admin, Scope::Metrics];

    /// The scopes of an ordinary key (`api_keys`): everything but `admin`.
    pub const ORDINARY: [Scope; 2] = [Scope::Infer, Scope::Metrics];

    /// Its name in config and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Scope::Infer => 1,
            Scope::Admin => 2,
            Scope::Metrics => 4,
        }
    }
}

/// One key as configured: the secret, its scopes and its own rate limit (else the default).
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The key clients send.
    pub key: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Requests per second and burst for this key (`None`: the default limit).
    pub rate_limit: Option<(u32, u32)>,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("scopes", &self.scopes)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl KeySpec {
    /// An ordinary key: `infer` and `metrics`, the default rate limit.
    pub fn ordinary(key: impl Into<String>) -> KeySpec {
        KeySpec {
            key: key.into(),
            scopes: Scope::ORDINARY.to_vec(),
            rate_limit: None,
        }
    }
}

struct KeyEntry {
    secret: Vec<u8>,
    scopes: u8,
    rate: RateLimit,
}

/// A set of API keys with their scopes and rate limits, compared in constant time. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<KeyEntry>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

impl Keys {
    /// Ordinary keys (`infer` and `metrics`, no rate limit); spaces around each are ignored,
    /// empty ones dropped.
    pub fn new(keys: &[String]) -> Keys {
        let specs: Vec<KeySpec> = keys.iter().map(KeySpec::ordinary).collect();
        Keys::with_scopes(&specs, (0, 1))
    }

    /// Keys with their scopes; a key without its own rate limit gets `default_rate`
    /// (requests per second, 0: off; burst). Spaces around each key are ignored, empty ones
    /// dropped.
    pub fn with_scopes(specs: &[KeySpec], default_rate: (u32, u32)) -> Keys {
        Keys(Arc::new(
            specs
                .iter()
                .filter(|s| !s.key.trim().is_empty())
                .map(|s| {
                    let (per_s, burst) = s.rate_limit.unwrap_or(default_rate);
                    KeyEntry {
                        secret: s.key.trim().as_bytes().to_vec(),
                        scopes: s.scopes.iter().fold(0, |acc, sc| acc | sc.bit()),
                        rate: RateLimit::new(per_s, burst),
                    }
                })
                .collect(),
        ))
    }

    /// A stable name for a key that does not reveal it: `key-` and the first 16 hex digits of
    /// its SHA-256 (`anonymous` without a key). Stored with what a key owns (its jobs), so a
    /// key keeps its jobs across restarts and config reloads that reorder the keys.
    pub fn fingerprint(&self, key: Option<KeyId>) -> String {
        use sha2::Digest;
        match key.and_then(|k| self.0.get(k.0)) {
            Some(e) => {
                let digest = sha2::Sha256::digest(&e.secret);
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("key-{hex}")
            }
            None => "anonymous".to_owned(),
        }
    }

    /// Whether there are none (auth off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `provided` matches, comparing against every key in constant time.
    pub fn check(&self, provided: &[u8]) -> Option<KeyId> {
        let mut found = None;
        for (i, k) in self.0.iter().enumerate() {
            if bool::from(k.secret.as_slice().ct_eq(provided)) && found.is_none() {
                found = Some(KeyId(i));
            }
        }
        found
    }

    /// Whether `key` has `scope`.
    pub fn allows(&self, key: KeyId, scope: Scope) -> bool {
        self.0
            .get(key.0)
            .is_some_and(|k| k.scopes & scope.bit() != 0)
    }

    /// Charge one request to `key`'s rate limit, or say when to come back.
    pub fn charge(&self, key: KeyId) -> Result<(), ServiceError> {
        match self.0.get(key.0) {
            Some(k) => k.rate.charge(),
            None => Ok(()),
        }
    }
}

/// One key's requests per second (0: off) and the burst above it.
#[derive(Clone)]
struct RateLimit(Option<Arc<DefaultDirectRateLimiter>>);

impl RateLimit {
    fn new(per_s: u32, burst: u32) -> RateLimit {
        RateLimit(NonZeroU32::new(per_s).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        }))
    }

    fn charge(&self) -> Result<(), ServiceError> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ServiceError::new(
                ErrorType::RateLimited,
                "rate limit for this API key reached",
            )
            .retry_after(wait.max(Duration::from_secs(1)))
        })
    }
}

/// Who a call runs as: its key (if auth is on) and its request id.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key it presented.
    pub key: Option<KeyId>,
    /// The id it is known by in logs, errors and responses.
    pub request_id: String,
}

/// The error for a key without the scope a route needs.
pub fn forbidden(scope: Scope) -> ServiceError {
    ServiceError::new(
        ErrorType::Forbidden,
        format!(
            "this API key lacks the `{}` scope this route needs",
            scope.as_str()
        ),
    )
}

/// The error for a missing or wrong key.
pub fn unauthorized() -> ServiceError {
    ServiceError::new(
        ErrorType::Unauthorized,
        "a valid API key is required in X-API-Key or Authorization: Bearer",
    )
}
