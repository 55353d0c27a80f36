//! Bodies of the newer LocalAI routes with JSON bodies: embeddings, rerank, speech.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::pass_through;
use crate::api::parse::refuse_unknown;
use crate::call::{Call, EmbeddingInput, RerankInput, SpeechInput};
use crate::error::ServiceError;

/// `POST /v1/embeddings` (the `embed` kind), passed to the upstream as it came once validated.
#[derive(Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// A model serving embed.
    #[schema(min_length = 1)]
    pub model: String,
    /// What to embed.
    #[schema(schema_with = super::embedding_input_schema)]
    pub input: Value,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// The fields passed to the upstream unread ([`pass_through::EMBEDDING`]).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl EmbeddingRequest {
    /// The call it stands for.
    pub fn into_call(self) -> Result<Call, ServiceError> {
        refuse_unknown(&self.extra, pass_through::EMBEDDING)?;
        Call::embedding(EmbeddingInput {
            model: self.model,
            input: self.input,
            deadline_ms: self.deadline_ms,
            extra: self.extra,
        })
    }
}

/// `POST /v1/rerank` (LocalAI's Jina-style body).
#[derive(Deserialize, ToSchema)]
pub struct RerankRequest {
    /// A model serving rerank.
    #[schema(min_length = 1)]
    pub model: String,
    /// What the documents are ranked against.
    #[schema(min_length = 1)]
    pub query: String,
    /// The documents.
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 1024)]
    pub documents: Vec<Value>,
    /// How many of the best to return.
    #[schema(minimum = 1)]
    pub top_n: Option<u64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// The fields passed to the upstream unread ([`pass_through::RERANK`]).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl RerankRequest {
    /// The call it stands for.
    pub fn into_call(self) -> Result<Call, ServiceError> {
        refuse_unknown(&self.extra, pass_through::RERANK)?;
        Call::rerank(RerankInput {
            model: self.model,
            query: self.query,
            documents: self.documents,
            top_n: self.top_n,
            deadline_ms: self.deadline_ms,
            extra: self.extra,
        })
    }
}

/// `POST /v1/audio/speech`, `POST /tts`.
#[derive(Deserialize, ToSchema)]
pub struct SpeechRequest {
    /// A model serving tts.
    #[schema(min_length = 1)]
    pub model: String,
    /// The text to speak, 1 to 4096 characters.
    #[schema(min_length = 1, max_length = 4096)]
    pub input: String,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// The fields passed to the upstream unread ([`pass_through::SPEECH`]).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl SpeechRequest {
    /// The call it stands for.
    pub fn into_call(self) -> Result<Call, ServiceError> {
        refuse_unknown(&self.extra, pass_through::SPEECH)?;
        Call::speech(SpeechInput {
            model: self.model,
            input: self.input,
            deadline_ms: self.deadline_ms,
            extra: self.extra,
        })
    }
}
