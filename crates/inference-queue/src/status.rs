//! Snapshots and counters: what the core can tell about itself.

use std::time::Duration;

use crate::types::Kind;

/// Lifetime counters of one [`crate::Scheduler`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests queued.
    pub accepted: u64,
    /// Requests refused at admission.
    pub rejected: u64,
    /// Attempts started.
    pub dispatched: u64,
    /// Requests that left after an attempt that was not retried (success or permanent failure).
    pub completed: u64,
    /// Requests whose queue deadline passed.
    pub expired: u64,
    /// Requests cancelled by their caller (waiting or in flight).
    pub cancelled: u64,
    /// Requests failed by the core (shutdown).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Requests that used every retry.
    pub exhausted: u64,
    /// Changes of a lane's active group.
    pub switches: u64,
    /// Model loads on lanes (each one a load upstream).
    pub model_switches: u64,
    /// Resident models a lane let go to make room for another.
    pub evictions: u64,
    /// Times a breaker opened.
    pub breaker_opened: u64,
    /// Inputs about unknown or finished requests, ignored.
    pub ignored: u64,
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Dispatching normally.
    Closed,
    /// No dispatch for `remaining`.
    Open {
        /// Time left in the cooldown.
        remaining: Duration,
    },
    /// One probe request decides.
    HalfOpen,
    /// The lane was removed from the configuration: it takes no new work.
    Retired,
}

impl BreakerState {
    /// `closed`, `open`, `half_open` or `retired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Retired => "retired",
        }
    }
}

/// One group in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// Its kind.
    pub kind: Kind,
    /// Its model.
    pub model: String,
    /// The lane it is pinned to, if any.
    pub lane: Option<usize>,
    /// Requests queued (not counting those backing off before a retry).
    pub depth: usize,
    /// How long its oldest queued request has waited.
    pub oldest_wait: Option<Duration>,
    /// Requests running.
    pub in_flight: u32,
}

/// One lane in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneStatus {
    /// Its name.
    pub name: String,
    /// The group it serves.
    pub active: Option<(Kind, String)>,
    /// The models it believes are resident upstream, least recently used first.
    pub resident: Vec<ResidentModel>,
    /// Its memory budget in MiB (`None`: one model at a time).
    pub memory_mb: Option<u64>,
    /// Requests running.
    pub in_flight: u32,
    /// `ready`, `unloading` or `warming_up`.
    pub phase: &'static str,
    /// Its breaker.
    pub breaker: BreakerState,
    /// Prompt blocks sent here (prefix-aware placement), and how many of them had been sent
    /// here before (what its server likely had cached).
    pub prefix_blocks: (u64, u64),
}

impl LaneStatus {
    /// The most recently used resident model.
    pub fn loaded(&self) -> Option<&str> {
        self.resident.last().map(|r| r.model.as_str())
    }

    /// The memory its resident models take, in MiB, when it has a budget.
    pub fn memory_used_mb(&self) -> Option<u64> {
        self.memory_mb
            .map(|_| self.resident.iter().filter_map(|r| r.memory_mb).sum())
    }
}

/// A model resident on a lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidentModel {
    /// Its name.
    pub model: String,
    /// Its requests running on the lane.
    pub in_flight: u32,
    /// What it takes of the lane's budget, when the lane has one.
    pub memory_mb: Option<u64>,
}

/// A snapshot of a [`crate::Scheduler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Every group seen so far.
    pub groups: Vec<GroupStatus>,
    /// Every lane.
    pub lanes: Vec<LaneStatus>,
    /// Requests waiting (queued or backing off).
    pub waiting: usize,
    /// Requests running.
    pub in_flight: usize,
    /// Whether intake is open.
    pub accepting: bool,
    /// The lifetime counters.
    pub counters: Counters,
}
