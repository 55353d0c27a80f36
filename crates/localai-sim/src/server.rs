//! The HTTP surface: LocalAI's routes (with and without `/v1`), its error envelope, and `/sim/*`.

// Handlers return a ready error `Response` as their `Err`: it is the value sent, not propagated.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{SimConfig, SimMode, StreamErrorDialect};
use crate::control::{capabilities, load, models, props, reset, shutdown, stats, system};
use crate::image;
use crate::state::SimState;
use crate::{audio, gallery, retrieval};

/// The simulator's router over `state`.
pub fn router(state: SimState) -> Router {
    let limit = state.cfg.body_limit;
    let mode = state.cfg.mode;
    let r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(retrieval::embeddings))
        .route("/embeddings", post(retrieval::embeddings))
        .route("/v1/rerank", post(retrieval::rerank))
        .route("/rerank", post(retrieval::rerank))
        .route("/v1/audio/speech", post(audio::speech))
        .route("/audio/speech", post(audio::speech))
        .route("/v1/audio/transcriptions", post(audio::transcriptions))
        .route("/audio/transcriptions", post(audio::transcriptions))
        .route("/completions", post(completions))
        .route("/v1/images/generations", post(images))
        .route("/images/generations", post(images))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/sim/stats", get(stats))
        .route("/sim/reset", post(reset));
    // Each mode serves only the routes its server has.
    let r = match mode {
        SimMode::LocalAi => r
            .route("/tts", post(audio::speech))
            .route("/v1/models/capabilities", get(capabilities))
            .route("/models/available", get(gallery::available))
            .route("/models/apply", post(gallery::apply))
            .route("/models/delete/{name}", post(gallery::delete))
            .route("/models/jobs/{uuid}", get(gallery::job))
            .route("/system", get(system))
            .route("/backend/shutdown", post(shutdown))
            .route("/backend/load", post(load))
            .route("/readyz", get(|| async { "OK" }))
            .route("/healthz", get(|| async { "OK" })),
        SimMode::LlamaCppRouter => r
            .route(
                "/health",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route("/props", get(props)),
        SimMode::LlamaCppPython => r,
    };
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "route not found", "not_found") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_headers,
        ))
        .with_state(state)
}

/// Refuse a write whose fencing token (`x-im-fence`) is older than one seen before (see
/// [`SimState::admit_fence`]); keep the `traceparent` a request carries (see
/// [`SimState::traceparents`]).
async fn check_headers(
    State(state): State<SimState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The epoch of a token, signed (`<epoch>.<signature>`, not checked here) or not. A read
    // (`GET`, `HEAD`) with an older token passes, as through im-fence: it changes nothing.
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if let Some(token) = req
        .headers()
        .get("x-im-fence")
        .and_then(|v| v.to_str().ok()?.split('.').next()?.parse::<u64>().ok())
        && let Err(newest) = state.admit_fence(token)
        && !read
    {
        let mut r = error(
            StatusCode::CONFLICT,
            &format!("stale fencing token {token}: a scheduler with token {newest} took over"),
            "stale_fence",
        );
        r.headers_mut()
            .insert("x-im-fence-highest", axum::http::HeaderValue::from(newest));
        return r;
    }
    if let Some(v) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        state.record_traceparent(v);
    }
    next.run(req).await
}

/// A running simulator on a loopback port. Stops when dropped.
pub struct SimServer {
    addr: SocketAddr,
    state: SimState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimServer {
    /// Serve `cfg` on `addr` (use `127.0.0.1:0` for a free port).
    pub async fn spawn(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = SimState::new(cfg);
        let app = router(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(SimServer {
            addr,
            state,
            stop: Some(tx),
        })
    }

    /// Serve on `127.0.0.1:0`.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimServer> {
        SimServer::spawn(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its state (counters, resident models).
    pub fn state(&self) -> &SimState {
        &self.state
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// LocalAI's error envelope.
pub fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    (status, axum::Json(body)).into_response()
}

/// llama-cpp-python's answer to a body it cannot handle: a 500 whose message is a traceback.
fn traceback(what: &str) -> Response {
    let msg = format!(
        "Traceback (most recent call last):\n  File \"/usr/local/lib/python3.11/site-packages/llama_cpp/server/app.py\", line 412, in create_chat_completion\n    body = CreateChatCompletionRequest(**data)\npydantic_core._pydantic_core.ValidationError: 1 validation error for request: {what} (worker at 10.0.3.7:8000)"
    );
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &msg,
        "InternalServerError",
    )
}

fn parse_in(mode: SimMode, body: &Bytes) -> Result<Value, Response> {
    match parse(body) {
        Err(_) if mode == SimMode::LlamaCppPython => Err(traceback("invalid JSON body")),
        other => other,
    }
}

fn parse(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {e}"),
                "invalid_request_error",
            )
        })
        .and_then(|v| {
            if v.is_object() {
                Ok(v)
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    "the body must be a JSON object",
                    "invalid_request_error",
                ))
            }
        })
}

