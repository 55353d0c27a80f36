//! Shared state and the middleware that makes a [`Caller`] of every request: its request id
//! (taken when sane, else made), its key (checked in constant time) and the key's rate limit.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use im_service::{Caller, Principal, Service, TRACE_TARGET};
use tracing::field::Empty;

use crate::error::HttpError;
use crate::routes::{self, Access};

/// A request's own class (`X-Im-Priority`): it may lower its tenant's.
const PRIORITY: axum::http::HeaderName = axum::http::HeaderName::from_static("x-im-priority");

/// What the handlers share: the service, and the durable jobs when they are on. One `Arc`, so
/// each request's copy costs one count (its parts would cost a dozen).
#[derive(Clone, Debug)]
pub struct AppState(std::sync::Arc<Parts>);

/// The parts of [`AppState`], read through it.
#[derive(Clone, Debug)]
pub struct Parts {
    /// The service (engine, keys, limits).
    pub service: Service,
    /// Durable jobs (`/v1/jobs`), when configured; set once (at start, or in distributed mode
    /// when this replica starts scheduling).
    pub jobs: JobsSlot,
    /// Reloads the configuration (`POST /admin/reload`), when the binary offers it.
    pub reload: Option<std::sync::Arc<dyn Reload>>,
}

/// Where the job service is, once it runs.
#[derive(Clone, Debug, Default)]
pub struct JobsSlot(std::sync::Arc<std::sync::OnceLock<im_jobs::Jobs>>);

impl JobsSlot {
    /// A slot holding `jobs`.
    pub fn with(jobs: im_jobs::Jobs) -> JobsSlot {
        let slot = JobsSlot::default();
        slot.set(jobs);
        slot
    }

    /// Put the job service in (the first one stays).
    pub fn set(&self, jobs: im_jobs::Jobs) {
        let _ = self.0.set(jobs);
    }

    /// The job service, once it runs.
    pub fn get(&self) -> Option<&im_jobs::Jobs> {
        self.0.get()
    }
}

/// Reloads a running im's configuration.
#[async_trait::async_trait]
pub trait Reload: Send + Sync + std::fmt::Debug {
    /// Read the configuration again and apply what may change live; the settings that changed,
    /// or why nothing was (the running configuration stays).
    async fn reload(&self) -> Result<Vec<String>, String>;
}

impl AppState {
    /// State over `service`, without jobs.
    pub fn new(service: Service) -> AppState {
        AppState(std::sync::Arc::new(Parts {
            service,
            jobs: JobsSlot::default(),
            reload: None,
        }))
    }

    /// State over `service` with `jobs`.
    pub fn with_jobs(service: Service, jobs: im_jobs::Jobs) -> AppState {
        AppState(std::sync::Arc::new(Parts {
            service,
            jobs: JobsSlot::with(jobs),
            reload: None,
        }))
    }

