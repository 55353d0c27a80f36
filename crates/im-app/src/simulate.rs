//! The embedded simulated LocalAI of `--simulate`, behind the `simulate` cargo feature (on by
//! default, so `cargo run -p im-http -- --simulate` works; release builds leave it out with
//! `--no-default-features`, and such a binary answers `--simulate` with exit 2 and how to get it).

use crate::build::{BuildError, Simulate};
use crate::config::ImConfig;

/// The simulator a built im talks to.
#[cfg(feature = "simulate")]
pub type Simulator = localai_sim::SimServer;

/// No simulator can exist in a build without the `simulate` feature.
#[cfg(not(feature = "simulate"))]
#[derive(Debug)]
pub enum Simulator {}

#[cfg(not(feature = "simulate"))]
impl Simulator {
    /// Its URL (never called: there is none).
    pub fn url(&self) -> &str {
        match *self {}
    }
}

/// Start the simulator and point `config` at it: its catalogue as the models (unless some are
/// configured), the demo key (unless keys are).
#[cfg(feature = "simulate")]
pub(crate) async fn start(config: &mut ImConfig, s: &Simulate) -> Result<Simulator, BuildError> {
    let sc = localai_sim::SimConfig {
        time_scale: s.time_scale,
        ..localai_sim::SimConfig::default()
    };
    let server = localai_sim::SimServer::start(sc.clone())
        .await
        .map_err(BuildError::Sim)?;
    config.upstreams = vec![server.url().into()];
    if config.models.is_empty() {
        config.models = sc
            .models
            .iter()
            .map(|m| crate::config::ModelEntry {
                name: m.name.clone(),
                kinds: m.kinds.clone(),
                max_in_flight: Some(m.slots),
                ..Default::default()
            })
            .collect();
    }
    if !config.has_keys() {
        config.api_keys = vec![crate::build::DEMO_KEY.to_owned()];
    }
    Ok(server)
}

/// Without the feature: refused, saying how to get it.
#[cfg(not(feature = "simulate"))]
pub(crate) async fn start(_: &mut ImConfig, _: &Simulate) -> Result<Simulator, BuildError> {
    Err(BuildError::NoSimulator)
}
