//! Dynamic batching of embeddings: concurrent embedding requests for one model (and the same
//! parameters) are merged into one upstream call with an array `input`, up to
//! [`BatchSettings::max_inputs`] inputs or [`BatchSettings::flush`] after the first arrived, and the
//! vectors are split back in order. If a merged call fails, its requests run again alone, so one
//! bad input cannot fail the others.
//!
//! A merged call is one job in the scheduler: it waits in the `embed` queue of its model and
//! takes one slot like any request. Each caller's figures are the merged call's plus its own wait
//! for the batch to close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inference_queue::Kind;
use localai_client::JsonResponse;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::job::{Completion, EngineError, Job, Output, Payload};

/// The upstream route merged calls go to.
const EMBEDDINGS: &str = "/v1/embeddings";

/// How embeddings are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// The most inputs one merged call carries; 1 turns batching off.
    pub max_inputs: usize,
    /// How long a batch stays open for more requests after its first arrived.
    pub flush: Duration,
}

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            max_inputs: 32,
            flush: Duration::from_millis(5),
        }
    }
}

type Reply = oneshot::Sender<Result<Completion, EngineError>>;

/// One waiting request of an open batch.
struct Item {
    job: Job,
    inputs: Vec<Value>,
    arrived: Instant,
    reply: Reply,
}

/// A batch still taking requests.
struct Open {
    generation: u64,
    items: Vec<Item>,
    inputs: usize,
}

/// Submits jobs to the engine, merging embedding jobs that arrive together.
#[derive(Clone)]
pub struct Batcher {
    engine: Engine,
    settings: BatchSettings,
    open: Arc<Mutex<HashMap<String, Open>>>,
    generations: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The answer of a job [`Batcher::submit`] queued.
#[must_use = "dropping it abandons the answer"]
pub enum Waiting<'a> {
    /// Run on its own.
    Alone(crate::engine::Submitted<'a>),
    /// Merged with others: its share of the batch's answer.
    Merged(oneshot::Receiver<Result<Completion, EngineError>>),
}

impl std::future::Future for Waiting<'_> {
    type Output = Result<Completion, EngineError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Waiting::Alone(s) => std::pin::Pin::new(s).poll(cx),
            Waiting::Merged(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(EngineError::ShuttingDown))),
        }
    }
}

