//! A deterministic discrete-event simulation of LocalAI's cost model, driven by the real core.
//!
//! The simulated upstream keeps one model resident (or, with a memory budget, the models whose
//! sizes fit, evicting the least recently used to make room, as LocalAI's
//! `--max-active-backends` and llama.cpp's `--models-max` do), loads on the first request to a
//! model that is not resident (the request waits for the load), runs up to `slots` requests of
//! each resident model at once, and may fail an attempt transiently. Evicting a model that has
//! requests running is an overcommit: what im must never cause. [`run_scheduler`] drives a real [`Scheduler`] against it;
//! [`run_fifo`] replays the same trace the way users hit LocalAI today: requests start in arrival
//! order, and a request for another model waits for the running ones, then triggers a load;
//! [`run_balanced`] does the same for a fleet of such servers behind an ordinary load balancer.
//! Everything runs on a virtual clock, so a day of traffic takes milliseconds and a seed reproduces
//! a run exactly. Tests, the `inference-queue` benchmarks and `cargo xtask sim` share this module.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::config::{Config, ModelSpec};
mod baseline;
pub mod prompts;

pub use baseline::{Balancer, run_balanced, run_fifo};

use crate::rng::Rng;
use crate::scheduler::{Admission, Event, Outcome, Resolution, Scheduler, Submit};
use crate::types::{Kind, LaneId, RequestId, Time};

/// One model of the simulated upstream.
#[derive(Clone, Debug)]
pub struct SimModel {
    /// Its name.
    pub name: String,
    /// The kinds it serves.
    pub kinds: Vec<Kind>,
    /// How long loading it takes.
    pub load: Duration,
    /// Requests it runs at once.
    pub slots: u32,
    /// Its memory in MiB (what a lane's budget is counted in).
    pub size_mb: u64,
    /// The lanes whose catalogue lists it (`None`: every lane): a fleet whose boxes carry
    /// different models.
    pub lanes: Option<Vec<usize>>,
    /// A chat model's prompt costs and cache (`None`: requests take their trace's service time).
    pub prompt: Option<prompts::PromptCosts>,
}

/// The catalogue of SPEC-like costs: an LLM (6 s load, 4 slots, 8 GiB), a vision LLM (6 s, 4 slots,
/// 8 GiB) and a diffusion model serving txt2img and img2img (12 s, 1 slot, 12 GiB): a 24 GiB GPU
/// holds any two of them, not all three.
pub fn localai_catalogue() -> Vec<SimModel> {
    vec![
        SimModel {
            name: "llm".into(),
            kinds: vec![Kind::Txt2Txt],
            load: Duration::from_secs(6),
            slots: 4,
            size_mb: 8 * 1024,
            lanes: None,
            prompt: None,
        },
        SimModel {
            name: "vision".into(),
            kinds: vec![Kind::Img2Txt],
            load: Duration::from_secs(6),
            slots: 4,
            size_mb: 8 * 1024,
            lanes: None,
            prompt: None,
        },
        SimModel {
            name: "sd".into(),
            kinds: vec![Kind::Txt2Img, Kind::Img2Img],
            load: Duration::from_secs(12),
            slots: 1,
            size_mb: 12 * 1024,
            lanes: None,
            prompt: None,
        },
    ]
}

/// The scheduler's model list for a catalogue (`max_in_flight` = slots, sizes and load times as
/// a configuration would declare them).
pub fn model_specs(models: &[SimModel]) -> Vec<ModelSpec> {
    models
        .iter()
        .map(|m| {
            let mut spec = ModelSpec::new(m.name.clone(), &m.kinds, m.slots)
                .with_size_mb(m.size_mb)
                .with_load_time(m.load);
            spec.only_lanes = m.lanes.clone();
            spec
        })
        .collect()
}

