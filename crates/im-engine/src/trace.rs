//! The spans of one request's way through the engine, under the caller's span (the HTTP layer's
//! `request`): `queue_wait` from acceptance to the first dispatch, then `dispatch` until the
//! request leaves, holding one `upstream` span per attempt (a retry is a second `upstream`).
//!
//! The spans use [`TRACE_TARGET`], the one target exported as OpenTelemetry spans; with nothing
//! exporting, each costs a filter check. The upstream span is the current span of its attempt's
//! task, so a client header hook can write its trace context into the upstream request.

use tracing::Span;
use tracing::field::Empty;

/// The `tracing` target of the request-path spans (`im-telemetry` exports exactly these).
pub const TRACE_TARGET: &str = "im::trace";

/// One request's engine spans; nothing when tracing is off (a queued request then holds one
/// word, not three spans).
#[derive(Debug)]
pub(crate) struct RequestTrace(Option<Box<Spans>>);

#[derive(Debug)]
struct Spans {
    /// The caller's span at submit: the parent of the rest.
    parent: Span,
    /// Open from acceptance until the first dispatch.
    queue: Span,
    /// Open from the first dispatch until the request leaves.
    dispatch: Span,
}

impl RequestTrace {
    /// The request was accepted into the queue of `kind` and `model`.
    pub fn accepted(parent: Span, kind: &str, model: &str) -> RequestTrace {
        // A caller without a span of its own (a WebSocket message, a merged batch) gets one here,
        // so its spans still form one trace.
        let parent = if parent.is_none() {
            tracing::info_span!(target: TRACE_TARGET, parent: None, "request", kind, model)
        } else {
            parent
        };
        let queue = tracing::info_span!(target: TRACE_TARGET, parent: &parent, "queue_wait",
            kind, model, outcome = Empty, otel.status_code = Empty);
        // Disabled (the traced target is off): nothing to keep. `is_disabled`, not `is_none`:
        // a span the filter turned off is not `Span::none()`.
        if parent.is_disabled() && queue.is_disabled() {
            return RequestTrace(None);
        }
        RequestTrace(Some(Box::new(Spans {
            parent,
            queue,
            dispatch: Span::none(),
        })))
    }

    /// Attempt `attempt` goes to `lane`: closes the queue wait (on the first) and gives the
    /// attempt's span.
    pub fn dispatched(&mut self, lane: &str, attempt: u32, kind: &str, model: &str) -> Span {
        let Some(s) = self.0.as_deref_mut() else {
            return Span::none();
        };
        if s.dispatch.is_none() {
            s.queue = Span::none();
            s.dispatch = tracing::info_span!(target: TRACE_TARGET, parent: &s.parent,
                "dispatch", kind, model, lane, attempts = Empty, outcome = Empty,
                otel.status_code = Empty);
        }
        s.dispatch.record("lane", lane);
        s.dispatch.record("attempts", attempt);
        tracing::info_span!(target: TRACE_TARGET, parent: &s.dispatch, "upstream",
            otel.kind = "client", lane, attempt, outcome = Empty, error = Empty,
            otel.status_code = Empty)
    }

    /// The request leaves with `outcome` (a label of `im_metrics::outcome`).
    pub fn left(&self, outcome: &str) {
        let Some(s) = self.0.as_deref() else {
            return;
        };
        let open = if s.dispatch.is_none() {
            &s.queue
        } else {
            &s.dispatch
        };
        if s.dispatch.is_none() {
            // Expired, cancelled or shut down before any dispatch: the wait is the whole story.
            s.queue.record("outcome", outcome);
        }
        s.dispatch.record("outcome", outcome);
        if outcome != im_metrics::outcome::SUCCESS {
            open.record("otel.status_code", "ERROR");
        }
    }
}

/// Record an attempt's end on its span: `ok`, or the error's label.
pub(crate) fn attempt_ended(span: &Span, error: Option<&str>) {
    match error {
        None => {
            span.record("outcome", "ok");
        }
        Some(label) => {
            span.record("outcome", "error");
            span.record("error", label);
            span.record("otel.status_code", "ERROR");
        }
    }
}
