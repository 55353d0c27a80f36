//! `im-http-api`: im's HTTP frontend (SPEC §3), on axum.
//!
//! [`router`] builds the whole API over an [`AppState`] (the service plus HTTP settings);
//! serving it is the binary's job (with `im-edge`'s listener), so tests call
//! `router(state).oneshot(request)`.
//! Handlers are split by concern: [`seed`] (the seeds' routes), [`openai`] (OpenAI-compatible
//! routes on the same queues), [`media`] (rerank, speech, transcription, image edits), [`ops`] (metrics, queue status, health, readiness). [`error`] holds
//! the single error table used for JSON bodies and SSE error events (and by `im-mcp`). Every
//! handler is annotated for utoipa; [`ApiDoc`] collects them, Swagger UI serves at `/docs` and the
//! document at `/openapi.json` (the committed copy is checked by a test).
//!
//! Every route is one line of [`routes::ROUTES`]: its path, handler, scope, where it runs and
//! whether a job may stand for it; the router, authentication, forwarding and the job runner read
//! it. The middleware stack, outermost first: request id → auth (the route's scope, the key's and
//! tenant's rates) → body limit → handler. This crate knows JSON and HTTP; it never talks to LocalAI except through the engine.

pub mod admin;
pub mod error;
mod figures;
pub mod forward;
pub mod infer;
pub mod jobs;
pub mod lifecycle;
pub mod media;
pub mod openai;
pub mod ops;
pub mod progress;
pub mod respond;
pub mod routes;
pub mod seed;
mod state;
mod stream;
pub mod tasks;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use im_service::ErrorType;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ErrorBody, HttpError};
use im_service::api::PassThrough;
use im_service::api::bodies as b;
pub use state::{AppState, Arrived, JobsSlot, Reload, key_of, request_id_of};

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "im: inference manager for LocalAI", description = "Queues chat, image generation, image editing and vision requests per kind and model in front of LocalAI, drains one group before switching models, and bounds every wait. Authenticate with `X-API-Key` or `Authorization: Bearer`."),
    paths(
        seed::txt2txt, seed::txt2img, seed::img2img, seed::img2txt,
        openai::chat_completions, openai::completions, openai::embeddings, openai::images_generations, openai::models,
        media::rerank, media::speech, media::tts, media::transcriptions, media::images_edits,
        admin::relay, infer::infer, infer::infer_stream, infer::root,
        tasks::infer, tasks::infer_batch, tasks::models, lifecycle::load, lifecycle::unload, ws::ws,
        jobs::create, jobs::list, jobs::get, jobs::result, jobs::cancel, jobs::ingest, ops::reload, ops::dashboard,
        ops::request_metrics, ops::error_metrics, ops::queue_status, ops::status, ops::placement, ops::estimate, ops::health, ops::ready, ops::metrics,
    ),
    components(schemas(ErrorBody, error::ErrorDetail, b::Message, b::Txt2TxtRequest, b::Img2TxtRequest,
        b::Txt2ImgRequest, b::Img2ImgRequest, im_service::api::SeedFigures, im_service::api::TextResult,
        im_service::api::ImageResult, b::ChatCompletionRequest, b::CompletionRequest,
        b::EmbeddingRequest, b::ImageGenerationRequest, b::RerankRequest, b::SpeechRequest,
        media::TranscriptionForm, media::ImageEditForm, b::InferRequest, b::InferParams,
        b::InferResponse, b::Timings, b::TaskRequest, tasks::TaskBatch, lifecycle::LoadRequest,
        lifecycle::UnloadRequest, jobs::JobSubmission)),
    modifiers(&SecurityAddon, &PassThrough),
    tags((name = "seed", description = "The seed endpoints"), (name = "openai", description = "OpenAI-compatible endpoints"),
         (name = "operations", description = "Metrics, status, health"),
         (name = "admin", description = "LocalAI's management routes, relayed for `admin` keys"),
         (name = "infer", description = "The seeds' `/v1/infer` dialect"),
         (name = "tasks", description = "Task models with versions: `/infer`, `/infer/batch`, `/models`"),
         (name = "jobs", description = "Durable jobs and signed webhooks: `/v1/jobs`, `/webhooks/ingest`"))
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON (what `/openapi.json` serves and the repo commits).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// A handler panicked (a bug in im): a clean 500 `internal`. The panic's message may quote the
/// request, so it is neither echoed nor logged here (the process's panic hook logs the location).
pub(crate) fn panic_response(
    _: Box<dyn std::any::Any + Send + 'static>,
) -> axum::response::Response {
    tracing::error!("a request handler panicked; answered 500 internal");
    HttpError::new(
        ErrorType::Internal,
        "internal error in im; the request was not completed",
    )
    .into_response()
}

/// The whole HTTP API over `state`, without `/mcp`.
pub fn router(state: AppState) -> Router {
    router_with(state, |r| r)
}

/// The whole HTTP API, with `extra` routes (the binary mounts MCP at `/mcp` this way) behind the
/// same middleware: request id, auth, panic catching, body limit.
pub fn router_with(
    state: AppState,
    extra: impl FnOnce(Router<AppState>) -> Router<AppState>,
) -> Router {
    Router::new().fallback_service(api_with(state, extra))
}

/// What [`router_with`] serves, as a service of its own: what a server that needs no router
/// around it serves (one boxed future less per request).
pub fn api_with(
    state: AppState,
    extra: impl FnOnce(Router<AppState>) -> Router<AppState>,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let limit = state.service.body_limit();
    let api = routes::ROUTES
        .iter()
        .filter_map(|e| Some((e.path, e.handler?)))
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler()))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()));
    let api = extra(api)
        .fallback(|| async {
            HttpError::new(ErrorType::NotFound, "no such route; see /docs").into_response()
        })
        .method_not_allowed_fallback(|| async {
            HttpError::new(
                ErrorType::MethodNotAllowed,
                "method not allowed on this route; see /docs",
            )
            .into_response()
        })
        .with_state(state.clone());
    // The middleware wraps the router once, outside it, rather than every route inside it: a
    // request then clones one stack, not a boxed stack per layer per route.
    tower::ServiceBuilder::new()
        .layer(state::CallerLayer(state))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .service(api)
}
