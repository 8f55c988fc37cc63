//! W3C trace context (`traceparent`, `tracestate`) carried across Kafka
//! records and HTTP requests, so that one event is one trace from the ingest
//! request to every delivery attempt and on to the endpoint.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Hands each trace-context header of the current span to `header` (none
/// when tracing is off or the span has no context; an empty `tracestate`
/// is left out), in the order the propagator writes them: `traceparent`
/// first. Written straight into the caller's request or record, without a
/// map of copies in between (the dispatcher does this for every webhook).
pub fn each_current_header(header: impl FnMut(&str, String)) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut EachHeader(header));
}

/// An injector that hands each header on as the propagator writes it.
struct EachHeader<F>(F);

impl<F: FnMut(&str, String)> Injector for EachHeader<F> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            (self.0)(key, value);
        }
    }
}

/// The current span's trace context as Kafka record headers, or `None`
/// when there is none (tracing off): such a record needs no header list at
/// all.
pub fn trace_headers() -> Option<OwnedHeaders> {
    let mut headers: Option<OwnedHeaders> = None;
    each_current_header(|key, value| {
        headers = Some(
            headers
                .take()
                .unwrap_or_default()
                .insert(rdkafka::message::Header {
                    key,
                    value: Some(value.as_bytes()),
                }),
        );
    });
    headers
}

/// [`trace_headers`], as a list to add more headers to.
pub fn kafka_headers() -> OwnedHeaders {
    trace_headers().unwrap_or_default()
}

/// Reads trace-context headers from Kafka record headers, owned or borrowed.
struct KafkaExtractor<'a, H>(Option<&'a H>);

impl<H: Headers> Extractor for KafkaExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0?;
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

/// The trace context a Kafka record carries (an empty context when none).
pub fn from_kafka(headers: Option<&OwnedHeaders>) -> Context {
    TraceContextPropagator::new().extract(&KafkaExtractor(headers))
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context of an HTTP request (an empty context when none).
pub fn from_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpExtractor(headers))
}

/// The span of processing one Kafka record, continuing the trace the record
/// carries (a record without one starts a trace), with the OpenTelemetry
/// messaging attributes. Its `trace_id` field names the trace in logs.
pub fn process_span(record: &rdkafka::message::OwnedMessage) -> tracing::Span {
    use rdkafka::Message as _;
    let span = tracing::info_span!(
        "process",
        // Formatted only by the trace exporter, when there is one.
        otel.name = %ProcessName(record.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = record.topic(),
        messaging.destination.partition.id = record.partition(),
        messaging.kafka.offset = record.offset(),
        event_id = tracing::field::Empty,
        // Recorded by the dispatcher, for its log lines.
        endpoint_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        subscribers = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    adopt(&span, from_kafka(record.headers()));
    if let Some(trace_id) = span.in_scope(current_trace_id) {
        span.record("trace_id", trace_id);
    }
    span
}

/// A process span's name, `{topic} process`, written out only when read.
struct ProcessName<'a>(&'a str);

impl std::fmt::Display for ProcessName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} process", self.0)
    }
}

/// Makes `span` a child of the remote context, when there is one.
pub fn adopt(span: &tracing::Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of the current span, as 32 hex digits (for logs).
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