/// One request of a trace.
#[derive(Clone, Debug)]
pub struct TraceItem {
    /// Arrival time.
    pub at: Time,
    /// Its kind.
    pub kind: Kind,
    /// Index into the catalogue.
    pub model: usize,
    /// Service time once started.
    pub service: Duration,
    /// Transient failures of its first attempts (each costs `service / 4` before failing).
    pub failures: u32,
    /// Whose it is (fair share inside its group; 0 for everyone: first come, first served).
    pub tenant: u32,
    /// Its priority class.
    pub class: crate::types::Class,
    /// Its queue deadline (`None`: the kind's default).
    pub deadline: Option<Duration>,
    /// A chat's prompt: its service is then its model's prefill of what the lane's server has
    /// not cached, and its decode ([`prompts`]).
    pub prompt: Option<prompts::Prompt>,
}

/// What a trace looks like.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    /// Per kind: (kind, model index, share of arrivals, service time range in seconds).
    pub mix: Vec<(Kind, usize, f64, (f64, f64))>,
    /// Arrivals per second (Poisson).
    pub rate: f64,
    /// Length of the arrival window.
    pub duration: Duration,
    /// Chance that an attempt fails transiently.
    pub failure_rate: f64,
    /// Seed.
    pub seed: u64,
}

impl TraceSpec {
    /// The mixed load of SPEC §9 against [`localai_catalogue`]: 50 % chat, 15 % vision, 20 %
    /// txt2img, 15 % img2img; chat 1-3 s, images 5-8 s.
    pub fn mixed(rate: f64, duration: Duration, seed: u64) -> TraceSpec {
        TraceSpec {
            mix: vec![
                (Kind::Txt2Txt, 0, 0.50, (1.0, 3.0)),
                (Kind::Img2Txt, 1, 0.15, (1.0, 3.0)),
                (Kind::Txt2Img, 2, 0.20, (5.0, 8.0)),
                (Kind::Img2Img, 2, 0.15, (5.0, 8.0)),
            ],
            rate,
            duration,
            failure_rate: 0.0,
            seed,
        }
    }

    /// Requests per second the catalogue sustains when it never switches models.
    pub fn capacity(&self, models: &[SimModel]) -> f64 {
        let total: f64 = self.mix.iter().map(|m| m.2).sum();
        let busy: f64 = self
            .mix
            .iter()
            .map(|(_, model, share, (lo, hi))| {
                (share / total) * ((lo + hi) / 2.0) / f64::from(models[*model].slots)
            })
            .sum();
        1.0 / busy
    }

    /// The trace.
    pub fn generate(&self) -> Vec<TraceItem> {
        let mut rng = Rng::new(self.seed);
        let total: f64 = self.mix.iter().map(|m| m.2).sum();
        let mut out = Vec::new();
        let mut t = 0.0;
        let end = self.duration.as_secs_f64();
        loop {
            t += rng.exp(1.0 / self.rate);
            if t >= end {
                break;
            }
            let mut pick = rng.next_f64() * total;
            let mut chosen = &self.mix[self.mix.len() - 1];
            for m in &self.mix {
                if pick < m.2 {
                    chosen = m;
                    break;
                }
                pick -= m.2;
            }
            let (kind, model, _, (lo, hi)) = *chosen;
            let service = Duration::from_secs_f64(rng.range_f64(lo, hi));
            let mut failures = 0;
            while failures < 3 && rng.next_f64() < self.failure_rate {
                failures += 1;
            }
            out.push(TraceItem {
                at: Time::from_duration(Duration::from_secs_f64(t)),
                kind,
                model,
                service,
                failures,
                tenant: 0,
                class: Default::default(),
                deadline: None,
                prompt: None,
            });
        }
        out
    }
}

