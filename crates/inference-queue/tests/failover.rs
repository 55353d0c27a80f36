//! Lanes that fail, answer health checks again, or turn slow.

mod common;

use common::*;
use inference_queue::*;

fn two_lanes(routing: Routing) -> Harness {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.routing = routing;
    c.breaker.failure_threshold = 2;
    Harness::new(c)
}

fn breaker(h: &Harness, lane: usize) -> &'static str {
    h.core.status(h.now).lanes[lane].breaker.as_str()
}

fn lane_of(h: &Harness, id: RequestId) -> Option<usize> {
    h.events.iter().rev().find_map(|e| match e {
        Event::Dispatch { id: d, lane, .. } if *d == id => Some(lane.0),
        _ => None,
    })
}

#[test]
fn failed_health_checks_open_the_breaker_and_an_answer_closes_it() {
    let mut h = two_lanes(Routing::default());
    h.core.lane_health(h.now, LaneId(1), false);
    assert_eq!(
        breaker(&h, 1),
        "closed",
        "one failure is below the threshold"
    );
    h.core.lane_health(h.now, LaneId(1), false);
    h.drain();
    assert_eq!(breaker(&h, 1), "open");
    assert!(h.events.contains(&Event::BreakerOpened { lane: LaneId(1) }));
    // Long before the cooldown ends, the lane answers its health check: it rejoins at once.
    h.at(100);
    h.core.lane_health(h.now, LaneId(1), true);
    h.drain();
    assert_eq!(breaker(&h, 1), "closed");
    assert!(h.events.contains(&Event::BreakerClosed { lane: LaneId(1) }));
}

#[test]
fn work_waits_for_no_open_lane_when_another_is_healthy() {
    let mut h = two_lanes(Routing::default());
    h.core.lane_health(h.now, LaneId(0), false);
    h.core.lane_health(h.now, LaneId(0), false);
    h.drain();
    let id = h.id(Kind::Txt2Img, "sd");
    assert_eq!(lane_of(&h, id), Some(1));
}

#[test]
fn a_slow_lane_leaves_its_model_to_a_faster_one() {
    let mut h = two_lanes(Routing::default());
    // Both lanes load llm2 (pinned requests), then learn: gpu0 takes 10 s a request, gpu1 1 s.
    for round in 0..3u64 {
        let start = round * 20_000;
        h.at(start);
        let a = h.id_on(Kind::Txt2Txt, "llm2", 0);
        let b = h.id_on(Kind::Txt2Txt, "llm2", 1);
        assert_eq!(
            (lane_of(&h, a), lane_of(&h, b)),
            (Some(0), Some(1)),
            "round {round}"
        );
        h.at(start + 1_000).complete(b, Outcome::Success);
        h.at(start + 10_000).complete(a, Outcome::Success);
    }
    // Both idle, both hold llm2: the slow one leaves new work to the fast one.
    for _ in 0..3 {
        let id = h.id(Kind::Txt2Txt, "llm2");
        assert_eq!(lane_of(&h, id), Some(1));
        h.complete(id, Outcome::Success);
    }
}

fn one_lane() -> Harness {
    Harness::new(cfg(Bounds::default()))
}

#[test]
fn an_operator_load_warms_the_model_up_when_the_lane_is_idle() {
    let mut h = one_lane();
    let busy = h.id(Kind::Txt2Txt, "llm");
    let (lane, outcome) = h.core.load_model(h.now, "sd", None).expect("a known model");
    assert_eq!((lane, outcome), (LaneId(0), LoadOutcome::Scheduled));
    h.drain();
    assert!(h.lifecycle_events().is_empty(), "not while llm runs");
    h.complete(busy, Outcome::Success);
    assert_eq!(h.lifecycle_events(), ["warm sd"]);
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.core.status(h.now).lanes[0].loaded(), Some("sd"));
    let (_, again) = h.core.load_model(h.now, "sd", None).expect("known");
    assert_eq!(again, LoadOutcome::Loaded);
    assert!(matches!(
        h.core.load_model(h.now, "nope", None),
        Err(Rejection::UnknownModel { .. })
    ));
}

#[test]
fn an_operator_unload_of_a_busy_model_is_refused_unless_forced_then_waits_for_the_barrier() {
    let mut h = one_lane();
    let running = h.id(Kind::Txt2Txt, "llm");
    let refused = h.core.unload_model(h.now, "llm", LaneId(0), false);
    assert_eq!(
        refused,
        Err(UnloadRefusal::Busy {
            in_flight: 1,
            waiting: 0
        })
    );
    let forced = h.core.unload_model(h.now, "llm", LaneId(0), true);
    assert_eq!(forced, Ok(UnloadOutcome::AfterBarrier));
    h.drain();
    // No new llm work starts on the lane while it drains.
    let later = h.id(Kind::Txt2Txt, "llm");
    assert!(!h.running().contains(&later));
    assert!(h.lifecycle_events().is_empty());
    h.complete(running, Outcome::Success);
    assert_eq!(h.lifecycle_events(), ["unload llm"]);
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    // Then the waiting request loads it again and runs.
    assert!(h.running().contains(&later));
    assert_eq!(
        h.core.unload_model(h.now, "sd", LaneId(0), false),
        Ok(UnloadOutcome::NotLoaded)
    );
}

#[test]
fn an_unload_calls_off_a_pending_load_and_follows_one_under_way() {
    let mut h = one_lane();
    let busy = h.id(Kind::Txt2Txt, "llm");
    // Pending (the lane is busy): the unload calls it off, and no warm-up ever comes.
    h.core.load_model(h.now, "sd", None).expect("known");
    assert_eq!(
        h.core.unload_model(h.now, "sd", LaneId(0), false),
        Ok(UnloadOutcome::LoadCancelled)
    );
    h.complete(busy, Outcome::Success);
    h.drain();
    assert!(h.lifecycle_events().is_empty(), "the load was called off");
    // Under way (the lane was idle): the model is unloaded as soon as its load ends.
    h.core.load_model(h.now, "sd", None).expect("known");
    h.drain();
    assert_eq!(h.lifecycle_events(), ["warm sd"]);
    assert_eq!(
        h.core.unload_model(h.now, "sd", LaneId(0), false),
        Ok(UnloadOutcome::Unloading)
    );
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.lifecycle_events(), ["warm sd", "unload sd"]);
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.core.status(h.now).lanes[0].loaded(), None);
}
