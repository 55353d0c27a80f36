//! The route table: every HTTP route im serves, once, with what it needs and where it runs.
//!
//! The router ([`crate::router_with`]), authentication (the `caller` extractor), a follower's
//! forwarding ([`crate::forward`]: what it serves itself, what it checks before reading a body),
//! the routes a job may stand for ([`job_routes`]) and the management relay are all read from
//! [`ROUTES`]; none keeps a list of its own. `scopes.golden` (beside this crate's manifest) is the
//! hand-reviewed list a test holds the table to.

use std::sync::LazyLock;

use axum::routing::{MethodRouter, any, get, post};
use im_service::{Route, Scope};

use crate::state::AppState;
use crate::{admin, infer, jobs, lifecycle, media, openai, ops, seed, tasks, ws};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: it holds no tenant's data (liveness, documentation, the dashboard page).
    Open,
    /// A key with the scope, checked before a body is read; `charge`: the request is one unit of
    /// work (else the units it carries are charged one by one: MCP tool calls).
    Key {
        /// The scope it needs.
        scope: Scope,
        /// Whether the request itself is charged to the key's and tenant's rates.
        charge: bool,
    },
    /// A session that checks its key itself (in the upgrade's headers or its first message),
    /// then each message by its type's scope (`ws::MESSAGES`).
    Session,
    /// Authenticated by a signature, not a key (inbound webhooks).
    Signed,
}

/// Where a route runs in a cluster of replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// On whichever replica gets it (its own health, metrics, documentation, reload).
    Here,
    /// On the replica that schedules (a follower forwards it).
    Scheduler,
}

/// One route.
pub struct Entry {
    /// Its path, in axum's syntax (`{id}`, `{*rest}`).
    pub path: &'static str,
    /// The methods it answers, for the golden list (`ANY`: whatever the upstream takes).
    pub methods: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Where it runs.
    pub runs: Runs,
    /// The JSON route a job may stand for at this path, if any.
    pub job: Option<Route>,
    /// The JSON route it serves on `POST`, if it is one: the caller layer
    /// (`CallerLayer`) serves it straight, without axum's router.
    pub serves: Option<Route>,
    /// Its handler; `None` for a route mounted elsewhere (Swagger UI's, `/mcp`).
    pub handler: Option<fn() -> MethodRouter<AppState>>,
}

const fn infer() -> Access {
    Access::Key {
        scope: Scope::Infer,
        charge: true,
    }
}

const fn metrics() -> Access {
    Access::Key {
        scope: Scope::Metrics,
        charge: true,
    }
}

const fn admin() -> Access {
    Access::Key {
        scope: Scope::Admin,
        charge: true,
    }
}

macro_rules! route {
    ($path:literal, $methods:literal, $access:expr, $runs:ident, $job:expr, $handler:expr) => {
        Entry {
            path: $path,
            methods: $methods,
            access: $access,
            runs: Runs::$runs,
            job: $job,
            serves: None,
            handler: Some(|| $handler),
        }
    };
    // A JSON route: `POST` only, served by the caller layer; its handler (axum's route, and the
    // OpenAPI document's) answers as that path does.
    ($path:literal, json $serves:expr, $access:expr, $runs:ident, $job:expr, $handler:expr) => {
        Entry {
            path: $path,
            methods: "POST",
            access: $access,
            runs: Runs::$runs,
            job: $job,
            serves: Some($serves),
            handler: Some(|| post($handler)),
        }
    };
    ($path:literal, $methods:literal, $access:expr, $runs:ident, mounted) => {
        Entry {
            path: $path,
            methods: $methods,
            access: $access,
            runs: Runs::$runs,
            job: None,
            serves: None,
            handler: None,
        }
    };
}

