//! OpenAI-compatible routes on the same queues: bodies stay exactly OpenAI-shaped; im's figures
//! travel as headers (`X-Request-Id`, `X-Queue-Wait-Ms`, `X-Processing-Ms`, `X-Attempts`).

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use im_engine::{Job, Output, Payload};
use inference_queue::Kind;
use localai_client::{ChatRequest, ImageRequest};
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorBody, ErrorType, QueuedErrors};
use crate::seed::body;
use crate::state::{AppState, Arrived, RequestId, figure_headers};
use crate::stream::sse_response;
use crate::types::{self, Message};

fn object(b: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match types::parse::<Value>(b)? {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::invalid("body", "must be a JSON object")),
    }
}

fn string_field(o: &mut serde_json::Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match o.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::invalid(name, "must not be empty")),
        Some(_) => Err(ApiError::invalid(name, "must be a string")),
        None => Err(ApiError::invalid(name, format!("missing field `{name}`"))),
    }
}

fn opt<T: serde::de::DeserializeOwned>(
    o: &mut serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match o.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ApiError::invalid(name, e.to_string())),
    }
}

/// The chat fields passed to the upstream as they are, besides those im reads itself.
const PASS_THROUGH: &[&str] = &[
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "stop",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
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

/// OpenAI chat completions: txt2txt, or img2txt when a message carries an image.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = Object, description = "An OpenAI chat completion request (`model`, `messages`, `stream`, `temperature`, ...)"),
    responses(
        (status = 200, description = "An OpenAI `chat.completion` (or SSE `chat.completion.chunk`s)", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn chat_completions(
    State(st): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut o = object(&body(b, st.body_limit)?)?;
    let model = string_field(&mut o, "model")?;
    let messages: Vec<Message> = opt(&mut o, "messages")?
        .ok_or_else(|| ApiError::invalid("messages", "missing field `messages`"))?;
    types::messages(&messages)?;
    let temperature: Option<f64> = opt(&mut o, "temperature")?;
    types::temperature(temperature)?;
    let max_tokens: Option<u32> = opt(&mut o, "max_tokens")?;
    let stream: bool = opt(&mut o, "stream")?.unwrap_or(false);
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    types::deadline_ms(deadline_ms)?;
    o.remove("stream_options");
    // Only known OpenAI / LocalAI sampling fields travel upstream; anything else is refused by
    // name rather than passed to a server that may act on it.
    if let Some(unknown) = o.keys().find(|k| !PASS_THROUGH.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            unknown.as_str(),
            format!("unsupported field `{}`", im_engine::truncate(unknown, 64)),
        ));
    }
    let req = ChatRequest {
        model: model.clone(),
        messages: types::to_values(messages),
        temperature,
        max_tokens,
        extra: o,
    };
    types::image_urls(&req.messages, &st.image_url_allowlist)?;
    let kind = if localai_client::vision::has_image(&req.messages) {
        Kind::Img2Txt
    } else {
        Kind::Txt2Txt
    };
    let job = Job {
        request_id: rid.0,
        kind,
        model,
        deadline: deadline_ms.map(Duration::from_millis),
        payload: Payload::Chat { req, stream },
    };
    let done = st.engine.submit(job).await?;
    if stream {
        return Ok(sse_response(&st, done, arrived));
    }
    let mut resp = match &done.output {
        Output::Chat(c) => axum::Json(c.raw.clone()).into_response(),
        _ => return Err(ApiError::new(ErrorType::Internal, "unexpected output")),
    };
    figure_headers(&st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

/// Parse an OpenAI image request into a job; `body` is dropped on return.
fn images_job(st: &AppState, rid: RequestId, body: Bytes) -> Result<Job, ApiError> {
    // Typed, with `file` borrowed from the body: the image payload is held once.
    let r: ImagesBody = types::parse(&body)?;
    let model = r
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("model", "missing field `model`"))?;
    let prompt = r
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::invalid("prompt", "missing field `prompt`"))?;
    let size = r.size.unwrap_or_else(|| "512x512".to_owned());
    let (width, height) = parse_size(&size)
        .ok_or_else(|| ApiError::invalid("size", format!("{size:?} is not \"WxH\"")))?;
    types::side("size", width, st.max_image_side)?;
    types::side("size", height, st.max_image_side)?;
    let steps = r.step.or(r.steps);
    types::steps_n(steps, r.n)?;
    types::deadline_ms(r.deadline_ms)?;
    if let Some(f) = r.response_format.as_deref()
        && f != "b64_json"
    {
        return Err(ApiError::invalid(
            "response_format",
            "only \"b64_json\" is supported (im does not host image files)",
        ));
    }
    let file = r.file.map(|f| types::image_file("file", f)).transpose()?;
    let kind = if file.is_some() {
        Kind::Img2Img
    } else {
        Kind::Txt2Img
    };
    let req = ImageRequest {
        model: model.clone(),
        prompt,
        negative_prompt: r.negative_prompt,
        width,
        height,
        steps,
        seed: r.seed,
        n: r.n,
        file,
    };
    Ok(Job {
        request_id: rid.0,
        kind,
        model,
        deadline: r.deadline_ms.map(Duration::from_millis),
        payload: Payload::Images(req),
    })
}

/// The OpenAI image request (unknown OpenAI fields such as `quality` or `user` are ignored).
#[derive(serde::Deserialize)]
struct ImagesBody<'a> {
    model: Option<String>,
    prompt: Option<String>,
    size: Option<String>,
    n: Option<u32>,
    response_format: Option<String>,
    #[serde(borrow)]
    file: Option<std::borrow::Cow<'a, str>>,
    negative_prompt: Option<String>,
    step: Option<u32>,
    steps: Option<u32>,
    seed: Option<i64>,
    deadline_ms: Option<u64>,
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}

/// OpenAI image generations: txt2img, or img2img when `file` is set.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body(content = Object, description = "`model`, `prompt`, `size` (\"WxH\"), `n`, `response_format` (b64_json), optional `file` (base64, img2img), `negative_prompt`, `step`, `seed`"),
    responses(
        (status = 200, description = "`{\"created\", \"data\": [{\"b64_json\"}]}`", body = Object),
        QueuedErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn images_generations(
    State(st): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(arrived): Extension<Arrived>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // The body is parsed and dropped before the request queues: only the job holds the payload.
    let job = images_job(&st, rid, body(b, st.body_limit)?)?;
    let done = st.engine.submit(job).await?;
    let mut resp = match &done.output {
        Output::Images(i) => {
            let data: Vec<Value> = i.images.iter().map(|b| json!({"b64_json": b})).collect();
            axum::Json(json!({"created": i.created, "data": data})).into_response()
        }
        _ => return Err(ApiError::new(ErrorType::Internal, "unexpected output")),
    };
    figure_headers(&st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

/// The configured models, OpenAI-shaped, each with the kinds it serves.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{\"id\",\"object\":\"model\",\"kinds\"}]}`", body = Object),
              (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn models(State(st): State<AppState>) -> Response {
    let data: Vec<Value> = st
        .engine
        .config()
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "localai", "kinds": m.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>()}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
