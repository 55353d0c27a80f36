//! `im-service`: what im does for a request, whatever transport carried it.
//!
//! Every frontend (HTTP, MCP; later WebSocket and the job runner) turns its input into a typed,
//! validated [`Call`] ([`Call::chat`] from a [`ChatInput`], [`Call::image`] from [`ImageParams`])
//! and runs it with [`Service::run`] as a [`Caller`] (its key, tenant and request id), getting an
//! `im_engine::Completion` or a [`ServiceError`]. One error table ([`ErrorType`]) gives every
//! cause its stable type and status for every frontend.
//!
//! This crate knows no transport: no HTTP types, no JSON-RPC. It never talks to an upstream
//! except through the engine.

pub mod api;
mod auth;
mod cache;
mod call;
mod discovery;
mod done;
mod error;
mod models;
mod registry;
mod service;
mod tenancy;

/// A concurrent map keyed the fast way (the workspace's `foldhash`): the maps a request touches.
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

pub use api::{Answer, Request, Route};
pub use auth::{
    Caller, KeyId, KeySpec, Keys, Principal, Scope, TenantId, forbidden, revoked, unauthorized,
};
pub use cache::CacheSettings;
pub use call::{
    Call, ChatInput, ChatKind, CompletionInput, DEFAULT_MAX_CHOICES, DEFAULT_MAX_TOKENS,
    EmbeddingInput, ImageParams, InputLimits, MAX_RERANK_DOCUMENTS, MAX_SPEECH_CHARS, ModelBounds,
    RerankInput, SpeechInput, TRANSCRIPTION_FORMATS, TranscriptionInput, image_file,
};
pub use discovery::{Discovery, Lookup};
pub use done::{ChunkStream, Done, Figures, Reply, StreamItem};
pub use error::{ErrorType, ServiceError};
pub use im_engine::{Progress, TRACE_TARGET, truncate};
pub use inference_queue::Kind;
pub use registry::{MAX_TEXT_CHARS, Registry, RegistryEntry, TaskAnswer, Template};
pub use service::{PromptProbe, Relayed, Service, ServiceSettings};
pub use tenancy::{TenantPolicy, TenantSpec, quota};
