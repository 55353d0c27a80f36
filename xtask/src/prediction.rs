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
         it and its own group's queue, at learned service and load times, the wait for its \
         group's turn stretched by the load of higher-priority arrivals up to the starvation \
         bound) against the wait it \
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

/// The early-refusal rows: the mixed trace at 120 % load, every request with a queue deadline
/// of [`DEADLINE`], under the bounded default with and without `limits.early_refusal_pct`.
pub fn refusal_table(hours: f64, seed: u64) -> (String, Vec<String>) {
    let models = sim::localai_catalogue();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let cap = TraceSpec::mixed(1.0, duration, seed).capacity(&models);
    let trace: Vec<sim::TraceItem> = TraceSpec::mixed(cap * 1.2, duration, seed)
        .generate()
        .into_iter()
        .map(|i| sim::TraceItem {
            deadline: Some(DEADLINE),
            ..i
        })
        .collect();
    let with = |pct: Option<u32>| {
        let mut cfg = bounded();
        cfg.limits.early_refusal_pct = pct;
        sim::run_scheduler(cfg, &models, &trace)
    };
    let (waited, refused) = (with(None), with(Some(PCT)));
    // Of those refused at once, how many met their deadline when left to wait.
    let expired: std::collections::HashSet<usize> = waited.expired.iter().copied().collect();
    let would_have_met = refused
        .refused_early
        .iter()
        .filter(|i| !expired.contains(i))
        .count();
    let mut out = format!(
        "\n## Early refusal\n\n\
         The mixed trace at 120 % load, every request with a queue deadline of {} s, under the \
         bounded default: left to wait (requests expire in the queue), and refused at admission \
         when the predicted wait misses the deadline by more than {PCT} % \
         (`limits.early_refusal_pct`). Targets: expiries in the queue at most 1 % of those left to \
         wait; completed/h within 5 %; of the requests refused at once, at most 5 % met their \
         deadline when left to wait (the same trace, replayed).\n\n\
         | admission | completed/h | expired in the queue | refused at once | of those, met their deadline when left to wait |\n\
         |---|---|---|---|---|\n",
        DEADLINE.as_secs()
    );
    for (name, r) in [("left to wait", &waited), ("early refusal", &refused)] {
        let met = if r.refused_early.is_empty() {
            "-".to_owned()
        } else {
            format!("{would_have_met}")
        };
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} | {} | {met} |",
            r.per_hour(),
            r.expired.len(),
            r.refused_early.len()
        );
    }
    let mut failures = Vec::new();
    if refused.expired.len() as f64 > 0.01 * waited.expired.len() as f64 {
        failures.push(format!(
            "early refusal: {} expired in the queue against {} left to wait",
            refused.expired.len(),
            waited.expired.len()
        ));
    }
    if (refused.per_hour() - waited.per_hour()).abs() > 0.05 * waited.per_hour() {
        failures.push("early refusal: completed/h more than 5 % off".to_owned());
    }
    if would_have_met as f64 > 0.05 * refused.refused_early.len() as f64 {
        failures.push(format!(
            "early refusal: {would_have_met} of {} refused would have met their deadline",
            refused.refused_early.len()
        ));
    }
    (out, failures)
}

/// The queue deadline of every request in the early-refusal rows.
const DEADLINE: Duration = Duration::from_secs(300);
/// `limits.early_refusal_pct` in the early-refusal rows.
const PCT: u32 = 50;
