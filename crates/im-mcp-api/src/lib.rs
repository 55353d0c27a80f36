//! `im-mcp-api`: im as an MCP server, on the official Rust SDK (`rmcp`).
//!
//! Tools: `txt2txt`, `txt2img`, `img2img`, `img2txt`, `get_request_metrics`, `get_error_metrics`,
//! `queue_status`, `list_models`. A tool call is arguments → the service's typed call → run as
//! the MCP caller ([`Target::Local`]: im's service in this process, with the caller's own key,
//! request id and rate limit, and no HTTP round trip), or is forwarded to a running im-http
//! ([`Target::Remote`], `im-mcp --remote`) so one queue serves both interfaces. Image results are
//! MCP image content (PNG, base64); failures are tool errors (`isError: true`) with the message
//! of the shared error table, the offending field named. A call the client cancels (or whose
//! session ends) leaves the queue.
//!
//! [`ImMcp`] is the `ServerHandler`; [`http_service`] wraps it as a streamable-HTTP tower service
//! (mounted at `/mcp` by im-http, or served alone by `im-mcp --http`); `im-mcp` without `--http`
//! speaks stdio.

mod args;
mod descriptions;
mod remote;

use descriptions::*;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::Method;
use axum::response::IntoResponse;
use im_edge::caller::{key_of, request_id_of};
use im_service::{
    Call, Caller, ChatInput, ChatKind, Done, ImageParams, Keys, Reply, Scope, Service,
    ServiceError, image_file,
};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

pub use args::{
    BackendArgs, ChatArgs, EditArgs, EstimateArgs, ImageArgs, NoArgs, RouteArgs, SelectArgs,
    VisionArgs,
};
pub use remote::Remote;

/// Where tool calls run.
#[derive(Clone, Debug)]
pub enum Target {
    /// im's service in this process.
    Local(Service),
    /// A running im-http.
    Remote(Remote),
}

/// The MCP server.
#[derive(Clone)]
pub struct ImMcp {
    target: Arc<Target>,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

/// What a placement question names: the kind, the model, a backend to keep to, and a prompt to
/// look up in the backends' caches.
struct PlacementAsk<'a> {
    kind: &'a str,
    model: &'a str,
    backend: Option<&'a str>,
    probe: Option<Probe>,
}

/// A prompt to look up, as the tool was given it: checked only once the caller is known.
enum Probe {
    /// A chat's messages.
    Messages(Vec<Value>),
    /// A completion's prompt.
    Text(String),
}

/// The figures line every result ends with.
fn figures_line(
    request_id: &str,
    model: &str,
    kind: &str,
    waited_ms: f64,
    ran_ms: f64,
    attempts: u64,
) -> String {
    format!(
        "request {request_id} on {model} ({kind}): waited {waited_ms:.0} ms, ran {ran_ms:.0} ms, {attempts} attempt(s)"
    )
}

fn drop_none(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// A tool error with the message of the shared error table.
fn service_error(e: &ServiceError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.line())])
}

/// Every tool with the scope it needs: the same scopes as the HTTP routes of the same work and
/// views (the golden list `crates/im-http-api/scopes.golden` names them).
pub const TOOLS: [(&str, Scope); 14] = [
    ("txt2txt", Scope::Infer),
    ("img2txt", Scope::Infer),
    ("txt2img", Scope::Infer),
    ("img2img", Scope::Infer),
    ("route_inference_request", Scope::Infer),
    ("list_models", Scope::Infer),
    ("get_supported_tasks", Scope::Infer),
    ("get_request_metrics", Scope::Metrics),
    ("get_error_metrics", Scope::Metrics),
    ("queue_status", Scope::Metrics),
    ("list_inference_backends", Scope::Metrics),
    ("get_backend_status", Scope::Metrics),
    ("select_backend_for_inference", Scope::Metrics),
    ("estimate_wait", Scope::Infer),
];

