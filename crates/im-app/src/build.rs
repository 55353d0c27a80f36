//! Building a running im from its configuration: upstream clients (or the embedded simulator),
//! model discovery, the engine, the HTTP state.

use std::sync::Arc;

use im_cluster::Fence;
use im_engine::{Engine, LocalAiBackend, ModelEcho};
use im_metrics::Metrics;
use localai_client::{ClientConfig, HeaderHook, LocalAiClient};

use crate::config::{DiscoveryEntry, ImConfig, ModelEntry, guess_kinds};
use im_http_api::AppState;
use im_service::Service;

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
    /// The upstream clients behind the engine's lanes (a reload adds and repoints them).
    pub backend: Arc<LocalAiBackend>,
    /// The service over it (what every frontend runs calls through).
    pub service: Service,
    /// The HTTP state over the service.
    pub state: AppState,
    /// The configuration in force (models filled in, simulator URL set).
    pub config: ImConfig,
    /// The embedded simulator, kept alive as long as this value.
    pub sim: Option<crate::simulate::Simulator>,
    /// The fencing token upstream calls carry in distributed mode (0 until this replica schedules).
    pub fence: Fence,
    /// The fleet's models, read from the upstreams, and the configuration in force.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// A job store made for this run only (simulating without `jobs.dir`), removed with it.
    _scratch: Option<Scratch>,
}

/// A directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    /// `--simulate` in a build without the simulator.
    #[error(
        "this build has no simulated LocalAI (built without the `simulate` feature); build with default features (`cargo run -p im-http -- --simulate`) or point im at a LocalAI with --upstream"
    )]
    NoSimulator,
    /// The job store could not be opened.
    #[error("opening the job store in {dir}: {error} (set `jobs.dir`, or `jobs.enabled = false`)")]
    Jobs {
        /// Its directory.
        dir: String,
        /// What went wrong.
        error: String,
    },
    /// Joining the cluster failed.
    #[error("joining the cluster: {0}")]
    Cluster(String),
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
    // Everything is checked before any network call; the scheduler's part once, by `core()`
    // below, unless discovery must run first (then a placeholder model stands in for it here).
    if config.models.is_empty() {
        config.validate()?;
    } else {
        config.validate_outside_core()?;
    }
    let fence = Fence::new(config.cluster.secret());
    let sim = match &simulate {
        Some(s) => Some(crate::simulate::start(&mut config, s).await?),
        None => None,
    };
    // A `dns+` upstream is a lane per address its name resolves to now.
    let declared = config.upstreams.clone();
    let mut dns = crate::fleet::DnsLanes::default();
    let mut config = dns.expand(&config).await;
    let clients = config
        .upstreams
        .iter()
        .map(|u| upstream_client(&config, u, &fence))
        .collect::<Result<Vec<_>, _>>()?;
    let largest_budget_gib = config
        .upstreams
        .iter()
        .filter_map(|u| u.memory_gib())
        .reduce(f64::max);
    // Every upstream's catalogue, at once; one that does not answer joins when it does.
    let names = config.lane_names();
    let mut set = crate::fleet::read_at_start(&clients, &names, &config, largest_budget_gib).await;
    if !config.models.is_empty()
        && let Some(i) = set
            .catalogues()
            .iter()
            .position(|(_, c)| *c != crate::fleet::Catalogue::Unreached)
    {
        learn_from_upstream(&clients[i], &mut config.models, largest_budget_gib).await;
        set.set_configured(config.models.clone());
    }
    config.models = set.merged();
    tracing::info!(models = ?config.models.iter().map(|m| (&m.name, &m.kinds, m.max_in_flight, m.size_gib, &m.upstreams)).collect::<Vec<_>>(), "models");
    let core = config.core()?;
    let echo = ModelEcho {
        aliases: config
            .models
            .iter()
            .filter(|m| !m.aliases.is_empty())
            .map(|m| (m.name.clone(), m.aliases.clone()))
            .collect(),
        disabled: !config.check_model_echo,
    };
    let backend = Arc::new(LocalAiBackend::new(clients));
    let engine = Engine::start_with(core, backend.clone(), Metrics::new(), echo).map_err(|e| {
        crate::config::ConfigError::Invalid {
            field: e.field,
            message: e.message,
        }
    })?;
    if !config.has_keys() {
        tracing::warn!("no API keys configured: authentication is OFF");
    }
    let service = Service::new(engine.clone(), &config.service_settings());
    let fleet = crate::fleet::Fleet::new(
        engine.clone(),
        backend.clone(),
        fence.clone(),
        config.clone(),
        set,
        (declared, dns),
    );
    service.set_discovery(Arc::new(crate::fleet::FleetDiscovery(Arc::downgrade(
        &fleet,
    ))));
    if config.discovery.refresh_s > 0.0 {
        crate::fleet::Fleet::spawn_refresh(
            &fleet,
            std::time::Duration::from_secs_f64(config.discovery.refresh_s),
        );
    }
    let mut scratch = None;
    let state = if config.cluster.redis_url.is_some() {
        // Jobs start when this replica starts scheduling (`crate::cluster`).
        AppState::new(service.clone())
    } else if config.jobs.enabled {
        let dir = config
            .jobs
            .data_dir(sim.is_some())
            .ok_or_else(|| BuildError::Jobs {
                dir: "$XDG_DATA_HOME/im".into(),
                error: "neither XDG_DATA_HOME nor HOME names a directory".into(),
            })?;
        if config.jobs.dir.is_none() && sim.is_some() {
            scratch = Some(Scratch(dir.clone()));
        }
        start_jobs(&config, &dir, &service, engine.metrics().clone())?
    } else {
        AppState::new(service.clone())
    };
    Ok(Built {
        engine,
        backend,
        state,
        service,
        config,
        sim,
        fence,
        fleet,
        _scratch: scratch,
    })
}