/// What a simulated run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests that finished successfully.
    pub completed: usize,
    /// Requests that left without success (expired, exhausted, rejected).
    pub not_completed: usize,
    /// Model loads on the upstream.
    pub loads: u64,
    /// Time the upstream spent loading.
    pub load_time: Duration,
    /// Times two models ran at once on the upstream (what im must never cause).
    pub overcommits: u64,
    /// From the first arrival to the last completion.
    pub makespan: Duration,
    /// Per kind: every request's wait from arrival to the start of its service.
    pub waits: HashMap<Kind, Vec<Duration>>,
    /// Per tenant: every request's wait from arrival to the start of its service.
    pub tenant_waits: HashMap<u32, Vec<Duration>>,
    /// Per tenant: requests that finished successfully.
    pub tenant_completed: HashMap<u32, usize>,
    /// With [`run_scheduler_predicting`]: per request that started, its predicted wait when it
    /// arrived ([`Scheduler::predicted_wait`]) and its actual wait.
    pub predictions: Vec<Prediction>,
    /// Per request dispatched, its first attempt.
    pub first_dispatch: Vec<FirstAttempt>,
    /// The trace's requests (by index) that waited past their deadline in the queue.
    pub expired: Vec<usize>,
    /// The trace's requests (by index) refused at admission because they would have expired
    /// (`limits.early_refusal_pct`), each with its predicted wait.
    pub refused_early: Vec<(usize, Duration)>,
    /// Per request with a prompt that succeeded: its time to first token (wait, load, prefill).
    pub ttft: Vec<Duration>,
    /// Prompt blocks the servers had cached, and prompt blocks sent.
    pub prefix_blocks: (u64, u64),
    /// Per lane: the service time it ran (slot-seconds).
    pub lane_busy: Vec<Duration>,
}

/// A request's first attempt ([`Report::first_dispatch`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FirstAttempt {
    /// The request: its index in the trace.
    pub item: usize,
    /// From its arrival to its dispatch (what its queue deadline bounds).
    pub dispatched: Duration,
    /// From its arrival to the start of its service (after the load it waited for).
    pub started: Duration,
}

/// A request's predicted wait when it arrived, and the wait it had ([`Report::predictions`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// The request: its index in the trace.
    pub item: usize,
    /// Its kind.
    pub kind: Kind,
    /// Its wait as [`Scheduler::predicted_wait`] predicted it at its arrival.
    pub predicted: Duration,
    /// From its arrival to the start of its service (after the load its attempt carried).
    pub actual: Duration,
}

impl Report {
    /// Completed requests per hour of makespan.
    pub fn per_hour(&self) -> f64 {
        if self.makespan.is_zero() {
            return 0.0;
        }
        self.completed as f64 * 3600.0 / self.makespan.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of a tenant's waits.
    pub fn tenant_wait_quantile(&self, tenant: u32, q: f64) -> Option<Duration> {
        quantile(self.tenant_waits.get(&tenant)?, q)
    }

    /// The `q` quantile (0..=1) of a kind's waits.
    pub fn wait_quantile(&self, kind: Kind, q: f64) -> Option<Duration> {
        quantile(self.waits.get(&kind)?, q)
    }
}

/// The `q` quantile (0..=1) of `waits`.
fn quantile(waits: &[Duration], q: f64) -> Option<Duration> {
    let mut w = waits.to_vec();
    if w.is_empty() {
        return None;
    }
    w.sort();
    let idx = ((w.len() - 1) as f64 * q).round() as usize;
    Some(w[idx])
}

/// The simulated upstream: resident models within a memory budget (one model without one), slots,
/// loads.
#[derive(Debug)]
struct Upstream {
    /// MiB; `None`: one model at a time.
    budget: Option<u64>,
    /// Least recently used first.
    resident: Vec<usize>,
    /// Per model: when its load ends.
    ready_at: Vec<Time>,
    /// Per model: requests running.
    running: Vec<u32>,
    loads: u64,
    load_time: Duration,
    overcommits: u64,
    /// Its chat server's prompt cache.
    prompts: prompts::PromptCache,
    /// When its GPU is done with the prefills it has started.
    prefill_free_at: Time,
}

impl Upstream {
    fn new(models: &[SimModel], budget: Option<u64>) -> Upstream {
        Upstream {
            budget,
            resident: Vec::new(),
            ready_at: vec![Time::ZERO; models.len()],
            running: vec![0; models.len()],
            loads: 0,
            load_time: Duration::ZERO,
            overcommits: 0,
            prompts: prompts::PromptCache::default(),
            prefill_free_at: Time::ZERO,
        }
    }

