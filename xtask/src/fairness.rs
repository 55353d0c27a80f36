//! The fairness table of `cargo xtask sim` (issue 32): four tenants on the same mixed trace,
//! one of them sending ten times its share, served first come first served inside each group
//! (what im did before) and by fair share.

use std::fmt::Write as _;
use std::time::Duration;

use inference_queue::sim::{self, Report, TraceSpec};
use inference_queue::{Class, Config, LaneSpec, Rng};

use crate::sim::bounded;

/// Tenant 0 floods: ten arrivals for each one of tenants 1, 2 and 3.
const SHARES: [u32; 4] = [10, 1, 1, 1];
const LIGHT: [u32; 3] = [1, 2, 3];

/// The trace's requests given to tenants by [`SHARES`], at random (seeded).
fn with_tenants(trace: &[sim::TraceItem], seed: u64) -> Vec<sim::TraceItem> {
    let total: u32 = SHARES.iter().sum();
    let mut rng = Rng::new(seed ^ 0x7E4A_4175);
    trace
        .iter()
        .map(|item| {
            let mut pick = (rng.next_u64() % u64::from(total)) as u32;
            let mut tenant = 0;
            for (t, share) in SHARES.iter().enumerate() {
                if pick < *share {
                    tenant = t as u32;
                    break;
                }
                pick -= share;
            }
            sim::TraceItem {
                tenant,
                ..item.clone()
            }
        })
        .collect()
}

/// The bounded default on `lanes` lanes without memory budgets.
pub(crate) fn on_lanes(lanes: usize) -> Config {
    Config {
        lanes: (0..lanes)
            .map(|i| LaneSpec {
                name: format!("gpu{i}"),
                memory_mb: None,
            })
            .collect(),
        ..bounded()
    }
}

/// The light tenants' worst p99 wait, in seconds.
fn light_p99(r: &Report) -> f64 {
    LIGHT
        .iter()
        .filter_map(|t| r.tenant_wait_quantile(*t, 0.99))
        .map(|d| d.as_secs_f64())
        .fold(0.0, f64::max)
}

/// The flooder's share of what completed.
fn flooder_share(r: &Report) -> f64 {
    let flooder = r.tenant_completed.get(&0).copied().unwrap_or(0);
    flooder as f64 / r.completed.max(1) as f64
}

/// One model's chat traffic, 1-3 s a request: where every wait is a wait inside one group.
fn one_model(rate: f64, duration: Duration, seed: u64) -> TraceSpec {
    TraceSpec {
        mix: vec![(inference_queue::Kind::Txt2Txt, 0, 1.0, (1.0, 3.0))],
        ..TraceSpec::mixed(rate, duration, seed)
    }
}

/// The table, and the targets it missed.
pub fn table(hours: f64, seed: u64) -> (String, Vec<String>) {
    let models = sim::localai_catalogue();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let mut out = String::from(
        "\n## Fairness: four tenants, one sending ten times its share\n\n\
         Two traces, their requests given to four tenants at random: tenant 0 sends ten for each \
         one of tenants 1-3 (10:1:1:1, equal weights). `one model` is chat traffic to one model \
         (every wait is a wait inside one group: the case fair share is for); `mixed` is the \
         mixed trace above, where most of a request's wait is its group waiting for a lane \
         (drain-before-switch and the loads), which the order inside a group cannot shorten. \
         `FIFO` is im before fair share (every group first come, first served); `fair share` \
         serves each group's waiting requests by the tenants' virtual service. The targets, on \
         `one model`: the light tenants' worst p99 wait at most a fifth of FIFO's (or one \
         request's longest service, 3 s, if that is more); on both: the \
         flooder keeps at least its weighted share (a quarter of what completes, or all it \
         asked for if less), completed/h and model loads within 5 % of FIFO's. Missed at 4 lanes and \
         90 % of the mixed trace (fair share 1,196 loads against FIFO's 1,098 over the run, +9 %; \
         +5 % before the core stopped learning the load as service time from the attempts that \
         start beside it, when 50 % missed too, 20 loads against 15, and both orders now make \
         28): fair share makes the flooder's oldest request wait \
         longer, past `starvation_after` more often, and the starvation bound then gives its group \
         one more lane (a load): with the bound off, both orders make 5 loads there. Serving a starving group's oldest request first would keep the \
         loads and give the light tenants back FIFO's waits under overload; the bound stays as it \
         is.\n\n\
         | trace | lanes | load | order | completed/h | model loads | light tenants' p99 wait (s) | flooder's share of completions |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for (trace_name, spec) in [
        (
            "one model",
            one_model as fn(f64, Duration, u64) -> TraceSpec,
        ),
        ("mixed", TraceSpec::mixed),
    ] {
        let cap = spec(1.0, duration, seed).capacity(&models);
        for lanes in [1usize, 4] {
            for load in [0.5, 0.9, 1.2] {
                let base = spec(cap * load * lanes as f64, duration, seed).generate();
                let trace = with_tenants(&base, seed);
                let fifo = sim::run_scheduler_one_tenant(on_lanes(lanes), &models, &trace);
                let fair = sim::run_scheduler(on_lanes(lanes), &models, &trace);
                for (name, r) in [("FIFO", &fifo), ("fair share", &fair)] {
                    let _ = writeln!(
                        out,
                        "| {trace_name} | {lanes} | {:.0}% | {name} | {:.0} | {} | {:.0} | {:.0}% |",
                        load * 100.0,
                        r.per_hour(),
                        r.loads,
                        light_p99(r),
                        flooder_share(r) * 100.0
                    );
                }
                let asked =
                    trace.iter().filter(|i| i.tenant == 0).count() as f64 / trace.len() as f64;
                let mut missed = Vec::new();
                // A fifth of FIFO's, or one request's longest service (3 s) when FIFO's is already
                // that short: a request may always wait for the one running.
                let target = (light_p99(&fifo) / 5.0).max(3.0);
                if trace_name == "one model" && light_p99(&fair) > target {
                    missed.push(format!(
                        "light p99 {:.0} s against FIFO's {:.0} s",
                        light_p99(&fair),
                        light_p99(&fifo)
                    ));
                }
                if flooder_share(&fair) < asked.min(0.25) * 0.95 {
                    missed.push(format!(
                        "the flooder got {:.0}% of completions",
                        flooder_share(&fair) * 100.0
                    ));
                }
                let within = |a: f64, b: f64| (a - b).abs() <= 0.05 * b.max(1.0);
                if !within(fair.per_hour(), fifo.per_hour())
                    || !within(fair.loads as f64, fifo.loads as f64)
                {
                    missed.push("completed/h or loads more than 5 % off FIFO's".to_owned());
                }
                if !missed.is_empty() {
                    failures.push(format!(
                        "fairness, {trace_name}, {lanes} lanes, {load}: {}",
                        missed.join(", ")
                    ));
                }
            }
        }
    }
    (out, failures)
}

