use inference_queue::sim::{self, TraceSpec};
use inference_queue::{Config, Kind, Limits};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
fn bounded() -> Config {
    Config {
        default_deadline: [Duration::from_secs(86_400); Kind::COUNT],
        limits: Limits {
            max_queued_total: 1_000_000,
            ..Limits::default()
        },
        ..Config::default()
    }
}
fn main() {
    let pct: u32 = std::env::args().nth(1).map_or(0, |s| s.parse().unwrap());
    let hours: f64 = std::env::args().nth(2).map_or(8.0, |s| s.parse().unwrap());
    let models = sim::localai_catalogue();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let cap = TraceSpec::mixed(1.0, duration, 42).capacity(&models);
    let trace: Vec<sim::TraceItem> = TraceSpec::mixed(cap * 1.2, duration, 42)
        .generate()
        .into_iter()
        .map(|i| sim::TraceItem {
            deadline: Some(Duration::from_secs(300)),
            ..i
        })
        .collect();
    let a = sim::run_scheduler(bounded(), &models, &trace);
    let mut c = bounded();
    c.limits.early_refusal_pct = Some(pct);
    let b = sim::run_scheduler_predicting(c, &models, &trace);
    let ea: HashSet<usize> = a.expired.iter().copied().collect();
    let eb: HashSet<usize> = b.expired.iter().copied().collect();
    // refused: bucket by predicted/300
    let mut buckets: HashMap<i64, (usize, usize)> = HashMap::new();
    for (i, p) in &b.refused_early {
        let k = (p.as_secs_f64() / 300.0 * 10.0) as i64;
        let e = buckets.entry(k).or_default();
        e.0 += 1;
        if !ea.contains(i) {
            e.1 += 1;
        }
    }
    let mut ks: Vec<_> = buckets.into_iter().collect();
    ks.sort();
    println!("refused by predicted/deadline (x10): (n, met in A)");
    for (k, v) in ks {
        println!("  {k}: {v:?}");
    }
    // admitted: those with predictions; bucket by predicted, count expired in B
    // predictions only for dispatched ones; expired are missing. Count per kind.
    for k in Kind::SEEDS {
        let n = trace.iter().filter(|t| t.kind == k).count();
        let rb = b
            .refused_early
            .iter()
            .filter(|(i, _)| trace[*i].kind == k)
            .count();
        let wrong = b
            .refused_early
            .iter()
            .filter(|(i, _)| trace[*i].kind == k && !ea.contains(i))
            .count();
        let exb = eb.iter().filter(|i| trace[**i].kind == k).count();
        let exa = ea.iter().filter(|i| trace[**i].kind == k).count();
        println!("{k}: n {n} expA {exa} refusedB {rb} wrongB {wrong} expB {exb}");
    }
    let mut r: Vec<f64> = b
        .predictions
        .iter()
        .map(|p| p.predicted.as_secs_f64() / p.actual.as_secs_f64().max(1.0))
        .collect();
    r.sort_by(f64::total_cmp);
    println!(
        "served in B: pred/actual p10 {:.2} p50 {:.2} p90 {:.2}",
        r[r.len() / 10],
        r[r.len() / 2],
        r[r.len() * 9 / 10]
    );
    let late: Vec<_> = b
        .predictions
        .iter()
        .filter(|p| p.actual > Duration::from_secs(250))
        .map(|p| {
            (
                p.predicted.as_secs_f64() as u64,
                p.actual.as_secs_f64() as u64,
            )
        })
        .take(20)
        .collect();
    println!("late-ish served: {late:?}");
    println!("A per_h {:.0} B per_h {:.0}", a.per_hour(), b.per_hour());
}