    fn footprint(&self, models: &[SimModel], model: usize) -> u64 {
        self.budget.map_or(1, |_| models[model].size_mb)
    }

    /// What its resident models take of its budget.
    fn used(&self, models: &[SimModel]) -> u64 {
        self.resident
            .iter()
            .map(|m| self.footprint(models, *m))
            .sum()
    }

    /// Make `model` resident, evicting the least recently used models until it fits (an eviction
    /// of a model with requests running counts as an overcommit); the time at which it is ready.
    fn ensure(&mut self, models: &[SimModel], model: usize, now: Time) -> Time {
        if let Some(i) = self.resident.iter().position(|m| *m == model) {
            self.resident.remove(i);
        } else {
            let cap = self.budget.unwrap_or(1);
            let need = self.footprint(models, model);
            while !self.resident.is_empty() && self.used(models) + need > cap {
                let victim = self.resident.remove(0);
                if self.running[victim] > 0 {
                    self.overcommits += 1;
                }
            }
            self.loads += 1;
            self.load_time += models[model].load;
            self.ready_at[model] = now + models[model].load;
        }
        self.resident.push(model);
        self.ready_at[model].max(now)
    }

    /// Whether a model other than `model` has requests running (they share the GPU's compute).
    fn runs_other_than(&self, model: usize) -> bool {
        self.running
            .iter()
            .enumerate()
            .any(|(m, n)| m != model && *n > 0)
    }

