//! Typed, validated calls: what a frontend turns its input into before running it. Validation
//! happens here once, for every frontend, with field-level messages; images are normalised once,
//! at admission, and the call carries its payload once.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use im_engine::{Job, Payload};
use inference_queue::Kind;
use localai_client::vision;
use localai_client::{ChatRequest, ImageRequest, Message, MessageInput};
use serde_json::{Map, Value};

use crate::error::ServiceError;

mod media;
pub mod prompt;

pub use media::{
    MAX_RERANK_DOCUMENTS, MAX_SPEECH_CHARS, RerankInput, SpeechInput, TRANSCRIPTION_FORMATS,
    TranscriptionInput,
};

/// What the service enforces on inputs besides their types.
#[derive(Clone, Debug, PartialEq)]
pub struct InputLimits {
    /// The largest image side accepted, in pixels.
    pub max_image_side: u32,
    /// URL prefixes an image URL may start with (the upstream fetches it); empty: none.
    pub image_url_allowlist: Vec<String>,
    /// The most tokens a chat or completion may ask for (`max_tokens`,
    /// `max_completion_tokens`), unless its model says otherwise.
    pub max_tokens: u32,
    /// The most choices a chat or completion may ask for (`n`, `best_of`), unless its model says
    /// otherwise.
    pub max_choices: u32,
    /// Per-model overrides of the two above.
    pub models: std::collections::BTreeMap<String, ModelBounds>,
}

/// A model's own bounds on what drives its cost (absent: the defaults of [`InputLimits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelBounds {
    /// Its `max_tokens` bound.
    pub max_tokens: Option<u32>,
    /// Its `n` bound.
    pub max_choices: Option<u32>,
}

/// The default bound on `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 32_768;
/// The default bound on `n`.
pub const DEFAULT_MAX_CHOICES: u32 = 8;

impl Default for InputLimits {
    fn default() -> InputLimits {
        InputLimits {
            max_image_side: 2048,
            image_url_allowlist: Vec::new(),
            max_tokens: DEFAULT_MAX_TOKENS,
            max_choices: DEFAULT_MAX_CHOICES,
            models: std::collections::BTreeMap::new(),
        }
    }
}

impl InputLimits {
    fn tokens_for(&self, model: &str) -> u32 {
        self.models
            .get(model)
            .and_then(|b| b.max_tokens)
            .unwrap_or(self.max_tokens)
    }

    fn choices_for(&self, model: &str) -> u32 {
        self.models
            .get(model)
            .and_then(|b| b.max_choices)
            .unwrap_or(self.max_choices)
    }

