//! The balancer routings (`round_robin`, `least_loaded`, `best_performance`): each request is
//! placed on a lane when it arrives, whatever the lane has loaded, and moves when its lane fails.

mod common;

use common::*;
use inference_queue::*;

fn fleet(routing: Routing) -> Harness {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.routing = routing;
    c.retry.base = ms(10);
    c.retry.cap = ms(10);
    c.breaker.failure_threshold = 2;
    Harness::new(c)
}

fn lane_of(h: &Harness, id: RequestId) -> Option<usize> {
    h.events.iter().rev().find_map(|e| match e {
        Event::Dispatch { id: d, lane, .. } if *d == id => Some(lane.0),
        _ => None,
    })
}

const FAILED: Outcome = Outcome::Transient {
    retry_after: None,
    upstream_fault: true,
};

#[test]
fn round_robin_takes_turns_whatever_is_loaded() {
    let mut h = fleet(Routing::RoundRobin);
    let ids: Vec<_> = (0..4).map(|_| h.id(Kind::Txt2Txt, "llm")).collect();
    let lanes: Vec<_> = ids.iter().map(|id| lane_of(&h, *id)).collect();
    assert_eq!(lanes, [Some(0), Some(1), Some(0), Some(1)]);
}

#[test]
fn least_loaded_picks_the_lane_with_the_least_work() {
    let mut h = fleet(Routing::LeastLoaded);
    let a = h.id(Kind::Txt2Img, "sd");
    let b = h.id(Kind::Txt2Img, "sd");
    let c = h.id(Kind::Txt2Img, "sd");
    assert_eq!((lane_of(&h, a), lane_of(&h, b)), (Some(0), Some(1)));
    assert_eq!(
        lane_of(&h, c),
        None,
        "both lanes hold one: c waits on lane 0"
    );
    h.complete(b, Outcome::Success);
    // Lane 0 still holds a running and c waiting; lane 1 is empty: the next goes there.
    let d = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(lane_of(&h, d), Some(1));
}

#[test]
fn best_performance_avoids_the_lane_that_learned_to_be_slow() {
    let mut h = fleet(Routing::BestPerformance);
    // Teach lane 0 that requests take 10 s and lane 1 that they take 1 s (the first request on
    // each lane carries the model's load, so it teaches the load time).
    for round in 0..2u64 {
        let slow = h.id(Kind::Txt2Txt, "llm2");
        let fast = h.id(Kind::Txt2Txt, "llm2");
        assert_eq!((lane_of(&h, slow), lane_of(&h, fast)), (Some(0), Some(1)));
        h.at(round * 20_000 + 1_000)
            .complete(fast, Outcome::Success);
        h.at(round * 20_000 + 10_000)
            .complete(slow, Outcome::Success);
    }
    for _ in 0..3 {
        let id = h.id(Kind::Txt2Txt, "llm2");
        assert_eq!(lane_of(&h, id), Some(1));
        h.complete(id, Outcome::Success);
    }
}

#[test]
fn a_retry_moves_to_another_lane() {
    let mut h = fleet(Routing::RoundRobin);
    let a = h.id(Kind::Txt2Txt, "llm");
    assert_eq!(lane_of(&h, a), Some(0));
    assert!(matches!(h.complete(a, FAILED), Resolution::Retry { .. }));
    h.at(20);
    assert_eq!(lane_of(&h, a), Some(1));
}

#[test]
fn requests_waiting_on_a_failing_lane_move_when_its_breaker_opens() {
    let mut h = fleet(Routing::RoundRobin);
    // Lane 0 gets sd requests 0, 2, 4; lane 1 gets 1, 3, 5 (one slot each).
    let ids: Vec<_> = (0..6).map(|_| h.id(Kind::Txt2Img, "sd")).collect();
    assert_eq!(lane_of(&h, ids[0]), Some(0));
    assert_eq!(lane_of(&h, ids[1]), Some(1));
    // Lane 0 fails twice in a row: its breaker opens, and ids 2 and 4 wait on lane 1 now.
    h.complete(ids[0], FAILED);
    h.at(20);
    let on_zero = h
        .running()
        .into_iter()
        .find(|id| lane_of(&h, *id) == Some(0));
    h.complete(on_zero.expect("lane 0 runs the next one"), FAILED);
    let st = h.core.status(h.now);
    assert_eq!(st.lanes[0].breaker.as_str(), "open");
    let waiting_on_zero: usize = st
        .groups
        .iter()
        .filter(|g| g.lane == Some(0))
        .map(|g| g.depth)
        .sum();
    assert_eq!(waiting_on_zero, 0, "nothing waits on the open lane: {st:?}");
    // Everything completes on lane 1.
    for _ in 0..20 {
        let running: Vec<_> = h.running().into_iter().collect();
        for id in running {
            assert_eq!(lane_of(&h, id), Some(1));
            h.complete(id, Outcome::Success);
        }
        let t = h.now.since_epoch().as_millis() as u64 + 100;
        h.at(t);
    }
    assert_eq!(h.core.in_system(), 0);
}
