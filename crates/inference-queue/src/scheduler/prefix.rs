//! Prefix-aware placement: where a prompt's beginning is cached.
//!
//! Chat servers (llama.cpp, vLLM, SGLang) keep the KV cache of recent prompts: a request whose
//! prefix (a system prompt, the earlier turns of a conversation) is cached on a server skips that
//! prefill there. A caller gives each request its prompt as a [`PrefixChain`]: the hashes of its
//! fixed-size blocks, each hash covering its block and every block before it, so that two
//! prompts share the chain's first `n` entries exactly when they share their first `n` blocks.
//!
//! Per lane the core remembers the blocks it sent there ([`PrefixIndex`]: bounded, least
//! recently used out first, a prompt's last blocks before its first, as a server's cache ages).
//! When a lane takes work from a group, it takes, among the first `prefix.window` requests the
//! group would serve, the first whose first token comes soonest on it of all the lanes that hold
//! the model ([`Scheduler::pick_for`]): the wait for a slot, the prefills the lane's server has
//! yet to do (one at a time: what was sent there and not cached), and the prefill of what it
//! lacks of this prompt. Conversations return to their lane unless it is busier than their
//! prefill elsewhere costs, and what is cached nowhere goes to whichever lane is free and least
//! behind (a miss is spread by the lanes' own pull, never sent to one replica). It is
//! work-conserving: a free lane always takes something, so no lane idles while another's queue
//! grows. Once the group's oldest waiter has waited `prefix.max_skip`, the order
//! is the group's own: the starvation bound is untouched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::Scheduler;
use super::queues::GroupId;
use crate::types::{Kind, LaneId, ModelId, RequestId, TenantId, Time};

/// A prompt as the chain of its blocks' hashes (each covering its block and all before it).
pub type PrefixChain = Arc<[u64]>;

/// The prefix settings ([`crate::Config::prefix`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixConfig {
    /// How many of the requests a group would serve next a lane chooses among.
    pub window: usize,
    /// Past this wait of the group's oldest waiter, the group's own order holds.
    pub max_skip: Duration,
    /// Blocks remembered per lane (what its server's cache holds, roughly).
    pub blocks_per_lane: usize,
    /// The prefill time of one block a server has not cached: what a lane that lacks a prompt
    /// adds against the lane that holds it.
    pub prefill_per_block: Duration,
}

impl Default for PrefixConfig {
    fn default() -> PrefixConfig {
        PrefixConfig {
            window: 8,
            max_skip: Duration::from_secs(30),
            blocks_per_lane: 16_384,
            prefill_per_block: Duration::from_millis(4),
        }
    }
}

/// How many tenants a block remembers as having sent it: a block sent by more is counted, in a
/// probe ([`Scheduler::prefix_probe`]), only for the first ones (a probe under-reports; it never
/// shows a tenant what only others sent).
const OWNERS: usize = 4;

/// One remembered block: when it was last sent, and the first tenants that sent it.
#[derive(Clone, Copy, Debug)]
struct Block {
    stamp: u64,
    owners: [TenantId; OWNERS],
    n_owners: u8,
}

impl Block {
    fn owned_by(&self, tenant: TenantId) -> bool {
        self.owners[..usize::from(self.n_owners)].contains(&tenant)
    }

    fn add_owner(&mut self, tenant: TenantId) {
        if !self.owned_by(tenant) && usize::from(self.n_owners) < OWNERS {
            self.owners[usize::from(self.n_owners)] = tenant;
            self.n_owners += 1;
        }
    }
}

/// The blocks recently sent to one lane, least recently used out first.
///
/// Its blocks sit behind an `Arc`: a copy of the scheduler (a predicted wait's replay) shares
/// them, and the scheduler's own writes find them unshared (a replay's copy writes none).
#[derive(Clone, Debug, Default)]
pub(crate) struct PrefixIndex {
    blocks: Arc<Blocks>,
    /// Blocks sent here, and of them those sent here before.
    sent: u64,
    matched: u64,
    /// When the server is likely done prefilling what was sent to it: a server prefills one
    /// prompt at a time, so a request sent now starts its own prefill after these.
    prefill_until: Time,
}