/// The scope tool `name` needs (an unknown name needs `admin`: nothing is open by omission).
fn scope_of_tool(name: &str) -> Scope {
    TOOLS
        .iter()
        .find(|(t, _)| *t == name)
        .map_or(Scope::Admin, |(_, s)| *s)
}

/// The MCP caller of the tool call `tool` that `ctx` belongs to, checked: over streamable HTTP
/// its key, the tool's scope and (when `charge`) its rates, each tool call one unit of work (the
/// `/mcp` request that carried it is not charged); and its request id. Over stdio (a local
/// process, the operator's own) no key and a fresh id.
fn caller_of(
    ctx: &RequestContext<RoleServer>,
    service: &Service,
    tool: &str,
    charge: bool,
) -> Result<Caller, ServiceError> {
    let parts = ctx.extensions.get::<axum::http::request::Parts>();
    let request_id = parts
        .and_then(|p| request_id_of(&p.headers))
        .unwrap_or_else(|| service.new_request_id());
    let who = match parts {
        Some(p) => service.authorize(key_of(&p.headers), scope_of_tool(tool), charge)?,
        None => im_service::Principal::anonymous(),
    };
    Ok(Caller::new(&who, request_id))
}

/// Run a tool's work unless the MCP client cancels the call (a `notifications/cancelled`, or its
/// session ends): then the work is dropped, which takes its request out of the queue.
async fn unless_cancelled<T>(
    ctx: &RequestContext<RoleServer>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, ErrorData> {
    tokio::select! {
        () = ctx.ct.cancelled() => Err(ErrorData::internal_error("the call was cancelled", None)),
        r = work => Ok(r),
    }
}

/// A completed call as tool content: the text or the PNG images, then the figures.
fn completion(done: Done) -> CallToolResult {
    let m = &done.figures;
    let fig = figures_line(
        &m.request_id,
        &m.model,
        m.kind.as_str(),
        m.queue_wait.as_secs_f64() * 1000.0,
        m.processing.as_secs_f64() * 1000.0,
        u64::from(m.attempts),
    );
    let mut out: Vec<ContentBlock> = match done.reply {
        Reply::Chat { raw, .. } => vec![ContentBlock::text(raw.chat_text())],
        Reply::Images { images, .. } => images
            .into_iter()
            .map(|b| ContentBlock::image(b, "image/png"))
            .collect(),
        Reply::Json { body, .. } => vec![ContentBlock::text(String::from_utf8_lossy(&body))],
        Reply::Raw { content_type, body } if content_type.starts_with("audio/") => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD.encode(&body);
            vec![ContentBlock::audio(data, content_type)]
        }
        Reply::Raw { body, .. } => vec![ContentBlock::text(String::from_utf8_lossy(&body))],
        Reply::Stream(_) => vec![],
    };
    out.push(ContentBlock::text(fig));
    CallToolResult::success(out)
}

/// A seed response from im-http as tool content.
fn remote_result(v: &Value) -> CallToolResult {
    let mut out: Vec<ContentBlock> = match v["images"].as_array() {
        Some(images) => images
            .iter()
            .filter_map(Value::as_str)
            .map(|b| ContentBlock::image(b, "image/png"))
            .collect(),
        None => vec![ContentBlock::text(
            v["content"].as_str().unwrap_or_default(),
        )],
    };
    out.push(ContentBlock::text(remote::figures(v)));
    CallToolResult::success(out)
}

impl ImMcp {
    /// A server whose tool calls run on `target`.
    pub fn new(target: Target) -> ImMcp {
        ImMcp {
            target: Arc::new(target),
            tool_router: Self::tool_router(),
        }
    }

