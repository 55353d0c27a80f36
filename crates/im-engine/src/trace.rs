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

/// One request's engine spans.
#[derive(Debug)]
pub(crate) struct RequestTrace {
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
        RequestTrace {
            parent,
            queue,
            dispatch: Span::none(),
        }
    }

    /// Attempt `attempt` goes to `lane`: closes the queue wait (on the first) and gives the
    /// attempt's span.
    pub fn dispatched(&mut self, lane: &str, attempt: u32, kind: &str, model: &str) -> Span {
        if self.dispatch.is_none() {
            self.queue = Span::none();
            self.dispatch = tracing::info_span!(target: TRACE_TARGET, parent: &self.parent,
                "dispatch", kind, model, lane, attempts = Empty, outcome = Empty,
                otel.status_code = Empty);
        }
        self.dispatch.record("lane", lane);
        self.dispatch.record("attempts", attempt);
        tracing::info_span!(target: TRACE_TARGET, parent: &self.dispatch, "upstream",
            otel.kind = "client", lane, attempt, outcome = Empty, error = Empty,
            otel.status_code = Empty)
    }

    /// The request leaves with `outcome` (a label of `im_metrics::outcome`).
    pub fn left(&self, outcome: &str) {
        let open = if self.dispatch.is_none() {
            &self.queue
        } else {
            &self.dispatch
        };
        if self.dispatch.is_none() {
            // Expired, cancelled or shut down before any dispatch: the wait is the whole story.
            self.queue.record("outcome", outcome);
        }
        self.dispatch.record("outcome", outcome);
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
