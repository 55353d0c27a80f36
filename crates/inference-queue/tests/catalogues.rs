//! Catalogues that differ per lane (issue 31): a model runs only on the lanes that list it, with
//! the slots it has there.

mod common;

use common::*;
use inference_queue::*;

#[test]
fn a_model_runs_only_on_the_lanes_that_list_it_with_the_slots_it_has_there() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    for m in &mut c.models {
        match m.name.as_str() {
            // llm2 is listed by gpu1 alone, which runs three at once (one elsewhere).
            "llm2" => {
                m.only_lanes = Some(vec![1]);
                m.slots_on = vec![(1, 3)];
            }
            "sd" => m.only_lanes = Some(vec![0]),
            _ => {}
        }
    }
    let mut h = Harness::new(c);
    let chats: Vec<RequestId> = (0..4).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let image = h.id(Kind::Txt2Img, "sd");
    let placed: Vec<Option<usize>> = chats.iter().map(|c| h.lane_of(*c)).collect();
    assert_eq!(
        placed,
        [Some(1), Some(1), Some(1), None],
        "three slots on gpu1"
    );
    assert_eq!(h.lane_of(image), Some(0), "sd only where it is listed");
    h.at(1_000).complete(chats[0], Outcome::Success);
    assert_eq!(
        h.lane_of(chats[3]),
        Some(1),
        "the freed slot takes the fourth"
    );
}

#[test]
fn slots_on_a_lane_that_does_not_exist_are_refused() {
    let mut c = cfg(Bounds::default());
    c.models[0].slots_on = vec![(3, 2)];
    let e = Scheduler::new(c).expect_err("lane 3 of 1");
    assert_eq!(e.field, "models[0].slots_on");
}

#[test]
fn a_kind_one_lane_refuses_goes_to_the_others_and_one_every_lane_refuses_is_not_served() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    let mut h = Harness::new(c);
    // gpu0's server answered an img2txt call to `llm` with 501 not_supported_error.
    h.core.refuse_kind(h.now, LaneId(0), "llm", Kind::Img2Txt);
    h.drain();
    let first = h.id(Kind::Img2Txt, "llm");
    let second = h.id(Kind::Img2Txt, "llm");
    let third = h.id(Kind::Img2Txt, "llm");
    assert_eq!(h.lane_of(first), Some(1), "only gpu1 serves it");
    assert_eq!(h.lane_of(second), Some(1));
    assert_eq!(h.lane_of(third), None, "gpu1's two slots are taken");

    // gpu1 refuses it too: the waiting one fails, new ones are refused, the running ones end.
    h.core.refuse_kind(h.now, LaneId(1), "llm", Kind::Img2Txt);
    h.drain();
    assert_eq!(h.left.get(&third).map(String::as_str), Some("failed"));
    assert!(h.events.contains(&Event::Failed {
        id: third,
        reason: FailReason::KindRefused
    }));
    assert!(matches!(
        h.submit(Kind::Img2Txt, "llm"),
        Admission::Rejected(Rejection::KindNotServed { .. })
    ));
    assert!(!h.core.models_for(Kind::Img2Txt).contains(&"llm".to_owned()));
    h.at(1_000).complete(first, Outcome::Success);

    // A reading of the catalogues reports it again.
    h.core.restore_kinds(h.now);
    h.drain();
    assert!(matches!(
        h.submit(Kind::Img2Txt, "llm"),
        Admission::Accepted(_)
    ));
}

#[test]
fn a_kind_only_one_lane_lists_goes_only_there() {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    // gpu0's server lists `llm` without vision; gpu1's with.
    c.models[0].kinds_on = vec![(0, vec![Kind::Txt2Txt])];
    let mut h = Harness::new(c);
    let images: Vec<RequestId> = (0..3).map(|_| h.id(Kind::Img2Txt, "llm")).collect();
    let placed: Vec<Option<usize>> = images.iter().map(|i| h.lane_of(*i)).collect();
    assert_eq!(
        placed,
        [Some(1), Some(1), None],
        "gpu1's two slots, never gpu0"
    );
    h.at(1_000).complete(images[0], Outcome::Success);
    assert_eq!(
        h.lane_of(images[2]),
        Some(1),
        "the freed slot on gpu1 takes it"
    );
    let bad = {
        let mut c = cfg(Bounds::default());
        c.models[1].kinds_on = vec![(0, vec![Kind::Txt2Img])];
        Scheduler::new(c).expect_err("llm2 does not serve txt2img")
    };
    assert_eq!(bad.field, "models[1].kinds_on");
}
