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
//! Log lines show the fields whose names have no `.` (`LogFields`): the
//! dotted ones are OpenTelemetry's attributes, for the exported trace.
//!
//! Spans with the target [`EXPORT_ONLY`] exist for the exported trace alone
//! (a webhook request's client span): the log output never sees them, so
//! without an exporter they cost nothing, where the log layer would format
//! every one of their fields for log lines that never name them.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::span;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

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
            .fmt_fields(LogFields { json: false })
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .fmt_fields(LogFields { json: true })
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

/// How log lines show span and event fields: only those whose name has no
/// `.`. Herald names what a log line is about plainly (`event_id`,
/// `endpoint_id`, `attempt`, `trace_id`); the dotted names are
/// OpenTelemetry's semantic attributes (`messaging.kafka.offset`,
/// `http.response.status_code`), which belong to the exported trace. The
/// log layer formats a span's fields when the span is made, for every span,
/// so leaving these out of it saves formatting that no line would show.
#[derive(Debug, Clone, Copy)]
struct LogFields {
    /// JSON objects (for `HERALD_LOG_FORMAT=json`) rather than `key=value`.
    json: bool,
}

impl<'w> FormatFields<'w> for LogFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = FieldVisitor::new(&mut writer, self.json);
        fields.record(&mut visitor);
        visitor.result?;
        match (self.json, visitor.written) {
            (false, _) => Ok(()),
            // The visitor opened the object with its first field.
            (true, 0) => writer.write_str("{}"),
            (true, _) => writer.write_char('}'),
        }
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        // Written straight onto the span's text (the dispatcher records
        // fields on every delivery's span): a JSON object's closing brace
        // comes off first and goes back after.
        let continuing = !current.fields.is_empty() && current.fields != "{}";
        // Room for the few fields a span gets recorded one by one (the
        // dispatcher's record span: trace, event, endpoint, attempt), so
        // the text is not grown once for each.
        current.fields.reserve(RECORDED_FIELDS_BYTES);
        if self.json && current.fields.ends_with('}') {
            current.fields.pop();
        } else if self.json && current.fields.is_empty() {
            current.fields.push('{');
        }
        let result = {
            let mut writer = Writer::new(&mut current.fields);
            let mut visitor = FieldVisitor::new(&mut writer, self.json);
            visitor.continuing = continuing;
            // Opened already, or not needed.
            visitor.opened = true;
            fields.record(&mut visitor);
            visitor.result
        };
        if self.json {
            current.fields.push('}');
        }
        result
    }
}

/// Bytes set aside on a span's text when fields are first recorded on it.
const RECORDED_FIELDS_BYTES: usize = 160;

/// Whether `text` reads the same quoted as escaped (as `{:?}` or JSON would
/// write it): ids, names and numbers do, and skip the escaping.
fn needs_no_escaping(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Writes the undotted fields, as `LogFields` says.
struct FieldVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    json: bool,
    /// Whether the JSON object's `{` is written (or not needed).
    opened: bool,
    /// Whether fields precede these (a separator comes first).
    continuing: bool,
    written: usize,
    result: fmt::Result,
}

impl<'a, 'w> FieldVisitor<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, json: bool) -> Self {
        Self {
            writer,
            json,
            opened: false,
            continuing: false,
            written: 0,
            result: Ok(()),
        }
    }

    fn write(&mut self, name: &str, value: FieldValue<'_>) {
        if self.result.is_err() || name.contains('.') {
            return;
        }
        let separate = self.written > 0 || self.continuing;
        self.written += 1;
        self.result = if self.json {
            let open = if self.opened { "" } else { "{" };
            self.opened = true;
            let separator = if separate { "," } else { "" };
            let value = match value {
                FieldValue::Str(text) if needs_no_escaping(text) && needs_no_escaping(name) => {
                    self.result = write!(self.writer, "{open}{separator}\"{name}\":\"{text}\"");
                    return;
                }
                FieldValue::Str(text) => serde_json::Value::from(text),
                FieldValue::Debug(value) => serde_json::Value::from(format!("{value:?}")),
                FieldValue::I64(n) => serde_json::Value::from(n),
                FieldValue::U64(n) => serde_json::Value::from(n),
                FieldValue::Bool(b) => serde_json::Value::from(b),
            };
            write!(
                self.writer,
                "{open}{separator}{}:{value}",
                serde_json::Value::from(name)
            )
        } else {
            let separator = if separate { " " } else { "" };
            match (name, value) {
                ("message", FieldValue::Str(text)) => write!(self.writer, "{separator}{text}"),
                ("message", FieldValue::Debug(value)) => {
                    write!(self.writer, "{separator}{value:?}")
                }
                (name, FieldValue::Str(text)) if needs_no_escaping(text) => {
                    write!(self.writer, "{separator}{name}=\"{text}\"")
                }
                (name, FieldValue::Str(text)) => write!(self.writer, "{separator}{name}={text:?}"),
                (name, FieldValue::Debug(value)) => {
                    write!(self.writer, "{separator}{name}={value:?}")
                }
                (name, FieldValue::I64(n)) => write!(self.writer, "{separator}{name}={n}"),
                (name, FieldValue::U64(n)) => write!(self.writer, "{separator}{name}={n}"),
                (name, FieldValue::Bool(b)) => write!(self.writer, "{separator}{name}={b}"),
            }
        };
    }
}

/// A field's value, as `Visit` hands it over.
#[derive(Clone, Copy)]
enum FieldValue<'v> {
    Str(&'v str),
    Debug(&'v dyn fmt::Debug),
    I64(i64),
    U64(u64),
    Bool(bool),
}

impl Visit for FieldVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field.name(), FieldValue::Str(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field.name(), FieldValue::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field.name(), FieldValue::U64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field.name(), FieldValue::Bool(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), FieldValue::Debug(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::LogFields;

    /// A log writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line inside a span with dotted and plain fields, one plain
    /// field recorded later.
    fn log_in_a_span() {
        let span = tracing::info_span!(
            "process",
            messaging.kafka.offset = 7,
            event_id = "evt_1",
            endpoint_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
            detail = tracing::field::Empty,
        );
        span.record("endpoint_id", "ep_1");
        span.record("attempt", 2);
        span.record("detail", "a \"quoted\" word");
        span.record("otel.status_code", "ERROR");
        span.in_scope(|| tracing::warn!(status = 503, "delivery attempt failed"));
    }

    #[test]
    fn text_lines_show_plain_fields_only() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(LogFields { json: false })
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log_in_a_span);
        let line = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            line.contains(
                r#"process{event_id="evt_1" endpoint_id="ep_1" attempt=2 detail="a \"quoted\" word"}"#
            ),
            "{line}"
        );
        assert!(
            line.contains("delivery attempt failed status=503"),
            "{line}"
        );
        assert!(!line.contains("messaging"), "{line}");
    }

    #[test]
    fn json_lines_show_plain_fields_only() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .fmt_fields(LogFields { json: true })
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log_in_a_span);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
        assert_eq!(line["span"]["event_id"], "evt_1", "{line}");
        assert_eq!(line["span"]["endpoint_id"], "ep_1", "{line}");
        assert_eq!(line["span"]["attempt"], 2, "{line}");
        assert_eq!(line["span"]["detail"], r#"a "quoted" word"#, "{line}");
        assert_eq!(line["status"], 503, "{line}");
        assert!(!text.contains("messaging"), "{text}");
        assert!(!text.contains("otel"), "{text}");
    }
}
