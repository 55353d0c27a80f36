//! The client: chat (plain and streaming), images, lifecycle and discovery calls.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::FutureExt;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Value, json};

use crate::JsonBody;
use crate::error::{ClientError, parse_retry_after, summarize};
use crate::sse::SseParser;
use crate::vision::normalize_messages;

mod control;
mod exchange;
mod message;
mod types;

use exchange::{Outgoing, Response};

pub use message::{Content, Message, MessageInput, NotAMessage, Role};
pub use types::*;

/// LocalAI v3.5-v4.0 answer a failure inside the model with status 200 and this text in the
/// message: looked for in a chat answer's bytes.
static INTERNAL_ERROR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("Internal error:"));

/// Timeouts and credentials of a [`LocalAiClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://localhost:8080`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer` when set.
    pub api_key: Option<String>,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Chat: limit for the response head (a first request may include a model load).
    pub chat_first_byte: Duration,
    /// Chat: limit for the whole non-streaming call.
    pub chat_total: Duration,
    /// Images: limit for the response head.
    pub image_first_byte: Duration,
    /// Images: limit for the whole call.
    pub image_total: Duration,
    /// Lifecycle and discovery calls.
    pub control_total: Duration,
    /// Streams: the longest silence between two chunks once the first arrived.
    pub stream_idle: Duration,
    /// The largest response body read (JSON answers, images); larger is a protocol error.
    pub max_body: usize,
    /// Adds headers to every request, at the time it is built (im writes the caller's trace
    /// context here). `None`: nothing is added.
    pub header_hook: Option<HeaderHook>,
    /// Told the highest fencing epoch a gate has seen when it refuses a call as stale
    /// (`409` with `x-im-fence-highest`): the scheduler raises its epoch above it.
    pub fence_hook: Option<FenceHook>,
}

/// A function told the highest epoch a fencing gate has seen (see [`ClientConfig::fence_hook`]).
#[derive(Clone)]
pub struct FenceHook(std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl FenceHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(u64) + Send + Sync + 'static) -> FenceHook {
        FenceHook(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for FenceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FenceHook")
    }
}

/// The header a fencing gate's refusal carries the highest epoch it has seen in.
pub const FENCE_HIGHEST: &str = "x-im-fence-highest";

/// A function that adds headers to an upstream request (trace context, for instance); it runs
/// in the task making the call, so it sees that task's current `tracing` span.
#[derive(Clone)]
pub struct HeaderHook(std::sync::Arc<dyn Fn(&mut reqwest::header::HeaderMap) + Send + Sync>);

impl HeaderHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(&mut reqwest::header::HeaderMap) + Send + Sync + 'static) -> HeaderHook {
        HeaderHook(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for HeaderHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderHook")
    }
}

/// The largest error body read from an upstream (the rest is not read).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The largest single event accepted inside a stream.
pub const MAX_STREAM_EVENT: usize = 8 * 1024 * 1024;

impl ClientConfig {
    /// Defaults for `base_url`: connect 5 s; chat 300 s to first byte, 600 s total (streams too),
    /// 120 s of silence inside a stream; images 600 s and 900 s (loads of diffusion models are
    /// slow, and a slow load is not a failure); control calls 60 s; bodies up to 256 MiB.
    pub fn new(base_url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            chat_first_byte: Duration::from_secs(300),
            chat_total: Duration::from_secs(600),
            image_first_byte: Duration::from_secs(600),
            image_total: Duration::from_secs(900),
            control_total: Duration::from_secs(60),
            stream_idle: Duration::from_secs(120),
            max_body: 256 * 1024 * 1024,
            header_hook: None,
            fence_hook: None,
        }
    }
}

/// What is sent upstream for a chat.
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: std::borrow::Cow<'a, [crate::Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, Value>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_prompt: Option<bool>,
}

/// An OpenAI-shaped body as the caller gave it, with `cache_prompt` added where
/// [`LocalAiClient::cache_prompt`] says.
#[derive(Serialize)]
struct PassedBody<'a> {
    #[serde(flatten)]
    body: &'a serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_prompt: Option<bool>,
}

