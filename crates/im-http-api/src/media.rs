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
use im_service::{
    Call, Caller, ErrorType, ImageParams, RerankInput, ServiceError, SpeechInput,
    TranscriptionInput, image_file,
};
use localai_client::{ImageRequest, Upload};
use serde_json::Value;

use crate::error::{HttpError, QueuedErrors};
use crate::openai::{object, opt, parse_size, refuse_unknown, respond, string_field};
use crate::seed::body;
use crate::state::{AppState, Arrived};

/// The rerank fields passed to the upstream as they are.
pub(crate) const RERANK_PASS_THROUGH: &[&str] = &["return_documents"];

/// The speech fields passed to the upstream as they are.
pub(crate) const SPEECH_PASS_THROUGH: &[&str] = &[
    "voice",
    "response_format",
    "speed",
    "instructions",
    "backend",
    "language",
];

/// LocalAI's rerank (Jina-style): documents ordered by relevance to the query.
#[utoipa::path(post, path = "/v1/rerank", tag = "openai",
    request_body(content = crate::schema::RerankRequest, description = "LocalAI's Jina-style rerank request"),
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
    let call = rerank_call(&body(b, st.service.body_limit())?)?;
    respond(&st, call, &caller, arrived).await
}

fn rerank_call(b: &Bytes) -> Result<Call, ServiceError> {
    let mut o = object(b)?;
    let model = string_field(&mut o, "model")?;
    let query = string_field(&mut o, "query")?;
    let documents = match o.remove("documents") {
        Some(Value::Array(d)) => d,
        None | Some(Value::Null) => {
            return Err(ServiceError::invalid(
                "documents",
                "missing field `documents`",
            ));
        }
        Some(_) => {
            return Err(ServiceError::invalid(
                "documents",
                "must be a list of strings",
            ));
        }
    };
    let top_n: Option<u64> = opt(&mut o, "top_n")?;
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    refuse_unknown(&o, RERANK_PASS_THROUGH)?;
    Call::rerank(RerankInput {
        model,
        query,
        documents,
        top_n,
        deadline_ms,
        extra: o,
    })
}

/// OpenAI's text to speech: the upstream's audio, passed on as it came.
#[utoipa::path(post, path = "/v1/audio/speech", tag = "openai",
    request_body(content = crate::schema::SpeechRequest, description = "OpenAI's speech request"),
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
    let call = speech_call(&body(b, st.service.body_limit())?)?;
    respond(&st, call, &caller, arrived).await
}

/// LocalAI's `/tts`: the same call as `/v1/audio/speech`.
#[utoipa::path(post, path = "/tts", tag = "openai",
    request_body(content = crate::schema::SpeechRequest, description = "LocalAI's tts request (`model`, `input`, optional `voice`, `backend`, `language`)"),
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

fn speech_call(b: &Bytes) -> Result<Call, ServiceError> {
    let mut o = object(b)?;
    let model = string_field(&mut o, "model")?;
    let input = match o.remove("input") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            return Err(ServiceError::invalid("input", "missing field `input`"));
        }
        Some(_) => return Err(ServiceError::invalid("input", "must be a string")),
    };
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    refuse_unknown(&o, SPEECH_PASS_THROUGH)?;
    Call::speech(SpeechInput {
        model,
        input,
        deadline_ms,
        extra: o,
    })
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
    let too_large = || {
        ServiceError::new(
            ErrorType::PayloadTooLarge,
            format!("the body is over the limit of {limit} bytes"),
        )
    };
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
                    format!("unsupported field `{}`", im_engine::truncate(n, 64)),
                ));
            }
        }
        Ok(())
    }
}

/// OpenAI's transcription: a multipart upload of the audio.
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "openai",
    request_body(content = crate::schema::TranscriptionForm, content_type = "multipart/form-data"),
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
        upload: Upload {
            fields: form.fields,
            file_field: file.field,
            file_name: file.name,
            file_type: file.content_type,
            file: file.bytes,
        },
        deadline_ms,
    })?;
    respond(&st, call, &caller, arrived).await
}

/// OpenAI's image edit (multipart, `image` and `prompt`), queued as img2img.
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = crate::schema::ImageEditForm, content_type = "multipart/form-data"),
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
        req: ImageRequest {
            model,
            prompt,
            negative_prompt: form.take_field("negative_prompt"),
            width,
            height,
            steps: form.number("step")?.or(form.number("steps")?),
            seed: form.number("seed")?,
            n: form.number("n")?,
            file: None,
        },
        deadline_ms: form.number("deadline_ms")?,
    };
    form.refuse_unknown(&["user", "quality", "background", "output_format"])?;
    params.validate(st.service.limits(), Some("size"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
    drop(image);
    let file = image_file("image", std::borrow::Cow::Owned(b64))?;
    let call = Call::image(params, Some(file), st.service.limits(), Some("size"))?;
    respond(&st, call, &caller, arrived).await
}
