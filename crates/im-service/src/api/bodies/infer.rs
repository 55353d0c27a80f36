//! The seeds' two other dialects: `/v1/infer` (`{model, prompt, params}`, a text completion) and
//! `/infer` (`{text, model, version?, parameters?}`, a task model).

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::call::{Call, CompletionInput, InputLimits};
use crate::error::ServiceError;

/// The most stop sequences a `/v1/infer` request may give.
pub const MAX_STOP: usize = 4;

/// `POST /v1/infer`, `POST /v1/infer/stream`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// A model serving txt2txt.
    #[schema(min_length = 1)]
    pub model: String,
    /// The text to continue.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Generation parameters.
    #[serde(default)]
    pub params: Option<InferParams>,
}

/// Generation parameters of `/v1/infer`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferParams {
    /// Tokens to generate, 1 to 4096.
    #[schema(minimum = 1, maximum = 4096)]
    pub max_new_tokens: Option<u32>,
    /// 0.0 to 2.0.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0.0 to 1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Up to four stop sequences.
    #[schema(max_items = 4)]
    pub stop: Option<Vec<String>>,
    /// Seed.
    pub seed: Option<i64>,
    /// Queue deadline in milliseconds (only lowers the configured default).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

impl InferRequest {
    /// The completion call it stands for, streamed when `stream`.
    pub fn into_call(self, stream: bool, limits: &InputLimits) -> Result<Call, ServiceError> {
        let p = self.params.unwrap_or_default();
        if p.max_new_tokens.is_some_and(|n| !(1..=4096).contains(&n)) {
            return Err(ServiceError::invalid(
                "params.max_new_tokens",
                "must be between 1 and 4096",
            ));
        }
        if p.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(ServiceError::invalid(
                "params.top_p",
                "must be between 0.0 and 1.0",
            ));
        }
        if p.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ServiceError::invalid(
                "params.temperature",
                "must be between 0.0 and 2.0",
            ));
        }
        if p.stop.as_ref().is_some_and(|s| s.len() > MAX_STOP) {
            return Err(ServiceError::invalid(
                "params.stop",
                format!("at most {MAX_STOP} stop sequences"),
            ));
        }
        if p.deadline_ms == Some(0) {
            return Err(ServiceError::invalid(
                "params.deadline_ms",
                "must be at least 1 (milliseconds)",
            ));
        }
        let mut extra = Map::new();
        if let Some(t) = p.top_p {
            extra.insert("top_p".into(), t.into());
        }
        if let Some(s) = p.stop {
            extra.insert("stop".into(), s.into());
        }
        if let Some(s) = p.seed {
            extra.insert("seed".into(), s.into());
        }
        Call::completion(
            CompletionInput {
                model: self.model,
                prompt: Value::String(self.prompt),
                temperature: p.temperature,
                max_tokens: p.max_new_tokens,
                stream,
                deadline_ms: p.deadline_ms,
                extra,
                ..CompletionInput::default()
            },
            limits,
        )
        .map_err(|mut e| {
            if e.param.as_deref() == Some("max_tokens") {
                e.param = Some("params.max_new_tokens".into());
            }
            e
        })
    }
}

/// The answer of `/v1/infer`.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct InferResponse {
    /// The request id (also `X-Request-Id`).
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The generated text.
    pub text: String,
    /// Why generation stopped (`stop`, `length`), as the upstream said.
    pub finish_reason: Option<String>,
    /// Token counts, as the upstream reported them.
    #[schema(value_type = Object)]
    pub usage: Value,
    /// Time spent waiting, upstream and in all.
    pub timings: Timings,
}

/// Where a request's time went, in milliseconds.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct Timings {
    /// Waiting in im's queue.
    pub queue_wait_ms: f64,
    /// At the upstream (for a stream: until its first chunk).
    pub processing_ms: f64,
    /// From arrival to the answer (for a stream: to its last event).
    pub total_ms: f64,
}

/// `POST /infer`: one text for one task model.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The input text.
    #[schema(min_length = 1, max_length = 100000)]
    pub text: String,
    /// The task model: `name`, `name:version` or an alias (see `GET /models`).
    #[schema(example = "summarizer:v1")]
    pub model: String,
    /// Its version, when `model` does not carry one (default: the model's default version).
    pub version: Option<String>,
    /// The template's parameters (`max_length`, `min_length`, `num_return_sequences`,
    /// `temperature`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}
