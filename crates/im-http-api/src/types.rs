//! Request and response bodies of the seed routes, and their validation (field-level messages).

use bytes::Bytes;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorType};

/// One chat message.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    #[schema(example = "user")]
    pub role: String,
    /// Text, or a list of parts (`{"type":"text","text":…}`, `{"type":"image_url","image_url":{"url":…}}`).
    /// Images may be base64, a data URI, or a URL.
    #[schema(value_type = Object)]
    pub content: Value,
}

/// `POST /txt2txt`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Txt2TxtRequest {
    /// A model serving txt2txt (see `GET /v1/models`).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// 0.0 to 2.0.
    #[schema(example = 0.7)]
    pub temperature: Option<f64>,
    /// Token limit.
    pub max_tokens: Option<u32>,
    /// Stream chunks as server-sent events once dispatched.
    #[serde(default)]
    pub stream: bool,
    /// Queue deadline in milliseconds (only lowers the configured default).
    pub deadline_ms: Option<u64>,
}

/// `POST /img2txt`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Img2TxtRequest {
    /// A model serving img2txt.
    pub model: String,
    /// The conversation; at least one message carries an image.
    pub messages: Vec<Message>,
    /// 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Token limit.
    pub max_tokens: Option<u32>,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
}

/// `POST /txt2img`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Txt2ImgRequest {
    /// A model serving txt2img.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(example = 512)]
    pub height: u32,
    /// Pixels, a positive multiple of 8, at most the configured maximum.
    #[schema(example = 512)]
    pub width: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed; random when absent.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Images, 1 to 4.
    pub n: Option<u32>,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
}

/// `POST /img2img`. `file` borrows from the request body: the payload is held once.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Img2ImgRequest<'a> {
    /// A model serving img2img.
    pub model: String,
    /// The source image: base64 (PNG, JPEG, WebP or GIF), optionally as a data URI.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub file: Cow<'a, str>,
    /// The edit.
    pub prompt: String,
    /// Pixels, a positive multiple of 8.
    pub height: u32,
    /// Pixels, a positive multiple of 8.
    pub width: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Images, 1 to 4.
    pub n: Option<u32>,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
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
pub fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
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
            return ApiError::invalid("body", format!("malformed JSON: {msg}"));
        }
        let field = if path == "." || path == "?" {
            msg.split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        ApiError::invalid(field, msg)
    })
}

/// Check a temperature.
pub fn temperature(t: Option<f64>) -> Result<(), ApiError> {
    match t {
        Some(t) if !(0.0..=2.0).contains(&t) => Err(ApiError::invalid(
            "temperature",
            format!("must be between 0.0 and 2.0, got {t}"),
        )),
        _ => Ok(()),
    }
}

/// Check messages: non-empty, known roles, string or list content.
pub fn messages(m: &[Message]) -> Result<(), ApiError> {
    if m.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "must hold at least one message",
        ));
    }
    for (i, msg) in m.iter().enumerate() {
        if !["system", "user", "assistant", "tool", "developer"].contains(&msg.role.as_str()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("unknown role {:?}", msg.role),
            ));
        }
        if !(msg.content.is_string() || msg.content.is_array()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                "must be a string or a list of parts",
            ));
        }
    }
    Ok(())
}

/// Check an image side.
pub fn side(name: &str, v: u32, max: u32) -> Result<(), ApiError> {
    if v == 0 || !v.is_multiple_of(8) {
        return Err(ApiError::invalid(
            name,
            format!("must be a positive multiple of 8, got {v}"),
        ));
    }
    if v > max {
        return Err(ApiError::invalid(
            name,
            format!("must be at most {max}, got {v}"),
        ));
    }
    Ok(())
}

/// Check steps and n.
pub fn steps_n(steps: Option<u32>, n: Option<u32>) -> Result<(), ApiError> {
    if let Some(s) = steps
        && !(1..=150).contains(&s)
    {
        return Err(ApiError::invalid(
            "steps",
            format!("must be between 1 and 150, got {s}"),
        ));
    }
    if let Some(n) = n
        && !(1..=4).contains(&n)
    {
        return Err(ApiError::invalid(
            "n",
            format!("must be between 1 and 4, got {n}"),
        ));
    }
    Ok(())
}

/// Check that `file` is base64 of an image and return it as raw base64 (no `data:` prefix), in a
/// buffer of exactly its size. serde borrows `file` from the request body, so this is the one copy
/// made: the body (whose buffer may be far larger than the payload) is freed when the handler
/// returns, and the job holds the payload once from then on, shared by `Arc` between attempts.
pub fn image_file(field: &str, file: Cow<'_, str>) -> Result<Bytes, ApiError> {
    let raw: &str = match file.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(',')
            .map(|(_, d)| d)
            .ok_or_else(|| ApiError::invalid(field, "a data URI without a comma"))?,
        None => &file,
    };
    let Some(decoded) = localai_client::vision::decode_head(raw) else {
        return Err(ApiError::invalid(field, "is not valid base64"));
    };
    if localai_client::vision::sniff_mime(&decoded).is_none() {
        return Err(ApiError::invalid(
            field,
            "is not an image (expected PNG, JPEG, WebP or GIF)",
        ));
    }
    // Full check of the alphabet without decoding the whole payload into a second buffer.
    let ok = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'));
    if !ok {
        return Err(ApiError::invalid(field, "is not valid base64"));
    }
    Ok(Bytes::copy_from_slice(raw.as_bytes()))
}

/// Check a queue deadline: at least 1 ms (zero would expire before it could run).
pub fn deadline_ms(d: Option<u64>) -> Result<(), ApiError> {
    match d {
        Some(0) => Err(ApiError::invalid(
            "deadline_ms",
            "must be at least 1 (milliseconds)",
        )),
        _ => Ok(()),
    }
}

/// Check every image in `messages`: a URL (which the upstream would fetch from its own network)
/// is accepted only when it starts with one of `allowed` (empty: no URL at all); base64 and data
/// URIs are always accepted.
pub fn image_urls(messages: &[Value], allowed: &[String]) -> Result<(), ApiError> {
    for src in localai_client::vision::image_sources(messages) {
        let s = src.trim_start();
        let is_url = s
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
            || s.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        if is_url && !allowed.iter().any(|p| s.starts_with(p.as_str())) {
            return Err(ApiError::invalid(
                "messages",
                "image URLs are not fetched unless allowed (`http.image_url_allowlist`); send the image as base64 or a data URI",
            ));
        }
    }
    Ok(())
}

/// The messages as JSON values for the client.
pub fn to_values(m: Vec<Message>) -> Vec<Value> {
    m.into_iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect()
}

/// An error for a model the frontend already knows does not serve `kind` (kept for symmetry with
/// the engine's admission, which is the authority).
pub fn needs_image() -> ApiError {
    ApiError {
        param: Some("messages".into()),
        ..ApiError::new(
            ErrorType::InvalidRequest,
            "img2txt needs an image in the messages (an image_url part, base64 or a data URI)",
        )
    }
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
            let body = Bytes::from(serde_json::json!({"model": "sd", "file": file, "prompt": "p", "width": 8, "height": 8}).to_string());
            let r: Img2ImgRequest = parse(&body).expect("valid");
            assert!(
                matches!(r.file, Cow::Borrowed(_)),
                "serde borrowed the string: no intermediate copy"
            );
            let out = image_file("file", r.file).expect("an image");
            assert_eq!(out, png.as_bytes());
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            assert!(
                !(start..end).contains(&(out.as_ptr() as usize)),
                "the job does not pin the whole body"
            );
        }
    }
}