    /// The names of the tools it serves.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    fn is_remote(&self) -> bool {
        matches!(*self.target, Target::Remote(_))
    }

    /// Run an inference tool: locally, `make` the call with the service's limits and run it as
    /// the caller; remotely, post `body` to `path`.
    async fn infer(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        make: impl FnOnce(&Service) -> Result<Call, ServiceError>,
        path: &str,
        body: impl FnOnce() -> Value,
    ) -> Result<CallToolResult, ErrorData> {
        match &*self.target {
            Target::Local(service) => {
                let run = async {
                    let caller = caller_of(ctx, service, tool, true)?;
                    let call = make(service)?;
                    service.run(call, &caller).await
                };
                Ok(match unless_cancelled(ctx, run).await? {
                    Ok(done) => completion(done),
                    Err(e) => service_error(&e),
                })
            }
            Target::Remote(remote) => {
                let id = ctx
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| request_id_of(&p.headers));
                let call = remote.call(Method::POST, path, Some(drop_none(body())), id.as_deref());
                let (status, v) = unless_cancelled(ctx, call).await?;
                Ok(if status == 200 {
                    remote_result(&v)
                } else {
                    remote::tool_error(status, &v)
                })
            }
        }
    }

    /// Where a request would go (`/placement`), or the tool error saying why not.
    async fn placement(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        charge: bool,
        ask: PlacementAsk<'_>,
    ) -> Result<Result<Value, CallToolResult>, ErrorData> {
        let PlacementAsk {
            kind,
            model,
            backend,
            probe,
        } = ask;
        Ok(match &*self.target {
            Target::Local(service) => {
                let asked = caller_of(ctx, service, tool, charge).and_then(|caller| {
                    let probe = match probe {
                        Some(Probe::Messages(m)) => Some(im_service::PromptProbe::messages(m)?),
                        Some(Probe::Text(t)) => Some(im_service::PromptProbe::Text(t)),
                        None => None,
                    };
                    Ok((caller, probe))
                });
                match asked {
                    Ok((caller, probe)) => service
                        .placement(&caller.principal(), kind, model, backend, probe.as_ref())
                        .await
                        .map_err(|e| service_error(&e)),
                    Err(e) => Err(service_error(&e)),
                }
            }
            Target::Remote(remote) => {
                let messages = match &probe {
                    Some(Probe::Messages(m)) => Some(Value::from(m.clone()).to_string()),
                    _ => None,
                };
                let mut params = vec![("kind", kind), ("model", model)];
                if let Some(b) = backend {
                    params.push(("backend", b));
                }
                if let Some(m) = &messages {
                    params.push(("messages", m));
                }
                if let Some(Probe::Text(t)) = &probe {
                    params.push(("prompt", t));
                }
                remote.query(ctx, "/placement", &params).await?
            }
        })
    }

    /// The predicted wait of a request sent now (`/v1/queue/estimate`), or the tool error
    /// saying why there is none.
    async fn estimate(
        &self,
        ctx: &RequestContext<RoleServer>,
        kind: &str,
        model: &str,
    ) -> Result<Result<Value, CallToolResult>, ErrorData> {
        Ok(match &*self.target {
            Target::Local(service) => match caller_of(ctx, service, "estimate_wait", true) {
                Ok(_) => service
                    .estimate(kind, model)
                    .await
                    .map_err(|e| service_error(&e)),
                Err(e) => Err(service_error(&e)),
            },
            Target::Remote(remote) => {
                let params = [("kind", kind), ("model", model)];
                remote.query(ctx, "/v1/queue/estimate", &params).await?
            }
        })
    }

    /// A read-only view as JSON: locally from the service, remotely from `path`; its status.
    async fn fetch(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        path: &str,
    ) -> Result<(u16, Value), ErrorData> {
        Ok(match &*self.target {
            Target::Local(service) => {
                let caller = match caller_of(ctx, service, tool, true) {
                    Ok(c) => c,
                    Err(e) => return Ok((e.status(), e.body())),
                };
                let v = match path {
                    "/get_request_metrics" => service.request_metrics(),
                    "/get_error_metrics" => service.error_metrics(&caller.principal()),
                    "/queue-status" => service.queue_status().await,
                    "/status" => service.backend_status().await,
                    _ => service.models(),
                };
                (200, v)
            }
            Target::Remote(remote) => {
                unless_cancelled(ctx, remote.call(Method::GET, path, None, None)).await?
            }
        })
    }

    /// A read-only view as pretty JSON, `shape`d.
    async fn view_with(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        path: &str,
        shape: impl FnOnce(Value) -> Result<Value, String>,
    ) -> Result<CallToolResult, ErrorData> {
        let (status, v) = self.fetch(ctx, tool, path).await?;
        if status != 200 {
            return Ok(remote::tool_error(status, &v));
        }
        Ok(match shape(v) {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )]),
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        })
    }

    /// A read-only view as pretty JSON.
    async fn view(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &str,
        path: &str,
    ) -> Result<CallToolResult, ErrorData> {
        self.view_with(ctx, tool, path, Ok).await
    }
}

