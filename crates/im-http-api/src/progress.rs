//! Progress mode: a streaming request that asks (`X-Im-Progress: true`, or whose tenant has
//! `progress = true`) gets its response headers as soon as it is admitted, then SSE comment
//! lines while it waits, which every SSE client ignores and every proxy sees as traffic:
//!
//! ```text
//! : queued position=3 eta_ms=4200
//! : loading model=llama-3.2-3b-instruct lane=gpu0
//! ```
//!
//! then the stream as usual. The figures sent as headers otherwise come as one comment before
//! the final event (`: figures x-queue-wait-ms=… x-processing-ms=… x-attempts=… x-im-overhead-ms=…`),
//! and a failure before the first token as an `error` event (the error table's body) then the
//! final event. A request refused at admission (a bad body, a full queue, a rate) still gets its
//! status code: nothing is sent before the queue took it. A request that does not stream is
//! answered as without progress.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::StreamExt;
use im_service::{Answer, Caller, Principal, Progress, Route, Service, ServiceError};
use tokio::sync::mpsc;

use crate::error::HttpError;
use crate::figures::figure_headers;
use crate::respond::write;
use crate::state::{AppState, Arrived};

/// The header that asks for progress.
const PROGRESS: axum::http::HeaderName = axum::http::HeaderName::from_static("x-im-progress");

/// Whether the request asked for progress: `X-Im-Progress` (`true`/`false`), else its
/// tenant's `progress`.
pub(crate) fn wanted(
    headers: &HeaderMap,
    service: &Service,
    who: &Principal,
) -> Result<bool, ServiceError> {
    match headers.get(PROGRESS).map(|v| v.to_str()) {
        None => Ok(service
            .tenants()
            .spec(&who.tenant)
            .is_some_and(|s| s.progress)),
        Some(Ok(v)) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(Ok(v)) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(_) => Err(ServiceError::invalid(
            "X-Im-Progress",
            "must be `true` or `false`",
        )),
    }
}

/// The comment line of `p`.
pub fn comment(p: &Progress) -> String {
    match p {
        Progress::Queued { position, eta } => match eta {
            Some(eta) => format!("queued position={position} eta_ms={}", eta.as_millis()),
            None => format!("queued position={position}"),
        },
        Progress::Loading { model, lane } => format!("loading model={model} lane={lane}"),
    }
}

/// Serve `route` in progress mode (see the module's docs).
pub(crate) async fn respond(
    route: Route,
    st: &AppState,
    caller: &Caller,
    arrived: Arrived,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = {
        let (st, mut caller) = (st.clone(), caller.clone());
        caller.progress = Some(tx);
        async move { st.service.respond(route, bytes, &caller, arrived.at).await }
    };
    let mut run = Box::pin(run);
    // Until the queue took it, the request is answered as without progress.
    let first = tokio::select! {
        biased;
        answer = &mut run => return Ok(write(st, route, answer?, caller, arrived)),
        Some(first) = rx.recv() => first,
    };
    let (events, out) = mpsc::channel::<Event>(16);
    let (st, caller) = (st.clone(), caller.clone());
    tokio::spawn(async move {
        let answer = {
            let mut next = Some(first);
            loop {
                if let Some(p) = next.take()
                    && events
                        .send(Event::default().comment(comment(&p)))
                        .await
                        .is_err()
                {
                    return; // The client went away: dropping `run` cancels the request.
                }
                tokio::select! {
                    biased;
                    answer = &mut run => break answer,
                    p = rx.recv() => next = p,
                    () = events.closed() => return,
                }
            }
        };
        let answer_events = answer_events(&st, route, &caller, arrived, answer);
        futures_util::pin_mut!(answer_events);
        while let Some(e) = answer_events.next().await {
            if events.send(e).await.is_err() {
                return;
            }
        }
    });
    let out =
        futures_util::stream::unfold(
            out,
            |mut out| async move { out.recv().await.map(|e| (e, out)) },
        );
    Ok(crate::stream::sse(out))
}

/// The events that follow the wait: the stream with its figures before its final event, or
/// the failure as an `error` event.
fn answer_events(
    st: &AppState,
    route: Route,
    caller: &Caller,
    arrived: Arrived,
    answer: Result<Answer, ServiceError>,
) -> futures_util::stream::BoxStream<'static, Event> {
    // `/v1/infer/stream` ends with its `error` event; OpenAI's streams with `[DONE]`.
    let last = || (route != Route::InferStream).then(|| Event::default().data("[DONE]"));
    match answer {
        Ok(Answer::Stream {
            stream,
            figures,
            model,
        }) => {
            let mut headers = HeaderMap::new();
            figure_headers(st, &mut headers, &figures, arrived);
            let line = headers
                .iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", v.to_str().ok()?)))
                .collect::<Vec<_>>()
                .join(" ");
            let figures_comment = Some(Event::default().comment(format!("figures {line}")));
            if route == Route::InferStream {
                let id = caller.request_id.clone();
                crate::infer::token_event_stream(
                    stream,
                    &figures,
                    arrived,
                    &id,
                    model,
                    figures_comment,
                )
                .boxed()
            } else {
                crate::stream::chunk_event_stream(stream, figures_comment).boxed()
            }
        }
        Ok(Answer::Body { body, .. }) => {
            let data = Event::default().data(String::from_utf8_lossy(&body));
            futures_util::stream::iter(std::iter::once(data).chain(last())).boxed()
        }
        Err(e) => {
            let error = Event::default().event("error").data(e.body().to_string());
            futures_util::stream::iter(std::iter::once(error).chain(last())).boxed()
        }
    }
}