    /// The same state, reloading the configuration with `reload` (`POST /admin/reload`).
    #[must_use]
    pub fn with_reload(self, reload: std::sync::Arc<dyn Reload>) -> AppState {
        let mut parts = std::sync::Arc::unwrap_or_clone(self.0);
        parts.reload = Some(reload);
        AppState(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The request's arrival: when it reached im (for the overhead figure), and whether it asked to
/// hear how its wait goes (`X-Im-Progress`, or its tenant's `progress`).
#[derive(Clone, Copy, Debug)]
pub struct Arrived {
    /// When it reached im.
    pub at: Instant,
    /// A stream in progress mode ([`crate::progress`]).
    pub progress: bool,
}

pub use im_edge::caller::{key_of, request_id_of};

/// Middleware: the request's id (echoed as `X-Request-Id` on every response), then what its
/// route needs ([`crate::routes::access`]): for a keyed route the key, its scope and (unless the
/// route charges its units one by one) the key's and tenant's rates; the handlers receive the
/// [`Caller`] and when it [`Arrived`]. All of it is done when the request is handed over, so the
/// future that waits for the answer holds only the inner service's future, the span and the id.
#[derive(Clone, Debug)]
pub struct CallerLayer(pub AppState);

impl<S> tower::Layer<S> for CallerLayer {
    type Service = WithCaller<S>;

    fn layer(&self, inner: S) -> WithCaller<S> {
        WithCaller {
            st: self.0.clone(),
            inner,
        }
    }
}

/// The service [`CallerLayer`] makes.
#[derive(Clone, Debug)]
pub struct WithCaller<S> {
    st: AppState,
    inner: S,
}

impl<S> tower::Service<Request> for WithCaller<S>
where
    S: tower::Service<Request, Error = std::convert::Infallible> + Clone,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = CallerFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> CallerFuture<S::Future> {
        let st = &self.st;
        let at = Instant::now();
        let id = request_id_of(req.headers()).unwrap_or_else(|| st.service.new_request_id());
        let entry = routes::entry(req.uri().path());
        let span = request_span(&req, entry, &id);
        let admitted = {
            let _admission =
                tracing::info_span!(target: TRACE_TARGET, parent: &span, "admission").entered();
            match routes::access_of(entry) {
                Access::Key { scope, charge } => {
                    st.service.authorize(key_of(req.headers()), scope, charge)
                }
                // Checked by the session, the signature or not at all.
                Access::Open | Access::Session | Access::Signed => Ok(Principal::anonymous()),
            }
        };
        let batch = match req.headers().get(PRIORITY).map(HeaderValue::to_str) {
            None => Ok(false),
            Some(Ok(v)) if v.eq_ignore_ascii_case("batch") => Ok(true),
            Some(Ok(v)) if v.eq_ignore_ascii_case("interactive") => Ok(false),
            Some(_) => Err(im_service::ServiceError::invalid(
                "X-Im-Priority",
                "must be `interactive` or `batch` (a request may lower its tenant's class)",
            )),
        };
        let admitted = admitted.and_then(|who| batch.map(|b| (who, b)));
        let admitted = admitted.and_then(|(who, b)| {
            let progress = crate::progress::wanted(req.headers(), &st.service, &who)?;
            Ok((who, b, progress))
        });
        let answer = match admitted {
            Ok((who, batch, progress)) => {
                let mut caller = Caller::new(&who, id.clone());
                caller.batch = batch;
                let arrived = Arrived { at, progress };
                match entry.and_then(|e| e.serves) {
                    // A JSON route is served here: its body read, the service's answer written.
                    Some(route) if req.method() == axum::http::Method::POST => {
                        Answer::Direct(Box::pin(crate::respond::direct(
                            st.clone(),
                            route,
                            caller,
                            arrived,
                            req.into_body(),
                        )))
                    }
                    _ => {
                        req.extensions_mut().insert(caller);
                        req.extensions_mut().insert(arrived);
                        // The inner service was made ready by `poll_ready`: it serves this
                        // request, a clone stays for the next.
                        let ready = self.inner.clone();
                        let mut inner = std::mem::replace(&mut self.inner, ready);
                        Answer::Pending(Box::pin(span.in_scope(|| inner.call(req))))
                    }
                }
            }
            Err(e) => Answer::Ready(Some(Box::new(HttpError(e).into_response()))),
        };
        CallerFuture {
            answer,
            span,
            id: Some(id),
        }
    }
}

/// The answer of a request [`WithCaller`] handed on, served itself, or refused.
enum Answer<F> {
    /// Boxed: a request the router serves is not a JSON route's, which waits in the queue; the
    /// future every request's connection holds stays small.
    Pending(std::pin::Pin<Box<F>>),
    /// A JSON route's answer ([`crate::respond::direct`]).
    Direct(std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>),
    /// Boxed too: a refusal is rare, and a response inline would make room for it in every
    /// request's future.
    Ready(Option<Box<Response>>),
}

impl<F> std::fmt::Debug for Answer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Pending(_) => "Pending",
            Answer::Direct(_) => "Direct",
            Answer::Ready(_) => "Ready",
        })
    }
}

/// What [`WithCaller`] waits on: the inner service's answer, inside the request's span, then
/// the span's status and the `X-Request-Id` header.
#[derive(Debug)]
pub struct CallerFuture<F> {
    answer: Answer<F>,
    span: tracing::Span,
    /// Taken when the answer is written.
    id: Option<String>,
}

impl<F, R> std::future::Future for CallerFuture<F>
where
    F: std::future::Future<Output = Result<R, std::convert::Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let mut resp = match &mut this.answer {
            Answer::Pending(inner) => {
                let _entered = this.span.enter();
                match std::task::ready!(inner.as_mut().poll(cx)) {
                    Ok(r) => r.into_response(),
                    Err(never) => match never {},
                }
            }
            Answer::Direct(answer) => {
                let _entered = this.span.enter();
                std::task::ready!(answer.as_mut().poll(cx))
            }
            Answer::Ready(r) => r.take().map(|r| *r).unwrap_or_default(),
        };
        let status = resp.status();
        this.span
            .record("http.response.status_code", status.as_u16());
        if status.is_server_error() || status == axum::http::StatusCode::TOO_MANY_REQUESTS {
            this.span.record("otel.status_code", "ERROR");
        }
        if let Some(id) = this.id.take()
            && let Ok(v) = HeaderValue::from_maybe_shared(axum::body::Bytes::from(id))
        {
            resp.headers_mut().insert(im_edge::caller::REQUEST_ID, v);
        }
        std::task::Poll::Ready(Ok(resp))
    }
}

/// The request's root span in im, continuing the client's trace when it sent `traceparent`.
fn request_span(req: &Request, entry: Option<&routes::Entry>, id: &str) -> tracing::Span {
    let method = req.method().as_str();
    // The route's template, from the route table (the middleware runs before axum's routing).
    let route = entry.map(|e| e.path);
    let span = tracing::info_span!(target: TRACE_TARGET, "request", otel.name = Empty,
        otel.kind = "server", http.request.method = method, http.route = route.unwrap_or(""),
        request_id = id, http.response.status_code = Empty, otel.status_code = Empty);
    // Without an exporter the span is off: nothing is formatted or parsed for it.
    if !span.is_disabled() {
        span.record(
            "otel.name",
            route.map_or_else(|| method.to_owned(), |r| format!("{method} {r}")),
        );
        im_telemetry::accept_parent(&span, req.headers());
    }
    span
}