/// The kinds im serves, each with the models that serve it, from `/v1/models`.
fn tasks_of(models: Value) -> Result<Value, String> {
    let mut tasks: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for m in models["data"].as_array().into_iter().flatten() {
        for k in m["kinds"].as_array().into_iter().flatten() {
            if let Some(k) = k.as_str() {
                tasks.entry(k.to_owned()).or_default().push(m["id"].clone());
            }
        }
    }
    Ok(json!({ "tasks": tasks }))
}

/// One backend of `/status`, by name.
fn backend_named(status: Value, name: &str) -> Result<Value, String> {
    let backends = status["backends"].as_array().cloned().unwrap_or_default();
    backends
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = backends.iter().filter_map(|b| b["name"].as_str()).collect();
            format!(
                "invalid_request (400): no backend named {:?}; the backends: {}",
                im_service::truncate(name, 64),
                names.join(", ")
            )
        })
}

fn chat_messages(messages: Option<Vec<Value>>, prompt: Option<String>) -> Vec<Value> {
    match (messages, prompt) {
        (Some(m), _) => m,
        (None, Some(p)) => vec![json!({"role": "user", "content": p})],
        (None, None) => Vec::new(),
    }
}

fn image_params(
    (model, prompt, negative_prompt): (String, String, Option<String>),
    (width, height): (u32, u32),
    (steps, seed, n): (Option<u32>, Option<i64>, Option<u32>),
) -> ImageParams {
    ImageParams {
        model,
        prompt,
        negative_prompt,
        width,
        height,
        steps,
        seed,
        n,
        deadline_ms: None,
    }
}

#[tool_router]
impl ImMcp {
    /// Chat.
    #[tool(description = TXT2TXT)]
    async fn txt2txt(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<ChatArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let messages = chat_messages(a.messages, a.prompt);
        // The JSON body is built only for a remote im-http.
        let body = self.is_remote().then(|| json!({"model": a.model, "messages": messages, "temperature": a.temperature, "max_tokens": a.max_tokens}));
        let input = ChatInput {
            messages: messages.into_iter().map(Into::into).collect(),
            model: a.model,
            temperature: a.temperature,
            max_tokens: a.max_tokens,
            max_completion_tokens: None,
            n: None,
            ..ChatInput::default()
        };
        self.infer(
            &ctx,
            "txt2txt",
            |s| Call::chat(input, ChatKind::Text, s.limits()),
            "/txt2txt",
            || body.unwrap_or_default(),
        )
        .await
    }

    /// Vision.
    #[tool(description = IMG2TXT)]
    async fn img2txt(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<VisionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let messages = match (a.messages, a.image) {
            (Some(m), _) => m,
            (None, Some(img)) => vec![json!({"role": "user", "content": [
                {"type": "text", "text": a.prompt.unwrap_or_else(|| "Describe this image.".into())},
                {"type": "image_url", "image_url": {"url": img}}]})],
            (None, None) => vec![json!({"role": "user", "content": a.prompt.unwrap_or_default()})],
        };
        let body = self.is_remote().then(|| json!({"model": a.model, "messages": messages, "temperature": a.temperature, "max_tokens": a.max_tokens}));
        let input = ChatInput {
            model: a.model,
            messages: messages.into_iter().map(Into::into).collect(),
            temperature: a.temperature,
            max_tokens: a.max_tokens,
            max_completion_tokens: None,
            n: None,
            ..ChatInput::default()
        };
        self.infer(
            &ctx,
            "img2txt",
            |s| Call::chat(input, ChatKind::Vision, s.limits()),
            "/img2txt",
            || body.unwrap_or_default(),
        )
        .await
    }

