//! Prompts in the simulation: chat traces whose prompts share prefixes, and the prompt cache of
//! a simulated chat server.
//!
//! A prompt is a run of [`BLOCK_TOKENS`]-token blocks, given as its [`PrefixChain`] (what im's
//! service computes from a real prompt). Two shapes of trace:
//! - [`PromptShape::Conversations`]: multi-turn chats; each turn re-sends the whole history
//!   (a shared system prompt, then every earlier question and answer) plus a new question.
//! - [`PromptShape::SharedSystemPrompts`]: many tenants, each with a long system prompt of its
//!   own, each request that prompt plus a short question.
//!
//! The server ([`PromptCosts`]) keeps the KV cache of the prompts it served (a capacity in
//! tokens, least recently used out first, a prompt's tail before its head, as llama.cpp's prompt
//! cache does), pays prefill for the uncached tokens only and decode per output token. Prefill
//! is compute-bound: one prefill at a time holds the GPU, the others wait for it; decode is
//! memory-bound: the slots decode side by side. The time to first token is the wait, the load
//! when the request carries one, the wait for the GPU's prefills ahead, and its own.

use std::time::Duration;

use super::TraceItem;
use crate::rng::Rng;
use crate::scheduler::PrefixChain;
use crate::scheduler::prefix::PrefixIndex;
use crate::types::{Kind, Time};

/// Tokens per block of a prompt's chain.
pub const BLOCK_TOKENS: u32 = 16;

/// What a simulated chat server's prompts cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptCosts {
    /// Prefill time per uncached prompt token.
    pub prefill_per_token: Duration,
    /// Decode time per output token.
    pub decode_per_token: Duration,
    /// Tokens its prompt cache holds.
    pub cache_tokens: u64,
    /// An oracle, not a server: one unbounded cache shared by every server, so a prompt is
    /// cached wherever any part of it was ever sent. No fleet has it; what a placement achieves
    /// with it bounds what any placement can gain from caching.
    pub shared: bool,
}

impl PromptCosts {
    /// A llama.cpp server with a GPU: prefill at 4,000 tokens/s, decode at 60 tokens/s per
    /// stream, 64k tokens of prompt cache.
    pub fn llama_server() -> PromptCosts {
        PromptCosts {
            prefill_per_token: Duration::from_micros(250),
            decode_per_token: Duration::from_micros(16_667),
            cache_tokens: 65_536,
            shared: false,
        }
    }

    /// The service time of `p` when `matched` of its blocks are cached: its prefill, and the
    /// whole (prefill and decode).
    pub fn service(&self, p: &Prompt, matched: usize) -> (Duration, Duration) {
        let uncached = (p.chain.len() - matched.min(p.chain.len())) as u32 * BLOCK_TOKENS;
        let prefill = self.prefill_per_token * uncached;
        (prefill, prefill + self.decode_per_token * p.output_tokens)
    }

    /// Its cache's capacity in blocks.
    fn cache_blocks(&self) -> usize {
        if self.shared {
            usize::MAX
        } else {
            (self.cache_tokens / u64::from(BLOCK_TOKENS)) as usize
        }
    }
}

/// A chat request's prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// Its blocks' chain.
    pub chain: PrefixChain,
    /// Tokens it generates.
    pub output_tokens: u32,
}

/// A simulated server's prompt cache.
#[derive(Debug, Default)]
pub(crate) struct PromptCache {
    index: PrefixIndex,
}

impl PromptCache {
    /// Serve `p`: how many of its blocks were cached; it is cached now.
    pub(crate) fn serve(&mut self, p: &Prompt, costs: &PromptCosts) -> usize {
        let matched = self.index.matched(&p.chain);
        self.index.sent(
            &p.chain,
            crate::types::TenantId::default(),
            costs.cache_blocks(),
        );
        matched
    }
}

/// The two shapes of prompt trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptShape {
    /// Multi-turn conversations.
    Conversations,
    /// Many tenants sharing long system prompts.
    SharedSystemPrompts,
}

impl PromptShape {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            PromptShape::Conversations => "multi-turn conversations",
            PromptShape::SharedSystemPrompts => "tenants with long system prompts",
        }
    }
}

/// A prompt trace: chats of model `model` (index into the catalogue) arriving at `rate`
/// requests a second for `duration`.
#[derive(Clone, Copy, Debug)]
pub struct PromptTraceSpec {
    /// Its shape.
    pub shape: PromptShape,
    /// The chat model's index in the catalogue.
    pub model: usize,
    /// Requests per second.
    pub rate: f64,
    /// Length of the arrival window.
    pub duration: Duration,
    /// Seed.
    pub seed: u64,
}

/// Tokens of the system prompt every conversation starts with.
pub const CONVERSATION_SYSTEM_TOKENS: u32 = 1_024;
/// Turns of a conversation.
const TURNS: (u32, u32) = (4, 12);
/// Mean seconds between a conversation's turns.
const THINK_S: f64 = 20.0;
/// Tenants of the shared-system-prompt trace, and their prompts' tokens.
const TENANTS: u32 = 24;
const TENANT_SYSTEM_TOKENS: (f64, f64) = (3_000.0, 6_000.0);

/// The chain of the first `blocks` blocks of the token stream `stream` whose first
/// `shared_blocks` blocks are those of the stream `shared` (a system prompt).
fn chain_of(shared: u64, shared_blocks: u32, stream: u64, blocks: u32) -> PrefixChain {
    let mut h = 0x9E37_79B9_7F4A_7C15_u64;
    (0..blocks)
        .map(|b| {
            let content = if b < shared_blocks {
                mix(shared, u64::from(b))
            } else {
                mix(stream, u64::from(b))
            };
            h = mix(h, content);
            h
        })
        .collect()
}

