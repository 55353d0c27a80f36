//! Prefix-aware placement: a chat goes to the lane where its first token comes soonest, which
//! is where its prompt is cached unless that lane's server is busier than the prefill elsewhere.

mod common;

use common::*;
use inference_queue::*;

/// Two lanes that both hold one chat model of two slots, with prefix-aware placement on (each
/// uncached block costs 4 ms of prefill).
fn two_lanes_holding_a_chat_model() -> Harness {
    let mut c = cfg(Bounds::default());
    c.lanes = vec!["gpu0".into(), "gpu1".into()];
    c.models = vec![ModelSpec::new("llm", &[Kind::Txt2Txt], 2)];
    c.prefix = Some(PrefixConfig::default());
    let mut h = Harness::new(c);
    for lane in 0..2 {
        let warm = h.id_on(Kind::Txt2Txt, "llm", lane);
        h.complete(warm, Outcome::Success);
    }
    h
}

/// A chain of blocks `from..to`: prompts share their first blocks when their ranges start alike.
fn chain(from: u64, to: u64) -> PrefixChain {
    (from..to).collect::<Vec<u64>>().into()
}

/// Submit a chat with `prompt`, pinned to `lane` when given; its id.
fn chat(h: &mut Harness, prompt: &PrefixChain, lane: Option<usize>) -> RequestId {
    let now = h.now;
    let a = h.core.submit(
        now,
        Submit {
            lane: lane.map(LaneId),
            prefix: Some(prompt),
            ..Submit::new(Kind::Txt2Txt, "llm")
        },
    );
    let Admission::Accepted(id) = a else {
        panic!("expected acceptance, got {a:?}")
    };
    h.accepted.push(id);
    let m = h.core.model_id("llm").expect("llm");
    h.info.insert(id, (Kind::Txt2Txt, m, now));
    h.drain();
    id
}

#[test]
fn a_conversations_next_turn_returns_to_the_lane_that_holds_its_history() {
    let mut h = two_lanes_holding_a_chat_model();
    let first = chat(h.at(1_000), &chain(0, 50), None);
    let home = h.lane_of(first).expect("dispatched");
    h.at(3_000).complete(first, Outcome::Success);
    // Both lanes are free: the turn goes where its first 50 blocks are cached.
    let second = chat(h.at(5_000), &chain(0, 60), None);
    assert_eq!(h.lane_of(second), Some(home));
}

#[test]
fn a_turn_does_not_wait_behind_its_home_servers_long_prefill_when_another_lane_is_free() {
    let mut h = two_lanes_holding_a_chat_model();
    let first = chat(h.at(1_000), &chain(0, 50), None);
    let home = h.lane_of(first).expect("dispatched");
    h.at(3_000).complete(first, Outcome::Success);
    // Another conversation's 250-block document goes to the same server: about a second of
    // prefill there, while one of its two slots stays free.
    let document = chat(h.at(5_000), &chain(10_000, 10_250), Some(home));
    assert_eq!(h.lane_of(document), Some(home));
    // The next turn would wait that second at home; the other lane prefills all 60 of its
    // blocks in a quarter of that.
    let second = chat(h.at(5_010), &chain(0, 60), None);
    assert_eq!(h.lane_of(second), Some(1 - home));
    // Home has caught up by the next turn, but the other lane now holds more of the history.
    h.at(8_000).complete(second, Outcome::Success);
    let third = chat(h.at(8_500), &chain(0, 70), None);
    assert_ne!(
        h.lane_of(third),
        None,
        "dispatched at once: both lanes have a free slot"
    );
    assert_eq!(h.lane_of(third), Some(1 - home));
}
