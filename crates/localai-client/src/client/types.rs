//! The request and response types of the client, and what discovery learns (models, slots).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;

use crate::error::ClientError;

/// A chat request: the conversation as compact [`Message`](crate::Message)s (role and content, content a text or
/// a list of parts); images in any common form are normalised for LocalAI.
#[derive(Clone, Debug, Serialize)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<crate::Message>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Token limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Other OpenAI fields passed through as they are (`top_p`, `stop`, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// An answer passed through as JSON: parsed, and its bytes as they came.
#[derive(Clone, Debug)]
pub struct JsonResponse {
    /// The body: parsed when read.
    pub raw: crate::JsonBody,
    /// The same body's bytes, to pass on unchanged.
    pub body: Bytes,
}

/// An answer passed through as bytes with its content type (speech audio, a transcription in the
/// format asked for).
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The upstream's `Content-Type` (`application/octet-stream` when it sent none).
    pub content_type: String,
    /// The body as it came.
    pub body: Bytes,
}

/// An upstream answer relayed whatever its status (LocalAI's management routes).
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// The upstream's status.
    pub status: u16,
    /// Its `Content-Type` (`application/octet-stream` when it sent none).
    pub content_type: String,
    /// Its body (at most the client's `max_body`).
    pub body: Bytes,
}

/// A multipart upload (OpenAI's transcription form): text fields and one file.
#[derive(Clone, Debug, Default)]
pub struct Upload {
    /// Text fields, in order (`model` among them).
    pub fields: Vec<(String, String)>,
    /// The file field's name (`file`).
    pub file_field: String,
    /// The file name sent.
    pub file_name: String,
    /// The file's content type.
    pub file_type: String,
    /// The file's bytes.
    pub file: Bytes,
}

impl Upload {
    /// A text field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn form(&self) -> Result<reqwest::multipart::Form, ClientError> {
        let mut form = reqwest::multipart::Form::new();
        for (n, v) in &self.fields {
            form = form.text(n.clone(), v.clone());
        }
        let part = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::from(self.file.clone()),
            self.file.len() as u64,
        )
        .file_name(self.file_name.clone())
        .mime_str(&self.file_type)
        .map_err(|e| ClientError::Protocol(format!("file content type: {e}")))?;
        Ok(form.part(self.file_field.clone(), part))
    }
}

/// A completed chat: LocalAI's OpenAI-shaped body.
#[derive(Clone, Debug)]
pub struct ChatResponse {
    /// The body as LocalAI sent it (`chat.completion`): parsed when read.
    pub raw: crate::JsonBody,
    /// The same body's bytes, to pass on unchanged.
    pub body: Bytes,
}

impl ChatResponse {
    /// The answer `raw`.
    pub fn new(raw: crate::JsonBody) -> ChatResponse {
        ChatResponse {
            body: raw.bytes().clone(),
            raw,
        }
    }

    /// The answer's text (`choices[0].message.content`); empty when it has none (an answer
    /// of tool calls). Read from the body when asked.
    pub fn content(&self) -> String {
        self.raw.chat_text()
    }
}

/// One streamed chunk.
#[derive(Clone, Debug)]
pub struct ChatChunk {
    /// The chunk as LocalAI sent it (`chat.completion.chunk`).
    pub raw: Value,
    /// `choices[0].delta.content`, or empty.
    pub delta: String,
    /// `choices[0].finish_reason`, when set.
    pub finish_reason: Option<String>,
}

/// A stream of chunks; ends after `[DONE]`, or with one error item.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, ClientError>> + Send>>;

/// An image generation (txt2img) or edit (img2img, when `file` is set).
#[derive(Clone, Debug, Default)]
pub struct ImageRequest {
    /// Model name.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// Folded into the prompt as `positive|negative`, as LocalAI expects.
    pub negative_prompt: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Diffusion steps.
    pub steps: Option<u32>,
    /// Seed; random (-1) when absent.
    pub seed: Option<i64>,
    /// Images to generate.
    pub n: Option<u32>,
    /// img2img source: base64, with or without a `data:` prefix (it is sent without).
    pub file: Option<Bytes>,
}

/// Generated images.
#[derive(Clone, Debug)]
pub struct ImagesResponse {
    /// `created` as LocalAI sent it.
    pub created: u64,
    /// Each image as base64 PNG.
    pub images: Vec<String>,
}

/// One model as an upstream lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelInfo {
    /// Its name.
    pub id: String,
    /// `loaded`, `loading`, `unloaded` (llama.cpp's router), when reported.
    pub status: Option<String>,
    /// Input modalities (`text`, `image`, `audio`), when reported.
    pub input: Vec<String>,
    /// Output modalities (`text`, `image`, `audio`, `embedding`), when reported.
    pub output: Vec<String>,
    /// The size of its weights in bytes, where the server reports it: llama.cpp's `llama-server`
    /// with one model lists `meta.size` (its router and LocalAI do not).
    pub size_bytes: Option<u64>,
    /// What LocalAI says the model can do (`chat`, `vision`, `image`, `embeddings`, `rerank`,
    /// `tts`, `transcript`, ...) in `/v1/models/capabilities`; empty elsewhere.
    pub capabilities: Vec<String>,
}

impl ModelInfo {
    pub(super) fn from_json(m: &Value) -> Option<ModelInfo> {
        let id = m.get("id").and_then(Value::as_str)?.to_owned();
        let status = match m.get("status") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(o) => o.get("value").and_then(Value::as_str).map(str::to_owned),
            None => None,
        };
        let list = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        // llama.cpp's `modalities` or `architecture`, or LocalAI's fields at the top level.
        let modalities = m
            .get("modalities")
            .or_else(|| m.get("architecture"))
            .unwrap_or(m);
        let input = list(
            modalities
                .get("input")
                .or_else(|| modalities.get("input_modalities")),
        );
        let output = list(
            modalities
                .get("output")
                .or_else(|| modalities.get("output_modalities")),
        );
        let capabilities = list(m.get("capabilities"));
        let size_bytes = m
            .get("meta")
            .and_then(|meta| meta.get("size"))
            .and_then(Value::as_u64)
            .filter(|b| *b > 0);
        Some(ModelInfo {
            id,
            status,
            input,
            output,
            size_bytes,
            capabilities,
        })
    }
}

/// What llama.cpp's `/props` says about a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Props {
    /// Parallel slots (`total_slots`), when reported.
    pub slots: Option<u32>,
    /// Whether it takes images (`modalities.vision`).
    pub vision: bool,
}

impl Props {
    pub(super) fn from_json(v: &Value) -> Props {
        Props {
            slots: v
                .get("total_slots")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            vision: v
                .pointer("/modalities/vision")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}
