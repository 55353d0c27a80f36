//! `im-mcp-api`: im as an MCP server, on the official Rust SDK (`rmcp`).
//!
//! Tools: `txt2txt`, `txt2img`, `img2img`, `img2txt`, `get_request_metrics`, `get_error_metrics`,
//! `queue_status`, `list_models`. Every tool call goes through im's HTTP API, either in-process
//! ([`Upstream::Local`]: the axum router called without a socket, so validation, queues and the
//! error table are exactly HTTP's) or over the network to a running im-http
//! ([`Upstream::Remote`], `im-mcp --remote`), so one queue serves both interfaces. Image results are
//! MCP image content (PNG, base64); failures are tool errors (`isError: true`) carrying the
//! message of the shared error table, with the offending field named.
//!
//! [`ImMcp`] is the `ServerHandler`; [`http_service`] wraps it as a streamable-HTTP tower service
//! (mounted at `/mcp` by im-http, or served alone by `im-mcp --http`); `im-mcp` without `--http`
//! speaks stdio.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Where tool calls go.
#[derive(Clone)]
pub enum Upstream {
    /// im's HTTP router, in-process, called with `key`.
    Local {
        /// The router (without `/mcp`).
        router: Router,
        /// The key to present, if auth is on.
        key: Option<String>,
    },
    /// A running im-http.
    Remote {
        /// Its base URL.
        url: String,
        /// Its API key.
        key: Option<String>,
        /// The HTTP client.
        client: reqwest::Client,
    },
}

impl Upstream {
    /// A remote im-http at `url`.
    pub fn remote(url: &str, key: Option<String>) -> Upstream {
        let client = reqwest::Client::builder().build().unwrap_or_default();
        Upstream::Remote {
            url: url.trim_end_matches('/').to_owned(),
            key,
            client,
        }
    }

    /// Call `path` and return the status and the JSON body. `caller` carries the MCP client's own
    /// key and request id (streamable HTTP); without them (stdio, a local process) the configured
    /// key is presented.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        caller: &Caller,
    ) -> (u16, Value) {
        match self {
            Upstream::Local { router, key } => {
                let mut req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", "application/json");
                if caller.headers.is_empty() {
                    if let Some(k) = key {
                        req = req.header("x-api-key", k);
                    }
                } else {
                    for (name, value) in &caller.headers {
                        req = req.header(*name, value);
                    }
                }
                if !caller.headers.is_empty() {
                    // The MCP request that carried this call was charged to the caller's key.
                    req = req.extension(im_http_api::AlreadyCharged);
                }
                let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
                let Ok(req) = req.body(body) else {
                    return (
                        500,
                        json!({"error": {"type": "internal", "message": "bad request path"}}),
                    );
                };
                let Ok(resp) = router.clone().oneshot(req).await;
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap_or_default();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
            Upstream::Remote { url, key, client } => {
                let mut rb = client.request(method, format!("{url}{path}"));
                if let Some(k) = key {
                    rb = rb.header("x-api-key", k);
                }
                if let Some((_, id)) = caller.headers.iter().find(|(n, _)| *n == "x-request-id") {
                    rb = rb.header("x-request-id", id.as_bytes());
                }
                if let Some(b) = body {
                    rb = rb.json(&b);
                }
                match rb.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        (status, r.json().await.unwrap_or(Value::Null))
                    }
                    Err(e) => (
                        503,
                        json!({"error": {"type": "upstream_unavailable", "message": format!("cannot reach im-http at {url}: {e}")}}),
                    ),
                }
            }
        }
    }
}

/// Who made a tool call: the headers of the MCP client's HTTP request that im passes on (its key,
/// so that its rate limit applies, and its request id). Empty over stdio.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    headers: Vec<(&'static str, axum::http::HeaderValue)>,
}

