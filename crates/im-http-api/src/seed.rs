//! The seed routes: `/txt2txt`, `/txt2img`, `/img2img`, `/img2txt`. Each is extractor → call →
//! run: parse the body into its typed request, make the service's [`Call`], run it as the caller.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use im_engine::{Completion, Output};
use im_service::{Call, Caller, ChatKind, ErrorType, ServiceError, image_file};

use crate::error::{HttpError, QueuedErrors};
use crate::state::{AppState, Arrived, figure_headers};
use crate::stream::sse_response;
use crate::types::{
    self, Figures, ImageResult, Img2ImgRequest, Img2TxtRequest, TextResult, Txt2ImgRequest,
    Txt2TxtRequest,
};

/// The body, or the error for a body that could not be read (413 over the limit).
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ServiceError> {
    b.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::new(
                ErrorType::PayloadTooLarge,
                format!("the body is over the limit of {limit} bytes"),
            )
        } else {
            ServiceError::invalid("body", r.body_text())
        }
    })
}

fn figures(done: &Completion) -> Figures {
    let m = &done.meta;
    Figures {
        request_id: m.request_id.clone(),
        model: m.model.clone(),
        kind: m.kind.to_string(),
        queue_wait_ms: m.queue_wait.as_secs_f64() * 1000.0,
        processing_ms: m.processing.as_secs_f64() * 1000.0,
        attempts: m.attempts,
    }
}

/// An upstream's JSON answer as it came.
pub fn json_body(body: axum::body::Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// An upstream answer passed on as bytes, with its content type (when it is a valid header
/// value; else `application/octet-stream`).
pub fn raw_body(r: &localai_client::RawResponse) -> Response {
    let ct = axum::http::HeaderValue::from_str(&r.content_type).unwrap_or(
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    ([(axum::http::header::CONTENT_TYPE, ct)], r.body.clone()).into_response()
}

/// Run `call` as `caller` and shape the seed response (JSON with the figures, or SSE).
async fn run(
    st: &AppState,
    call: Call,
    caller: &Caller,
    arrived: Arrived,
) -> Result<Response, HttpError> {
    let done = st.service.run(call, caller).await?;
    let fig = figures(&done);
    let mut resp = match done.output {
        Output::Chat(ref c) => axum::Json(TextResult {
            figures: fig,
            content: c.content.clone(),
            completion: c.raw.clone(),
        })
        .into_response(),
        Output::Images(ref i) => axum::Json(ImageResult {
            figures: fig,
            images: i.images.clone(),
            created: i.created,
        })
        .into_response(),
        Output::Stream(_) => return Ok(sse_response(st, done, arrived)),
        Output::Json(ref j) => json_body(j.body.clone()),
        Output::Raw(ref r) => raw_body(r),
    };
    figure_headers(st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

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
    let r: Txt2TxtRequest = types::parse(&body(b, st.service.body_limit())?)?;
    let call = Call::chat(r.into_input(), ChatKind::Text, st.service.limits())?;
    run(&st, call, &caller, arrived).await
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
    let r: Img2TxtRequest = types::parse(&body(b, st.service.body_limit())?)?;
    let call = Call::chat(r.into_input(), ChatKind::Vision, st.service.limits())?;
    run(&st, call, &caller, arrived).await
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
    let r: Txt2ImgRequest = types::parse(&body(b, st.service.body_limit())?)?;
    let call = Call::image(r.into_params(), None, st.service.limits(), None)?;
    run(&st, call, &caller, arrived).await
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
    // Parsed and dropped before the request queues: only the call holds the payload.
    let call = {
        let body = body(b, st.service.body_limit())?;
        let r: Img2ImgRequest = types::parse(&body)?;
        let (params, file) = r.into_parts();
        params.validate(st.service.limits(), None)?;
        let file = image_file("file", file)?;
        Call::image(params, Some(file), st.service.limits(), None)?
    };
    run(&st, call, &caller, arrived).await
}