/// The blocks of a [`PrefixIndex`], and their recency.
#[derive(Clone, Debug, Default)]
struct Blocks {
    block: HashMap<u64, Block>,
    by_stamp: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixIndex {
    /// How many leading blocks of `chain` are here.
    pub(crate) fn matched(&self, chain: &[u64]) -> usize {
        chain
            .iter()
            .take_while(|h| self.blocks.block.contains_key(h))
            .count()
    }

    /// How many leading blocks of `chain` are here and were sent by `tenant` itself.
    pub(crate) fn matched_for(&self, chain: &[u64], tenant: TenantId) -> usize {
        chain
            .iter()
            .take_while(|h| self.blocks.block.get(h).is_some_and(|b| b.owned_by(tenant)))
            .count()
    }

    /// `chain` was sent here for `tenant`: its blocks become the most recently used (its first
    /// block the newest, so that its tail leaves first), the oldest leave beyond `capacity`
    /// blocks.
    pub(crate) fn sent(&mut self, chain: &[u64], tenant: TenantId, capacity: usize) {
        let b = Arc::make_mut(&mut self.blocks);
        for h in chain.iter().rev() {
            b.clock += 1;
            match b.block.entry(*h) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let block = e.get_mut();
                    b.by_stamp.remove(&block.stamp);
                    block.stamp = b.clock;
                    block.add_owner(tenant);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Block {
                        stamp: b.clock,
                        owners: [tenant; OWNERS],
                        n_owners: 1,
                    });
                }
            }
            b.by_stamp.insert(b.clock, *h);
        }
        while b.block.len() > capacity {
            let Some((_, h)) = b.by_stamp.pop_first() else {
                break;
            };
            b.block.remove(&h);
        }
    }

    /// A prompt of `blocks` blocks, `matched` of them here before, went to this lane at `now`;
    /// its uncached blocks take `prefill`, after those sent before.
    pub(super) fn count(&mut self, matched: usize, blocks: usize, now: Time, prefill: Duration) {
        self.sent += blocks as u64;
        self.matched += matched as u64;
        self.prefill_until = self.prefill_until.max(now) + prefill;
    }

    /// How long the server is likely to go on prefilling what was sent to it before `now`.
    pub(crate) fn prefill_backlog(&self, now: Time) -> Duration {
        self.prefill_until.saturating_since(now)
    }

    /// When the server is likely done with the prefills sent to it so far.
    pub(super) fn prefill_end(&self) -> Time {
        self.prefill_until
    }

    /// An attempt whose prefill was expected to end at `mark` ended at `now`: its prefill, and
    /// those sent before it, are done. Ending sooner than expected says the server prefills
    /// faster than the configured rate: what was sent after it moves earlier by as much (a rate
    /// set 100x too slow would otherwise keep every lane looking busy and scatter
    /// conversations).
    pub(super) fn prefilled(&mut self, mark: Time, now: Time) {
        let early = mark.saturating_since(now);
        if !early.is_zero() {
            let until = self.prefill_until.since_epoch().saturating_sub(early);
            self.prefill_until = Time::from_duration(until).max(now);
        }
    }

    /// Blocks sent here, and of them those sent here before.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.sent, self.matched)
    }

    /// Forget everything (the lane's server restarted, or changed model).
    pub(super) fn clear(&mut self) {
        self.blocks = Arc::default();
        self.prefill_until = Time::ZERO;
    }
}

/// What a lane takes from a group under prefix-aware placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pick {
    /// The group's own order: its next request.
    Next,
    /// This request.
    Take(RequestId),
    /// Nothing now: what waits is better served by another lane.
    Leave,
}

