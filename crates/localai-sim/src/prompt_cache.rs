//! The prompt cache of a llama.cpp-like server: the KV cache of the prompts it served, bounded in
//! tokens, least recently used out first (a prompt's tail before its head). A chat's prompt (each
//! message's role and text, in order) is matched block by block (64 characters, about 16
//! tokens) from its start; only what is not cached is prefilled. Prefill is compute-bound: one
//! prefill at a time holds the GPU (the others wait for it); decode is not modelled here.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// Characters per block.
pub const BLOCK_CHARS: usize = 64;
/// Characters per token.
pub const CHARS_PER_TOKEN: usize = 4;

/// One model's cache.
#[derive(Debug, Default)]
pub struct PromptCache {
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    clock: u64,
}

impl PromptCache {
    /// Serve `text` with room for `capacity_tokens`: how many of its tokens were cached and
    /// reused (none unless `reuse`: a request with `cache_prompt: false`); it is cached now.
    pub fn serve(&mut self, text: &str, capacity_tokens: usize, reuse: bool) -> usize {
        let mut h = DefaultHasher::new();
        let chain: Vec<u64> = text
            .as_bytes()
            .chunks_exact(BLOCK_CHARS)
            .map(|b| {
                b.hash(&mut h);
                h.finish()
            })
            .collect();
        let cached = if reuse {
            chain
                .iter()
                .take_while(|b| self.stamp_of.contains_key(b))
                .count()
        } else {
            0
        };
        for b in chain.iter().rev() {
            self.clock += 1;
            if let Some(old) = self.stamp_of.insert(*b, self.clock) {
                self.by_stamp.remove(&old);
            }
            self.by_stamp.insert(self.clock, *b);
        }
        let capacity = capacity_tokens * CHARS_PER_TOKEN / BLOCK_CHARS;
        while self.stamp_of.len() > capacity {
            let Some((_, b)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamp_of.remove(&b);
        }
        cached * BLOCK_CHARS / CHARS_PER_TOKEN
    }
}

/// A chat's prompt as the server renders it: each message's role and text, in order.
pub fn rendered(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(m["role"].as_str().unwrap_or_default());
        out.push('\n');
        match &m["content"] {
            Value::String(s) => out.push_str(s),
            Value::Array(parts) => {
                for p in parts {
                    out.push_str(p["text"].as_str().unwrap_or_default());
                }
            }
            _ => {}
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_prompt_with_the_same_start_finds_it_cached() {
        let mut c = PromptCache::default();
        let first = "s".repeat(640);
        assert_eq!(c.serve(&first, 10_000, true), 0);
        let next = format!("{first}{}", "q".repeat(128));
        assert_eq!(c.serve(&next, 10_000, true), 640 / CHARS_PER_TOKEN);
        // Too small a cache keeps only the most recent blocks: the first prompt's head is gone.
        let mut small = PromptCache::default();
        small.serve(&first, 32, true);
        small.serve(&"x".repeat(640), 32, true);
        assert_eq!(small.serve(&first, 32, true), 0);
    }
}
