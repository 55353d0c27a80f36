//! The request body of every JSON route: one type each, which is both what parses the body and
//! what the OpenAPI document shows. Fields im passes to the upstream without reading are listed
//! once ([`pass_through`]); the parser accepts exactly them besides its typed fields, and
//! [`PassThrough`] adds them to the schemas from the same lists.

mod chat;
mod images;
mod infer;
mod media;

pub use chat::{ChatCompletionRequest, CompletionRequest, Img2TxtRequest, Message, Txt2TxtRequest};
pub use images::{
    ImageGenerationRequest, Img2ImgRequest, MAX_IMAGE_SIDE, Txt2ImgRequest, parse_size, size_schema,
};
pub use infer::{InferParams, InferRequest, InferResponse, MAX_STOP, TaskRequest, Timings};
pub use media::{EmbeddingRequest, RerankRequest, SpeechRequest};

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};

use super::Work;
use super::parse::parse;
use super::route::Route;
use crate::error::ServiceError;
use crate::service::Service;

/// The fields each route passes to the upstream as they are, besides those it reads itself.
pub mod pass_through {
    /// Chat completions.
    pub const CHAT: &[&str] = &[
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "user",
        "metadata",
        "store",
        "reasoning_effort",
        "grammar",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    ];
    /// Text completions.
    pub const COMPLETION: &[&str] = &[
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "logit_bias",
        "logprobs",
        "echo",
        "suffix",
        "user",
        "grammar",
    ];
    /// Embeddings.
    pub const EMBEDDING: &[&str] = &["encoding_format", "dimensions", "user"];
    /// Rerank.
    pub const RERANK: &[&str] = &["return_documents"];
    /// Speech.
    pub const SPEECH: &[&str] = &[
        "voice",
        "response_format",
        "speed",
        "instructions",
        "backend",
        "language",
    ];
}

/// Parse `body` as `route`'s request: the work it stands for.
pub(super) fn work(service: &Service, route: Route, body: &[u8]) -> Result<Work, ServiceError> {
    let limits = service.limits();
    let call = |c: crate::Call, model: String| Ok(Work::Call { call: c, model });
    match route {
        Route::Txt2Txt => {
            let r: Txt2TxtRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::Img2Txt => {
            let r: Img2TxtRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::Txt2Img => {
            let r: Txt2ImgRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::Img2Img => {
            // The image is borrowed from the body and copied once, into exactly its size.
            let r: Img2ImgRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::ChatCompletions => {
            let r: ChatCompletionRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::Completions => {
            let r: CompletionRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(limits)?, model)
        }
        Route::Embeddings => {
            let r: EmbeddingRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call()?, model)
        }
        Route::ImageGenerations => {
            let r: ImageGenerationRequest = parse(body)?;
            let model = r.model.clone().unwrap_or_default();
            call(r.into_call(limits)?, model)
        }
        Route::Rerank => {
            let r: RerankRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call()?, model)
        }
        Route::Speech => {
            let r: SpeechRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call()?, model)
        }
        Route::Infer | Route::InferStream => {
            let r: InferRequest = parse(body)?;
            let model = r.model.clone();
            call(r.into_call(route == Route::InferStream, limits)?, model)
        }
        Route::Task => {
            let r: TaskRequest = parse(body)?;
            let entry = service
                .registry()
                .resolve(&r.model, r.version.as_deref())?
                .clone();
            Ok(Work::Task {
                entry,
                text: r.text,
                params: r.parameters.unwrap_or_default(),
            })
        }
    }
}

/// Adds to each request schema the fields its parser passes to the upstream unread, from the
/// lists in [`pass_through`].
pub struct PassThrough;

impl utoipa::Modify for PassThrough {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let lists: [(&str, &[&str]); 5] = [
            ("ChatCompletionRequest", pass_through::CHAT),
            ("CompletionRequest", pass_through::COMPLETION),
            ("EmbeddingRequest", pass_through::EMBEDDING),
            ("RerankRequest", pass_through::RERANK),
            ("SpeechRequest", pass_through::SPEECH),
        ];
        for (name, fields) in lists {
            if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
                for f in fields {
                    let any = ObjectBuilder::new()
                        .schema_type(SchemaType::AnyValue)
                        .description(Some("Passed to the upstream."));
                    o.properties.insert((*f).to_owned(), any.into());
                }
                // Any other field is refused by name.
                o.additional_properties = Some(Box::new(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            }
        }
    }
}

/// A chat message's role: one of the roles im passes on ([`localai_client::Role`]).
pub fn message_role() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(localai_client::Role::ALL.map(|r| r.as_str())))
        .description(Some("Who speaks."))
        .into()
}

/// Text, or a list of content parts (`{"type":"text","text":…}`,
/// `{"type":"image_url","image_url":{"url":…}}`; images as base64, a data URI or an allowed URL).
pub fn message_content() -> Schema {
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(SchemaType::AnyValue)))
        .description(Some(
            "Text, or a list of parts (`{\"type\":\"text\",\"text\":…}`, `{\"type\":\"image_url\",\"image_url\":{\"url\":…}}`); images as base64, a data URI or an allowed URL.",
        ))
        .into()
}

/// A non-empty string, or a non-empty list of strings (each non-empty when `nonempty_items`) and
/// token ids.
fn text_or_list(description: &str, nonempty_items: bool) -> Schema {
    let text_item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(nonempty_items.then_some(1));
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .item(
            ArrayBuilder::new()
                .items(
                    AnyOfBuilder::new()
                        .item(text_item)
                        .item(ObjectBuilder::new().schema_type(Type::Number)),
                )
                .min_items(Some(1)),
        )
        .description(Some(description))
        .into()
}

/// A completion's prompt.
pub fn prompt_schema() -> Schema {
    text_or_list(
        "A non-empty string, or a non-empty list of strings and token ids",
        false,
    )
}

/// An embedding call's input.
pub fn embedding_input_schema() -> Schema {
    text_or_list(
        "A non-empty string, or a non-empty list of non-empty strings and token ids",
        true,
    )
}
