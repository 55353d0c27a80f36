//! `[tracing]`: OpenTelemetry traces (the `im-telemetry` crate), and the logging settings beside.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[tracing]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingEntry {
    /// The OTLP/HTTP traces URL of a collector (Jaeger, Tempo, an OpenTelemetry Collector),
    /// e.g. `http://jaeger:4318/v1/traces`. Absent: no traces are exported (the default).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of im's spans.
    pub service_name: String,
    /// Share of the traces im starts that are kept, 0 to 1; a client's `traceparent` decides
    /// for its own requests.
    pub sample_ratio: f64,
    /// Seconds one export may take.
    pub export_timeout_s: f64,
}

impl Default for TracingEntry {
    fn default() -> TracingEntry {
        TracingEntry {
            otlp_endpoint: None,
            service_name: "im".into(),
            sample_ratio: 1.0,
            export_timeout_s: 10.0,
        }
    }
}

impl TracingEntry {
    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.otlp().map(|_| ())
    }

    /// The exporter's settings, or `None` when traces are off.
    pub fn otlp(&self) -> Result<Option<im_telemetry::Otlp>, ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("tracing.sample_ratio", "a number from 0 to 1"));
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid("tracing.service_name", "must not be empty"));
        }
        if !(self.export_timeout_s.is_finite()
            && self.export_timeout_s > 0.0
            && self.export_timeout_s <= 300.0)
        {
            return Err(invalid(
                "tracing.export_timeout_s",
                "a positive number of seconds, at most 300",
            ));
        }
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        // im speaks plain HTTP to collectors (no TLS stack is built in); a sidecar collector or
        // a TLS-terminating proxy reaches remote ones.
        if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
            return Err(invalid(
                "tracing.otlp_endpoint",
                "an http:// URL of an OTLP/HTTP traces endpoint, e.g. http://jaeger:4318/v1/traces",
            ));
        }
        Ok(Some(im_telemetry::Otlp {
            endpoint: endpoint.clone(),
            service_name: self.service_name.clone(),
            sample_ratio: self.sample_ratio,
            timeout: Duration::from_secs_f64(self.export_timeout_s),
        }))
    }
}
