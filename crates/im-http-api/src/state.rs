//! Shared state, request ids, authentication and rate limiting.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use im_engine::{Completion, Engine};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorType};

/// A set of API keys, compared in constant time. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<Vec<u8>>>);

impl Keys {
    /// The keys.
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

    /// The first key (what in-process callers such as the MCP frontend present).
    pub fn first(&self) -> Option<String> {
        self.0
            .first()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The index of the key `provided` matches, comparing against every key in constant time.
    pub fn check(&self, provided: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, k) in self.0.iter().enumerate() {
            if bool::from(k.as_slice().ct_eq(provided)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    /// The key of a request's headers, if it carries a valid one.
    pub fn check_headers(&self, headers: &HeaderMap) -> Option<usize> {
        provided_key(headers).and_then(|k| self.check(k))
    }
}

/// Middleware for routers without an engine (the standalone MCP server): a valid key or 401.
pub async fn require_key(State(keys): State<Keys>, req: Request, next: Next) -> Response {
    if keys.check_headers(req.headers()).is_none() {
        return ApiError::new(
            ErrorType::Unauthorized,
            "a valid API key is required in X-API-Key or Authorization: Bearer",
        )
        .into_response();
    }
    next.run(req).await
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The engine (queues, scheduler, upstream).
    pub engine: Engine,
    /// The accepted API keys.
    pub keys: Keys,
    limiter: Option<Arc<DefaultKeyedRateLimiter<usize>>>,
    /// Largest accepted image side.
    pub max_image_side: u32,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// URL prefixes an image URL may start with (the upstream fetches them); empty: none.
    pub image_url_allowlist: Arc<Vec<String>>,
    ids: Arc<AtomicU64>,
    id_prefix: u32,
}

/// HTTP settings of a router.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Accepted API keys; empty disables auth.
    pub api_keys: Vec<String>,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Largest accepted image side.
    pub max_image_side: u32,
    /// Per-key requests per second (0: off) and burst.
    pub rate_limit: (u32, u32),
    /// URL prefixes an image URL may start with; empty: image URLs are refused.
    pub image_url_allowlist: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            api_keys: Vec::new(),
            body_limit: 32 * 1024 * 1024,
            max_image_side: 2048,
            rate_limit: (0, 10),
            image_url_allowlist: Vec::new(),
        }
    }
}

impl AppState {
    /// State over `engine` with `settings`.
    pub fn new(engine: Engine, settings: &HttpSettings) -> AppState {
        let limiter = NonZeroU32::new(settings.rate_limit.0).map(|rate| {
            let burst = NonZeroU32::new(settings.rate_limit.1.max(1)).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        AppState {
            engine,
            keys: Keys::new(&settings.api_keys),
            limiter,
            max_image_side: settings.max_image_side,
            body_limit: settings.body_limit,
            image_url_allowlist: Arc::new(settings.image_url_allowlist.clone()),
            ids: Arc::new(AtomicU64::new(1)),
            id_prefix: seed,
        }
    }

    /// Whether keys are configured.
    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn next_id(&self) -> String {
        format!(
            "im-{:08x}-{:06x}",
            self.id_prefix,
            self.ids.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The request's id, in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// When the request reached im, for the overhead figure.
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub Instant);

/// Middleware: take a sane `X-Request-Id` or make one; echo it on every response.
pub async fn request_id(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| st.next_id());
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(Arrived(Instant::now()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn provided_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(k) = headers.get("x-api-key") {
        return Some(k.as_bytes());
    }
    let auth = headers.get("authorization")?.as_bytes();
    let prefix = b"Bearer ";
    (auth.len() > prefix.len() && auth[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &auth[prefix.len()..])
}

/// Paths that need no key: liveness, readiness (without a key it says only ready or not, so a
/// Kubernetes probe needs no secret), and the API documentation (it holds no data; Swagger UI's
/// "Authorize" button supplies the key for the calls it makes).
fn is_open(path: &str) -> bool {
    path == "/health"
        || path == "/ready"
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Marks an in-process request whose caller's key was already charged to the rate limit by the
/// request that carried it (an MCP tool call inside a `POST /mcp`): the key is checked again, the
/// limit is not charged twice. Only code in this process can set it.
#[derive(Clone, Copy, Debug)]
pub struct AlreadyCharged;

/// Middleware: `X-API-Key` or `Authorization: Bearer`, then the per-key rate limit.
pub async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.auth_enabled() || is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(idx) = st.keys.check_headers(req.headers()) else {
        let msg = "a valid API key is required in X-API-Key or Authorization: Bearer";
        return ApiError::new(ErrorType::Unauthorized, msg).into_response();
    };
    if let Some(limiter) = &st.limiter
        && req.extensions().get::<AlreadyCharged>().is_none()
        && let Err(not_until) = limiter.check_key(&idx)
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return ApiError::new(
            ErrorType::RateLimited,
            "rate limit for this API key reached",
        )
        .retry_after(wait.max(Duration::from_secs(1)))
        .into_response();
    }
    next.run(req).await
}

/// Set the figures headers (`X-Request-Id` is set by the middleware) and record the overhead.
pub fn figure_headers(st: &AppState, headers: &mut HeaderMap, done: &Completion, arrived: Arrived) {
    let m = &done.meta;
    let total = arrived.0.elapsed();
    let overhead = total.saturating_sub(m.queue_wait + m.processing);
    st.engine.metrics().overhead(overhead);
    let pairs = [
        (
            "x-queue-wait-ms",
            format!("{:.3}", m.queue_wait.as_secs_f64() * 1000.0),
        ),
        (
            "x-processing-ms",
            format!("{:.3}", m.processing.as_secs_f64() * 1000.0),
        ),
        ("x-attempts", m.attempts.to_string()),
        (
            "x-im-overhead-ms",
            format!("{:.3}", overhead.as_secs_f64() * 1000.0),
        ),
    ];
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
}
