//! `im-telemetry`: where im's logs and traces go.
//!
//! [`init`] installs one `tracing` subscriber with two layers, each with its own filter:
//! - logs to stderr (text or JSON), filtered by `RUST_LOG` or the binary's default;
//! - when an OTLP endpoint is configured, the spans of the request path (one target, [`Settings::traced_target`]) to an
//!   OpenTelemetry collector over OTLP/HTTP (protobuf). The SDK's batch processor exports from its
//!   own thread and drops spans when its queue is full, so exporting never blocks a request.
//!
//! Trace context crosses im in W3C `traceparent` form: [`accept_parent`] continues a client's
//! trace in the request's span, and [`inject_current`] writes the current span's context into an
//! upstream request's headers. Without an endpoint both are no-ops (the global propagator stays
//! the no-op one), and the request-path spans cost one filter check each.
//!
//! The span tree of one request, built by the HTTP layer and the engine:
//! `request` → `admission`, `queue_wait`, `dispatch` → one `upstream` per attempt.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Exporting traces over OTLP/HTTP.
#[derive(Clone, Debug, PartialEq)]
pub struct Otlp {
    /// The collector's traces URL, e.g. `http://jaeger:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of the traces im starts that are kept (0.0..=1.0); a client's sampled flag in
    /// `traceparent` is followed.
    pub sample_ratio: f64,
    /// Limit of one export call.
    pub timeout: Duration,
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Log lines' format.
    pub log_format: LogFormat,
    /// The log filter when `RUST_LOG` is unset, e.g. `info`.
    pub default_filter: String,
    /// Traces, when exported.
    pub otlp: Option<Otlp>,
    /// The `tracing` target whose spans are exported (`im_engine::TRACE_TARGET`): the
    /// request-path spans, not every span of every library.
    pub traced_target: &'static str,
}

/// Setting up telemetry failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("otlp_endpoint: the OTLP exporter cannot be built: {0}")]
    Exporter(String),
    /// A subscriber was installed already.
    #[error("logging is set up already: {0}")]
    AlreadySet(String),
}

/// The running telemetry; dropping it flushes and stops the exporter.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export what is buffered and stop the exporter (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("telemetry: flushing traces at exit failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Install the process's subscriber (logs, and traces when `settings.otlp` is set). rmcp logs
/// whole tool calls (images included) at debug: it stays at warn unless `RUST_LOG` asks for more.
pub fn init(settings: &Settings) -> Result<Telemetry, TelemetryError> {
    // The request-path spans stay out of the log lines (formatting their fields on every
    // request would cost more than it tells): with no exporter, they are off altogether.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        format!(
            "{},rmcp=warn,{}=off",
            settings.default_filter, settings.traced_target
        )
        .into()
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let logs = match settings.log_format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let provider = settings.otlp.as_ref().map(provider).transpose()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("im"))
            .with_filter(Targets::new().with_target(settings.traced_target, tracing::Level::TRACE))
    });
    Registry::default()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(Telemetry { provider })
}

fn provider(otlp: &Otlp) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(otlp.timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        otlp.sample_ratio.clamp(0.0, 1.0),
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(otlp.service_name.clone())
                .build(),
        )
        .build())
}

/// Continue the trace a client's `traceparent` (and `tracestate`) names in `span`. Headers that
/// are missing or malformed leave `span` a root.
pub fn accept_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    // A span that is off (tracing not exported) has no parent to set.
    let _ = span.set_parent(cx);
}

/// Write the current span's trace context (`traceparent`, `tracestate`) into `headers`: how an
/// upstream call joins the request's trace. Nothing is written when no span is exported.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_nothing_is_injected_or_accepted() {
        let span = tracing::info_span!("request");
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        accept_parent(&span, &incoming);
        let _in = span.enter();
        let mut out = http::HeaderMap::new();
        inject_current(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
