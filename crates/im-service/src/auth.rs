//! Who is calling: API keys (compared in constant time), per-key rate limits, and the [`Caller`]
//! every call runs as.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use crate::error::{ErrorType, ServiceError};

/// A configured key, by its position in the list (never the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub usize);

/// A set of API keys, compared in constant time. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

impl Keys {
    /// The keys; spaces around each are ignored, empty ones dropped.
    pub fn new(keys: &[String]) -> Keys {
        Keys(Arc::new(
            keys.iter()
                .map(|k| k.trim())
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        ))
    }

    /// Whether there are none (auth off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `provided` matches, comparing against every key in constant time.
    pub fn check(&self, provided: &[u8]) -> Option<KeyId> {
        let mut found = None;
        for (i, k) in self.0.iter().enumerate() {
            if bool::from(k.as_slice().ct_eq(provided)) && found.is_none() {
                found = Some(KeyId(i));
            }
        }
        found
    }
}

/// The key in `X-API-Key` or `Authorization: Bearer`, from header values.
pub fn provided_key<'a>(
    x_api_key: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    if let Some(k) = x_api_key {
        return Some(k);
    }
    let auth = authorization?;
    let prefix = b"Bearer ";
    (auth.len() > prefix.len() && auth[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &auth[prefix.len()..])
}

/// A caller-supplied request id, if it is sane: 1 to 64 characters of `[A-Za-z0-9-_.:]`.
pub fn sane_request_id(given: Option<&[u8]>) -> Option<String> {
    let v = given?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// Requests per second per key (0: off) and the burst above it.
#[derive(Clone)]
pub struct RateLimit(Option<Arc<DefaultKeyedRateLimiter<usize>>>);

impl RateLimit {
    /// `per_s` requests a second per key with `burst`; 0 turns it off.
    pub fn new(per_s: u32, burst: u32) -> RateLimit {
        RateLimit(NonZeroU32::new(per_s).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        }))
    }

    /// Charge one request to `key`, or say when to come back.
    pub fn charge(&self, key: KeyId) -> Result<(), ServiceError> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(&key.0).map_err(|not_until| {
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

/// The error for a missing or wrong key.
pub fn unauthorized() -> ServiceError {
    ServiceError::new(
        ErrorType::Unauthorized,
        "a valid API key is required in X-API-Key or Authorization: Bearer",
    )
}
