//! A dead endpoint trips its circuit breaker, shared by every dispatcher
//! replica through Redis; the healthy endpoints do not notice, and after
//! recovery one probe closes the breaker and the deferred deliveries arrive.

use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_tests::{Behaviour, Receiver, Stack, StackOptions, metric};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Posts `n` events tagged with `phase`; returns when each was accepted.
async fn post_phase(stack: &Stack, phase: &str, n: usize) -> Vec<(String, Instant)> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let id = format!("{phase}_{i}");
            let sent = Instant::now();
            stack
                .accept_event(&json!({"application": "app_test", "id": id, "type": "job.done", "payload": {"i": i}}))
                .await;
            (id, sent)
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Latency from acceptance to arrival at `receiver` for the given events.
fn latencies(receiver: &Receiver, sent: &[(String, Instant)]) -> Vec<Duration> {
    let received = receiver.received();
    let mut out: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| {
            received
                .iter()
                .find(|r| &r.webhook_id() == id && r.answered == 200)
                .map(|r| r.at.saturating_duration_since(*at))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_cut_off_without_slowing_the_others() {
    let stack = Stack::start(
        StackOptions::new("breaker")
            .env("HERALD_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s")
            .env("HERALD_BREAKER_COOLDOWN", "2s")
            .env("HERALD_BREAKER_MAX_COOLDOWN", "4s")
            .env("HERALD_ENDPOINT_MAX_IN_FLIGHT", "4"),
    )
    .await;
    let healthy: [Receiver; 3] = stack.accepting_receivers(&["*"]).await;
    let dead = Receiver::start(Behaviour::Accept).await;
    let dead_id = stack.subscribe(&dead, &["*"]).await;
    stack.settle_endpoints().await;

    // Baseline: everyone healthy.
    let baseline = post_phase(&stack, "base", 60).await;
    for receiver in healthy.iter().chain([&dead]) {
        assert!(receiver.wait_for(60, Duration::from_secs(30)).await);
    }
    let baseline_latency = latencies(&healthy[0], &baseline);

    // The endpoint dies.
    dead.set_behaviour(Behaviour::AlwaysFail(503));
    let requests_before = dead.count();
    let during = post_phase(&stack, "dead", 100).await;
    for receiver in &healthy {
        assert!(
            receiver.wait_for(160, Duration::from_secs(30)).await,
            "healthy endpoints got everything"
        );
    }
    let (_, health) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{dead_id}/health"
        ))
        .await;
    assert_eq!(health["state"], "open", "{health}");
    assert!(
        health["last_error"].as_str().unwrap().contains("503"),
        "{health}"
    );
    assert!(health["next_probe_at"].is_string());
    // The dispatcher counts it among its open (or, probing, half-open)
    // breakers: one series per state, none per endpoint.
    let ops = stack.dispatchers[0].ops_url.clone().expect("ops url");
    let not_closed = metric(&ops, r#"herald_circuit_breakers{state="open"}"#).await
        + metric(&ops, r#"herald_circuit_breakers{state="half_open"}"#).await;
    assert_eq!(not_closed, 1.0);
    // Stay dead for a few cool-downs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let failed_requests = dead.count() - requests_before;
    // 100 events, up to 11 attempts each, would be 1,100 requests without
    // the breaker: it trips after 5 failures (plus the few already in
    // flight), then lets through one probe per cool-down.
    assert!(
        failed_requests <= 20,
        "the dead endpoint got {failed_requests} requests"
    );

    // Healthy latency is not hurt.
    let dead_phase_latency = latencies(&healthy[0], &during);
    assert_eq!(dead_phase_latency.len(), 100);
    let (base_p95, dead_p95) = (
        percentile(&baseline_latency, 0.95),
        percentile(&dead_phase_latency, 0.95),
    );
    println!("healthy p95: {base_p95:?} with all endpoints healthy, {dead_p95:?} with one dead");
    assert!(
        dead_p95 <= base_p95 * 3 + Duration::from_millis(500),
        "healthy p95 went from {base_p95:?} to {dead_p95:?}"
    );

    // It recovers: one probe closes the breaker, and every deferred delivery
    // arrives.
    dead.set_behaviour(Behaviour::Accept);
    let recovered_at = dead.count();
    let deferred: Vec<String> = during.iter().map(|(id, _)| id.clone()).collect();
    assert!(
        dead.wait_until_delivered(&deferred, Duration::from_secs(60))
            .await,
        "deferred deliveries did not all arrive after recovery"
    );
    let after = &dead.received()[recovered_at..];
    assert_eq!(
        after[0].answered, 200,
        "the first request after recovery is the probe, and it succeeds"
    );
    let (_, health) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{dead_id}/health"
        ))
        .await;
    assert_eq!(health["state"], "closed", "{health}");
    for state in ["open", "half_open"] {
        let series = format!("herald_circuit_breakers{{state=\"{state}\"}}");
        assert_eq!(metric(&ops, &series).await, 0.0, "{series}");
    }
    let metrics_text = herald_tests::metrics_text(&ops).await;
    assert!(
        !metrics_text.contains(&dead_id),
        "no metric names an endpoint"
    );
    let (_, dlq) = stack.get_json("/v1/dlq").await;
    assert_eq!(dlq["data"], json!([]), "nothing was dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_breaker() {
    let stack = Stack::start(
        StackOptions::new("shared-breaker")
            .dispatchers(2)
            .env("HERALD_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s")
            .env("HERALD_BREAKER_COOLDOWN", "3s")
            .env("HERALD_BREAKER_MAX_COOLDOWN", "6s")
            .env("HERALD_ENDPOINT_MAX_IN_FLIGHT", "2"),
    )
    .await;
    let dead = Receiver::start(Behaviour::AlwaysFail(503)).await;
    let dead_id = stack.subscribe(&dead, &["*"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    // Deliveries on every partition, so both replicas work for the endpoint.
    let ids = stack.produce_deliveries(&dead_id, 40, 4).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Without sharing, each replica would need its own 5 failures and would
    // send its own probes.
    let requests = dead.count();
    assert!(requests >= 5, "the breaker needs failures to open");
    assert!(
        requests <= 14,
        "the dead endpoint got {requests} requests from two replicas"
    );
    for dispatcher in &stack.dispatchers {
        assert!(
            dispatcher
                .log_text()
                .contains("circuit open; delivery deferred"),
            "{} did not see the open breaker",
            dispatcher.name
        );
    }

    // Recovery reaches both replicas' deferred deliveries.
    dead.set_behaviour(Behaviour::Accept);
    assert!(
        dead.wait_until_delivered(&ids, Duration::from_secs(60))
            .await,
        "not every deferred delivery arrived"
    );
}

/// Every record of `topic` from the beginning to its end now, decoded as
/// delivery records.
fn read_deliveries(brokers: &str, topic: &str) -> Vec<herald_core::proto::Delivery> {
    use prost::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("count-{}", herald_tests::random_suffix()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .expect("watermarks");
        remaining += high - low;
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
            remaining -= 1;
            let value = record.payload().unwrap_or_default();
            found.push(herald_core::proto::Delivery::decode(value).expect("a delivery record"));
        }
    }
    assert_eq!(remaining, 0, "could not read all of {topic}");
    found
}

/// An endpoint that never recovers: its deliveries are put off ever more
/// rarely while its breaker stays open, and once they are older than
/// `HERALD_MAX_DELIVERY_AGE` each ends in the dead-letter queue (as
/// `endpoint_unavailable` when it was still being put off), with its
/// deferral count. The healthy endpoint gets everything meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_an_endpoint_that_never_recovers_end_in_the_dlq() {
    const EVENTS: usize = 20;
    let stack = Stack::start(
        StackOptions::new("never-recovers")
            .env("HERALD_RETRY_SCHEDULE", "1s,1s")
            .env("HERALD_MAX_DELIVERY_AGE", "6s")
            .env("HERALD_BREAKER_COOLDOWN", "1s")
            .env("HERALD_BREAKER_MAX_COOLDOWN", "2s"),
    )
    .await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    let dead = Receiver::start(Behaviour::AlwaysFail(503)).await;
    stack.subscribe(&healthy, &["*"]).await;
    let dead_id = stack.subscribe(&dead, &["*"]).await;
    stack.settle_endpoints().await;
    post_phase(&stack, "never", EVENTS).await;
    assert!(healthy.wait_for(EVENTS, Duration::from_secs(30)).await);

    let letters = stack
        .wait_for_dead_letters(
            &format!("endpoint_id={dead_id}&limit=100"),
            EVENTS,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(letters.len(), EVENTS);
    let unavailable: Vec<&serde_json::Value> = letters
        .iter()
        .filter(|l| l["reason"] == "endpoint_unavailable")
        .collect();
    for letter in &letters {
        assert!(
            ["attempts_exhausted", "endpoint_unavailable"]
                .contains(&letter["reason"].as_str().unwrap()),
            "{letter}"
        );
    }
    assert!(
        !unavailable.is_empty(),
        "with the breaker open most deliveries never get their attempts: {letters:?}"
    );
    for letter in &unavailable {
        assert!(letter["deferrals"].as_u64().unwrap() >= 1, "{letter}");
        assert!(
            letter["detail"]
                .as_str()
                .unwrap()
                .contains("HERALD_MAX_DELIVERY_AGE"),
            "{letter}"
        );
    }

    // How often each delivery was written back to a retry tier: bounded by
    // the backoff, not by how long the outage lasts.
    let tier = stack.topic("herald.retry.1s");
    let mut per_delivery: std::collections::HashMap<String, usize> = Default::default();
    for delivery in read_deliveries(&stack.infra.kafka_brokers, &tier) {
        *per_delivery.entry(delivery.delivery_id).or_default() += 1;
    }
    let most = per_delivery.values().copied().max().unwrap_or(0);
    println!(
        "retry-tier records per delivery: at most {most}, {} deliveries",
        per_delivery.len()
    );
    assert!(
        most <= 12,
        "a delivery was written to a retry tier {most} times"
    );
    assert_eq!(
        healthy.accepted_count(),
        EVENTS,
        "the healthy endpoint got each once"
    );
}
