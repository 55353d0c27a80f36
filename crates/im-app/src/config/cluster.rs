//! `[cluster]`: several im replicas on one Redis (the `im-cluster` crate). Off by default: one
//! process with embedded state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterEntry {
    /// `redis://host:port/db`. Absent: one process, embedded state (the default).
    pub redis_url: Option<String>,
    /// The prefix of im's Redis keys (several clusters can share a Redis).
    pub key_prefix: String,
    /// Where other replicas reach this one over HTTP, e.g. `http://10.0.0.7:8080`. Absent:
    /// `http://<hostname>:<listen port>` (a container's hostname resolves on its network).
    pub advertise_url: Option<String>,
    /// Seconds the scheduler lease lives without renewal: a dead scheduler's work moves to another
    /// replica after at most this long.
    pub lease_s: f64,
    /// Seconds a replica holds a client's request while no scheduler answers (a failover), before
    /// it answers 503.
    pub failover_wait_s: f64,
    /// The cluster's shared secret (`IM_FENCE_SECRET`): the scheduler signs its fencing token
    /// with it, every `im-fence` gate holding it accepts only signed tokens, and followers prove
    /// themselves with it to the scheduler's listener. Pass it as a secret, never in the file
    /// of a public repository. Absent: tokens are unsigned (anyone reaching a gate can forge one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_secret: Option<String>,
}

impl ClusterEntry {
    /// The fence secret, when one is set.
    pub fn secret(&self) -> Option<im_edge::fence::FenceSecret> {
        self.fence_secret
            .as_deref()
            .and_then(im_edge::fence::FenceSecret::new)
    }
}

impl Default for ClusterEntry {
    fn default() -> ClusterEntry {
        ClusterEntry {
            redis_url: None,
            key_prefix: "im".into(),
            advertise_url: None,
            lease_s: 5.0,
            failover_wait_s: 30.0,
            fence_secret: None,
        }
    }
}

impl ClusterEntry {
    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("unix://"))
        {
            return Err(invalid(
                "cluster.redis_url",
                "a redis:// URL, e.g. redis://redis:6379/0",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(invalid("cluster.key_prefix", "a non-empty word"));
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") && url.len() > "http://".len())
        {
            return Err(invalid(
                "cluster.advertise_url",
                "an http:// URL other replicas reach this one at",
            ));
        }
        if !(self.lease_s.is_finite() && (0.3..=300.0).contains(&self.lease_s)) {
            return Err(invalid("cluster.lease_s", "seconds, from 0.3 to 300"));
        }
        if !(self.failover_wait_s.is_finite() && self.failover_wait_s >= self.lease_s) {
            return Err(invalid(
                "cluster.failover_wait_s",
                "seconds, at least cluster.lease_s (a failover takes up to one lease)",
            ));
        }
        if self
            .fence_secret
            .as_ref()
            .is_some_and(|s| s.trim().len() < 16)
        {
            return Err(invalid(
                "cluster.fence_secret",
                "at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(())
    }

    /// The lease's lifetime.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_s)
    }

    /// How long a request waits for a scheduler.
    pub fn failover_wait(&self) -> Duration {
        Duration::from_secs_f64(self.failover_wait_s)
    }
}
