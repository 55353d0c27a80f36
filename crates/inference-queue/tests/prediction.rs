//! Predicted waits (issue 33): a pure function of the core's state and `now`.

mod common;

use std::time::Duration;

use common::*;
use inference_queue::*;

/// One lane where llm2 (one slot) is resident and has learned a service time: its first
/// request loads it, the next two take 2 s each.
fn learned() -> Harness {
    let mut h = Harness::new(cfg(Bounds::default()));
    for at in [10_000, 12_000, 14_000] {
        let id = h.id(Kind::Txt2Txt, "llm2");
        h.at(at).complete(id, Outcome::Success);
    }
    h
}

fn secs(d: Result<Option<Duration>, Rejection>) -> f64 {
    d.expect("known").expect("a prediction").as_secs_f64()
}

#[test]
fn a_new_request_waits_for_what_runs_and_its_group_ahead_of_it() {
    let mut h = learned();
    let running = h.id(Kind::Txt2Txt, "llm2");
    let _waiting: Vec<RequestId> = (0..3).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    assert!(h.lane_of(running).is_some());
    // 1 s into the running one: 1 s left, then three of about the learned service each.
    let now = h.now + Duration::from_secs(1);
    let service = h
        .core
        .expected_service(LaneId(0), h.core.model_id("llm2").expect("known"))
        .expect("learned")
        .as_secs_f64();
    let predicted = secs(h.core.predicted_wait(now, Kind::Txt2Txt, "llm2"));
    let expected = (service - 1.0) + 3.0 * service;
    assert!(
        (predicted - expected).abs() < 0.01,
        "{predicted} s predicted, {expected} s expected"
    );
    // Another model waits for all that, then its load.
    let other = secs(h.core.predicted_wait(now, Kind::Txt2Img, "sd"));
    assert!(other > predicted + service, "{other} s");
    // What the core does not serve has no prediction.
    assert!(matches!(
        h.core.predicted_wait(now, Kind::Txt2Img, "llm2"),
        Err(Rejection::KindNotServed { .. })
    ));
    assert!(matches!(
        h.core.predicted_wait(now, Kind::Txt2Txt, "nope"),
        Err(Rejection::UnknownModel { .. })
    ));
}

