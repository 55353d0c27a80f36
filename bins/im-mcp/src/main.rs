//! `im-mcp`: im's tools over MCP. stdio by default, streamable HTTP with `--http`; its own engine
//! (`--simulate` for the demo) or `--remote` to a running im-http so one queue serves both.

use std::process::ExitCode;

use anyhow::{Context, bail};
use axum::middleware::from_fn_with_state;
use clap::Parser;
use im_app::cli::CommonArgs;
use im_app::run;

use im_mcp_api::{ImMcp, Remote, Target, http_service, require_key};
use im_service::Keys;
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
    /// The arguments shared with im-http (configuration, upstreams, keys, simulator, overrides).
    #[command(flatten)]
    common: CommonArgs,
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut cfg = args.common.load()?;
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    let _telemetry = run::telemetry(&cfg, "warn")?;
    // MCP has no job tools: no job store (it would compete with an im-http for the same one).
    cfg.jobs.enabled = false;
    if cfg.cluster.redis_url.is_some() && args.remote.is_none() {
        // A second scheduler in front of the same upstreams is what the cluster's lease prevents.
        anyhow::bail!(
            "im-mcp does not join a cluster of replicas: point it at any replica with --remote \
             <url> (or use the replicas' /mcp)"
        );
    }
    let (target, built) = match &args.remote {
        Some(url) => (Target::Remote(Remote::new(url, args.api_key.clone())), None),
        None => {
            let built = im_app::build(cfg.clone(), args.common.simulate()).await?;
            if let Some(sim) = &built.sim {
                eprintln!("im-mcp: simulated LocalAI at {}", sim.url());
            }
            (Target::Local(built.service.clone()), Some(built))
        }
    };
    let config = built.as_ref().map_or(&cfg, |b| &b.config);
    let server = ImMcp::new(target);
    let Some(addr) = &args.http else {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .context("starting MCP over stdio")?;
        running.waiting().await.context("MCP session")?;
        return Ok(());
    };
    if !config.has_keys() {
        bail!("--http needs at least one key (--api-keys or IM_API_KEYS)");
    }
    let svc = http_service(
        server,
        &config.http.mcp_allowed_hosts,
        config.http.body_limit_bytes,
    );
    let app = axum::Router::new()
        .route_service("/mcp", svc)
        .layer(from_fn_with_state(
            Keys::with_scopes(&config.key_specs(), (0, 1)),
            require_key,
        ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "im-mcp: streamable HTTP on http://{}/mcp",
        listener.local_addr()?
    );
    // SIGTERM or Ctrl-C: stop intake, drain the own engine, close open streams.
    let engine = built
        .as_ref()
        .map(|b| (b.engine.clone(), b.config.shutdown_grace()));
    im_edge::serve(
        listener,
        app,
        config.serve_limits(),
        config.peers(),
        async move {
            run::shutdown_signal().await;
            if let Some((engine, grace)) = engine {
                engine.shutdown(grace).await;
            }
        },
    )
    .await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workers = args.common.worker_threads;
    run::main_with("im-mcp", workers, serve(args))
}
