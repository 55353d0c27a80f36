//! `im-fence`: the fencing gate in front of one LocalAI (see `im_http_api::fence`). Point im's
//! `upstreams` at the gate, the gate at LocalAI.

use anyhow::Context;
use clap::Parser;

/// The fencing gate: refuses and cuts the calls of a scheduler whose lease was taken over.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "IM_FENCE_LISTEN", default_value = "0.0.0.0:8081")]
    listen: String,
    /// The LocalAI behind the gate.
    #[arg(long, env = "LOCALAI_URL", default_value = "http://localhost:8080")]
    upstream: String,
    /// The largest request body passed on, in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    body_limit: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "im-fence: listening on http://{}, gating {}",
        listener.local_addr()?,
        args.upstream
    );
    let app = im_http_api::fence::gate(args.upstream, args.body_limit);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
