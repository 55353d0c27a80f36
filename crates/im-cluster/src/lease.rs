//! The scheduler lease: which replica schedules the fleet, and the fencing token it writes with.
//!
//! One key holds the lease, `"<epoch> <replica> <url>"`, with an expiry; one counter holds the
//! epoch. A replica takes the lease only when the key is absent, and taking it increments the
//! epoch in the same script, so every holder has an epoch larger than every holder before it:
//! the fencing token. The holder renews the expiry while the value is still its own, and gives
//! up (the process stops, see [`Lease::run`]) when it cannot renew well before the expiry, so
//! that by the time another replica can take the lease the old holder has stopped. Where a holder
//! was paused (a long GC-like stall, a frozen VM) and resumes after losing the lease, its writes
//! carry a token the store and the upstreams refuse: the job store checks it in Redis, the
//! simulated LocalAI checks it on every call (`x-im-fence`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The key names of one im cluster (all under one prefix, so several can share a Redis).
#[derive(Clone, Debug)]
pub struct Keys {
    /// `<prefix>:scheduler:lease`.
    pub lease: String,
    /// `<prefix>:scheduler:epoch`.
    pub epoch: String,
    /// The prefix, for the job store's keys.
    pub prefix: String,
}

impl Keys {
    /// The keys under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            lease: format!("{prefix}:scheduler:lease"),
            epoch: format!("{prefix}:scheduler:epoch"),
            prefix: prefix.to_owned(),
        }
    }
}

/// Who schedules, as a replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The fencing token: larger for every new holder.
    pub epoch: u64,
    /// The holder's replica id.
    pub replica: String,
    /// Where the holder serves HTTP (what other replicas forward to).
    pub url: String,
}

impl Holder {
    fn parse(value: &str) -> Option<Holder> {
        let mut parts = value.splitn(3, ' ');
        Some(Holder {
            epoch: parts.next()?.parse().ok()?,
            replica: parts.next()?.to_owned(),
            url: parts.next()?.to_owned(),
        })
    }

    fn value(&self) -> String {
        format!("{} {} {}", self.epoch, self.replica, self.url)
    }
}

/// A replica's view of the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (starting, or Redis unreachable).
    Unknown,
    /// This replica holds the lease: it schedules.
    Scheduler(Holder),
    /// Another replica holds it.
    Follower(Holder),
}

impl Role {
    /// The holder, if one is known.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Role::Unknown => None,
            Role::Scheduler(h) | Role::Follower(h) => Some(h),
        }
    }
}

/// How a replica takes part.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// The key prefix.
    pub prefix: String,
    /// This replica's id (unique per process: a restarted replica is a new one).
    pub replica: String,
    /// Where this replica serves HTTP, as other replicas reach it.
    pub url: String,
    /// How long a lease lives without renewal: the longest a fleet waits for a dead scheduler.
    pub ttl: Duration,
}

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis failed or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The lease value was not ours to parse.
    #[error("the lease key holds {0:?}, not `<epoch> <replica> <url>`")]
    Garbled(String),
}

const ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
local e = redis.call('INCR', KEYS[2])
v = e .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Raise the holder's epoch above one a gate has seen (Redis lost the counter: a flush, a lost
/// volume, a lagging replica promoted), only while the lease is still the caller's: a paused
/// former holder can never push its token past the real one.
const RAISE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[2])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
local v = e .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
return v";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// One replica's handle on the lease: take it, renew it, read it. Each call is one round trip on
/// a blocking connection (the lease runs on its own thread, never on the async runtime, so a
/// stalled runtime cannot stop it from renewing or giving up in time).
pub struct Lease {
    client: redis::Client,
    conn: Option<redis::Connection>,
    keys: Keys,
    settings: LeaseSettings,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("replica", &self.settings.replica)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A handle for `settings` (no connection is made yet).
    pub fn new(settings: LeaseSettings) -> Result<Lease, LeaseError> {
        Ok(Lease {
            client: redis::Client::open(settings.redis_url.as_str())?,
            conn: None,
            keys: Keys::new(&settings.prefix),
            settings,
        })
    }

