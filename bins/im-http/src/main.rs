//! `im-http`: parse config, set up logging, build im, serve HTTP (with MCP at `/mcp`), shut down
//! gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use im_app::cli::CommonArgs;
use im_app::run;

#[cfg(feature = "count-allocations")]
mod allocations;

/// jemalloc, not the system's malloc: it keeps small blocks apart from hyper's 8 KiB connection
/// buffers and writes no header into a block, so the pages of a buffer a waiting connection never
/// fills stay untouched (a queued small request: 8 KiB resident against glibc's 12; see
/// benches/results/bench.md, memory). Configured when built (`.cargo/config.toml`).
#[cfg(not(feature = "count-allocations"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// im: an inference manager for LocalAI (HTTP API, OpenAI-compatible routes, Swagger UI at /docs).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let cfg = args.common.load()?;
    let mut telemetry = run::telemetry(&cfg, "info")?;
    let loaded = cfg.clone();
    let mut built = im_app::build(cfg, args.common.simulate()).await?;
    let common = args.common.clone();
    let reloader = im_app::reload::Reloader::new(move || common.load(), loaded, &built);
    built.state = built
        .state
        .with_reload(std::sync::Arc::new(reloader.clone()));
    tokio::spawn(run::reload_on_sighup(reloader));
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
    let cluster = im_app::cluster::join(&built, local)?;
    let engine = built.engine.clone();
    let grace = built.config.shutdown_grace();
    let limits = built.config.serve_limits();
    let draining = cluster.as_ref().map(im_app::cluster::Cluster::draining);
    let stopped = async move {
        run::shutdown_signal().await;
        if let Some(d) = draining {
            // A scheduler finishes its own work, not new work: followers hold that for the next.
            d.store(true, std::sync::atomic::Ordering::Release);
        }
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: intake stopped, draining"
        );
        engine.shutdown(grace).await;
    };
    let peers = built.config.peers();
    match &cluster {
        Some(c) => {
            let app = im_app::http_app(&built, Some(c));
            im_edge::serve(listener, app, limits, peers, stopped).await
        }
        None => {
            let app = im_app::http_api(&built);
            im_edge::serve(listener, app, limits, peers, stopped).await
        }
    }
    .context("serving")?;
    if let Some(c) = cluster {
        c.leave();
    }
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    #[cfg(feature = "count-allocations")]
    allocations::report();
    let args = Args::parse();
    let workers = args.common.worker_threads;
    run::main_with("im-http", workers, serve(args))
}