impl Scheduler {
    /// Which of `group`'s waiting requests `lane` takes (see the module's docs): going through
    /// the group's next `window` requests in its order, the first whose best lane is this one:
    /// the lane where its first token comes soonest (a slot, the prefills sent there before it,
    /// its own uncached prefill; on a tie, one with a free slot, then the least busy: misses
    /// spread). A request without a prompt is taken as today.
    pub(super) fn pick_for(&self, lane: usize, group: GroupId, now: Time) -> Pick {
        let Some(cfg) = self.cfg.prefix else {
            return Pick::Next;
        };
        let g = self.queues.group(group);
        // A group pinned to a lane (by a balancer, or the caller) has no other lane to go to;
        // a next request without a prompt is taken as it comes (the common case: no choosing).
        if g.key.lane.is_some()
            || !self.queues.next_has_prompt(g, self.turn())
            || self
                .queues
                .oldest_arrival(g)
                .is_some_and(|oldest| now.saturating_since(oldest) > cfg.max_skip)
        {
            return Pick::Next;
        }
        let (model, kind) = (g.key.model, g.key.kind);
        let holders: Vec<usize> = (0..self.lanes.len())
            .filter(|o| {
                *o == lane
                    || (self.lanes[*o].holds(model)
                        && self.lanes[*o].is_closed()
                        && !self.lanes[*o].retired
                        && self.serves_on(*o, model, kind))
            })
            .collect();
        let free = |o: usize| o == lane || self.free_slot(o, model);
        // The group's next one is taken in the group's own way (its turn's bookkeeping).
        let take = |i: usize, id: RequestId| if i == 0 { Pick::Next } else { Pick::Take(id) };
        let candidates = self.queues.candidates(group, self.turn(), cfg.window);
        // Per lane: the requests before this one that wait for it.
        let mut waiting_for = vec![0u32; self.lanes.len()];
        for (i, (id, chain)) in candidates.into_iter().enumerate() {
            let Some(chain) = chain else {
                return take(i, id);
            };
            // Its first token on each lane: once a slot frees there (the requests before it
            // that wait for the same lane take theirs first) and the prefills sent before it
            // are done, the prefill of what the lane's server lacks.
            let first_token = |o: usize| {
                let start = if free(o) && waiting_for[o] == 0 {
                    Duration::ZERO
                } else {
                    self.slot_wait(o, model, now) + self.turn_of(o, model) * waiting_for[o]
                };
                let ix = &self.lanes[o].prefixes;
                let uncached = chain.len() - ix.matched(&chain);
                start.max(ix.prefill_backlog(now)) + cfg.prefill_per_block * uncached as u32
            };
            // The soonest; on a tie, one with a free slot, then the least busy (misses spread).
            let best = holders
                .iter()
                .copied()
                .min_by_key(|o| (first_token(*o), !free(*o), self.lanes[*o].in_flight, *o));
            match best {
                Some(best) if best != lane => waiting_for[best] += 1,
                _ => return take(i, id),
            }
        }
        Pick::Leave
    }

    /// A cache probe: for each lane that may serve `model`, how many leading blocks of `chain` it
    /// was sent: all of them for `tenant` `None` (an operator), else only those `tenant` itself
    /// sent there, so that a probe never tells one tenant what another sent. Nothing changes.
    pub fn prefix_probe(
        &self,
        kind: Kind,
        model: &str,
        chain: &[u64],
        tenant: Option<TenantId>,
    ) -> Vec<(LaneId, usize)> {
        let Some(model) = self.model_id(model) else {
            return Vec::new();
        };
        (0..self.lanes.len())
            .filter(|l| !self.lanes[*l].retired && self.serves_on(*l, model, kind))
            .map(|l| {
                let ix = &self.lanes[l].prefixes;
                let matched = match tenant {
                    None => ix.matched(chain),
                    Some(t) => ix.matched_for(chain, t),
                };
                (LaneId(l), matched)
            })
            .collect()
    }

    /// Of the running request `id`'s prompt blocks, how many its lane was sent before (what its
    /// server likely had cached), and how many it has; `None` without a prompt.
    pub fn prefix_match(&self, id: RequestId) -> Option<(usize, usize)> {
        let r = self.queues.get(id)?;
        Some((r.prefix_matched, r.prefix.as_ref()?.len()))
    }

    /// How long one more request of `model` holds up `lane`: its learned service over its slots.
    fn turn_of(&self, lane: usize, model: ModelId) -> Duration {
        let secs = self
            .expected_service(super::LaneId(lane), model)
            .map_or_else(|| self.lanes[lane].mean_service_secs(), |d| d.as_secs_f64());
        let slots = f64::from(self.cfg.models[model.0].slots(lane).max(1));
        Duration::from_secs_f64(secs / slots)
    }

    /// Whether `lane` could start a request of `model` now.
    fn free_slot(&self, lane: usize, model: ModelId) -> bool {
        let l = &self.lanes[lane];
        l.phase == super::lane::Phase::Ready
            && l.holds(model)
            && l.running_of(model) < self.cfg.models[model.0].slots(lane)
    }

