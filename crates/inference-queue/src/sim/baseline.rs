//! What im is measured against: the same trace served the way clients hit LocalAI without im,
//! one server in arrival order ([`run_fifo`]) or a fleet behind an ordinary load balancer
//! ([`run_balanced`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::{Report, SimModel, TraceItem, Upstream};
use crate::types::Time;

/// Replay `trace` the way clients hit LocalAI without im: strict arrival order, one resident model,
/// a request for another model waits for the running ones to finish and then loads its model.
/// Failed attempts are retried at once by the client, in place.
pub fn run_fifo(models: &[SimModel], trace: &[TraceItem]) -> Report {
    run_balanced(models, trace, &[None], Balancer::LeastLoaded)
}

/// How an ordinary load balancer in front of several servers picks one for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancer {
    /// The server with the fewest requests outstanding (waiting in it or running): HAProxy's
    /// `leastconn`, nginx's `least_conn`, LiteLLM's `least-busy`.
    LeastLoaded,
    /// Each server in turn.
    RoundRobin,
}

/// One plain server behind a balancer: it serves its requests in arrival order.
struct PlainServer {
    up: Upstream,
    /// Its requests not started yet, in arrival order.
    queue: VecDeque<usize>,
    /// End times and models of its running requests (min-heap).
    running: BinaryHeap<Reverse<(Time, usize)>>,
}

impl PlainServer {
    /// Start what the head of its line allows at `now`: the head runs when its model is resident
    /// with a free slot, or when the models it must evict to load it are idle (the least
    /// recently used first); else it and everything behind it waits.
    fn start(&mut self, models: &[SimModel], trace: &[TraceItem], now: Time, report: &mut Report) {
        while let Some(&i) = self.queue.front() {
            let item = &trace[i];
            let up = &mut self.up;
            if up.resident.contains(&item.model) {
                if up.running[item.model] >= models[item.model].slots {
                    break;
                }
            } else {
                let busy: u64 = up
                    .resident
                    .iter()
                    .filter(|m| up.running[**m] > 0)
                    .map(|m| up.footprint(models, *m))
                    .sum();
                let (need, cap) = (up.footprint(models, item.model), up.budget.unwrap_or(1));
                if busy + need > cap {
                    break;
                }
                // Room from the idle models, the least recently used first.
                while up.used(models) + need > cap {
                    let idle = up
                        .resident
                        .iter()
                        .position(|m| up.running[*m] == 0)
                        .expect("the busy models leave room");
                    up.resident.remove(idle);
                }
            }
            self.queue.pop_front();
            let start = up.ensure(models, item.model, now);
            let shared = up.runs_other_than(item.model);
            let service = item.service + (item.service / 4) * item.failures;
            let busy = if shared {
                service.mul_f64(1.5)
            } else {
                service
            };
            up.running[item.model] += 1;
            self.running.push(Reverse((start + busy, item.model)));
            report
                .waits
                .entry(item.kind)
                .or_default()
                .push(start.saturating_since(item.at));
            report.completed += 1;
        }
    }
}

/// Replay `trace` through an ordinary load balancer in front of plain servers, one per entry of
/// `budgets` (MiB; `None`: one model at a time): each request goes to a server when it arrives,
/// whatever that server has loaded, and each server serves its requests in arrival order, loading
/// models as they come (what a fleet of LocalAI servers behind HAProxy or nginx does). Models side
/// by side share the compute: a request that starts while another model runs takes 1.5x as long.
pub fn run_balanced(
    models: &[SimModel],
    trace: &[TraceItem],
    budgets: &[Option<u64>],
    balancer: Balancer,
) -> Report {
    let mut report = Report::default();
    let mut servers: Vec<PlainServer> = budgets
        .iter()
        .map(|b| PlainServer {
            up: Upstream::new(models, *b),
            queue: VecDeque::new(),
            running: BinaryHeap::new(),
        })
        .collect();
    let mut next_arrival = 0usize;
    let mut turn = 0usize;
    let first = trace.first().map_or(Time::ZERO, |t| t.at);
    let mut last = first;
    loop {
        let next_done = servers
            .iter()
            .enumerate()
            .filter_map(|(s, srv)| srv.running.peek().map(|Reverse((t, _))| (*t, s)))
            .min();
        let next_arr = trace.get(next_arrival).map(|t| t.at);
        let (now, server) = match (next_done, next_arr) {
            (None, None) => break,
            (Some((d, s)), a) if a.is_none_or(|a| d <= a) => {
                let Reverse((_, model)) = servers[s].running.pop().expect("peeked");
                servers[s].up.running[model] -= 1;
                last = last.max(d);
                (d, s)
            }
            (_, a) => {
                let now = a.expect("an arrival is next");
                // The servers whose catalogue has the model (a balancer configured per model).
                let serving: Vec<usize> = (0..servers.len())
                    .filter(|s| {
                        models[trace[next_arrival].model]
                            .lanes
                            .as_ref()
                            .is_none_or(|l| l.contains(s))
                    })
                    .collect();
                let s = match balancer {
                    Balancer::LeastLoaded => *serving
                        .iter()
                        .min_by_key(|s| servers[**s].queue.len() + servers[**s].running.len())
                        .expect("at least one server"),
                    Balancer::RoundRobin => {
                        turn += 1;
                        serving[(turn - 1) % serving.len()]
                    }
                };
                servers[s].queue.push_back(next_arrival);
                next_arrival += 1;
                (now, s)
            }
        };
        servers[server].start(models, trace, now, &mut report);
    }
    report.loads = servers.iter().map(|s| s.up.loads).sum();
    report.load_time = servers.iter().map(|s| s.up.load_time).sum();
    report.overcommits = servers.iter().map(|s| s.up.overcommits).sum();
    report.makespan = last.saturating_since(first);
    report
}
