//! The state machine: [`Scheduler`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::rng::Rng;
use crate::status::{BreakerState, Counters, GroupStatus, LaneStatus, Status};
use crate::types::{Kind, LaneId, ModelId, RequestId, Time};

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
}

/// The answer to [`Scheduler::submit`].
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
    /// Intake is stopped.
    ShuttingDown,
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
    /// The id was unknown or not in flight; counted in [`Counters::ignored`].
    Ignored,
}

/// The answer to [`Scheduler::cancel`].
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
}

/// The core's decisions, drained with [`Scheduler::poll_event`].
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
    /// Ask the lane's upstream to unload `model`, then call [`Scheduler::lifecycle_done`].
    Unload {
        /// The lane.
        lane: LaneId,
        /// The model to unload.
        model: ModelId,
    },
    /// Ask the lane's upstream to load `model`, then call [`Scheduler::lifecycle_done`].
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

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<RequestId, V, BuildHasherDefault<IdHasher>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqState {
    Queued,
    Backoff { until: Time },
    InFlight { lane: usize },
    CancelledInFlight { lane: usize },
}

#[derive(Debug)]
struct Req {
    group: usize,
    bytes: u64,
    arrival: Time,
    deadline: Time,
    attempts: u32,
    state: ReqState,
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    /// Waiting ids, oldest first. May hold tombstones (ids no longer queued) except at the front.
    queue: VecDeque<RequestId>,
    depth: usize,
    in_flight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ready,
    Unloading { next: usize },
    WarmingUp { next: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Time },
    HalfOpen { probe: Option<RequestId> },
}

#[derive(Debug)]
struct Lane {
    name: String,
    active: Option<usize>,
    loaded: Option<ModelId>,
    in_flight: u32,
    in_flight_model: Option<ModelId>,
    phase: Phase,
    activated_at: Time,
    batch: u32,
    drained: bool,
    breaker: Breaker,
}

/// The scheduler core: a pure state machine. See the crate docs for the driving loop.
///
/// Method groups:
/// - **inputs** (each takes `now`): [`submit`](Self::submit), [`cancel`](Self::cancel),
///   [`complete`](Self::complete), [`lifecycle_done`](Self::lifecycle_done),
///   [`handle_timeout`](Self::handle_timeout), [`shutdown`](Self::shutdown),
///   [`abort_waiting`](Self::abort_waiting);
/// - **outputs**: [`poll_event`](Self::poll_event) (drain after every input),
///   [`poll_timeout`](Self::poll_timeout) (the next wake-up, re-read after every input);
/// - **getters**: [`status`](Self::status), [`counters`](Self::counters), [`models`](Self::models),
///   [`model_id`](Self::model_id), [`models_for`](Self::models_for).
pub struct Scheduler {
    cfg: Config,
    priority: Vec<Kind>,
    now: Time,
    next_id: u64,
    accepting: bool,
    model_index: HashMap<String, ModelId>,
    requests: IdMap<Req>,
    groups: Vec<Group>,
    group_index: HashMap<GroupKey, usize>,
    lanes: Vec<Lane>,
    deadlines: BTreeSet<(Time, RequestId)>,
    retries: BTreeSet<(Time, RequestId)>,
    waiting_total: usize,
    /// Payload bytes held by the requests in the system (waiting or in flight).
    bytes_held: u64,
    waiting_per_kind: [usize; 4],
    events: VecDeque<Event>,
    counters: Counters,
    rng: Rng,
}