pub(crate) fn model_of<'a>(
    state: &'a SimState,
    body: &Value,
) -> Result<(usize, &'a crate::config::ModelCfg), Response> {
    let name = body.get("model").and_then(Value::as_str);
    if state.cfg.mode == SimMode::LlamaCppPython {
        // One model behind every name: unknown (or missing) names get the default model.
        return Ok(state
            .model(name.unwrap_or(""))
            .unwrap_or((0, &state.cfg.models[0])));
    }
    let Some(name) = name else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`model` is required",
            "invalid_request_error",
        ));
    };
    state.model(name).ok_or_else(|| {
        state.count_unknown_model();
        error(
            StatusCode::NOT_FOUND,
            &format!("model {name:?} not found"),
            "not_found",
        )
    })
}

/// A fault drawn for one request.
pub(crate) enum Fault {
    E500,
    E503,
    Drop,
    Slow,
    StreamError,
    StreamStall,
}

fn draw_fault(state: &SimState, streaming: bool) -> Option<Fault> {
    let f = &state.cfg.faults;
    let r = state.random();
    let mut acc = 0.0;
    let classes = [
        (f.error_500, Fault::E500, "error_500"),
        (f.error_503, Fault::E503, "error_503"),
        (f.drop_connection, Fault::Drop, "drop_connection"),
        (f.slow, Fault::Slow, "slow"),
        (
            if streaming { f.stream_error } else { 0.0 },
            Fault::StreamError,
            "stream_error",
        ),
        (
            if streaming { f.stream_stall } else { 0.0 },
            Fault::StreamStall,
            "stream_stall",
        ),
    ];
    for (rate, fault, name) in classes {
        acc += rate;
        if r < acc {
            state.count_fault(name);
            return Some(fault);
        }
    }
    None
}

/// Answer an injected fault that ends the request before any work, if it is one.
fn early_fault(state: &SimState, fault: &Option<Fault>) -> Option<Response> {
    match fault {
        Some(Fault::E500) => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated backend failure",
            "server_error",
        )),
        Some(Fault::E503) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "simulated overload: try again later",
                "server_error",
            );
            let secs = state.cfg.faults.retry_after_secs.to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Some(r)
        }
        Some(Fault::Drop) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"id\":\"cut")),
                Err(std::io::Error::other("simulated dropped connection")),
            ];
            let mut r = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Some(r)
        }
        _ => None,
    }
}

/// The body as a JSON object and the index of the model it names.
pub(crate) fn request(state: &SimState, body: &Bytes) -> Result<(Value, usize), Response> {
    let body = parse_in(state.cfg.mode, body)?;
    let (idx, _) = model_of(state, &body)?;
    Ok((body, idx))
}

/// What every inference request does before its work, as LocalAI would: count it, maybe fail it
/// (an injected fault), take a slot of its model (loading the model first if needed), maybe
/// stall (a slow fault). Returns the held slot and the fault drawn (a stream error happens later).
pub(crate) async fn begin(
    state: &SimState,
    idx: usize,
    streaming: bool,
) -> Result<(crate::state::Slot, Option<Fault>), Response> {
    state.count_request(&state.cfg.models[idx].name);
    let fault = draw_fault(state, streaming);
    if let Some(r) = early_fault(state, &fault) {
        return Err(r);
    }
    let Some(slot) = state.acquire(idx, true).await else {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no slot",
            "server_error",
        ));
    };
    if matches!(fault, Some(Fault::Slow)) {
        sleep(state.cfg.scaled(state.cfg.faults.slow_ms as f64)).await;
    }
    Ok((slot, fault))
}

pub(crate) async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a message list carries an image in the one form LocalAI accepts (a data URI in an
/// `image_url` part). Other forms are silently dropped, as LocalAI does.
fn image_in(messages: &[Value]) -> Option<usize> {
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .find_map(|part| {
            let url = part.get("image_url")?.get("url")?.as_str()?;
            let b64 = url.strip_prefix("data:")?.split_once(";base64,")?.1;
            B64.decode(b64).ok().map(|b| b.len())
        })
}

fn last_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find_map(|m| match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => parts
                .iter()
                .find_map(|p| p.get("text").and_then(Value::as_str).map(str::to_owned)),
            _ => None,
        })
        .unwrap_or_default()
}

