//! Chat and completion bodies: the seeds' `/txt2txt` and `/img2txt`, OpenAI's chat completions
//! and text completions.

use localai_client::MessageInput;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::pass_through;
use crate::api::parse::refuse_unknown;
use crate::call::{Call, ChatInput, ChatKind, CompletionInput, InputLimits};
use crate::error::ServiceError;

/// One chat message.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool` or `developer`.
    #[schema(schema_with = super::message_role)]
    pub role: String,
    /// Text, or a list of parts.
    #[schema(schema_with = super::message_content)]
    pub content: Value,
}

/// `POST /txt2txt`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Txt2TxtRequest {
    /// A model serving txt2txt (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation.
    #[schema(min_items = 1)]
    pub messages: Vec<Message>,
    /// 0.0 to 2.0.
    #[schema(example = 0.7, minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(maximum = 32768)]
    pub max_tokens: Option<u32>,
    /// Stream chunks as server-sent events once dispatched.
    #[serde(default)]
    pub stream: bool,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /img2txt`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Img2TxtRequest {
    /// A model serving img2txt.
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation; at least one message carries an image.
    #[schema(min_items = 1)]
    pub messages: Vec<Message>,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(maximum = 32768)]
    pub max_tokens: Option<u32>,
    /// Queue deadline in milliseconds.
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// The messages for the call, each taken by [`localai_client::Message`]'s rule.
fn inputs(m: Vec<Message>) -> Vec<MessageInput> {
    m.into_iter()
        .map(|m| MessageInput::from(serde_json::json!({"role": m.role, "content": m.content})))
        .collect()
}

impl Txt2TxtRequest {
    /// The call it stands for (txt2txt).
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        let input = ChatInput {
            model: self.model,
            messages: inputs(self.messages),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            stream: self.stream,
            deadline_ms: self.deadline_ms,
            ..ChatInput::default()
        };
        Call::chat(input, ChatKind::Text, limits)
    }
}

impl Img2TxtRequest {
    /// The call it stands for (img2txt, an image required).
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        let input = ChatInput {
            model: self.model,
            messages: inputs(self.messages),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            deadline_ms: self.deadline_ms,
            ..ChatInput::default()
        };
        Call::chat(input, ChatKind::Vision, limits)
    }
}

/// `POST /v1/chat/completions`: txt2txt, or img2txt when a message carries an image. Besides
/// these fields, the sampling fields OpenAI and LocalAI define pass to the upstream unread;
/// any other field is refused by name.
#[derive(Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A model serving txt2txt, or img2txt when a message carries an image.
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation.
    #[schema(value_type = Vec<Message>, min_items = 1)]
    pub messages: Vec<MessageInput>,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 32768)]
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for the token limit, bounded the same way.
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 32768)]
    pub max_completion_tokens: Option<u32>,
    /// Choices to generate, 1 to `http.max_choices` (or the model's own bound).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 8)]
    pub n: Option<u32>,
    /// Stream chunks as server-sent events once dispatched.
    pub stream: Option<bool>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// Accepted and ignored (im always ends a stream with `[DONE]`).
    pub stream_options: Option<Value>,
    /// The fields passed to the upstream unread ([`pass_through::CHAT`]).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// The call it stands for.
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        refuse_unknown(&self.extra, pass_through::CHAT)?;
        let input = ChatInput {
            model: self.model,
            messages: self.messages,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            n: self.n,
            stream: self.stream.unwrap_or(false),
            deadline_ms: self.deadline_ms,
            extra: self.extra,
        };
        Call::chat(input, ChatKind::Detect, limits)
    }
}

/// `POST /v1/completions` (txt2txt), passed to the upstream as it came once validated.
#[derive(Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A model serving txt2txt.
    #[schema(min_length = 1)]
    pub model: String,
    /// What to complete.
    #[schema(schema_with = super::prompt_schema)]
    pub prompt: Value,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 32768)]
    pub max_tokens: Option<u32>,
    /// Choices to return, 1 to `http.max_choices` (or the model's own bound).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 8)]
    pub n: Option<u32>,
    /// Choices generated server-side, bounded as `n`.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 8)]
    pub best_of: Option<u32>,
    /// Stream chunks as server-sent events once dispatched.
    pub stream: Option<bool>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// Accepted and ignored.
    pub stream_options: Option<Value>,
    /// The fields passed to the upstream unread ([`pass_through::COMPLETION`]).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    /// The call it stands for.
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        refuse_unknown(&self.extra, pass_through::COMPLETION)?;
        Call::completion(
            CompletionInput {
                model: self.model,
                prompt: self.prompt,
                temperature: self.temperature,
                max_tokens: self.max_tokens,
                n: self.n,
                best_of: self.best_of,
                stream: self.stream.unwrap_or(false),
                deadline_ms: self.deadline_ms,
                extra: self.extra,
            },
            limits,
        )
    }
}
