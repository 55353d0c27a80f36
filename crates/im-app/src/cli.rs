//! The command-line arguments both binaries share, and the one place they are applied on top of
//! the configuration file.

use std::path::PathBuf;

use anyhow::Context;

use crate::build::Simulate;
use crate::config::ImConfig;

/// Arguments of `im-http` and `im-mcp` alike (flatten into a binary's own `Parser`).
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// TOML configuration file (see deploy/im.example.toml).
    #[arg(long, env = "IM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "IM_LISTEN")]
    pub listen: Option<String>,
    /// Upstream base URL(s), comma-separated (default http://localhost:8080).
    #[arg(long = "upstream", env = "LOCALAI_URL", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// API keys clients must send, comma-separated (spaces around them are ignored).
    #[arg(
        long,
        env = "IM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Start an in-process simulated LocalAI and serve the full API against it.
    #[arg(long, env = "IM_SIMULATE")]
    pub simulate: bool,
    /// Time scale of the simulated LocalAI (1.0: real load and service times).
    #[arg(long, env = "IM_SIM_TIME_SCALE", default_value_t = 0.1)]
    pub sim_time_scale: f64,
    /// Log format: text or json.
    #[arg(long, env = "IM_LOG_FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
    /// Export traces to this OTLP/HTTP endpoint (e.g. http://localhost:4318/v1/traces).
    #[arg(long, env = "IM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Run as one of several replicas sharing this Redis (e.g. redis://redis:6379/0).
    #[arg(long, env = "IM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where the other replicas reach this one (default: http://HOSTNAME:PORT, the port of --listen).
    #[arg(long, env = "IM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The cluster's shared secret: signs the fencing token every upstream call of the scheduler
    /// carries (the same secret every `im-fence` gate is given) and proves replicas to each other.
    #[arg(long, env = "IM_FENCE_SECRET", hide_env_values = true)]
    pub fence_secret: Option<String>,
    /// A file holding the cluster's shared secret (a Docker or Kubernetes secret mounted as a
    /// file), instead of `--fence-secret`.
    #[arg(long, env = "IM_FENCE_SECRET_FILE", conflicts_with = "fence_secret")]
    pub fence_secret_file: Option<PathBuf>,
    /// Where durable jobs are kept (`jobs.dir`; default: `$XDG_DATA_HOME/im`).
    #[arg(long, env = "IM_JOBS_DIR")]
    pub jobs_dir: Option<String>,
    /// The runtime's worker threads. One by default, and then tokio's current-thread scheduler
    /// runs every task on the main thread: every request passes the scheduler's one task, so a
    /// second worker adds a cross-thread wake-up to each hop and pays for itself only once im's
    /// own work fills a core (blocking work, the job store, runs on its own pool either way).
    #[arg(long, env = "IM_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// Override any config field: --set bounds.max_batch=16 --set policy=strict (repeatable).
    #[arg(long = "set", env = "IM_SET", value_delimiter = ';')]
    pub sets: Vec<String>,
}

impl CommonArgs {
    /// The configuration: the file (or the defaults), then the flags and environment, then the
    /// `--set` overrides. Validated once, by [`crate::build()`].
    pub fn load(&self) -> anyhow::Result<ImConfig> {
        let mut cfg = match &self.config {
            Some(p) => ImConfig::from_toml(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )?,
            None => ImConfig::default(),
        };
        if let Some(l) = &self.listen {
            cfg.listen = l.clone();
        }
        if !self.upstreams.is_empty() {
            cfg.upstreams = self.upstreams.iter().map(|u| u.as_str().into()).collect();
        }
        let keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if !keys.is_empty() {
            cfg.api_keys = keys;
        }
        if let Some(f) = &self.log_format {
            cfg.log_format = *f;
        }
        if let Some(e) = &self.otlp_endpoint {
            cfg.tracing.otlp_endpoint = Some(e.clone());
        }
        if let Some(u) = &self.redis_url {
            cfg.cluster.redis_url = Some(u.clone());
        }
        if let Some(u) = &self.advertise_url {
            cfg.cluster.advertise_url = Some(u.clone());
        }
        if let Some(d) = &self.jobs_dir {
            cfg.jobs.dir = Some(d.clone());
        }
        if let Some(s) = &self.fence_secret {
            cfg.cluster.fence_secret = Some(s.clone());
        }
        if let Some(p) = &self.fence_secret_file {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the fence secret from {}", p.display()))?;
            cfg.cluster.fence_secret = Some(text.trim().to_owned());
        }
        Ok(cfg.with_overrides(&self.sets)?)
    }

    /// The embedded simulator, when `--simulate` asks for it.
    pub fn simulate(&self) -> Option<Simulate> {
        self.simulate.then_some(Simulate {
            time_scale: self.sim_time_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::CommonArgs;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn the_runtime_has_one_worker_thread_unless_asked_for_more() {
        let default = Args::try_parse_from(["im"]).expect("no flags");
        assert_eq!(default.common.worker_threads, 1);
        let four = Args::try_parse_from(["im", "--worker-threads", "4"]).expect("4 workers");
        assert_eq!(four.common.worker_threads, 4);
        let none = Args::try_parse_from(["im", "--worker-threads", "0"]).err();
        let message = none.expect("0 workers is refused").to_string();
        assert!(message.contains("--worker-threads"), "{message}");
    }
}