/// The client of one upstream, with its key (or the shared one) and, when traces are exported,
/// the hook that passes each attempt's trace context on.
pub(crate) fn upstream_client(
    config: &ImConfig,
    u: &crate::config::UpstreamEntry,
    fence: &Fence,
) -> Result<LocalAiClient, BuildError> {
    let mut c = ClientConfig::new(u.url().to_owned());
    c.api_key = u
        .api_key()
        .map(str::to_owned)
        .or_else(|| config.upstream_api_key.clone());
    let traced = config.tracing.otlp_endpoint.is_some();
    if traced || config.cluster.redis_url.is_some() {
        let fence = fence.clone();
        c.header_hook = Some(HeaderHook::new(move |headers| {
            // Each upstream call carries its attempt span's context as `traceparent`...
            if traced {
                im_telemetry::inject_current(headers);
            }
            // ...and, from a replica that schedules, the fencing token of its lease.
            if let Some(token) = fence.token()
                && let Ok(v) = token.parse()
            {
                headers.insert(Fence::HEADER, v);
            }
        }));
    }
    if config.cluster.redis_url.is_some() {
        // A gate that refused a call says the highest epoch it has seen: raise ours above it.
        let fence = fence.clone();
        c.fence_hook = Some(localai_client::FenceHook::new(move |highest| {
            fence.saw_highest(highest);
        }));
    }
    LocalAiClient::new(c).map_err(|e| BuildError::Discovery {
        url: u.url().to_owned(),
        error: e.to_string(),
    })
}

/// The job service's settings; `stored` finds the signing secret every run shares (or keeps a
/// new one where the next run finds it) when none is configured.
pub(crate) fn jobs_settings(
    config: &ImConfig,
    stored: impl FnOnce() -> Result<im_jobs::Secret, String>,
) -> Result<im_jobs::JobsConfig, String> {
    let secret = match &config.jobs.webhook_secret {
        Some(_) => im_jobs::Secret::parse(&im_jobs::Secret::generate()).expect("generated"),
        None => stored()?,
    };
    config.jobs.settings(secret).map_err(|e| e.to_string())
}

/// Open the job store and start the job service; the HTTP state with it.
fn start_jobs(
    config: &ImConfig,
    dir: &std::path::Path,
    service: &Service,
    metrics: Metrics,
) -> Result<AppState, BuildError> {
    let failed = |e: &dyn std::fmt::Display| BuildError::Jobs {
        dir: dir.display().to_string(),
        error: e.to_string(),
    };
    let store = im_jobs::RedbStore::open(dir).map_err(|e| failed(&e))?;
    let settings = jobs_settings(config, || {
        crate::config::stored_secret(dir).map_err(|e| e.to_string())
    })
    .map_err(|e| failed(&e))?;
    let runner = Arc::new(crate::jobs::ServiceRunner(service.clone()));
    let jobs =
        im_jobs::Jobs::start(Arc::new(store), runner, settings, metrics).map_err(|e| failed(&e))?;
    tracing::info!(dir = %dir.display(), "durable jobs on");
    Ok(AppState::with_jobs(service.clone(), jobs))
}

