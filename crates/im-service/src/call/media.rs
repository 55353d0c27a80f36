//! Calls on the newer LocalAI routes: rerank (`rerank`), speech (`tts`) and transcription
//! (`stt`). Each is validated here, once, for every frontend.

use std::time::Duration;

use im_engine::Payload;
use inference_queue::Kind;
use localai_client::Upload;
use serde_json::{Map, Value};

use super::{Call, deadline_ms, nonempty};
use crate::error::ServiceError;

/// The longest text a speech call takes, in characters (OpenAI's limit).
pub const MAX_SPEECH_CHARS: usize = 4096;
/// The most documents one rerank call takes.
pub const MAX_RERANK_DOCUMENTS: usize = 1024;
/// The transcription formats OpenAI's API names.
pub const TRANSCRIPTION_FORMATS: [&str; 5] = ["json", "text", "srt", "verbose_json", "vtt"];

/// A rerank as a frontend received it (LocalAI's Jina-style `/v1/rerank`).
#[derive(Clone, Debug, Default)]
pub struct RerankInput {
    /// The model.
    pub model: String,
    /// The query the documents are ranked against.
    pub query: String,
    /// The documents (strings).
    pub documents: Vec<Value>,
    /// How many of the best to return (at least 1).
    pub top_n: Option<u64>,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Other fields passed to the upstream as they are (already checked by the frontend).
    pub extra: Map<String, Value>,
}

/// Speech as a frontend received it (OpenAI's `/v1/audio/speech`, LocalAI's `/tts`).
#[derive(Clone, Debug, Default)]
pub struct SpeechInput {
    /// The model.
    pub model: String,
    /// The text to speak.
    pub input: String,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Other fields passed to the upstream as they are (`voice`, `response_format`, `speed`, ...).
    pub extra: Map<String, Value>,
}

/// A transcription as a frontend received it: the multipart form's fields and file, passed to
/// the upstream as a form again.
#[derive(Clone, Debug, Default)]
pub struct TranscriptionInput {
    /// Text fields, in order (`model` among them).
    pub fields: Vec<(String, String)>,
    /// The file field's name (`file`).
    pub file_field: String,
    /// The file name sent.
    pub file_name: String,
    /// The file's content type.
    pub file_type: String,
    /// The audio.
    pub file: bytes::Bytes,
    /// Queue deadline in milliseconds.
    pub deadline_ms: Option<u64>,
}

impl Call {
    /// A rerank (the `rerank` kind): model, a non-empty query, 1 to
    /// [`MAX_RERANK_DOCUMENTS`] string documents, `top_n` at least 1.
    pub fn rerank(input: RerankInput) -> Result<Call, ServiceError> {
        let RerankInput {
            model,
            query,
            documents,
            top_n,
            deadline_ms: deadline,
            mut extra,
        } = input;
        nonempty("model", &model)?;
        nonempty("query", &query)?;
        if documents.is_empty() || documents.len() > MAX_RERANK_DOCUMENTS {
            return Err(ServiceError::invalid(
                "documents",
                format!(
                    "must hold 1 to {MAX_RERANK_DOCUMENTS} documents, got {}",
                    documents.len()
                ),
            ));
        }
        if let Some(i) = documents.iter().position(|d| !d.is_string()) {
            return Err(ServiceError::invalid(
                format!("documents[{i}]"),
                "must be a string",
            ));
        }
        if top_n == Some(0) {
            return Err(ServiceError::invalid("top_n", "must be at least 1"));
        }
        deadline_ms(deadline)?;
        extra.insert("model".into(), Value::String(model));
        extra.insert("query".into(), Value::String(query));
        extra.insert("documents".into(), Value::Array(documents));
        if let Some(n) = top_n {
            extra.insert("top_n".into(), n.into());
        }
        Ok(Call {
            payload: Payload::Json {
                path: "/v1/rerank",
                body: extra,
                stream: false,
                kind: Kind::Rerank,
            },
            deadline: deadline.map(Duration::from_millis),
        })
    }

    /// Speech (the `tts` kind): model and a text of 1 to [`MAX_SPEECH_CHARS`] characters; the
    /// answer is the upstream's audio, passed on as it is.
    pub fn speech(input: SpeechInput) -> Result<Call, ServiceError> {
        let SpeechInput {
            model,
            input,
            deadline_ms: deadline,
            mut extra,
        } = input;
        nonempty("model", &model)?;
        let chars = input.chars().count();
        if chars == 0 || chars > MAX_SPEECH_CHARS {
            return Err(ServiceError::invalid(
                "input",
                format!("must hold 1 to {MAX_SPEECH_CHARS} characters, got {chars}"),
            ));
        }
        deadline_ms(deadline)?;
        extra.insert("model".into(), Value::String(model));
        extra.insert("input".into(), Value::String(input));
        Ok(Call {
            payload: Payload::Speech { body: extra },
            deadline: deadline.map(Duration::from_millis),
        })
    }

    /// A transcription (the `stt` kind): a non-empty `model` field and a non-empty file, a known
    /// `response_format`, a `temperature` within 0 to 1.
    pub fn transcription(input: TranscriptionInput) -> Result<Call, ServiceError> {
        let TranscriptionInput {
            fields,
            file_field,
            file_name,
            file_type,
            file,
            deadline_ms: deadline,
        } = input;
        let upload = Upload {
            fields,
            file_field,
            file_name,
            file_type,
            file,
        };
        match upload.field("model") {
            None => return Err(ServiceError::invalid("model", "missing field `model`")),
            Some(m) => nonempty("model", m)?,
        }
        if upload.file.is_empty() {
            return Err(ServiceError::invalid("file", "missing or empty audio file"));
        }
        if let Some(f) = upload.field("response_format")
            && !TRANSCRIPTION_FORMATS.contains(&f)
        {
            return Err(ServiceError::invalid(
                "response_format",
                format!(
                    "must be one of {}, got {:?}",
                    TRANSCRIPTION_FORMATS.join(", "),
                    im_engine::truncate(f, 32)
                ),
            ));
        }
        if let Some(t) = upload.field("temperature") {
            match t.trim().parse::<f64>() {
                Ok(t) if (0.0..=1.0).contains(&t) => {}
                _ => {
                    return Err(ServiceError::invalid(
                        "temperature",
                        "must be a number between 0 and 1",
                    ));
                }
            }
        }
        deadline_ms(deadline)?;
        Ok(Call {
            payload: Payload::Transcription(upload),
            deadline: deadline.map(Duration::from_millis),
        })
    }
}
