//! Image bodies: the seeds' `/txt2img` and `/img2img`, OpenAI's image generations (img2img with
//! `file`). An image file is borrowed from the body and copied once, into exactly its size.

use std::borrow::Cow;

use serde::Deserialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use crate::call::{Call, ImageParams, InputLimits, image_file};
use crate::error::ServiceError;

/// The largest image side of the default configuration (`http.max_image_side`), as the schemas
/// state it.
pub const MAX_IMAGE_SIDE: u32 = 2048;

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

impl Txt2ImgRequest {
    /// The call it stands for (txt2img).
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        let params = ImageParams {
            model: self.model,
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            width: self.width,
            height: self.height,
            steps: self.steps,
            seed: self.seed,
            n: self.n,
            deadline_ms: self.deadline_ms,
        };
        Call::image(params, None, limits, None)
    }
}

impl Img2ImgRequest<'_> {
    /// The call it stands for (img2img); the body it borrows from can be dropped after it.
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        let params = ImageParams {
            model: self.model,
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            width: self.width,
            height: self.height,
            steps: self.steps,
            seed: self.seed,
            n: self.n,
            deadline_ms: self.deadline_ms,
        };
        params.validate(limits, None)?;
        let file = image_file("file", self.file)?;
        Call::image(params, Some(file), limits, None)
    }
}

/// `POST /v1/images/generations`: txt2img, or img2img when `file` is set. Other OpenAI fields
/// (`quality`, `style`, `user`) are accepted and ignored.
#[derive(Deserialize, ToSchema)]
pub struct ImageGenerationRequest<'a> {
    /// A model serving txt2img (img2img with `file`).
    #[schema(value_type = String, min_length = 1)]
    pub model: Option<String>,
    /// What to draw.
    #[schema(value_type = String, min_length = 1)]
    pub prompt: Option<String>,
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
    #[serde(borrow)]
    #[schema(value_type = Option<String>, content_encoding = "base64", content_media_type = "image/png")]
    pub file: Option<Cow<'a, str>>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Diffusion steps, 1 to 150 (LocalAI's name; it wins over `steps`).
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

impl ImageGenerationRequest<'_> {
    /// The call it stands for; the body it borrows from can be dropped after it.
    pub fn into_call(self, limits: &InputLimits) -> Result<Call, ServiceError> {
        let model = self
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ServiceError::invalid("model", "missing field `model`"))?;
        let prompt = self
            .prompt
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ServiceError::invalid("prompt", "missing field `prompt`"))?;
        let size = self.size.unwrap_or_else(|| "512x512".to_owned());
        let (width, height) = parse_size(&size)
            .ok_or_else(|| ServiceError::invalid("size", format!("{size:?} is not \"WxH\"")))?;
        if let Some(f) = self.response_format.as_deref()
            && f != "b64_json"
        {
            return Err(ServiceError::invalid(
                "response_format",
                "only \"b64_json\" is supported (im does not host image files)",
            ));
        }
        for (field, v) in [("step", self.step), ("steps", self.steps)] {
            if let Some(v) = v
                && !(1..=150).contains(&v)
            {
                return Err(ServiceError::invalid(
                    field,
                    format!("must be between 1 and 150, got {v}"),
                ));
            }
        }
        let params = ImageParams {
            model,
            prompt,
            negative_prompt: self.negative_prompt,
            width,
            height,
            steps: self.step.or(self.steps),
            seed: self.seed,
            n: self.n,
            deadline_ms: self.deadline_ms,
        };
        params.validate(limits, Some("size"))?;
        let file = self.file.map(|f| image_file("file", f)).transpose()?;
        Call::image(params, file, limits, Some("size"))
    }
}

/// `"WxH"`: two decimal numbers (digits only) around an `x`.
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !(digits(w) && digits(h)) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_payload_is_copied_once_into_an_exact_buffer() {
        use base64::Engine;
        let png =
            base64::engine::general_purpose::STANDARD.encode(localai_sim::image::png(8, 8, 1));
        for file in [png.clone(), format!("data:image/png;base64,{png}")] {
            let body = bytes::Bytes::from(serde_json::json!({"model": "sd", "file": file, "prompt": "p", "width": 8, "height": 8}).to_string());
            let r: Img2ImgRequest = crate::api::parse(&body).expect("valid");
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