async fn chat(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    let empty = Vec::new();
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m,
        // llama-cpp-python answers a missing `messages` with 200; a wrong type with a traceback.
        None if state.cfg.mode == SimMode::LlamaCppPython => &empty,
        Some(_) if state.cfg.mode == SimMode::LlamaCppPython => {
            return traceback("messages: Input should be a valid list");
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`messages` must be a list",
                "invalid_request_error",
            );
        }
    };
    if let Some(r) = too_long(&state, messages) {
        return r;
    }
    let image = image_in(messages);
    let kind = if image.is_some() {
        "img2txt"
    } else {
        "txt2txt"
    };
    if !(model.serves(kind) || kind == "txt2txt" && model.serves("img2txt")) {
        return not_served(&state, &model.name, kind);
    }
    let streaming = wants_stream(&body);
    let (slot, fault) = match begin(&state, idx, streaming).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let tokens = max_tokens(&body);
    let reuse = body
        .get("cache_prompt")
        .and_then(Value::as_bool)
        .unwrap_or(state.cfg.cache_prompt_by_default);
    let cached = state
        .prefill(idx, &crate::prompt_cache::rendered(messages), reuse)
        .await;
    let prompt = last_text(messages);
    let seen = match image {
        Some(n) => format!("I see an image of {n} bytes. "),
        None if model.serves("img2txt") => "I see no image. ".to_owned(),
        None => String::new(),
    };
    let reply = crate::structured::answer(&body, &prompt).unwrap_or_else(|| {
        format!(
            "{seen}Simulated reply from {} to: {}",
            model.name,
            prompt.chars().take(60).collect::<String>()
        )
    });
    let words: Vec<String> = reply.split(' ').map(str::to_owned).collect();
    let per_token = state.cfg.scaled(model.per_token_ms);
    let name = model.name.clone();
    let id = format!("chatcmpl-sim-{}", (state.random() * 1e12) as u64);
    let created = unix_now();
    if !streaming {
        sleep(per_token * tokens as u32).await;
        drop(slot);
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": tokens,
                      "total_tokens": prompt.len() / 4 + tokens}
        });
        if state.cfg.prompt_cache_tokens > 0 {
            body["usage"]["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
        return axum::Json(body).into_response();
    }
    let dialect = state.cfg.stream_error_dialect;
    let stream_error = matches!(fault, Some(Fault::StreamError));
    let stall = matches!(fault, Some(Fault::StreamStall))
        .then(|| state.cfg.scaled(state.cfg.faults.stall_ms as f64));
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let _slot = slot;
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string()
        };
        let send = |ev: Event| {
            let tx = tx.clone();
            async move { tx.send(ev).await.is_ok() }
        };
        if !send(Event::default().data(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )))
        .await
        {
            return;
        }
        let steps = tokens.max(words.len());
        for (i, w) in words.iter().enumerate() {
            sleep(per_token * (steps / words.len()).max(1) as u32).await;
            if let (Some(d), 1) = (stall, i) {
                sleep(d).await;
            }
            if stream_error && i == 2 {
                let ev = match dialect {
                    StreamErrorDialect::V4 => Event::default()
                        .data(json!({"error": {"code": 500, "message": "simulated failure inside the stream", "type": "server_error"}}).to_string()),
                    StreamErrorDialect::V3 => Event::default()
                        .data(chunk(json!({"content": "Internal error: simulated failure inside the stream"}), Value::Null)),
                };
                send(ev).await;
                if dialect == StreamErrorDialect::V3 {
                    send(Event::default().data(chunk(json!({}), json!("stop")))).await;
                    send(Event::default().data("[DONE]")).await;
                }
                return;
            }
            let text = if i == 0 { w.clone() } else { format!(" {w}") };
            if !send(Event::default().data(chunk(json!({"content": text}), Value::Null))).await {
                return;
            }
        }
        send(Event::default().data(chunk(json!({}), json!("stop")))).await;
        send(Event::default().data("[DONE]")).await;
    });
    let stream = tokio_stream_from(rx).map(Ok::<_, Infallible>);
    Sse::new(stream).into_response()
}

/// LocalAI's answer to a model asked for a kind it does not serve.
/// The answer to `kind` of work a model does not do: llama-server says 501
/// `not_supported_error` ("This server does not support embeddings. Start it with
/// `--embeddings`"); LocalAI and llama-cpp-python a 400.
pub(crate) fn not_served(state: &SimState, model: &str, kind: &str) -> Response {
    state.count_kind_not_served();
    if state.cfg.mode == SimMode::LlamaCppRouter {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            &format!("This server does not support {kind} for model {model:?}"),
            "not_supported_error",
        );
    }
    error(
        StatusCode::BAD_REQUEST,
        &format!("model {model:?} does not serve {kind}"),
        "invalid_request_error",
    )
}

