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
