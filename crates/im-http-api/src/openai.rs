//! OpenAI-compatible routes on the same queues: bodies stay exactly OpenAI-shaped; im's figures
//! travel as headers (`X-Request-Id`, `X-Queue-Wait-Ms`, `X-Processing-Ms`, `X-Attempts`).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use im_engine::Output;
use im_service::{
    Call, Caller, ChatInput, ChatKind, CompletionInput, EmbeddingInput, ImageParams, ServiceError,
    image_file,
};
use localai_client::ImageRequest;
use serde_json::{Value, json};

use crate::error::{ErrorBody, HttpError, QueuedErrors};
use crate::seed::body;
use crate::state::{AppState, Arrived, figure_headers};
use crate::stream::sse_response;
use crate::types;

pub(crate) fn object(b: &Bytes) -> Result<serde_json::Map<String, Value>, ServiceError> {
    match types::parse::<Value>(b)? {
        Value::Object(o) => Ok(o),
        _ => Err(ServiceError::invalid("body", "must be a JSON object")),
    }
}

pub(crate) fn string_field(
    o: &mut serde_json::Map<String, Value>,
    name: &str,
) -> Result<String, ServiceError> {
    match o.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ServiceError::invalid(name, "must not be empty")),
        Some(_) => Err(ServiceError::invalid(name, "must be a string")),
        None => Err(ServiceError::invalid(
            name,
            format!("missing field `{name}`"),
        )),
    }
}

pub(crate) fn opt<T: serde::de::DeserializeOwned>(
    o: &mut serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<T>, ServiceError> {
    match o.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ServiceError::invalid(name, e.to_string())),
    }
}

/// Refuse any field of `o` not in `allowed`, by name (nothing unknown is passed to a server that
/// may act on it).
pub(crate) fn refuse_unknown(
    o: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), ServiceError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ServiceError::invalid(
            unknown.as_str(),
            format!("unsupported field `{}`", im_engine::truncate(unknown, 64)),
        )),
        None => Ok(()),
    }
}

/// Run `call` as `caller` and answer OpenAI-shaped: the upstream's body as it came (nothing is
/// re-serialised), images as `{"created", "data": [{"b64_json"}]}`, or SSE; im's figures travel
/// as headers.
pub(crate) async fn respond(
    st: &AppState,
    call: Call,
    caller: &Caller,
    arrived: Arrived,
) -> Result<Response, HttpError> {
    let done = st.service.run(call, caller).await?;
    let mut resp = match &done.output {
        Output::Chat(c) => crate::seed::json_body(c.body.clone()),
        Output::Json(j) => crate::seed::json_body(j.body.clone()),
        Output::Images(i) => {
            let data: Vec<Value> = i.images.iter().map(|b| json!({"b64_json": b})).collect();
            axum::Json(json!({"created": i.created, "data": data})).into_response()
        }
        Output::Raw(r) => crate::seed::raw_body(r),
        Output::Stream(_) => return Ok(sse_response(st, done, arrived)),
    };
    figure_headers(st, resp.headers_mut(), &done, arrived);
    Ok(resp)
}

/// The chat fields passed to the upstream as they are, besides those im reads itself.
pub(crate) const PASS_THROUGH: &[&str] = &[
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

/// OpenAI chat completions: txt2txt, or img2txt when a message carries an image.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = crate::schema::ChatCompletionRequest, description = "An OpenAI chat completion request"),
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
    let call = chat_call(&st, &body(b, st.service.body_limit())?)?;
    respond(&st, call, &caller, arrived).await
}

/// An OpenAI chat body as the service's call (txt2txt, or img2txt with an image).
fn chat_call(st: &AppState, b: &Bytes) -> Result<Call, ServiceError> {
    let mut o = object(b)?;
    let model = string_field(&mut o, "model")?;
    // Moved out of the body as they are; the service checks each message.
    let messages = match o.remove("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => {
            return Err(ServiceError::invalid(
                "messages",
                "missing field `messages`",
            ));
        }
        Some(_) => {
            return Err(ServiceError::invalid(
                "messages",
                "must be a list of messages",
            ));
        }
    };
    let temperature: Option<f64> = opt(&mut o, "temperature")?;
    let max_tokens: Option<u32> = opt(&mut o, "max_tokens")?;
    let max_completion_tokens: Option<u32> = opt(&mut o, "max_completion_tokens")?;
    let n: Option<u32> = opt(&mut o, "n")?;
    let stream: bool = opt(&mut o, "stream")?.unwrap_or(false);
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    o.remove("stream_options");
    // Only known OpenAI / LocalAI sampling fields travel upstream; anything else is refused by
    // name rather than passed to a server that may act on it.
    refuse_unknown(&o, PASS_THROUGH)?;
    let input = ChatInput {
        model,
        messages,
        temperature,
        max_tokens,
        max_completion_tokens,
        n,
        stream,
        deadline_ms,
        extra: o,
    };
    Call::chat(input, ChatKind::Detect, st.service.limits())
}

