//! `inference-queue`: the scheduling core of im, as a pure state machine.
//!
//! It decides which queued inference request runs when, so that a GPU box spends its time
//! computing instead of loading and evicting models. It performs **no IO, reads no clock, spawns
//! nothing and draws no global randomness**: every input carries `now`, every decision comes out as
//! a value, and the next wake-up is [`Scheduler::poll_timeout`]. That makes it embeddable in any
//! runtime, testable on a virtual clock, and fast enough to simulate millions of events a second.
//!
//! # The rule
//! Requests queue per *group* `(kind, model)`. Inside a group, interactive requests go before
//! batch ones, then the tenant with the least virtual service (fair share, VTC: the service it
//! received divided by its weight), then the earliest; with one tenant and one class that is
//! first come, first served. Batch work has a bound of its own
//! ([`Bounds::batch_starvation_after`]): once a batch request has waited it, the group starts one
//! overdue batch request ahead of its interactive work, then again at most once per bound, so
//! batch work is delayed, never starved. Each *lane* (one upstream)
//! serves one active group and drains it before switching; it runs up to `max_in_flight` requests
//! of one model at once and never starts a request of another model until the old model's
//! in-flight count is zero (the *switch barrier*). The next group is: a starving group (oldest
//! waiter first), else the highest-priority kind with work, and inside it the group whose model is
//! loaded, else the oldest waiter. [`Bounds`] (`max_dwell`, `max_batch`, `starvation_after`,
//! `batch_starvation_after`) keep anything from starving; [`Bounds::strict`] reproduces "process each queue completely before
//! switching" exactly.
//!
//! # Driving it
//! ```
//! use std::time::Duration;
//! use inference_queue::{Admission, Config, Event, Kind, ModelSpec, Outcome, Resolution,
//!                       Scheduler, Submit, Time};
//!
//! let cfg = Config {
//!     models: vec![ModelSpec::new("llama", &[Kind::Txt2Txt], 2),
//!                  ModelSpec::new("sdxl", &[Kind::Txt2Img, Kind::Img2Img], 1)],
//!     ..Config::default()
//! };
//! let mut core = Scheduler::new(cfg).unwrap();
//! let mut now = Time::ZERO;
//!
//! // Input: a request arrives. The payload stays with you; the core keeps the id.
//! // (`Submit`'s other fields pin a lane, lower the deadline, name the tenant, carry a prompt.)
//! let sub = Submit::new(Kind::Txt2Img, "sdxl");
//! let Admission::Accepted(id) = core.submit(now, sub) else { panic!("refused") };
//!
//! // Output: drain decisions after every input.
//! let mut running = Vec::new();
//! while let Some(ev) = core.poll_event() {
//!     match ev {
//!         Event::Dispatch { id, lane, .. } => running.push((id, lane)), // call the upstream
//!         Event::Expired { .. } | Event::Failed { .. } => {}           // answer with an error
//!         Event::Unload { lane, .. } | Event::WarmUp { lane, .. } => {
//!             core.lifecycle_done(now, lane);                          // after the upstream call
//!         }
//!         _ => {}                                                      // switches, breaker: metrics
//!     }
//! }
//! assert_eq!(running, vec![(id, inference_queue::LaneId(0))]);
//!
//! // Input: the upstream answered 6.5 s later.
//! now += Duration::from_millis(6_500);
//! assert_eq!(core.complete(now, id, Outcome::Success), Resolution::Finished);
//!
//! // Timers: sleep until `poll_timeout()`, then call `handle_timeout(now)`.
//! if let Some(t) = core.poll_timeout() { core.handle_timeout(t); }
//! assert_eq!(core.in_system(), 0);
//! ```
//!
//! # Guarantees (checked by the property and scenario tests in `tests/`)
//! - Every accepted request leaves exactly once: [`Resolution::Finished`] or
//!   [`Resolution::Exhausted`] from [`Scheduler::complete`], [`Event::Expired`], [`Event::Failed`],
//!   or [`CancelOutcome::Removed`].
//! - **Residency.** A lane without a memory budget never has in-flight work of two models. A lane
//!   with one ([`LaneSpec::memory_mb`]) holds models side by side while their sizes fit: at every
//!   step the resident sizes never exceed the budget (a model of unknown size counts as the whole
//!   budget, a model bigger than the lane never goes there), every model with work in flight is
//!   resident, and a model is evicted (or unloaded) only when nothing of it is in flight: when
//!   room is needed from a busy model the lane stops dispatching and waits (the barrier, which
//!   thus applies only when a model must be evicted). In-flight per model and lane never exceeds
//!   its limit. The harness in `tests/common` checks this on every event, and the property tests
//!   run it over budgets of one model up to all of them, 1 to 4 lanes and every routing.
//! - **N lanes.** Each invariant holds per lane. A request is dispatched on one lane at a time; a
//!   retry after a failure on a lane goes to another lane that can start it soon when there is
//!   one; a balancer-placed request waiting on a lane whose breaker opens moves to another lane.
//! - FIFO inside each tenant's line of a class in a group (a retry goes back to the head of its
//!   line); the starvation bound reads a group's oldest waiter, whatever the order inside it.
//! - While tenants stay backlogged, the service each receives divided by its weight stays within
//!   a few requests' cost of every other's (VTC's guarantee; checked by a property test).
//! - Deadlines are honoured to the tick: a request is never dispatched at or after its deadline.
//! - Under [`Bounds::strict`], a lane never leaves a non-empty active group.
//! - The payload bytes held by the requests in the system never exceed
//!   `limits.max_bytes_total` ([`Scheduler::bytes_held`]); they are all given back when the
//!   system is empty.
//! - Only a failure that blames the upstream (`upstream_fault`) moves a lane's breaker towards
//!   open; a failure that belongs to one request leaves it as it is.
//! - **The starvation bound.** Let `S = starvation_after`, `D = max_dwell` and `T` the longest a
//!   request can hold a slot upstream (its service time plus a model load). Starvation never
//!   preempts the active group; it decides the next group at each switch point, and switch points
//!   come at least every `D + T` while others wait (the dwell bound, then the barrier's drain).
//!   With N lanes under `affinity` a starving group is served by the lanes that hold its model.
//!   One with no request running becomes routable on one more lane, the one whose switch costs
//!   least (idle first, then one whose models are held elsewhere too); that lane's switch points
//!   come within `D + T` as above, and an idle lane wakes when a group it left to another lane
//!   starts to starve. One with requests running is being served: its front starts when one of
//!   them frees its slot (within `T`), or, if its lanes leave it at a switch point, it has none
//!   running and the rule before applies; it takes another lane early only if that lane is spare
//!   (idle, its models unused for `S`). With
//!   co-residency a starving group may also evict idle models at once (the ski-rental hold below
//!   does not apply to it). The property test checks the bound for 1 to 3 lanes.
//!   Inside a group two questions are kept apart: which request dispatch serves next
//!   (`GroupQueue::next`) and which has waited longest (`GroupQueue::oldest`). Starvation,
//!   cost-aware loading and wake-ups read only `oldest`; a group starves when its `oldest` has
//!   waited `S`. Today `next` is `oldest` (arrival order, retries back at the head); an order
//!   that changes `next` (fair shares, priority classes, prefix matches) must serve a starving
//!   group's `oldest` first, which is what the theorem below needs of it.
//!   *Theorem:* once the oldest waiting request `R` of a lane (the `oldest` of its group, and the
//!   earliest of all groups' `oldest`) has waited `S`, `R` is dispatched within `2·(D + T) + T`.
//!   *Proof:* the current group stops dispatching within `D` and drains within `T`; at that
//!   switch point the group whose `oldest` has waited longest among the starving is chosen, which
//!   is `R`'s group unless it is the one being left, in which case one more turn (`D + T`) passes
//!   first; a starving group serves its `oldest` first, so `R` starts within one more slot time
//!   `T`.
//!   Every request eventually becomes the oldest waiter, so every wait is bounded by `S` plus that
//!   term per request ahead of it (at most `limits.max_queued_total`), and in practice by far less
//!   (`cargo xtask sim` prints the measured maxima). The property test
//!   `the_oldest_waiter_is_served_within_the_stated_bound` checks the theorem at every step of
//!   random simulated traces between 50 % and 150 % of capacity. Under [`Bounds::strict`] no such
//!   bound exists: a busy high-priority kind starves the others, as the seeds' rule implies.
//!
//! - **Eviction.** On a lane with a budget an idle model is kept at least as long as reloading it
//!   would take since it was last used (the ski-rental rule: never more than twice the cost of
//!   the best choice in hindsight), then the idle models cheapest to lose go first (no work
//!   waiting for them, then the shortest learned load, then the least recently used).
//!
//! Bad input is an outcome, never a panic: an invalid [`Config`] is a [`ConfigError`] naming the
//! field; completing an unknown or finished id is ignored and counted; a `now` earlier than the
//! last one is treated as the last one.

mod config;
mod rng;
mod scheduler;
pub mod sim;
mod status;
mod types;

pub use config::{
    Bounds, BreakerConfig, Config, ConfigError, LaneSpec, Limits, ModelSpec, Policy, RetryPolicy,
    Routing,
};
pub use rng::Rng;
pub use scheduler::{
    Admission, Advice, CancelOutcome, Event, FailReason, GroupKey, LaneOption, LoadOutcome,
    Outcome, QueueScope, Rejection, Resolution, Scheduler, Submit, TopologyChange, UnloadOutcome,
    UnloadRefusal, Waiting, Why,
};
pub use scheduler::{PrefixChain, PrefixConfig};
pub use status::{BreakerState, Counters, GroupStatus, LaneStatus, ResidentModel, Status};
pub use types::{Class, Kind, LaneId, ModelId, ParseKindError, RequestId, TenantId, Time};
