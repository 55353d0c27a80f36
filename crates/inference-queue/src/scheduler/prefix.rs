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
//! group would serve, the one it holds most of compared with the other lanes that hold the model
//! ([`Scheduler::pick_for`]): conversations return to their lane, and what is cached nowhere
//! goes to whichever lane is free (a miss is spread by the lanes' own pull, never sent to one
//! replica). It is work-conserving: a free lane always takes something, so no lane idles while
//! another's queue grows. Once the group's oldest waiter has waited `prefix.max_skip`, the order
//! is the group's own: the starvation bound is untouched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::Scheduler;
use super::queues::GroupId;
use crate::types::{RequestId, Time};

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
}

impl Default for PrefixConfig {
    fn default() -> PrefixConfig {
        PrefixConfig {
            window: 8,
            max_skip: Duration::from_secs(10),
            blocks_per_lane: 16_384,
        }
    }
}

/// The blocks recently sent to one lane, least recently used out first.
#[derive(Debug, Default)]
pub(super) struct PrefixIndex {
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixIndex {
    /// How many leading blocks of `chain` are here.
    pub(super) fn matched(&self, chain: &[u64]) -> usize {
        chain
            .iter()
            .take_while(|h| self.stamp_of.contains_key(h))
            .count()
    }

    /// `chain` was sent here: its blocks become the most recently used (its first block the
    /// newest, so that its tail leaves first), the oldest leave beyond `capacity` blocks.
    pub(super) fn sent(&mut self, chain: &[u64], capacity: usize) {
        for h in chain.iter().rev() {
            self.clock += 1;
            if let Some(old) = self.stamp_of.insert(*h, self.clock) {
                self.by_stamp.remove(&old);
            }
            self.by_stamp.insert(self.clock, *h);
        }
        while self.stamp_of.len() > capacity {
            let Some((_, h)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamp_of.remove(&h);
        }
    }

    /// Forget everything (the lane's server restarted, or changed model).
    pub(super) fn clear(&mut self) {
        self.stamp_of.clear();
        self.by_stamp.clear();
    }
}

impl Scheduler {
    /// Which of `group`'s next requests `lane` takes: the group's next one, unless prefix
    /// placement is on and, within the window, another waiting request has more of its prompt
    /// cached here than elsewhere (see the module's docs).
    pub(super) fn pick_for(&self, lane: usize, group: GroupId, now: Time) -> Option<RequestId> {
        let cfg = self.cfg.prefix?;
        let g = self.queues.group(group);
        if self
            .queues
            .oldest_arrival(g)
            .is_some_and(|oldest| now.saturating_since(oldest) > cfg.max_skip)
        {
            return None;
        }
        let model = g.key.model;
        let others: Vec<usize> = (0..self.lanes.len())
            .filter(|o| *o != lane && self.lanes[*o].holds(model) && self.lanes[*o].is_closed())
            .collect();
        let gain = |chain: &[u64]| {
            let here = self.lanes[lane].prefixes.matched(chain) as i64;
            let elsewhere = others
                .iter()
                .map(|o| self.lanes[*o].prefixes.matched(chain))
                .max()
                .unwrap_or(0) as i64;
            here - elsewhere.max(0)
        };
        let candidates = self.queues.candidates(group, self.turn(), cfg.window);
        let mut best: Option<(i64, RequestId)> = None;
        for (id, chain) in &candidates {
            let score = chain.as_deref().map_or(0, gain);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, *id));
            }
        }
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_matches_as_far_as_its_blocks_were_sent() {
        let mut ix = PrefixIndex::default();
        ix.sent(&[1, 2, 3], 100);
        assert_eq!(ix.matched(&[1, 2, 3, 4]), 3);
        assert_eq!(ix.matched(&[1, 2, 9]), 2);
        assert_eq!(ix.matched(&[7, 8, 9]), 0);
    }

    #[test]
    fn the_tails_of_the_least_recent_prompts_leave_first() {
        let mut ix = PrefixIndex::default();
        ix.sent(&[1, 2, 3], 4);
        ix.sent(&[10, 11], 4);
        // Five blocks for four places: the first prompt's last block left.
        assert_eq!(ix.matched(&[1, 2, 3]), 2);
        assert_eq!(ix.matched(&[10, 11]), 2);
        // A shared beginning sent again is recent again.
        ix.sent(&[1, 20], 4);
        assert_eq!(ix.matched(&[1, 2]), 1, "{ix:?}");
        assert_eq!(ix.matched(&[1, 20]), 2);
    }
}
