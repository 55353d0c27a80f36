//! Affinity across lanes: a model stays where it is loaded, and a lane leaves its model for
//! another only when that pays: a group nobody serves takes a lane whose work ran dry before one
//! whose model people wait for, and a group already being served takes only a spare lane when
//! it starves.

mod common;

use std::time::Duration;

use common::*;
use inference_queue::*;

fn two_lanes(max_batch: Option<u32>) -> Harness {
    let mut c = cfg(Bounds {
        starvation_after: Some(Duration::from_secs(90)),
        max_batch,
        max_dwell: None,
        batch_starvation_after: None,
    });
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    Harness::new(c)
}

#[test]
fn a_new_model_does_not_evict_one_people_wait_for_until_it_starves() {
    // gpu0 serves sd, gpu1 serves llm2 with more waiting than a batch: both models are wanted.
    let mut h = two_lanes(Some(2));
    let sd = h.id(Kind::Txt2Img, "sd");
    let chats: Vec<_> = (0..6).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    let _more_sd = h.id(Kind::Txt2Img, "sd");
    assert_eq!(h.lane_of(sd), Some(0));
    assert_eq!(h.lane_of(chats[0]), Some(1));
    // A vision request arrives; nobody holds vision.
    let vision = h.at(1_000).id(Kind::Img2Txt, "vision");
    // gpu1 reaches its batch bound twice, but llm2 still has waiting work: it keeps llm2 rather
    // than evict it for a group that does not starve yet.
    for (i, c) in chats.iter().take(4).enumerate() {
        h.at(2_000 + i as u64 * 1_000)
            .complete(*c, Outcome::Success);
    }
    assert_eq!(h.lane_of(vision), None, "not placed before it starves");
    assert_eq!(h.lane_of(chats[4]), Some(1), "llm2 kept its lane");
    // Once it starves it takes the lane whose switch costs least at its next switch point.
    h.at(92_000).complete(chats[4], Outcome::Success);
    assert_eq!(h.lane_of(vision), Some(1), "a starving group is placed");
    assert_eq!(h.lane_of(chats[5]), None);
}

#[test]
fn a_new_model_takes_a_lane_whose_work_ran_dry() {
    let mut h = two_lanes(Some(2));
    let sd = h.id(Kind::Txt2Img, "sd");
    let _waiting_sd = h.id(Kind::Txt2Img, "sd");
    let chat = h.id(Kind::Txt2Txt, "llm2");
    let vision = h.at(1_000).id(Kind::Img2Txt, "vision");
    assert_eq!(h.lane_of(vision), None, "both lanes busy");
    // llm2 runs dry on gpu1: vision goes there at once, long before it starves.
    h.at(2_000).complete(chat, Outcome::Success);
    assert_eq!(h.lane_of(vision), Some(1));
    assert_eq!(h.lane_of(sd), Some(0));
}

#[test]
fn a_starving_group_being_served_takes_only_a_spare_lane() {
    // sd runs on gpu0 with a queue behind it; llm2 ran on gpu1 and finished.
    let scenario = |last_chat_ms: u64| {
        let mut h = two_lanes(None);
        let running = h.id(Kind::Txt2Img, "sd");
        let waiting = h.id(Kind::Txt2Img, "sd");
        let chat = h.id(Kind::Txt2Txt, "llm2");
        h.at(last_chat_ms).complete(chat, Outcome::Success);
        // sd's oldest waiter starves at 90 s; the next input lets the lanes decide.
        h.at(100_000).id(Kind::Txt2Img, "sd");
        (h.lane_of(running), h.lane_of(waiting))
    };
    // gpu1's model worked 5 s ago: more of its work is likely, so sd, which is being served,
    // waits for its own lane rather than make gpu1 reload twice.
    assert_eq!(scenario(95_000), (Some(0), None));
    // gpu1 has been idle for 99 s: it is spare, and the starving group takes it.
    assert_eq!(scenario(1_000), (Some(0), Some(1)));
}

#[test]
fn a_new_model_that_fits_beside_wanted_ones_is_placed_at_once() {
    let mut c = cfg(Bounds::default());
    c.lanes = ["gpu0", "gpu1"]
        .map(|name| LaneSpec {
            name: name.into(),
            memory_mb: Some(12_000),
        })
        .to_vec();
    let mut h = Harness::new(c);
    let sd = h.id(Kind::Txt2Img, "sd");
    let _waiting_sd = h.id(Kind::Txt2Img, "sd");
    let chats: Vec<_> = (0..3).map(|_| h.id(Kind::Txt2Txt, "llm2")).collect();
    // Both lanes' models have work waiting, but vision (2 GB) fits beside either: nothing is
    // evicted, so it need not wait to starve.
    let vision = h.at(1_000).id(Kind::Img2Txt, "vision");
    assert!(h.lane_of(vision).is_some(), "placed beside a busy model");
    assert!(h.lane_of(sd).is_some() && h.lane_of(chats[0]).is_some());
}