    /// Image generation.
    #[tool(description = TXT2IMG)]
    async fn txt2img(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<ImageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = json!({"model": a.model, "prompt": a.prompt, "width": a.width, "height": a.height, "steps": a.steps,
                          "seed": a.seed, "negative_prompt": a.negative_prompt, "n": a.n});
        let params = image_params(
            (a.model, a.prompt, a.negative_prompt),
            (a.width, a.height),
            (a.steps, a.seed, a.n),
        );
        self.infer(
            &ctx,
            "txt2img",
            |s| Call::image(params, None, s.limits(), None),
            "/txt2img",
            || body,
        )
        .await
    }

    /// Image editing.
    #[tool(description = IMG2IMG)]
    async fn img2img(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<EditArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let file = a.file;
        let params = image_params(
            (a.model, a.prompt, a.negative_prompt),
            (a.width, a.height),
            (a.steps, a.seed, a.n),
        );
        let body = || {
            let r = &params;
            json!({"model": r.model, "file": file, "prompt": r.prompt, "width": r.width,
                   "height": r.height, "steps": r.steps, "seed": r.seed,
                   "negative_prompt": r.negative_prompt, "n": r.n})
        };
        // The body is built only for a remote im-http; locally the file goes once into the call.
        let body = self.is_remote().then(body);
        let make = |s: &Service| {
            params.validate(s.limits(), None)?;
            let file = image_file("file", Cow::Borrowed(file.as_str()))?;
            Call::image(params, Some(file), s.limits(), None)
        };
        self.infer(&ctx, "img2img", make, "/img2img", || {
            body.unwrap_or_default()
        })
        .await
    }

    /// Request metrics.
    #[tool(description = GET_REQUEST_METRICS)]
    async fn get_request_metrics(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view(&ctx, "get_request_metrics", "/get_request_metrics")
            .await
    }

    /// Error metrics.
    #[tool(description = GET_ERROR_METRICS)]
    async fn get_error_metrics(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view(&ctx, "get_error_metrics", "/get_error_metrics")
            .await
    }

    /// Queue status.
    #[tool(description = QUEUE_STATUS)]
    async fn queue_status(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view(&ctx, "queue_status", "/queue-status").await
    }

    /// The backends (lanes).
    #[tool(description = LIST_INFERENCE_BACKENDS)]
    async fn list_inference_backends(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view(&ctx, "list_inference_backends", "/status").await
    }

    /// One backend.
    #[tool(description = GET_BACKEND_STATUS)]
    async fn get_backend_status(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<BackendArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view_with(&ctx, "get_backend_status", "/status", |v| {
            backend_named(v, &args.name)
        })
        .await
    }

    /// Kinds and their models.
    #[tool(description = GET_SUPPORTED_TASKS)]
    async fn get_supported_tasks(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view_with(&ctx, "get_supported_tasks", "/v1/models", tasks_of)
            .await
    }

    /// Where a request would go.
    #[tool(description = SELECT_BACKEND_FOR_INFERENCE)]
    async fn select_backend_for_inference(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<SelectArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(
            match self
                .placement(
                    &ctx,
                    "select_backend_for_inference",
                    true,
                    PlacementAsk {
                        kind: &a.task,
                        model: &a.model,
                        backend: a.backend.as_deref(),
                        probe: match (a.messages, a.prompt) {
                            (Some(m), _) => Some(Probe::Messages(m)),
                            (None, Some(p)) => Some(Probe::Text(p)),
                            (None, None) => None,
                        },
                    },
                )
                .await?
            {
                Ok(v) => CallToolResult::success(vec![ContentBlock::text(
                    serde_json::to_string_pretty(&v).unwrap_or_default(),
                )]),
                Err(e) => e,
            },
        )
    }