/// The interactive tenant of the priority rows.
const INTERACTIVE: u32 = 1;

/// The interactive tenant's p99 wait, in seconds.
fn interactive_p99(r: &Report) -> f64 {
    r.tenant_wait_quantile(INTERACTIVE, 0.99)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `a` and `b` as one trace, in arrival order.
fn merged(a: Vec<sim::TraceItem>, b: Vec<sim::TraceItem>) -> Vec<sim::TraceItem> {
    let mut all: Vec<_> = a.into_iter().chain(b).collect();
    all.sort_by_key(|i| i.at);
    all
}

/// The priority rows: one model's chat traffic, an interactive tenant at 40 % of the lanes'
/// capacity, alone and beside a batch flood of another tenant at 100 % (140 % in all: the
/// batch backlog only grows). The target: the interactive p99 wait with the flood at most twice
/// its p99 alone, or one batch request's longest service (3 s) if that is more (service is not
/// preemptive: an interactive request may wait for the batch one running).
pub fn priority_table(hours: f64, seed: u64) -> (String, Vec<String>) {
    let models = sim::localai_catalogue();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let mut out = String::from(
        "\n## Priority: interactive work beside a batch flood of its model\n\n\
         One model's chat traffic (1-3 s a request): tenant 1 sends interactive requests at 40 % \
         of the lanes' capacity; beside it, tenant 0 floods the same model with batch requests \
         at 100 % (140 % in all: the batch backlog only grows; once a batch request \
         has waited `batch_starvation_after` = 600 s, the group starts one overdue batch request \
         ahead of interactive work per 600 s). Target: the \
         interactive p99 wait with the flood at most twice its p99 alone, or one batch \
         request's longest service (3 s) if that is more.\n\n\
         | lanes | interactive p99 wait alone (s) | with the batch flood (s) | batch completed/h |\n\
         |---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    let cap = one_model(1.0, duration, seed).capacity(&models);
    for lanes in [1usize, 4] {
        let tagged = |rate: f64, seed: u64, tenant: u32, class: Class| {
            one_model(cap * rate * lanes as f64, duration, seed)
                .generate()
                .into_iter()
                .map(|i| sim::TraceItem { tenant, class, ..i })
                .collect::<Vec<_>>()
        };
        let interactive = tagged(0.4, seed, INTERACTIVE, Class::Interactive);
        let flood = tagged(1.0, seed ^ 0xBA7C, 0, Class::Batch);
        let alone = sim::run_scheduler(on_lanes(lanes), &models, &interactive);
        let both = sim::run_scheduler(on_lanes(lanes), &models, &merged(interactive, flood));
        let batch_per_hour = both.tenant_completed.get(&0).copied().unwrap_or(0) as f64
            / duration.as_secs_f64()
            * 3600.0;
        let (p_alone, p_both) = (interactive_p99(&alone), interactive_p99(&both));
        let _ = writeln!(
            out,
            "| {lanes} | {p_alone:.1} | {p_both:.1} | {batch_per_hour:.0} |"
        );
        if p_both > (2.0 * p_alone).max(3.0) {
            failures.push(format!(
                "priority, {lanes} lanes: interactive p99 {p_both:.1} s with the flood, \
                 {p_alone:.1} s alone"
            ));
        }
    }
    (out, failures)
}
