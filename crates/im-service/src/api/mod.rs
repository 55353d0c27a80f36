//! The JSON routes as the service knows them, whatever carried the request: an HTTP request, a
//! durable job standing for one. Each route's body is one typed request whose parser and OpenAPI
//! schema are the same type, with its validation beside it ([`bodies`]); it becomes the work it
//! stands for ([`Request`]); the work runs; its answer is shaped the way the route answers
//! ([`Answer`]). Frontends carry bytes in and out and render errors; nothing else.
//!
//! The multipart routes (transcriptions, image edits) are not here: their forms are read by the
//! HTTP frontend and become [`crate::Call`]s directly; they are never jobs.

mod answer;
pub mod bodies;
mod parse;
mod route;

pub use answer::{Answer, Envelope, ImageResult, SeedFigures, TextResult, envelope};
pub use bodies::{PassThrough, Timings};
pub use parse::parse;
pub use route::Route;

use std::time::Instant;

use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::call::Call;
use crate::error::ServiceError;
use crate::registry::RegistryEntry;
use crate::service::Service;

/// A request parsed and validated: the work it stands for, and how its answer is shaped.
#[derive(Debug)]
pub struct Request {
    route: Route,
    work: Work,
}

#[derive(Debug)]
enum Work {
    /// One call on a queue; `model` as the caller named it (an answer may echo it).
    Call { call: Call, model: String },
    /// A task model run over one text (`/infer`).
    Task {
        entry: RegistryEntry,
        text: String,
        params: Map<String, Value>,
    },
}

impl Request {
    /// The route it came by.
    pub fn route(&self) -> Route {
        self.route
    }

    /// Whether its answer is a stream.
    pub fn streams(&self) -> bool {
        matches!(&self.work, Work::Call { call, .. } if call.streams())
    }
}

impl Service {
    /// Run one task request (an item of `/infer/batch`, already parsed or refused) as `caller`:
    /// its envelope and status.
    pub async fn task(
        &self,
        parsed: Result<bodies::TaskRequest, ServiceError>,
        caller: &Caller,
        arrived: Instant,
    ) -> (u16, Envelope) {
        let r = match parsed {
            Ok(r) => r,
            Err(e) => return envelope(&caller.request_id, arrived, None, Err(e)),
        };
        let entry = match self.registry().resolve(&r.model, r.version.as_deref()) {
            Ok(e) => e.clone(),
            Err(e) => return envelope(&caller.request_id, arrived, None, Err(e)),
        };
        let params = r.parameters.unwrap_or_default();
        let outcome = self.run_task(&entry, &r.text, &params, caller).await;
        envelope(&caller.request_id, arrived, Some(&entry), outcome)
    }

    /// Run a call a frontend built itself (the multipart routes' forms) and answer it the way the
    /// OpenAI routes do: the upstream's body as it came, images as `{created, data}`.
    pub async fn answer_call(
        &self,
        call: Call,
        caller: &Caller,
        arrived: Instant,
    ) -> Result<Answer, ServiceError> {
        let model = call.model().to_owned();
        let done = self.run(call, caller).await?;
        answer::of(Route::ChatCompletions, done, &model, caller, arrived)
    }

    /// Parse `body` as `route`'s request, run it as `caller` and answer it: [`Self::request`]
    /// then [`Self::answer`], what every carrier of a JSON route calls. The task route answers
    /// its refusals in its own envelope too. `body` is dropped once parsed, before the request
    /// waits: a body read from a connection may hold that connection's whole read buffer.
    pub fn respond<'a>(
        &'a self,
        route: Route,
        body: bytes::Bytes,
        caller: &'a Caller,
        arrived: Instant,
    ) -> impl std::future::Future<Output = Result<Answer, ServiceError>> + 'a {
        // Parsed before the future: a waiting request's future holds neither the body nor the
        // parsed request, only the answer's.
        let parsed = self.request(route, &body);
        drop(body);
        match parsed {
            Ok(r) => futures_util::future::Either::Left(self.answer(r, caller, arrived)),
            Err(e) if route == Route::Task => futures_util::future::Either::Right(
                std::future::ready(Ok(answer::task(&caller.request_id, arrived, None, Err(e)))),
            ),
            Err(e) => futures_util::future::Either::Right(std::future::ready(Err(e))),
        }
    }

    /// Parse `body` as `route`'s request and validate it: the work it stands for, or the error
    /// naming the field at fault. Nothing runs yet.
    pub fn request(&self, route: Route, body: &[u8]) -> Result<Request, ServiceError> {
        let work = bodies::work(self, route, body)?;
        Ok(Request { route, work })
    }

    /// Run `request` as `caller` and answer it the way its route does; `arrived` is when the
    /// request reached im (an answer may report its total time). An error is the caller's to
    /// render; the task route answers its errors in its own envelope instead.
    pub fn answer<'a>(
        &'a self,
        request: Request,
        caller: &'a Caller,
        arrived: Instant,
    ) -> impl std::future::Future<Output = Result<Answer, ServiceError>> + 'a {
        // Taken apart before the future: it holds what its kind of work needs, not the request.
        let Request { route, work } = request;
        match work {
            // A combinator, not a block: a block would hold the call beside the future it moved
            // into.
            Work::Call { call, model } => futures_util::future::Either::Left(
                futures_util::FutureExt::map(self.run(call, caller), move |done| {
                    answer::of(route, done?, &model, caller, arrived)
                }),
            ),
            Work::Task {
                entry,
                text,
                params,
            } => futures_util::future::Either::Right(async move {
                // Boxed: a waiting request holds the larger task future only when it is one.
                let outcome = Box::pin(self.run_task(&entry, &text, &params, caller)).await;
                Ok(answer::task(
                    &caller.request_id,
                    arrived,
                    Some(&entry),
                    outcome,
                ))
            }),
        }
    }
}
