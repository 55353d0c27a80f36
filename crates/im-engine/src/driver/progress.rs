//! What waiting callers are told (a job's `progress`, opt-in): their place and predicted start
//! at admission and every second while they wait, and a load of their model once per lane. A
//! caller's sink is dropped when its request is dispatched or leaves: the channel's close.

use foldhash::HashMap;

use inference_queue::{LaneId, RequestId, Time};

use super::Driver;
use crate::job::{Progress, ProgressSink};

/// The followed requests: each one's sink and the lanes whose load it was told of.
#[derive(Default)]
pub(super) struct Watchers {
    sinks: HashMap<RequestId, (ProgressSink, Vec<LaneId>)>,
}

impl Watchers {
    /// Follow `id`.
    pub(super) fn watch(&mut self, id: RequestId, sink: ProgressSink) {
        self.sinks.insert(id, (sink, Vec::new()));
    }

    /// Stop following `id` (dispatched, or gone): its caller sees the channel close.
    pub(super) fn forget(&mut self, id: RequestId) {
        self.sinks.remove(&id);
    }
}

impl Driver {
    /// Tell every follower where it stands.
    pub(super) fn tell_watchers(&mut self) {
        if self.watchers.sinks.is_empty() {
            return;
        }
        let now = self.clock.now();
        let ids: Vec<RequestId> = self.watchers.sinks.keys().copied().collect();
        for id in ids {
            self.tell(now, id);
        }
    }

    /// Tell `id`'s caller where it stands: its place, and a load of its model not told yet.
    /// A request nobody follows costs a lookup: its place is predicted (a replay of the whole
    /// state while it is small) only for a follower.
    pub(super) fn tell(&mut self, now: Time, id: RequestId) {
        if !self.watchers.sinks.contains_key(&id) {
            return;
        }
        let Some(w) = self.core.waiting(now, id) else {
            return;
        };
        let model = self.entries.get(&id).map(|e| e.job.model().to_owned());
        let Some((sink, told)) = self.watchers.sinks.get_mut(&id) else {
            return;
        };
        let mut gone = sink
            .send(Progress::Queued {
                position: w.position,
                eta: w.eta,
            })
            .is_err();
        if let (Some(lane), Some(model)) = (w.loading, model)
            && !told.contains(&lane)
        {
            told.push(lane);
            let lane = self.lanes[lane.0].clone();
            gone |= sink.send(Progress::Loading { model, lane }).is_err();
        }
        if gone {
            self.watchers.forget(id);
        }
    }

    /// `id` was dispatched to `lane`: its caller is told if this attempt carries its model's
    /// load, and is followed no more.
    pub(super) fn dispatched_watcher(&mut self, id: RequestId, lane: LaneId) {
        let Some((sink, told)) = self.watchers.sinks.remove(&id) else {
            return;
        };
        if self.core.carries_load(id)
            && !told.contains(&lane)
            && let Some(e) = self.entries.get(&id)
        {
            let _ = sink.send(Progress::Loading {
                model: e.job.model().to_owned(),
                lane: self.lanes[lane.0].clone(),
            });
        }
    }
}