impl Caller {
    /// The caller of the request `ctx` belongs to.
    pub fn of(ctx: &RequestContext<RoleServer>) -> Caller {
        let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() else {
            return Caller::default();
        };
        let headers = ["x-api-key", "authorization", "x-request-id"]
            .into_iter()
            .filter_map(|n| parts.headers.get(n).map(|v| (n, v.clone())))
            .collect();
        Caller { headers }
    }
}

/// Run a tool's work unless the MCP client cancels the call (a `notifications/cancelled`, or its
/// session ends): then the work is dropped, which cancels its queued request.
async fn unless_cancelled<T>(
    ctx: &RequestContext<RoleServer>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, ErrorData> {
    tokio::select! {
        () = ctx.ct.cancelled() => Err(ErrorData::internal_error("the call was cancelled", None)),
        r = work => Ok(r),
    }
}

/// Arguments of `txt2txt`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ChatArgs {
    /// A model serving txt2txt (see `list_models`).
    pub model: String,
    /// The conversation: a list of `{"role": "user"|"system"|"assistant", "content": "..."}`.
    /// Give either `messages` or `prompt`.
    pub messages: Option<Vec<Value>>,
    /// A single user message (shorthand for `messages`).
    pub prompt: Option<String>,
    /// Sampling temperature, 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
}

/// Arguments of `img2txt`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct VisionArgs {
    /// A model serving img2txt (see `list_models`).
    pub model: String,
    /// The question about the image.
    pub prompt: Option<String>,
    /// The image: base64 (PNG, JPEG, WebP, GIF) or a data URI.
    pub image: Option<String>,
    /// Or a full conversation whose messages carry `image_url` parts (instead of prompt + image).
    pub messages: Option<Vec<Value>>,
    /// Sampling temperature, 0.0 to 2.0.
    pub temperature: Option<f64>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
}

/// Arguments of `txt2img`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ImageArgs {
    /// A model serving txt2img (see `list_models`).
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Width in pixels: a positive multiple of 8 (for example 512).
    pub width: u32,
    /// Height in pixels: a positive multiple of 8 (for example 512).
    pub height: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed for reproducible images.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Number of images, 1 to 4.
    pub n: Option<u32>,
}

/// Arguments of `img2img`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditArgs {
    /// A model serving img2img (see `list_models`).
    pub model: String,
    /// The source image: base64 (PNG, JPEG, WebP, GIF) or a data URI.
    pub file: String,
    /// The edit to make.
    pub prompt: String,
    /// Width in pixels: a positive multiple of 8.
    pub width: u32,
    /// Height in pixels: a positive multiple of 8.
    pub height: u32,
    /// Diffusion steps, 1 to 150.
    pub steps: Option<u32>,
    /// Seed.
    pub seed: Option<i64>,
    /// What not to draw.
    pub negative_prompt: Option<String>,
    /// Number of images, 1 to 4.
    pub n: Option<u32>,
}

/// No arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NoArgs {}

