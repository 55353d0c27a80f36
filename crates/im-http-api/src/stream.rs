//! Server-sent events for a chat or completion stream: the chunks once dispatched; a failure
//! after the stream started becomes an SSE error event (the service's mapping, in the error
//! table's shape), then `[DONE]`; never a silent close.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use im_service::{ChunkStream, StreamItem};

/// The SSE response of `stream`.
pub fn chunk_events(stream: ChunkStream) -> Response {
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let events = match s.next().await? {
            StreamItem::Chunk { raw, .. } => vec![Event::default().data(raw.to_string())],
            StreamItem::Failed(err) => vec![
                Event::default().event("error").data(err.body().to_string()),
                Event::default().data("[DONE]"),
            ],
            StreamItem::End => vec![Event::default().data("[DONE]")],
        };
        Some((events, s))
    });
    let events = futures_util::StreamExt::flat_map(events, |evs| {
        futures_util::stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