/// A typed client for LocalAI's API.
#[derive(Clone, Debug)]
pub struct LocalAiClient {
    http: reqwest::Client,
    /// The hot path's connections, for a plain `http://` upstream.
    pool: Option<std::sync::Arc<crate::pool::Pool>>,
    cfg: ClientConfig,
    urls: Urls,
    /// Set once the server showed itself a llama.cpp server (its `/health` answer, its
    /// `/props`): shared by the client's clones.
    llama_cpp: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The URLs of the hot paths, parsed once.
#[derive(Clone, Debug)]
struct Urls {
    chat: reqwest::Url,
    images: reqwest::Url,
    completions: reqwest::Url,
    embeddings: reqwest::Url,
}

impl LocalAiClient {
    /// A client for `cfg`.
    pub fn new(cfg: ClientConfig) -> Result<LocalAiClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let parse = |path: &str| {
            reqwest::Url::parse(&format!("{}{path}", cfg.base_url))
                .map_err(|e| ClientError::Connect(format!("invalid upstream URL: {e}")))
        };
        let urls = Urls {
            chat: parse("/v1/chat/completions")?,
            images: parse("/v1/images/generations")?,
            completions: parse("/v1/completions")?,
            embeddings: parse("/v1/embeddings")?,
        };
        let pool =
            crate::pool::Pool::new(&cfg.base_url, cfg.api_key.as_deref(), cfg.connect_timeout);
        Ok(LocalAiClient {
            http,
            pool,
            cfg,
            urls,
            llama_cpp: Default::default(),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.cfg.base_url
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Whether the upstream showed itself a llama.cpp server (`llama-server`, its router).
    pub fn is_llama_cpp(&self) -> bool {
        self.llama_cpp.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The upstream is a llama.cpp server.
    fn learned_llama_cpp(&self) {
        self.llama_cpp
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `cache_prompt` to add to a prompt-carrying body (`extra`: what the caller sent besides
    /// the typed fields): `true` for a llama.cpp server where the caller did not say, so that the
    /// server keeps the prompt's KV cache for the next request sharing its beginning (what
    /// prefix-aware placement counts on; llama-server before late 2024 defaulted to `false`).
    /// Nothing for other servers, which do not know the field.
    fn cache_prompt(&self, extra: &serde_json::Map<String, Value>) -> Option<bool> {
        (self.is_llama_cpp() && !extra.contains_key("cache_prompt")).then_some(true)
    }

    /// `body` for `path`, with `cache_prompt` where [`Self::cache_prompt`] says (prompts only:
    /// chats and text completions).
    fn passed<'a>(&self, path: &str, body: &'a serde_json::Map<String, Value>) -> PassedBody<'a> {
        let prompted = matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/completion" | "/completions"
        );
        PassedBody {
            body,
            cache_prompt: if prompted {
                self.cache_prompt(body)
            } else {
                None
            },
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        // The hot paths use URLs parsed once, at construction.
        let url = match path {
            "/v1/chat/completions" => self.urls.chat.clone(),
            "/v1/images/generations" => self.urls.images.clone(),
            "/v1/completions" => self.urls.completions.clone(),
            "/v1/embeddings" => self.urls.embeddings.clone(),
            _ => match reqwest::Url::parse(&format!("{}{path}", self.cfg.base_url)) {
                Ok(u) => u,
                Err(_) => self.urls.chat.clone(),
            },
        };
        self.decorate(self.http.post(url))
    }

    /// `POST path` with `body` as JSON: on the pool when there is one ([`Self::send`] decides).
    fn post_json<'a>(
        &self,
        path: &'a str,
        body: &impl Serialize,
    ) -> Result<Outgoing<'a>, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot serialise the request: {e}")))?;
        Ok(Outgoing::Json {
            path,
            body: Bytes::from(bytes),
        })
    }

    /// The header hook's headers, when there is a hook.
    fn hooked_headers(&self) -> Option<reqwest::header::HeaderMap> {
        self.cfg.header_hook.as_ref().map(|hook| {
            let mut headers = reqwest::header::HeaderMap::new();
            (hook.0)(&mut headers);
            headers
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.decorate(self.http.get(format!("{}{path}", self.cfg.base_url)))
    }

    /// What every request carries: the key, and the hook's headers.
    fn decorate(&self, mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(k) = &self.cfg.api_key {
            rb = rb.bearer_auth(k);
        }
        if let Some(headers) = self.hooked_headers() {
            rb = rb.headers(headers);
        }
        rb
    }

    /// Send and wait for the response head within `first_byte`; turn error statuses into errors
    /// (reading at most [`MAX_ERROR_BODY`] bytes of the error body, within `first_byte`).
    async fn send(&self, out: Outgoing<'_>, first_byte: Duration) -> Result<Response, ClientError> {
        let sent = async {
            match (out, &self.pool) {
                (Outgoing::Json { path, body }, Some(pool)) => pool
                    .post_json(path, body, self.hooked_headers().as_ref())
                    .await
                    .map(Response::pooled),
                (Outgoing::Json { path, body }, None) => self
                    .post(path)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(Response::general)
                    .map_err(|e| ClientError::from_reqwest(e, first_byte, "first byte")),
                (Outgoing::General(rb), _) => (*rb)
                    .send()
                    .await
                    .map(Response::general)
                    .map_err(|e| ClientError::from_reqwest(e, first_byte, "first byte")),
            }
        };
        let resp = match tokio::time::timeout(first_byte, sent).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    after: first_byte,
                    phase: "first byte",
                });
            }
            Ok(r) => r?,
        };
        if resp.status.is_success() {
            return Ok(resp);
        }
        let status = resp.status.as_u16();
        let fenced = resp
            .headers
            .get(FENCE_HIGHEST)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if let (409 | 401, Some(highest)) = (status, fenced) {
            // Only a stale token (409) is cured by a higher epoch; an unsigned one (401: no
            // secret, or another) is refused at any epoch.
            if let (409, Some(hook)) = (status, &self.cfg.fence_hook) {
                (hook.0)(highest);
            }
            return Err(ClientError::Fenced { status, highest });
        }
        let retry_after = resp
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = tokio::time::timeout(first_byte, resp.read_capped(MAX_ERROR_BODY))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let envelope = ErrorEnvelope::parse(&text);
        Err(ClientError::Status {
            status,
            message: envelope.message,
            retry_after,
            code: envelope.code,
            param: envelope.param,
        })
    }