/// The MCP server.
#[derive(Clone)]
pub struct ImMcp {
    upstream: Arc<Upstream>,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

fn drop_none(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// A tool error with the message of the shared error table.
fn tool_error(status: u16, body: &Value) -> CallToolResult {
    let e = &body["error"];
    let kind = e["type"].as_str().unwrap_or("internal");
    let msg = e["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {status}"), str::to_owned);
    let text = match e["param"].as_str() {
        Some(p) => format!("{kind} ({status}): {msg} [field: {p}]"),
        None => format!("{kind} ({status}): {msg}"),
    };
    CallToolResult::error(vec![ContentBlock::text(text)])
}

fn figures(v: &Value) -> String {
    format!(
        "request {} on {} ({}): waited {:.0} ms, ran {:.0} ms, {} attempt(s)",
        v["request_id"].as_str().unwrap_or("?"),
        v["model"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["queue_wait_ms"].as_f64().unwrap_or(0.0),
        v["processing_ms"].as_f64().unwrap_or(0.0),
        v["attempts"].as_u64().unwrap_or(0)
    )
}

impl ImMcp {
    /// A server whose tool calls go to `upstream`.
    pub fn new(upstream: Upstream) -> ImMcp {
        ImMcp {
            upstream: Arc::new(upstream),
            tool_router: Self::tool_router(),
        }
    }

    /// POST `body` to `path` as the tool's caller, unless the call is cancelled: the JSON answer,
    /// or the tool error to return.
    async fn post(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        body: Value,
    ) -> Result<Result<Value, CallToolResult>, ErrorData> {
        let caller = Caller::of(ctx);
        let call = self
            .upstream
            .call(Method::POST, path, Some(drop_none(body)), &caller);
        let (status, v) = unless_cancelled(ctx, call).await?;
        Ok(if status == 200 {
            Ok(v)
        } else {
            Err(tool_error(status, &v))
        })
    }

    async fn text_tool(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        body: Value,
    ) -> Result<CallToolResult, ErrorData> {
        let v = match self.post(ctx, path, body).await? {
            Ok(v) => v,
            Err(failed) => return Ok(failed),
        };
        let content = v["content"].as_str().unwrap_or_default().to_owned();
        Ok(CallToolResult::success(vec![
            ContentBlock::text(content),
            ContentBlock::text(figures(&v)),
        ]))
    }

    async fn image_tool(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        body: Value,
    ) -> Result<CallToolResult, ErrorData> {
        let v = match self.post(ctx, path, body).await? {
            Ok(v) => v,
            Err(failed) => return Ok(failed),
        };
        let mut out: Vec<ContentBlock> = v["images"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|b| ContentBlock::image(b, "image/png"))
                    .collect()
            })
            .unwrap_or_default();
        out.push(ContentBlock::text(figures(&v)));
        Ok(CallToolResult::success(out))
    }

    async fn json_tool(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = Caller::of(ctx);
        let call = self.upstream.call(Method::GET, path, None, &caller);
        let (status, v) = unless_cancelled(ctx, call).await?;
        if status != 200 {
            return Ok(tool_error(status, &v));
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )]))
    }
}

