//! The published request schemas of the OpenAI-compatible routes and the shapes they share with
//! the seed routes. Each states exactly what validation enforces (required fields, types, ranges,
//! lengths, enums, whether unknown fields are refused): the schema-driven test in `im-app` checks
//! both ways, schema-valid bodies answered and schema-invalid ones refused. The handlers parse
//! bodies themselves (to pass them on without copies); these types exist for the document.
//!
//! Fields im passes to the upstream without reading are typed "any" (`{}`): im does not check
//! them, the upstream does. They are added to the schemas by [`PassThrough`] from the same lists
//! the handlers accept them by.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};

/// Adds to each request schema the fields its handler passes to the upstream unread, from the
/// handler's own list.
pub struct PassThrough;

impl utoipa::Modify for PassThrough {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let lists: [(&str, &[&str]); 5] = [
            ("ChatCompletionRequest", crate::openai::PASS_THROUGH),
            ("CompletionRequest", crate::openai::COMPLETION_PASS_THROUGH),
            ("EmbeddingRequest", crate::openai::EMBEDDING_PASS_THROUGH),
            ("RerankRequest", crate::media::RERANK_PASS_THROUGH),
            ("SpeechRequest", crate::media::SPEECH_PASS_THROUGH),
        ];
        for (name, fields) in lists {
            if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
                for f in fields {
                    let any = ObjectBuilder::new()
                        .schema_type(SchemaType::AnyValue)
                        .description(Some("Passed to the upstream."));
                    o.properties.insert((*f).to_owned(), any.into());
                }
            }
        }
    }
}

/// The largest image side of the default configuration (`http.max_image_side`).
pub const MAX_IMAGE_SIDE: u32 = 2048;

/// Who speaks.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's answer.
    Tool,
    /// Instructions (OpenAI's newer name).
    Developer,
}

/// Text, or a list of content parts (`{"type":"text","text":…}`,
/// `{"type":"image_url","image_url":{"url":…}}`; images as base64, a data URI or an allowed URL).
pub fn message_content() -> Schema {
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(SchemaType::AnyValue)),
        )
        .description(Some(
            "Text, or a list of parts (`{\"type\":\"text\",\"text\":…}`, `{\"type\":\"image_url\",\"image_url\":{\"url\":…}}`); images as base64, a data URI or an allowed URL.",
        ))
        .into()
}

/// A non-empty string, or a non-empty list of strings (each non-empty when `nonempty_items`) and
/// token ids.
fn text_or_list(description: &str, nonempty_items: bool) -> Schema {
    let text_item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(nonempty_items.then_some(1));
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .item(
            ArrayBuilder::new()
                .items(
                    AnyOfBuilder::new()
                        .item(text_item)
                        .item(ObjectBuilder::new().schema_type(Type::Number)),
                )
                .min_items(Some(1)),
        )
        .description(Some(description))
        .into()
}

/// A completion's prompt.
pub fn prompt_schema() -> Schema {
    text_or_list(
        "A non-empty string, or a non-empty list of strings and token ids",
        false,
    )
}

/// An embedding call's input.
pub fn embedding_input_schema() -> Schema {
    text_or_list(
        "A non-empty string, or a non-empty list of non-empty strings and token ids",
        true,
    )
}

/// The sides im accepts: positive multiples of 8 up to the configured maximum.
fn side_pattern() -> String {
    let sides: Vec<String> = (1..=MAX_IMAGE_SIDE / 8)
        .map(|k| (k * 8).to_string())
        .collect();
    sides.join("|")
}

/// OpenAI's `size`, `"WxH"`: both sides positive multiples of 8 up to the configured maximum.
pub fn size_schema() -> Schema {
    let side = side_pattern();
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(format!("^({side})[xX]({side})$")))
        .examples(["512x512", "256x256", "64x32"])
        .description(Some(
            "\"WxH\", each side a positive multiple of 8 up to the configured maximum (default 512x512)",
        ))
        .into()
}

