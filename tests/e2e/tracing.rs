//! One event is one trace: the spans of all three services, collected by a
//! real OTLP receiver, share the trace id of the caller's `traceparent`, and
//! their parent links run ingest → fan-out → each delivery attempt; every
//! endpoint receives a `traceparent` of that trace.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_tests::{Behaviour, CollectedSpan, OtlpReceiver, Receiver, Stack, StackOptions};
use serde_json::json;

/// Whether `ancestor` is `span` or one of its ancestors.
fn descends_from(
    span: &CollectedSpan,
    ancestor: &CollectedSpan,
    by_id: &HashMap<String, CollectedSpan>,
) -> bool {
    let mut current = Some(span);
    while let Some(s) = current {
        if s.span_id == ancestor.span_id {
            return true;
        }
        current = by_id.get(&s.parent_span_id);
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_ingest_to_both_endpoints() {
    let otlp = OtlpReceiver::start().await;
    let stack = Stack::start(
        StackOptions::new("tracing")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("HERALD_LOG_FORMAT", "json"),
    )
    .await;
    let receivers = [
        Receiver::start(Behaviour::Accept).await,
        Receiver::start(Behaviour::Accept).await,
    ];
    let mut endpoint_ids = Vec::new();
    for receiver in &receivers {
        endpoint_ids.push(stack.subscribe(receiver, &["order.*"]).await);
    }
    stack.settle_endpoints().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = stack
        .request(reqwest::Method::POST, "/v1/events")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"application": "app_test", "id": "traced_1", "type": "order.created", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for receiver in &receivers {
        assert!(receiver.wait_for(1, Duration::from_secs(30)).await);
        let traceparent = receiver.received()[0].header("traceparent");
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "the endpoint got traceparent {traceparent:?}"
        );
    }

    // Wait for the spans of all three services.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<CollectedSpan> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let attempts = spans
            .iter()
            .filter(|s| s.service == "herald-dispatcher" && s.name == "POST")
            .count();
        let has_fanout = spans.iter().any(|s| s.service == "herald-fanout");
        let has_ingest = spans.iter().any(|s| s.service == "herald-ingest");
        if attempts == 2 && has_fanout && has_ingest {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans of the trace: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<String, CollectedSpan> = spans
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();

    let ingest = spans
        .iter()
        .find(|s| s.service == "herald-ingest" && s.name == "POST /v1/events")
        .expect("ingest's server span");
    assert_eq!(
        ingest.parent_span_id, caller_span,
        "ingest continues the caller's trace"
    );
    assert_eq!(ingest.attribute("http.response.status_code"), Some("202"));

    let fanout = spans
        .iter()
        .find(|s| s.service == "herald-fanout" && s.name.ends_with("herald.events process"))
        .expect("the fan-out span");
    assert!(
        descends_from(fanout, ingest, &by_id),
        "fan-out is a descendant of the ingest span"
    );
    assert_eq!(fanout.attribute("messaging.system"), Some("kafka"));

    let attempts: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.service == "herald-dispatcher" && s.name == "POST")
        .collect();
    let mut attempted: Vec<&str> = Vec::new();
    for attempt in attempts {
        assert!(
            descends_from(attempt, fanout, &by_id),
            "each delivery attempt descends from the fan-out span"
        );
        assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
        assert_eq!(attempt.attribute("herald.attempt"), Some("1"));
        assert_eq!(attempt.attribute("herald.outcome"), Some("delivered"));
        attempted.push(
            attempt
                .attribute("herald.endpoint_id")
                .expect("endpoint id attribute"),
        );
    }
    attempted.sort();
    endpoint_ids.sort();
    assert_eq!(attempted, endpoint_ids, "one attempt span per endpoint");
    // The logs are JSON, and each line on the delivery's path names the
    // trace.
    for service in stack.dispatchers.iter().chain(stack.fanout.as_ref()) {
        let log = service.log_text();
        let path_lines: Vec<&str> = log.lines().filter(|l| l.contains("traced_1")).collect();
        assert!(
            !path_lines.is_empty(),
            "{} logged nothing about the event",
            service.name
        );
        for line in path_lines {
            let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
            assert!(
                parsed["timestamp"].is_string() && parsed["level"].is_string(),
                "{line}"
            );
            assert!(
                line.contains(trace_id),
                "a line without the trace id: {line}"
            );
        }
    }
    // Each endpoint's traceparent names its own attempt span.
    for receiver in &receivers {
        let traceparent = receiver.received()[0].header("traceparent");
        let parent_span = traceparent.split('-').nth(2).unwrap().to_owned();
        assert_eq!(by_id[&parent_span].name, "POST");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_also_export_over_grpc() {
    let otlp = OtlpReceiver::start_grpc().await;
    let stack = Stack::start(
        StackOptions::new("tracing-grpc")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "type": "a", "payload": 1}))
        .await;
    assert!(receiver.wait_for(1, Duration::from_secs(30)).await);
    let trace_id = receiver.received()[0]
        .header("traceparent")
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let services: std::collections::HashSet<String> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .map(|s| s.service)
            .collect();
        if services.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "services seen over gRPC: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
