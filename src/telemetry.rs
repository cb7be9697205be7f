//! Distributed tracing: exports the gateway's `tracing` spans to an
//! OpenTelemetry collector over OTLP/gRPC when `[tracing]` names one, and
//! carries W3C trace context (`traceparent`, `tracestate`) in from HTTP
//! requests and out to schedulers in gRPC metadata.
//!
//! Off by default: without `otlp_endpoint` nothing is built and the spans
//! (all at DEBUG) are disabled at their call sites, as before. The binary
//! owns the pipeline: [`Telemetry::start`] builds it, [`Telemetry::layer`]
//! joins it to the process's subscriber, [`Telemetry::shutdown`] flushes
//! it on exit. Nothing here is a process global, so a test can run its own
//! pipeline under its own subscriber.
//!
//! Depends on nothing else of the gateway; `http` and `cluster` use it.

use std::str::FromStr;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::setting::Invalid;

/// `[tracing]`: where spans go, under which service name, and how many.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of a collector, e.g. `http://collector:4317`.
    /// Unset (the default) turns tracing off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of traces started here that are recorded, 0.0 to 1.0. A
    /// request whose `traceparent` says sampled (or not) is followed as
    /// its caller decided.
    pub sample_ratio: f64,
    /// How long one export to the collector may take; an unreachable or
    /// silent collector costs at most this per batch, never a hang.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Which spans and events are exported, as `target=level` directives
    /// (tracing-subscriber `Targets` syntax). Every dfgraph span is at
    /// DEBUG.
    pub filter: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "dfgraph".into(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
            filter: "dfgraph=debug,warn".into(),
        }
    }
}

impl TracingConfig {
    /// What serde cannot check: the endpoint's form, the ratio's range,
    /// the filter's syntax. The error names the setting within `[tracing]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri = endpoint
                .parse::<axum::http::Uri>()
                .map_err(|e| Invalid::new("otlp_endpoint", format!("{endpoint:?}: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(Invalid::new(
                    "otlp_endpoint",
                    format!(
                        "{endpoint:?} is not an OTLP/gRPC endpoint like http://collector:4317 \
                         (plaintext gRPC only)"
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Invalid::new(
                "sample_ratio",
                format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(Invalid::new("service_name", "must not be empty"));
        }
        if self.export_timeout.is_zero() {
            return Err(Invalid::new("export_timeout", "must be greater than zero"));
        }
        Targets::from_str(&self.filter)
            .map_err(|e| Invalid::new("filter", format!("{:?}: {e}", self.filter)))?;
        Ok(())
    }
}

/// Why the trace pipeline could not be built or flushed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Config(Invalid),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("flushing spans: {0}")]
    Flush(String),
}

/// How log lines are written to stderr (the `log_format` key, the
/// `--log-format` flag). Either way, plain text without colour when stderr
/// is not a terminal (a file, a pipe, a container's log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A running trace pipeline: a batch of finished spans goes to the
/// collector every few seconds, from a thread of the SDK's own.
pub struct Telemetry {
    provider: SdkTracerProvider,
    filter: Targets,
    service_name: String,
}

impl Telemetry {
    /// Builds the exporter when `config` names an endpoint, and nothing
    /// otherwise. Must run inside a Tokio runtime: the gRPC channel to the
    /// collector lives on it (and dials lazily, so a collector that is
    /// down does not stop the start).
    pub fn start(config: &TracingConfig) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        config
            .validate()
            .map_err(|e| TelemetryError::Config(e.within("tracing")))?;
        let filter = Targets::from_str(&config.filter).map_err(|e| {
            TelemetryError::Config(Invalid::new("filter", e.to_string()).within("tracing"))
        })?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        // Parent-based: a caller's sampling decision (the `traceparent`
        // flags) is kept; the ratio decides for traces that start here.
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Telemetry {
            provider,
            filter,
            service_name: config.service_name.clone(),
        }))
    }

    /// The layer that turns the subscriber's `tracing` spans into
    /// OpenTelemetry spans, filtered by `tracing.filter`.
    pub fn layer<S>(&self) -> impl Layer<S> + 'static
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer(self.service_name.clone());
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Span fields say where a span comes from; source locations
            // and thread names would only add noise to every span.
            .with_location(false)
            .with_threads(false)
            .with_filter(self.filter.clone())
    }

    /// Exports every finished span now. Waits (on a blocking thread, so
    /// the runtime that carries the gRPC channel keeps running) at most
    /// 5 s, the SDK's bound; the export itself gives up after
    /// `export_timeout`.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        let provider = self.provider.clone();
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .map_err(|e| TelemetryError::Flush(e.to_string()))?
            .map_err(|e| TelemetryError::Flush(e.to_string()))
    }

    /// Exports what is left and stops the pipeline, within 5 s: call on
    /// exit so the last requests' spans are not lost.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        let provider = self.provider;
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .map_err(|e| TelemetryError::Flush(e.to_string()))?
            .map_err(|e| TelemetryError::Flush(e.to_string()))
    }
}

/// The span `make` creates, if there is a current span for it to join;
/// otherwise none. Work that no request started (the change watcher's
/// polls, websocket pushes, start-up warming) is left untraced, so a
/// collector gets one trace per HTTP request rather than a stream of
/// one-span traces every watch interval.
pub fn child_span(make: impl FnOnce() -> Span) -> Span {
    if Span::current().is_none() {
        Span::none()
    } else {
        make()
    }
}

/// Makes `span` continue the trace of the W3C `traceparent` (and
/// `tracestate`) in `headers`, when they hold a valid one; otherwise the
/// span keeps its place (a new trace for a request span).
pub fn continue_trace(span: &Span, headers: &axum::http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer sees the span (tracing
        // off): then there is no trace to continue.
        let _ = span.set_parent(parent);
    }
}

/// Reads W3C trace context from HTTP headers.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value);
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

/// Adds the current span's trace context to every gRPC request of a
/// client as `traceparent` (and `tracestate`) metadata, so a scheduler
/// that traces joins the console's trace. Adds nothing while tracing is
/// off.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = Span::current().context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_the_defaults_are_valid() {
        let config = TracingConfig::default();
        assert!(config.otlp_endpoint.is_none());
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn bad_settings_are_named() {
        for (config, setting) in [
            (
                TracingConfig {
                    otlp_endpoint: Some("collector:4317".into()),
                    ..TracingConfig::default()
                },
                "tracing.otlp_endpoint",
            ),
            (
                TracingConfig {
                    otlp_endpoint: Some("https://collector:4317".into()),
                    ..TracingConfig::default()
                },
                "tracing.otlp_endpoint",
            ),
            (
                TracingConfig {
                    sample_ratio: 1.5,
                    ..TracingConfig::default()
                },
                "tracing.sample_ratio",
            ),
            (
                TracingConfig {
                    sample_ratio: f64::NAN,
                    ..TracingConfig::default()
                },
                "tracing.sample_ratio",
            ),
            (
                TracingConfig {
                    filter: "dfgraph=loud".into(),
                    ..TracingConfig::default()
                },
                "tracing.filter",
            ),
            (
                TracingConfig {
                    export_timeout: Duration::ZERO,
                    ..TracingConfig::default()
                },
                "tracing.export_timeout",
            ),
        ] {
            let e = config.validate().unwrap_err().within("tracing");
            assert_eq!(e.setting, setting, "{e}");
        }
    }

    #[test]
    fn without_a_trace_nothing_is_injected() {
        let mut interceptor = PropagateTrace;
        let request =
            tonic::service::Interceptor::call(&mut interceptor, tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("traceparent").is_none());
    }
}
