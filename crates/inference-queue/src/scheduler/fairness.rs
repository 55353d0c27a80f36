//! Fair share between tenants inside every group: virtual token counters (VTC, Sheng et al.,
//! OSDI '24). Each tenant has one counter for the whole fleet, grown by the cost of each request
//! it is served divided by its weight; a group serves, within a priority class, the line of the
//! tenant whose counter is smallest. A tenant that becomes backlogged starts at the smallest
//! counter of the tenants already backlogged, so idleness earns no credit: while two tenants
//! stay backlogged, the service each receives (weighted) differs by at most about the largest
//! cost of one request.

use std::collections::HashMap;

use crate::types::TenantId;

/// The tenants' counters and backlogs.
#[derive(Debug, Default)]
pub(super) struct Fairness {
    /// Virtual service: what each tenant was served, divided by its weight.
    service: HashMap<TenantId, f64>,
    /// Requests waiting per tenant (queued or backing off), over every group.
    backlog: HashMap<TenantId, usize>,
    /// Weights other than 1.
    weights: HashMap<TenantId, u32>,
    /// The typical cost of one request (a moving average of the charges): counters closer than
    /// this are level, and the tenant with less waiting goes first.
    quantum: f64,
}

impl Fairness {
    /// Tenant `t`'s virtual service.
    pub(super) fn counter(&self, t: TenantId) -> f64 {
        self.service.get(&t).copied().unwrap_or(0.0)
    }

    /// Requests of `t` waiting, over every group.
    pub(super) fn waiting(&self, t: TenantId) -> usize {
        self.backlog.get(&t).copied().unwrap_or(0)
    }

    /// Weights from now on (absent tenants weigh 1).
    pub(super) fn set_weights(&mut self, weights: &[(TenantId, u32)]) {
        self.weights = weights.iter().map(|(t, w)| (*t, (*w).max(1))).collect();
    }

    /// `t` weighs `weight` from now on.
    pub(super) fn set_weight(&mut self, t: TenantId, weight: u32) {
        if weight <= 1 {
            self.weights.remove(&t);
        } else {
            self.weights.insert(t, weight);
        }
    }

    /// A request of `t` starts waiting. A tenant that had nothing waiting is lifted to the
    /// smallest counter of those that have.
    pub(super) fn waits(&mut self, t: TenantId) {
        let n = self.backlog.entry(t).or_default();
        *n += 1;
        if *n == 1 {
            let floor = self
                .backlog
                .iter()
                .filter(|(u, n)| **u != t && **n > 0)
                .map(|(u, _)| self.counter(*u))
                .reduce(f64::min);
            if let Some(floor) = floor {
                let own = self.service.entry(t).or_default();
                *own = own.max(floor);
            }
        }
    }

    /// A request of `t` stops waiting (dispatched, cancelled, expired).
    pub(super) fn stops_waiting(&mut self, t: TenantId) {
        if let Some(n) = self.backlog.get_mut(&t) {
            *n = n.saturating_sub(1);
        }
    }

    /// How far apart two counters may be and still count as level.
    pub(super) fn quantum(&self) -> f64 {
        self.quantum
    }

    /// `t` is charged `cost` for a request it starts.
    pub(super) fn charged(&mut self, t: TenantId, cost: f64) {
        self.quantum = if self.quantum == 0.0 {
            cost
        } else {
            0.9 * self.quantum + 0.1 * cost
        };
        self.served(t, cost);
    }

    /// `t` was served `cost` (negative: a correction of an estimate that was too high).
    pub(super) fn served(&mut self, t: TenantId, cost: f64) {
        let w = f64::from(self.weights.get(&t).copied().unwrap_or(1));
        let s = self.service.entry(t).or_default();
        *s = (*s + cost / w).max(0.0);
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
        f.served(a, 100.0);
        f.waits(a);
        // b arrives while a is backlogged: it starts at a's counter, not at 0.
        f.waits(b);
        assert_eq!(f.counter(b), 100.0);
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