    /// How long until a slot of `model` frees on `lane`: its running requests' mean learned
    /// time left, spread over them.
    fn slot_wait(&self, lane: usize, model: ModelId, now: Time) -> Duration {
        let now = now.saturating_since(Time::ZERO).as_secs_f64();
        let secs = self
            .expected_service(super::LaneId(lane), model)
            .map_or_else(|| self.lanes[lane].mean_service_secs(), |d| d.as_secs_f64());
        self.lanes[lane]
            .running()
            .find(|(m, _, _)| *m == model)
            .map_or(Duration::ZERO, |(_, n, started_sum)| {
                let n = f64::from(n);
                let left = (secs - (now - started_sum / n)).max(0.0);
                Duration::from_secs_f64(left / n)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TenantId = TenantId(1);
    const T2: TenantId = TenantId(2);

    #[test]
    fn a_chain_matches_as_far_as_its_blocks_were_sent() {
        let mut ix = PrefixIndex::default();
        ix.sent(&[1, 2, 3], T1, 100);
        assert_eq!(ix.matched(&[1, 2, 3, 4]), 3);
        assert_eq!(ix.matched(&[1, 2, 9]), 2);
        assert_eq!(ix.matched(&[7, 8, 9]), 0);
    }

    #[test]
    fn the_tails_of_the_least_recent_prompts_leave_first() {
        let mut ix = PrefixIndex::default();
        ix.sent(&[1, 2, 3], T1, 4);
        ix.sent(&[10, 11], T1, 4);
        // Five blocks for four places: the first prompt's last block left.
        assert_eq!(ix.matched(&[1, 2, 3]), 2);
        assert_eq!(ix.matched(&[10, 11]), 2);
        // A shared beginning sent again is recent again.
        ix.sent(&[1, 20], T1, 4);
        assert_eq!(ix.matched(&[1, 2]), 1, "{ix:?}");
        assert_eq!(ix.matched(&[1, 20]), 2);
    }

    #[test]
    fn the_prefill_backlog_runs_one_prompt_after_another_and_an_early_end_shortens_it() {
        let ms = Duration::from_millis;
        let at = Time::from_millis;
        let mut ix = PrefixIndex::default();
        ix.count(0, 10, at(1_000), ms(400));
        let first = ix.prefill_end();
        ix.count(0, 10, at(1_100), ms(400));
        assert_eq!(
            ix.prefill_backlog(at(1_100)),
            ms(700),
            "after the first's 300 ms left"
        );
        // The first attempt ended at 1.2 s, not 1.4: the server is faster than assumed, and
        // the second's prefill moves earlier by as much.
        ix.prefilled(first, at(1_200));
        assert_eq!(ix.prefill_backlog(at(1_200)), ms(400));
        // An attempt that ends late says nothing.
        ix.prefilled(at(1_000), at(1_300));
        assert_eq!(ix.prefill_backlog(at(1_300)), ms(300));
        ix.clear();
        assert_eq!(ix.prefill_backlog(at(1_300)), Duration::ZERO);
    }

    #[test]
    fn a_tenant_is_shown_only_the_blocks_it_sent_itself() {
        let mut ix = PrefixIndex::default();
        ix.sent(&[1, 2, 3], T1, 100);
        ix.sent(&[1, 2, 9], T2, 100);
        // Placement sees everything a server holds.
        assert_eq!(ix.matched(&[1, 2, 3]), 3);
        // A probe shows each tenant its own: T2 learns nothing of block 3, which only T1 sent,
        // and T1's view of what it sent does not change because T2 sent some of it too.
        assert_eq!(ix.matched_for(&[1, 2, 3], T2), 2);
        assert_eq!(ix.matched_for(&[1, 2, 9], T1), 2);
        assert_eq!(ix.matched_for(&[1, 2, 3], T1), 3);
        assert_eq!(ix.matched_for(&[1, 2, 3], TenantId(3)), 0);
    }

    #[test]
    fn a_block_sent_by_many_tenants_is_shown_to_the_first_ones_only() {
        let mut ix = PrefixIndex::default();
        for t in 1..=(OWNERS as u32 + 1) {
            ix.sent(&[7], TenantId(t), 100);
        }
        assert_eq!(ix.matched_for(&[7], TenantId(1)), 1);
        assert_eq!(ix.matched_for(&[7], TenantId(OWNERS as u32)), 1);
        // Under-reported, never over-reported.
        assert_eq!(ix.matched_for(&[7], TenantId(OWNERS as u32 + 1)), 0);
    }
}
