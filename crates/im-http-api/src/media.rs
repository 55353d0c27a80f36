//! The newer LocalAI routes on the same queues: rerank, speech (`/v1/audio/speech` and LocalAI's
//! `/tts`), transcription (multipart upload) and OpenAI's multipart image edit (queued as
//! `img2img`). Bodies stay as the OpenAI/LocalAI clients send them; im's figures are headers.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, State};
use axum::response::Response;
use base64::Engine as _;
use im_service::api::bodies::{RerankRequest, SpeechRequest, parse_size};
use im_service::{Call, Caller, ImageParams, Route, ServiceError, TranscriptionInput, image_file};

use crate::error::{HttpError, QueuedErrors};
use crate::respond::{json_route, write};
use crate::state::{AppState, Arrived};

/// LocalAI's rerank (Jina-style): documents ordered by relevance to the query.
#[utoipa::path(post, path = "/v1/rerank", tag = "openai",
    request_body(content = RerankRequest, description = "LocalAI's Jina-style rerank request"),
    responses(
        (status = 200, description = "`{\"model\", \"usage\", \"results\": [{\"index\", \"document\": {\"text\"}, \"relevance_score\"}]}` as the upstream answered", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn rerank(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Rerank, &st, &caller, arrived, b).await
}

/// OpenAI's text to speech: the upstream's audio, passed on as it came.
#[utoipa::path(post, path = "/v1/audio/speech", tag = "openai",
    request_body(content = SpeechRequest, description = "OpenAI's speech request"),
    responses(
        (status = 200, description = "The audio (the upstream's content type, `audio/wav` from LocalAI)", content_type = "audio/wav", body = Vec<u8>),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn speech(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Speech, &st, &caller, arrived, b).await
}

/// LocalAI's `/tts`: the same call as `/v1/audio/speech`.
#[utoipa::path(post, path = "/tts", tag = "openai",
    request_body(content = SpeechRequest, description = "LocalAI's tts request (`model`, `input`, optional `voice`, `backend`, `language`)"),
    responses(
        (status = 200, description = "The audio (the upstream's content type)", content_type = "audio/wav", body = Vec<u8>),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn tts(
    st: State<AppState>,
    caller: Extension<Caller>,
    arrived: Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    speech(st, caller, arrived, b).await
}

/// Run a call built from a form and answer it as the OpenAI routes do.
async fn run_form_call(
    st: &AppState,
    call: Call,
    caller: &Caller,
    arrived: Arrived,
) -> Result<Response, HttpError> {
    let answer = st.service.answer_call(call, caller, arrived.at).await?;
    Ok(write(st, Route::ChatCompletions, answer, caller, arrived))
}

/// One multipart form read whole: text fields in order, and the file fields.
struct Form {
    fields: Vec<(String, String)>,
    files: Vec<FilePart>,
}

struct FilePart {
    field: String,
    name: String,
    content_type: String,
    bytes: Bytes,
}

/// The longest text field accepted in a form.
const MAX_FORM_TEXT: usize = 64 * 1024;

async fn read_form(
    form: Result<Multipart, MultipartRejection>,
    limit: usize,
) -> Result<Form, ServiceError> {
    let mut form = form.map_err(|r| ServiceError::invalid("body", r.body_text()))?;
    let too_large = || crate::respond::too_large(limit);
    let mut out = Form {
        fields: Vec::new(),
        files: Vec::new(),
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large());
            }
            Err(e) => return Err(ServiceError::invalid("body", e.body_text())),
        };
        let name = field.name().unwrap_or("").to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ServiceError::invalid(name.as_str(), e.body_text())
            }
        })?;
        match file_name {
            Some(file_name) => out.files.push(FilePart {
                field: name,
                name: file_name,
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                bytes,
            }),
            None => {
                if bytes.len() > MAX_FORM_TEXT {
                    return Err(ServiceError::invalid(
                        name.as_str(),
                        format!("a text field is at most {MAX_FORM_TEXT} bytes"),
                    ));
                }
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| ServiceError::invalid(name.as_str(), "must be UTF-8 text"))?;
                out.fields.push((name, text));
            }
        }
    }
    Ok(out)
}

impl Form {
    fn take_field(&mut self, name: &str) -> Option<String> {
        let i = self.fields.iter().position(|(n, _)| n == name)?;
        Some(self.fields.remove(i).1)
    }

