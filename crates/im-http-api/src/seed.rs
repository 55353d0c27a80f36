//! The seed routes: `/txt2txt`, `/txt2img`, `/img2img`, `/img2txt`.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use im_engine::{Completion, Job, Output, Payload};
use inference_queue::Kind;
use localai_client::{ChatRequest, ImageRequest};

use crate::error::{ApiError, QueuedErrors};
use crate::state::{AppState, Arrived, RequestId, figure_headers};
use crate::stream::sse_response;
use crate::types::{
    self, Figures, ImageResult, Img2ImgRequest, Img2TxtRequest, TextResult, Txt2ImgRequest,
    Txt2TxtRequest,
};

/// The body, or the error for a body that could not be read (413 over the limit).
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                crate::error::ErrorType::PayloadTooLarge,
                format!("the body is over the limit of {limit} bytes"),
            )
        } else {
            ApiError::invalid("body", r.body_text())
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

fn chat_job(
    rid: &RequestId,
    kind: Kind,
    req: ChatRequest,
    stream: bool,
    deadline_ms: Option<u64>,
) -> Job {
    Job {
        request_id: rid.0.clone(),
        kind,
        model: req.model.clone(),
        deadline: deadline_ms.map(Duration::from_millis),
        payload: Payload::Chat { req, stream },
    }
}

/// Run a job and shape the seed response.
async fn run(st: &AppState, job: Job, arrived: Arrived) -> Result<Response, ApiError> {
    let done = st.engine.submit(job).await?;
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
        Output::Stream(_) => {
            return Err(ApiError::new(
                crate::error::ErrorType::Internal,
                "unexpected stream",
            ));
        }
    };
    figure_headers(st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

fn chat_request(
    model: String,
    messages: Vec<types::Message>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
) -> ChatRequest {
    ChatRequest {
        model,
        messages: types::to_values(messages),
        temperature,
        max_tokens,
        extra: Default::default(),
    }
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
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: Txt2TxtRequest = types::parse(&body(b, st.body_limit)?)?;
    types::messages(&r.messages)?;
    types::temperature(r.temperature)?;
    types::deadline_ms(r.deadline_ms)?;
    let req = chat_request(r.model, r.messages, r.temperature, r.max_tokens);
    types::image_urls(&req.messages, &st.image_url_allowlist)?;
    let job = chat_job(&rid, Kind::Txt2Txt, req, r.stream, r.deadline_ms);
    if r.stream {
        let done = st.engine.submit(job).await?;
        return Ok(sse_response(&st, done, arrived));
    }
    run(&st, job, arrived).await
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
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: Img2TxtRequest = types::parse(&body(b, st.body_limit)?)?;
    types::messages(&r.messages)?;
    types::temperature(r.temperature)?;
    types::deadline_ms(r.deadline_ms)?;
    let req = chat_request(r.model, r.messages, r.temperature, r.max_tokens);
    types::image_urls(&req.messages, &st.image_url_allowlist)?;
    if !localai_client::vision::has_image(&req.messages) {
        return Err(types::needs_image());
    }
    run(
        &st,
        chat_job(&rid, Kind::Img2Txt, req, false, r.deadline_ms),
        arrived,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
fn image_job(
    rid: &RequestId,
    kind: Kind,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    (width, height): (u32, u32),
    (steps, seed, n): (Option<u32>, Option<i64>, Option<u32>),
    file: Option<Bytes>,
    deadline_ms: Option<u64>,
) -> Job {
    let req = ImageRequest {
        model: model.clone(),
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        seed,
        n,
        file,
    };
    Job {
        request_id: rid.0.clone(),
        kind,
        model,
        deadline: deadline_ms.map(Duration::from_millis),
        payload: Payload::Images(req),
    }
}

fn check_image_fields(
    st: &AppState,
    prompt: &str,
    width: u32,
    height: u32,
    steps: Option<u32>,
    n: Option<u32>,
) -> Result<(), ApiError> {
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    types::side("width", width, st.max_image_side)?;
    types::side("height", height, st.max_image_side)?;
    types::steps_n(steps, n)
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
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: Txt2ImgRequest = types::parse(&body(b, st.body_limit)?)?;
    check_image_fields(&st, &r.prompt, r.width, r.height, r.steps, r.n)?;
    types::deadline_ms(r.deadline_ms)?;
    let job = image_job(
        &rid,
        Kind::Txt2Img,
        r.model,
        r.prompt,
        r.negative_prompt,
        (r.width, r.height),
        (r.steps, r.seed, r.n),
        None,
        r.deadline_ms,
    );
    run(&st, job, arrived).await
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
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Parsed and dropped before the request queues: only the job holds the payload.
    let job = {
        let body = body(b, st.body_limit)?;
        let r: Img2ImgRequest = types::parse(&body)?;
        check_image_fields(&st, &r.prompt, r.width, r.height, r.steps, r.n)?;
        types::deadline_ms(r.deadline_ms)?;
        let file = types::image_file("file", r.file)?;
        let size = (r.width, r.height);
        image_job(
            &rid,
            Kind::Img2Img,
            r.model,
            r.prompt,
            r.negative_prompt,
            size,
            (r.steps, r.seed, r.n),
            Some(file),
            r.deadline_ms,
        )
    };
    run(&st, job, arrived).await
}
