//! `cargo xtask sim`: the policy table. The real core against LocalAI's cost model, on seeded
//! mixed traces at 50 %, 90 % and 120 % of capacity, next to FIFO straight to LocalAI.

use std::fmt::Write as _;
use std::time::Duration;

use inference_queue::sim::{self, Report, TraceSpec};
use inference_queue::{Bounds, Config, Kind, Limits};

/// The policies compared in the table.
pub fn bounded() -> Config {
    // Queue deadlines are out of the picture here: the table measures waits, not expiries.
    Config {
        default_deadline: [Duration::from_secs(86_400); Kind::COUNT],
        limits: Limits {
            max_queued_total: 1_000_000,
            ..Limits::default()
        },
        ..Config::default()
    }
}

fn strict() -> Config {
    Config {
        bounds: Bounds::strict(),
        ..bounded()
    }
}

/// The wait quantiles `qs` of kind `k` in seconds, `/`-separated (`-` when none waited).
fn fmt_quantiles(r: &Report, k: Kind, qs: &[f64]) -> String {
    qs.iter()
        .map(|q| {
            r.wait_quantile(k, *q)
                .map_or("-".to_owned(), |d| format!("{:.0}", d.as_secs_f64()))
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn fmt_wait(r: &Report, k: Kind) -> String {
    fmt_quantiles(r, k, &[0.5, 0.99, 1.0])
}

/// Run every row and return the markdown table plus the checks of the scheduler issue.
pub fn table(hours: f64, seed: u64) -> (String, Vec<String>) {
    let models = sim::localai_catalogue();
    let mut out = String::new();
    let mut failures = Vec::new();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let cap = TraceSpec::mixed(1.0, duration, seed).capacity(&models);
    let _ = writeln!(
        out,
        "Capacity (never switching): {:.3} req/s = {:.0} req/h. Trace: {hours} h of Poisson arrivals, \
         50% txt2txt (llm), 15% img2txt (vision), 20% txt2img + 15% img2img (sd); seed {seed}.\n",
        cap,
        cap * 3600.0
    );
    let _ = writeln!(
        out,
        "| load | policy | completed/h | model loads | loading (s) | overcommits | wait p50/p99/max (s) txt2txt | txt2img | img2img | img2txt |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let starvation = bounded().bounds.starvation_after.unwrap_or_default();
    for load in [0.5, 0.9, 1.2] {
        let spec = TraceSpec::mixed(cap * load, duration, seed);
        let trace = spec.generate();
        let fifo = sim::run_fifo(&models, &trace);
        let strict_r = sim::run_scheduler(strict(), &models, &trace);
        let bounded_r = sim::run_scheduler(bounded(), &models, &trace);
        for (name, r) in [
            ("FIFO to LocalAI", &fifo),
            ("im strict", &strict_r),
            ("im bounded (default)", &bounded_r),
        ] {
            let _ = writeln!(
                out,
                "| {:.0}% | {name} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} |",
                load * 100.0,
                r.per_hour(),
                r.loads,
                r.load_time.as_secs_f64(),
                r.overcommits,
                fmt_wait(r, Kind::Txt2Txt),
                fmt_wait(r, Kind::Txt2Img),
                fmt_wait(r, Kind::Img2Img),
                fmt_wait(r, Kind::Img2Txt),
            );
        }
        if (load - 0.9).abs() < 1e-9 {
            let switch_ratio = bounded_r.loads as f64 / fifo.loads.max(1) as f64;
            let tput_ratio = bounded_r.per_hour() / fifo.per_hour().max(1e-9);
            let _ = writeln!(
                out,
                "\nAt 90%: bounded default loads / FIFO loads = {switch_ratio:.3} (target <= 0.1); \
                 throughput ratio = {tput_ratio:.2}x (target >= 3x)."
            );
            let lowest = *bounded().full_priority().last().expect("four kinds");
            let status = if tput_ratio >= 3.0 { "met" } else { "MISSED" };
            let offered = trace.len() as f64 * 3600.0 / duration.as_secs_f64();
            let _ = writeln!(
                out,
                "Throughput target: {status}. Offered load {offered:.0}/h: im completes {:.0}/h ({:.0}% of it, \
                 the rest is the backlog draining after the window) while FIFO saturates at {:.0}/h, so at 90% \
                 the ratio cannot exceed offered/FIFO = {:.2}x; the gap to 3x is FIFO's saturation point, not im's.",
                bounded_r.per_hour(),
                100.0 * bounded_r.per_hour() / offered,
                fifo.per_hour(),
                offered / fifo.per_hour().max(1e-9)
            );
            let max_wait = bounded_r.wait_quantile(lowest, 1.0).unwrap_or_default();
            let _ = writeln!(
                out,
                "Lowest-priority kind ({lowest}) max wait under the default: {:.0} s (starvation_after = {} s).\n",
                max_wait.as_secs_f64(),
                starvation.as_secs()
            );
            if switch_ratio > 0.1 {
                failures.push(format!("switch ratio {switch_ratio:.3} > 0.1"));
            }
        }
        for (name, r) in [("strict", &strict_r), ("bounded", &bounded_r)] {
            if r.overcommits != 0 {
                failures.push(format!("{name} at {load}: {} overcommits", r.overcommits));
            }
        }
    }
    (out, failures)
}

/// The fleet table: 1, 2, 4 and 8 lanes with budgets of one model and of two (24 GiB), the same
/// mixed trace scaled to the fleet's capacity at 50/90/120 %, for each routing.
pub fn fleet_table(hours: f64, seed: u64) -> (String, Vec<String>) {
    use inference_queue::{LaneSpec, Routing};
    let models = sim::localai_catalogue();
    let mut out = String::new();
    let mut failures = Vec::new();
    let duration = Duration::from_secs_f64(hours * 3600.0);
    let cap = TraceSpec::mixed(1.0, duration, seed).capacity(&models);
    let _ = writeln!(
        out,
        "## Fleet: N lanes (upstreams)\n\n\
         The same mixed trace, its rate scaled to N lanes' capacity ({cap:.3} req/s per lane). \
         `affinity` (the default) leaves a group to the lane that has its model loaded unless the group \
         starves or waits deeper than 12 requests per serving slot. The balancers place each request on \
         a lane when it arrives, whatever is loaded there, and each lane then serves its requests with \
         im's grouping: `least_loaded` (fewest requests waiting or running), `round_robin`, \
         `best_performance` (shortest expected finish from learned service times). `sticky_hash` gives \
         each model one lane by a hash of its name. `plain least_loaded` and `plain round_robin` are \
         the fleet without im, where the issue starts: an ordinary load balancer (HAProxy's \
         `leastconn`, nginx's `least_conn`, LiteLLM's `least-busy`; or round robin) in front of plain \
         servers, each serving its requests in arrival order and loading models as they come (the \
         FIFO row of the table above, per server). Budget `1 model` is a plain server; `24 GiB` holds \
         two of the three models (8, 8 and 12 GiB) side by side, each with its own slots; a request \
         that starts while another model runs on the same GPU takes 1.5x as long (they share its \
         compute).\n"
    );
    let _ = writeln!(
        out,
        "{}",
        one_lane_switching(&models, &trace_for(cap, duration, seed, 0.9, 1))
    );
    let _ = writeln!(
        out,
        "### N lanes\n\n| lanes | budget | load | routing | completed/h | model loads | overcommits | wait p50/p99 (s) txt2txt | txt2img | img2img | img2txt |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let routings = [
        Routing::default(),
        Routing::LeastLoaded,
        Routing::RoundRobin,
        Routing::BestPerformance,
        Routing::StickyHash,
    ];
    for lanes in [1usize, 2, 4, 8] {
        for budget in [None, Some(24 * 1024)] {
            for load in [0.5, 0.9, 1.2] {
                let trace = trace_for(cap, duration, seed, load, lanes);
                let mut rows = Vec::new();
                for routing in routings {
                    if lanes == 1 && routing != Routing::default() {
                        continue; // one lane: every routing is the same
                    }
                    let cfg = Config {
                        lanes: (0..lanes)
                            .map(|i| LaneSpec {
                                name: format!("gpu{i}"),
                                memory_mb: budget,
                            })
                            .collect(),
                        routing,
                        ..bounded()
                    };
                    let r = sim::run_scheduler(cfg, &models, &trace);
                    fleet_row(&mut out, (lanes, budget, load), routing.as_str(), &r);
                    if r.overcommits != 0 {
                        failures.push(format!(
                            "{lanes} lanes, {load}, {}: {} overcommits",
                            routing.as_str(),
                            r.overcommits
                        ));
                    }
                    rows.push(r);
                }
                if lanes > 1 {
                    let budgets = vec![budget; lanes];
                    for (name, balancer) in [
                        ("plain least_loaded", sim::Balancer::LeastLoaded),
                        ("plain round_robin", sim::Balancer::RoundRobin),
                    ] {
                        let r = sim::run_balanced(&models, &trace, &budgets, balancer);
                        fleet_row(&mut out, (lanes, budget, load), name, &r);
                        rows.push(r);
                    }
                }
                if lanes == 4 && (load - 0.9).abs() < 1e-9 {
                    let bound = if budget.is_none() {
                        let spec = TraceSpec::mixed(cap * load * lanes as f64, duration, seed);
                        one_model_bound(&spec, &models, lanes, hours, &rows)
                    } else {
                        String::new()
                    };
                    let budget =
                        budget.map_or("one model".to_owned(), |b| format!("{} GiB", b / 1024));
                    let offered = trace.len() as f64 * 3600.0 / duration.as_secs_f64();
                    let _ = writeln!(out, "\n{}{bound}\n", fleet_verdict(&rows, &budget, offered));
                }
            }
        }
    }
    let (text, mut more) = heterogeneous(&models, cap, duration, seed);
    out.push_str(&text);
    failures.append(&mut more);
    (out, failures)
}

/// Four lanes whose catalogues differ (issue 31): two LLM boxes carry `llm` and `vision`, two
/// image boxes carry `sd`, and the first image box `llm` too. Each model runs only where it is
/// listed, under im and under a balancer configured per model. The check: affinity completes
/// all the offered load with at most a tenth of the plain balancer's model loads.
fn heterogeneous(
    models: &[sim::SimModel],
    cap: f64,
    duration: Duration,
    seed: u64,
) -> (String, Vec<String>) {
    use inference_queue::{LaneSpec, Routing};
    let lanes_of = [vec![0, 1, 2], vec![0, 1], vec![2, 3]];
    let models: Vec<sim::SimModel> = models
        .iter()
        .zip(lanes_of)
        .map(|(m, lanes)| sim::SimModel {
            lanes: Some(lanes),
            ..m.clone()
        })
        .collect();
    let mut out = String::from(
        "\n### Catalogues that differ per lane\n\n\
         Four lanes: `gpu0` and `gpu1` list `llm` and `vision`, `gpu2` lists `sd` and `llm`, \
         `gpu3` lists `sd` only; each model runs only where it is listed (im places a group only \
         on lanes whose catalogue lists its model; the balancer is configured per model, as a \
         LiteLLM model list would be). The load is relative to four lanes that list everything: \
         `sd` on two lanes cannot carry 90 % of it (its waits grow for any router), 50 % it can. \
         The check: at 50 % with one model per GPU, affinity completes all the offered load with \
         at most a tenth of the balancer's model loads (with 24 GiB each lane holds its whole \
         catalogue and nobody reloads).\n\n\
         | lanes | budget | load | routing | completed/h | model loads | overcommits | wait p50/p99 (s) txt2txt | txt2img | img2img | img2txt |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for budget in [None, Some(24 * 1024)] {
        for load in [0.5, 0.9] {
            let trace = trace_for(cap, duration, seed, load, 4);
            let offered = trace.len() as f64 * 3600.0 / duration.as_secs_f64();
            let cfg = Config {
                lanes: (0..4)
                    .map(|i| LaneSpec {
                        name: format!("gpu{i}"),
                        memory_mb: budget,
                    })
                    .collect(),
                routing: Routing::default(),
                ..bounded()
            };
            let im = sim::run_scheduler(cfg, &models, &trace);
            fleet_row(
                &mut out,
                (4, budget, load),
                Routing::default().as_str(),
                &im,
            );
            let plain =
                sim::run_balanced(&models, &trace, &[budget; 4], sim::Balancer::LeastLoaded);
            fleet_row(&mut out, (4, budget, load), "plain least_loaded", &plain);
            let completes = im.completed == trace.len() && im.per_hour() >= 0.97 * offered;
            let fewer = im.loads * 10 <= plain.loads;
            let checked = budget.is_none() && load < 0.6;
            if (checked && !(completes && fewer)) || im.overcommits != 0 {
                failures.push(format!(
                    "heterogeneous catalogues, {load}, budget {budget:?}: affinity completed {:.0}/h of {offered:.0}/h offered with {} loads (plain: {})",
                    im.per_hour(),
                    im.loads,
                    plain.loads
                ));
            }
        }
    }
    out.push('\n');
    (out, failures)
}

/// One row of the fleet table: `(lanes, budget, load)`, the routing's name and what it measured.
fn fleet_row(
    out: &mut String,
    (lanes, budget, load): (usize, Option<u64>, f64),
    name: &str,
    r: &Report,
) {
    let q = |k: Kind| fmt_quantiles(r, k, &[0.5, 0.99]);
    let _ = writeln!(
        out,
        "| {lanes} | {} | {:.0}% | {name} | {:.0} | {} | {} | {} | {} | {} | {} |",
        budget.map_or("1 model".to_owned(), |b| format!("{} GiB", b / 1024)),
        load * 100.0,
        r.per_hour(),
        r.loads,
        r.overcommits,
        q(Kind::Txt2Txt),
        q(Kind::Txt2Img),
        q(Kind::Img2Img),
        q(Kind::Img2Txt),
    );
}

fn trace_for(
    cap: f64,
    duration: Duration,
    seed: u64,
    load: f64,
    lanes: usize,
) -> Vec<sim::TraceItem> {
    TraceSpec::mixed(cap * load * lanes as f64, duration, seed).generate()
}

/// One lane at 90 %: today's bounded switching against cost-aware switching, with one model
/// resident and with a 24 GiB budget, and the target for cost-aware switching.
fn one_lane_switching(models: &[sim::SimModel], trace: &[sim::TraceItem]) -> String {
    use inference_queue::LaneSpec;
    let mut out = String::from(
        "### One lane at 90 %: cost-aware switching and co-residency\n\n\
         `cost-aware` loads a model for a group that is not starving only once the group's depth \
         times its oldest wait (request-seconds) outweighs the learned switch cost (the load plus \
         reloading what it evicts).\n\n\
         | budget | switching | completed/h | model loads | wait p50/p99/max (s) txt2txt | txt2img | img2img | img2txt |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for budget in [None, Some(24 * 1024)] {
        for cost_aware in [false, true] {
            let cfg = Config {
                lanes: vec![LaneSpec {
                    name: "gpu0".into(),
                    memory_mb: budget,
                }],
                cost_aware,
                ..bounded()
            };
            let r = sim::run_scheduler(cfg, models, trace);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                budget.map_or("1 model".to_owned(), |b| format!("{} GiB", b / 1024)),
                if cost_aware {
                    "cost-aware"
                } else {
                    "bounded (today)"
                },
                r.per_hour(),
                r.loads,
                fmt_wait(&r, Kind::Txt2Txt),
                fmt_wait(&r, Kind::Txt2Img),
                fmt_wait(&r, Kind::Img2Img),
                fmt_wait(&r, Kind::Img2Txt),
            );
            rows.push(r);
        }
    }
    let (today, cost) = (&rows[0], &rows[1]);
    let median = |r: &Report| r.wait_quantile(Kind::Txt2Txt, 0.5).unwrap_or_default();
    let ratio = median(cost).as_secs_f64() / median(today).as_secs_f64().max(1e-9);
    let max_above: Vec<String> = Kind::SEEDS
        .iter()
        .filter(|k| cost.wait_quantile(**k, 1.0) > today.wait_quantile(**k, 1.0))
        .map(|k| k.to_string())
        .collect();
    let _ = writeln!(
        out,
        "\nOne model resident: cost-aware txt2txt median / today's = {ratio:.2} (target <= 0.33: {}); \
         loads {} vs {} (target: no more: {}); kinds whose maximum wait is above today's: {}.\n",
        if ratio <= 0.33 { "met" } else { "MISSED" },
        cost.loads,
        today.loads,
        if cost.loads <= today.loads {
            "met"
        } else {
            "MISSED"
        },
        if max_above.is_empty() {
            "none".to_owned()
        } else {
            max_above.join(", ")
        },
    );
    out.push_str(
        "Why the one-model target cannot be met at 90 %: every visit to llm costs its load (6 s) \
         plus sd's reload (12 s), and at 90 % the lane has 10 % of its time, 360 s an hour, to \
         spend on loads, which the bounded default already uses (352 loads in 8 h, 369 s an \
         hour). A txt2txt median of 48 s needs llm visited about every 96 s, 37 visits and 675 s \
         of loading an hour: more loads than there is time for. Waiting costs the lane nothing \
         it could spend elsewhere, so cost-aware switching ties with the bounds here; it pays \
         where a lane has slack. Co-residency removes the loads but, with the compute shared, \
         overloads one lane at 90 % (sd waits grow); on 4 lanes it is what meets the targets \
         below.\n",
    );
    out
}

/// Why one model per lane cannot reach 1/5 of least_loaded's loads without waiting longer than
/// it: each model's demand in lanes (arrival share x service time / slots, scaled to the load);
/// the whole lanes go to single models, and the models left with a fraction share the lanes
/// left, which must visit each of them once per cycle, a load per visit. A cycle longer than
/// least_loaded's worst p99 wait makes some waits longer than that; so the fewest loads any
/// plan can make without a worse p99 is (models sharing) x (trace hours / that p99). The
/// starvation bound tightens it: each model with less than a lane of demand is visited about once
/// per `starvation_after`.
fn one_model_bound(
    spec: &TraceSpec,
    models: &[sim::SimModel],
    lanes: usize,
    hours: f64,
    rows: &[Report],
) -> String {
    let mut demand = vec![0.0; models.len()];
    let total: f64 = spec.mix.iter().map(|m| m.2).sum();
    for (_, model, share, (lo, hi)) in &spec.mix {
        demand[*model] +=
            spec.rate * (share / total) * ((lo + hi) / 2.0) / f64::from(models[*model].slots);
    }
    let whole: f64 = demand.iter().map(|d| d.floor()).sum();
    let shared_models = demand.iter().filter(|d| d.fract() > 1e-9).count();
    let shared_lanes = lanes as f64 - whole;
    let least = &rows[1];
    let p99 = Kind::SEEDS
        .iter()
        .filter_map(|k| least.wait_quantile(*k, 0.99))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1.0);
    let min_loads = shared_models as f64 * hours * 3600.0 / p99;
    // The starvation bound: models with less than a lane of demand share lanes, and each must be
    // visited about once per `starvation_after` while it has waiting work, a load per visit.
    let visiting = demand.iter().filter(|d| **d < 1.0).count();
    let starvation = bounded()
        .bounds
        .starvation_after
        .unwrap_or_default()
        .as_secs_f64()
        .max(1.0);
    let starved_loads = if visiting >= 2 {
        visiting as f64 * hours * 3600.0 / starvation
    } else {
        0.0
    };
    let split: Vec<String> = models
        .iter()
        .zip(&demand)
        .map(|(m, d)| format!("{} {d:.2}", m.name))
        .collect();
    format!(
        " Demand in lanes at this load: {}; {shared_models} models share the {shared_lanes:.0} \
         lane(s) left after whole lanes, one load per visit, so a plan whose waits stay within \
         least_loaded's worst p99 ({p99:.0} s) makes at least {min_loads:.0} loads in {hours:.0} h, \
         {:.2} of least_loaded's {}: the 0.2 target leaves no room for anything short of a perfect \
         cyclic plan running at exactly that wait. im's starvation bound ({starvation:.0} s by \
         default), which the issue keeps, makes it tighter: the {visiting} models with less than a \
         lane of demand share lanes, and each is visited about once per {starvation:.0} s while it \
         has waiting work, a load per visit: about {starved_loads:.0} loads in {hours:.0} h, {:.2} \
         of least_loaded's. Affinity makes {} with p99 waits about half of least_loaded's.",
        split.join(", "),
        min_loads / least.loads.max(1) as f64,
        least.loads,
        starved_loads / least.loads.max(1) as f64,
        rows[0].loads,
    )
}

/// The targets at 4 lanes and 90 %, against both readings of "least_loaded": the
/// ordinary balancer in front of plain servers the issue starts from, and im's own `least_loaded`
/// routing (requests placed at arrival, each lane grouping them). Rows in the order affinity,
/// least_loaded, round_robin, best_performance, sticky_hash, plain least_loaded, plain
/// round_robin.
fn fleet_verdict(rows: &[Report], budget: &str, offered_per_hour: f64) -> String {
    let (aff, sticky) = (&rows[0], &rows[4]);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let against = |name: &str, base: &Report| {
        let loads = aff.loads as f64 / base.loads.max(1) as f64;
        let tput = aff.per_hour() / base.per_hour().max(1e-9);
        let ceiling = offered_per_hour / base.per_hour().max(1e-9);
        let worse: Vec<String> = Kind::SEEDS
            .iter()
            .filter(|k| {
                aff.wait_quantile(**k, 0.99).unwrap_or_default()
                    > base.wait_quantile(**k, 0.99).unwrap_or_default()
            })
            .map(|k| k.to_string())
            .collect();
        let why = if tput >= 1.5 {
            String::new()
        } else {
            format!(
                "; the offered {offered_per_hour:.0}/h is only {ceiling:.2}x what it completes, \
                 and no scheduler completes more than is offered"
            )
        };
        format!(
            "against {name}: loads {loads:.3} of its (target <= 0.2: {}); completed/h \
             {tput:.2}x (target >= 1.5x: {}{why}); kinds whose p99 wait is above its: {} \
             (target: none: {})",
            verdict(loads <= 0.2),
            verdict(tput >= 1.5),
            if worse.is_empty() {
                "none".to_owned()
            } else {
                worse.join(", ")
            },
            verdict(worse.is_empty()),
        )
    };
    let vs_sticky = aff.per_hour() / sticky.per_hour().max(1e-9);
    format!(
        "At 4 lanes and 90% ({budget} per lane), affinity {}; {}. Against sticky_hash: \
         completed/h {vs_sticky:.2}x (target >= 1: {}).",
        against(
            "the ordinary balancer in front of plain servers (plain least_loaded)",
            &rows[5]
        ),
        against(
            "im's own least_loaded routing (each lane grouping its requests)",
            &rows[1]
        ),
        verdict(vs_sticky >= 1.0),
    )
}
