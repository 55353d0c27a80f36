//! The Grafana dashboard: every metric it queries is one im exports.

use std::collections::BTreeSet;

use super::Deploy;
use anyhow::{Context, Result, ensure};
use serde_json::Value;

pub(super) fn check(d: &Deploy) -> Result<String> {
    // Dashboard: every metric it queries is one im exports (the metrics crate's own list).
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(
        d.dir.join("grafana/dashboards/im.json"),
    )?)?;
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().context("dashboard: no panels")? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(base) = word.strip_prefix("im_").map(|_| word) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
                    used.insert(base.to_owned());
                }
            }
        }
    }
    let known: BTreeSet<&str> = im_metrics::names::ALL.iter().copied().collect();
    for m in &used {
        ensure!(
            known.contains(m.as_str()),
            "the dashboard queries {m}, which im does not export"
        );
    }
    for needed in [
        im_metrics::names::QUEUE_DEPTH,
        im_metrics::names::QUEUE_WAIT_SECONDS,
        im_metrics::names::SWITCHES_TOTAL,
        im_metrics::names::IN_FLIGHT,
        im_metrics::names::UPSTREAM_ERRORS_TOTAL,
        im_metrics::names::OVERHEAD_SECONDS,
    ] {
        ensure!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
    Ok(format!(
        "dashboard queries {} metrics, all exported by im",
        used.len()
    ))
}
