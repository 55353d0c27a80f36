//! Fair share between tenants inside every group: virtual token counters (VTC, Sheng et al.,
//! OSDI '24). Each tenant has one counter for the whole fleet, grown by the cost of each request
//! it is served divided by its weight; a group serves, within a priority class, the line of the
//! tenant whose counter is smallest. A tenant that becomes backlogged starts at the smallest
//! counter of the tenants already backlogged, so idleness earns no credit: while two tenants
//! stay backlogged, the service each receives (weighted) differs by at most about the largest
//! cost of one request.

use crate::types::TenantId;

/// One tenant's share.
#[derive(Clone, Copy, Debug)]
struct Share {
    /// Virtual service: what it was served, divided by its weight.
    service: f64,
    /// Its requests waiting (queued or backing off), over every group.
    waiting: usize,
    /// Its requests running, over the fleet.
    running: u32,
    weight: u32,
}

impl Default for Share {
    fn default() -> Share {
        Share {
            service: 0.0,
            waiting: 0,
            running: 0,
            weight: 1,
        }
    }
}

/// The tenants' counters and backlogs, by tenant id (ids are small and dense: the engine
/// numbers tenants as it meets them).
#[derive(Clone, Debug, Default)]
pub(super) struct Fairness {
    shares: Vec<Share>,
    /// Tenants with requests waiting.
    backlogged: usize,
    /// The typical cost of one request (a moving average of the charges).
    typical: f64,
}

impl Fairness {
    fn share(&mut self, t: TenantId) -> &mut Share {
        let i = t.0 as usize;
        if self.shares.len() <= i {
            self.shares.resize(i + 1, Share::default());
        }
        &mut self.shares[i]
    }

    /// Tenant `t`'s virtual service.
    pub(super) fn counter(&self, t: TenantId) -> f64 {
        self.shares.get(t.0 as usize).map_or(0.0, |s| s.service)
    }

    /// Requests of `t` waiting, over every group.
    pub(super) fn waiting(&self, t: TenantId) -> usize {
        self.shares.get(t.0 as usize).map_or(0, |s| s.waiting)
    }

    /// Whether `t` may start another request under `cap` running at once.
    pub(super) fn may_start(&self, t: TenantId, cap: Option<u32>) -> bool {
        cap.is_none_or(|c| self.shares.get(t.0 as usize).is_none_or(|s| s.running < c))
    }

    /// A request of `t` started running.
    pub(super) fn started(&mut self, t: TenantId) {
        self.share(t).running += 1;
    }

    /// A request of `t` stopped running (its attempt ended).
    pub(super) fn ended(&mut self, t: TenantId) {
        let s = self.share(t);
        s.running = s.running.saturating_sub(1);
    }

    /// Weights from now on (absent tenants weigh 1).
    pub(super) fn set_weights(&mut self, weights: &[(TenantId, u32)]) {
        for s in &mut self.shares {
            s.weight = 1;
        }
        for (t, w) in weights {
            self.set_weight(*t, *w);
        }
    }

    /// `t` weighs `weight` from now on.
    pub(super) fn set_weight(&mut self, t: TenantId, weight: u32) {
        self.share(t).weight = weight.max(1);
    }

    /// A request of `t` starts waiting. A tenant that had nothing waiting starts one typical
    /// request below the least counter of those that have: lifted there from below (idleness
    /// earns no more credit than one request), brought there from less than one typical
    /// request above (a tenant that sends one request at a time goes next, not behind the
    /// flood it is level with, whatever the corrections of the running request's estimate).
    pub(super) fn waits(&mut self, t: TenantId) {
        let first = self.share(t).waiting == 0;
        if first && self.backlogged > 0 {
            let floor = self
                .shares
                .iter()
                .filter(|s| s.waiting > 0)
                .map(|s| s.service)
                .reduce(f64::min);
            if let Some(floor) = floor {
                let typical = self.typical;
                let own = &mut self.share(t).service;
                if *own <= floor + typical {
                    *own = (floor - typical).max(0.0);
                }
            }
        }
        self.backlogged += usize::from(first);
        self.share(t).waiting += 1;
    }

    /// A request of `t` stops waiting (dispatched, cancelled, expired).
    pub(super) fn stops_waiting(&mut self, t: TenantId) {
        let s = self.share(t);
        if s.waiting > 0 {
            s.waiting -= 1;
            if s.waiting == 0 {
                self.backlogged -= 1;
            }
        }
    }

    /// `t` is charged `cost` for a request it starts.
    pub(super) fn charged(&mut self, t: TenantId, cost: f64) {
        self.typical = if self.typical == 0.0 {
            cost
        } else {
            0.9 * self.typical + 0.1 * cost
        };
        self.served(t, cost);
    }

    /// `t` was served `cost` (negative: a correction of an estimate that was too high).
    pub(super) fn served(&mut self, t: TenantId, cost: f64) {
        let s = self.share(t);
        s.service = (s.service + cost / f64::from(s.weight)).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_back_from_idleness_starts_level_with_the_backlogged() {
        let mut f = Fairness::default();
        let (a, b) = (TenantId(1), TenantId(2));
        f.waits(a);
        f.charged(a, 100.0);
        f.waits(a);
        // b arrives while a is backlogged: it starts one typical request (100) below a's
        // counter, not at 0.
        f.waits(b);
        assert_eq!(f.counter(b), 0.0);
        f.charged(b, 100.0);
        f.charged(a, 100.0);
        f.stops_waiting(b);
        f.waits(b);
        assert_eq!(f.counter(b), 100.0, "level with a, less a typical request");
    }

    #[test]
    fn weights_divide_what_is_counted() {
        let mut f = Fairness::default();
        f.set_weights(&[(TenantId(1), 4)]);
        f.served(TenantId(1), 8.0);
        f.served(TenantId(2), 8.0);
        assert_eq!(f.counter(TenantId(1)), 2.0);
        assert_eq!(f.counter(TenantId(2)), 8.0);
    }
}