impl Scheduler {
    /// A scheduler for `cfg`, or the first invalid field.
    pub fn new(cfg: Config) -> Result<Scheduler, ConfigError> {
        cfg.validate()?;
        let model_index = cfg
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), ModelId(i)))
            .collect();
        let lanes = cfg
            .lanes
            .iter()
            .map(|name| Lane {
                name: name.clone(),
                active: None,
                loaded: None,
                in_flight: 0,
                in_flight_model: None,
                phase: Phase::Ready,
                activated_at: Time::ZERO,
                batch: 0,
                drained: true,
                breaker: Breaker::Closed { failures: 0 },
            })
            .collect();
        Ok(Scheduler {
            priority: cfg.full_priority(),
            rng: Rng::new(cfg.seed),
            cfg,
            now: Time::ZERO,
            next_id: 1,
            accepting: true,
            model_index,
            requests: IdMap::default(),
            groups: Vec::new(),
            group_index: HashMap::new(),
            lanes,
            deadlines: BTreeSet::new(),
            retries: BTreeSet::new(),
            waiting_total: 0,
            bytes_held: 0,
            waiting_per_kind: [0; 4],
            events: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    // ----- getters -----

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The model names, indexed by [`ModelId`].
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.cfg.models.iter().map(|m| m.name.as_str())
    }

    /// The name of a model.
    pub fn model_name(&self, id: ModelId) -> &str {
        &self.cfg.models[id.0].name
    }

    /// The id of a model name.
    pub fn model_id(&self, name: &str) -> Option<ModelId> {
        self.model_index.get(name).copied()
    }

    /// The models that serve `kind`.
    pub fn models_for(&self, kind: Kind) -> Vec<String> {
        self.cfg
            .models
            .iter()
            .filter(|m| m.kinds.contains(&kind))
            .map(|m| m.name.clone())
            .collect()
    }

    /// The lifetime counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests currently waiting (queued or backing off) plus running.
    pub fn in_system(&self) -> usize {
        self.requests.len()
    }

    /// Whether intake is open.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The latest `now` seen.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The key of a request's group, if the request is in the system.
    pub fn group_of(&self, id: RequestId) -> Option<GroupKey> {
        self.requests.get(&id).map(|r| self.groups[r.group].key)
    }

    /// A snapshot of every group and lane, with waits measured at `now`.
    pub fn status(&self, now: Time) -> Status {
        let now = now.max(self.now);
        let groups = self
            .groups
            .iter()
            .map(|g| GroupStatus {
                kind: g.key.kind,
                model: self.model_name(g.key.model).to_owned(),
                lane: g.key.lane.map(|l| l.0),
                depth: g.depth,
                oldest_wait: self.front_arrival(g).map(|a| now.saturating_since(a)),
                in_flight: g.in_flight,
            })
            .collect();
        let lanes = self
            .lanes
            .iter()
            .map(|l| LaneStatus {
                name: l.name.clone(),
                active: l.active.map(|g| {
                    let k = self.groups[g].key;
                    (k.kind, self.model_name(k.model).to_owned())
                }),
                loaded: l.loaded.map(|m| self.model_name(m).to_owned()),
                in_flight: l.in_flight,
                phase: match l.phase {
                    Phase::Ready => "ready",
                    Phase::Unloading { .. } => "unloading",
                    Phase::WarmingUp { .. } => "warming_up",
                },
                breaker: match l.breaker {
                    Breaker::Closed { .. } => BreakerState::Closed,
                    Breaker::Open { until } => BreakerState::Open {
                        remaining: until.saturating_since(now),
                    },
                    Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
                },
            })
            .collect();
        Status {
            groups,
            lanes,
            waiting: self.waiting_total,
            in_flight: self.lanes.iter().map(|l| l.in_flight as usize).sum(),
            accepting: self.accepting,
            counters: self.counters.clone(),
        }
    }

    // ----- outputs -----

    /// The next decision, if any. Drain until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if anything is timed.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.deadlines.first().map(|(t, _)| *t);
        let mut take = |c: Time| t = Some(t.map_or(c, |x| x.min(c)));
        if let Some((r, _)) = self.retries.first() {
            take(*r);
        }
        for l in &self.lanes {
            if let Breaker::Open { until } = l.breaker {
                take(until);
            }
        }
        t
    }

    // ----- inputs -----

    /// Offer a request. Accepted requests leave later through exactly one of: a
    /// [`Resolution`] other than `Retry`/`Ignored`, an [`Event::Expired`], an [`Event::Failed`], or
    /// [`CancelOutcome::Removed`].
    pub fn submit(&mut self, now: Time, req: Submit<'_>) -> Admission {
        self.advance(now);
        let admission = self.admit(req);
        match &admission {
            Admission::Accepted(_) => {
                // A deadline that is already due (zero) expires here, before any dispatch.
                self.advance(now);
                self.pump();
            }
            Admission::Rejected(_) => self.counters.rejected += 1,
        }
        admission
    }

    fn admit(&mut self, req: Submit<'_>) -> Admission {
        if !self.accepting {
            return Admission::Rejected(Rejection::ShuttingDown);
        }
        let Some(model) = self.model_id(req.model) else {
            return Admission::Rejected(Rejection::UnknownModel {
                model: req.model.to_owned(),
                valid: self.models_for(req.kind),
            });
        };
        if !self.cfg.models[model.0].kinds.contains(&req.kind) {
            return Admission::Rejected(Rejection::KindNotServed {
                model: req.model.to_owned(),
                kind: req.kind,
                valid: self.models_for(req.kind),
            });
        }
        if let Some(l) = req.lane
            && l.0 >= self.lanes.len()
        {
            return Admission::Rejected(Rejection::UnknownLane(l.0));
        }
        let retry_after = self.cfg.limits.retry_after_hint;
        if self.waiting_total >= self.cfg.limits.max_queued_total {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Total,
                retry_after,
            });
        }
        let ki = req.kind.index();
        if let Some(limit) = self.cfg.limits.max_queued_per_kind[ki]
            && self.waiting_per_kind[ki] >= limit
        {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Kind(req.kind),
                retry_after,
            });
        }
        if self.bytes_held.saturating_add(req.bytes) > self.cfg.limits.max_bytes_total {
            return Admission::Rejected(Rejection::QueueFull {
                scope: QueueScope::Bytes,
                retry_after,
            });
        }
        let key = GroupKey {
            kind: req.kind,
            model,
            lane: req.lane,
        };
        let group = match self.group_index.get(&key) {
            Some(g) => *g,
            None => {
                self.groups.push(Group {
                    key,
                    queue: VecDeque::new(),
                    depth: 0,
                    in_flight: 0,
                });
                self.group_index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let default = self.cfg.default_deadline[ki];
        let deadline = self.now + req.deadline.map_or(default, |d| d.min(default));
        self.requests.insert(
            id,
            Req {
                group,
                bytes: req.bytes,
                arrival: self.now,
                deadline,
                attempts: 0,
                state: ReqState::Queued,
            },
        );
        self.deadlines.insert((deadline, id));
        self.bytes_held += req.bytes;
        self.groups[group].queue.push_back(id);
        self.groups[group].depth += 1;
        self.waiting_total += 1;
        self.waiting_per_kind[ki] += 1;
        self.counters.accepted += 1;
        Admission::Accepted(id)
    }

    /// The caller of `id` went away.
    pub fn cancel(&mut self, now: Time, id: RequestId) -> CancelOutcome {
        self.advance(now);
        let Some(state) = self.requests.get(&id).map(|r| r.state) else {
            return CancelOutcome::Unknown;
        };
        let outcome = match state {
            ReqState::Queued | ReqState::Backoff { .. } => {
                self.remove_waiting(id);
                self.counters.cancelled += 1;
                CancelOutcome::Removed
            }
            ReqState::InFlight { lane } => {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.state = ReqState::CancelledInFlight { lane };
                }
                CancelOutcome::InFlight
            }
            ReqState::CancelledInFlight { .. } => CancelOutcome::InFlight,
        };
        self.pump();
        outcome
    }

    /// An attempt of `id` ended with `outcome`.
    pub fn complete(&mut self, now: Time, id: RequestId, outcome: Outcome) -> Resolution {
        self.advance(now);
        let Some(req) = self.requests.get(&id) else {
            self.counters.ignored += 1;
            return Resolution::Ignored;
        };
        let (lane, cancelled) = match req.state {
            ReqState::InFlight { lane } => (lane, false),
            ReqState::CancelledInFlight { lane } => (lane, true),
            _ => {
                self.counters.ignored += 1;
                return Resolution::Ignored;
            }
        };
        let group = req.group;
        let attempts = req.attempts;
        let l = &mut self.lanes[lane];
        l.in_flight -= 1;
        if l.in_flight == 0 {
            l.in_flight_model = None;
        }
        self.groups[group].in_flight -= 1;
        self.update_breaker(lane, id, outcome);

        let resolution = match outcome {
            Outcome::Transient { retry_after, .. } if !cancelled => {
                let delay = self.backoff(attempts).max(retry_after.unwrap_or_default());
                let at = self.now + delay;
                let deadline = self.requests.get(&id).map_or(self.now, |r| r.deadline);
                // No retry past the queue deadline: the caller gets the upstream's error now
                // rather than a deadline error later.
                if attempts > self.cfg.retry.max_retries || at >= deadline {
                    self.release(id);
                    self.counters.exhausted += 1;
                    Resolution::Exhausted { attempts }
                } else {
                    let kind = self.groups[group].key.kind;
                    if let Some(r) = self.requests.get_mut(&id) {
                        r.state = ReqState::Backoff { until: at };
                        self.deadlines.insert((r.deadline, id));
                    }
                    self.retries.insert((at, id));
                    self.waiting_total += 1;
                    self.waiting_per_kind[kind.index()] += 1;
                    self.counters.retried += 1;
                    Resolution::Retry {
                        at,
                        attempt: attempts + 1,
                    }
                }
            }
            _ => {
                self.release(id);
                if cancelled || outcome == Outcome::Aborted {
                    self.counters.cancelled += 1;
                } else {
                    self.counters.completed += 1;
                }
                Resolution::Finished
            }
        };
        self.pump();
        resolution
    }

    /// The [`Event::Unload`] or [`Event::WarmUp`] the lane was told to do has ended (either way:
    /// a failed unload or warm-up does not stop the switch; the first request loads the model).
    pub fn lifecycle_done(&mut self, now: Time, lane: LaneId) {
        self.advance(now);
        let Some(l) = self.lanes.get(lane.0) else {
            return;
        };
        match l.phase {
            Phase::Ready => self.counters.ignored += 1,
            Phase::Unloading { next } => {
                if self.cfg.warm_up {
                    let model = self.groups[next].key.model;
                    self.lanes[lane.0].phase = Phase::WarmingUp { next };
                    self.events.push_back(Event::WarmUp { lane, model });
                } else {
                    self.lanes[lane.0].phase = Phase::Ready;
                    self.activate(lane.0, next);
                }
            }
            Phase::WarmingUp { next } => {
                self.lanes[lane.0].phase = Phase::Ready;
                self.activate(lane.0, next);
            }
        }
        self.pump();
    }

    /// Time passed: expire deadlines, wake retries, half-open breakers, dispatch.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        self.pump();
    }

    /// Stop intake: every later [`submit`](Self::submit) is refused with
    /// [`Rejection::ShuttingDown`]. Waiting and running work goes on.
    pub fn shutdown(&mut self, now: Time) {
        self.advance(now);
        self.accepting = false;
    }

    /// Fail every waiting request with `reason` (the end of a shutdown grace period). Running work
    /// is untouched: the driver completes or aborts it.
    pub fn abort_waiting(&mut self, now: Time, reason: FailReason) {
        self.advance(now);
        let ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r.state, ReqState::Queued | ReqState::Backoff { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut ids = ids;
        ids.sort();
        for id in ids {
            self.remove_waiting(id);
            self.counters.failed += 1;
            self.events.push_back(Event::Failed { id, reason });
        }
    }

    // ----- internals -----

    /// Remove `id` from the map and give back its bytes.
    fn release(&mut self, id: RequestId) -> Option<Req> {
        let r = self.requests.remove(&id)?;
        self.bytes_held -= r.bytes;
        Some(r)
    }

    fn advance(&mut self, now: Time) {
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
    fn remove_waiting(&mut self, id: RequestId) {
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
    fn clean_front(g: &mut Group, requests: &IdMap<Req>) {
        while let Some(front) = g.queue.front() {
            match requests.get(front) {
                Some(r) if r.state == ReqState::Queued => break,
                _ => {
                    g.queue.pop_front();
                }
            }
        }
    }

    fn front_arrival(&self, g: &Group) -> Option<Time> {
        g.queue
            .front()
            .and_then(|id| self.requests.get(id))
            .map(|r| r.arrival)
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let r = self.cfg.retry;
        let exp = attempts.saturating_sub(1).min(30);
        let raw = r.base.saturating_mul(1u32 << exp).min(r.cap);
        let keep = 1.0 - r.jitter * self.rng.next_f64();
        raw.mul_f64(keep)
    }

    fn update_breaker(&mut self, lane: usize, id: RequestId, outcome: Outcome) {
        let cfg = self.cfg.breaker;
        let now = self.now;
        let l = &mut self.lanes[lane];
        let before = l.breaker;
        // A failure says something about the lane only when it blames the upstream; one that
        // belongs to a single request (or an abort) leaves the breaker as it is, releasing a
        // half-open probe so that another request can probe.
        let fault = match outcome {
            Outcome::Success => Some(false),
            Outcome::Transient { upstream_fault, .. } | Outcome::Permanent { upstream_fault } => {
                upstream_fault.then_some(true)
            }
            Outcome::Aborted => None,
        };
        l.breaker = match (fault, l.breaker) {
            (None, Breaker::HalfOpen { probe: Some(p) }) if p == id => {
                Breaker::HalfOpen { probe: None }
            }
            (None, b) => b,
            (Some(false), _) => Breaker::Closed { failures: 0 },
            (Some(true), Breaker::Closed { failures }) => {
                if failures + 1 >= cfg.failure_threshold {
                    Breaker::Open {
                        until: now + cfg.cooldown,
                    }
                } else {
                    Breaker::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (Some(true), Breaker::HalfOpen { .. }) => Breaker::Open {
                until: now + cfg.cooldown,
            },
            (Some(true), open @ Breaker::Open { .. }) => open,
        };
        let lane_id = LaneId(lane);
        match (before, l.breaker) {
            (Breaker::Closed { .. } | Breaker::HalfOpen { .. }, Breaker::Open { .. }) => {
                self.counters.breaker_opened += 1;
                self.events
                    .push_back(Event::BreakerOpened { lane: lane_id });
            }
            (Breaker::HalfOpen { .. } | Breaker::Open { .. }, Breaker::Closed { .. }) => {
                self.events
                    .push_back(Event::BreakerClosed { lane: lane_id });
            }
            _ => {}
        }
    }

    fn pump(&mut self) {
        for lane in 0..self.lanes.len() {
            self.pump_lane(lane);
        }
    }

    fn eligible(&self, lane: usize, g: &Group) -> bool {
        g.depth > 0 && g.key.lane.is_none_or(|l| l.0 == lane)
    }

    fn pump_lane(&mut self, lane: usize) {
        loop {
            let l = &mut self.lanes[lane];
            match l.breaker {
                Breaker::Open { until } if self.now < until => return,
                Breaker::Open { .. } => l.breaker = Breaker::HalfOpen { probe: None },
                Breaker::HalfOpen { probe: Some(_) } => return,
                _ => {}
            }
            if l.phase != Phase::Ready {
                return;
            }
            let Some(target) = self.decide(lane) else {
                return;
            };
            let l = &self.lanes[lane];
            let model = self.groups[target].key.model;
            if l.in_flight >= self.cfg.models[model.0].max_in_flight
                && l.in_flight_model == Some(model)
            {
                // No free slot: decide again when one frees, with whatever has arrived by then.
                return;
            }
            if l.active != Some(target) {
                let model = self.groups[target].key.model;
                if l.in_flight > 0 && l.in_flight_model != Some(model) {
                    return; // the switch barrier: wait for the old model's work to finish
                }
                let model_changed = l.loaded != Some(model);
                if model_changed && l.in_flight == 0 {
                    if self.cfg.unload_on_switch
                        && let Some(old) = l.loaded
                    {
                        self.lanes[lane].loaded = None;
                        self.lanes[lane].phase = Phase::Unloading { next: target };
                        self.events.push_back(Event::Unload {
                            lane: LaneId(lane),
                            model: old,
                        });
                        return;
                    }
                    if self.cfg.warm_up {
                        self.lanes[lane].phase = Phase::WarmingUp { next: target };
                        self.events.push_back(Event::WarmUp {
                            lane: LaneId(lane),
                            model,
                        });
                        return;
                    }
                }
                self.activate(lane, target);
            }
            let model = self.groups[target].key.model;
            let l = &self.lanes[lane];
            if l.in_flight >= self.cfg.models[model.0].max_in_flight {
                return;
            }
            self.dispatch_front(lane, target);
        }
    }

    /// Make `group` the lane's active group.
    fn activate(&mut self, lane: usize, group: usize) {
        let now = self.now;
        let key = self.groups[group].key;
        let l = &mut self.lanes[lane];
        let from = l.active.map(|g| self.groups[g].key);
        let model_changed = l.loaded != Some(key.model);
        l.active = Some(group);
        l.loaded = Some(key.model);
        l.activated_at = now;
        l.batch = 0;
        l.drained = false;
        if from != Some(key) {
            self.counters.switches += 1;
            if model_changed {
                self.counters.model_switches += 1;
            }
            self.events.push_back(Event::Switched {
                lane: LaneId(lane),
                from,
                to: key,
                model_changed,
            });
        }
    }

    fn dispatch_front(&mut self, lane: usize, group: usize) {
        let g = &mut self.groups[group];
        let Some(id) = g.queue.pop_front() else {
            return;
        };
        g.depth -= 1;
        g.in_flight += 1;
        let kind = g.key.kind;
        let model = g.key.model;
        let r = self.requests.get_mut(&id).expect("queue fronts are live");
        r.state = ReqState::InFlight { lane };
        r.attempts += 1;
        let attempt = r.attempts;
        let waited = self.now.saturating_since(r.arrival);
        self.deadlines.remove(&(r.deadline, id));
        Self::clean_front(&mut self.groups[group], &self.requests);
        self.waiting_total -= 1;
        self.waiting_per_kind[kind.index()] -= 1;
        let l = &mut self.lanes[lane];
        l.in_flight += 1;
        l.in_flight_model = Some(model);
        l.batch += 1;
        if let Breaker::HalfOpen { probe } = &mut l.breaker {
            *probe = Some(id);
        }
        self.counters.dispatched += 1;
        self.events.push_back(Event::Dispatch {
            id,
            lane: LaneId(lane),
            attempt,
            waited,
        });
    }

    /// The group the lane should dispatch from next, if any has work.
    fn decide(&mut self, lane: usize) -> Option<usize> {
        let active = self.lanes[lane].active;
        if let Some(a) = active
            && self.groups[a].depth > 0
        {
            if self.lanes[lane].drained {
                // The group ran dry and got new work: a fresh activation for the bounds.
                let l = &mut self.lanes[lane];
                l.drained = false;
                l.activated_at = self.now;
                l.batch = 0;
            }
            if self.may_continue(lane, a) {
                return Some(a);
            }
            return self.choose_next(lane, Some(a)).or(Some(a));
        }
        let next = self.choose_next(lane, None);
        if next.is_none() {
            self.lanes[lane].drained = true;
        }
        next
    }

    /// Whether the lane may dispatch another request of its active group `a`: always, unless other
    /// groups wait and a dwell or batch bound is hit. Starvation never preempts the active group;
    /// it decides the choice at the next switch point (SPEC §2.4), so a busy lane keeps its batches.
    fn may_continue(&self, lane: usize, a: usize) -> bool {
        let b = self.cfg.bounds;
        if b == crate::config::Bounds::strict() {
            return true;
        }
        let others_waiting = self
            .groups
            .iter()
            .enumerate()
            .any(|(i, g)| i != a && self.eligible(lane, g));
        if !others_waiting {
            return true;
        }
        let l = &self.lanes[lane];
        if b.max_batch.is_some_and(|m| l.batch >= m) {
            return false;
        }
        if b.max_dwell
            .is_some_and(|d| self.now.saturating_since(l.activated_at) >= d)
        {
            return false;
        }
        true
    }

    /// SPEC §2.3: first a starving group (oldest waiter first), else the highest-priority kind with
    /// work; inside it, the group whose model is loaded, else the oldest waiter.
    fn choose_next(&self, lane: usize, exclude: Option<usize>) -> Option<usize> {
        let candidates = || {
            self.groups
                .iter()
                .enumerate()
                .filter(move |(i, g)| Some(*i) != exclude && self.eligible(lane, g))
                .filter_map(|(i, g)| self.front_arrival(g).map(|f| (i, g, f)))
        };
        if let Some(s) = self.cfg.bounds.starvation_after {
            let starving = candidates()
                .filter(|(_, _, f)| self.now.saturating_since(*f) >= s)
                .min_by_key(|(i, _, f)| (*f, *i));
            if let Some((i, _, _)) = starving {
                return Some(i);
            }
        }
        let loaded = self.lanes[lane].in_flight_model.or(self.lanes[lane].loaded);
        for kind in &self.priority {
            let best = candidates()
                .filter(|(_, g, _)| g.key.kind == *kind)
                .min_by_key(|(i, g, f)| (Some(g.key.model) != loaded, *f, *i));
            if let Some((i, _, _)) = best {
                return Some(i);
            }
        }
        None
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("now", &self.now)
            .field("in_system", &self.requests.len())
            .field("waiting", &self.waiting_total)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}
