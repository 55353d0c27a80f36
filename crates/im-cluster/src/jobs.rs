//! The job store in Redis: what lets a job outlive the replica that scheduled it.
//!
//! Every write is fenced: it runs in a script that first compares the scheduler epoch in Redis
//! with the token of the replica writing, and refuses (`FENCED`) when a newer scheduler took
//! over. Only the scheduler writes (every job route is forwarded to it), so the fence only ever
//! refuses a scheduler that lost its lease while paused. Reads are plain.
//!
//! Keys under the cluster prefix: `job:<id>` (the job as JSON), `jobs` (the set of ids),
//! `idem:<owner>\n<key>` (an idempotency key's job id), `result:<name>` (large results),
//! `sightings` (inbound message ids by time) and `disabled` (callback URLs answered 410).

use std::sync::Mutex;
use std::time::Duration;

use im_jobs::{Job, JobStore, StoreError};

use crate::lease::{Fence, Keys};

/// Run commands atomically if the epoch is still the caller's. `ARGV[1]` is the caller's token;
/// then for each command its argument count and its arguments. Answers the last command's reply.
const FENCED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED stale fencing token ' .. ARGV[1])
end
local i = 2
local last = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  last = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return last";

/// Insert a job unless its idempotency key names an earlier one; answers the job that holds it.
/// KEYS: epoch, idempotency key (or ''), the job's key, the id set. ARGV: token, id, json, the
/// job key prefix.
const INSERT_IDEMPOTENT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED stale fencing token ' .. ARGV[1])
end
if KEYS[2] ~= '' then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then
    local j = redis.call('GET', ARGV[4] .. earlier)
    if j then return j end
  end
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
return ARGV[3]";

/// Jobs in Redis, written under the scheduler's fencing token.
pub struct RedisJobStore {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    keys: Keys,
    fence: Fence,
    timeout: Duration,
    scripts: Scripts,
}

struct Scripts {
    fenced: redis::Script,
    insert_idempotent: redis::Script,
}

impl std::fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

fn db(e: redis::RedisError) -> StoreError {
    StoreError::Db(format!("redis: {e}"))
}

impl RedisJobStore {
    /// A store at `redis_url` under `prefix`, writing with `fence`'s token.
    pub fn new(redis_url: &str, prefix: &str, fence: Fence) -> Result<RedisJobStore, StoreError> {
        Ok(RedisJobStore {
            client: redis::Client::open(redis_url).map_err(db)?,
            conn: Mutex::new(None),
            keys: Keys::new(prefix),
            fence,
            timeout: Duration::from_secs(5),
            scripts: Scripts {
                fenced: redis::Script::new(FENCED),
                insert_idempotent: redis::Script::new(INSERT_IDEMPOTENT),
            },
        })
    }

    fn key(&self, what: &str, id: &str) -> String {
        format!("{}:{what}:{id}", self.keys.prefix)
    }

    fn set_key(&self, what: &str) -> String {
        format!("{}:{what}", self.keys.prefix)
    }

    /// Run `f` on the connection (made on first use, dropped after a failure so the next call
    /// reconnects). Calls are short round trips; the store is called from the job runner's tasks.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(db)?;
            c.set_read_timeout(Some(self.timeout)).map_err(db)?;
            c.set_write_timeout(Some(self.timeout)).map_err(db)?;
            *slot = Some(c);
        }
        let result = f(slot.as_mut().expect("just set"));
        if result.is_err() {
            *slot = None;
        }
        result.map_err(db)
    }

    /// Run `commands` atomically under the fencing token.
    fn fenced<T: redis::FromRedisValue>(&self, commands: &[&[&[u8]]]) -> Result<T, StoreError> {
        let token = self.fence.get().to_string();
        self.with(|c| {
            let mut inv = self.scripts.fenced.key(&self.keys.epoch);
            inv.arg(&token);
            for command in commands {
                inv.arg(command.len());
                for a in *command {
                    inv.arg(*a);
                }
            }
            inv.invoke(c)
        })
    }

    /// The webhook signing secret every scheduler signs with: the one in Redis, or `generated`
    /// stored there first (by the first scheduler).
    pub fn shared_secret(&self, generated: &str) -> Result<String, StoreError> {
        let key = self.set_key("webhook_secret");
        let _: redis::Value =
            self.fenced(&[&[b"SET", key.as_bytes(), generated.as_bytes(), b"NX"]])?;
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }

    fn idem_key(&self, job: &Job) -> Option<String> {
        job.idempotency_key
            .as_ref()
            .map(|k| self.key("idem", &format!("{}\n{k}", job.owner)))
    }
}