    /// Check the counts that drive an upstream's cost: `max_tokens`-like fields at most the
    /// model's token bound, `n`-like fields from 1 to its choice bound.
    fn check_counts(
        &self,
        model: &str,
        tokens: &[(&str, Option<u32>)],
        choices: &[(&str, Option<u32>)],
    ) -> Result<(), ServiceError> {
        let max = self.tokens_for(model);
        for (field, v) in tokens {
            if let Some(v) = v
                && *v > max
            {
                return Err(ServiceError::invalid(
                    *field,
                    format!("must be at most {max} for this model, got {v}"),
                ));
            }
        }
        let max = self.choices_for(model);
        for (field, v) in choices {
            if let Some(v) = v
                && !(1..=max).contains(v)
            {
                return Err(ServiceError::invalid(
                    *field,
                    format!("must be between 1 and {max} for this model, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// How a chat's kind is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatKind {
    /// Always txt2txt (the seeds' `/txt2txt`).
    Text,
    /// Always img2txt, and an image is required (the seeds' `/img2txt`).
    Vision,
    /// img2txt when a message carries an image, else txt2txt (OpenAI's chat completions).
    Detect,
}

/// A chat as a frontend received it.
#[derive(Clone, Debug, Default)]
pub struct ChatInput {
    /// The model.
    pub model: String,
    /// OpenAI-shaped messages (`role`, `content`: text or parts), each read or refused by
    /// [`Message`]'s rule; a fault is named with its place when the call is made.
    pub messages: Vec<MessageInput>,
    /// 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Token limit.
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for the token limit, passed on as it came.
    pub max_completion_tokens: Option<u32>,
    /// Choices to generate, passed on as it came.
    pub n: Option<u32>,
    /// Stream chunks once dispatched.
    pub stream: bool,
    /// Queue deadline in milliseconds (only lowers the configured default; at least 1).
    pub deadline_ms: Option<u64>,
    /// Other fields passed to the upstream as they are (already checked by the frontend).
    pub extra: Map<String, Value>,
}

/// A text completion as a frontend received it (OpenAI's `/v1/completions`).
#[derive(Clone, Debug, Default)]
pub struct CompletionInput {
    /// The model.
    pub model: String,
    /// A string, or a list of strings (or of token ids).
    pub prompt: Value,
    /// 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Token limit.
    pub max_tokens: Option<u32>,
    /// Choices to return.
    pub n: Option<u32>,
    /// Choices to generate server-side, the best `n` returned.
    pub best_of: Option<u32>,
    /// Stream chunks once dispatched.
    pub stream: bool,
    /// Queue deadline in milliseconds (only lowers the configured default; at least 1).
    pub deadline_ms: Option<u64>,
    /// Other fields passed to the upstream as they are (already checked by the frontend).
    pub extra: Map<String, Value>,
}

/// Embeddings as a frontend received them (OpenAI's `/v1/embeddings`).
#[derive(Clone, Debug, Default)]
pub struct EmbeddingInput {
    /// The model.
    pub model: String,
    /// A string, or a list of strings (or of token ids).
    pub input: Value,
    /// Queue deadline in milliseconds (only lowers the configured default; at least 1).
    pub deadline_ms: Option<u64>,
    /// Other fields passed to the upstream as they are (already checked by the frontend).
    pub extra: Map<String, Value>,
}

/// The parameters of an image generation or edit (its file, if any, is given to [`Call::image`]).
#[derive(Clone, Debug, Default)]
pub struct ImageParams {
    /// The model.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Pixels: a positive multiple of 8, at most the configured maximum.
    pub width: u32,
    /// Pixels: a positive multiple of 8, at most the configured maximum.
    pub height: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// The seed.
    pub seed: Option<i64>,
    /// Images, 1 to 4.
    pub n: Option<u32>,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
}

impl ImageParams {
    /// Check every field; `size` names the field the frontend took width and height from
    /// (`"size"` for OpenAI's `"WxH"`, else `width` and `height` are named).
    pub fn validate(&self, limits: &InputLimits, size: Option<&str>) -> Result<(), ServiceError> {
        nonempty("model", &self.model)?;
        if self.prompt.is_empty() {
            return Err(ServiceError::invalid("prompt", "must not be empty"));
        }
        side(size.unwrap_or("width"), self.width, limits.max_image_side)?;
        side(size.unwrap_or("height"), self.height, limits.max_image_side)?;
        if let Some(s) = self.steps
            && !(1..=150).contains(&s)
        {
            return Err(ServiceError::invalid(
                "steps",
                format!("must be between 1 and 150, got {s}"),
            ));
        }
        if let Some(n) = self.n
            && !(1..=4).contains(&n)
        {
            return Err(ServiceError::invalid(
                "n",
                format!("must be between 1 and 4, got {n}"),
            ));
        }
        deadline_ms(self.deadline_ms)
    }
}

/// A validated call, ready to run: the payload is held once, its kind and model come from it.
#[derive(Debug)]
pub struct Call {
    payload: Payload,
    deadline: Option<Duration>,
}

impl Call {
    /// A chat: validated (model, messages, temperature, deadline, image URLs), its images
    /// normalised once, its kind decided by `kind`.
    pub fn chat(
        input: ChatInput,
        kind: ChatKind,
        limits: &InputLimits,
    ) -> Result<Call, ServiceError> {
        let ChatInput {
            model,
            messages,
            temperature,
            max_tokens,
            max_completion_tokens,
            n,
            stream,
            deadline_ms: deadline,
            mut extra,
        } = input;
        nonempty("model", &model)?;
        limits.check_counts(
            &model,
            &[
                ("max_tokens", max_tokens),
                ("max_completion_tokens", max_completion_tokens),
            ],
            &[("n", n)],
        )?;
        for (field, v) in [("max_completion_tokens", max_completion_tokens), ("n", n)] {
            if let Some(v) = v {
                extra.insert(field.into(), v.into());
            }
        }
        let mut messages = messages_of(messages)?;
        if let Some(t) = temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ServiceError::invalid(
                "temperature",
                format!("must be between 0.0 and 2.0, got {t}"),
            ));
        }
        deadline_ms(deadline)?;
        image_urls(&messages, &limits.image_url_allowlist)?;
        let has_image = vision::has_image(&messages);
        let kind = match kind {
            ChatKind::Text => Kind::Txt2Txt,
            ChatKind::Vision if !has_image => {
                return Err(ServiceError::invalid(
                    "messages",
                    "img2txt needs an image in the messages (an image_url part, base64 or a data URI)",
                ));
            }
            ChatKind::Vision => Kind::Img2Txt,
            ChatKind::Detect if has_image => Kind::Img2Txt,
            ChatKind::Detect => Kind::Txt2Txt,
        };
        if has_image {
            vision::normalize_in_place(&mut messages);
        }
        let req = ChatRequest {
            model,
            messages,
            temperature,
            max_tokens,
            extra,
        };
        Ok(Call {
            payload: Payload::Chat { req, stream, kind },
            deadline: deadline.map(Duration::from_millis),
        })
    }

    /// A text completion (txt2txt), passed to the upstream's `/v1/completions` as it came, once
    /// validated (model, prompt, temperature, counts within `limits`, deadline).
    pub fn completion(input: CompletionInput, limits: &InputLimits) -> Result<Call, ServiceError> {
        let CompletionInput {
            model,
            prompt,
            temperature,
            max_tokens,
            n,
            best_of,
            stream,
            deadline_ms: deadline,
            mut extra,
        } = input;
        nonempty("model", &model)?;
        limits.check_counts(
            &model,
            &[("max_tokens", max_tokens)],
            &[("n", n), ("best_of", best_of)],
        )?;
        for (field, v) in [("max_tokens", max_tokens), ("n", n), ("best_of", best_of)] {
            if let Some(v) = v {
                extra.insert(field.into(), v.into());
            }
        }
        if !text_or_list(&prompt, false) {
            return Err(ServiceError::invalid(
                "prompt",
                "must be a non-empty string or a non-empty list of strings",
            ));
        }
        if let Some(t) = temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ServiceError::invalid(
                "temperature",
                format!("must be between 0.0 and 2.0, got {t}"),
            ));
        }
        deadline_ms(deadline)?;
        extra.insert("model".into(), Value::String(model));
        extra.insert("prompt".into(), prompt);
        if let Some(t) = temperature {
            extra.insert("temperature".into(), t.into());
        }
        extra.insert("stream".into(), Value::Bool(stream));
        Ok(Call {
            payload: Payload::Json {
                path: "/v1/completions",
                body: extra,
                stream,
                kind: Kind::Txt2Txt,
            },
            deadline: deadline.map(Duration::from_millis),
        })
    }

    /// Embeddings (the `embed` kind), passed to the upstream's `/v1/embeddings` as they came,
    /// once validated (model, input, deadline).
    pub fn embedding(input: EmbeddingInput) -> Result<Call, ServiceError> {
        let EmbeddingInput {
            model,
            input,
            deadline_ms: deadline,
            mut extra,
        } = input;
        nonempty("model", &model)?;
        if !text_or_list(&input, true) {
            return Err(ServiceError::invalid(
                "input",
                "must be a non-empty string or a non-empty list of non-empty strings and token ids",
            ));
        }
        deadline_ms(deadline)?;
        extra.insert("model".into(), Value::String(model));
        extra.insert("input".into(), input);
        Ok(Call {
            payload: Payload::Json {
                path: "/v1/embeddings",
                body: extra,
                stream: false,
                kind: Kind::Embed,
            },
            deadline: deadline.map(Duration::from_millis),
        })
    }

    /// An image generation (no `file`) or edit (`file`: base64, checked by [`image_file`]).
    pub fn image(
        params: ImageParams,
        file: Option<Bytes>,
        limits: &InputLimits,
        size_field: Option<&str>,
    ) -> Result<Call, ServiceError> {
        params.validate(limits, size_field)?;
        let ImageParams {
            model,
            prompt,
            negative_prompt,
            width,
            height,
            steps,
            seed,
            n,
            deadline_ms,
        } = params;
        let req = ImageRequest {
            model,
            prompt,
            negative_prompt,
            width,
            height,
            steps,
            seed,
            n,
            file,
        };
        Ok(Call {
            payload: Payload::Images(req),
            deadline: deadline_ms.map(Duration::from_millis),
        })
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.payload.kind()
    }

    /// Its model.
    pub fn model(&self) -> &str {
        self.payload.model()
    }

    /// Whether it streams.
    pub fn streams(&self) -> bool {
        matches!(
            self.payload,
            Payload::Chat { stream: true, .. } | Payload::Json { stream: true, .. }
        )
    }

    /// What it asks the upstream for.
    pub(crate) fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The engine's job for it, known by `request_id`, with its prompt's chain for prefix-aware
    /// placement (64-character blocks of the prompt as the upstream sees it, each hashed with
    /// those before it).
    pub fn into_job(self, request_id: String) -> Job {
        let prefix = prompt::chain_of(&self.payload);
        let mut job = Job::new(request_id, self.payload, self.deadline);
        job.prefix = prefix;
        job
    }
}

/// A non-empty string, or a non-empty list of strings (each non-empty when `nonempty_items`) or
/// token ids.
fn text_or_list(v: &Value, nonempty_items: bool) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => {
            !items.is_empty()
                && items.iter().all(|i| match i {
                    Value::String(s) => !nonempty_items || !s.is_empty(),
                    other => other.is_number(),
                })
        }
        _ => false,
    }
}

