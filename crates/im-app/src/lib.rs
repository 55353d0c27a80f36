//! `im-app`: im as an application, shared by `im-http`, `im-mcp`, the tests and `cargo xtask`.
//!
//! - [`config`]: the one TOML configuration, its one loader and its one validation;
//! - [`cli`]: the command-line arguments both binaries share (config file, upstreams, keys, the
//!   simulator, overrides), applied on top of the file in one place;
//! - [`build()`]: a running im from a configuration: upstream clients or the embedded simulated
//!   LocalAI, model discovery, the engine, the HTTP state;
//! - [`http_app`]: the HTTP API with MCP mounted at `/mcp`, what `im-http` serves;
//! - [`run`]: what a binary's `main` needs around that: the runtime, logging, signals, a panic
//!   hook that never logs request data, exit codes.
//!
//! The frontend crates (`im-http-api`, `im-mcp-api`) know nothing of files, flags or the
//! simulator: this crate does the wiring.

pub mod build;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fleet;
pub mod jobs;
pub mod reload;
pub mod run;
pub mod simulate;
mod topology;

pub use build::{BuildError, Built, DEMO_KEY, Simulate, build, discover, learn_from_upstream};

/// The HTTP API with MCP mounted at `/mcp` over the same service, behind the same keys; in a
/// cluster, behind the layer that forwards to the scheduling replica.
pub fn http_app(built: &Built, cluster: Option<&cluster::Cluster>) -> axum::Router {
    let app = axum::Router::new().fallback_service(http_api(built));
    match cluster {
        Some(c) => app.layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(c.forwarder(&built.service, &built.config)),
            im_http_api::forward::forward,
        )),
        None => app,
    }
}

/// The HTTP API with MCP mounted at `/mcp`, as a service of its own: what `im-http` serves when
/// it runs alone (no router around it: [`http_app`] without a cluster, one boxed future less).
pub fn http_api(built: &Built) -> impl im_edge::App {
    let mcp = im_mcp_api::http_service(
        im_mcp_api::ImMcp::new(im_mcp_api::Target::Local(built.service.clone())),
        &built.config.http.mcp_allowed_hosts,
        built.config.http.body_limit_bytes,
    );
    im_http_api::api_with(built.state.clone(), |r| r.route_service("/mcp", mcp))
}
