//! The seed routes: `/txt2txt`, `/txt2img`, `/img2img`, `/img2txt`, each the service's route
//! over HTTP (see [`crate::respond`]).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use im_service::api::bodies::{Img2ImgRequest, Img2TxtRequest, Txt2ImgRequest, Txt2TxtRequest};
use im_service::api::{ImageResult, TextResult};
use im_service::{Caller, Route};

use crate::error::{HttpError, QueuedErrors};
use crate::respond::json_route;
use crate::state::{AppState, Arrived};

/// Chat (txt2txt).
#[utoipa::path(post, path = "/txt2txt", tag = "seed", request_body = Txt2TxtRequest,
    responses(
        (status = 200, description = "The chat completion (or an SSE stream with `stream: true`)", body = TextResult),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn txt2txt(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Txt2Txt, &st, &caller, arrived, b).await
}

/// Vision chat (img2txt).
#[utoipa::path(post, path = "/img2txt", tag = "seed", request_body = Img2TxtRequest,
    responses(
        (status = 200, description = "The text answer", body = TextResult),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn img2txt(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Img2Txt, &st, &caller, arrived, b).await
}

/// Image generation (txt2img).
#[utoipa::path(post, path = "/txt2img", tag = "seed", request_body = Txt2ImgRequest,
    responses(
        (status = 200, description = "Base64 PNG image(s)", body = ImageResult),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn txt2img(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Txt2Img, &st, &caller, arrived, b).await
}

/// Image editing (img2img).
#[utoipa::path(post, path = "/img2img", tag = "seed", request_body = Img2ImgRequest,
    responses(
        (status = 200, description = "Base64 PNG image(s)", body = ImageResult),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn img2img(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    json_route(Route::Img2Img, &st, &caller, arrived, b).await
}