/// Every route.
pub static ROUTES: &[Entry] = &[
    // The seeds' routes.
    route!(
        "/txt2txt",
        json Route::Txt2Txt,
        infer(),
        Scheduler,
        Some(Route::Txt2Txt),
        seed::txt2txt
    ),
    route!(
        "/txt2img",
        json Route::Txt2Img,
        infer(),
        Scheduler,
        Some(Route::Txt2Img),
        seed::txt2img
    ),
    route!(
        "/img2img",
        json Route::Img2Img,
        infer(),
        Scheduler,
        Some(Route::Img2Img),
        seed::img2img
    ),
    route!(
        "/img2txt",
        json Route::Img2Txt,
        infer(),
        Scheduler,
        Some(Route::Img2Txt),
        seed::img2txt
    ),
    // OpenAI's, and LocalAI's aliases without `/v1`.
    route!(
        "/v1/chat/completions",
        json Route::ChatCompletions,
        infer(),
        Scheduler,
        Some(Route::ChatCompletions),
        openai::chat_completions
    ),
    route!(
        "/chat/completions",
        json Route::ChatCompletions,
        infer(),
        Scheduler,
        None,
        openai::chat_completions
    ),
    route!(
        "/v1/completions",
        json Route::Completions,
        infer(),
        Scheduler,
        Some(Route::Completions),
        openai::completions
    ),
    route!(
        "/completions",
        json Route::Completions,
        infer(),
        Scheduler,
        None,
        openai::completions
    ),
    route!(
        "/v1/embeddings",
        json Route::Embeddings,
        infer(),
        Scheduler,
        Some(Route::Embeddings),
        openai::embeddings
    ),
    route!(
        "/embeddings",
        json Route::Embeddings,
        infer(),
        Scheduler,
        None,
        openai::embeddings
    ),
    route!(
        "/v1/images/generations",
        json Route::ImageGenerations,
        infer(),
        Scheduler,
        Some(Route::ImageGenerations),
        openai::images_generations
    ),
    route!(
        "/images/generations",
        json Route::ImageGenerations,
        infer(),
        Scheduler,
        None,
        openai::images_generations
    ),
    route!(
        "/v1/models",
        "GET",
        infer(),
        Scheduler,
        None,
        get(openai::models)
    ),
    route!(
        "/v1/queue/estimate",
        "GET",
        infer(),
        Scheduler,
        None,
        get(ops::estimate)
    ),
    route!(
        "/v1/rerank",
        json Route::Rerank,
        infer(),
        Scheduler,
        Some(Route::Rerank),
        media::rerank
    ),
    route!(
        "/rerank",
        json Route::Rerank,
        infer(),
        Scheduler,
        None,
        media::rerank
    ),
    route!(
        "/v1/audio/speech",
        json Route::Speech,
        infer(),
        Scheduler,
        Some(Route::Speech),
        media::speech
    ),
    route!(
        "/audio/speech",
        json Route::Speech,
        infer(),
        Scheduler,
        None,
        media::speech
    ),
    route!(
        "/tts",
        json Route::Speech,
        infer(),
        Scheduler,
        None,
        media::tts
    ),
    route!(
        "/v1/audio/transcriptions",
        "POST",
        infer(),
        Scheduler,
        None,
        post(media::transcriptions)
    ),
    route!(
        "/audio/transcriptions",
        "POST",
        infer(),
        Scheduler,
        None,
        post(media::transcriptions)
    ),
    route!(
        "/v1/images/edits",
        "POST",
        infer(),
        Scheduler,
        None,
        post(media::images_edits)
    ),
    route!(
        "/images/edits",
        "POST",
        infer(),
        Scheduler,
        None,
        post(media::images_edits)
    ),
    // The seeds' dialects: `/v1/infer` and the task models.
    route!(
        "/v1/infer",
        json Route::Infer,
        infer(),
        Scheduler,
        Some(Route::Infer),
        infer::infer
    ),
    route!(
        "/v1/infer/stream",
        json Route::InferStream,
        infer(),
        Scheduler,
        None,
        infer::infer_stream
    ),
    route!("/", "GET", Access::Open, Scheduler, None, get(infer::root)),
    route!(
        "/infer",
        json Route::Task,
        infer(),
        Scheduler,
        Some(Route::Task),
        tasks::infer
    ),
    route!(
        "/infer/batch",
        "POST",
        infer(),
        Scheduler,
        None,
        post(tasks::infer_batch)
    ),
    route!(
        "/models",
        "GET",
        infer(),
        Scheduler,
        None,
        get(tasks::models)
    ),
    // Sessions: WebSocket and MCP (each message and tool call is checked and charged).
    route!(
        "/ws/{client_id}",
        "GET",
        Access::Session,
        Scheduler,
        None,
        get(ws::ws)
    ),
    route!(
        "/mcp",
        "GET POST DELETE",
        Access::Key {
            scope: Scope::Infer,
            charge: false
        },
        Scheduler,
        mounted
    ),
    // Durable jobs and inbound webhooks.
    route!(
        "/v1/jobs",
        "GET POST",
        infer(),
        Scheduler,
        None,
        post(jobs::create).get(jobs::list)
    ),
    route!(
        "/v1/jobs/{id}",
        "GET DELETE",
        infer(),
        Scheduler,
        None,
        get(jobs::get).delete(jobs::cancel)
    ),
    route!(
        "/v1/jobs/{id}/result",
        "GET",
        infer(),
        Scheduler,
        None,
        get(jobs::result)
    ),
    route!(
        "/webhooks/ingest",
        "POST",
        Access::Signed,
        Scheduler,
        None,
        post(jobs::ingest)
    ),
    // Views: aggregates, and a tenant's own details.
    route!(
        "/get_request_metrics",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::request_metrics)
    ),
    route!(
        "/get_error_metrics",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::error_metrics)
    ),
    route!(
        "/mcp/get_request_metrics",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::request_metrics)
    ),
    route!(
        "/mcp/get_error_metrics",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::error_metrics)
    ),
    route!(
        "/queue-status",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::queue_status)
    ),
    route!(
        "/status",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::status)
    ),
    route!(
        "/placement",
        "GET",
        metrics(),
        Scheduler,
        None,
        get(ops::placement)
    ),
    route!("/metrics", "GET", metrics(), Here, None, get(ops::metrics)),
    // Liveness, documentation, the dashboard's page (its data comes over the WebSocket).
    route!("/health", "GET", Access::Open, Here, None, get(ops::health)),
    route!("/ready", "GET", Access::Open, Here, None, get(ops::ready)),
    route!(
        "/dashboard",
        "GET",
        Access::Open,
        Here,
        None,
        get(ops::dashboard)
    ),
    route!("/openapi.json", "GET", Access::Open, Here, mounted),
    route!("/docs", "GET", Access::Open, Here, mounted),
    route!("/docs/", "GET", Access::Open, Here, mounted),
    route!("/docs/{*rest}", "GET", Access::Open, Here, mounted),
    // Operations.
    route!(
        "/models/load",
        "POST",
        admin(),
        Scheduler,
        None,
        post(lifecycle::load)
    ),
    route!(
        "/models/unload",
        "POST",
        admin(),
        Scheduler,
        None,
        post(lifecycle::unload)
    ),
    route!(
        "/admin/reload",
        "POST",
        admin(),
        Here,
        None,
        post(ops::reload)
    ),
    // LocalAI's management routes, relayed (never the ones that load or unload a model).
    route!(
        "/models/available",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/models/galleries",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/models/apply",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/models/delete/{name}",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/models/jobs",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/models/jobs/{uuid}",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/backends",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/backends/{*rest}",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/backend/monitor",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/system",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
    route!(
        "/system/{*rest}",
        "ANY",
        admin(),
        Scheduler,
        None,
        any(admin::relay)
    ),
];