impl JobStore for RedisJobStore {
    fn put(&self, job: &Job) -> Result<(), StoreError> {
        let json = serde_json::to_vec(job)?;
        let (key, ids) = (self.key("job", &job.id), self.set_key("jobs"));
        let _: i64 = self.fenced(&[
            &[b"SADD", ids.as_bytes(), job.id.as_bytes()],
            &[b"SET", key.as_bytes(), &json],
            &[b"EXISTS", key.as_bytes()],
        ])?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let key = self.key("job", id);
        let raw: Option<Vec<u8>> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        Ok(raw.map(|r| serde_json::from_slice(&r)).transpose()?)
    }

    fn all(&self) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<String> =
            self.with(|c| redis::cmd("SMEMBERS").arg(self.set_key("jobs")).query(c))?;
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(256) {
            let keys: Vec<String> = chunk.iter().map(|id| self.key("job", id)).collect();
            let raws: Vec<Option<Vec<u8>>> =
                self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            // An id without its job: a removal or an insertion interrupted half way.
            for raw in raws.into_iter().flatten() {
                jobs.push(serde_json::from_slice(&raw)?);
            }
        }
        Ok(jobs)
    }

    fn remove(&self, job: &Job) -> Result<(), StoreError> {
        let (key, ids) = (self.key("job", &job.id), self.set_key("jobs"));
        let mut doomed = vec![key];
        doomed.extend(self.idem_key(job));
        if let Some(im_jobs::Stored::File { name, .. }) = &job.result {
            doomed.push(self.key("result", name));
        }
        let mut del: Vec<&[u8]> = vec![b"DEL"];
        del.extend(doomed.iter().map(|k| k.as_bytes()));
        let _: i64 = self.fenced(&[&del, &[b"SREM", ids.as_bytes(), job.id.as_bytes()]])?;
        Ok(())
    }

    fn insert_idempotent(&self, job: &Job) -> Result<Job, StoreError> {
        let json = serde_json::to_string(job)?;
        let idem = self.idem_key(job).unwrap_or_default();
        let token = self.fence.get().to_string();
        let held: String = self.with(|c| {
            self.scripts
                .insert_idempotent
                .key(&self.keys.epoch)
                .key(&idem)
                .key(self.key("job", &job.id))
                .key(self.set_key("jobs"))
                .arg(&token)
                .arg(&job.id)
                .arg(&json)
                .arg(self.key("job", ""))
                .invoke(c)
        })?;
        Ok(serde_json::from_str(&held)?)
    }

    fn first_sighting(&self, message_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let (key, at) = (self.set_key("sightings"), now_ms.to_string());
        let added: i64 = self.fenced(&[&[
            b"ZADD",
            key.as_bytes(),
            b"NX",
            at.as_bytes(),
            message_id.as_bytes(),
        ]])?;
        Ok(added == 1)
    }

    fn sighted(&self, message_id: &str) -> Result<bool, StoreError> {
        let key = self.set_key("sightings");
        let at: Option<i64> =
            self.with(|c| redis::cmd("ZSCORE").arg(&key).arg(message_id).query(c))?;
        Ok(at.is_some())
    }

    fn forget_sightings(&self, before_ms: i64) -> Result<(), StoreError> {
        let (key, before) = (self.set_key("sightings"), format!("({before_ms}"));
        let _: i64 = self.fenced(&[&[
            b"ZREMRANGEBYSCORE",
            key.as_bytes(),
            b"-inf",
            before.as_bytes(),
        ]])?;
        Ok(())
    }

    fn disable_endpoint(&self, url: &str) -> Result<(), StoreError> {
        let (key, at) = (self.set_key("disabled"), im_jobs::now_ms().to_string());
        let _: i64 = self.fenced(&[&[b"HSET", key.as_bytes(), url.as_bytes(), at.as_bytes()]])?;
        Ok(())
    }

    fn endpoint_disabled(&self, url: &str) -> Result<bool, StoreError> {
        let key = self.set_key("disabled");
        self.with(|c| redis::cmd("HEXISTS").arg(&key).arg(url).query(c))
    }

    fn put_result(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let key = self.key("result", name);
        let _: i64 = self.fenced(&[
            &[b"SET", key.as_bytes(), bytes],
            &[b"EXISTS", key.as_bytes()],
        ])?;
        Ok(())
    }

    fn result(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key("result", name);
        self.with(|c| redis::cmd("GET").arg(&key).query(c))
    }
}
