//! The service every frontend runs requests through: authenticate a caller, run a [`Call`] as
//! that caller, and the read-only views (models, queues, metrics, readiness) as JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use im_engine::{BatchSettings, Batcher, Completion, Engine};
use serde_json::Value;

use crate::auth::{
    Caller, KeyId, KeySpec, Keys, Principal, Scope, TenantId, forbidden, revoked, unauthorized,
};
use crate::call::{Call, InputLimits};
use crate::done::Done;
use crate::error::ServiceError;
use crate::registry::Registry;
use crate::tenancy::{Meters, TenantPolicy, TenantSpec};

mod views;
pub use views::PromptProbe;

/// How a [`Service`] is set up.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Accepted API keys with their scopes and tenants; none turns authentication off.
    pub keys: Vec<KeySpec>,
    /// The configured tenants (`[[tenants]]`).
    pub tenants: Vec<TenantSpec>,
    /// The stored-jobs quota of a tenant not configured (jobs, bytes).
    pub default_job_quota: (usize, u64),
    /// Per-key requests per second (0: off) and burst, for keys without their own.
    pub rate_limit: (u32, u32),
    /// What inputs must respect besides their types.
    pub limits: InputLimits,
    /// The largest request body a frontend accepts, in bytes.
    pub body_limit: usize,
    /// How embedding requests are merged into upstream calls.
    pub batch: BatchSettings,
    /// The task models of `/infer` (versions, templates).
    pub registry: Registry,
    /// The most requests one `/infer/batch` may carry.
    pub max_batch_requests: usize,
    /// The response cache (off unless models are listed).
    pub cache: crate::CacheSettings,
}

impl Default for ServiceSettings {
    fn default() -> ServiceSettings {
        ServiceSettings {
            keys: Vec::new(),
            tenants: Vec::new(),
            default_job_quota: (1000, 128 << 20),
            rate_limit: (0, 10),
            limits: InputLimits::default(),
            body_limit: 32 * 1024 * 1024,
            batch: BatchSettings::default(),
            registry: Registry::default(),
            max_batch_requests: 32,
            cache: crate::CacheSettings::default(),
        }
    }
}

struct Shared {
    /// Swapped whole by a configuration reload.
    keys: std::sync::RwLock<Keys>,
    /// Swapped with the keys.
    tenants: std::sync::RwLock<TenantPolicy>,
    /// Rates and usage of every key and tenant, kept across reloads.
    meters: Meters,
    /// The stored-jobs quota of a tenant not configured.
    default_job_quota: (usize, u64),
    /// Bumped by every change of keys or tenants: open sessions check their key again.
    version: tokio::sync::watch::Sender<u64>,
    /// The requests in the system by the key they came with (request id), so that a key's
    /// waiting requests leave when a reload revokes it.
    live: crate::DashMap<String, KeyId>,
    limits: InputLimits,
    body_limit: usize,
    registry: Registry,
    max_batch_requests: usize,
    ids: AtomicU64,
    /// `im-<instance>-`, the instance in 8 hex digits: what every request id begins with.
    id_prefix: String,
    /// Where a model the scheduler does not know is looked for (set once, after start).
    discovery: std::sync::OnceLock<Arc<dyn crate::Discovery>>,
}

/// An upstream's answer to a relayed management request, whatever its status.
#[derive(Clone, Debug)]
pub struct Relayed {
    /// The upstream's status.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: bytes::Bytes,
}

