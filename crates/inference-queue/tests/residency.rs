//! Co-residency: a lane with a memory budget keeps several models loaded and serves them side by
//! side; the barrier applies only when a model must be evicted to make room. The test models take
//! llm 4,000 MiB, llm2 3,000, sd 6,000, vision 2,000.

mod common;

use std::time::Duration;

use common::*;
use inference_queue::*;

fn budget(memory_mb: u64) -> Config {
    let mut c = cfg(Bounds::default());
    c.lanes = vec![LaneSpec::new("gpu").with_memory_mb(memory_mb)];
    c
}

fn resident(h: &Harness) -> Vec<String> {
    h.core.status(h.now).lanes[0]
        .resident
        .iter()
        .map(|r| r.model.clone())
        .collect()
}

#[test]
fn models_that_fit_together_run_side_by_side() {
    let mut h = Harness::new(budget(10_000));
    let chat = h.id(Kind::Txt2Txt, "llm");
    let image = h.id(Kind::Txt2Img, "sd");
    // 4,000 + 6,000 fit in 10,000: no barrier, both run at once.
    assert_eq!(h.running(), [chat, image].into());
    assert_eq!(h.core.counters().model_switches, 2);
    assert_eq!(h.core.counters().evictions, 0);
    let st = h.core.status(h.now);
    assert_eq!(st.lanes[0].memory_used_mb(), Some(10_000));
}

#[test]
fn a_lane_without_a_budget_holds_one_model() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let chat = h.id(Kind::Txt2Txt, "llm");
    let vision = h.id(Kind::Img2Txt, "vision");
    assert_eq!(h.running(), [chat].into(), "vision waits for the barrier");
    h.complete(chat, Outcome::Success);
    assert_eq!(h.running(), [vision].into());
    assert_eq!(resident(&h), ["vision"]);
}

#[test]
fn eviction_takes_the_idle_models_cheapest_to_reload() {
    let mut c = budget(10_000);
    // Seeded load times: vision reloads in 1 s, llm in 5 s, llm2 in 30 s.
    for (name, secs) in [("vision", 1), ("llm", 5), ("llm2", 30)] {
        let m = c.models.iter_mut().find(|m| m.name == name).expect("model");
        m.load_time = Some(Duration::from_secs(secs));
    }
    let mut h = Harness::new(c);
    for (kind, model) in [
        (Kind::Txt2Txt, "llm2"),
        (Kind::Img2Txt, "vision"),
        (Kind::Txt2Txt, "llm"),
    ] {
        let id = h.id(kind, model);
        h.complete(id, Outcome::Success);
    }
    assert_eq!(
        resident(&h),
        ["llm2", "vision", "llm"],
        "9,000 MiB resident"
    );
    // Ten seconds later sd needs 6,000 and 1,000 are free: evict vision (1 s), then llm (5 s);
    // llm2 (30 s) stays.
    h.at(10_000);
    let image = h.id(Kind::Txt2Img, "sd");
    assert_eq!(h.lifecycle_events(), ["unload vision", "unload llm"]);
    assert!(h.running().is_empty(), "sd starts after both unloads");
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert!(h.running().is_empty(), "one unload is not enough");
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.running(), [image].into());
    assert_eq!(resident(&h), ["llm2", "sd"]);
    assert_eq!(h.core.counters().evictions, 2);
}

#[test]
fn a_model_waited_for_is_evicted_last() {
    let mut h = Harness::new(budget(8_000));
    let chat = h.id(Kind::Txt2Txt, "llm"); // 4,000
    let vision = h.id(Kind::Img2Txt, "vision"); // 2,000
    assert_eq!(h.running(), [chat, vision].into());
    h.complete(chat, Outcome::Success);
    h.complete(vision, Outcome::Success);
    // vision has one slot: the second request waits for it.
    let busy = h.id(Kind::Img2Txt, "vision");
    let waiting = h.id(Kind::Img2Txt, "vision");
    assert_eq!(h.running(), [busy].into());
    // llm2 (3,000) needs 1,000 more than is free: llm is idle and nobody waits for it, so llm
    // goes, not vision, which has work waiting (and is busy anyway).
    h.at(10_000);
    let other = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(h.lifecycle_events(), ["unload llm"]);
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.running(), [busy, other].into());
    h.complete(busy, Outcome::Success);
    assert_eq!(h.running(), [waiting, other].into());
}

#[test]
fn making_room_from_a_busy_model_waits_for_the_barrier() {
    let mut h = Harness::new(budget(8_000));
    let chat = h.id(Kind::Txt2Txt, "llm"); // 4,000 of 8,000
    let image = h.id(Kind::Txt2Img, "sd"); // 6,000: llm must go
    assert_eq!(h.running(), [chat].into());
    assert!(h.lifecycle_events().is_empty(), "no unload of a busy model");
    h.at(10).complete(chat, Outcome::Success);
    assert!(
        h.lifecycle_events().is_empty(),
        "an idle model is kept as long as reloading it would take"
    );
    let llm = h.core.model_id("llm").expect("llm");
    let reload = h.core.expected_load(LaneId(0), llm).as_millis() as u64;
    h.at(10 + reload);
    assert_eq!(h.lifecycle_events(), ["unload llm"]);
    assert!(h.running().is_empty());
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.running(), [image].into());
    assert_eq!(resident(&h), ["sd"]);
}

#[test]
fn a_model_larger_than_a_lane_never_goes_there() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec![
        LaneSpec::new("small").with_memory_mb(5_000),
        LaneSpec::new("big").with_memory_mb(20_000),
    ];
    let mut h = Harness::new(c);
    let image = h.id(Kind::Txt2Img, "sd"); // 6,000 fits only "big"
    assert_eq!(h.in_flight[&image].0, LaneId(1));
}

#[test]
fn a_model_larger_than_every_lane_is_a_config_error() {
    let mut c = budget(5_000);
    c.lanes.push(LaneSpec::new("other").with_memory_mb(4_000));
    let err = Scheduler::new(c).expect_err("sd needs 6,000");
    assert_eq!(err.field, "models[2].size_mb");
}

#[test]
fn the_lane_learns_load_and_service_times() {
    let mut h = Harness::new(budget(10_000));
    let lane = LaneId(0);
    let llm = h.core.model_id("llm").expect("llm");
    let seeded = h.core.expected_load(lane, llm);
    // The first request carries the load: 12 s, of which the service is unknown yet.
    let first = h.id(Kind::Txt2Txt, "llm");
    h.at(12_000).complete(first, Outcome::Success);
    // Warm requests take 2 s each.
    for i in 0..8 {
        let id = h.id(Kind::Txt2Txt, "llm");
        h.at(14_000 + i * 2_000).complete(id, Outcome::Success);
    }
    let service = h.core.expected_service(lane, llm).expect("learned");
    assert!(
        (service.as_secs_f64() - 2.0).abs() < 0.1,
        "service {service:?}"
    );
    assert_ne!(h.core.expected_load(lane, llm), seeded);
}
