//! `im-http`: parse config, set up logging, build im, serve HTTP, shut down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use im_http_api::app::{self, Simulate};
use im_http_api::config::ImConfig;

/// im: an inference manager for LocalAI (HTTP API, OpenAI-compatible routes, Swagger UI at /docs).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see deploy/im.example.toml).
    #[arg(long, env = "IM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "IM_LISTEN")]
    listen: Option<String>,
    /// LocalAI base URL(s), comma-separated (default http://localhost:8080).
    #[arg(long = "upstream", env = "LOCALAI_URL", value_delimiter = ',')]
    upstreams: Vec<String>,
    /// API keys clients must send, comma-separated.
    #[arg(
        long,
        env = "IM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Start an in-process simulated LocalAI and serve the full API against it.
    #[arg(long, env = "IM_SIMULATE")]
    simulate: bool,
    /// Time scale of the simulated LocalAI (1.0: real load and service times).
    #[arg(long, env = "IM_SIM_TIME_SCALE", default_value_t = 0.1)]
    sim_time_scale: f64,
    /// Log format: text or json.
    #[arg(long, env = "IM_LOG_FORMAT")]
    log_format: Option<String>,
    /// Override any config field: --set bounds.max_batch=16 --set policy=strict (repeatable).
    #[arg(long = "set", env = "IM_SET", value_delimiter = ';')]
    sets: Vec<String>,
}

fn load(args: &Args) -> anyhow::Result<ImConfig> {
    let mut cfg = match &args.config {
        Some(p) => ImConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => ImConfig::default(),
    };
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    if !args.upstreams.is_empty() {
        cfg.upstreams = args.upstreams.clone();
    }
    if !args.api_keys.is_empty() {
        cfg.api_keys = args
            .api_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(f) = &args.log_format {
        cfg.log_format = f.clone();
    }
    let cfg = cfg.with_overrides(&args.sets)?;
    cfg.validate()?;
    Ok(cfg)
}

fn logging(format: &str) {
    // rmcp logs whole tool calls (images included) at debug: keep it at warn unless asked.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rmcp=warn".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load(&args)?;
    logging(&cfg.log_format);
    let simulate = args.simulate.then_some(Simulate {
        time_scale: args.sim_time_scale,
    });
    let built = app::build(cfg, simulate).await?;
    let addr: SocketAddr = built.config.listen.parse().context("listen address")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    if let Some(sim) = &built.sim {
        eprintln!("im-http: simulated LocalAI at {}", sim.url());
        eprintln!(
            "im-http: demo key: {}",
            built
                .config
                .api_keys
                .first()
                .map_or("(none)", String::as_str)
        );
    }
    eprintln!("im-http: listening on http://{local}  (Swagger UI: http://{local}/docs)");
    // MCP over streamable HTTP at /mcp, on the same engine and queues, behind the same key.
    let app = im_mcp_api::http_router_with_mcp(built.state.clone(), &built.config);
    let engine = built.engine.clone();
    let grace = built.config.shutdown_grace();
    let limits = built.config.serve_limits();
    im_http_api::serve::serve(listener, app, limits, async move {
        app::shutdown_signal().await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: intake stopped, draining"
        );
        engine.shutdown(grace).await;
    })
    .await
    .context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    app::main_with("im-http", run(Args::parse()))
}
