//! Who is calling: API keys (compared in constant time) with their scopes and tenants, the
//! [`Principal`] a checked key is, and the [`Caller`] every call runs as.
//!
//! A key's identity ([`KeyId`]) is a digest of its secret, so it survives a reload that reorders
//! or removes other keys: a session or a queued request holding it is checked again against the
//! keys in force ([`crate::Service::check`]), and refused once its key is gone or narrowed.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::error::{ErrorType, ServiceError};

/// A configured key: a digest of its secret (never the secret itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    /// The id of the key `secret`.
    pub fn of(secret: &[u8]) -> KeyId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(secret);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        KeyId(u64::from_be_bytes(first))
    }

    /// A stable name for it that does not reveal it: `key-` and 16 hex digits.
    pub fn fingerprint(self) -> String {
        format!("key-{:016x}", self.0)
    }
}

/// What a key may do. Each route, WebSocket message type and MCP tool needs one (the golden list
/// `crates/im-http-api/scopes.golden` names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference: every queued route, `/v1/models`, the inference tools and messages, jobs.
    Infer,
    /// Operations: LocalAI's management routes, model loads and unloads, reloads. Sees every
    /// tenant's details.
    Admin,
    /// Metrics and status: `/metrics`, the JSON metrics, `/queue-status`, placement. A key with
    /// it sees aggregate figures and its own tenant's details.
    Metrics,
    /// Every tenant's details in the views (error messages, jobs), without `admin`'s operations.
    Operator,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Infer, Scope::Admin, Scope::Metrics, Scope::Operator];

    /// The scopes of an ordinary key (`api_keys`): inference and its own tenant's figures.
    pub const ORDINARY: [Scope; 2] = [Scope::Infer, Scope::Metrics];

    /// Its name in config and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
            Scope::Operator => "operator",
        }
    }

    pub(crate) const fn bit(self) -> u8 {
        match self {
            Scope::Infer => 1,
            Scope::Admin => 2,
            Scope::Metrics => 4,
            Scope::Operator => 8,
        }
    }
}

/// A tenant's name: a configured tenant's, or for a key without one the key's fingerprint (each
/// such key is its own tenant). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The tenant called `name`.
    pub fn new(name: &str) -> TenantId {
        TenantId(Arc::from(name))
    }

    /// The tenant of a caller without a key (authentication off, or a local process).
    pub fn anonymous() -> TenantId {
        static ANONYMOUS: std::sync::LazyLock<TenantId> =
            std::sync::LazyLock::new(|| TenantId::new("anonymous"));
        ANONYMOUS.clone()
    }

    /// Whether it is [`Self::anonymous`].
    pub fn is_anonymous(&self) -> bool {
        &*self.0 == "anonymous"
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its name, shared.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One key as configured: the secret, its scopes, its own rate limit (else the default) and its
/// tenant (else itself).
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The key clients send.
    pub key: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Requests per second and burst for this key (`None`: the default limit).
    pub rate_limit: Option<(u32, u32)>,
    /// The tenant it belongs to (`None`: its own).
    pub tenant: Option<String>,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("scopes", &self.scopes)
            .field("rate_limit", &self.rate_limit)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl KeySpec {
    /// An ordinary key: `infer` and `metrics`, the default rate limit, its own tenant.
    pub fn ordinary(key: impl Into<String>) -> KeySpec {
        KeySpec {
            key: key.into(),
            scopes: Scope::ORDINARY.to_vec(),
            rate_limit: None,
            tenant: None,
        }
    }
}

/// A key in force.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    pub(crate) id: KeyId,
    secret: Vec<u8>,
    scopes: u8,
    /// Requests per second (0: off) and burst.
    pub(crate) rate: (u32, u32),
    pub(crate) tenant: TenantId,
}

impl KeyEntry {
    pub(crate) fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

/// The keys in force, compared in constant time. Cheap to clone; a reload makes a new set.
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<KeyEntry>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.0.len())
    }
}

