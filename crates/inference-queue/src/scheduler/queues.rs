//! Queue bookkeeping: leaving the system, deadlines and retries coming due, FIFO fronts, backoff.

use super::*;

impl Scheduler {
    /// Remove `id` from the map and give back its bytes.
    pub(super) fn release(&mut self, id: RequestId) -> Option<Req> {
        let r = self.requests.remove(&id)?;
        self.bytes_held -= r.bytes;
        Some(r)
    }

    pub(super) fn advance(&mut self, now: Time) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            let arrival = self.requests.get(&id).map_or(now, |r| r.arrival);
            self.remove_waiting(id);
            self.counters.expired += 1;
            self.events.push_back(Event::Expired {
                id,
                waited: now.saturating_since(arrival),
            });
        }
        while let Some(&(t, id)) = self.retries.first() {
            if t > now {
                break;
            }
            self.retries.pop_first();
            if let Some(r) = self.requests.get_mut(&id) {
                r.state = ReqState::Queued;
                let g = &mut self.groups[r.group];
                g.queue.push_front(id);
                g.depth += 1;
            }
        }
    }

    /// Take a waiting (queued or backing-off) request out of the system's queues and its map.
    pub(super) fn remove_waiting(&mut self, id: RequestId) {
        let Some(r) = self.release(id) else {
            return;
        };
        self.deadlines.remove(&(r.deadline, id));
        let kind = self.groups[r.group].key.kind;
        self.waiting_total -= 1;
        self.waiting_per_kind[kind.index()] -= 1;
        match r.state {
            ReqState::Queued => {
                let g = &mut self.groups[r.group];
                g.depth -= 1;
                Self::clean_front(g, &self.requests);
            }
            ReqState::Backoff { until } => {
                self.retries.remove(&(until, id));
            }
            _ => {}
        }
    }

    /// Pop ids at the front that are no longer queued, so that the front is always live.
    pub(super) fn clean_front(g: &mut Group, requests: &IdMap<Req>) {
        while let Some(front) = g.queue.front() {
            match requests.get(front) {
                Some(r) if r.state == ReqState::Queued => break,
                _ => {
                    g.queue.pop_front();
                }
            }
        }
    }

    pub(super) fn front_arrival(&self, g: &Group) -> Option<Time> {
        g.queue
            .front()
            .and_then(|id| self.requests.get(id))
            .map(|r| r.arrival)
    }

    pub(super) fn backoff(&mut self, attempts: u32) -> Duration {
        let r = self.cfg.retry;
        let exp = attempts.saturating_sub(1).min(30);
        let raw = r.base.saturating_mul(1u32 << exp).min(r.cap);
        let keep = 1.0 - r.jitter * self.rng.next_f64();
        raw.mul_f64(keep)
    }
}
