//! `localai-client`: a typed async client for the LocalAI dialect of the OpenAI API.
//!
//! It knows LocalAI's quirks (SPEC §4) so that nothing above it has to:
//! - chat, plain and streaming; a stream ends on `[DONE]` and turns an error inside it into an
//!   error item in both dialects (`data: {"error":…}` from v4.1, an `"Internal error: …"` content
//!   chunk before);
//! - vision: image parts in any common form become `image_url` parts with a data URI
//!   ([`vision`]), since LocalAI silently drops the others;
//! - images: `size` as `WxH`, `step`, `seed` (-1 random), the negative prompt folded in as
//!   `positive|negative`, img2img's `file` as raw base64, always `b64_json`;
//! - discovery and lifecycle: `/v1/models`, `/system`, `/backend/shutdown`, `/backend/load`, `/readyz`;
//! - one [`ClientError`] that classifies every failure as transient, permanent or protocol
//!   ([`ErrorClass`]), with `Retry-After` parsed.
//!
//! It uses reqwest without any TLS stack (LocalAI is plain HTTP on a private network) and never
//! logs bodies, images or keys. It does not retry: retry policy belongs to the scheduler.

mod client;
mod error;
mod json_body;
mod pool;
pub mod sse;
pub mod vision;

pub use client::{
    ChatChunk, ChatRequest, ChatResponse, ChunkStream, ClientConfig, Content, FENCE_HIGHEST,
    FenceHook, Forwarded, HeaderHook, ImageRequest, ImagesResponse, JsonResponse, LocalAiClient,
    MAX_ERROR_BODY, MAX_STREAM_EVENT, Message, MessageInput, ModelInfo, NotAMessage, Props,
    RawResponse, Role, Upload, is_base64, strip_data_uri,
};
pub use error::{
    ClientError, ErrorClass, MAX_MESSAGE_CHARS, MAX_RETRY_AFTER, parse_retry_after, summarize,
    truncate,
};
pub use json_body::JsonBody;
