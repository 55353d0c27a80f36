//! Building a running im from its configuration: upstream clients (or the embedded simulator),
//! model discovery, the engine, the HTTP state. Shared by `im-http`, `im-mcp` and the tests.

use std::sync::Arc;

use im_engine::{Engine, LocalAiBackend};
use im_metrics::Metrics;
use localai_client::{ClientConfig, LocalAiClient};
use localai_sim::{SimConfig, SimServer};

use crate::config::{ImConfig, ModelEntry, guess_kinds};
use crate::state::{AppState, HttpSettings};

/// The key printed and accepted in `--simulate` mode when no keys are configured.
pub const DEMO_KEY: &str = "im-demo-key";

/// What `--simulate` starts.
#[derive(Clone, Debug)]
pub struct Simulate {
    /// The simulator's time scale (1.0: LocalAI's real load and service times).
    pub time_scale: f64,
}

/// A built im: the engine, the HTTP state, and the simulator it talks to, if any.
pub struct Built {
    /// The engine.
    pub engine: Engine,
    /// The HTTP state over it.
    pub state: AppState,
    /// The configuration in force (models filled in, simulator URL set).
    pub config: ImConfig,
    /// The embedded simulator, kept alive as long as this value.
    pub sim: Option<SimServer>,
}

/// Why im could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The simulator could not start.
    #[error("starting the simulated LocalAI: {0}")]
    Sim(std::io::Error),
    /// The upstream could not be reached for model discovery.
    #[error("discovering models from {url}: {error} (configure `models` to start without LocalAI)")]
    Discovery {
        /// The upstream.
        url: String,
        /// What went wrong.
        error: String,
    },
}

/// Build im from `config`; `simulate` starts an in-process simulated LocalAI as the upstream.
pub async fn build(mut config: ImConfig, simulate: Option<Simulate>) -> Result<Built, BuildError> {
    config.validate()?;
    let sim = match simulate {
        Some(s) => {
            let sc = SimConfig {
                time_scale: s.time_scale,
                ..SimConfig::default()
            };
            let server = SimServer::start(sc.clone())
                .await
                .map_err(BuildError::Sim)?;
            config.upstreams = vec![server.url()];
            if config.models.is_empty() {
                config.models = sc
                    .models
                    .iter()
                    .map(|m| ModelEntry {
                        name: m.name.clone(),
                        kinds: m.kinds.clone(),
                        max_in_flight: m.slots,
                    })
                    .collect();
            }
            if config.api_keys.is_empty() {
                config.api_keys = vec![DEMO_KEY.to_owned()];
            }
            Some(server)
        }
        None => None,
    };
    let clients = config
        .upstreams
        .iter()
        .map(|u| {
            let mut c = ClientConfig::new(u.clone());
            c.api_key = config.upstream_api_key.clone();
            LocalAiClient::new(c).map_err(|e| BuildError::Discovery {
                url: u.clone(),
                error: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.models.is_empty() {
        let names = clients[0]
            .models()
            .await
            .map_err(|e| BuildError::Discovery {
                url: config.upstreams[0].clone(),
                error: e.to_string(),
            })?;
        config.models = names
            .into_iter()
            .map(|n| ModelEntry {
                kinds: guess_kinds(&n),
                name: n,
                max_in_flight: 1,
            })
            .collect();
        tracing::info!(models = ?config.models.iter().map(|m| (&m.name, &m.kinds)).collect::<Vec<_>>(), "discovered models");
    }
    let core = config.core()?;
    let engine = Engine::start(core, Arc::new(LocalAiBackend::new(clients)), Metrics::new())
        .map_err(|e| crate::config::ConfigError::Invalid {
            field: e.field,
            message: e.message,
        })?;
    if config.api_keys.is_empty() {
        tracing::warn!("no API keys configured: authentication is OFF");
    }
    let settings = HttpSettings {
        api_keys: config.api_keys.clone(),
        body_limit: config.http.body_limit_bytes,
        max_image_side: config.http.max_image_side,
        rate_limit: (config.http.rate_limit_per_s, config.http.rate_limit_burst),
    };
    let state = AppState::new(engine.clone(), &settings);
    Ok(Built {
        engine,
        state,
        config,
        sim,
    })
}

/// The body of a binary's `main`: a multi-threaded runtime, `run`, and the exit code (0; 1 when
/// the runtime cannot start; 2 when `run` fails, after printing the error chain as `name: …`).
pub fn main_with<E: std::fmt::Display>(
    name: &str,
    run: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