    /// Unload `model`: an overcommit if it has requests running.
    fn unload(&mut self, model: usize) {
        if self.running[model] > 0 {
            self.overcommits += 1;
        }
        self.resident.retain(|m| *m != model);
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival(usize),
    Done(RequestId, bool, usize),
    Lifecycle(usize),
}

/// Drive a real [`Scheduler`] over `trace` against simulated upstreams, one per lane of `cfg`
/// (each with one resident model, its own slots and loads).
///
/// `cfg.models` is replaced by the catalogue. Panics if the run does not settle within a bound of
/// steps proportional to the trace (a livelock is a bug, and this turns it into a failing test).
pub fn run_scheduler(cfg: Config, models: &[SimModel], trace: &[TraceItem]) -> Report {
    run_scheduler_observed(cfg, models, trace, &mut |_, _| {})
}

/// [`run_scheduler`], calling `observe` with every event the core emits and, with `None`, after
/// every step (so tests can check invariants on [`Scheduler::status`] at every step).
pub fn run_scheduler_observed(
    cfg: Config,
    models: &[SimModel],
    trace: &[TraceItem],
    observe: &mut dyn FnMut(&Scheduler, Option<&Event>),
) -> Report {
    replay(cfg, models, trace, observe, false, false)
}

/// [`run_scheduler`] with every request submitted as one tenant's interactive work (each group
/// first come, first served, as before fair share), its figures still counted by the trace's
/// tenants.
pub fn run_scheduler_one_tenant(cfg: Config, models: &[SimModel], trace: &[TraceItem]) -> Report {
    replay(cfg, models, trace, &mut |_, _| {}, true, false)
}

/// [`run_scheduler`], recording each request's predicted wait when it arrived next to its actual
/// wait ([`Report::predictions`]).
pub fn run_scheduler_predicting(cfg: Config, models: &[SimModel], trace: &[TraceItem]) -> Report {
    replay(cfg, models, trace, &mut |_, _| {}, false, true)
}

fn replay(
    mut cfg: Config,
    models: &[SimModel],
    trace: &[TraceItem],
    observe: &mut dyn FnMut(&Scheduler, Option<&Event>),
    one_tenant: bool,
    predict: bool,
) -> Report {
    cfg.models = model_specs(models);
    let mut ups: Vec<Upstream> = cfg
        .lanes
        .iter()
        .map(|l| Upstream::new(models, l.memory_mb))
        .collect();
    // The cache every server shares when the costs say so (an oracle, see `PromptCosts::shared`).
    let mut oracle_prompts = prompts::PromptCache::default();
    let mut core = Scheduler::new(cfg).expect("valid simulation config");
    let mut report = Report::default();
    let mut heap: BinaryHeap<Reverse<(Time, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<_>, t: Time, ev: Ev| {
        seq += 1;
        heap.push(Reverse((t, seq, ev)));
    };
    for (i, item) in trace.iter().enumerate() {
        push(&mut heap, item.at, Ev::Arrival(i));
    }
    let mut item_of: HashMap<RequestId, usize> = HashMap::new();
    let mut failures_left: HashMap<RequestId, u32> = HashMap::new();
    let mut predicted_of: HashMap<RequestId, Duration> = HashMap::new();
    let first = trace.first().map_or(Time::ZERO, |t| t.at);
    let mut last = first;
    let mut steps = 0usize;
    let max_steps = 100 + trace.len() * 200;
    loop {
        steps += 1;
        assert!(
            steps < max_steps,
            "simulation did not settle: livelock in the core?"
        );
        let next_ev = heap.peek().map(|Reverse((t, _, _))| *t);
        let next_timer = core.poll_timeout();
        let now = match (next_ev, next_timer) {
            (None, None) => break,
            (Some(e), Some(t)) if t < e => {
                core.handle_timeout(t);
                t
            }
            (None, Some(t)) => {
                core.handle_timeout(t);
                t
            }
            _ => {
                let Reverse((t, _, ev)) = heap.pop().expect("peeked");
                match ev {
                    Ev::Arrival(i) => {
                        let item = &trace[i];
                        let sub = Submit {
                            kind: item.kind,
                            model: &models[item.model].name,
                            lane: None,
                            deadline: item.deadline,
                            bytes: 0,
                            tenant: crate::types::TenantId(if one_tenant {
                                0
                            } else {
                                item.tenant
                            }),
                            class: if one_tenant {
                                Default::default()
                            } else {
                                item.class
                            },
                            cost: None,
                            prefix: item.prompt.as_ref().map(|p| &p.chain),
                        };
                        let predicted = predict
                            .then(|| core.predicted_wait(t, item.kind, sub.model).ok().flatten())
                            .flatten();
                        match core.submit(t, sub) {
                            Admission::Accepted(id) => {
                                item_of.insert(id, i);
                                failures_left.insert(id, item.failures);
                                if let Some(p) = predicted {
                                    predicted_of.insert(id, p);
                                }
                            }
                            Admission::Rejected(r) => {
                                report.not_completed += 1;
                                if let crate::Rejection::WouldExpire { predicted, .. } = r {
                                    report.refused_early.push((i, predicted));
                                }
                            }
                        }
                    }
                    Ev::Done(id, ok, lane) => {
                        ups[lane].running[trace[item_of[&id]].model] -= 1;
                        let outcome = if ok {
                            Outcome::Success
                        } else {
                            Outcome::Transient {
                                retry_after: None,
                                upstream_fault: true,
                            }
                        };
                        match core.complete(t, id, outcome) {
                            Resolution::Finished => {
                                report.completed += 1;
                                *report
                                    .tenant_completed
                                    .entry(trace[item_of[&id]].tenant)
                                    .or_default() += 1;
                                last = last.max(t);
                            }
                            Resolution::Exhausted { .. } => report.not_completed += 1,
                            Resolution::Retry { .. } | Resolution::Ignored => {}
                        }
                    }
                    Ev::Lifecycle(lane) => core.lifecycle_done(t, LaneId(lane)),
                }
                t
            }
        };
        while let Some(ev) = core.poll_event() {
            observe(&core, Some(&ev));
            match ev {
                Event::Dispatch {
                    id, lane, attempt, ..
                } => {
                    let i = item_of[&id];
                    let item = &trace[i];
                    let up = &mut ups[lane.0];
                    let start = up.ensure(models, item.model, now);
                    if attempt == 1 {
                        report.first_dispatch.push(FirstAttempt {
                            item: i,
                            dispatched: now.saturating_since(item.at),
                            started: start.saturating_since(item.at),
                        });
                    }
                    if let Some(p) = predicted_of.remove(&id) {
                        report.predictions.push(Prediction {
                            item: i,
                            kind: item.kind,
                            predicted: p,
                            actual: start.saturating_since(item.at),
                        });
                    }
                    // Models side by side share the GPU's compute: a request that starts while
                    // another model runs takes 1.5x as long.
                    let shared = up.runs_other_than(item.model);
                    // A prompt costs its prefill of what this server has not cached, which holds
                    // the GPU's compute (prefills run one after another), then its decode, which
                    // the slots share; its first token comes after the prefill.
                    let (prefill, service) = match (&item.prompt, &models[item.model].prompt) {
                        (Some(p), Some(costs)) => {
                            let cache = if costs.shared {
                                &mut oracle_prompts
                            } else {
                                &mut up.prompts
                            };
                            let matched = cache.serve(p, costs);
                            report.prefix_blocks.0 += matched as u64;
                            report.prefix_blocks.1 += p.chain.len() as u64;
                            let (prefill, whole) = costs.service(p, matched);
                            let queued = up.prefill_free_at.max(start).saturating_since(start);
                            up.prefill_free_at = start + queued + prefill;
                            (queued + prefill, queued + whole)
                        }
                        _ => (Duration::ZERO, item.service),
                    };
                    let (prefill, service) = if shared {
                        (prefill.mul_f64(1.5), service.mul_f64(1.5))
                    } else {
                        (prefill, service)
                    };
                    if report.lane_busy.len() <= lane.0 {
                        report.lane_busy.resize(lane.0 + 1, Duration::ZERO);
                    }
                    report.lane_busy[lane.0] += service;
                    up.running[item.model] += 1;
                    let left = failures_left.get_mut(&id).expect("known id");
                    let ok = *left == 0;
                    if ok {
                        let wait = start.saturating_since(item.at);
                        report.waits.entry(item.kind).or_default().push(wait);
                        report
                            .tenant_waits
                            .entry(item.tenant)
                            .or_default()
                            .push(wait);
                        if item.prompt.is_some() {
                            report.ttft.push(wait + prefill);
                        }
                        push(&mut heap, start + service, Ev::Done(id, true, lane.0));
                    } else {
                        *left -= 1;
                        push(&mut heap, start + service / 4, Ev::Done(id, false, lane.0));
                    }
                }
                Event::Expired { id, .. } => {
                    report.not_completed += 1;
                    if let Some(i) = item_of.get(&id) {
                        report.expired.push(*i);
                    }
                }
                Event::Failed { .. } => report.not_completed += 1,
                Event::Unload { lane, model } => {
                    ups[lane.0].unload(model.0);
                    push(&mut heap, now, Ev::Lifecycle(lane.0));
                }
                Event::WarmUp { lane, model } => {
                    let ready = ups[lane.0].ensure(models, model.0, now);
                    push(&mut heap, ready, Ev::Lifecycle(lane.0));
                }
                Event::Switched { .. }
                | Event::BreakerOpened { .. }
                | Event::BreakerClosed { .. } => {}
            }
        }
        observe(&core, None);
    }
    report.loads = ups.iter().map(|u| u.loads).sum();
    report.load_time = ups.iter().map(|u| u.load_time).sum();
    report.overcommits = ups.iter().map(|u| u.overcommits).sum();
    report.makespan = last.saturating_since(first);
    report
}
