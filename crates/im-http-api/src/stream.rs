//! Server-sent events for a chat or completion stream: the chunks once dispatched; a failure
//! after the stream started becomes an SSE error event (the service's mapping, in the error
//! table's shape), then `[DONE]`; never a silent close.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use im_service::{ChunkStream, StreamItem};

/// The SSE response of `stream`.
pub fn chunk_events(stream: ChunkStream) -> Response {
    sse(chunk_event_stream(stream, None))
}

/// An SSE response of `events`, kept alive while they are slow.
pub(crate) fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let events = futures_util::StreamExt::map(events, Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The events of `stream`: each chunk's data, then `[DONE]` (after an `error` event when it
/// failed); `before_done` goes just before `[DONE]`.
pub(crate) fn chunk_event_stream(
    stream: ChunkStream,
    before_done: Option<Event>,
) -> impl Stream<Item = Event> + Send + 'static {
    let events = futures_util::stream::unfold(
        (stream, before_done),
        |(mut s, mut before_done)| async move {
            let done = |mut events: Vec<Event>, before: Option<Event>| {
                events.extend(before);
                events.push(Event::default().data("[DONE]"));
                events
            };
            let events = match s.next().await? {
                StreamItem::Chunk { raw, .. } => vec![Event::default().data(raw.to_string())],
                StreamItem::Failed(err) => done(
                    vec![Event::default().event("error").data(err.body().to_string())],
                    before_done.take(),
                ),
                StreamItem::End => done(Vec::new(), before_done.take()),
            };
            Some((events, (s, before_done)))
        },
    );
    futures_util::StreamExt::flat_map(events, futures_util::stream::iter)
}
