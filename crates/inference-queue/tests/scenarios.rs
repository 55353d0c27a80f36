//! Scenario tests of SPEC §2, one behaviour each, on a virtual clock.

mod common;

use std::time::Duration;

use common::*;
use inference_queue::*;

#[test]
fn fifo_inside_a_group() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let ids: Vec<_> = (0..5).map(|_| h.id(Kind::Txt2Img, "sd")).collect();
    for id in &ids {
        h.complete(*id, Outcome::Success);
    }
    assert_eq!(h.dispatched(), ids);
}

#[test]
fn drain_before_switch_waits_for_the_barrier() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let a = h.id(Kind::Txt2Txt, "llm");
    let b = h.id(Kind::Txt2Txt, "llm");
    let img = h.id(Kind::Txt2Img, "sd");
    let c = h.id(Kind::Txt2Txt, "llm");
    // llm has two slots: a and b run; c waits for a slot, img for the barrier.
    assert_eq!(h.dispatched(), vec![a, b]);
    h.at(10).complete(a, Outcome::Success);
    assert_eq!(h.dispatched(), vec![a, b, c], "same group continues first");
    h.at(20).complete(b, Outcome::Success);
    assert!(
        !h.dispatched().contains(&img),
        "img must wait until llm in-flight is zero"
    );
    h.at(30).complete(c, Outcome::Success);
    assert_eq!(h.dispatched(), vec![a, b, c, img]);
    assert_eq!(h.core.counters().model_switches, 2);
}

#[test]
fn next_group_follows_kind_priority() {
    let mut h = Harness::new(cfg(Bounds::strict()));
    let busy = h.id(Kind::Txt2Txt, "llm2");
    let vision = h.id(Kind::Img2Txt, "vision");
    let edit = h.id(Kind::Img2Img, "sd");
    let generate = h.id(Kind::Txt2Img, "sd");
    let chat = h.id(Kind::Txt2Txt, "llm");
    h.at(5).complete(busy, Outcome::Success);
    // txt2txt first (priority), then txt2img, img2img, img2txt.
    for id in [chat, generate, edit, vision] {
        assert_eq!(h.dispatched().last(), Some(&id));
        h.complete(id, Outcome::Success);
    }
}

#[test]
fn custom_priority_order_is_honoured() {
    let mut c = cfg(Bounds::strict());
    c.priority = vec![Kind::Img2Txt, Kind::Txt2Img];
    let mut h = Harness::new(c);
    let busy = h.id(Kind::Img2Img, "sd");
    let chat = h.id(Kind::Txt2Txt, "llm2");
    let vision = h.id(Kind::Img2Txt, "vision");
    h.complete(busy, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&vision));
    h.complete(vision, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&chat));
}

#[test]
fn a_policy_changed_while_work_waits_decides_the_next_choice_and_drops_nothing() {
    let mut h = Harness::new(cfg(Bounds::strict()));
    let busy = h.id(Kind::Img2Img, "sd");
    let chat = h.id(Kind::Txt2Txt, "llm2");
    let vision = h.id(Kind::Img2Txt, "vision");
    let mut policy = h.core.config().policy();
    policy.priority = vec![Kind::Img2Txt];
    h.core.set_policy(h.now, &policy).expect("valid");
    h.complete(busy, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&vision), "the new order");
    h.complete(vision, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&chat), "nothing dropped");
    // An invalid policy is refused and the running one stays.
    let mut bad = h.core.config().policy();
    bad.limits.max_queued_total = 0;
    assert!(h.core.set_policy(h.now, &bad).is_err());
    assert_eq!(h.core.config().policy(), policy);
}

#[test]
fn inside_a_kind_the_loaded_model_wins_over_the_oldest() {
    let mut h = Harness::new(cfg(Bounds::strict()));
    let first = h.id(Kind::Txt2Txt, "llm2");
    let other = h.id(Kind::Txt2Txt, "llm"); // older, but llm2 is loaded
    let same = h.id(Kind::Txt2Txt, "llm2");
    h.complete(first, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&same));
    h.complete(same, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&other));
}

#[test]
fn same_model_groups_switch_without_a_barrier() {
    let mut h = Harness::new(cfg(Bounds::strict()));
    let chat = h.id(Kind::Txt2Txt, "llm");
    let vision = h.id(Kind::Img2Txt, "llm");
    // llm has 2 slots shared by its groups: the vision request starts while chat runs.
    assert_eq!(h.dispatched(), vec![chat, vision]);
    let switched: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Switched { model_changed, .. } => Some(*model_changed),
            _ => None,
        })
        .collect();
    assert_eq!(switched, vec![true, false]);
}