    /// How long a request sent now would wait.
    #[tool(description = ESTIMATE_WAIT)]
    async fn estimate_wait(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<EstimateArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(match self.estimate(&ctx, &a.task, &a.model).await? {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )]),
            Err(e) => e,
        })
    }

    /// Run a request of any task through the queue, saying where it was placed.
    #[tool(description = ROUTE_INFERENCE_REQUEST)]
    async fn route_inference_request(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(a): Parameters<RouteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        // Where it goes is part of the call (its inference is what is charged).
        let placed = match self
            .placement(
                &ctx,
                "route_inference_request",
                false,
                PlacementAsk {
                    kind: &a.task,
                    model: &a.model,
                    backend: None,
                    probe: None,
                },
            )
            .await?
        {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let (width, height) = (a.width.unwrap_or(512), a.height.unwrap_or(512));
        let mut result = match a.task.as_str() {
            "txt2txt" => {
                let args = ChatArgs {
                    model: a.model,
                    messages: a.messages,
                    prompt: a.prompt,
                    temperature: a.temperature,
                    max_tokens: a.max_tokens,
                };
                self.txt2txt(ctx, Parameters(args)).await?
            }
            "img2txt" => {
                let args = VisionArgs {
                    model: a.model,
                    prompt: a.prompt,
                    image: a.image,
                    messages: a.messages,
                    temperature: a.temperature,
                    max_tokens: a.max_tokens,
                };
                self.img2txt(ctx, Parameters(args)).await?
            }
            "txt2img" => {
                let args = ImageArgs {
                    model: a.model,
                    prompt: a.prompt.unwrap_or_default(),
                    width,
                    height,
                    steps: a.steps,
                    seed: a.seed,
                    negative_prompt: None,
                    n: None,
                };
                self.txt2img(ctx, Parameters(args)).await?
            }
            "img2img" => {
                let args = EditArgs {
                    model: a.model,
                    file: a.file.unwrap_or_default(),
                    prompt: a.prompt.unwrap_or_default(),
                    width,
                    height,
                    steps: a.steps,
                    seed: a.seed,
                    negative_prompt: None,
                    n: None,
                };
                self.img2img(ctx, Parameters(args)).await?
            }
            other => {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid_request (400): `task`: {:?} cannot be routed by this tool; use txt2txt, img2txt, txt2img or img2img",
                    im_service::truncate(other, 32)
                ))]));
            }
        };
        let note = json!({"placed_on": placed["backend"], "reason": placed["reason"],
                          "model_loaded": placed["model_loaded"], "routing": placed["routing"]});
        result
            .content
            .insert(0, ContentBlock::text(note.to_string()));
        Ok(result)
    }

    /// Models.
    #[tool(description = LIST_MODELS)]
    async fn list_models(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.view(&ctx, "list_models", "/v1/models").await
    }
}

// The tools' descriptions: what a model reads to pick a tool and call it.

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

/// Middleware for MCP served alone (`im-mcp --http`, no HTTP API beside it): a valid key with the
/// `infer` scope, or 401 (no or a wrong key) or 403 (another scope), in the error table's shape.
pub async fn require_key(
    axum::extract::State(keys): axum::extract::State<Keys>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let refused = match key_of(req.headers()).and_then(|k| keys.check(k)) {
        None => im_service::unauthorized(),
        Some(k) if !keys.allows(k, Scope::Infer) => im_service::forbidden(Scope::Infer),
        Some(_) => return next.run(req).await,
    };
    let status = axum::http::StatusCode::from_u16(refused.status())
        .unwrap_or(axum::http::StatusCode::UNAUTHORIZED);
    (status, axum::Json(refused.body())).into_response()
}
