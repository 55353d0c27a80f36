//! The queues' own specifications.

use std::time::Duration;

use super::*;

fn req(group: GroupId, arrival: Time, tenant: u32) -> Req {
    Req {
        group,
        bytes: 0,
        arrival,
        deadline: arrival + Duration::from_secs(1 << 20),
        attempts: 0,
        state: ReqState::Queued,
        failed_on: None,
        started: arrival,
        cold: false,
        behind_load: false,
        placed: false,
        tenant: TenantId(tenant),
        class: Class::default(),
        cost: None,
        charged: 0.0,
        prefix: None,
        prefix_matched: 0,
        prefill_mark: arrival,
        promised: false,
    }
}

/// The earliest arrival of a queued request, by looking at every one.
fn oldest_by_scan(q: &Queues) -> Option<Time> {
    q.requests()
        .filter(|(_, r)| r.state == ReqState::Queued)
        .map(|(_, r)| r.arrival)
        .min()
}

/// The oldest waiter of all, as the starvation bound reads it, is the earliest arrival of the
/// queued requests whatever happened to them: served in any group's order, cancelled, failed
/// and queued again at their line's head (out of arrival order); while one request is left
/// waiting and thousands pass it, the index stays bounded.
#[test]
fn the_oldest_waiter_of_all_is_the_earliest_queued_arrival() {
    let mut q = Queues::default();
    let groups: Vec<GroupId> = (0..6)
        .map(|i| {
            q.group_for(GroupKey {
                kind: Kind::ALL[i % Kind::ALL.len()],
                model: ModelId(i / 2),
                lane: None,
            })
        })
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut roll = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = Time::ZERO;
    let mut next_id = 0u64;
    let mut running: Vec<RequestId> = Vec::new();
    // One request of the last group that nobody serves: everything else passes it.
    let patient = RequestId(u64::MAX);
    q.enqueue(patient, req(groups[5], now, 0));
    for step in 0..40_000 {
        now += Duration::from_millis(1);
        if step == 20_000 {
            // From here on, the oldest changes as requests come and go.
            q.remove_waiting(patient);
        }
        match roll(10) {
            0..=3 => {
                let g = groups[roll(5) as usize];
                q.enqueue(RequestId(next_id), req(g, now, roll(3) as u32));
                next_id += 1;
            }
            4..=6 => {
                if let Some(id) = q.take(groups[roll(5) as usize], Turn::default(), None) {
                    q.get_mut(id).expect("taken").state = ReqState::InFlight { lane: LaneId(0) };
                    running.push(id);
                }
            }
            7 if !running.is_empty() => {
                // A running request fails and backs off for a while.
                let id = running.swap_remove(roll(running.len() as u64) as usize);
                let g = q.get(id).expect("running").group;
                q.attempt_ended(g);
                q.back_off(id, now + Duration::from_millis(roll(50)), LaneId(0));
            }
            8 => {
                if let Some(id) = running.pop() {
                    let g = q.get(id).expect("running").group;
                    q.attempt_ended(g);
                    q.release(id);
                }
            }
            7 => {}
            _ => {
                // A waiting request is cancelled.
                let waiting: Vec<RequestId> = q
                    .requests()
                    .filter(|(id, r)| r.state == ReqState::Queued && *id != patient)
                    .map(|(id, _)| id)
                    .take(8)
                    .collect();
                if let Some(id) = waiting.get(roll(8) as usize) {
                    q.remove_waiting(*id);
                }
            }
        }
        q.due(now);
        assert_eq!(
            q.oldest_arrival_of_all(),
            oldest_by_scan(&q),
            "at step {step}"
        );
        if step < 20_000 {
            assert_eq!(q.oldest_arrival_of_all(), Some(Time::ZERO));
        }
        let held = q.oldest.held();
        assert!(
            held <= 2 * q.waiting() + OldestIndex::SLACK + 2,
            "{held} entries held"
        );
    }
}