fn nonempty(field: &str, v: &str) -> Result<(), ServiceError> {
    if v.is_empty() {
        Err(ServiceError::invalid(field, "must not be empty"))
    } else {
        Ok(())
    }
}

fn side(name: &str, v: u32, max: u32) -> Result<(), ServiceError> {
    if v == 0 || !v.is_multiple_of(8) {
        return Err(ServiceError::invalid(
            name,
            format!("must be a positive multiple of 8, got {v}"),
        ));
    }
    if v > max {
        return Err(ServiceError::invalid(
            name,
            format!("must be at most {max}, got {v}"),
        ));
    }
    Ok(())
}

/// A queue deadline: at least 1 ms (zero would expire before it could run).
fn deadline_ms(d: Option<u64>) -> Result<(), ServiceError> {
    match d {
        Some(0) => Err(ServiceError::invalid(
            "deadline_ms",
            "must be at least 1 (milliseconds)",
        )),
        _ => Ok(()),
    }
}

/// Messages: at least one; each an object with a known `role` and a `content` that is text or a
/// list of parts, taken into its compact form (its strings moved, not copied).
pub(crate) fn messages_of(values: Vec<MessageInput>) -> Result<Vec<Message>, ServiceError> {
    if values.is_empty() {
        return Err(ServiceError::invalid(
            "messages",
            "must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let m = v.0.map_err(|e| {
            let field = match e.field {
                "" => format!("messages[{i}]"),
                f => format!("messages[{i}].{f}"),
            };
            ServiceError::invalid(field, e.message)
        })?;
        messages.push(m);
    }
    Ok(messages)
}

