//! What goes into the core and what comes out of it.

use std::time::Duration;

use crate::types::{Class, Kind, LaneId, ModelId, RequestId, TenantId, Time};

/// A group: the unit that is queued, activated and drained. `lane` pins it to one lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The kind of work.
    pub kind: Kind,
    /// The model.
    pub model: ModelId,
    /// `Some` when the requests of this group may only run on that lane.
    pub lane: Option<LaneId>,
}

/// What a caller asks to queue. The payload stays with the caller: the core only sees this.
#[derive(Clone, Copy, Debug)]
pub struct Submit<'a> {
    /// The kind of work.
    pub kind: Kind,
    /// The upstream model name.
    pub model: &'a str,
    /// Pin the request to one lane.
    pub lane: Option<LaneId>,
    /// A queue deadline; only lowers the kind's default. Zero expires it at once.
    pub deadline: Option<Duration>,
    /// The payload's size in bytes, held until the request leaves (for the byte budget).
    pub bytes: u64,
    /// Whose it is: inside its group, tenants are served by fair share.
    pub tenant: TenantId,
    /// Its priority class inside its group.
    pub class: Class,
    /// What serving it is expected to cost, in the units fair share counts (tokens in and out
    /// where known); `None`: the model's learned service time in seconds, corrected by what it
    /// took.
    pub cost: Option<f64>,
    /// Its prompt's blocks, for prefix-aware placement (`None`: not a prompt, or not known).
    pub prefix: Option<&'a crate::PrefixChain>,
}

impl<'a> Submit<'a> {
    /// A request of `kind` for `model`, every other field at its default: any lane, the kind's
    /// deadline, no payload bytes, the default tenant and class, no cost estimate, no prompt.
    pub fn new(kind: Kind, model: &'a str) -> Submit<'a> {
        Submit {
            kind,
            model,
            lane: None,
            deadline: None,
            bytes: 0,
            tenant: TenantId::default(),
            class: Class::default(),
            cost: None,
            prefix: None,
        }
    }
}

/// The answer to [`Scheduler::submit`](crate::Scheduler::submit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued under this id.
    Accepted(RequestId),
    /// Refused at once; nothing was queued.
    Rejected(Rejection),
}

/// Which queue limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueScope {
    /// The total limit.
    Total,
    /// The per-kind limit.
    Kind(Kind),
    /// The byte budget of payloads held by requests in the system.
    Bytes,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A queue limit is reached; try again after `retry_after`.
    QueueFull {
        /// The limit that was hit.
        scope: QueueScope,
        /// A hint for the caller's `Retry-After`.
        retry_after: Duration,
    },
    /// No such model; `valid` lists the models that serve the requested kind.
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The models that serve the kind.
        valid: Vec<String>,
    },
    /// The model exists but does not serve this kind.
    KindNotServed {
        /// The model asked for.
        model: String,
        /// The kind asked for.
        kind: Kind,
        /// The models that serve the kind.
        valid: Vec<String>,
    },
    /// The lane pin names no lane.
    UnknownLane(usize),
    /// The lane pin names a lane the model may not use or does not fit in.
    LaneCannotHost {
        /// The model asked for.
        model: String,
        /// The lane asked for.
        lane: usize,
    },
    /// The request alone holds more payload bytes than the whole budget: it could never be
    /// admitted, however long the caller waits.
    TooLarge {
        /// Its payload bytes.
        bytes: u64,
        /// The budget (`limits.max_bytes_total`).
        budget: u64,
    },
    /// Intake is stopped.
    ShuttingDown,
    /// Its predicted wait misses its deadline by more than `limits.early_refusal_pct`: it would
    /// wait and expire. Try again after `predicted` (when the work ahead should be done).
    WouldExpire {
        /// The predicted wait.
        predicted: Duration,
        /// Its queue deadline.
        deadline: Duration,
    },
}

/// How an attempt ended, as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered.
    Success,
    /// A failure worth retrying (connection refused or reset, 502/503/504, model loading).
    Transient {
        /// The upstream's `Retry-After`, honoured as a lower bound on the backoff.
        retry_after: Option<Duration>,
        /// Whether it says the lane's upstream is unwell (counts against its breaker). A failure
        /// that belongs to one request leaves the breaker as it is.
        upstream_fault: bool,
    },
    /// A failure that retrying cannot fix (4xx, validation, an error after a stream started).
    Permanent {
        /// Whether it says the lane's upstream is unwell (counts against its breaker).
        upstream_fault: bool,
    },
    /// The driver stopped the attempt because its caller went away.
    Aborted,
}

/// What the core decided about a completed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The request left the system; the driver answers its caller with what it holds.
    Finished,
    /// The request goes back to the head of its group at `at`; keep its payload.
    Retry {
        /// When it becomes dispatchable again.
        at: Time,
        /// The attempt number the retry will be.
        attempt: u32,
    },
    /// Transient failures used every retry (or the next retry would start after the request's
    /// queue deadline); the request left the system.
    Exhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The id was unknown or not in flight; counted in [`Counters::ignored`](crate::Counters::ignored).
    Ignored,
}

/// The answer to [`Scheduler::cancel`](crate::Scheduler::cancel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting; it left the queue and will never be dispatched.
    Removed,
    /// It is running; the driver should abort it and report [`Outcome::Aborted`].
    InFlight,
    /// Unknown or already gone.
    Unknown,
}

/// Why the core failed a request (other than deadline expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Shutdown ended before the request could run.
    ShuttingDown,
    /// Every lane that could serve it refused its kind for its model
    /// ([`Scheduler::refuse_kind`](crate::Scheduler::refuse_kind)).
    KindRefused,
}

/// The core's decisions, drained with [`Scheduler::poll_event`](crate::Scheduler::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start this request on this lane now.
    Dispatch {
        /// The request.
        id: RequestId,
        /// The lane (upstream) to run it on.
        lane: LaneId,
        /// 1 for the first attempt.
        attempt: u32,
        /// Time since it was submitted.
        waited: Duration,
    },
    /// The request's queue deadline passed before dispatch; it left the system.
    Expired {
        /// The request.
        id: RequestId,
        /// How long it waited.
        waited: Duration,
    },
    /// The core gave up on a waiting request; it left the system.
    Failed {
        /// The request.
        id: RequestId,
        /// Why.
        reason: FailReason,
    },
    /// Ask the lane's upstream to unload `model`, then call [`Scheduler::lifecycle_done`](crate::Scheduler::lifecycle_done).
    Unload {
        /// The lane.
        lane: LaneId,
        /// The model to unload.
        model: ModelId,
    },
    /// Ask the lane's upstream to load `model`, then call [`Scheduler::lifecycle_done`](crate::Scheduler::lifecycle_done).
    WarmUp {
        /// The lane.
        lane: LaneId,
        /// The model to load.
        model: ModelId,
    },
    /// The lane's active group changed.
    Switched {
        /// The lane.
        lane: LaneId,
        /// The group it left, if any.
        from: Option<GroupKey>,
        /// The group it serves now.
        to: GroupKey,
        /// Whether the model changed (a load on the upstream).
        model_changed: bool,
    },
    /// The lane's breaker opened: no dispatch until its cooldown ends.
    BreakerOpened {
        /// The lane.
        lane: LaneId,
    },
    /// The lane's breaker closed again.
    BreakerClosed {
        /// The lane.
        lane: LaneId,
    },
}
