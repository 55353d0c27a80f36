//! `im-fence`: parse flags, serve the gate with im's listener rules, drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use im_edge::fence::FenceSecret;
use im_edge::{Peers, ServeLimits};

/// The fencing gate: refuses and cuts the calls of a scheduler whose lease was taken over.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback by default; compose and Kubernetes set the pod's address).
    #[arg(long, env = "IM_FENCE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// The LocalAI behind the gate.
    #[arg(long, env = "LOCALAI_URL", default_value = "http://localhost:8080")]
    upstream: String,
    /// The cluster's shared secret fencing tokens are signed with (the same as im's
    /// `cluster.fence_secret`). Without it, anyone who reaches the gate can forge a token.
    #[arg(long, env = "IM_FENCE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A file holding the secret (a Docker or Kubernetes secret mounted as a file).
    #[arg(long, env = "IM_FENCE_SECRET_FILE", conflicts_with = "secret")]
    secret_file: Option<std::path::PathBuf>,
    /// The largest request body passed on, in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    body_limit: usize,
    /// Seconds a new connection has to send its first byte, and a request its headers.
    #[arg(long, default_value_t = 10.0)]
    header_read_timeout_s: f64,
    /// Seconds a connection with nothing in flight stays open.
    #[arg(long, default_value_t = 120.0)]
    idle_timeout_s: f64,
    /// Open connections at most.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Open connections per client at most.
    #[arg(long, default_value_t = 1024)]
    max_connections_per_peer: usize,
    /// Seconds running calls may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30.0)]
    drain_s: f64,
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && v > 0.0 && v < 86_400.0,
        "--{flag}: a positive number of seconds under a day"
    );
    Ok(Duration::from_secs_f64(v))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let from_file = match &args.secret_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the secret from {}", p.display()))?,
        ),
        None => None,
    };
    let secret = from_file
        .as_deref()
        .or(args.secret.as_deref())
        .and_then(FenceSecret::new);
    if secret.is_none() {
        eprintln!(
            "im-fence: WARNING: no IM_FENCE_SECRET: anyone who reaches this gate can forge a fencing token"
        );
    }
    let limits = ServeLimits {
        header_read_timeout: seconds("header-read-timeout-s", args.header_read_timeout_s)?,
        idle_timeout: seconds("idle-timeout-s", args.idle_timeout_s)?,
        max_connections: args.max_connections,
        close_grace: seconds("drain-s", args.drain_s)?,
        ..ServeLimits::default()
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "im-fence: listening on http://{}, gating {}",
        listener.local_addr()?,
        args.upstream
    );
    let app = im_fence::gate(im_fence::GateSettings {
        upstream: args.upstream,
        body_limit: args.body_limit,
        secret,
    });
    let peers = Arc::new(Peers::new(args.max_connections_per_peer, Vec::new(), None));
    im_edge::serve(
        listener,
        app,
        limits,
        peers,
        im_edge::listener::shutdown_signal(),
    )
    .await
    .context("serving")?;
    eprintln!("im-fence: stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("im-fence: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
