//! Request and response bodies of the seed routes (their schemas), and parsing with field-level
//! messages. Validation beyond types is the service's.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use im_service::{ChatInput, ImageParams, ServiceError};
use localai_client::ImageRequest;

/// One chat message.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool` or `developer`.
    #[schema(value_type = crate::schema::Role)]
    pub role: String,
    /// Text, or a list of parts.
    #[schema(schema_with = crate::schema::message_content)]
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

/// `POST /txt2img`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Txt2ImgRequest {
    /// A model serving txt2img.
    #[schema(min_length = 1)]
    pub model: String,
    /// What to draw.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(example = 512, minimum = 8, maximum = 2048, multiple_of = 8)]
    pub height: u32,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(example = 512, minimum = 8, maximum = 2048, multiple_of = 8)]
    pub width: u32,
    /// Diffusion steps, 1 to 150.
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    /// Seed; random when absent.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Images, 1 to 4.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<u32>,
    /// Queue deadline in milliseconds.
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

/// `POST /img2img`. `file` borrows from the request body: the payload is held once.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Img2ImgRequest<'a> {
    /// A model serving img2img.
    #[schema(min_length = 1)]
    pub model: String,
    /// The source image: base64 (PNG, JPEG, WebP or GIF), optionally as a data URI.
    #[serde(borrow)]
    #[schema(value_type = String, content_encoding = "base64", content_media_type = "image/png")]
    pub file: Cow<'a, str>,
    /// The edit.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    pub height: u32,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    pub width: u32,
    /// Diffusion steps, 1 to 150.
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Images, 1 to 4.
    #[schema(minimum = 1, maximum = 4)]
    pub n: Option<u32>,
    /// Queue deadline in milliseconds.
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
}

impl Txt2TxtRequest {
    /// The service's input.
    pub fn into_input(self) -> ChatInput {
        ChatInput {
            model: self.model,
            messages: to_values(self.messages),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            max_completion_tokens: None,
            n: None,
            stream: self.stream,
            deadline_ms: self.deadline_ms,
            extra: Default::default(),
        }
    }
}

impl Img2TxtRequest {
    /// The service's input.
    pub fn into_input(self) -> ChatInput {
        ChatInput {
            model: self.model,
            messages: to_values(self.messages),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            max_completion_tokens: None,
            n: None,
            stream: false,
            deadline_ms: self.deadline_ms,
            extra: Default::default(),
        }
    }
}

impl Txt2ImgRequest {
    /// The service's input.
    pub fn into_params(self) -> ImageParams {
        ImageParams {
            req: ImageRequest {
                model: self.model,
                prompt: self.prompt,
                negative_prompt: self.negative_prompt,
                width: self.width,
                height: self.height,
                steps: self.steps,
                seed: self.seed,
                n: self.n,
                file: None,
            },
            deadline_ms: self.deadline_ms,
        }
    }
}

impl<'a> Img2ImgRequest<'a> {
    /// The service's input and the image file (still borrowed from the body).
    pub fn into_parts(self) -> (ImageParams, Cow<'a, str>) {
        let generation = Txt2ImgRequest {
            model: self.model,
            prompt: self.prompt,
            height: self.height,
            width: self.width,
            steps: self.steps,
            seed: self.seed,
            negative_prompt: self.negative_prompt,
            n: self.n,
            deadline_ms: self.deadline_ms,
        };
        (generation.into_params(), self.file)
    }
}

/// The figures every seed response carries.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Figures {
    /// im's id of the request (also in `X-Request-Id`).
    pub request_id: String,
    /// The model.
    pub model: String,
    /// The kind.
    pub kind: String,
    /// Time in the queue.
    pub queue_wait_ms: f64,
    /// Upstream time of the answering attempt.
    pub processing_ms: f64,
    /// Attempts made (1 without retries).
    pub attempts: u32,
}

/// Response of `/txt2txt` and `/img2txt`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TextResult {
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// The answer.
    pub content: String,
    /// The upstream's OpenAI-shaped completion.
    #[schema(value_type = Object)]
    pub completion: Value,
}

/// Response of `/txt2img` and `/img2img`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImageResult {
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Base64 PNG images.
    pub images: Vec<String>,
    /// Unix time of creation.
    pub created: u64,
}

/// Parse a JSON body into `T`, naming the field at fault. `T` may borrow from the body.
pub fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ServiceError> {
    if body.is_empty() {
        return Err(ServiceError::invalid(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde names missing/unknown fields in the message, not in the path.
        if inner.is_syntax() || inner.is_eof() {
            return ServiceError::invalid("body", format!("malformed JSON: {msg}"));
        }
        let field = if path == "." || path == "?" {
            msg.split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        ServiceError::invalid(field, msg)
    })
}

/// The messages as JSON values for the service.
pub fn to_values(m: Vec<Message>) -> Vec<Value> {
    m.into_iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_payload_is_copied_once_into_an_exact_buffer() {
        use base64::Engine;
        let png =
            base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 1));
        for file in [png.clone(), format!("data:image/png;base64,{png}")] {
            let body = axum::body::Bytes::from(serde_json::json!({"model": "sd", "file": file, "prompt": "p", "width": 8, "height": 8}).to_string());
            let r: Img2ImgRequest = parse(&body).expect("valid");
            assert!(
                matches!(r.file, Cow::Borrowed(_)),
                "serde borrowed the string: no intermediate copy"
            );
            let out = im_service::image_file("file", r.file).expect("an image");
            assert_eq!(out, png.as_bytes());
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            assert!(
                !(start..end).contains(&(out.as_ptr() as usize)),
                "the job does not pin the whole body"
            );
        }
    }
}