impl Keys {
    /// Ordinary keys (`infer` and `metrics`, no rate limit, each its own tenant); spaces around
    /// each are ignored, empty ones dropped.
    pub fn new(keys: &[String]) -> Keys {
        let specs: Vec<KeySpec> = keys.iter().map(KeySpec::ordinary).collect();
        Keys::with_scopes(&specs, (0, 1))
    }

    /// Keys with their scopes and tenants; a key without its own rate limit gets
    /// `default_rate` (requests per second, 0: off; burst). Spaces around each key are ignored,
    /// empty ones dropped.
    pub fn with_scopes(specs: &[KeySpec], default_rate: (u32, u32)) -> Keys {
        Keys(Arc::new(
            specs
                .iter()
                .filter(|s| !s.key.trim().is_empty())
                .map(|s| {
                    let secret = s.key.trim().as_bytes().to_vec();
                    let id = KeyId::of(&secret);
                    KeyEntry {
                        id,
                        secret,
                        scopes: s.scopes.iter().fold(0, |acc, sc| acc | sc.bit()),
                        rate: s.rate_limit.unwrap_or(default_rate),
                        tenant: s
                            .tenant
                            .as_deref()
                            .map_or_else(|| TenantId::new(&id.fingerprint()), TenantId::new),
                    }
                })
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
        for k in self.0.iter() {
            if bool::from(k.secret.as_slice().ct_eq(provided)) && found.is_none() {
                found = Some(k.id);
            }
        }
        found
    }

    /// The key `id`, if it is in force.
    pub(crate) fn get(&self, id: KeyId) -> Option<&KeyEntry> {
        self.0.iter().find(|k| k.id == id)
    }

    /// Whether `key` is in force and has `scope`.
    pub fn allows(&self, key: KeyId, scope: Scope) -> bool {
        self.get(key).is_some_and(|k| k.allows(scope))
    }

    /// The ids of the keys in force.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.0.iter().map(|k| k.id)
    }

    /// The tenant of `key` (`None`: not in force).
    pub fn tenant_of(&self, key: KeyId) -> Option<TenantId> {
        self.get(key).map(|k| k.tenant.clone())
    }

    /// A stable name for a key that does not reveal it (`anonymous` without a key).
    pub fn fingerprint(&self, key: Option<KeyId>) -> String {
        key.map_or_else(|| "anonymous".to_owned(), KeyId::fingerprint)
    }
}

/// Who a checked key is: the key (none when authentication is off) and its tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key it presented.
    pub key: Option<KeyId>,
    /// The tenant it belongs to.
    pub tenant: TenantId,
}

impl Principal {
    /// A caller without a key (authentication off, or a local process such as MCP over stdio).
    pub fn anonymous() -> Principal {
        Principal {
            key: None,
            tenant: TenantId::anonymous(),
        }
    }
}

/// Who a call runs as: the principal and the request's id.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key it presented.
    pub key: Option<KeyId>,
    /// Its tenant: what it owns, what it is charged to, what it sees.
    pub tenant: TenantId,
    /// The id it is known by in logs, errors and responses.
    pub request_id: String,
    /// It asked to be served as batch work (`X-Im-Priority: batch`; jobs are): a request may
    /// lower its tenant's class, never raise it.
    pub batch: bool,
    /// Where to tell it how its wait goes (a streaming request in progress mode).
    pub progress: Option<im_engine::ProgressSink>,
}

impl Caller {
    /// `who`, for the request `request_id`.
    pub fn new(who: &Principal, request_id: impl Into<String>) -> Caller {
        Caller {
            key: who.key,
            tenant: who.tenant.clone(),
            request_id: request_id.into(),
            batch: false,
            progress: None,
        }
    }

    /// Who it is.
    pub fn principal(&self) -> Principal {
        Principal {
            key: self.key,
            tenant: self.tenant.clone(),
        }
    }
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

/// The error for a key that was valid and is no longer (removed by a reload).
pub fn revoked() -> ServiceError {
    ServiceError::new(
        ErrorType::Unauthorized,
        "this API key was revoked by a configuration reload",
    )
}