/// `POST /v1/chat/completions`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    /// A model serving txt2txt, or img2txt when a message carries an image.
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation.
    #[schema(min_items = 1)]
    pub messages: Vec<crate::types::Message>,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(minimum = 0, maximum = 32768)]
    pub max_tokens: Option<u64>,
    /// OpenAI's newer name for the token limit, bounded the same way.
    #[schema(minimum = 0, maximum = 32768)]
    pub max_completion_tokens: Option<u64>,
    /// Choices to generate, 1 to `http.max_choices` (or the model's own bound).
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<u64>,
    /// Stream chunks as server-sent events once dispatched.
    pub stream: Option<bool>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// Accepted and ignored (im always ends a stream with `[DONE]`).
    pub stream_options: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// A model serving txt2txt.
    #[schema(min_length = 1)]
    pub model: String,
    /// What to complete.
    #[schema(schema_with = prompt_schema)]
    pub prompt: Value,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Token limit, at most `http.max_tokens` (or the model's own bound).
    #[schema(minimum = 0, maximum = 32768)]
    pub max_tokens: Option<u64>,
    /// Choices to return, 1 to `http.max_choices` (or the model's own bound).
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<u64>,
    /// Choices generated server-side, bounded as `n`.
    #[schema(minimum = 1, maximum = 8)]
    pub best_of: Option<u64>,
    /// Stream chunks as server-sent events once dispatched.
    pub stream: Option<bool>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// Accepted and ignored.
    pub stream_options: Option<Value>,
}

/// `POST /v1/embeddings`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    /// A model serving embed.
    #[schema(min_length = 1)]
    pub model: String,
    /// What to embed.
    #[schema(schema_with = embedding_input_schema)]
    pub input: Value,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /v1/images/generations`. Other OpenAI fields (`quality`, `style`, `user`) are accepted
/// and ignored.
#[derive(ToSchema)]
pub struct ImageGenerationRequest {
    /// A model serving txt2img (img2img with `file`).
    #[schema(min_length = 1)]
    pub model: String,
    /// What to draw.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// `"WxH"`.
    #[schema(schema_with = size_schema)]
    pub size: Option<String>,
    /// Images, 1 to 4.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<u32>,
    /// Only `b64_json` (im does not host image files).
    #[schema(pattern = "^b64_json$", examples("b64_json"))]
    pub response_format: Option<String>,
    /// The source image for img2img: base64 (PNG, JPEG, WebP or GIF), optionally a data URI.
    #[schema(content_encoding = "base64", content_media_type = "image/png")]
    pub file: Option<String>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Diffusion steps, 1 to 150 (LocalAI's name).
    #[schema(minimum = 1, maximum = 150)]
    pub step: Option<u32>,
    /// Diffusion steps, 1 to 150.
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /v1/rerank` (LocalAI's Jina-style body).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// A model serving rerank.
    #[schema(min_length = 1)]
    pub model: String,
    /// What the documents are ranked against.
    #[schema(min_length = 1)]
    pub query: String,
    /// The documents.
    #[schema(min_items = 1, max_items = 1024)]
    pub documents: Vec<String>,
    /// How many of the best to return.
    #[schema(minimum = 1)]
    pub top_n: Option<u64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /v1/audio/speech`, `POST /tts`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// `POST /v1/audio/transcriptions` (multipart form).
#[derive(ToSchema)]
pub struct TranscriptionForm {
    /// The audio file.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// A model serving stt.
    #[schema(min_length = 1)]
    pub model: String,
    /// The spoken language (ISO-639-1), passed to the upstream.
    pub language: Option<String>,
    /// Text to guide the model, passed to the upstream.
    pub prompt: Option<String>,
    /// `json`, `text`, `srt`, `verbose_json` or `vtt`.
    #[schema(
        pattern = "^(json|text|srt|verbose_json|vtt)$",
        examples("json", "text")
    )]
    pub response_format: Option<String>,
    /// 0 to 1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub temperature: Option<f64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /v1/images/edits` (multipart form), queued as img2img.
#[derive(ToSchema)]
pub struct ImageEditForm {
    /// The image to edit (PNG, JPEG, WebP or GIF).
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// What to make of it.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// A model serving img2img.
    #[schema(min_length = 1)]
    pub model: String,
    /// `"WxH"`.
    #[schema(schema_with = size_schema)]
    pub size: Option<String>,
    /// Images, 1 to 4.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<u32>,
    /// Only `b64_json`.
    #[schema(pattern = "^b64_json$", examples("b64_json"))]
    pub response_format: Option<String>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Diffusion steps, 1 to 150.
    #[schema(minimum = 1, maximum = 150)]
    pub step: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}