/// Every image in `messages`: a URL (which the upstream would fetch from its own network) only
/// when it starts with one of `allowed`; base64 and data URIs always.
fn image_urls(messages: &[Message], allowed: &[String]) -> Result<(), ServiceError> {
    for src in vision::image_sources(messages) {
        let s = src.trim_start();
        let is_url = s
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
            || s.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        if is_url && !allowed.iter().any(|p| s.starts_with(p.as_str())) {
            return Err(ServiceError::invalid(
                "messages",
                "image URLs are not fetched unless allowed (`http.image_url_allowlist`); send the image as base64 or a data URI",
            ));
        }
    }
    Ok(())
}

/// Check that `file` is base64 of an image and return it as raw base64 (no `data:` prefix), in a
/// buffer of exactly its size: the one copy made of it (a frontend borrows it from the request
/// body, which is freed before the request queues).
pub fn image_file(field: &str, file: Cow<'_, str>) -> Result<Bytes, ServiceError> {
    let raw: &str = match file.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(',')
            .map(|(_, d)| d)
            .ok_or_else(|| ServiceError::invalid(field, "a data URI without a comma"))?,
        None => &file,
    };
    let Some(decoded) = vision::decode_head(raw) else {
        return Err(ServiceError::invalid(field, "is not valid base64"));
    };
    if vision::sniff_mime(&decoded).is_none() {
        return Err(ServiceError::invalid(
            field,
            "is not an image (expected PNG, JPEG, WebP or GIF)",
        ));
    }
    // Full check of the alphabet without decoding the whole payload into a second buffer.
    let ok = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'));
    if !ok {
        return Err(ServiceError::invalid(field, "is not valid base64"));
    }
    Ok(Bytes::copy_from_slice(raw.as_bytes()))
}
