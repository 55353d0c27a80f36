//! Models and lanes changed while work waits and runs (a configuration reload): nothing accepted
//! is dropped, retired lanes take no new work, retired models are refused, new ones serve.

mod common;

use common::*;
use inference_queue::*;

fn lane_of(h: &Harness, id: RequestId) -> Option<usize> {
    h.events.iter().rev().find_map(|e| match e {
        Event::Dispatch { id: d, lane, .. } if *d == id => Some(lane.0),
        _ => None,
    })
}

fn two_lanes(routing: Routing) -> Harness {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.routing = routing;
    Harness::new(c)
}

#[test]
fn a_retired_lane_finishes_its_work_takes_none_and_its_placed_requests_move() {
    let mut h = two_lanes(Routing::LeastLoaded);
    // sd has one slot per lane: two run (one per lane), the rest wait placed on a lane.
    let ids: Vec<RequestId> = (0..6).map(|_| h.id(Kind::Txt2Img, "sd")).collect();
    let on_gpu1: Vec<RequestId> = ids
        .iter()
        .copied()
        .filter(|id| lane_of(&h, *id) == Some(1))
        .collect();
    assert_eq!(on_gpu1.len(), 1, "one runs on gpu1");
    let change = h.set_topology(&models(), &["gpu0".into()], &[]);
    assert_eq!(change.lanes_retired, vec!["gpu1".to_owned()]);
    assert_eq!(h.core.status(h.now).lanes[1].breaker.as_str(), "retired");
    // What ran on gpu1 finishes there; everything else is served by gpu0, one at a time.
    h.at(10).complete(on_gpu1[0], Outcome::Success);
    for t in 0..10 {
        let running: Vec<RequestId> = h.running().into_iter().collect();
        for id in running {
            assert_eq!(
                lane_of(&h, id),
                Some(0),
                "gpu1 took new work after retiring"
            );
            h.at(20 + t * 10).complete(id, Outcome::Success);
        }
    }
    assert_eq!(h.left.len(), 6, "every request left: {:?}", h.left);
    assert!(h.left.values().all(|how| how == "finished"));
    // A request pinned to the retired lane is refused.
    assert!(matches!(
        h.submit_on(Kind::Txt2Img, "sd", 1),
        Admission::Rejected(Rejection::LaneCannotHost { .. })
    ));
}

#[test]
fn a_retired_lane_does_not_go_on_with_its_active_group() {
    // A lane busy with a group that has more work waiting, and more slots after the reload:
    // retiring it stops the group there, and the new lane takes the rest.
    let mut h = Harness::new(cfg(Bounds::strict()));
    let ids: Vec<RequestId> = (0..6).map(|_| h.id(Kind::Txt2Txt, "llm")).collect();
    assert_eq!(h.running().len(), 2, "llm has two slots");
    let mut wider = models();
    wider[0].max_in_flight = 4;
    h.set_topology(&wider, &["gpu1".into()], &[]);
    for id in &ids[2..] {
        assert_eq!(lane_of(&h, *id), Some(1), "{id} ran on the retired lane");
    }
    for id in ids {
        h.at(10).complete(id, Outcome::Success);
    }
    assert_eq!(h.left.len(), 6);
}