impl Batcher {
    /// A batcher in front of `engine`.
    pub fn new(engine: Engine, settings: BatchSettings) -> Batcher {
        Batcher {
            engine,
            settings,
            open: Arc::new(Mutex::new(HashMap::new())),
            generations: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Run `job` (queued at once): merged with others when it is an embedding that can be, else
    /// on its own. Dropping the returned future abandons the answer (a job already merged still
    /// runs with its batch; one on its own is cancelled).
    pub fn submit(&self, job: Job) -> Waiting<'_> {
        let Some((key, inputs)) = self.mergeable(&job) else {
            return Waiting::Alone(self.engine.submit(job));
        };
        let (reply, rx) = oneshot::channel();
        let item = Item {
            job,
            inputs,
            arrived: Instant::now(),
            reply,
        };
        self.enqueue(key, item);
        Waiting::Merged(rx)
    }

    /// The batch key and inputs of a job that can be merged: an embedding whose `input` is a
    /// string or a list of strings with room to spare under `max_inputs`.
    fn mergeable(&self, job: &Job) -> Option<(String, Vec<Value>)> {
        if self.settings.max_inputs <= 1 {
            return None;
        }
        let Payload::Json {
            path: EMBEDDINGS,
            body,
            stream: false,
            kind: Kind::Embed,
        } = &job.payload
        else {
            return None;
        };
        let inputs = match body.get("input")? {
            Value::String(_) => vec![body["input"].clone()],
            Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
            _ => return None,
        };
        if inputs.is_empty() || inputs.len() >= self.settings.max_inputs {
            return None;
        }
        // Requests merge only with others asking for the same model and parameters.
        let rest: Map<String, Value> = body
            .iter()
            .filter(|(k, _)| k.as_str() != "input")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some((Value::Object(rest).to_string(), inputs))
    }

    fn enqueue(&self, key: String, item: Item) {
        let n = item.inputs.len();
        let mut full = Vec::new();
        let mut timer = None;
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            // No room in the open batch: it goes now, this request opens the next.
            if open
                .get(&key)
                .is_some_and(|o| o.inputs + n > self.settings.max_inputs)
                && let Some(o) = open.remove(&key)
            {
                full.push(o.items);
            }
            let o = open.entry(key.clone()).or_insert_with(|| Open {
                generation: self
                    .generations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                items: Vec::new(),
                inputs: 0,
            });
            o.items.push(item);
            o.inputs += n;
            if o.inputs >= self.settings.max_inputs {
                if let Some(o) = open.remove(&key) {
                    full.push(o.items);
                }
            } else if o.items.len() == 1 {
                timer = Some(o.generation);
            }
        }
        for items in full {
            tokio::spawn(self.clone().run(items));
        }
        if let Some(generation) = timer {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.settings.flush).await;
                let items = {
                    let mut open = this.open.lock().unwrap_or_else(|p| p.into_inner());
                    match open.get(&key) {
                        Some(o) if o.generation == generation => open.remove(&key).map(|o| o.items),
                        _ => None,
                    }
                };
                if let Some(items) = items {
                    this.run(items).await;
                }
            });
        }
    }

    /// Run a closed batch: alone when one request is left, else merged, and split back.
    async fn run(self, items: Vec<Item>) {
        // Callers that went away are not run.
        let mut items: Vec<Item> = items.into_iter().filter(|i| !i.reply.is_closed()).collect();
        match items.len() {
            0 => {}
            1 => {
                let item = items.pop().expect("one item");
                self.alone(item).await;
            }
            _ => self.merged(items).await,
        }
    }

    async fn alone(&self, item: Item) {
        let waited = item.arrived.elapsed();
        let result = self.engine.submit(item.job).await.map(|mut c| {
            c.meta.queue_wait += waited;
            c
        });
        let _ = item.reply.send(result);
    }

    async fn merged(self, items: Vec<Item>) {
        let closed = Instant::now();
        let first = &items[0].job;
        let Payload::Json { body, .. } = &first.payload else {
            return;
        };
        let mut body = body.clone();
        let all: Vec<Value> = items
            .iter()
            .flat_map(|i| i.inputs.iter().cloned())
            .collect();
        let total = all.len();
        body.insert("input".into(), Value::Array(all));
        let deadline = items.iter().filter_map(|i| i.job.deadline).min();
        let merged = Job::new(
            format!("{}+{}", first.request_id, items.len() - 1),
            Payload::Json {
                path: EMBEDDINGS,
                body,
                stream: false,
                kind: Kind::Embed,
            },
            deadline,
        );
        match self.engine.submit(merged).await {
            Ok(done) => {
                let Output::Json(j) = &done.output else {
                    return self.each_alone(items).await;
                };
                let Some(parts) = split(&j.raw, &items, total) else {
                    return self.each_alone(items).await;
                };
                for (item, raw) in items.into_iter().zip(parts) {
                    let mut meta = done.meta.clone();
                    meta.request_id = item.job.request_id.clone();
                    meta.queue_wait += closed.saturating_duration_since(item.arrived);
                    let raw = localai_client::JsonBody::from_value(raw);
                    let _ = item.reply.send(Ok(Completion {
                        meta,
                        output: Output::Json(JsonResponse {
                            body: raw.bytes().clone(),
                            raw,
                        }),
                    }));
                }
            }
            // What running alone cannot change is answered to every request of the batch.
            Err(EngineError::ShuttingDown) => {
                for i in items {
                    let _ = i.reply.send(Err(EngineError::ShuttingDown));
                }
            }
            Err(EngineError::QueueFull { scope, retry_after }) => {
                for i in items {
                    let _ = i.reply.send(Err(EngineError::QueueFull {
                        scope: scope.clone(),
                        retry_after,
                    }));
                }
            }
            Err(EngineError::DeadlineExceeded {
                waited,
                attempts,
                last_error,
            }) => {
                for i in items {
                    let _ = i.reply.send(Err(EngineError::DeadlineExceeded {
                        waited,
                        attempts,
                        last_error: last_error.clone(),
                    }));
                }
            }
            // The upstream failed the merged call: each request runs alone, so only a bad input
            // fails, and only its own request.
            Err(_) => self.each_alone(items).await,
        }
    }

    async fn each_alone(&self, items: Vec<Item>) {
        let runs: Vec<_> = items
            .into_iter()
            .map(|i| {
                let this = self.clone();
                tokio::spawn(async move { this.alone(i).await })
            })
            .collect();
        for r in runs {
            let _ = r.await;
        }
    }
}

/// The merged answer split per request, in order: each gets its vectors (indices from 0) and its
/// share of the usage (by inputs). `None` when the answer does not hold one vector per input.
fn split(raw: &Value, items: &[Item], total: usize) -> Option<Vec<Value>> {
    let data = raw.get("data")?.as_array()?;
    if data.len() != total {
        return None;
    }
    let mut ordered: Vec<&Value> = vec![&Value::Null; total];
    for (pos, d) in data.iter().enumerate() {
        let i = d
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| i as usize);
        *ordered.get_mut(i)? = d;
    }
    if ordered.iter().any(|d| d.is_null()) {
        return None;
    }
    let usage = |field: &str| raw.get("usage")?.get(field)?.as_u64();
    let (prompt, all) = (usage("prompt_tokens"), usage("total_tokens"));
    let mut out = Vec::with_capacity(items.len());
    let mut at = 0;
    for item in items {
        let n = item.inputs.len();
        let data: Vec<Value> = ordered[at..at + n]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut d = (*d).clone();
                if let Some(o) = d.as_object_mut() {
                    o.insert("index".into(), i.into());
                }
                d
            })
            .collect();
        at += n;
        let mut part = raw.as_object()?.clone();
        part.insert("data".into(), Value::Array(data));
        let share = |t: Option<u64>| t.map(|t| t * n as u64 / total as u64);
        if prompt.is_some() || all.is_some() {
            let mut u = Map::new();
            if let Some(p) = share(prompt) {
                u.insert("prompt_tokens".into(), p.into());
            }
            if let Some(t) = share(all) {
                u.insert("total_tokens".into(), t.into());
            }
            part.insert("usage".into(), Value::Object(u));
        }
        out.push(Value::Object(part));
    }
    Some(out)
}