/// The text-completion fields passed to the upstream as they are, besides those im reads itself.
pub(crate) const COMPLETION_PASS_THROUGH: &[&str] = &[
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

/// OpenAI text completions (txt2txt), passed to the upstream as they came once validated.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body(content = crate::schema::CompletionRequest, description = "An OpenAI completion request"),
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
    let call = completion_call(&body(b, st.service.body_limit())?, st.service.limits())?;
    respond(&st, call, &caller, arrived).await
}

fn completion_call(b: &Bytes, limits: &im_service::InputLimits) -> Result<Call, ServiceError> {
    let mut o = object(b)?;
    let model = string_field(&mut o, "model")?;
    let prompt = o
        .remove("prompt")
        .filter(|p| !p.is_null())
        .ok_or_else(|| ServiceError::invalid("prompt", "missing field `prompt`"))?;
    let temperature: Option<f64> = opt(&mut o, "temperature")?;
    let max_tokens: Option<u32> = opt(&mut o, "max_tokens")?;
    let n: Option<u32> = opt(&mut o, "n")?;
    let best_of: Option<u32> = opt(&mut o, "best_of")?;
    let stream: bool = opt(&mut o, "stream")?.unwrap_or(false);
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    o.remove("stream_options");
    refuse_unknown(&o, COMPLETION_PASS_THROUGH)?;
    Call::completion(
        CompletionInput {
            model,
            prompt,
            temperature,
            max_tokens,
            n,
            best_of,
            stream,
            deadline_ms,
            extra: o,
        },
        limits,
    )
}

/// The embedding fields passed to the upstream as they are.
pub(crate) const EMBEDDING_PASS_THROUGH: &[&str] = &["encoding_format", "dimensions", "user"];

/// OpenAI embeddings (the `embed` kind), passed to the upstream as they came once validated.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body(content = crate::schema::EmbeddingRequest, description = "An OpenAI embeddings request"),
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
    let call = embedding_call(&body(b, st.service.body_limit())?)?;
    respond(&st, call, &caller, arrived).await
}

fn embedding_call(b: &Bytes) -> Result<Call, ServiceError> {
    let mut o = object(b)?;
    let model = string_field(&mut o, "model")?;
    let input = o
        .remove("input")
        .filter(|i| !i.is_null())
        .ok_or_else(|| ServiceError::invalid("input", "missing field `input`"))?;
    let deadline_ms: Option<u64> = opt(&mut o, "deadline_ms")?;
    refuse_unknown(&o, EMBEDDING_PASS_THROUGH)?;
    Call::embedding(EmbeddingInput {
        model,
        input,
        deadline_ms,
        extra: o,
    })
}

/// An OpenAI image body as the service's call; `body` is dropped on return, only the call holds
/// the image.
fn images_call(st: &AppState, body: Bytes) -> Result<Call, ServiceError> {
    // Typed, with `file` borrowed from the body: the image payload is copied once.
    let r: ImagesBody = types::parse(&body)?;
    let model = r
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ServiceError::invalid("model", "missing field `model`"))?;
    let prompt = r
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ServiceError::invalid("prompt", "missing field `prompt`"))?;
    let size = r.size.unwrap_or_else(|| "512x512".to_owned());
    let (width, height) = parse_size(&size)
        .ok_or_else(|| ServiceError::invalid("size", format!("{size:?} is not \"WxH\"")))?;
    if let Some(f) = r.response_format.as_deref()
        && f != "b64_json"
    {
        return Err(ServiceError::invalid(
            "response_format",
            "only \"b64_json\" is supported (im does not host image files)",
        ));
    }
    // LocalAI's `step` wins over `steps`; both are checked.
    for (field, v) in [("step", r.step), ("steps", r.steps)] {
        if let Some(v) = v
            && !(1..=150).contains(&v)
        {
            return Err(ServiceError::invalid(
                field,
                format!("must be between 1 and 150, got {v}"),
            ));
        }
    }
    let params = ImageParams {
        req: ImageRequest {
            model,
            prompt,
            negative_prompt: r.negative_prompt,
            width,
            height,
            steps: r.step.or(r.steps),
            seed: r.seed,
            n: r.n,
            file: None,
        },
        deadline_ms: r.deadline_ms,
    };
    params.validate(st.service.limits(), Some("size"))?;
    let file = r.file.map(|f| image_file("file", f)).transpose()?;
    Call::image(params, file, st.service.limits(), Some("size"))
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

/// `"WxH"`: two decimal numbers (digits only) around an `x`.
pub(crate) fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !(digits(w) && digits(h)) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// OpenAI image generations: txt2img, or img2img when `file` is set.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body(content = crate::schema::ImageGenerationRequest, description = "An OpenAI image generation request (img2img with `file`)"),
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
    // The body is parsed and dropped before the request queues: only the call holds the payload.
    let call = images_call(&st, body(b, st.service.body_limit())?)?;
    respond(&st, call, &caller, arrived).await
}

/// The configured models, OpenAI-shaped, each with the kinds it serves.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{\"id\",\"object\":\"model\",\"kinds\"}]}`", body = Object),
              (status = 401, description = "No or a wrong API key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn models(State(st): State<AppState>) -> Response {
    axum::Json(st.service.models()).into_response()
}
