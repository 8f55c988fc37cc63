//! After a known workload, every service's `/metrics` shows the expected
//! counts.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions, metric};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let stack = Stack::start(StackOptions::new("metrics").env("HERALD_RETRY_SCHEDULE", "1s")).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    let failing = Receiver::start(Behaviour::AlwaysFail(500)).await;
    stack.subscribe(&healthy, &["*"]).await;
    let failing_id = stack.subscribe(&failing, &["fail.*"]).await;
    stack.settle_endpoints().await;

    for i in 0..10 {
        stack
            .accept_event(&json!({"application": "app_test", "type": "ok.done", "payload": i}))
            .await;
    }
    stack
        .accept_event(&json!({"application": "app_test", "type": "fail.now", "payload": 0}))
        .await;
    let response = stack
        .request(reqwest::Method::POST, "/v1/events")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    assert!(healthy.wait_for(11, Duration::from_secs(30)).await);
    stack
        .wait_for_dead_letters(
            &format!("endpoint_id={failing_id}"),
            1,
            Duration::from_secs(30),
        )
        .await;

    let ingest = &stack.ingest_url;
    assert_eq!(metric(ingest, "herald_events_accepted_total").await, 11.0);
    assert_eq!(
        metric(
            ingest,
            r#"herald_events_rejected_total{reason="malformed_json"}"#
        )
        .await,
        1.0
    );

    let fanout = stack.fanout.as_ref().unwrap().ops_url.clone().unwrap();
    assert_eq!(
        metric(&fanout, "herald_events_fanned_out_total").await,
        11.0
    );
    assert_eq!(
        metric(&fanout, "herald_deliveries_created_total").await,
        12.0
    );

    let dispatcher = stack.dispatchers[0].ops_url.clone().unwrap();
    let delivered = r#"herald_deliveries_total{outcome="delivered",status_class="2xx"}"#;
    assert_eq!(metric(&dispatcher, delivered).await, 11.0);
    let retried = r#"herald_deliveries_total{outcome="retry_scheduled",status_class="5xx"}"#;
    assert_eq!(metric(&dispatcher, retried).await, 1.0);
    let dead = r#"herald_deliveries_total{outcome="dead_lettered",status_class="5xx"}"#;
    assert_eq!(metric(&dispatcher, dead).await, 1.0);
    assert_eq!(
        metric(&dispatcher, r#"herald_retries_total{tier="1s"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &dispatcher,
            r#"herald_dead_letters_total{reason="attempts_exhausted"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&dispatcher, "herald_delivery_end_to_end_seconds_count").await,
        11.0
    );
    assert!(metric(&dispatcher, "herald_delivery_end_to_end_seconds_sum").await > 0.0);
    assert_eq!(
        metric(
            &dispatcher,
            "herald_delivery_attempt_duration_seconds_count"
        )
        .await,
        13.0
    );

    // The ops servers also answer health and readiness.
    for base in [&fanout, &dispatcher] {
        assert_eq!(
            reqwest::get(format!("{base}/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            reqwest::get(format!("{base}/readyz"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

/// The sum of `herald_consumer_lag` over the partitions of `topic`, and how
/// many partitions of it have a sample, as `base`'s `/metrics` shows them.
async fn lag_of(base: &str, topic: &str) -> (f64, usize) {
    let text = herald_tests::metrics_text(base).await;
    let needle = format!("topic=\"{topic}\"");
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("herald_consumer_lag{") && line.contains(&needle))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (samples.iter().sum(), samples.len())
}

/// On Apache Kafka the lag is exact: records held in flight by an endpoint
/// that takes its time count, every one, until their offsets are committed;
/// and a consumer that has caught up shows zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_counts_exactly_the_records_not_yet_done() {
    if std::env::var("HERALD_TEST_BROKER").is_ok_and(|b| b == "tansu") {
        println!("skipped: Tansu's high watermark lags its committed offsets");
        return;
    }
    const HELD: usize = 20;
    let stack = Stack::start(
        StackOptions::new("consumer-lag")
            .env("HERALD_HTTP_TIMEOUT", "60s")
            .env("HERALD_DRAIN_TIMEOUT", "1s"),
    )
    .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    // A first delivery commits offsets, so the lag has a base to count from.
    stack
        .accept_event(&json!({"application": "app_test", "type": "lag.first", "payload": 0}))
        .await;
    assert!(receiver.wait_for(1, Duration::from_secs(30)).await);

    receiver.set_behaviour(Behaviour::Slow(Duration::from_secs(50)));
    for i in 0..HELD {
        stack
            .accept_event(&json!({"application": "app_test", "type": "lag.held", "payload": i}))
            .await;
    }
    assert!(
        receiver.wait_for(1 + HELD, Duration::from_secs(30)).await,
        "the held deliveries did not all reach the slow endpoint"
    );
    let dispatcher = stack.dispatchers[0].ops_url.clone().expect("ops url");
    let fanout = stack.fanout.as_ref().unwrap().ops_url.clone().unwrap();
    let deliveries = stack.topic("herald.deliveries");
    let events = stack.topic("herald.events");
    // librdkafka reports its statistics every 5 s.
    let exact = herald_tests::eventually_async(Duration::from_secs(20), || async {
        lag_of(&dispatcher, &deliveries).await.0 == HELD as f64
            && matches!(lag_of(&fanout, &events).await, (lag, partitions) if lag == 0.0 && partitions >= 1)
    })
    .await;
    assert!(
        exact,
        "dispatcher lag {:?} (want {HELD}), fan-out lag {:?} (want 0 over the partitions it read)",
        lag_of(&dispatcher, &deliveries).await,
        lag_of(&fanout, &events).await
    );
}
