//! `im-mcp`: im's tools over MCP. stdio by default, streamable HTTP with `--http`; its own engine
//! (`--simulate` for the demo) or `--remote` to a running im-http so one queue serves both.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use axum::middleware::from_fn_with_state;
use clap::Parser;
use im_http_api::app::{self, Simulate};
use im_http_api::config::ImConfig;
use im_http_api::{Keys, require_key};
use im_mcp_api::{ImMcp, Upstream, http_service};
use rmcp::ServiceExt;

/// im over MCP: txt2txt, txt2img, img2img, img2txt, metrics, queue status and models as tools.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Forward every tool call to a running im-http at this URL (one queue for both interfaces).
    #[arg(long, env = "IM_REMOTE")]
    remote: Option<String>,
    /// The API key for --remote.
    #[arg(long, env = "IM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve streamable HTTP at ADDR (endpoint /mcp, API key required) instead of stdio.
    #[arg(long)]
    http: Option<String>,
    /// Keys accepted by --http, comma-separated.
    #[arg(
        long,
        env = "IM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Run an own engine against an in-process simulated LocalAI.
    #[arg(long, env = "IM_SIMULATE")]
    simulate: bool,
    /// Time scale of the simulated LocalAI.
    #[arg(long, env = "IM_SIM_TIME_SCALE", default_value_t = 0.1)]
    sim_time_scale: f64,
    /// TOML configuration for the own engine (as im-http's).
    #[arg(long, env = "IM_CONFIG")]
    config: Option<PathBuf>,
    /// LocalAI base URL(s) for the own engine.
    #[arg(long = "upstream", env = "LOCALAI_URL", value_delimiter = ',')]
    upstreams: Vec<String>,
    /// Override any config field (path=value), repeatable.
    #[arg(long = "set", env = "IM_SET", value_delimiter = ';')]
    sets: Vec<String>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    // rmcp logs whole tool calls (images included) at debug: keep it at warn unless asked.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,rmcp=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let mut http_keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let mut body_limit = 32 * 1024 * 1024;
    let mut allowed_hosts = Vec::new();
    let mut _keep_alive = None;
    let upstream = match &args.remote {
        Some(url) => Upstream::remote(url, args.api_key.clone()),
        None => {
            let mut cfg = match &args.config {
                Some(p) => ImConfig::from_toml(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )?,
                None => ImConfig::default(),
            };
            if !args.upstreams.is_empty() {
                cfg.upstreams = args.upstreams.clone();
            }
            if !http_keys.is_empty() {
                cfg.api_keys = http_keys.clone();
            }
            let cfg = cfg.with_overrides(&args.sets)?;
            let built = app::build(
                cfg,
                args.simulate.then_some(Simulate {
                    time_scale: args.sim_time_scale,
                }),
            )
            .await?;
            if let Some(sim) = &built.sim {
                eprintln!("im-mcp: simulated LocalAI at {}", sim.url());
            }
            body_limit = built.config.http.body_limit_bytes;
            allowed_hosts = built.config.http.mcp_allowed_hosts.clone();
            if http_keys.is_empty() {
                http_keys = built.config.api_keys.clone();
            }
            let key = built.state.keys.first();
            let router = im_http_api::router(built.state.clone());
            _keep_alive = Some(built);
            Upstream::Local { router, key }
        }
    };
    let server = ImMcp::new(upstream);
    match &args.http {
        None => {
            let running = server
                .serve(rmcp::transport::stdio())
                .await
                .context("starting MCP over stdio")?;
            running.waiting().await.context("MCP session")?;
        }
        Some(addr) => {
            if http_keys.is_empty() {
                bail!("--http needs at least one key (--api-keys or IM_API_KEYS)");
            }
            let svc = http_service(server, &allowed_hosts, body_limit);
            let app = axum::Router::new()
                .route_service("/mcp", svc)
                .layer(from_fn_with_state(Keys::new(&http_keys), require_key));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            eprintln!(
                "im-mcp: streamable HTTP on http://{}/mcp",
                listener.local_addr()?
            );
            // SIGTERM or Ctrl-C: stop intake, drain the own engine, close open streams.
            let engine = _keep_alive
                .as_ref()
                .map(|b: &app::Built| (b.engine.clone(), b.config.shutdown_grace()));
            let limits = _keep_alive
                .as_ref()
                .map(|b: &app::Built| b.config.serve_limits())
                .unwrap_or_default();
            im_http_api::serve::serve(listener, app, limits, async move {
                app::shutdown_signal().await;
                if let Some((engine, grace)) = engine {
                    engine.shutdown(grace).await;
                }
            })
            .await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    app::main_with("im-mcp", run(Args::parse()))
}