/// `max_tokens` of a body, 16 when absent, within 1..=256.
fn max_tokens(body: &Value) -> usize {
    body.get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .clamp(1, 256) as usize
}

/// Whether a body asks for a stream.
fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// `POST /v1/completions`: a text completion of the prompt, plain or streamed.
async fn completions(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    if !model.serves("txt2txt") {
        return not_served(&state, &model.name, "txt2txt");
    }
    let prompt = match body.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`prompt` must be a string or a list of strings",
                "invalid_request_error",
            );
        }
    };
    let streaming = wants_stream(&body);
    let (slot, _) = match begin(&state, idx, streaming).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let tokens = max_tokens(&body);
    let reply = format!(
        "Simulated completion from {} of: {}",
        model.name,
        prompt.chars().take(60).collect::<String>()
    );
    let per_token = state.cfg.scaled(model.per_token_ms);
    let (name, created) = (model.name.clone(), unix_now());
    let id = format!("cmpl-sim-{}", (state.random() * 1e12) as u64);
    if !streaming {
        sleep(per_token * tokens as u32).await;
        drop(slot);
        return axum::Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": name,
            "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": tokens,
                      "total_tokens": prompt.len() / 4 + tokens}
        }))
        .into_response();
    }
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let _slot = slot;
        let chunk = |text: &str, finish: Value| {
            json!({"id": id, "object": "text_completion", "created": created, "model": name,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish}]})
            .to_string()
        };
        for (i, w) in reply.split(' ').enumerate() {
            sleep(per_token).await;
            let text = if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            };
            if tx
                .send(Event::default().data(chunk(&text, Value::Null)))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx
            .send(Event::default().data(chunk("", json!("stop"))))
            .await;
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    Sse::new(tokio_stream_from(rx).map(Ok::<_, Infallible>)).into_response()
}

fn tokio_stream_from(rx: mpsc::Receiver<Event>) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
    )
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?);
    (w > 0 && h > 0 && w <= 4096 && h <= 4096).then_some((w, h))
}

async fn images(State(state): State<SimState>, body: Bytes) -> Response {
    let (body, idx) = match request(&state, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = &state.cfg.models[idx];
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`prompt` is required",
            "invalid_request_error",
        );
    };
    let size = body
        .get("size")
        .and_then(Value::as_str)
        .unwrap_or("512x512");
    let Some((w, h)) = parse_size(size) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("invalid size {size:?}: expected WxH"),
            "invalid_request_error",
        );
    };
    let kind = match body.get("file") {
        Some(Value::String(f)) => {
            if B64.decode(f).is_err() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "`file` is not valid base64",
                    "invalid_request_error",
                );
            }
            "img2img"
        }
        Some(Value::Null) | None => "txt2img",
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`file` must be a base64 string",
                "invalid_request_error",
            );
        }
    };
    if !model.serves(kind) {
        return not_served(&state, &model.name, kind);
    }
    let (slot, _) = match begin(&state, idx, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let steps = body
        .get("step")
        .and_then(Value::as_u64)
        .unwrap_or(20)
        .clamp(1, 150);
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 4);
    sleep(state.cfg.scaled(model.per_step_ms * (steps * n) as f64)).await;
    drop(slot);
    let cap = state.cfg.max_image_side;
    let seed = body
        .get("seed")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0)
        .map_or_else(|| image::hash(prompt), |s| s as u64);
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"b64_json": B64.encode(image::png(w.min(cap), h.min(cap), seed.wrapping_add(i)))}))
        .collect();
    axum::Json(json!({"created": unix_now(), "data": data})).into_response()
}

/// Too long a prompt, refused as the mode's server does.
fn too_long(state: &SimState, messages: &[Value]) -> Option<Response> {
    let chars: usize = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.len(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            _ => 0,
        })
        .sum();
    let tokens = chars / 4;
    let n_ctx = state.cfg.context_tokens;
    if tokens <= n_ctx {
        return None;
    }
    let body = match state.cfg.mode {
        SimMode::LlamaCppPython => json!({"error": {
            "message": format!("Requested tokens ({tokens}) exceed context window of {n_ctx}"),
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        SimMode::LlamaCppRouter => json!({"error": {"code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error", "n_prompt_tokens": tokens, "n_ctx": n_ctx}}),
        SimMode::LocalAi => json!({"error": {"code": 400,
            "message": format!("the request exceeds the available context size ({tokens} > {n_ctx} tokens)"),
            "type": "invalid_request_error"}}),
    };
    Some((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
}