#[tool_router]
impl ImMcp {
    /// Chat.
    #[tool(
        description = "Chat with a language model (txt2txt) through im's queue. Give `model` (call list_models for the models that serve txt2txt) and either `messages` or a single `prompt`. Returns the answer text and the request's queue figures. Requests are queued and run in im's scheduling order; a busy GPU means a wait, not an error."
    )]
    async fn txt2txt(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<ChatArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let messages = match (a.messages, a.prompt) {
            (Some(m), _) => json!(m),
            (None, Some(p)) => json!([{"role": "user", "content": p}]),
            (None, None) => json!(null),
        };
        self.text_tool(&ctx, "/txt2txt", json!({"model": a.model, "messages": messages, "temperature": a.temperature, "max_tokens": a.max_tokens}))
            .await
    }

    /// Vision.
    #[tool(
        description = "Ask a vision model about an image (img2txt). Give `model` (a model serving img2txt, see list_models), `prompt` and `image` (base64 PNG/JPEG/WebP/GIF or a data URI), or full `messages` with image_url parts. Returns the answer text."
    )]
    async fn img2txt(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<VisionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let messages = match (a.messages, a.image) {
            (Some(m), _) => json!(m),
            (None, Some(img)) => json!([{"role": "user", "content": [
                {"type": "text", "text": a.prompt.unwrap_or_else(|| "Describe this image.".into())},
                {"type": "image_url", "image_url": {"url": img}}]}]),
            (None, None) => json!([{"role": "user", "content": a.prompt.unwrap_or_default()}]),
        };
        self.text_tool(&ctx, "/img2txt", json!({"model": a.model, "messages": messages, "temperature": a.temperature, "max_tokens": a.max_tokens}))
            .await
    }

    /// Image generation.
    #[tool(
        description = "Generate images from text (txt2img). Give `model` (a model serving txt2img, see list_models), `prompt`, `width` and `height` (positive multiples of 8, e.g. 512), optionally `steps` (1-150), `seed`, `negative_prompt`, `n` (1-4). Returns PNG image content."
    )]
    async fn txt2img(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<ImageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.image_tool(
            &ctx,
            "/txt2img",
            json!({"model": a.model, "prompt": a.prompt, "width": a.width, "height": a.height, "steps": a.steps,
                   "seed": a.seed, "negative_prompt": a.negative_prompt, "n": a.n}),
        )
        .await
    }

    /// Image editing.
    #[tool(
        description = "Edit an image (img2img). Give `model` (a model serving img2img, see list_models), `file` (the source image as base64 or a data URI), `prompt`, `width` and `height` (positive multiples of 8), optionally `steps`, `seed`, `negative_prompt`, `n`. Returns PNG image content."
    )]
    async fn img2img(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<EditArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.image_tool(
            &ctx,
            "/img2img",
            json!({"model": a.model, "file": a.file, "prompt": a.prompt, "width": a.width, "height": a.height,
                   "steps": a.steps, "seed": a.seed, "negative_prompt": a.negative_prompt, "n": a.n}),
        )
        .await
    }

    /// Request metrics.
    #[tool(
        description = "im's request metrics as JSON: per kind and model, counts by outcome, queue wait and processing time percentiles (ms), throughput."
    )]
    async fn get_request_metrics(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.json_tool(&ctx, "/get_request_metrics").await
    }

    /// Error metrics.
    #[tool(
        description = "im's error metrics as JSON: counts by kind, model and class, and the last 100 errors (payloads and keys removed)."
    )]
    async fn get_error_metrics(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.json_tool(&ctx, "/get_error_metrics").await
    }

    /// Queue status.
    #[tool(
        description = "im's queues now as JSON: per (kind, model) group its depth, oldest wait and requests in flight; per upstream lane its active group, loaded model, state and breaker. Use it to judge how long a request will wait."
    )]
    async fn queue_status(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.json_tool(&ctx, "/queue-status").await
    }

    /// Models.
    #[tool(
        description = "The models im serves and the kinds each serves (txt2txt, txt2img, img2img, img2txt), as JSON. Call this first to pick a `model` for the other tools."
    )]
    async fn list_models(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.json_tool(&ctx, "/v1/models").await
    }
}

#[tool_handler]
impl ServerHandler for ImMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("im", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "im queues inference requests in front of LocalAI so that one GPU serves chat, image generation, \
                 image editing and vision without thrashing model loads. Call list_models to see which model serves \
                 which kind, then txt2txt / txt2img / img2img / img2txt. queue_status shows current waits.",
            )
    }
}

/// The streamable-HTTP service for `server`: `allowed_hosts` extends the loopback default (rmcp's
/// DNS-rebinding guard), `max_body` is raised to im's image limit.
pub fn http_service(
    server: ImMcp,
    allowed_hosts: &[String],
    max_body: usize,
) -> StreamableHttpService<ImMcp, LocalSessionManager> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    hosts.extend(allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_max_request_body_bytes(max_body);
    StreamableHttpService::new(move || Ok(server.clone()), Default::default(), config)
}

/// im-http's full router: the HTTP API plus MCP at `/mcp`, on the same engine and queues, behind
/// the same key (what `im-http` serves).
pub fn http_router_with_mcp(
    state: im_http_api::AppState,
    config: &im_http_api::config::ImConfig,
) -> Router {
    let mcp = ImMcp::new(Upstream::Local {
        router: im_http_api::router(state.clone()),
        key: state.keys.first(),
    });
    let mcp = http_service(
        mcp,
        &config.http.mcp_allowed_hosts,
        config.http.body_limit_bytes,
    );
    im_http_api::router_with(state, |r| r.route_service("/mcp", mcp))
}
