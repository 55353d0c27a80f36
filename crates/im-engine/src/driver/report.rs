//! The translation of what the core decided and what attempts did into metrics, logs and the
//! timeline: one place, so the driver's loop reads as decisions only.

use std::time::Duration;

use im_metrics::Metrics;
use inference_queue::GroupKey;
use localai_client::ClientError;

/// What to record for the driver.
pub(super) struct Report<'a> {
    pub(super) metrics: &'a Metrics,
}

impl Report<'_> {
    /// A lane switched from `from` to `to` (loading `to`'s model when `model_changed`).
    pub(super) fn switched(
        &self,
        lane: &str,
        from: Option<GroupKey>,
        to: GroupKey,
        model_changed: bool,
        model: &str,
    ) {
        let m = self.metrics.engine();
        let from_kind = from.map_or("none", |g| g.kind.as_str());
        m.switched(lane, from_kind, to.kind.as_str());
        let placement = match (model_changed, from) {
            (false, _) => "resident",
            (true, None) => "cold_load",
            (true, Some(_)) => "eviction",
        };
        m.placed(lane, placement);
        let what = if model_changed { "load" } else { "switch" };
        m.lane_event(lane, what, to.kind.as_str(), model);
        tracing::debug!(%lane, from = from_kind, to = %to.kind, %model, model_changed, "switch");
    }

    /// A lane's breaker opened (`open`) or closed.
    pub(super) fn breaker(&self, lane: &str, open: bool) {
        let m = self.metrics.engine();
        if open {
            tracing::warn!(%lane, "breaker opened: upstream failing, holding the queue");
        } else {
            tracing::info!(%lane, "breaker closed");
        }
        m.breaker(lane, open);
        let what = if open {
            "breaker_open"
        } else {
            "breaker_closed"
        };
        m.lane_event(lane, what, "", "");
    }

    /// An attempt on `lane` ended after `took` upstream, failing with `error` or not: the lane's
    /// figures (a caller's own error does not count against the lane) and the error's class.
    pub(super) fn attempt(&self, lane: &str, error: Option<&ClientError>, took: Duration) {
        let m = self.metrics.engine();
        m.lanes()
            .attempt(lane, error.is_none_or(|e| !e.blames_upstream()), took);
        if let Some(e) = error {
            m.upstream_error(lane, &e.label());
        }
    }
}
