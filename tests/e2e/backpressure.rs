//! A dispatcher whose in-flight window stays full for longer than Kafka's
//! `max.poll.interval.ms` keeps its partitions: it goes on polling while it
//! holds records back, so the group never takes it out, and nothing in
//! flight is delivered twice.

use std::time::{Duration, Instant};

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_full_for_longer_than_the_poll_interval_keeps_its_partitions() {
    // A window of 4 records (2 requests × 2 records per request), an
    // endpoint that takes 12 s to answer, and a poll interval of 10 s (the
    // least librdkafka accepts beside a 10 s session): with 6 deliveries the
    // window is full for 24 s.
    let stack = Stack::start(
        StackOptions::new("backpressure")
            .env("HERALD_KAFKA_MAX_POLL_INTERVAL", "10s")
            .env("HERALD_DRAIN_TIMEOUT", "2s")
            .env("HERALD_DISPATCHER_MAX_IN_FLIGHT", "2")
            .env("HERALD_ENDPOINT_MAX_IN_FLIGHT", "2")
            .env("HERALD_HTTP_TIMEOUT", "60s"),
    )
    .await;
    let receiver = Receiver::start(Behaviour::Slow(Duration::from_secs(12))).await;
    stack.subscribe(&receiver, &["slow.answer"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            stack
                .accept_event(
                    &json!({"application": "app_test", "type": "slow.answer", "payload": {"i": i}}),
                )
                .await,
        );
    }
    let seen = receiver
        .wait_for_distinct(ids.len(), Duration::from_secs(90))
        .await;
    assert_eq!(
        seen,
        ids.len(),
        "not every delivery arrived; logs in {}",
        stack.logs().display()
    );
    println!(
        "6 deliveries through a full window in {:?}",
        started.elapsed()
    );
    // Had the group taken the dispatcher out, the records in flight would
    // have been read again from the last commit and sent a second time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = receiver.id_counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered more than once: {twice:?}; logs in {}",
        stack.logs().display()
    );
    let log = stack.dispatchers[0].log_text();
    assert!(
        log.contains("partitions held until records finish"),
        "the window never filled, so the test proves nothing; logs in {}",
        stack.logs().display()
    );
    for lost in [
        "maximum poll interval",
        "assignment lost",
        "partitions revoked",
    ] {
        assert!(
            !log.contains(lost),
            "the dispatcher lost its partitions ({lost:?}); logs in {}",
            stack.logs().display()
        );
    }
}

#[test]
fn a_drain_timeout_longer_than_the_poll_interval_allows_is_refused() {
    // A rebalance's drain runs inside the consumer's poll; one that could
    // outlast the poll interval would get the consumer taken out of its
    // group halfway through.
    for binary in ["herald-ingest", "herald-fanout", "herald-dispatcher"] {
        let output = std::process::Command::new(herald_tests::bin_path(binary))
            .env_clear()
            .env("HERALD_API_KEYS", "a-perfectly-long-api-key")
            .env("HERALD_KAFKA_MAX_POLL_INTERVAL", "20s")
            .env("HERALD_DRAIN_TIMEOUT", "30s")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{binary}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("HERALD_DRAIN_TIMEOUT=\"30s\" is invalid")
                && stderr.contains("at most 15s")
                && stderr.contains("HERALD_KAFKA_MAX_POLL_INTERVAL"),
            "{binary}: {stderr}"
        );
    }
    // librdkafka refuses a poll interval shorter than the session.
    let output = std::process::Command::new(herald_tests::bin_path("herald-fanout"))
        .env_clear()
        .env("HERALD_KAFKA_PROPERTIES", "max.poll.interval.ms=5000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("session timeout, 10s"), "{stderr}");
}
