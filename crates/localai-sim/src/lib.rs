//! `localai-sim`: a simulated LocalAI for im's tests, benchmarks and demo mode.
//!
//! It speaks the API surface im uses (SPEC §4), with and without `/v1`: chat completions (plain and
//! SSE streaming), text completions, embeddings and rerank (costing time per call and per input,
//! so merging inputs is measurable), speech (`/v1/audio/speech` and `/tts`, a WAV whose length
//! follows the text) and transcription (multipart upload, time per second of audio), image
//! generations (txt2img, img2img with `file`), `/v1/models`, `/system`,
//! `/backend/shutdown`, `/backend/load`, `/readyz`, and LocalAI's error envelope
//! `{"error":{"code":N,"message":"…","type":"…"}}`. Like LocalAI it has no queue: the first
//! request to a model blocks for the model's load time, extra requests block on busy slots, and a
//! memory budget (default: room for one model) makes it evict an idle model to load another. When
//! the resident model is busy, a load waits a bounded time (`lru_wait_ms`) and then goes ahead
//! anyway, counted as an **overcommit**: the thing im exists to prevent.
//!
//! Faults are injected from a seeded generator (500, 503 + `Retry-After`, dropped connection, slow
//! response, an error inside an SSE stream in either LocalAI dialect). Image routes return real PNGs
//! of the requested size, capped at `max_image_side` (default 256) a side. A `time_scale` shrinks
//! every duration (0.001: a 10 s load takes 10 ms; 0: zero latency). `GET /sim/stats` reports loads,
//! evictions, overcommits, peaks, time spent loading and requests per model; `POST /sim/reset`
//! zeroes them.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use localai_sim::{SimConfig, SimServer};
//! let sim = SimServer::start(SimConfig { time_scale: 0.001, ..SimConfig::default() }).await?;
//! println!("LocalAI simulator at {}", sim.url());
//! # Ok(()) }
//! ```
//!
//! It never talks to anything but its own loopback socket and holds no real model.

pub mod audio;
mod config;
mod control;
mod gallery;
pub mod image;
pub mod prompt_cache;
mod retrieval;
mod server;
mod state;
mod structured;

pub use config::{
    ConfigError, Faults, ModelCfg, SimConfig, SimMode, StreamErrorDialect, default_catalogue,
};
pub use server::{SimServer, error, router};
pub use state::{SimState, Stats};
