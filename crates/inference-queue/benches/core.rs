//! Core throughput: submit + dispatch + complete with N requests queued across 64 groups, of
//! one tenant and of 64 (fair share inside every group); and with a predicted wait asked for at
//! one submit in 8 (the engine samples one in 32): at 10k queued the fluid model, at 100 and
//! 1,000 a replay of the policy on a copy of the state.
//! One iteration = one submit, one completion, and the dispatch it triggers (3 operations).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inference_queue::{
    Admission, Config, Event, Kind, ModelSpec, Outcome, RequestId, Scheduler, Submit, TenantId,
    Time,
};

const GROUPS: usize = 64;

/// The `i`th request: kinds and models in turn, tenant `i % tenants`.
fn nth(i: usize, names: &[String], tenants: usize) -> Submit<'_> {
    Submit {
        kind: Kind::SEEDS[i % 4],
        model: &names[(i / 4) % names.len()],
        lane: None,
        deadline: None,
        bytes: 0,
        tenant: TenantId((i % tenants) as u32),
        class: Default::default(),
        cost: None,
        prefix: None,
    }
}

fn setup(queued: usize, tenants: usize) -> (Scheduler, Vec<String>, Vec<RequestId>, Time) {
    // 16 models x 4 kinds = 64 groups.
    let names: Vec<String> = (0..GROUPS / 4).map(|i| format!("m{i}")).collect();
    let cfg = Config {
        models: names
            .iter()
            .map(|n| ModelSpec::new(n.clone(), &Kind::ALL, 4))
            .collect(),
        default_deadline: [Duration::from_secs(1 << 30); Kind::COUNT],
        limits: inference_queue::Limits {
            max_queued_total: queued * 2 + 100,
            ..Default::default()
        },
        ..Config::default()
    };
    let mut core = Scheduler::new(cfg).expect("valid");
    let mut now = Time::ZERO;
    let mut running = Vec::new();
    for i in 0..queued {
        now += Duration::from_micros(10);
        let sub = nth(i, &names, tenants);
        assert!(matches!(core.submit(now, sub), Admission::Accepted(_)));
    }
    while let Some(ev) = core.poll_event() {
        if let Event::Dispatch { id, .. } = ev {
            running.push(id);
        }
    }
    (core, names, running, now)
}

fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("submit_dispatch_complete");
    // `predicting`: one submit in 8 also asks for the predicted wait, as the engine's driver
    // does at admission (for `im_prediction_error_seconds`, one in 32) and early refusal does
    // for every request with a deadline.
    for (queued, tenants, predicting) in [
        (1_000usize, 1usize, false),
        (10_000, 1, false),
        (100_000, 1, false),
        (10_000, 64, false),
        (10_000, 1, true),
        (100, 1, true),
        (1_000, 1, true),
    ] {
        g.throughput(Throughput::Elements(3));
        let id = match (tenants, predicting) {
            (1, false) => BenchmarkId::from_parameter(queued),
            (1, true) => BenchmarkId::new("predicting", queued),
            _ => BenchmarkId::new(format!("{tenants}_tenants"), queued),
        };
        g.bench_with_input(id, &(queued, tenants), |b, &(queued, tenants)| {
            let (mut core, names, mut running, mut now) = setup(queued, tenants);
            let mut i = 0usize;
            b.iter(|| {
                now += Duration::from_micros(10);
                i += 1;
                let sub = nth(i, &names, tenants);
                if predicting && i.is_multiple_of(8) {
                    black_box(core.predicted_wait(now, sub.kind, sub.model).ok());
                }
                black_box(core.submit(now, sub));
                let id = running.pop().expect("something runs");
                black_box(core.complete(now, id, Outcome::Success));
                while let Some(ev) = core.poll_event() {
                    if let Event::Dispatch { id, .. } = ev {
                        running.push(id);
                    }
                }
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = cycle
}
criterion_main!(benches);
