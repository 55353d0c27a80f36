//! A small driver for tests: submits by name, records events, checks invariants on every event.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use inference_queue::*;

pub fn models() -> Vec<ModelSpec> {
    vec![
        ModelSpec::new("llm", &[Kind::Txt2Txt, Kind::Img2Txt], 2).with_size_mb(4000),
        ModelSpec::new("llm2", &[Kind::Txt2Txt], 1).with_size_mb(3000),
        ModelSpec::new("sd", &[Kind::Txt2Img, Kind::Img2Img], 1).with_size_mb(6000),
        ModelSpec::new("vision", &[Kind::Img2Txt], 1).with_size_mb(2000),
    ]
}

pub fn cfg(bounds: Bounds) -> Config {
    Config {
        bounds,
        models: models(),
        ..Config::default()
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub struct Harness {
    pub core: Scheduler,
    pub now: Time,
    pub events: Vec<Event>,
    /// Every id that left, and how.
    pub left: HashMap<RequestId, String>,
    pub accepted: Vec<RequestId>,
    pub in_flight: HashMap<RequestId, (LaneId, ModelId)>,
    pub info: HashMap<RequestId, (Kind, ModelId, Time)>,
    pub dispatch_order: Vec<RequestId>,
    /// Check "strict never leaves a non-empty group" on every event, right after the input that
    /// produced it (single-lane setups): `(strict, unload_on_switch, warm_up)`.
    pub strict_check: Option<(bool, bool)>,
    /// Payload bytes of the next submissions: 1,000 to 5,000 by turns when set.
    pub payload_bytes: bool,
    /// Whose the next submissions are, and their class.
    pub tenant: TenantId,
    pub class: Class,
    /// Whose each accepted request is, and its class.
    pub lines: HashMap<RequestId, (TenantId, Class)>,
    /// The prompt chain of the next submissions (prefix-aware placement).
    pub prefix: Option<PrefixChain>,
    /// The accepted requests that carried a prompt chain.
    pub prefixed: std::collections::HashSet<RequestId>,
    submitted: u64,
}

impl Harness {
    pub fn new(cfg: Config) -> Harness {
        Harness {
            core: Scheduler::new(cfg).expect("valid config"),
            now: Time::ZERO,
            events: Vec::new(),
            left: HashMap::new(),
            accepted: Vec::new(),
            in_flight: HashMap::new(),
            info: HashMap::new(),
            dispatch_order: Vec::new(),
            strict_check: None,
            payload_bytes: false,
            tenant: TenantId::default(),
            class: Class::default(),
            lines: HashMap::new(),
            prefix: None,
            prefixed: Default::default(),
            submitted: 0,
        }
    }

    /// The lane `id` was dispatched to first, if any.
    pub fn lane_of(&self, id: RequestId) -> Option<usize> {
        self.events.iter().find_map(|e| match e {
            Event::Dispatch { id: d, lane, .. } if *d == id => Some(lane.0),
            _ => None,
        })
    }

    fn leave(&mut self, id: RequestId, how: &str) {
        let prev = self.left.insert(id, how.to_owned());
        assert!(prev.is_none(), "{id} left twice: {prev:?} then {how}");
    }

    /// Drain events, checking the lane invariants on each dispatch and the byte budget.
    pub fn drain(&mut self) {
        let budget = self.core.config().limits.max_bytes_total;
        assert!(self.core.bytes_held() <= budget, "over the byte budget");
        if self.core.in_system() == 0 {
            assert_eq!(self.core.bytes_held(), 0, "bytes held by nobody");
        }
        for l in self.core.status(self.now).lanes {
            if let (Some(used), Some(budget)) = (l.memory_used_mb(), l.memory_mb) {
                assert!(used <= budget, "{} holds {used} MiB of {budget}", l.name);
            }
        }
        while let Some(ev) = self.core.poll_event() {
            if let Event::Unload { lane, model } = &ev {
                assert!(
                    !self.in_flight.values().any(|x| x == &(*lane, *model)),
                    "unloading a model with work in flight on {lane:?}"
                );
            }
            match &ev {
                Event::Dispatch { id, lane, .. } => {
                    let (_, model, _) = self.info[id];
                    let mut busy: HashSet<ModelId> = self
                        .in_flight
                        .values()
                        .filter(|(l, _)| l == lane)
                        .map(|(_, m)| *m)
                        .collect();
                    busy.insert(model);
                    let cfg = self.core.config();
                    match cfg.lanes[lane.0].memory_mb {
                        None => assert_eq!(busy.len(), 1, "two models in flight on {lane:?}"),
                        Some(budget) => {
                            let used: u64 = busy
                                .iter()
                                .map(|m| cfg.models[m.0].size_mb.unwrap_or(budget))
                                .sum();
                            assert!(used <= budget, "models in flight on {lane:?} overcommit it");
                        }
                    }
                    let n = self
                        .in_flight
                        .values()
                        .filter(|(l, m)| l == lane && *m == model)
                        .count();
                    assert!(
                        n < self.core.config().models[model.0].slots(lane.0) as usize,
                        "the model's slots on {lane:?} exceeded for {id}"
                    );
                    self.in_flight.insert(*id, (*lane, model));
                    self.dispatch_order.push(*id);
                }
                Event::Switched {
                    from: Some(from), ..
                } if self.strict_check == Some((false, false)) => {
                    self.assert_empty(from.kind, from.model);
                }
                // With lifecycle calls the decision is the first of Unload/WarmUp; the switch follows.
                Event::Unload { .. } if self.strict_check.is_some() => self.assert_active_empty(),
                Event::WarmUp { .. } if self.strict_check.is_some_and(|(unload, _)| !unload) => {
                    self.assert_active_empty()
                }
                Event::Expired { id, .. } => self.leave(*id, "expired"),
                Event::Failed { id, .. } => self.leave(*id, "failed"),
                _ => {}
            }
            self.events.push(ev);
        }
    }

    fn assert_empty(&self, kind: Kind, model: ModelId) {
        let st = self.core.status(self.now);
        let name = self.core.model_name(model);
        let g = st.groups.iter().find(|g| g.kind == kind && g.model == name);
        assert_eq!(
            g.map(|g| g.depth),
            Some(0),
            "strict left a non-empty group ({kind}, {name})"
        );
    }

    fn assert_active_empty(&self) {
        let st = self.core.status(self.now);
        if let Some((kind, model)) = &st.lanes[0].active {
            let g = st
                .groups
                .iter()
                .find(|g| g.kind == *kind && g.model == *model);
            assert_eq!(
                g.map(|g| g.depth),
                Some(0),
                "strict left a non-empty group ({kind}, {model})"
            );
        }
    }

    pub fn at(&mut self, t_ms: u64) -> &mut Harness {
        let t = Time::from_millis(t_ms);
        // Fire due timers first, like a real driver would.
        while let Some(due) = self.core.poll_timeout() {
            if due > t {
                break;
            }
            self.now = due.max(self.now);
            self.core.handle_timeout(due);
            self.drain();
        }
        self.now = t.max(self.now);
        self
    }

    pub fn submit(&mut self, kind: Kind, model: &str) -> Admission {
        self.submit_with(kind, model, None)
    }

    pub fn submit_with(
        &mut self,
        kind: Kind,
        model: &str,
        deadline: Option<Duration>,
    ) -> Admission {
        let a = self.core.submit(
            self.now,
            Submit {
                kind,
                model,
                lane: None,
                deadline,
                bytes: if self.payload_bytes {
                    (self.submitted % 5 + 1) * 1_000
                } else {
                    0
                },
                tenant: self.tenant,
                class: self.class,
                cost: None,
                prefix: self.prefix.as_ref(),
            },
        );
        self.submitted += 1;
        if let Admission::Accepted(id) = a {
            if self.prefix.is_some() {
                self.prefixed.insert(id);
            }
            self.lines.insert(id, (self.tenant, self.class));
            self.accepted.push(id);
            let m = self.core.model_id(model).expect("accepted model exists");
            self.info.insert(id, (kind, m, self.now));
        }
        self.drain();
        a
    }

    /// Submit pinned to `lane`.
    pub fn submit_on(&mut self, kind: Kind, model: &str, lane: usize) -> Admission {
        let a = self.core.submit(
            self.now,
            Submit {
                lane: Some(LaneId(lane)),
                ..Submit::new(kind, model)
            },
        );
        if let Admission::Accepted(id) = a {
            self.accepted.push(id);
            let m = self.core.model_id(model).expect("accepted model exists");
            self.info.insert(id, (kind, m, self.now));
        }
        self.drain();
        a
    }

    /// Submit pinned to `lane`; its id.
    pub fn id_on(&mut self, kind: Kind, model: &str, lane: usize) -> RequestId {
        match self.submit_on(kind, model, lane) {
            Admission::Accepted(id) => id,
            other => panic!("expected acceptance, got {other:?}"),
        }
    }

    /// The next submissions are `tenant`'s, of `class`.
    pub fn as_tenant(&mut self, tenant: u32, class: Class) -> &mut Self {
        self.tenant = TenantId(tenant);
        self.class = class;
        self
    }

    pub fn id(&mut self, kind: Kind, model: &str) -> RequestId {
        match self.submit(kind, model) {
            Admission::Accepted(id) => id,
            other => panic!("expected acceptance, got {other:?}"),
        }
    }

    pub fn complete(&mut self, id: RequestId, outcome: Outcome) -> Resolution {
        let r = self.core.complete(self.now, id, outcome);
        match r {
            Resolution::Finished => self.leave(id, "finished"),
            Resolution::Exhausted { .. } => self.leave(id, "exhausted"),
            Resolution::Retry { .. } | Resolution::Ignored => {}
        }
        if r != Resolution::Ignored {
            self.in_flight.remove(&id);
        }
        self.drain();
        r
    }

    pub fn cancel(&mut self, id: RequestId) -> CancelOutcome {
        let c = self.core.cancel(self.now, id);
        if c == CancelOutcome::Removed {
            self.leave(id, "cancelled");
        }
        self.drain();
        c
    }

    /// Change models and lanes (a reload), then drain.
    pub fn set_topology(
        &mut self,
        models: &[ModelSpec],
        lanes: &[LaneSpec],
        restarted: &[String],
    ) -> TopologyChange {
        let change = self
            .core
            .set_topology(self.now, models, lanes, restarted)
            .expect("valid topology");
        self.drain();
        change
    }

    pub fn dispatched(&self) -> Vec<RequestId> {
        self.dispatch_order.clone()
    }

    pub fn running(&self) -> HashSet<RequestId> {
        self.in_flight.keys().copied().collect()
    }

    pub fn lifecycle_events(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Unload { model, .. } => {
                    Some(format!("unload {}", self.core.model_name(*model)))
                }
                Event::WarmUp { model, .. } => {
                    Some(format!("warm {}", self.core.model_name(*model)))
                }
                _ => None,
            })
            .collect()
    }
}
