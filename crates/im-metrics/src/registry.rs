//! One instance's Prometheus registry: a metrics-exporter-prometheus recorder that is not the
//! process's global recorder, so every [`crate::Metrics`] counts only what it was told.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::names;

/// Latency buckets (seconds) for queue wait and processing: from 1 ms to 30 min.
const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];
/// Buckets for im's own overhead (seconds): 10 µs to 100 ms.
const FAST_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1,
];

static METADATA: Metadata<'static> = Metadata::new("im", Level::INFO, Some(module_path!()));

/// The registry. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Registry {
    recorder: std::sync::Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(names::OVERHEAD_SECONDS.into()), FAST_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SLOW_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        Registry {
            recorder: std::sync::Arc::new(recorder),
            handle,
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        Key::from_parts(name, labels)
    }

    /// The counter `name{labels}`.
    pub(crate) fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    /// The gauge `name{labels}`.
    pub(crate) fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    /// The histogram `name{labels}`.
    pub(crate) fn histogram(
        &self,
        name: &'static str,
        labels: &[(&'static str, String)],
    ) -> Histogram {
        self.recorder
            .register_histogram(&Self::key(name, labels), &METADATA)
    }

    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}