#[test]
fn strict_never_leaves_a_non_empty_group() {
    let mut h = Harness::new(cfg(Bounds::strict()));
    let mut chat = vec![h.id(Kind::Txt2Txt, "llm2")];
    let img = h.id(Kind::Txt2Img, "sd");
    for step in 1..50u64 {
        chat.push(h.at(step * 1000).id(Kind::Txt2Txt, "llm2"));
        let running = *h.dispatched().last().expect("something runs");
        h.complete(running, Outcome::Success);
    }
    assert!(
        !h.dispatched().contains(&img),
        "strict keeps serving the busy group"
    );
}

#[test]
fn max_batch_bounds_a_group_while_others_wait() {
    let bounds = Bounds {
        max_batch: Some(3),
        ..Bounds::strict()
    };
    let mut h = Harness::new(cfg(bounds));
    let chats: Vec<_> = (0..6).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let img = h.id(Kind::Txt2Img, "sd");
    // The first chat ran while nothing else waited (the group ran dry after it): the batch count
    // starts with the second, when others may wait.
    for c in &chats[..4] {
        h.complete(*c, Outcome::Success);
    }
    assert_eq!(
        h.dispatched().last(),
        Some(&img),
        "after 3 dispatches the waiting group gets the lane"
    );
}

#[test]
fn max_dwell_bounds_a_group_while_others_wait() {
    let bounds = Bounds {
        max_dwell: Some(Duration::from_secs(10)),
        ..Bounds::strict()
    };
    let mut h = Harness::new(cfg(bounds));
    let chats: Vec<_> = (0..6).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let img = h.id(Kind::Txt2Img, "sd");
    h.at(4_000).complete(chats[0], Outcome::Success);
    h.at(8_000).complete(chats[1], Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&chats[2]));
    h.at(12_000).complete(chats[2], Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&img), "dwell exceeded: switch");
}

#[test]
fn a_starving_group_goes_first_at_the_next_switch_point() {
    let bounds = Bounds {
        starvation_after: Some(Duration::from_secs(30)),
        max_batch: Some(2),
        max_dwell: None,
        batch_starvation_after: None,
    };
    let mut h = Harness::new(cfg(bounds));
    let busy = h.id(Kind::Txt2Txt, "llm2");
    let vision = h.id(Kind::Img2Txt, "vision"); // lowest priority, oldest
    let img = h.at(40_000).id(Kind::Txt2Img, "sd");
    let chat = h.id(Kind::Txt2Txt, "llm2");
    h.complete(busy, Outcome::Success);
    // chat continues the active group (not starving-preempted) ...
    assert_eq!(h.dispatched().last(), Some(&chat));
    h.complete(chat, Outcome::Success);
    // ... and at the switch point the starving vision group beats txt2img's priority.
    assert_eq!(h.dispatched().last(), Some(&vision));
    h.complete(vision, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&img));
}