/// The models an upstream serves, with their kinds and slots learned from what it says: LocalAI
/// describes each model's capabilities (`/v1/models/capabilities`), llama.cpp's router lists
/// modalities and load status, its `/props` the slots and vision; names are the last resort for
/// kinds (and never grant vision), and `discovery` the default for slots.
/// Sizes come from `llama-server`'s `meta.size` where it lists one (see [`learn_from_upstream`]).
pub async fn discover(
    client: &LocalAiClient,
    defaults: &DiscoveryEntry,
    largest_budget_gib: Option<f64>,
) -> Result<Vec<ModelEntry>, localai_client::ClientError> {
    let infos = match client.model_capabilities().await {
        Ok(Some(described)) => described,
        _ => client.model_infos().await?,
    };
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let has = |list: &[String], m: &str| list.iter().any(|x| x == m);
        // Only ask /props of a model that is resident (or of a server that does not say): asking
        // llama.cpp's router about an unloaded model could load it.
        let props = match info.status.as_deref() {
            None | Some("loaded") => client.props(&info.id).await.ok().flatten(),
            _ => None,
        };
        let vision = has(&info.input, "image") || props.is_some_and(|p| p.vision);
        // From the server's word where it gives one; from the name (marked as guessed) else.
        let (mut kinds, guessed) = if !info.capabilities.is_empty() {
            (kinds_of_capabilities(&info.capabilities), false)
        } else if has(&info.output, "embedding") {
            (vec!["embed".to_owned()], false)
        } else if has(&info.output, "image") {
            (vec!["txt2img".to_owned(), "img2img".to_owned()], false)
        } else if vision {
            (vec!["img2txt".to_owned(), "txt2txt".to_owned()], false)
        } else if !info.output.is_empty() || !info.input.is_empty() {
            (vec!["txt2txt".to_owned()], false)
        } else {
            (guess_kinds(&info.id), true)
        };
        kinds.dedup();
        if kinds.is_empty() {
            continue;
        }
        let slots = props
            .and_then(|p| p.slots)
            .unwrap_or_else(|| defaults.slots_for(&kinds));
        out.push(ModelEntry {
            size_gib: learned_size(&info.id, info.size_bytes, largest_budget_gib),
            name: info.id,
            kinds,
            kinds_guessed: guessed,
            max_in_flight: Some(slots),
            aliases: Vec::new(),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Kinds from LocalAI's capabilities of a model (unknown ones, as `vad`, ignored: a model with
/// none im serves is not offered).
fn kinds_of_capabilities(caps: &[String]) -> Vec<String> {
    const TABLE: [(&str, &[&str]); 8] = [
        ("vision", &["img2txt", "txt2txt"]),
        ("chat", &["txt2txt"]),
        ("completion", &["txt2txt"]),
        ("image", &["txt2img", "img2img"]),
        ("embeddings", &["embed"]),
        ("rerank", &["rerank"]),
        ("tts", &["tts"]),
        ("transcript", &["stt"]),
    ];
    let mut kinds: Vec<String> = Vec::new();
    for (cap, ks) in TABLE {
        if caps.iter().any(|c| c == cap) {
            for k in ks {
                if !kinds.iter().any(|x| x == k) {
                    kinds.push((*k).to_owned());
                }
            }
        }
    }
    kinds
}

/// A size an upstream reported for `model`, in GiB rounded up to the MiB (what a budget is
/// counted in). One larger than every budget (`largest_gib`) is dropped with a warning: the server
/// runs it (llama.cpp spills layers to the CPU), so it must not make the configuration invalid.
fn learned_size(model: &str, bytes: Option<u64>, largest_gib: Option<f64>) -> Option<f64> {
    let gib = bytes?.div_ceil(1 << 20) as f64 / 1024.0;
    if largest_gib.is_some_and(|l| gib > l) {
        tracing::warn!(%model, size_gib = gib, largest_budget_gib = ?largest_gib,
            "the upstream reports a model larger than every memory budget; it is counted as filling one");
        return None;
    }
    Some(gib)
}

/// Fill in what configured models leave out where the upstream reports it: `max_in_flight` from
/// llama.cpp's `/props` slots (the rest keep the `discovery` default), and `size_gib` from
/// `llama-server`'s `meta.size` in `/v1/models` (the weights: a declared size, which can count
/// the context's cache too, wins).
/// `largest_budget_gib` is the largest upstream `memory_gib`.
pub async fn learn_from_upstream(
    client: &LocalAiClient,
    models: &mut [ModelEntry],
    largest_budget_gib: Option<f64>,
) {
    for m in models.iter_mut().filter(|m| m.max_in_flight.is_none()) {
        if let Ok(Some(p)) = client.props(&m.name).await
            && let Some(slots) = p.slots
        {
            m.max_in_flight = Some(slots);
        }
    }
    if models.iter().all(|m| m.size_gib.is_some()) {
        return;
    }
    let Ok(infos) = client.model_infos().await else {
        return;
    };
    for m in models.iter_mut().filter(|m| m.size_gib.is_none()) {
        let bytes = infos
            .iter()
            .find(|i| i.id == m.name)
            .and_then(|i| i.size_bytes);
        m.size_gib = learned_size(&m.name, bytes, largest_budget_gib);
    }
}
