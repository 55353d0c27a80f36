//! Server-sent events: chunks once dispatched; an error after the stream started becomes an SSE
//! error event (the shape of the error table), then `[DONE]`; never a silent close.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use im_engine::{Completion, Output};

use im_service::{ErrorType, ServiceError};

use crate::error::HttpError;
use crate::state::{AppState, Arrived, figure_headers};

/// An SSE response for a streaming completion (any other output is sent as JSON).
pub fn sse_response(st: &AppState, done: Completion, arrived: Arrived) -> Response {
    let mut headers = axum::http::HeaderMap::new();
    figure_headers(st, &mut headers, &done, arrived);
    let Output::Stream(rx) = done.output else {
        return HttpError::new(ErrorType::Internal, "expected a stream").into_response();
    };
    let state = (rx, false, false); // (chunks, a finish_reason was seen, ended)
    let events = futures_util::stream::unfold(state, |(mut rx, mut finished, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await {
            Some(Ok(chunk)) => {
                finished |= chunk.finish_reason.is_some();
                Some((
                    vec![Event::default().data(chunk.raw.to_string())],
                    (rx, finished, false),
                ))
            }
            Some(Err(e)) => {
                let err = ServiceError::new(
                    ErrorType::UpstreamError,
                    im_metrics::sanitize_text(&e.to_string()),
                );
                Some((
                    vec![
                        Event::default().event("error").data(err.body().to_string()),
                        Event::default().data("[DONE]"),
                    ],
                    (rx, finished, true),
                ))
            }
            None if finished => Some((vec![Event::default().data("[DONE]")], (rx, finished, true))),
            None => {
                let err = ServiceError::new(
                    ErrorType::UpstreamError,
                    "the upstream stream ended before completion",
                );
                Some((
                    vec![
                        Event::default().event("error").data(err.body().to_string()),
                        Event::default().data("[DONE]"),
                    ],
                    (rx, finished, true),
                ))
            }
        }
    });
    let events = futures_util::StreamExt::flat_map(events, |evs| {
        futures_util::stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut().extend(headers);
    resp
}
