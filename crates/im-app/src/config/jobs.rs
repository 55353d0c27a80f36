//! `[jobs]`: durable jobs and webhooks (the `im-jobs` crate).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, MAX_SECONDS, invalid};

/// `[jobs]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsEntry {
    /// Serve `/v1/jobs` and `/webhooks/ingest`.
    pub enabled: bool,
    /// Where the job store (`jobs.redb`) and large results live (`--jobs-dir`, `IM_JOBS_DIR`).
    /// Default: the platform's data directory, `$XDG_DATA_HOME/im` (`~/.local/share/im`), never
    /// the working directory; `/var/lib/im` in the Docker image; under `--simulate`, a fresh
    /// temporary directory.
    pub dir: Option<String>,
    /// Jobs running at once; the rest wait as `queued` (they are queued requests like any other
    /// once they run, so this only bounds how many a burst of jobs puts in the queues).
    pub max_running: usize,
    /// Hours a finished job and its result are kept.
    pub keep_hours: f64,
    /// Results larger than this many KiB (or not JSON) are kept as files.
    pub inline_max_kib: usize,
    /// Let callbacks go to private and loopback addresses (a trusted network only).
    pub allow_private_callbacks: bool,
    /// The `whsec_...` secret outbound webhooks are signed with. Default: generated once and kept
    /// in `<dir>/webhook_secret`, where receivers' operators can read it.
    pub webhook_secret: Option<String>,
    /// The `whsec_...` secret inbound webhooks (`/webhooks/ingest`) must be signed with; absent:
    /// the route is off.
    pub inbound_secret: Option<String>,
    /// Seconds between webhook delivery attempts; after the last, the delivery is abandoned.
    /// Default: the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
    pub retry_schedule_s: Vec<f64>,
    /// Seconds one delivery attempt may take.
    pub delivery_timeout_s: f64,
    /// Seconds an inbound webhook's timestamp may be off.
    pub tolerance_s: i64,
    /// The largest inbound webhook body read, in KiB (the route has no key; its headers are
    /// checked first, and this bounds what an unsigned sender can make im hold).
    pub ingest_body_limit_kib: usize,
    /// Webhook deliveries in progress at once per destination (scheme, host, port): a slow or
    /// dead receiver delays only its own deliveries.
    pub deliveries_per_origin: usize,
    /// Jobs a tenant may have stored at once, unless `tenants[].max_jobs` says otherwise.
    pub max_jobs_per_tenant: usize,
    /// MiB of stored jobs (requests and results) a tenant may hold, unless
    /// `tenants[].max_job_bytes` says otherwise.
    pub max_bytes_per_tenant_mib: u64,
}

impl Default for JobsEntry {
    fn default() -> JobsEntry {
        JobsEntry {
            enabled: true,
            dir: None,
            max_running: 32,
            keep_hours: 24.0,
            inline_max_kib: 64,
            allow_private_callbacks: false,
            deliveries_per_origin: 4,
            max_jobs_per_tenant: 1000,
            max_bytes_per_tenant_mib: 128,
            webhook_secret: None,
            inbound_secret: None,
            retry_schedule_s: im_jobs::JobsConfig::standard_schedule()
                .iter()
                .map(Duration::as_secs_f64)
                .collect(),
            delivery_timeout_s: 10.0,
            tolerance_s: im_jobs::signing::DEFAULT_TOLERANCE_S,
            ingest_body_limit_kib: 1024,
        }
    }
}

fn seconds(field: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v <= MAX_SECONDS) {
        return Err(invalid(
            field,
            "a positive number of seconds, at most a year",
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl JobsEntry {
    /// Check every field (without touching the disk).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.settings(im_jobs::Secret::parse(&im_jobs::Secret::generate()).expect("generated"))
            .map(|_| ())
    }

    /// The job service's settings, signing with `webhook_secret` unless the file gives one.
    pub fn settings(&self, generated: im_jobs::Secret) -> Result<im_jobs::JobsConfig, ConfigError> {
        if !(1..=4096).contains(&self.max_running) {
            return Err(invalid("jobs.max_running", "1 to 4096"));
        }
        if !(1..=1024 * 1024).contains(&self.inline_max_kib) {
            return Err(invalid("jobs.inline_max_kib", "1 to 1048576"));
        }
        if !(1..=64 * 1024).contains(&self.ingest_body_limit_kib) {
            return Err(invalid("jobs.ingest_body_limit_kib", "1 to 65536"));
        }
        if !(1..=256).contains(&self.deliveries_per_origin) {
            return Err(invalid("jobs.deliveries_per_origin", "1 to 256"));
        }
        if !(1..=86_400).contains(&self.tolerance_s) {
            return Err(invalid("jobs.tolerance_s", "1 to 86400 seconds"));
        }
        let secret = |field: &str, s: &str| {
            im_jobs::Secret::parse(s).map_err(|e| invalid(field, e.to_string()))
        };
        let webhook_secret = match &self.webhook_secret {
            Some(s) => secret("jobs.webhook_secret", s)?,
            None => generated,
        };
        let inbound_secret = match &self.inbound_secret {
            Some(s) => Some(secret("jobs.inbound_secret", s)?),
            None => None,
        };
        let retry_schedule = self
            .retry_schedule_s
            .iter()
            .enumerate()
            .map(|(i, s)| seconds(&format!("jobs.retry_schedule_s[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(im_jobs::JobsConfig {
            max_running: self.max_running,
            keep: seconds("jobs.keep_hours", self.keep_hours * 3600.0)?,
            inline_max_bytes: self.inline_max_kib * 1024,
            allow_private_callbacks: self.allow_private_callbacks,
            webhook_secret,
            retry_schedule,
            delivery_timeout: seconds("jobs.delivery_timeout_s", self.delivery_timeout_s)?,
            inbound_secret,
            tolerance_s: self.tolerance_s,
            ingest_body_limit: self.ingest_body_limit_kib * 1024,
            deliveries_per_origin: self.deliveries_per_origin,
        })
    }

    /// A tenant's stored-jobs quota unless its own says otherwise: jobs, bytes.
    pub fn tenant_quota(&self) -> (usize, u64) {
        (
            self.max_jobs_per_tenant,
            self.max_bytes_per_tenant_mib.saturating_mul(1 << 20),
        )
    }

    /// The data directory: `dir`, else (simulating) a fresh temporary one, else the platform's
    /// (`None` when the environment names none).
    pub fn data_dir(&self, simulating: bool) -> Option<PathBuf> {
        match &self.dir {
            Some(d) => Some(PathBuf::from(d)),
            None if simulating => Some(
                std::env::temp_dir().join(format!("im-sim-{}", im_jobs::signing::random_id(""))),
            ),
            None => platform_data_dir(|name| std::env::var_os(name)).map(|d| d.join("im")),
        }
    }
}

/// The user's data directory by the XDG base directory rule: `$XDG_DATA_HOME` when it is an
/// absolute path, else `$HOME/.local/share`.
pub fn platform_data_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    absolute("XDG_DATA_HOME").or_else(|| absolute("HOME").map(|home| home.join(".local/share")))
}

/// The outbound signing secret kept in `dir/webhook_secret`, made on first use.
pub fn stored_secret(dir: &Path) -> std::io::Result<im_jobs::Secret> {
    let path = dir.join("webhook_secret");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(s) = im_jobs::Secret::parse(&text)
    {
        return Ok(s);
    }
    std::fs::create_dir_all(dir)?;
    let text = im_jobs::Secret::generate();
    std::fs::write(&path, &text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(im_jobs::Secret::parse(&text).expect("generated"))
}
