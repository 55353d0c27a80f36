//! The job store in Redis: what lets a job outlive the replica that scheduled it.
//!
//! Every write is fenced: it runs in a script that first compares the scheduler epoch in Redis
//! with the token of the replica writing, and refuses (`FENCED`) when a newer scheduler took
//! over. Only the scheduler writes (every job route is forwarded to it), so the fence only ever
//! refuses a scheduler that lost its lease while paused. Reads are plain.
//!
//! Keys under the cluster prefix: `job:<id>` (the job as JSON), `jobs` (the set of ids),
//! `owned:<owner>` and `by_time` (each job's cursor in creation order, sorted sets read by
//! range), `finished` (final jobs by when they finished), `usage:<owner>` (jobs and bytes),
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

    /// The commands that index `job` (replacing `old`'s entries), and its owner's usage.
    fn index(&self, job: &Job, old: Option<&Job>) -> Result<(), StoreError> {
        let owned = self.key("owned", &job.owner);
        let by_time = self.set_key("by_time");
        let finished = self.set_key("finished");
        let usage = self.key("usage", &job.owner);
        let cursor = job.cursor();
        let size =
            |j: &Job| -> Result<u64, StoreError> { Ok(j.footprint(serde_json::to_vec(j)?.len())) };
        let grown = size(job)? as i64 - old.map(size).transpose()?.unwrap_or(0) as i64;
        let (grown, added) = (grown.to_string(), if old.is_some() { "0" } else { "1" });
        let finished_at = job
            .finished_ms
            .filter(|_| job.status.is_final())
            .map(|f| f.to_string());
        let mut commands: Vec<Vec<&[u8]>> = vec![
            vec![b"ZADD", owned.as_bytes(), b"0", cursor.as_bytes()],
            vec![b"ZADD", by_time.as_bytes(), b"0", cursor.as_bytes()],
            vec![b"HINCRBY", usage.as_bytes(), b"n", added.as_bytes()],
            vec![b"HINCRBY", usage.as_bytes(), b"bytes", grown.as_bytes()],
            vec![b"ZREM", finished.as_bytes(), job.id.as_bytes()],
        ];
        if let Some(at) = &finished_at {
            commands.push(vec![
                b"ZADD",
                finished.as_bytes(),
                at.as_bytes(),
                job.id.as_bytes(),
            ]);
        }
        let refs: Vec<&[&[u8]]> = commands.iter().map(Vec::as_slice).collect();
        let _: redis::Value = self.fenced(&refs)?;
        Ok(())
    }

    /// The jobs of `ids`, in that order (an id without its job is skipped).
    fn jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key("job", id)).collect();
        let raws: Vec<Option<Vec<u8>>> = self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        raws.into_iter()
            .flatten()
            .map(|raw| Ok(serde_json::from_slice(&raw)?))
            .collect()
    }

    fn idem_key(&self, job: &Job) -> Option<String> {
        job.idempotency_key
            .as_ref()
            .map(|k| self.key("idem", &format!("{}\n{k}", job.owner)))
    }
}

impl JobStore for RedisJobStore {
    fn put(&self, job: &Job) -> Result<(), StoreError> {
        let old = self.get(&job.id)?;
        let json = serde_json::to_vec(job)?;
        let (key, ids) = (self.key("job", &job.id), self.set_key("jobs"));
        let _: i64 = self.fenced(&[
            &[b"SADD", ids.as_bytes(), job.id.as_bytes()],
            &[b"SET", key.as_bytes(), &json],
            &[b"EXISTS", key.as_bytes()],
        ])?;
        self.index(job, old.as_ref())
    }

    fn page(
        &self,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let index = owner.map_or_else(|| self.set_key("by_time"), |o| self.key("owned", o));
        let max = cursor.map_or_else(|| "+".to_owned(), |c| format!("({c}"));
        let cursors: Vec<String> = self.with(|c| {
            redis::cmd("ZREVRANGEBYLEX")
                .arg(&index)
                .arg(&max)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)
        })?;
        let ids: Vec<String> = cursors
            .iter()
            .map(|c| c.rsplit('.').next().unwrap_or("").to_owned())
            .collect();
        self.jobs(&ids)
    }

    fn usage(&self, owner: &str) -> Result<(usize, u64), StoreError> {
        let key = self.key("usage", owner);
        let (n, bytes): (Option<i64>, Option<i64>) =
            self.with(|c| redis::cmd("HMGET").arg(&key).arg("n").arg("bytes").query(c))?;
        Ok((
            n.unwrap_or(0).max(0) as usize,
            bytes.unwrap_or(0).max(0) as u64,
        ))
    }

    fn finished_before(&self, before_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let key = self.set_key("finished");
        let ids: Vec<String> = self.with(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(format!("({before_ms}"))
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)
        })?;
        self.jobs(&ids)
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
        if let Some(stored) = self.get(&job.id)? {
            let size = stored.footprint(serde_json::to_vec(&stored)?.len());
            let (owned, by_time) = (self.key("owned", &stored.owner), self.set_key("by_time"));
            let (finished, usage) = (self.set_key("finished"), self.key("usage", &stored.owner));
            let (cursor, shrunk) = (stored.cursor(), format!("-{size}"));
            let _: redis::Value = self.fenced(&[
                &[b"ZREM", owned.as_bytes(), cursor.as_bytes()],
                &[b"ZREM", by_time.as_bytes(), cursor.as_bytes()],
                &[b"ZREM", finished.as_bytes(), stored.id.as_bytes()],
                &[b"HINCRBY", usage.as_bytes(), b"n", b"-1"],
                &[b"HINCRBY", usage.as_bytes(), b"bytes", shrunk.as_bytes()],
            ])?;
        }
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
        let held: Job = serde_json::from_str(&held)?;
        if held.id == job.id {
            self.index(job, None)?;
        }
        Ok(held)
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