    /// The operation timeout: a sixth of the lease, so two failed renewals still end before it.
    fn timeout(&self) -> Duration {
        (self.settings.ttl / 6).max(Duration::from_millis(50))
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, LeaseError> {
        if self.conn.is_none() {
            let c = self.client.get_connection_with_timeout(self.timeout())?;
            c.set_read_timeout(Some(self.timeout()))?;
            c.set_write_timeout(Some(self.timeout()))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Run `f` on the connection; a failed connection is dropped (the next call reconnects).
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, LeaseError> {
        let result = f(self.conn()?);
        if result.is_err() {
            self.conn = None;
        }
        Ok(result?)
    }

    /// Take the lease if nobody holds it; who holds it now either way.
    pub fn acquire(&mut self) -> Result<Holder, LeaseError> {
        let me = format!("{} {}", self.settings.replica, self.settings.url);
        let ttl = self.settings.ttl.as_millis() as u64;
        let keys = self.keys.clone();
        let value: String = self.with(|c| {
            redis::Script::new(ACQUIRE)
                .key(&keys.lease)
                .key(&keys.epoch)
                .arg(me)
                .arg(ttl)
                .invoke(c)
        })?;
        Holder::parse(&value).ok_or(LeaseError::Garbled(value))
    }

    /// Extend `held`'s lease; false if it is not held by `held` any more.
    pub fn renew(&mut self, held: &Holder) -> Result<bool, LeaseError> {
        let ttl = self.settings.ttl.as_millis() as u64;
        let key = self.keys.lease.clone();
        let renewed: i64 = self.with(|c| {
            redis::Script::new(RENEW)
                .key(key)
                .arg(held.value())
                .arg(ttl)
                .invoke(c)
        })?;
        Ok(renewed == 1)
    }

    /// Raise `held`'s epoch above `floor` if the lease is still `held`'s: the new holder value,
    /// or `None` when the lease is someone else's (or nobody's).
    pub fn raise(&mut self, held: &Holder, floor: u64) -> Result<Option<Holder>, LeaseError> {
        let me = format!("{} {}", self.settings.replica, self.settings.url);
        let ttl = self.settings.ttl.as_millis() as u64;
        let keys = self.keys.clone();
        let value: Option<String> = self.with(|c| {
            redis::Script::new(RAISE)
                .key(&keys.lease)
                .key(&keys.epoch)
                .arg(held.value())
                .arg(floor)
                .arg(me)
                .arg(ttl)
                .invoke(c)
        })?;
        match value {
            None => Ok(None),
            Some(v) => Holder::parse(&v).map(Some).ok_or(LeaseError::Garbled(v)),
        }
    }

    /// Give `held`'s lease up at once (a clean shutdown), so another replica need not wait for it
    /// to expire.
    pub fn release(&mut self, held: &Holder) -> Result<(), LeaseError> {
        let key = self.keys.lease.clone();
        let _: i64 = self.with(|c| {
            redis::Script::new(RELEASE)
                .key(key)
                .arg(held.value())
                .invoke(c)
        })?;
        Ok(())
    }

    /// Whether `holder` is this replica.
    pub fn is_me(&self, holder: &Holder) -> bool {
        holder.replica == self.settings.replica
    }

    /// Take part until the process ends: every third of the lease, renew it (as the holder) or
    /// try to take it (as a follower), publishing the role on `role`. On taking it, `fence` gets
    /// the new epoch and `promote` runs before the role says so. Between ticks it waits for
    /// `fence`'s raise requests (a gate has seen a higher epoch: Redis forgot the counter) and
    /// raises the epoch above it while the lease is its own. A holder that cannot renew (the lease is
    /// someone else's, or Redis did not confirm for two thirds of the lease) calls `lost`, which
    /// must stop the process: a scheduler never goes back to following, so nothing it started can
    /// outlive its lease. Returns only when `stop` is set (after releasing a held lease).
    pub fn run(
        mut self,
        role: watch::Sender<Role>,
        fence: Fence,
        promote: impl FnOnce(&Holder),
        lost: impl FnOnce(&str),
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let tick = self.settings.ttl / 3;
        // A holder gives up once this long has passed since the last renewal Redis confirmed
        // (counted from when it was sent): with operations bounded by a sixth of the lease, it has
        // stopped before the key, renewed at most then, can expire.
        let give_up_after = self.settings.ttl * 2 / 3;
        let mut promote = Some(promote);
        // The holder, and when its last confirmed renewal (or the acquisition) was sent.
        let mut held: Option<(Holder, Instant)> = None;
        loop {
            if stop.load(Ordering::Acquire) {
                if let Some((h, _)) = &held {
                    let _ = self.release(h);
                }
                return;
            }
            let sent = Instant::now();
            let next_at = match &mut held {
                Some((holder, renewed)) => match self.renew(holder) {
                    Ok(true) => {
                        *renewed = sent;
                        sent + tick
                    }
                    Ok(false) => {
                        return lost(&format!(
                            "the scheduler lease (epoch {}) is held by another replica",
                            holder.epoch
                        ));
                    }
                    Err(e) if renewed.elapsed() >= give_up_after => {
                        return lost(&format!(
                            "the scheduler lease (epoch {}) could not be renewed for {:?}: {e}",
                            holder.epoch,
                            renewed.elapsed()
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the scheduler lease failed; retrying");
                        // Try again by the give-up time at the latest.
                        (sent + tick).min(*renewed + give_up_after)
                    }
                },
                None => {
                    match self.acquire() {
                        Ok(holder) if self.is_me(&holder) => {
                            tracing::info!(
                                epoch = holder.epoch,
                                "this replica schedules now (took the lease)"
                            );
                            fence.set(holder.epoch);
                            if let Some(p) = promote.take() {
                                p(&holder);
                            }
                            role.send_replace(Role::Scheduler(holder.clone()));
                            held = Some((holder, sent));
                        }
                        Ok(holder) => {
                            role.send_if_modified(|r| replace(r, Role::Follower(holder)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the scheduler lease failed");
                            role.send_if_modified(|r| replace(r, Role::Unknown));
                        }
                    }
                    sent + tick
                }
            };
            loop {
                let left = next_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Some(floor) = fence.wait_raise(left) else {
                    break;
                };
                let Some((holder, renewed)) = &mut held else {
                    continue;
                };
                if floor <= holder.epoch {
                    // Asked for before the last raise landed: that raise already went above it.
                    continue;
                }
                let sent = Instant::now();
                match self.raise(holder, floor) {
                    Ok(Some(raised)) => {
                        tracing::warn!(
                            from = holder.epoch,
                            to = raised.epoch,
                            gate_saw = floor,
                            "a fencing gate has seen a higher epoch than Redis holds (Redis lost data?): raised this scheduler's epoch above it"
                        );
                        fence.set(raised.epoch);
                        role.send_replace(Role::Scheduler(raised.clone()));
                        *holder = raised;
                        *renewed = sent;
                    }
                    Ok(None) => {
                        return lost(&format!(
                            "the scheduler lease (epoch {}) is no longer this replica's (a gate has seen epoch {floor})",
                            holder.epoch
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "raising the fencing epoch failed; retrying at the next tick");
                    }
                }
            }
        }
    }
}

/// Put `next` in `slot`; whether it changed.
fn replace(slot: &mut Role, next: Role) -> bool {
    let changed = *slot != next;
    *slot = next;
    changed
}

/// The fencing token this replica's upstream calls carry (`x-im-fence`): 0 until it schedules;
/// signed with the cluster's secret when one is set. A gate that refuses a call tells the highest
/// epoch it has seen ([`Fence::saw_highest`]); the lease thread then raises this replica's epoch
/// above it, if the lease is still its own ([`Lease::run`]).
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug, Default)]
struct FenceState {
    epoch: AtomicU64,
    secret: Option<im_edge::fence::FenceSecret>,
    /// The token as sent, for `epoch` (signing once per epoch, not per call).
    token: std::sync::RwLock<(u64, String)>,
    /// The highest epoch a gate reported above ours, waiting for the lease thread.
    wanted: std::sync::Mutex<u64>,
    raise: std::sync::Condvar,
}

impl Fence {
    /// The header upstream calls carry it in.
    pub const HEADER: &'static str = im_edge::fence::HEADER;

    /// A fence signing its tokens with `secret` (unsigned without one).
    pub fn new(secret: Option<im_edge::fence::FenceSecret>) -> Fence {
        Fence(Arc::new(FenceState {
            secret,
            ..FenceState::default()
        }))
    }

    /// The epoch, 0 when this replica does not schedule.
    pub fn get(&self) -> u64 {
        self.0.epoch.load(Ordering::Acquire)
    }

    /// Set the epoch (on taking the lease, or raising it).
    pub fn set(&self, epoch: u64) {
        self.0.epoch.store(epoch, Ordering::Release);
    }

    /// The token to send, `None` while this replica does not schedule.
    pub fn token(&self) -> Option<String> {
        let epoch = self.get();
        if epoch == 0 {
            return None;
        }
        {
            let cached = self.0.token.read().unwrap_or_else(|p| p.into_inner());
            if cached.0 == epoch {
                return Some(cached.1.clone());
            }
        }
        let token = match &self.0.secret {
            Some(s) => s.sign(epoch),
            None => epoch.to_string(),
        };
        *self.0.token.write().unwrap_or_else(|p| p.into_inner()) = (epoch, token.clone());
        Some(token)
    }

    /// A gate refused a call and has seen `highest`: when that is above this replica's epoch,
    /// ask the lease thread to raise the epoch above it. A gate passes a token equal to the
    /// highest it has seen, so a refusal naming this replica's own epoch refused a call sent with
    /// an older token (in flight while the epoch was raised) and needs no raise: raising again
    /// would refuse the calls in flight with the current token, and under load each raise would
    /// ask for the next.
    pub fn saw_highest(&self, highest: u64) {
        let epoch = self.get();
        if epoch == 0 || highest <= epoch {
            return;
        }
        let mut wanted = self.0.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if highest > *wanted || *wanted == 0 {
            *wanted = highest.max(*wanted);
            self.0.raise.notify_all();
        }
    }

    /// Wait at most `timeout` for a raise request; the highest epoch to go above, if one came.
    fn wait_raise(&self, timeout: Duration) -> Option<u64> {
        let guard = self.0.wanted.lock().unwrap_or_else(|p| p.into_inner());
        let (mut wanted, _) = self
            .0
            .raise
            .wait_timeout_while(guard, timeout, |w| *w == 0)
            .unwrap_or_else(|p| p.into_inner());
        let out = (*wanted > 0).then_some(*wanted);
        *wanted = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_naming_this_replicas_own_epoch_asks_for_no_raise() {
        let fence = Fence::default();
        fence.saw_highest(9);
        assert_eq!(fence.wait_raise(Duration::ZERO), None, "not scheduling");
        fence.set(7);
        fence.saw_highest(6);
        assert_eq!(fence.wait_raise(Duration::ZERO), None, "a gate behind us");
        fence.saw_highest(7);
        assert_eq!(
            fence.wait_raise(Duration::ZERO),
            None,
            "a call sent before our last raise, refused because of it"
        );
        fence.saw_highest(8);
        fence.saw_highest(12);
        assert_eq!(
            fence.wait_raise(Duration::ZERO),
            Some(12),
            "the highest above us"
        );
        assert_eq!(fence.wait_raise(Duration::ZERO), None, "asked once");
    }
}