    fn take_file(&mut self, name: &str) -> Option<FilePart> {
        let i = self.files.iter().position(|f| f.field == name)?;
        Some(self.files.remove(i))
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, ServiceError> {
        match self.take_field(name) {
            None => Ok(None),
            Some(v) => {
                v.trim().parse().map(Some).map_err(|_| {
                    ServiceError::invalid(name, format!("{v:?} is not a valid number"))
                })
            }
        }
    }

    /// Refuse any field or file left that is not in `allowed`, by name.
    fn refuse_unknown(&self, allowed: &[&str]) -> Result<(), ServiceError> {
        let names = self
            .fields
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.files.iter().map(|f| f.field.as_str()));
        for n in names {
            if !allowed.contains(&n) {
                return Err(ServiceError::invalid(
                    n,
                    format!("unsupported field `{}`", im_service::truncate(n, 64)),
                ));
            }
        }
        Ok(())
    }
}

/// OpenAI's transcription: a multipart upload of the audio.
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "openai",
    request_body(content = TranscriptionForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "`{\"text\"}` (or the format asked for) as the upstream answered", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn transcriptions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, HttpError> {
    let mut form = read_form(form, st.service.body_limit()).await?;
    let file = form
        .take_file("file")
        .ok_or_else(|| ServiceError::invalid("file", "missing field `file` (the audio file)"))?;
    let deadline_ms: Option<u64> = form.number("deadline_ms")?;
    form.refuse_unknown(&[
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
    ])?;
    let call = Call::transcription(TranscriptionInput {
        fields: form.fields,
        file_field: file.field,
        file_name: file.name,
        file_type: file.content_type,
        file: file.bytes,
        deadline_ms,
    })?;
    run_form_call(&st, call, &caller, arrived).await
}

/// OpenAI's image edit (multipart, `image` and `prompt`), queued as img2img.
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = ImageEditForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "`{\"created\", \"data\": [{\"b64_json\"}]}`", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn images_edits(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, HttpError> {
    let mut form = read_form(form, st.service.body_limit()).await?;
    let image = form
        .take_file("image")
        .or_else(|| form.take_file("image[]"))
        .ok_or_else(|| ServiceError::invalid("image", "missing field `image` (the image file)"))?;
    if form.take_file("mask").is_some() {
        return Err(ServiceError::invalid(
            "mask",
            "masks are not supported (LocalAI edits the whole image)",
        )
        .into());
    }
    let model = form
        .take_field("model")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ServiceError::invalid("model", "missing field `model`"))?;
    let prompt = form
        .take_field("prompt")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ServiceError::invalid("prompt", "missing field `prompt`"))?;
    let size = form
        .take_field("size")
        .unwrap_or_else(|| "512x512".to_owned());
    let (width, height) = parse_size(&size)
        .ok_or_else(|| ServiceError::invalid("size", format!("{size:?} is not \"WxH\"")))?;
    if let Some(f) = form.take_field("response_format")
        && f != "b64_json"
    {
        return Err(ServiceError::invalid(
            "response_format",
            "only \"b64_json\" is supported (im does not host image files)",
        )
        .into());
    }
    let params = ImageParams {
        model,
        prompt,
        negative_prompt: form.take_field("negative_prompt"),
        width,
        height,
        steps: form.number("step")?.or(form.number("steps")?),
        seed: form.number("seed")?,
        n: form.number("n")?,
        deadline_ms: form.number("deadline_ms")?,
    };
    form.refuse_unknown(&["user", "quality", "background", "output_format"])?;
    params.validate(st.service.limits(), Some("size"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
    drop(image);
    let file = image_file("image", std::borrow::Cow::Owned(b64))?;
    let call = Call::image(params, Some(file), st.service.limits(), Some("size"))?;
    run_form_call(&st, call, &caller, arrived).await
}

/// `POST /v1/audio/transcriptions` (multipart form); the handler reads the form field by field
/// with these rules.
#[derive(utoipa::ToSchema)]
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

/// `POST /v1/images/edits` (multipart form), queued as img2img; the handler reads the form field
/// by field with these rules.
#[derive(utoipa::ToSchema)]
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
    #[schema(schema_with = im_service::api::bodies::size_schema)]
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
