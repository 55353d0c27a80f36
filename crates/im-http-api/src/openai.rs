//! OpenAI-compatible routes on the same queues: bodies stay exactly OpenAI-shaped; im's figures
//! travel as headers (`X-Request-Id`, `X-Queue-Wait-Ms`, `X-Processing-Ms`, `X-Attempts`).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use im_service::api::bodies::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ImageGenerationRequest,
};
use im_service::{Caller, Route};

use crate::error::{ErrorBody, HttpError, QueuedErrors};
use crate::respond::json_route;
use crate::state::{AppState, Arrived};

/// OpenAI chat completions: txt2txt, or img2txt when a message carries an image.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = ChatCompletionRequest, description = "An OpenAI chat completion request"),
    responses(
        (status = 200, description = "An OpenAI `chat.completion` (or SSE `chat.completion.chunk`s)", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn chat_completions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::ChatCompletions, &st, &caller, arrived, b).await
}

/// OpenAI text completions (txt2txt), passed to the upstream as they came once validated.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body(content = CompletionRequest, description = "An OpenAI completion request"),
    responses(
        (status = 200, description = "An OpenAI `text_completion` (or SSE chunks with `stream: true`)", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn completions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Completions, &st, &caller, arrived, b).await
}

/// OpenAI embeddings (the `embed` kind), passed to the upstream as they came once validated.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body(content = EmbeddingRequest, description = "An OpenAI embeddings request"),
    responses(
        (status = 200, description = "An OpenAI list of `embedding` objects", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn embeddings(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Embeddings, &st, &caller, arrived, b).await
}

/// OpenAI image generations: txt2img, or img2img when `file` is set.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body(content = ImageGenerationRequest, description = "An OpenAI image generation request (img2img with `file`)"),
    responses(
        (status = 200, description = "`{\"created\", \"data\": [{\"b64_json\"}]}`", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn images_generations(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::ImageGenerations, &st, &caller, arrived, b).await
}

/// The configured models, OpenAI-shaped, each with the kinds it serves.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{\"id\",\"object\":\"model\",\"kinds\"}]}`", body = Object),
              (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn models(State(st): State<AppState>) -> Response {
    axum::Json(st.service.models()).into_response()
}
