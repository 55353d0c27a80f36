//! The tools' arguments, with the JSON schemas and descriptions a model acts on.

use serde::Deserialize;
use serde_json::Value;

use rmcp::schemars;

/// Arguments of `txt2txt`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ChatArgs {
    /// A model serving txt2txt (see `list_models`).
    pub model: String,
    /// The conversation: a list of `{"role": "user"|"system"|"assistant", "content": "..."}`.
    /// Give either `messages` or `prompt`.
    pub messages: Option<Vec<Value>>,
    /// A single user message (shorthand for `messages`).
    pub prompt: Option<String>,
    /// Sampling temperature, 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
}

/// Arguments of `img2txt`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct VisionArgs {
    /// A model serving img2txt (see `list_models`).
    pub model: String,
    /// The question about the image.
    pub prompt: Option<String>,
    /// The image: base64 (PNG, JPEG, WebP, GIF) or a data URI.
    pub image: Option<String>,
    /// Or a full conversation whose messages carry `image_url` parts (instead of prompt + image).
    pub messages: Option<Vec<Value>>,
    /// Sampling temperature, 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
}

/// Arguments of `txt2img`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ImageArgs {
    /// A model serving txt2img (see `list_models`).
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Width in pixels: a positive multiple of 8 (for example 512).
    pub width: u32,
    /// Height in pixels: a positive multiple of 8 (for example 512).
    pub height: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed for reproducible images.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Number of images, 1 to 4.
    pub n: Option<u32>,
}

/// Arguments of `img2img`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditArgs {
    /// A model serving img2img (see `list_models`).
    pub model: String,
    /// The source image: base64 (PNG, JPEG, WebP, GIF) or a data URI.
    pub file: String,
    /// The edit to make.
    pub prompt: String,
    /// Width in pixels: a positive multiple of 8.
    pub width: u32,
    /// Height in pixels: a positive multiple of 8.
    pub height: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Number of images, 1 to 4.
    pub n: Option<u32>,
}

/// Arguments of `get_backend_status`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BackendArgs {
    /// The backend's name (see `list_inference_backends`).
    pub name: String,
}

/// Arguments of `select_backend_for_inference`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SelectArgs {
    /// The task (kind): txt2txt, txt2img, img2img, img2txt, embed, rerank, tts or stt.
    pub task: String,
    /// The model (see `get_supported_tasks`).
    pub model: String,
    /// Only consider this backend (see `list_inference_backends`).
    pub backend: Option<String>,
    /// A chat's messages to look up in each backend's prompt cache (your own tenant's prompts
    /// only).
    pub messages: Option<Vec<serde_json::Value>>,
    /// A completion's prompt to look up likewise.
    pub prompt: Option<String>,
}

/// Arguments of `estimate_wait`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EstimateArgs {
    /// The task (kind): txt2txt, txt2img, img2img, img2txt, embed, rerank, tts or stt.
    pub task: String,
    /// The model (see `get_supported_tasks`).
    pub model: String,
}

/// Arguments of `route_inference_request`: the task and the arguments of its tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RouteArgs {
    /// The task: txt2txt, img2txt, txt2img or img2img.
    pub task: String,
    /// A model serving the task (see `get_supported_tasks`).
    pub model: String,
    /// The prompt (every task), or the question about the image (img2txt).
    pub prompt: Option<String>,
    /// A conversation instead of `prompt` (txt2txt, img2txt).
    pub messages: Option<Vec<Value>>,
    /// The image (img2txt): base64 or a data URI.
    pub image: Option<String>,
    /// The source image (img2img): base64 or a data URI.
    pub file: Option<String>,
    /// Width in pixels (txt2img, img2img; default 512).
    pub width: Option<u32>,
    /// Height in pixels (txt2img, img2img; default 512).
    pub height: Option<u32>,
    /// Diffusion steps (txt2img, img2img).
    pub steps: Option<u32>,
    /// Seed (txt2img, img2img).
    pub seed: Option<i64>,
    /// Sampling temperature (txt2txt, img2txt).
    pub temperature: Option<f64>,
    /// Maximum tokens (txt2txt, img2txt).
    pub max_tokens: Option<u32>,
}

/// No arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NoArgs {}