/// im's service: cheap to clone, shared by every frontend.
#[derive(Clone)]
pub struct Service {
    engine: Engine,
    batcher: Batcher,
    cache: Option<crate::cache::ResponseCache>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// The service over `engine`.
    pub fn new(engine: Engine, settings: &ServiceSettings) -> Service {
        let instance = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id_prefix = format!("im-{instance:08x}-");
        Service {
            batcher: Batcher::new(engine.clone(), settings.batch),
            cache: crate::cache::ResponseCache::new(&settings.cache),
            engine,
            shared: Arc::new(Shared {
                keys: std::sync::RwLock::new(Keys::with_scopes(
                    &settings.keys,
                    settings.rate_limit,
                )),
                tenants: std::sync::RwLock::new(TenantPolicy::new(
                    &settings.tenants,
                    settings.default_job_quota,
                )),
                default_job_quota: settings.default_job_quota,
                meters: Meters::default(),
                version: tokio::sync::watch::Sender::new(0),
                live: crate::DashMap::default(),
                limits: settings.limits.clone(),
                body_limit: settings.body_limit,
                registry: settings.registry.clone(),
                max_batch_requests: settings.max_batch_requests,
                ids: AtomicU64::new(1),
                id_prefix,
                discovery: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What inputs must respect.
    pub fn limits(&self) -> &InputLimits {
        &self.shared.limits
    }

    /// The task models of `/infer`.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The most requests one `/infer/batch` may carry.
    pub fn max_batch_requests(&self) -> usize {
        self.shared.max_batch_requests
    }

    /// The largest request body a frontend accepts.
    pub fn body_limit(&self) -> usize {
        self.shared.body_limit
    }

    /// Whether callers need a key.
    pub fn auth_enabled(&self) -> bool {
        !self.keys().is_empty()
    }

    /// The configured keys (a cheap handle: a reload swaps the set, this one stays as it was).
    pub fn keys(&self) -> Keys {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tenants in force.
    pub fn tenants(&self) -> TenantPolicy {
        self.shared
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the keys and tenants (a configuration reload): work from now on is checked
    /// against them; a key removed or narrowed is refused from its next unit of work on, its
    /// open sessions are told ([`Self::watch_keys`]). Rate limiters and usage carry over.
    pub fn set_keys(&self, keys: &[KeySpec], default_rate: (u32, u32), tenants: &[TenantSpec]) {
        let fresh = Keys::with_scopes(keys, default_rate);
        let old = std::mem::replace(
            &mut *self.shared.keys.write().unwrap_or_else(|p| p.into_inner()),
            fresh.clone(),
        );
        // Keys gone, or moved to another tenant: their waiting requests leave with 401.
        let revoked: Vec<KeyId> = old
            .ids()
            .filter(|k| fresh.tenant_of(*k) != old.tenant_of(*k))
            .collect();
        let waiting: std::collections::HashSet<String> = self
            .shared
            .live
            .iter()
            .filter(|e| revoked.contains(e.value()))
            .map(|e| e.key().clone())
            .collect();
        if !waiting.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let engine = self.engine.clone();
            rt.spawn(async move { engine.withdraw(waiting).await });
        }
        *self
            .shared
            .tenants
            .write()
            .unwrap_or_else(|p| p.into_inner()) =
            TenantPolicy::new(tenants, self.shared.default_job_quota);
        self.shared.version.send_modify(|v| *v += 1);
    }

    /// Changes whenever keys or tenants change: a session holding a key checks it again.
    pub fn watch_keys(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// A fresh request id (`im-<instance>-<counter>`).
    pub fn new_request_id(&self) -> String {
        request_id(
            &self.shared.id_prefix,
            self.shared.ids.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Authenticate the key a caller presented: who it is (anonymous when auth is off),
    /// charging its rates unless `charge` is false (a follower checks, the scheduler charges).
    pub fn authenticate(
        &self,
        provided: Option<&[u8]>,
        charge: bool,
    ) -> Result<Principal, ServiceError> {
        let keys = self.keys();
        if keys.is_empty() {
            return Ok(Principal::anonymous());
        }
        let key = provided
            .and_then(|k| keys.check(k))
            .ok_or_else(unauthorized)?;
        let who = Principal {
            key: Some(key),
            tenant: keys.tenant_of(key).unwrap_or_else(TenantId::anonymous),
        };
        if charge {
            self.charge(&keys, &who)?;
        }
        Ok(who)
    }

    /// [`Self::authenticate`], then [`Self::check`] the scope.
    pub fn authorize(
        &self,
        provided: Option<&[u8]>,
        scope: Scope,
        charge: bool,
    ) -> Result<Principal, ServiceError> {
        let keys = self.keys();
        let who = self.authenticate(provided, false)?;
        self.check_in(&keys, &who, scope, charge)?;
        Ok(who)
    }

    /// The one check every unit of work passes, whatever carried it (an HTTP request, a
    /// WebSocket message, an MCP tool call, a job): `who`'s key is still in force (a reload may
    /// have removed it: 401), has `scope` (403), and, when `charge`, is within its key's and its
    /// tenant's rates (429). With authentication off every scope is open except `admin`.
    pub fn check(&self, who: &Principal, scope: Scope, charge: bool) -> Result<(), ServiceError> {
        self.check_in(&self.keys(), who, scope, charge)
    }

    /// Whether `who`'s key is still in force for its tenant (a session checks this whenever the
    /// keys change, and closes when it is not).
    pub fn check_key(&self, who: &Principal) -> Result<(), ServiceError> {
        let keys = self.keys();
        match who.key {
            Some(k) => match keys.get(k) {
                // Moved to another tenant by a reload: what it holds was another's.
                Some(entry) if entry.tenant == who.tenant => Ok(()),
                _ => Err(revoked()),
            },
            None if keys.is_empty() => Ok(()),
            None => Err(unauthorized()),
        }
    }

    fn check_in(
        &self,
        keys: &Keys,
        who: &Principal,
        scope: Scope,
        charge: bool,
    ) -> Result<(), ServiceError> {
        let allowed = match who.key {
            Some(k) => match keys.get(k) {
                Some(entry) if entry.tenant == who.tenant => entry.allows(scope),
                _ => return Err(revoked()),
            },
            None if keys.is_empty() => scope != Scope::Admin,
            None => return Err(unauthorized()),
        };
        if !allowed {
            return Err(forbidden(scope));
        }
        if charge {
            self.charge(keys, who)?;
        }
        Ok(())
    }

    /// Charge one unit of work to `who`: its key's rate, its tenant's rate and token balance.
    fn charge(&self, keys: &Keys, who: &Principal) -> Result<(), ServiceError> {
        let key = who.key.and_then(|k| keys.get(k)).map(|e| (e.id, e.rate));
        let tenants = self.tenants();
        self.shared
            .meters
            .charge(key, &who.tenant, tenants.spec(&who.tenant))
    }

    /// Whether `who` sees every tenant's details (an `admin` or `operator` key, or no keys at
    /// all); else it sees aggregates and its own tenant's details.
    pub fn sees_all(&self, who: &Principal) -> bool {
        let keys = self.keys();
        match who.key {
            Some(k) => keys.allows(k, Scope::Admin) || keys.allows(k, Scope::Operator),
            None => keys.is_empty(),
        }
    }

    /// Relay a management request (LocalAI's model gallery and backend routes) to upstream
    /// `lane` and pass its answer back whatever its status. It is not queued: these routes
    /// install and list, they load nothing into memory (the routes that load and unload models
    /// are not relayed; the scheduler owns what is resident). `method` is the verb (`GET`,
    /// `POST`, `PUT`, `PATCH`, `DELETE`); a wrong `lane` is refused naming `lane`.
    pub async fn manage(
        &self,
        lane: usize,
        method: &str,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<Relayed, ServiceError> {
        let lanes = self.engine.config().lanes.len();
        if lane >= lanes {
            return Err(ServiceError::invalid(
                "lane",
                format!("must be an upstream index below {lanes}, got {lane}"),
            ));
        }
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
            return Err(ServiceError::invalid(
                "method",
                format!("{} is not relayed", crate::truncate(method, 16)),
            ));
        }
        self.engine
            .backend()
            .forward(
                inference_queue::LaneId(lane),
                method,
                path_and_query,
                content_type,
                body,
            )
            .await
            .map(|f| Relayed {
                status: f.status,
                content_type: f.content_type,
                body: f.body,
            })
            .map_err(|e| {
                ServiceError::new(
                    crate::error::ErrorType::UpstreamUnavailable,
                    format!("the upstream did not answer the management request: {e}"),
                )
            })
    }

    /// Run `call` as `caller`: queue it (embeddings merged with others that arrive together),
    /// wait for it to leave. Dropping the future cancels it.
    pub fn run<'a>(
        &'a self,
        call: Call,
        caller: &'a Caller,
    ) -> impl std::future::Future<Output = Result<Done, ServiceError>> + 'a {
        // Boxed once here: the futures that wait on it then hold a pointer, not the call.
        let call = Box::new(call);
        async move { self.run_completion(call, caller).await.map(Done::from) }
    }

    /// Where models the scheduler does not know are looked for (once; later calls are ignored).
    pub fn set_discovery(&self, discovery: Arc<dyn crate::Discovery>) {
        let _ = self.shared.discovery.set(discovery);
    }

    /// A model the scheduler does not know is looked for before its request is refused; one
    /// that may be on an upstream not reached yet is answered 503 with a `Retry-After`.
    async fn look_for(&self, model: &str) -> Result<(), ServiceError> {
        let Some(d) = self.shared.discovery.get() else {
            return Ok(());
        };
        if self.engine.config().models.iter().any(|m| m.name == model) {
            return Ok(());
        }
        match d.missed(model).await {
            crate::Lookup::Found | crate::Lookup::Unknown => Ok(()),
            crate::Lookup::NotYet => Err(ServiceError::new(
                crate::error::ErrorType::UpstreamUnavailable,
                format!(
                    "model {:?} is listed by no upstream reached so far, and some are not reachable yet",
                    crate::truncate(model, 64)
                ),
            )
            .retry_after(std::time::Duration::from_secs(5))),
        }
    }

    /// [`Self::run`], answered in the engine's terms (what the cache keeps). The tenant's model
    /// allow-list and queue quotas are checked here, once per unit of work, and its tokens
    /// debited when it ends.
    async fn run_completion(
        &self,
        call: Box<Call>,
        caller: &Caller,
    ) -> Result<Completion, ServiceError> {
        let tenants = self.tenants();
        let label = tenants.label(&caller.tenant);
        let figures = self.engine.metrics().tenants().of(&label);
        let _in_system = figures.entered();
        let mut tokens = None;
        let result = self.run_as(call, caller, &tenants, &mut tokens).await;
        let batch = is_batch(caller, tenants.spec(&caller.tenant));
        let class = if batch { "batch" } else { "interactive" };
        let (outcome, wait) = match &result {
            Ok(done) => {
                figures.served(class, done.meta.processing);
                ("ok", Some(done.meta.queue_wait))
            }
            Err(e) => (e.kind.as_str(), None),
        };
        figures.request(class, outcome, wait, tokens);
        result
    }

    /// [`Self::run_completion`] within `caller`'s tenant's policy; `tokens`: what it used.
    async fn run_as(
        &self,
        call: Box<Call>,
        caller: &Caller,
        tenants: &TenantPolicy,
        tokens: &mut Option<u64>,
    ) -> Result<Completion, ServiceError> {
        let spec = tenants.spec(&caller.tenant);
        let model = call.payload().model();
        self.look_for(model).await?;
        if let Some(allowed) = spec.and_then(|s| s.models.as_ref())
            && !allowed.iter().any(|m| m == model)
        {
            return Err(ServiceError::new(
                crate::error::ErrorType::Forbidden,
                format!(
                    "this tenant may not use model {:?} (`tenants.models`)",
                    crate::truncate(model, 64)
                ),
            ));
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| Some((c, c.key(call.payload(), caller.tenant.as_str())?)));
        if let Some((cache, key)) = &cached {
            let hit = cache.get(key, call.payload(), &caller.request_id);
            self.engine
                .metrics()
                .cache()
                .lookup(call.payload().model(), hit.is_some());
            if let Some(done) = hit {
                return Ok(done);
            }
        }
        let max_tokens = max_tokens(call.payload());
        // Only a stream can tell its client how its wait goes.
        let progress = caller.progress.clone().filter(|_| call.streams());
        // The job goes to the engine in this block: while the request waits, this future
        // holds the handle of its answer, not the job.
        let (waiting, _live, _held) = {
            let mut job = job_of(call, caller.request_id.clone());
            job.owner = Some(caller.tenant.shared());
            job.weight = spec.map_or(1, |s| s.weight.max(1));
            job.progress = progress;
            if is_batch(caller, spec) {
                job.class = im_engine::Class::Batch;
            }
            let live = caller
                .key
                .map(|k| Live::enter(&self.shared.live, &caller.request_id, k));
            let held = self
                .shared
                .meters
                .hold(&caller.tenant, spec, job.payload_bytes())?;
            (self.batcher.submit(job), live, held)
        };
        let done = waiting.await;
        *tokens = done.as_ref().ok().and_then(tokens_used).or(max_tokens);
        if let Some(t) = *tokens {
            self.shared.meters.debit_tokens(&caller.tenant, spec, t);
        }
        let done = done?;
        if let Some((cache, key)) = cached {
            cache.put(key, &done);
            self.engine.metrics().cache().bytes(cache.bytes());
        }
        Ok(done)
    }
}

/// The job `call` stands for, as request `id`. A function of the box, not `(*call).into_job`
/// in place: a box moved out of is freed only when its binding ends, which in the future that
/// waits for the job's answer is after the wait.
#[allow(
    clippy::boxed_local,
    reason = "the box is what is freed here, before the wait"
)]
fn job_of(call: Box<Call>, id: String) -> im_engine::Job {
    (*call).into_job(id)
}

/// A request in the system, by the key it came with; forgotten when it leaves.
struct Live<'a> {
    map: &'a crate::DashMap<String, KeyId>,
    /// The request's id, borrowed from its caller (the map's key is the one copy).
    id: &'a str,
}

impl<'a> Live<'a> {
    fn enter(map: &'a crate::DashMap<String, KeyId>, id: &'a str, key: KeyId) -> Live<'a> {
        map.insert(id.to_owned(), key);
        Live { map, id }
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.map.remove(self.id);
    }
}

/// The tokens an answer says it used (`usage.total_tokens`), when it says.
fn tokens_used(done: &Completion) -> Option<u64> {
    match &done.output {
        im_engine::Output::Chat(c) => c.raw.total_tokens(),
        im_engine::Output::Json(j) => j.raw.total_tokens(),
        _ => None,
    }
}

/// Whether `caller`'s work is batch work: it asked (`X-Im-Priority: batch`, a job), or its
/// tenant's class is batch.
fn is_batch(caller: &Caller, spec: Option<&crate::TenantSpec>) -> bool {
    caller.batch || spec.and_then(|s| s.class.as_deref()) == Some("batch")
}

/// The most tokens a request asked for (`max_tokens`), what a stream without usage is debited.
fn max_tokens(payload: &im_engine::Payload) -> Option<u64> {
    match payload {
        im_engine::Payload::Chat { req, .. } => req.max_tokens.map(u64::from),
        im_engine::Payload::Json { body, .. } => body.get("max_tokens").and_then(Value::as_u64),
        _ => None,
    }
}

/// `prefix` then `n` in at least six hex digits, into one allocation (`format!` cost 0.7 % of a
/// proxied request's CPU).
fn request_id(prefix: &str, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(6);
    let mut id = String::with_capacity(prefix.len() + digits as usize);
    id.push_str(prefix);
    for at in (0..digits).rev() {
        id.push(char::from(HEX[((n >> (at * 4)) & 0xf) as usize]));
    }
    id
}

#[cfg(test)]
mod request_ids {
    #[test]
    fn read_as_the_prefix_and_the_count_in_hex_the_count_at_least_six_digits() {
        for (prefix, n) in [
            (0, 0),
            (0x05e9_27a5, 1),
            (u32::MAX, 0xff_ffff),
            (7, 0x100_0000),
            (0xdead_beef, u64::MAX),
        ] {
            assert_eq!(
                super::request_id(&format!("im-{prefix:08x}-"), n),
                format!("im-{prefix:08x}-{n:06x}")
            );
        }
    }
}
