//! Logging and trace export, shared by the three services.
//!
//! `HERALD_LOG` (default `info`) is a `tracing` filter such as
//! `info,herald_dispatcher=debug`; `HERALD_LOG_FORMAT` is `text` (default,
//! for people) or `json` (one object per line, for log pipelines).
//!
//! Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with
//! `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` (the default) or `grpc`.
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_BSP_*` are
//! honoured as the OpenTelemetry specification describes.
//!
//! Spans with the target [`EXPORT_ONLY`] exist for the exported trace alone
//! (a webhook request's client span): the log output never sees them, so
//! without an exporter they cost nothing, where the log layer would format
//! every one of their fields for log lines that never name them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

use crate::config::{ConfigError, Env};

/// The target of spans that only the trace exporter sees (no log line is
/// written inside them).
pub const EXPORT_ONLY: &str = "herald::export";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `HERALD_LOG` (default `info`).
    pub filter: String,
    /// `HERALD_LOG_FORMAT` (default `text`).
    pub format: LogFormat,
}

impl LogConfig {
    /// Reads the logging settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let filter = env.parse("HERALD_LOG", "info".to_owned(), |v| {
            EnvFilter::try_new(v).map(|_| v.to_owned()).map_err(|err| {
                format!("not a log filter ({err}); write e.g. info or info,herald_dispatcher=debug")
            })
        })?;
        let format = env.parse("HERALD_LOG_FORMAT", LogFormat::Text, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".to_owned()),
        })?;
        Ok(Self { filter, format })
    }
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered. Call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Where and how to export spans, from the standard `OTEL_*` variables;
/// `None` when no endpoint is set.
fn exporter() -> Result<Option<opentelemetry_otlp::SpanExporter>, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let set = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let built = match protocol.as_str() {
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use http/protobuf or grpc"
            ));
        }
    };
    built
        .map(Some)
        .map_err(|err| format!("cannot set up the OTLP exporter: {err}"))
}

/// Installs the global logger and, when configured, the OTLP trace
/// exporter. Call once, first thing in `main`, inside the tokio runtime.
pub fn init(config: &LogConfig, service_name: &'static str) -> Result<Telemetry, String> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: in files and log pipelines escape codes
    // get in the way of searching.
    let ansi = std::io::stderr().is_terminal();
    let logged = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == EXPORT_ONLY)
    });
    let fmt_layer = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(logged);
    let provider = match exporter()? {
        None => None,
        Some(exporter) => {
            let mut resource = opentelemetry_sdk::Resource::builder();
            if std::env::var("OTEL_SERVICE_NAME").is_err() {
                resource = resource.with_service_name(service_name);
            }
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build(),
            )
        }
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .init();
    Ok(Telemetry { provider })
}