#[test]
fn a_waiting_request_knows_its_place_and_when_it_starts() {
    let mut h = learned();
    let running = h.id(Kind::Txt2Txt, "llm2");
    let waiting: Vec<RequestId> = (0..3).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let places: Vec<Waiting> = waiting
        .iter()
        .map(|id| h.core.waiting(h.now, *id).expect("waiting"))
        .collect();
    assert_eq!(
        places.iter().map(|w| w.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let etas: Vec<f64> = places
        .iter()
        .map(|w| w.eta.expect("a lane serves it").as_secs_f64())
        .collect();
    assert!(etas.windows(2).all(|p| p[0] < p[1]), "{etas:?}");
    // The last one starts when a new one would, less the new one's own service.
    let new = secs(h.core.predicted_wait(h.now, Kind::Txt2Txt, "llm2"));
    assert!(etas[2] < new, "{etas:?} then {new}");
    // A running request is not waiting; once the first left, the others move up.
    assert_eq!(h.core.waiting(h.now, running), None);
    h.at(16_000).complete(running, Outcome::Success);
    assert_eq!(h.core.waiting(h.now, waiting[0]), None);
    assert_eq!(
        h.core.waiting(h.now, waiting[2]).map(|w| w.position),
        Some(2)
    );
}

#[test]
fn a_request_behind_its_models_load_is_told_the_model_is_loading() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let first = h.id(Kind::Txt2Txt, "llm2");
    let second = h.id(Kind::Txt2Txt, "llm2");
    assert!(h.core.carries_load(first), "the first request loads llm2");
    let w = h.core.waiting(h.now, second).expect("waiting");
    assert_eq!((w.position, w.loading), (1, Some(LaneId(0))));
    h.at(10_000).complete(first, Outcome::Success);
    assert!(!h.core.carries_load(second));
    let third = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(h.core.waiting(h.now, third).and_then(|w| w.loading), None);
}

#[test]
fn the_prediction_shrinks_as_the_queue_moves() {
    let mut h = learned();
    let ids: Vec<RequestId> = (0..5).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let before = secs(h.core.predicted_wait(h.now, Kind::Txt2Txt, "llm2"));
    h.at(16_000).complete(ids[0], Outcome::Success);
    h.at(18_000).complete(ids[1], Outcome::Success);
    let after = secs(h.core.predicted_wait(h.now, Kind::Txt2Txt, "llm2"));
    assert!(
        after < before,
        "{after} s after two finished, {before} s before"
    );
}

#[test]
fn a_request_the_queue_would_make_expire_is_refused_at_once_when_asked() {
    let mut h = learned();
    for _ in 0..10 {
        h.id(Kind::Txt2Txt, "llm2");
    }
    // About 20 s of work ahead; a 5 s deadline cannot be met.
    let short = Some(Duration::from_secs(5));
    assert!(
        matches!(
            h.submit_with(Kind::Txt2Txt, "llm2", short),
            Admission::Accepted(_)
        ),
        "off by default: it waits (and will expire)"
    );
    let mut c = h.core.config().clone();
    c.limits.early_refusal_pct = Some(50);
    h.core.set_policy(h.now, &c.policy()).expect("valid");
    match h.submit_with(Kind::Txt2Txt, "llm2", short) {
        Admission::Rejected(Rejection::WouldExpire {
            predicted,
            deadline,
        }) => {
            assert_eq!(deadline, Duration::from_secs(5));
            assert!(predicted > Duration::from_secs(15), "{predicted:?}");
        }
        other => panic!("expected an early refusal, got {other:?}"),
    }
    // One whose deadline the queue leaves room for is queued.
    assert!(matches!(
        h.submit_with(Kind::Txt2Txt, "llm2", Some(Duration::from_secs(120))),
        Admission::Accepted(_)
    ));
}

#[test]
fn an_attempt_that_starts_while_its_model_loads_teaches_no_service_time() {
    // llm (two slots) loads with the first of two chats: the second starts beside it and waits
    // for the load too, so both end 7 s in (a 6 s load, 1 s of service).
    let mut h = Harness::new(cfg(Bounds::default()));
    let carrier = h.id(Kind::Txt2Txt, "llm");
    let beside = h.id(Kind::Txt2Txt, "llm");
    assert!(h.lane_of(carrier).is_some() && h.lane_of(beside).is_some());
    h.at(7_000).complete(carrier, Outcome::Success);
    h.complete(beside, Outcome::Success);
    // A warm chat then takes 1 s: that is the service time learned, not the 7 s the one beside
    // the load took.
    let warm = h.id(Kind::Txt2Txt, "llm");
    let lane = LaneId(h.lane_of(warm).expect("dispatched"));
    h.at(8_000).complete(warm, Outcome::Success);
    let llm = h.core.model_id("llm").expect("known");
    let learned = h.core.expected_service(lane, llm).expect("learned");
    assert_eq!(learned, Duration::from_secs(1), "{learned:?}");
}

#[test]
fn a_request_that_would_start_beside_a_load_is_predicted_to_wait_for_it() {
    // llm (two slots) is loading with its first chat: a second would be dispatched at once to
    // the free slot, and start when the load is done.
    let mut h = Harness::new(cfg(Bounds::default()));
    let carrier = h.id(Kind::Txt2Txt, "llm");
    assert!(h.lane_of(carrier).is_some());
    assert!(h.core.carries_load(carrier));
    let llm = h.core.model_id("llm").expect("known");
    let load = h.core.expected_load(LaneId(0), llm).as_secs_f64();
    let now = h.now + Duration::from_secs(1);
    let predicted = secs(h.core.predicted_wait(now, Kind::Txt2Txt, "llm"));
    assert!(
        (predicted - (load - 1.0)).abs() < 0.01,
        "{predicted} s predicted, the load has {} s left",
        load - 1.0
    );
}

/// An image request with a 60 s deadline waits behind a chat model whose chats keep coming
/// (one more waits at every turn, a burst its prediction did not see): how long it waited
/// for its dispatch, or how it left.
fn behind_a_burst_of_chats(early_refusal: Option<u32>) -> Result<Duration, String> {
    let mut h = learned();
    let mut c = h.core.config().clone();
    c.limits.early_refusal_pct = early_refusal;
    h.core.set_policy(h.now, &c.policy()).expect("valid");
    h.at(15_000);
    h.id(Kind::Txt2Txt, "llm2");
    let image = match h.submit_with(Kind::Txt2Img, "sd", Some(Duration::from_secs(60))) {
        Admission::Accepted(id) => id,
        other => panic!("nothing waits: admitted, got {other:?}"),
    };
    let mut t = 15_000;
    while t < 100_000 && h.lane_of(image).is_none() && !h.left.contains_key(&image) {
        h.id(Kind::Txt2Txt, "llm2");
        t += 2_000;
        h.at(t);
        let chats: Vec<RequestId> = h.in_flight.keys().copied().collect();
        for chat in chats {
            h.complete(chat, Outcome::Success);
        }
    }
    if let Some(how) = h.left.get(&image) {
        return Err(how.clone());
    }
    h.events
        .iter()
        .find_map(|e| match e {
            Event::Dispatch { id, waited, .. } if *id == image => Some(*waited),
            _ => None,
        })
        .ok_or_else(|| "still waiting".to_owned())
}

#[test]
fn with_early_refusal_an_admitted_deadline_is_kept_through_a_burst() {
    // Left to the policy's order, the chat group keeps the lane for its dwell (120 s) and the
    // image expires at its 60 s deadline.
    assert_eq!(behind_a_burst_of_chats(None), Err("expired".to_owned()));
    // Admission predicted it would start in time and promised it: once its deadline is within
    // the lane's guard (a dozen chats' services), the lane ends the chats' turn and starts it.
    let waited = behind_a_burst_of_chats(Some(0)).expect("dispatched");
    assert!(
        waited < Duration::from_secs(60) && waited > Duration::from_secs(30),
        "dispatched after {waited:?}: within its deadline, not before its guard"
    );
}

#[test]
fn a_kept_promise_still_respects_the_tenants_cap_of_running_requests() {
    let mut c = cfg(Bounds::default());
    c.limits.max_in_flight_per_tenant = Some(1);
    c.limits.early_refusal_pct = Some(0);
    let mut h = Harness::new(c);
    h.as_tenant(1, Class::Interactive);
    let running = h.id(Kind::Txt2Txt, "llm");
    let promised = match h.submit_with(Kind::Txt2Txt, "llm", Some(Duration::from_secs(10))) {
        Admission::Accepted(id) => id,
        other => panic!("admitted, got {other:?}"),
    };
    assert!(h.lane_of(running).is_some() && h.lane_of(promised).is_none());
    // Its deadline is near and llm has a free slot, but its tenant already runs one.
    h.at(9_000).as_tenant(2, Class::Interactive);
    let other = h.id(Kind::Txt2Txt, "llm");
    assert!(
        h.lane_of(other).is_some(),
        "the other tenant's request takes the slot"
    );
    assert!(h.lane_of(promised).is_none(), "the cap holds");
    // Once its tenant's first is done, it starts within its deadline.
    h.complete(running, Outcome::Success);
    assert!(h.lane_of(promised).is_some());
}