#[test]
fn a_retired_model_is_refused_while_its_accepted_work_finishes_and_a_new_model_serves() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let a = h.id(Kind::Txt2Txt, "llm2");
    let b = h.id(Kind::Txt2Txt, "llm2");
    let mut next: Vec<ModelSpec> = models().into_iter().filter(|m| m.name != "llm2").collect();
    next.push(ModelSpec::new("qwen", &[Kind::Txt2Txt], 3).with_size_mb(3000));
    let change = h.set_topology(&next, &["default".into()], &[]);
    assert_eq!(change.models_retired, vec!["llm2".to_owned()]);
    assert_eq!(change.models_added, vec!["qwen".to_owned()]);
    assert!(matches!(
        h.submit(Kind::Txt2Txt, "llm2"),
        Admission::Rejected(Rejection::UnknownModel { .. })
    ));
    assert!(
        !h.core
            .models_for(Kind::Txt2Txt)
            .contains(&"llm2".to_owned())
    );
    let q: Vec<RequestId> = (0..3).map(|_| h.id(Kind::Txt2Txt, "qwen")).collect();
    // The accepted llm2 requests run first (a, then b: one slot), then qwen's three at once.
    h.at(10).complete(a, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&b));
    h.at(20).complete(b, Outcome::Success);
    for id in &q {
        assert!(h.running().contains(id), "qwen runs with its 3 slots");
    }
    for id in q {
        h.at(30).complete(id, Outcome::Success);
    }
    assert_eq!(h.left.len(), 5);
    // The model comes back under its old id.
    let change = h.set_topology(&models(), &["default".into()], &[]);
    assert_eq!(change.models_added, vec!["llm2".to_owned()]);
    assert_eq!(change.models_retired, vec!["qwen".to_owned()]);
    let again = h.id(Kind::Txt2Txt, "llm2");
    h.at(40).complete(again, Outcome::Success);
    assert_eq!(h.left[&again], "finished");
}

#[test]
fn a_new_lane_takes_work_at_once_and_slots_change_in_place() {
    let mut c = cfg(Bounds::default());
    c.routing = Routing::LeastLoaded;
    let mut h = Harness::new(c);
    let ids: Vec<RequestId> = (0..3).map(|_| h.id(Kind::Txt2Img, "sd")).collect();
    assert_eq!(h.running().len(), 1, "one lane, one sd slot");
    let mut more = models();
    more.iter_mut()
        .find(|m| m.name == "sd")
        .expect("sd")
        .max_in_flight = 2;
    let change = h.set_topology(&more, &["default".into(), "gpu1".into()], &[]);
    assert_eq!(change.lanes_added, vec![("gpu1".to_owned(), LaneId(1))]);
    assert_eq!(h.running().len(), 2, "sd has two slots now");
    let fresh = h.id(Kind::Txt2Img, "sd");
    assert_eq!(
        lane_of(&h, fresh),
        Some(1),
        "the new lane takes the next request at once"
    );
    for id in ids.into_iter().chain([fresh]) {
        h.at(10).complete(id, Outcome::Success);
    }
    assert_eq!(h.left.len(), 4);
}

#[test]
fn an_invalid_topology_changes_nothing() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let before = h.core.config().clone();
    let mut bad = models();
    bad[0].max_in_flight = 0;
    assert!(
        h.core
            .set_topology(h.now, &bad, &["default".into()], &[])
            .is_err()
    );
    assert!(h.core.set_topology(h.now, &models(), &[], &[]).is_err());
    assert_eq!(h.core.config(), &before);
}

#[test]
fn a_restarted_lane_forgets_what_it_had_loaded() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let a = h.id(Kind::Txt2Img, "sd");
    h.at(10).complete(a, Outcome::Success);
    let resident = |h: &Harness| -> Vec<String> {
        h.core.status(h.now).lanes[0]
            .resident
            .iter()
            .map(|r| r.model.clone())
            .collect()
    };
    assert_eq!(resident(&h), vec!["sd".to_owned()]);
    h.set_topology(&models(), &["default".into()], &["default".to_owned()]);
    assert!(resident(&h).is_empty());
}

#[test]
fn a_retired_lane_with_an_open_breaker_sets_no_timer() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.breaker.failure_threshold = 1;
    let mut h = Harness::new(c);
    h.core.lane_health(h.now, LaneId(1), false);
    h.drain();
    assert_eq!(h.core.status(h.now).lanes[1].breaker.as_str(), "open");
    h.set_topology(&models(), &["gpu0".into()], &[]);
    // Long after the cooldown, nothing is due: a due timer that never clears would spin a driver.
    h.at(600_000);
    assert_eq!(h.core.poll_timeout(), None);
}