    /// A JSON body parsed whole (control calls, images), at most `max_body` bytes. Read within
    /// the call's total limit: every call reads its answer inside [`within`].
    async fn json(&self, resp: Response) -> Result<Value, ClientError> {
        let body = self.json_bytes(resp).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("invalid JSON: {e}")))
    }

    /// The answer as a [`JsonBody`] (its bytes, passed on without re-serialising, and what im
    /// reads of it).
    fn json_and_body(
        &self,
        resp: Response,
    ) -> impl Future<Output = Result<JsonBody, ClientError>> + Send + use<'_> {
        self.json_bytes(resp)
            .map(|body| JsonBody::read(Bytes::from(body?)))
    }

    /// A JSON answer's bytes, at most `max_body` (within the call's [`within`]). Futures
    /// composed, not `async` blocks, so that the response is kept once in their state (an
    /// `async` block keeps a future it awaits twice: as captured and as awaited).
    fn json_bytes(
        &self,
        resp: Response,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send + use<'_> {
        let is_json = resp
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        resp.read_capped(self.cfg.max_body).map(move |body| {
            let body = body?;
            if !is_json {
                return Err(ClientError::Protocol(format!(
                    "expected JSON, got {} bytes of another content type",
                    body.len()
                )));
            }
            Ok(body)
        })
    }

    /// The upstream body: the request as it is (serialised straight from it, nothing copied),
    /// its images in LocalAI's form (normalised here only if the caller has not done it).
    fn chat_body<'a>(&self, req: &'a ChatRequest, stream: bool) -> ChatBody<'a> {
        let messages = if crate::vision::needs_normalizing(&req.messages) {
            std::borrow::Cow::Owned(normalize_messages(&req.messages))
        } else {
            std::borrow::Cow::Borrowed(req.messages.as_slice())
        };
        ChatBody {
            model: &req.model,
            messages,
            temperature: req.temperature,
            max_tokens: req.max_tokens,
            extra: &req.extra,
            stream,
            cache_prompt: self.cache_prompt(&req.extra),
        }
    }

    /// A chat completion (`POST /v1/chat/completions`, not streaming).
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ClientError> {
        let total = self.cfg.chat_total;
        let work = async {
            let resp = self
                .send(
                    self.post_json("/v1/chat/completions", &self.chat_body(req, false))?,
                    self.cfg.chat_first_byte,
                )
                .await?;
            let raw = self.json_and_body(resp).await?;
            if !raw.has_choices() {
                return Err(ClientError::Protocol(
                    "no choices in the chat response".into(),
                ));
            }
            // LocalAI v3.5-v4.0 answer a failure inside the model with status 200 and the text
            // `Internal error: …`: looked for in the bytes first, so that the text is read only
            // when the marker is there.
            if raw.mentions(&INTERNAL_ERROR)
                && let Some(msg) = raw
                    .chat_content()
                    .as_deref()
                    .and_then(|c| c.strip_prefix("Internal error:"))
            {
                return Err(ClientError::Stream(msg.trim().to_owned()));
            }
            Ok(ChatResponse::new(raw))
        };
        within(total, work).await
    }

    /// A streaming chat completion. Resolves once LocalAI has answered the head; the stream then
    /// yields chunks and ends after `[DONE]`, or with one error item (an error event or an
    /// `Internal error:` chunk inside the stream, a dropped connection, a stream cut without
    /// `[DONE]`).
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, ClientError> {
        self.stream(self.post_json("/v1/chat/completions", &self.chat_body(req, true))?)
            .await
    }

    /// An OpenAI-shaped call passed through as JSON (`POST path` with `body`), under the chat
    /// limits: its answer parsed and as bytes. For routes im does not reshape (text completions).
    pub async fn call_json(
        &self,
        path: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<JsonResponse, ClientError> {
        let total = self.cfg.chat_total;
        let work = async {
            let resp = self
                .send(
                    self.post_json(path, &self.passed(path, body))?,
                    self.cfg.chat_first_byte,
                )
                .await?;
            let raw = self.json_and_body(resp).await?;
            Ok(JsonResponse {
                body: raw.bytes().clone(),
                raw,
            })
        };
        within(total, work).await
    }

    /// `POST path` with a JSON body whose answer is passed on as bytes (speech audio).
    pub async fn call_raw(
        &self,
        path: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<RawResponse, ClientError> {
        self.raw(self.post_json(path, body)?).await
    }

    /// `POST path` with a multipart upload whose answer is passed on as bytes (a transcription).
    pub async fn upload(&self, path: &str, upload: &Upload) -> Result<RawResponse, ClientError> {
        self.raw(Outgoing::general(self.post(path).multipart(upload.form()?)))
            .await
    }

    /// Relay a request to `path_and_query` (a management route) and its answer whatever its
    /// status, within the control-call limits.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Forwarded, ClientError> {
        let total = self.cfg.control_total;
        let mut rb = self.decorate(
            self.http
                .request(method, format!("{}{path_and_query}", self.cfg.base_url)),
        );
        if let Some(ct) = content_type {
            rb = rb.header(CONTENT_TYPE, ct);
        }
        let work = async {
            let resp = rb
                .body(body)
                .send()
                .await
                .map_err(|e| ClientError::from_reqwest(e, total, "first byte"))?;
            let resp = Response::general(resp);
            let status = resp.status.as_u16();
            let content_type = resp.content_type();
            let body = resp.read_capped(self.cfg.max_body).await?;
            Ok(Forwarded {
                status,
                content_type,
                body: Bytes::from(body),
            })
        };
        within(total, work).await
    }

    /// Send `rb` and read its answer as bytes within the chat limits.
    async fn raw(&self, out: Outgoing<'_>) -> Result<RawResponse, ClientError> {
        let total = self.cfg.chat_total;
        let work = async {
            let resp = self.send(out, self.cfg.chat_first_byte).await?;
            let content_type = resp.content_type();
            let body = resp.read_capped(self.cfg.max_body).await?;
            Ok(RawResponse {
                content_type,
                body: Bytes::from(body),
            })
        };
        within(total, work).await
    }

    /// [`Self::call_json`] as an event stream (`body` asks for `stream: true`).
    pub async fn call_stream(
        &self,
        path: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<ChunkStream, ClientError> {
        self.stream(self.post_json(path, &self.passed(path, body))?)
            .await
    }

    /// Send `rb` and read its answer as an event stream of chunks, within the stream limits.
    async fn stream(&self, out: Outgoing<'_>) -> Result<ChunkStream, ClientError> {
        let resp = self.send(out, self.cfg.chat_first_byte).await?;
        let ct = resp
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !ct.starts_with("text/event-stream") {
            return Err(ClientError::Protocol(format!(
                "expected an event stream, got content type {ct:?}"
            )));
        }
        let first_chunk = self.cfg.chat_first_byte;
        let idle = self.cfg.stream_idle;
        let deadline = tokio::time::Instant::now() + self.cfg.chat_total;
        let total = self.cfg.chat_total;
        let state = StreamState {
            bytes: resp,
            parser: SseParser::default(),
            done: false,
            seen_chunk: false,
        };
        let stream = futures_util::stream::unfold(state, move |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if let Some(item) = st.parser.next_item() {
                    return match item {
                        Ok(Some(chunk)) => {
                            st.seen_chunk = true;
                            Some((Ok(chunk), st))
                        }
                        Ok(None) => None, // [DONE]
                        Err(e) => {
                            st.done = true;
                            Some((Err(e), st))
                        }
                    };
                }
                // Silence is bounded: before the first chunk by the first-byte limit (a prompt
                // may be long to process), after it by the idle limit; the whole stream by the
                // total limit.
                let wait = if st.seen_chunk { idle } else { first_chunk };
                let until = (tokio::time::Instant::now() + wait).min(deadline);
                let next = tokio::time::timeout_at(until, st.bytes.next()).await;
                let err = match next {
                    Ok(Some(Ok(b))) => {
                        if let Err(e) = st.parser.push(&b) {
                            e
                        } else {
                            continue;
                        }
                    }
                    Ok(Some(Err(e))) => e,
                    Ok(None) => ClientError::Protocol("the stream ended without [DONE]".into()),
                    Err(_) if until >= deadline => ClientError::Timeout {
                        after: total,
                        phase: "response",
                    },
                    Err(_) => ClientError::Timeout {
                        after: wait,
                        phase: "stream idle",
                    },
                };
                st.done = true;
                return Some((Err(err), st));
            }
        });
        Ok(Box::pin(stream))
    }

    /// Generate (txt2img) or edit (img2img, `file` set) images; always asks for `b64_json`.
    pub async fn images(&self, req: &ImageRequest) -> Result<ImagesResponse, ClientError> {
        let total = self.cfg.image_total;
        let prompt = match req.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            Some(neg) => format!("{}|{}", req.prompt, neg),
            None => req.prompt.clone(),
        };
        let mut body = json!({
            "model": req.model,
            "prompt": prompt,
            "size": format!("{}x{}", req.width, req.height),
            "seed": req.seed.unwrap_or(-1),
            "n": req.n.unwrap_or(1),
            "response_format": "b64_json",
        });
        if let Some(steps) = req.steps {
            body["step"] = json!(steps);
        }
        if let Some(file) = &req.file {
            body["file"] = Value::String(strip_data_uri(file).to_owned());
        }
        let work = async {
            let resp = self
                .send(
                    self.post_json("/v1/images/generations", &body)?,
                    self.cfg.image_first_byte,
                )
                .await?;
            let raw = self.json(resp).await?;
            let data = raw
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| ClientError::Protocol("no data[] in the images response".into()))?;
            let images = data
                .iter()
                .map(|d| d.get("b64_json").and_then(Value::as_str).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ClientError::Protocol("an image without b64_json".into()))?;
            if images.is_empty() {
                return Err(ClientError::Protocol("no image in the response".into()));
            }
            let created = raw.get("created").and_then(Value::as_u64).unwrap_or(0);
            Ok(ImagesResponse { created, images })
        };
        within(total, work).await
    }

    async fn control(&self, out: Outgoing<'_>) -> Result<Value, ClientError> {
        let total = self.cfg.control_total;
        let work = async {
            let resp = self.send(out, total).await?;
            self.json(resp).await
        };
        within(total, work).await
    }
}

