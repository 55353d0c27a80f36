//! Where jobs live: the [`JobStore`] trait (the distributed mode puts it in Redis) and the
//! embedded [`RedbStore`], a single file written with ACID transactions, plus a directory for
//! large results.
//!
//! Why redb: it is pure Rust (no C compiler, no SQLite build in every clean build of a 2-core CI
//! machine), crash-safe by default (copy-on-write B-trees, a commit is durable when it returns),
//! and the store needs only keyed records, which is all redb is. SQLite would bring SQL we do not
//! need.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::job::Job;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("job store: {0}")]
    Db(String),
    /// A record did not decode (written by an incompatible version).
    #[error("job store: a record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// Result files.
    #[error("job store: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What the job runner needs from a store. Every method is one transaction.
pub trait JobStore: Send + Sync + 'static {
    /// Insert or replace a job.
    fn put(&self, job: &Job) -> Result<(), StoreError>;
    /// A job by id.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// Every job (for recovery after a restart only: listings and the sweep read indexes).
    fn all(&self) -> Result<Vec<Job>, StoreError>;
    /// A page of `owner`'s jobs (every owner's when `None`), newest first, those after
    /// `cursor` ([`Job::cursor`] of the last one of the previous page), at most `limit`:
    /// read through an index by owner, so it reads the page, not the store.
    fn page(
        &self,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;
    /// How many jobs `owner` has stored, and their bytes ([`Job::footprint`]).
    fn usage(&self, owner: &str) -> Result<(usize, u64), StoreError>;
    /// Final jobs finished before `before_ms`, oldest first, at most `limit` (the retention
    /// sweep reads these, not the store).
    fn finished_before(&self, before_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// Remove a job and its idempotency entry.
    fn remove(&self, job: &Job) -> Result<(), StoreError>;
    /// Insert `job` unless its owner already has a job under the same idempotency key; the job
    /// that holds the key (the new one, or the earlier one).
    fn insert_idempotent(&self, job: &Job) -> Result<Job, StoreError>;
    /// Record an inbound webhook's message id; false if it was seen already (a replay).
    fn first_sighting(&self, message_id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Whether an inbound webhook's message id was recorded (without recording it).
    fn sighted(&self, message_id: &str) -> Result<bool, StoreError>;
    /// Forget inbound message ids recorded before `before_ms`.
    fn forget_sightings(&self, before_ms: i64) -> Result<(), StoreError>;
    /// Disable a callback URL (its receiver answered 410 Gone).
    fn disable_endpoint(&self, url: &str) -> Result<(), StoreError>;
    /// Whether a callback URL was disabled.
    fn endpoint_disabled(&self, url: &str) -> Result<bool, StoreError>;
    /// Keep a result too large or too binary to live in its job, under `name`.
    fn put_result(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The result kept under `name`, if there is one.
    fn result(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `owner \0 cursor` → (): each owner's jobs in creation order.
const BY_OWNER: TableDefinition<&str, ()> = TableDefinition::new("jobs_by_owner");
/// `cursor` → (): every job in creation order.
const BY_TIME: TableDefinition<&str, ()> = TableDefinition::new("jobs_by_time");
/// `finished ms (20 digits) \0 id` → (): final jobs by when they finished.
const FINISHED: TableDefinition<&str, ()> = TableDefinition::new("jobs_finished");
/// owner → (jobs, bytes) stored.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("jobs_usage");
/// `owner \n idempotency key` → job id.
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
/// Inbound webhook message id → when first seen (Unix ms).
const SIGHTINGS: TableDefinition<&str, i64> = TableDefinition::new("webhook_ids");
/// Callback URLs whose receivers answered 410 Gone → when.
const DISABLED: TableDefinition<&str, i64> = TableDefinition::new("disabled_endpoints");

/// The embedded store: `jobs.redb` and a `results/` directory under one data directory.
pub struct RedbStore {
    db: Database,
    results: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

fn idem_key(job: &Job) -> Option<String> {
    job.idempotency_key
        .as_ref()
        .map(|k| format!("{}\n{k}", job.owner))
}

impl RedbStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir.join("results"))?;
        let db = Database::create(dir.join("jobs.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(JOBS)?;
        tx.open_table(BY_OWNER)?;
        tx.open_table(BY_TIME)?;
        tx.open_table(FINISHED)?;
        tx.open_table(USAGE)?;
        tx.open_table(IDEMPOTENCY)?;
        tx.open_table(SIGHTINGS)?;
        tx.open_table(DISABLED)?;
        tx.commit()?;
        Ok(RedbStore {
            db,
            results: dir.join("results"),
        })
    }
}

/// The index entries of a job: by owner, by time, and (once final) by when it finished.
fn owner_key(job: &Job) -> String {
    format!("{}\0{}", job.owner, job.cursor())
}

/// The id at the end of an index key (after its last `.` or NUL).
fn id_of(key: &str) -> &str {
    key.rsplit(['.', '\0']).next().unwrap_or("")
}

fn finished_key(job: &Job) -> Option<String> {
    job.finished_ms
        .filter(|_| job.status.is_final())
        .map(|f| format!("{f:020}\0{}", job.id))
}

impl RedbStore {
    /// Write `job` (replacing `old`, when there was one) with its indexes and its owner's usage,
    /// in `tx`.
    fn write(
        &self,
        tx: &redb::WriteTransaction,
        job: &Job,
        old: Option<&Job>,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job)?;
        tx.open_table(JOBS)?
            .insert(job.id.as_str(), bytes.as_slice())?;
        tx.open_table(BY_OWNER)?
            .insert(owner_key(job).as_str(), ())?;
        tx.open_table(BY_TIME)?.insert(job.cursor().as_str(), ())?;
        let mut finished = tx.open_table(FINISHED)?;
        if let Some(k) = old.and_then(finished_key) {
            finished.remove(k.as_str())?;
        }
        if let Some(k) = finished_key(job) {
            finished.insert(k.as_str(), ())?;
        }
        let mut usage = tx.open_table(USAGE)?;
        let (n, b) = usage.get(job.owner.as_str())?.map_or((0, 0), |v| v.value());
        let (n, b) = match old {
            Some(o) => (
                n,
                (b + job.footprint(bytes.len()))
                    .saturating_sub(o.footprint(serde_json::to_vec(o)?.len())),
            ),
            None => (n + 1, b + job.footprint(bytes.len())),
        };
        usage.insert(job.owner.as_str(), (n, b))?;
        Ok(())
    }

    fn read(
        table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
        id: &str,
    ) -> Result<Option<Job>, StoreError> {
        Ok(table
            .get(id)?
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()?)
    }
}

impl JobStore for RedbStore {
    fn put(&self, job: &Job) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        let old = Self::read(&tx.open_table(JOBS)?, &job.id)?;
        self.write(&tx, job, old.as_ref())?;
        tx.commit()?;
        Ok(())
    }

    fn page(
        &self,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        let ids: Vec<String> = match owner {
            Some(owner) => {
                let index = tx.open_table(BY_OWNER)?;
                let lo = format!("{owner}\0");
                let hi = match cursor {
                    Some(c) => format!("{owner}\0{c}"),
                    None => format!("{owner}\u{1}"),
                };
                index
                    .range(lo.as_str()..hi.as_str())?
                    .rev()
                    .take(limit)
                    .map(|e| e.map(|(k, _)| id_of(k.value()).to_owned()))
                    .collect::<Result<_, _>>()?
            }
            None => {
                let index = tx.open_table(BY_TIME)?;
                let entries: Vec<String> = match cursor {
                    Some(c) => index
                        .range(..c)?
                        .rev()
                        .take(limit)
                        .map(|e| e.map(|(k, _)| k.value().to_owned()))
                        .collect::<Result<_, _>>()?,
                    None => index
                        .iter()?
                        .rev()
                        .take(limit)
                        .map(|e| e.map(|(k, _)| k.value().to_owned()))
                        .collect::<Result<_, _>>()?,
                };
                entries.iter().map(|k| id_of(k).to_owned()).collect()
            }
        };
        for id in ids {
            out.extend(Self::read(&jobs, &id)?);
        }
        Ok(out)
    }

    fn usage(&self, owner: &str) -> Result<(usize, u64), StoreError> {
        let tx = self.db.begin_read()?;
        let (n, b) = tx
            .open_table(USAGE)?
            .get(owner)?
            .map_or((0, 0), |v| v.value());
        Ok((n as usize, b))
    }

    fn finished_before(&self, before_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let hi = format!("{:020}", before_ms.max(0));
        let ids: Vec<String> = tx
            .open_table(FINISHED)?
            .range(..hi.as_str())?
            .take(limit)
            .map(|e| e.map(|(k, _)| id_of(k.value()).to_owned()))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            out.extend(Self::read(&jobs, &id)?);
        }
        Ok(out)
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(v.value())?))
    }

    fn all(&self) -> Result<Vec<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut jobs = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            jobs.push(serde_json::from_slice(v.value())?);
        }
        Ok(jobs)
    }

    fn remove(&self, job: &Job) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        let stored = Self::read(&tx.open_table(JOBS)?, &job.id)?;
        tx.open_table(JOBS)?.remove(job.id.as_str())?;
        if let Some(stored) = &stored {
            tx.open_table(BY_OWNER)?
                .remove(owner_key(stored).as_str())?;
            tx.open_table(BY_TIME)?.remove(stored.cursor().as_str())?;
            if let Some(k) = finished_key(stored) {
                tx.open_table(FINISHED)?.remove(k.as_str())?;
            }
            let mut usage = tx.open_table(USAGE)?;
            let (n, b) = usage
                .get(stored.owner.as_str())?
                .map_or((0, 0), |v| v.value());
            let gone = stored.footprint(serde_json::to_vec(stored)?.len());
            usage.insert(
                stored.owner.as_str(),
                (n.saturating_sub(1), b.saturating_sub(gone)),
            )?;
        }
        if let Some(k) = idem_key(job) {
            tx.open_table(IDEMPOTENCY)?.remove(k.as_str())?;
        }
        tx.commit()?;
        if let Some(crate::job::Stored::File { name, .. }) = &job.result {
            let _ = std::fs::remove_file(self.results.join(name));
        }
        Ok(())
    }

    fn insert_idempotent(&self, job: &Job) -> Result<Job, StoreError> {
        let tx = self.db.begin_write()?;
        if let Some(k) = idem_key(job) {
            let mut idem = tx.open_table(IDEMPOTENCY)?;
            let earlier = idem.get(k.as_str())?.map(|v| v.value().to_owned());
            if let Some(earlier) = earlier {
                let jobs = tx.open_table(JOBS)?;
                if let Some(v) = jobs.get(earlier.as_str())? {
                    return Ok(serde_json::from_slice(v.value())?);
                }
            }
            idem.insert(k.as_str(), job.id.as_str())?;
        }
        self.write(&tx, job, None)?;
        tx.commit()?;
        Ok(job.clone())
    }

    fn first_sighting(&self, message_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let first = {
            let mut seen = tx.open_table(SIGHTINGS)?;
            if seen.get(message_id)?.is_some() {
                false
            } else {
                seen.insert(message_id, now_ms)?;
                true
            }
        };
        tx.commit()?;
        Ok(first)
    }

    fn sighted(&self, message_id: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(SIGHTINGS)?.get(message_id)?.is_some())
    }

    fn disable_endpoint(&self, url: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(DISABLED)?
            .insert(url, crate::runner::now_ms())?;
        tx.commit()?;
        Ok(())
    }

    fn endpoint_disabled(&self, url: &str) -> Result<bool, StoreError> {
        Ok(self.disabled_at(url)?.is_some())
    }

    fn forget_sightings(&self, before_ms: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SIGHTINGS)?
            .retain(|_, seen_ms| seen_ms >= before_ms)?;
        tx.commit()?;
        Ok(())
    }

    fn put_result(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = self.results.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.results.join(name))?;
        Ok(())
    }

    fn result(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.results.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl RedbStore {
    fn disabled_at(&self, url: &str) -> Result<Option<i64>, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(DISABLED)?.get(url)?.map(|v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::job;
    use crate::job::Status;

    #[test]
    fn jobs_survive_reopening_the_store() {
        let scratch = im_testkit::scratch_dir("im-jobs-reopen");
        let dir = scratch.path();
        {
            let store = RedbStore::open(dir).expect("open");
            store.put(&job("a", "k1", None)).expect("put");
            let mut b = job("b", "k1", None);
            b.status = Status::Succeeded;
            store.put(&b).expect("put");
        }
        let store = RedbStore::open(dir).expect("reopen");
        let mut ids: Vec<_> = store
            .all()
            .expect("all")
            .into_iter()
            .map(|j| (j.id, j.status))
            .collect();
        ids.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            ids,
            [
                ("a".into(), Status::Queued),
                ("b".into(), Status::Succeeded)
            ]
        );
    }

    #[test]
    fn the_embedded_store_does_what_every_store_must() {
        let scratch = im_testkit::scratch_dir("im-jobs-conformance");
        let dir = scratch.path();
        crate::conformance::check(&RedbStore::open(dir).expect("open"));
    }
}
