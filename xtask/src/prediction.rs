//! The prediction table of `cargo xtask sim` (issue 33): on the policy table's mixed traces, each
//! request's predicted wait when it arrived ([`inference_queue::Scheduler::predicted_wait`])
//! against the wait it had.

use std::fmt::Write as _;
use std::time::Duration;

use inference_queue::Kind;
use inference_queue::sim::{self, TraceSpec};

use crate::sim::bounded;

/// Waits shorter than this are left out of the error (a relative error of a wait near zero says
/// nothing).
const SHORTEST: Duration = Duration::from_secs(1);

/// The median of `v` (sorted in place); `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The table, and the targets it missed.
pub fn table(hours: f64, seed: u64) -> (String, Vec<String>) {
    let models = sim::localai_catalogue();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let cap = TraceSpec::mixed(1.0, duration, seed).capacity(&models);
    let mut out = String::from(
        "\n## Predicted waits\n\n\
         The policy table's mixed traces under the bounded default: each request's predicted \
         wait when it arrived (`Scheduler::predicted_wait`: what runs, the groups served before \
         it and its own group's queue, at learned service and load times) against the wait it \
         had. Error: the median of |predicted - actual| / actual over the requests that waited \
         over a second (target: at most 25 %); also the median actual wait of those.\n\n\
         | load | kind | requests waiting > 1 s | median actual wait (s) | median predicted / actual | median relative error |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for load in [0.5, 0.9] {
        let trace = TraceSpec::mixed(cap * load, duration, seed).generate();
        let r = sim::run_scheduler_predicting(bounded(), &models, &trace);
        for kind in Kind::SEEDS {
            let waited: Vec<(f64, f64)> = r
                .predictions
                .iter()
                .filter(|(k, _, actual)| *k == kind && *actual > SHORTEST)
                .map(|(_, p, a)| (p.as_secs_f64(), a.as_secs_f64()))
                .collect();
            let mut errors: Vec<f64> = waited.iter().map(|(p, a)| (p - a).abs() / a).collect();
            let mut actual: Vec<f64> = waited.iter().map(|(_, a)| *a).collect();
            let mut ratio: Vec<f64> = waited.iter().map(|(p, a)| p / a).collect();
            let ratio = median(&mut ratio).unwrap_or(0.0);
            let (Some(error), Some(actual)) = (median(&mut errors), median(&mut actual)) else {
                let _ = writeln!(out, "| {:.0}% | {kind} | 0 | - | - | - |", load * 100.0);
                continue;
            };
            let _ = writeln!(
                out,
                "| {:.0}% | {kind} | {} | {actual:.1} | {ratio:.2} | {:.0}% |",
                load * 100.0,
                waited.len(),
                error * 100.0
            );
            if error > 0.25 {
                failures.push(format!(
                    "prediction, {kind} at {:.0}%: median error {:.0}%",
                    load * 100.0,
                    error * 100.0
                ));
            }
        }
    }
    (out, failures)
}