#[test]
fn admission_limits_refuse_at_once() {
    let mut c = cfg(Bounds::default());
    c.limits.max_queued_total = 3;
    c.limits.max_queued_per_kind[Kind::Txt2Img.index()] = Some(1);
    let mut h = Harness::new(c);
    h.id(Kind::Txt2Txt, "llm2"); // dispatched: not waiting
    h.id(Kind::Txt2Img, "sd");
    match h.submit(Kind::Txt2Img, "sd") {
        Admission::Rejected(Rejection::QueueFull { scope, retry_after }) => {
            assert_eq!(scope, QueueScope::Kind(Kind::Txt2Img));
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    h.id(Kind::Txt2Txt, "llm2");
    h.id(Kind::Img2Img, "sd");
    assert!(matches!(
        h.submit(Kind::Txt2Txt, "llm2"),
        Admission::Rejected(Rejection::QueueFull {
            scope: QueueScope::Total,
            ..
        })
    ));
    assert_eq!(h.core.counters().rejected, 2);
}

#[test]
fn unknown_model_and_wrong_kind_list_the_valid_models() {
    let mut h = Harness::new(cfg(Bounds::default()));
    match h.submit(Kind::Txt2Txt, "gpt-9") {
        Admission::Rejected(Rejection::UnknownModel { model, valid }) => {
            assert_eq!(model, "gpt-9");
            assert_eq!(valid, vec!["llm".to_owned(), "llm2".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    match h.submit(Kind::Txt2Img, "llm") {
        Admission::Rejected(Rejection::KindNotServed { valid, kind, .. }) => {
            assert_eq!(kind, Kind::Txt2Img);
            assert_eq!(valid, vec!["sd".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    let bad_lane = h.core.submit(
        h.now,
        Submit {
            lane: Some(LaneId(7)),
            ..Submit::new(Kind::Txt2Txt, "llm")
        },
    );
    assert_eq!(bad_lane, Admission::Rejected(Rejection::UnknownLane(7)));
}

#[test]
fn deadlines_expire_to_the_tick_and_can_only_be_lowered() {
    let mut c = cfg(Bounds::default());
    c.default_deadline[Kind::Txt2Img.index()] = Duration::from_secs(5);
    let mut h = Harness::new(c);
    let busy = h.id(Kind::Txt2Img, "sd");
    let short = match h.submit_with(Kind::Txt2Img, "sd", Some(ms(1_000))) {
        Admission::Accepted(id) => id,
        other => panic!("{other:?}"),
    };
    let long = match h.submit_with(Kind::Txt2Img, "sd", Some(Duration::from_secs(3600))) {
        Admission::Accepted(id) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.core.poll_timeout(), Some(Time::from_millis(1_000)));
    h.at(999);
    assert!(!h.left.contains_key(&short));
    h.at(1_000);
    assert_eq!(h.left.get(&short).map(String::as_str), Some("expired"));
    assert!(h.events.contains(&Event::Expired {
        id: short,
        waited: ms(1_000)
    }));
    h.at(5_000);
    assert_eq!(
        h.left.get(&long).map(String::as_str),
        Some("expired"),
        "capped by the kind default"
    );
    h.complete(busy, Outcome::Success);
    assert_eq!(h.dispatched(), vec![busy]);
}

#[test]
fn cancel_removes_waiting_work_and_flags_running_work() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let run = h.id(Kind::Txt2Img, "sd");
    let wait = h.id(Kind::Txt2Img, "sd");
    let after = h.id(Kind::Txt2Img, "sd");
    assert_eq!(h.cancel(wait), CancelOutcome::Removed);
    assert_eq!(h.cancel(wait), CancelOutcome::Unknown);
    assert_eq!(h.cancel(run), CancelOutcome::InFlight);
    assert_eq!(h.complete(run, Outcome::Aborted), Resolution::Finished);
    assert_eq!(
        h.dispatched(),
        vec![run, after],
        "a cancelled request is never dispatched"
    );
    assert_eq!(h.core.counters().cancelled, 2);
}

#[test]
fn a_cancelled_running_request_is_not_retried() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let run = h.id(Kind::Txt2Img, "sd");
    h.cancel(run);
    assert_eq!(
        h.complete(
            run,
            Outcome::Transient {
                retry_after: None,
                upstream_fault: true
            }
        ),
        Resolution::Finished
    );
}

#[test]
fn transient_failures_retry_at_the_head_honouring_retry_after() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let a = h.id(Kind::Txt2Img, "sd");
    let b = h.id(Kind::Txt2Img, "sd");
    let r = h.at(100).complete(
        a,
        Outcome::Transient {
            retry_after: Some(Duration::from_secs(3)),
            upstream_fault: true,
        },
    );
    let Resolution::Retry { at, attempt } = r else {
        panic!("{r:?}")
    };
    assert_eq!(attempt, 2);
    assert!(
        at >= Time::from_millis(3_100),
        "Retry-After is a lower bound: {at}"
    );
    // b runs meanwhile; after the backoff, a is at the head of its group again.
    let c = h.id(Kind::Txt2Img, "sd");
    assert_eq!(h.dispatched(), vec![a, b]);
    h.at(3_100).complete(b, Outcome::Success);
    assert_eq!(h.dispatched(), vec![a, b, a]);
    h.complete(a, Outcome::Success);
    assert_eq!(h.dispatched(), vec![a, b, a, c]);
}

#[test]
fn retries_stop_after_max_retries_and_permanent_errors_never_retry() {
    let mut c = cfg(Bounds::default());
    c.retry.max_retries = 2;
    c.breaker.failure_threshold = 100;
    let mut h = Harness::new(c);
    let a = h.id(Kind::Txt2Img, "sd");
    let mut t = 0;
    for attempt in 2..=3 {
        match h.complete(
            a,
            Outcome::Transient {
                retry_after: None,
                upstream_fault: true,
            },
        ) {
            Resolution::Retry { attempt: n, at } => {
                assert_eq!(n, attempt);
                t = t.max(at.since_epoch().as_millis() as u64 + 1);
                h.at(t);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        h.complete(
            a,
            Outcome::Transient {
                retry_after: None,
                upstream_fault: true
            }
        ),
        Resolution::Exhausted { attempts: 3 }
    );
    let p = h.id(Kind::Txt2Img, "sd");
    assert_eq!(
        h.complete(
            p,
            Outcome::Permanent {
                upstream_fault: false
            }
        ),
        Resolution::Finished
    );
    assert_eq!(h.core.counters().retried, 2);
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut c = cfg(Bounds::default());
    c.retry = RetryPolicy {
        max_retries: 10,
        base: ms(100),
        cap: ms(1_000),
        jitter: 0.0,
    };
    c.breaker.failure_threshold = 100;
    let mut h = Harness::new(c);
    let a = h.id(Kind::Txt2Img, "sd");
    let mut delays = Vec::new();
    for _ in 0..6 {
        let now = h.now;
        match h.complete(
            a,
            Outcome::Transient {
                retry_after: None,
                upstream_fault: true,
            },
        ) {
            Resolution::Retry { at, .. } => {
                delays.push(at.saturating_since(now).as_millis() as u64);
                h.at(at.since_epoch().as_millis() as u64);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
}

#[test]
fn the_breaker_opens_holds_work_and_closes_after_a_probe() {
    let mut c = cfg(Bounds::default());
    c.breaker = BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_secs(10),
        ..BreakerConfig::default()
    };
    c.retry.max_retries = 0;
    let mut h = Harness::new(c);
    let a = h.id(Kind::Txt2Txt, "llm2");
    h.complete(
        a,
        Outcome::Transient {
            retry_after: None,
            upstream_fault: true,
        },
    );
    let b = h.id(Kind::Txt2Txt, "llm2");
    h.complete(
        b,
        Outcome::Transient {
            retry_after: None,
            upstream_fault: true,
        },
    );
    assert!(h.events.contains(&Event::BreakerOpened { lane: LaneId(0) }));
    let waiting = h.id(Kind::Txt2Txt, "llm2");
    let also = h.id(Kind::Txt2Txt, "llm2");
    assert!(!h.dispatched().contains(&waiting), "no dispatch while open");
    assert!(matches!(
        h.core.status(h.now).lanes[0].breaker,
        BreakerState::Open { .. }
    ));
    h.at(10_000);
    assert_eq!(
        h.dispatched().last(),
        Some(&waiting),
        "one probe after the cooldown"
    );
    assert_eq!(
        h.core.status(h.now).lanes[0].breaker,
        BreakerState::HalfOpen
    );
    h.complete(waiting, Outcome::Success);
    assert!(h.events.contains(&Event::BreakerClosed { lane: LaneId(0) }));
    assert_eq!(h.dispatched().last(), Some(&also));
}

#[test]
fn unload_and_warm_up_run_between_barrier_and_new_group() {
    let mut c = cfg(Bounds::default());
    c.unload_on_switch = true;
    c.warm_up = true;
    let mut h = Harness::new(c);
    // First model: nothing to unload, warm-up first.
    let chat = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(h.lifecycle_events(), vec!["warm llm2"]);
    assert!(h.dispatched().is_empty());
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.dispatched(), vec![chat]);
    let img = h.id(Kind::Txt2Img, "sd");
    h.complete(chat, Outcome::Success);
    assert_eq!(h.lifecycle_events(), vec!["warm llm2", "unload llm2"]);
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(
        h.lifecycle_events(),
        vec!["warm llm2", "unload llm2", "warm sd"]
    );
    assert_eq!(h.core.status(h.now).lanes[0].phase, "warming_up");
    h.core.lifecycle_done(h.now, LaneId(0));
    h.drain();
    assert_eq!(h.dispatched(), vec![chat, img]);
}

#[test]
fn invalid_configs_name_the_field() {
    let check = |f: &dyn Fn(&mut Config), field: &str| {
        let mut c = cfg(Bounds::default());
        f(&mut c);
        let e = Scheduler::new(c).expect_err("invalid");
        assert_eq!(e.field, field, "{e}");
    };
    check(&|c| c.priority.clear(), "priority");
    check(
        &|c| c.priority = vec![Kind::Txt2Txt, Kind::Txt2Txt],
        "priority",
    );
    check(&|c| c.bounds.max_batch = Some(0), "bounds.max_batch");
    check(
        &|c| c.bounds.max_dwell = Some(Duration::ZERO),
        "bounds.max_dwell",
    );
    check(
        &|c| c.bounds.starvation_after = Some(Duration::ZERO),
        "bounds.starvation_after",
    );
    check(
        &|c| c.limits.max_queued_total = 0,
        "limits.max_queued_total",
    );
    check(
        &|c| c.limits.max_queued_per_kind[1] = Some(0),
        "limits.max_queued_per_kind.txt2img",
    );
    check(
        &|c| c.default_deadline[0] = Duration::ZERO,
        "default_deadline.txt2txt",
    );
    check(&|c| c.retry.jitter = 1.5, "retry.jitter");
    check(&|c| c.retry.cap = ms(1), "retry.cap");
    check(
        &|c| c.breaker.failure_threshold = 0,
        "breaker.failure_threshold",
    );
    check(&|c| c.lanes.clear(), "lanes");
    check(&|c| c.models[1].name = "llm".into(), "models[1].name");
    check(
        &|c| c.models[0].max_in_flight = 0,
        "models[0].max_in_flight",
    );
    check(&|c| c.models[2].kinds.clear(), "models[2].kinds");
}

#[test]
fn unknown_completions_and_time_going_backwards_are_harmless() {
    let mut h = Harness::new(cfg(Bounds::default()));
    assert_eq!(
        h.core.complete(Time::ZERO, RequestId(99), Outcome::Success),
        Resolution::Ignored
    );
    let a = h.at(5_000).id(Kind::Txt2Img, "sd");
    h.complete(a, Outcome::Success);
    assert_eq!(
        h.core.complete(Time::ZERO, a, Outcome::Success),
        Resolution::Ignored
    );
    assert_eq!(h.core.counters().ignored, 2);
    h.core.handle_timeout(Time::from_millis(1));
    assert_eq!(h.core.now(), Time::from_millis(5_000));
    h.core.lifecycle_done(Time::ZERO, LaneId(42));
}

#[test]
fn shutdown_stops_intake_and_abort_answers_every_waiting_request() {
    let mut h = Harness::new(cfg(Bounds::default()));
    let run = h.id(Kind::Txt2Img, "sd");
    let w1 = h.id(Kind::Txt2Img, "sd");
    let w2 = h.id(Kind::Txt2Txt, "llm");
    h.core.shutdown(h.now);
    assert_eq!(
        h.submit(Kind::Txt2Img, "sd"),
        Admission::Rejected(Rejection::ShuttingDown)
    );
    h.core.abort_waiting(h.now, FailReason::ShuttingDown);
    h.drain();
    assert_eq!(h.left.get(&w1).map(String::as_str), Some("failed"));
    assert_eq!(h.left.get(&w2).map(String::as_str), Some("failed"));
    h.complete(run, Outcome::Success);
    assert_eq!(h.core.in_system(), 0);
}

#[test]
fn status_reports_groups_and_lanes() {
    let mut h = Harness::new(cfg(Bounds::default()));
    h.id(Kind::Txt2Img, "sd");
    h.at(2_000).id(Kind::Txt2Img, "sd");
    h.id(Kind::Txt2Txt, "llm");
    h.at(3_000);
    let s = h.core.status(h.now);
    let sd = s.groups.iter().find(|g| g.model == "sd").expect("sd group");
    assert_eq!(
        (sd.depth, sd.in_flight, sd.oldest_wait),
        (1, 1, Some(ms(1_000)))
    );
    let llm = s
        .groups
        .iter()
        .find(|g| g.model == "llm")
        .expect("llm group");
    assert_eq!((llm.depth, llm.in_flight), (1, 0));
    assert_eq!(s.lanes[0].active, Some((Kind::Txt2Img, "sd".to_owned())));
    assert_eq!(s.lanes[0].loaded(), Some("sd"));
    assert_eq!((s.waiting, s.in_flight), (2, 1));
}

#[test]
fn lanes_pin_groups_and_serve_in_parallel() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    let mut h = Harness::new(c);
    let a = h.id(Kind::Txt2Img, "sd");
    let b = h.id(Kind::Txt2Txt, "llm2");
    // Two lanes, two models: both run at once, each on its own lane.
    assert_eq!(h.dispatched(), vec![a, b]);
    let p = h.id_on(Kind::Txt2Img, "sd", 1);
    h.complete(a, Outcome::Success);
    assert!(
        !h.dispatched().contains(&p),
        "pinned to lane 1, which is busy with llm2"
    );
    h.complete(b, Outcome::Success);
    assert_eq!(h.dispatched().last(), Some(&p));
}

#[test]
fn failures_that_belong_to_one_request_never_open_the_breaker() {
    // Regression (issue 11.7): one malformed request retried four times opened the breaker and
    // delayed everyone else.
    let mut c = cfg(Bounds::default());
    c.breaker = BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_secs(10),
        ..BreakerConfig::default()
    };
    c.retry.max_retries = 0;
    let mut h = Harness::new(c);
    for _ in 0..5 {
        let a = h.id(Kind::Txt2Txt, "llm2");
        h.complete(
            a,
            Outcome::Transient {
                retry_after: None,
                upstream_fault: false,
            },
        );
        let b = h.id(Kind::Txt2Txt, "llm2");
        h.complete(
            b,
            Outcome::Permanent {
                upstream_fault: false,
            },
        );
    }
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::BreakerOpened { .. }))
    );
    // An error that blames the upstream, even one that cannot be retried, does count.
    for _ in 0..2 {
        let a = h.id(Kind::Txt2Txt, "llm2");
        h.complete(
            a,
            Outcome::Permanent {
                upstream_fault: true,
            },
        );
    }
    assert!(h.events.contains(&Event::BreakerOpened { lane: LaneId(0) }));
}

#[test]
fn a_zero_deadline_expires_at_submit_and_is_never_dispatched() {
    // Regression (issue 11, low): `deadline_ms: 0` was dispatched at its deadline.
    let mut h = Harness::new(cfg(Bounds::default()));
    let Admission::Accepted(id) = h.submit_with(Kind::Txt2Txt, "llm2", Some(Duration::ZERO)) else {
        panic!("accepted");
    };
    assert!(!h.dispatched().contains(&id));
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::Expired { id: x, .. } if *x == id))
    );
}

#[test]
fn the_byte_budget_refuses_what_would_not_fit_and_frees_on_leave() {
    // Regression (issue 11.11): queue limits counted requests, not bytes.
    let mut c = cfg(Bounds::default());
    c.limits.max_bytes_total = 100;
    let mut core = Scheduler::new(c).expect("valid");
    let now = Time::ZERO;
    let sub = |bytes| Submit {
        bytes,
        ..Submit::new(Kind::Txt2Img, "sd")
    };
    let Admission::Accepted(a) = core.submit(now, sub(60)) else {
        panic!("fits");
    };
    assert!(matches!(
        core.submit(now, sub(60)),
        Admission::Rejected(Rejection::QueueFull {
            scope: QueueScope::Bytes,
            ..
        })
    ));
    assert!(matches!(core.submit(now, sub(40)), Admission::Accepted(_)));
    assert_eq!(
        core.complete(now, a, Outcome::Success),
        Resolution::Finished
    );
    assert!(matches!(core.submit(now, sub(60)), Admission::Accepted(_)));
}

/// The lane each dispatch of `id` went to, in order.
fn lanes_of(h: &Harness, id: RequestId) -> Vec<usize> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Dispatch { id: d, lane, .. } if *d == id => Some(lane.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_retry_goes_to_another_lane_that_can_start_it() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.retry.base = ms(10);
    c.retry.cap = ms(10);
    let mut h = Harness::new(c);
    let a = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(lanes_of(&h, a), vec![0]);
    let failed = Outcome::Transient {
        retry_after: None,
        upstream_fault: true,
    };
    assert!(matches!(h.complete(a, failed), Resolution::Retry { .. }));
    h.at(20).drain();
    assert_eq!(
        lanes_of(&h, a),
        vec![0, 1],
        "retried on the idle lane, not the one that failed it"
    );

    // When the other lane is busy with another model, the retry stays rather than wait on it.
    let b = h.id(Kind::Txt2Img, "sd");
    assert_eq!(lanes_of(&h, b), vec![0]);
    h.complete(a, Outcome::Success);
    let busy = h.id(Kind::Txt2Txt, "llm2");
    assert_eq!(lanes_of(&h, busy), vec![1], "lane 1 runs llm2 again");
    assert!(matches!(h.complete(b, failed), Resolution::Retry { .. }));
    h.at(40).drain();
    assert_eq!(
        lanes_of(&h, b),
        vec![0, 0],
        "lane 1 is busy with another model: the retry runs on lane 0 again"
    );
}
