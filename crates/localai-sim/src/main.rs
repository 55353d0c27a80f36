//! `localai-sim`: serve the simulated LocalAI standalone.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use localai_sim::{SimConfig, SimServer};

/// A simulated LocalAI server (see the crate docs).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "SIM_PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "SIM_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// A TOML catalogue (see `localai-sim.example.toml`); the built-in one otherwise.
    #[arg(long, env = "SIM_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Multiply every simulated duration (0: zero latency).
    #[arg(long, env = "SIM_TIME_SCALE")]
    time_scale: Option<f64>,
    /// Seed for faults and outputs.
    #[arg(long, env = "SIM_SEED")]
    seed: Option<u64>,
    /// The catalogue's models installed at start, comma-separated (default: all); the others
    /// can be installed with `POST /models/apply`.
    #[arg(long, env = "SIM_INSTALLED", value_delimiter = ',')]
    installed: Option<Vec<String>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SimConfig::from_toml(&text)?
        }
        None => SimConfig::default(),
    };
    if let Some(s) = args.time_scale {
        cfg.time_scale = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(list) = args.installed {
        cfg.installed = Some(list);
    }
    cfg.validate()?;
    let sim = SimServer::spawn(cfg, SocketAddr::new(args.host, args.port)).await?;
    eprintln!("localai-sim listening on {}", sim.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