/// A 64-bit mix of two words (splitmix64's finaliser).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn blocks(tokens: f64) -> u32 {
    (tokens / f64::from(BLOCK_TOKENS)).ceil() as u32
}

impl PromptTraceSpec {
    /// The trace, in arrival order.
    pub fn generate(&self) -> Vec<TraceItem> {
        let mut rng = Rng::new(self.seed);
        let end = self.duration.as_secs_f64();
        let mut out: Vec<(f64, u32, Prompt)> = Vec::new();
        match self.shape {
            PromptShape::Conversations => {
                let mean_turns = f64::from(TURNS.0 + TURNS.1) / 2.0;
                let mut t = 0.0;
                let mut conversation = 0u64;
                loop {
                    t += rng.exp(mean_turns / self.rate);
                    if t >= end {
                        break;
                    }
                    conversation += 1;
                    let turns = TURNS.0 + (rng.next_f64() * f64::from(TURNS.1 - TURNS.0)) as u32;
                    let (mut at, mut tokens) = (t, f64::from(CONVERSATION_SYSTEM_TOKENS));
                    for _ in 0..turns {
                        tokens += rng.range_f64(100.0, 300.0); // the question
                        let output = rng.range_f64(100.0, 250.0) as u32;
                        let chain = chain_of(
                            1,
                            blocks(f64::from(CONVERSATION_SYSTEM_TOKENS)),
                            conversation + 1_000,
                            blocks(tokens),
                        );
                        out.push((
                            at,
                            0,
                            Prompt {
                                chain,
                                output_tokens: output,
                            },
                        ));
                        tokens += f64::from(output); // the answer joins the history
                        at += rng.exp(THINK_S);
                    }
                }
                out.retain(|(at, _, _)| *at < end);
            }
            PromptShape::SharedSystemPrompts => {
                let systems: Vec<f64> = (0..TENANTS)
                    .map(|_| rng.range_f64(TENANT_SYSTEM_TOKENS.0, TENANT_SYSTEM_TOKENS.1))
                    .collect();
                let mut t = 0.0;
                let mut request = 0u64;
                loop {
                    t += rng.exp(1.0 / self.rate);
                    if t >= end {
                        break;
                    }
                    request += 1;
                    // Some tenants are busier than others.
                    let tenant = ((rng.next_f64().powi(2)) * f64::from(TENANTS)) as u32;
                    let system = systems[tenant as usize];
                    let tokens = system + rng.range_f64(50.0, 200.0);
                    let chain = chain_of(
                        u64::from(tenant) + 10,
                        blocks(system).saturating_sub(1),
                        request + 1_000_000,
                        blocks(tokens),
                    );
                    let output = rng.range_f64(50.0, 150.0) as u32;
                    out.push((
                        t,
                        tenant + 1,
                        Prompt {
                            chain,
                            output_tokens: output,
                        },
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.into_iter()
            .map(|(at, tenant, prompt)| TraceItem {
                at: Time::from_duration(Duration::from_secs_f64(at)),
                kind: Kind::Txt2Txt,
                model: self.model,
                service: Duration::ZERO,
                failures: 0,
                tenant,
                class: Default::default(),
                deadline: None,
                prompt: Some(prompt),
            })
            .collect()
    }
}

/// Requests per second one server with `slots` slots sustains on `trace`'s prompts with nothing
/// cached: the lesser of what its slots hold (prefill and decode each) and what its GPU
/// prefills one after another.
pub fn uncached_capacity(trace: &[TraceItem], costs: &PromptCosts, slots: u32) -> f64 {
    let n = trace.len().max(1) as f64;
    let (prefill, whole) = trace
        .iter()
        .filter_map(|i| i.prompt.as_ref())
        .map(|p| costs.service(p, 0))
        .fold((0.0, 0.0), |(a, b), (p, w)| {
            (a + p.as_secs_f64(), b + w.as_secs_f64())
        });
    (f64::from(slots) / (whole / n)).min(n / prefill.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversations_turns_share_their_history() {
        let trace = PromptTraceSpec {
            shape: PromptShape::Conversations,
            model: 0,
            rate: 0.5,
            duration: Duration::from_secs(600),
            seed: 7,
        }
        .generate();
        let prompts: Vec<&Prompt> = trace.iter().filter_map(|i| i.prompt.as_ref()).collect();
        // Every prompt starts with the shared system prompt's blocks.
        let system = blocks(f64::from(CONVERSATION_SYSTEM_TOKENS)) as usize;
        assert!(
            prompts
                .iter()
                .all(|p| p.chain[..system] == prompts[0].chain[..system])
        );
        // Some later prompt extends an earlier one entirely (the next turn of a conversation).
        let extends = prompts.iter().enumerate().any(|(i, a)| {
            prompts[i + 1..]
                .iter()
                .any(|b| b.chain.len() > a.chain.len() && b.chain[..a.chain.len()] == a.chain[..])
        });
        assert!(extends);
    }

    #[test]
    fn the_server_pays_prefill_only_for_what_it_has_not_cached() {
        let costs = PromptCosts::llama_server();
        let mut cache = PromptCache::default();
        let p = Prompt {
            chain: chain_of(1, 10, 2, 20),
            output_tokens: 10,
        };
        assert_eq!(cache.serve(&p, &costs), 0);
        let longer = Prompt {
            chain: chain_of(1, 10, 2, 30),
            output_tokens: 10,
        };
        assert_eq!(cache.serve(&longer, &costs), 20);
        let (prefill, whole) = costs.service(&longer, 20);
        assert_eq!(prefill, costs.prefill_per_token * (10 * BLOCK_TOKENS));
        assert_eq!(whole, prefill + costs.decode_per_token * 10);
    }
}