struct StreamState {
    bytes: Response,
    parser: SseParser,
    done: bool,
    seen_chunk: bool,
}

/// `work` within `total`, counted from this call (made inside the call's own future), else a
/// response timeout. Composed, not an `async fn`, which keeps `work` twice in its state: a chat
/// call's future is 1,480 bytes, not 2,784.
fn within<T>(
    total: Duration,
    work: impl Future<Output = Result<T, ClientError>>,
) -> impl Future<Output = Result<T, ClientError>> {
    tokio::time::timeout(total, work).map(move |r| {
        r.unwrap_or(Err(ClientError::Timeout {
            after: total,
            phase: "response",
        }))
    })
}

/// An upstream error body: LocalAI's or OpenAI's envelope, or text.
struct ErrorEnvelope {
    message: String,
    code: Option<String>,
    param: Option<String>,
}

impl ErrorEnvelope {
    fn parse(text: &str) -> ErrorEnvelope {
        let word = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .map(str::to_owned)
        };
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            let err = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| v.get("detail").and_then(Value::as_str))
                .or_else(|| v.get("error").and_then(Value::as_str));
            if let Some(m) = message {
                return ErrorEnvelope {
                    message: summarize(m),
                    code: word(err.get("code")),
                    param: word(err.get("param")),
                };
            }
        }
        let t = text.trim();
        let message = if t.starts_with('<') {
            format!("a non-JSON error page ({} bytes)", t.len())
        } else {
            summarize(t)
        };
        ErrorEnvelope {
            message,
            code: None,
            param: None,
        }
    }
}

/// The base64 payload of a data URI, or the input as it is.
pub fn strip_data_uri(b64: &[u8]) -> &str {
    let s = std::str::from_utf8(b64).unwrap_or("");
    match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => s,
    }
}

/// Whether `text` is valid base64 (standard alphabet, padding optional).
pub fn is_base64(text: &str) -> bool {
    B64.decode(text.trim()).is_ok()
        || base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim())
            .is_ok()
}
