//! `im-engine`: the runtime around the `inference-queue` core.
//!
//! One tokio task (the driver, in quinn's shape) owns the pure [`inference_queue::Scheduler`]. It
//! feeds the core inputs with `now` from [`Clock`], drains its decisions and carries them out:
//! dispatches become [`Backend`] calls, unload and warm-up become LocalAI lifecycle calls, expiries
//! and failures answer their callers with a typed [`EngineError`], retries and the breaker follow the
//! core's resolutions. Frontends hold an [`Engine`]: a cheap `Clone` handle whose
//! [`submit`](Engine::submit) resolves when the request leaves the system; dropping that future
//! cancels the request. A [`Job`]'s payload (a multi-MiB base64 image) is moved in once and shared
//! by `Arc` between attempts, never copied per layer.
//!
//! Every request that enters leaves exactly once: with a [`Completion`] or an [`EngineError`],
//! including on overload, upstream faults, cancellation and [`Engine::shutdown`]. Metrics are
//! recorded here (through `im-metrics`), never in the core.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use im_engine::{Engine, Job, LocalAiBackend, Output, Payload};
//! use inference_queue::{Config, Kind, ModelSpec};
//! use localai_client::{ChatRequest, ClientConfig, LocalAiClient, Message};
//!
//! let client = LocalAiClient::new(ClientConfig::new("http://localhost:8080"))?;
//! let config = Config { models: vec![ModelSpec::new("llama", &[Kind::Txt2Txt], 4)], ..Config::default() };
//! let engine = Engine::start(config, Arc::new(LocalAiBackend::new(vec![client])), im_metrics::Metrics::new())?;
//! let req = ChatRequest { model: "llama".into(), messages: vec![Message::user("hi")],
//!                         temperature: None, max_tokens: None, extra: Default::default() };
//! let job = Job::new("r1", Payload::Chat { req, stream: false, kind: Kind::Txt2Txt }, None);
//! let done = engine.submit(job).await?;
//! if let Output::Chat(c) = done.output { println!("{} (waited {:?})", c.content(), done.meta.queue_wait); }
//! # Ok(()) }
//! ```

mod attempt;
mod backend;
mod batch;
mod clock;
mod driver;
mod engine;
mod job;
mod trace;

pub use attempt::ModelEcho;
pub use backend::{Backend, LocalAiBackend};
pub use batch::{BatchSettings, Batcher, Waiting};
pub use clock::Clock;
pub use engine::{Engine, LaneReadiness, Submitted};
pub use inference_queue::Class;
pub use job::{
    ChunkReceiver, Completion, EngineError, Job, Meta, Output, Payload, Progress, ProgressSink,
};
pub use localai_client::truncate;
pub use trace::TRACE_TARGET;