static MATCHER: LazyLock<matchit::Router<&'static Entry>> = LazyLock::new(|| {
    let mut m = matchit::Router::new();
    for e in ROUTES {
        m.insert(e.path, e)
            .unwrap_or_else(|err| panic!("route table: {} does not insert: {err}", e.path));
    }
    m
});

/// The entry serving `path`, if any.
pub fn entry(path: &str) -> Option<&'static Entry> {
    MATCHER.at(path).ok().map(|m| *m.value)
}

/// What `path` needs: an unknown path needs an `infer` key (so that a guess at a route is
/// refused as unauthorized before it is told it does not exist).
pub fn access(path: &str) -> Access {
    access_of(entry(path))
}

/// What a path served by `entry` needs (an unknown path: as [`access`] says).
pub fn access_of(entry: Option<&Entry>) -> Access {
    entry.map_or(infer(), |e| e.access)
}

/// Whether a replica serves `path` itself rather than forwarding it to the scheduler.
pub fn runs_here(path: &str) -> bool {
    entry(path).is_some_and(|e| e.runs == Runs::Here)
}

/// The JSON routes a job may stand for.
pub fn job_routes() -> impl Iterator<Item = Route> {
    ROUTES.iter().filter_map(|e| e.job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_route_a_job_may_stand_for_is_served_by_the_caller_layer() {
        for e in ROUTES {
            if let Some(job) = e.job {
                assert_eq!(e.serves, Some(job), "{}", e.path);
            }
            if e.serves.is_some() {
                assert_eq!(e.methods, "POST", "{}", e.path);
                assert!(matches!(e.access, Access::Key { .. }), "{}", e.path);
            }
        }
        // The aliases serve the same routes.
        assert_eq!(
            entry("/chat/completions").and_then(|e| e.serves),
            Some(Route::ChatCompletions)
        );
        assert_eq!(entry("/tts").and_then(|e| e.serves), Some(Route::Speech));
        assert_eq!(entry("/v1/jobs").and_then(|e| e.serves), None);
    }
}
