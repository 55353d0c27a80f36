//! The fleet without im, the baseline of the fleet table: an ordinary load balancer in front of
//! plain servers that serve in arrival order and load models as requests come.

use std::time::Duration;

use inference_queue::sim::{self, Balancer, TraceSpec};
use inference_queue::{Config, LaneSpec};
use proptest::prelude::*;

fn trace(lanes: usize, load: f64, seed: u64) -> Vec<sim::TraceItem> {
    let models = sim::localai_catalogue();
    let spec = TraceSpec::mixed(1.0, Duration::from_secs(3600), seed);
    let cap = spec.capacity(&models) * lanes as f64;
    TraceSpec {
        rate: cap * load,
        ..spec
    }
    .generate()
}

#[test]
fn one_server_behind_a_balancer_is_fifo_to_localai() {
    let models = sim::localai_catalogue();
    let trace = trace(1, 0.9, 7);
    let fifo = sim::run_fifo(&models, &trace);
    for balancer in [Balancer::LeastLoaded, Balancer::RoundRobin] {
        let one = sim::run_balanced(&models, &trace, &[None], balancer);
        assert_eq!(
            (one.completed, one.loads, one.makespan),
            (fifo.completed, fifo.loads, fifo.makespan)
        );
    }
}

#[test]
fn without_im_every_server_loads_every_model() {
    let models = sim::localai_catalogue();
    let trace = trace(4, 0.9, 42);
    let plain = sim::run_balanced(&models, &trace, &[None; 4], Balancer::LeastLoaded);
    let cfg = Config {
        lanes: (0..4)
            .map(|i| LaneSpec {
                name: format!("gpu{i}"),
                memory_mb: None,
            })
            .collect(),
        ..Config::default()
    };
    let im = sim::run_scheduler(cfg, &models, &trace);
    assert!(
        plain.loads > 5 * im.loads,
        "plain {} loads, im {}",
        plain.loads,
        im.loads
    );
    assert!(im.per_hour() > 1.5 * plain.per_hour());
}

fn balancer() -> impl Strategy<Value = Balancer> {
    prop_oneof![Just(Balancer::LeastLoaded), Just(Balancer::RoundRobin)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Plain servers wait for a busy model to finish before evicting it, so they never overcommit,
    /// and every request is served once.
    #[test]
    fn plain_servers_serve_everything_and_never_evict_a_busy_model(
        seed in any::<u64>(),
        lanes in 1..=4usize,
        load in 0.5f64..1.3,
        balancer in balancer(),
        memory_gib in prop_oneof![Just(None), Just(Some(24u64)), Just(Some(32u64))],
    ) {
        let models = sim::localai_catalogue();
        let trace = trace(lanes, load, seed);
        let budgets = vec![memory_gib.map(|g| g * 1024); lanes];
        let report = sim::run_balanced(&models, &trace, &budgets, balancer);
        prop_assert_eq!(report.overcommits, 0);
        prop_assert_eq!(report.completed, trace.len());
        let waits: usize = report.waits.values().map(Vec::len).sum();
        prop_assert_eq!(waits, trace.len());
    }
}
