//! A per-endpoint rate limit holds at the receiver with two dispatcher
//! replicas delivering.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

/// The receiver's arrival times, in order, and the most of them within any
/// one second.
pub(crate) fn arrivals_and_busiest_second(receiver: &Receiver) -> (Vec<std::time::Instant>, usize) {
    let mut arrivals: Vec<_> = receiver.received().iter().map(|r| r.at).collect();
    arrivals.sort();
    let busiest = arrivals
        .iter()
        .enumerate()
        .map(|(i, start)| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    (arrivals, busiest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_20_holds_across_two_replicas() {
    let stack = Stack::start(StackOptions::new("rate-limit").dispatchers(2)).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = stack
        .create_endpoint(json!({"url": receiver.url(), "event_types": ["*"], "rate_limit": 20}))
        .await;
    assert_eq!(created["rate_limit"], 20);
    receiver.set_secret(created["secret"].as_str().unwrap());
    let endpoint_id = created["id"].as_str().unwrap().to_owned();
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    // Spread over every partition so both replicas deliver.
    let ids = stack.produce_deliveries(&endpoint_id, 120, 4).await;
    assert!(
        receiver.wait_for(ids.len(), Duration::from_secs(60)).await,
        "only {} of {} arrived; logs in {}",
        receiver.count(),
        ids.len(),
        stack.logs().display()
    );

    let (arrivals, busiest) = arrivals_and_busiest_second(&receiver);
    let span = *arrivals.last().unwrap() - arrivals[0];
    let overall = (arrivals.len() - 1) as f64 / span.as_secs_f64();
    println!("busiest second: {busiest} deliveries; overall {overall:.1}/s over {span:?}");
    assert!(
        busiest <= 22,
        "{busiest} deliveries within one second (limit 20)"
    );
    assert!(overall <= 21.0, "overall rate {overall:.1}/s");

    // Both replicas delivered, and every delivery arrived exactly once.
    for dispatcher in &stack.dispatchers {
        assert!(
            dispatcher.log_text().contains(" delivered"),
            "{} delivered nothing",
            dispatcher.name
        );
    }
    let counts = receiver.id_counts();
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|n| *n == 1));
}

/// Latency of one delivery to `healthy`: from the record's acknowledgement
/// by Kafka to its arrival.
async fn one_delivery_latency(
    stack: &Stack,
    producer: &rdkafka::producer::FutureProducer,
    healthy: &Receiver,
    endpoint_id: &str,
) -> Duration {
    let before = healthy.count();
    let id = stack
        .produce_delivery(producer, endpoint_id, before, 0)
        .await;
    let acknowledged = std::time::Instant::now();
    assert!(
        healthy.wait_for(before + 1, Duration::from_secs(60)).await,
        "the healthy endpoint's delivery never arrived; logs in {}",
        stack.logs().display()
    );
    let arrived = healthy.received()[before].clone();
    assert_eq!(arrived.webhook_id(), id);
    arrived.at.saturating_duration_since(acknowledged)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_for_rate_limited_endpoints_does_not_hold_up_a_healthy_one() {
    // 20 endpoints limited to 1 delivery a second, each with a backlog of
    // 40, beside one healthy endpoint without a limit. 800 waiting
    // deliveries are more than the replica's 512 request slots: had they
    // waited for their limit holding one each (up to 32 per endpoint),
    // nothing else could be sent.
    let stack = Stack::start(StackOptions::new("rate-limit-isolation")).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    let created = stack
        .create_endpoint(json!({"url": healthy.url(), "event_types": ["healthy"]}))
        .await;
    healthy.set_secret(created["secret"].as_str().unwrap());
    let healthy_id = created["id"].as_str().unwrap().to_owned();
    let mut limited = Vec::new();
    for _ in 0..20 {
        let receiver = Receiver::start(Behaviour::Accept).await;
        let created = stack
            .create_endpoint(
                json!({"url": receiver.url(), "event_types": ["limited"], "rate_limit": 1}),
            )
            .await;
        receiver.set_secret(created["secret"].as_str().unwrap());
        limited.push((created["id"].as_str().unwrap().to_owned(), receiver));
    }
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    let producer = stack.kafka_producer();
    let mut alone = Vec::new();
    for _ in 0..20 {
        alone.push(one_delivery_latency(&stack, &producer, &healthy, &healthy_id).await);
    }
    alone.sort();

    let backlog_started = std::time::Instant::now();
    let backlog = limited
        .iter()
        .map(|(id, _)| stack.produce_deliveries(id, 40, 4));
    futures::future::join_all(backlog).await;
    let mut beside = Vec::new();
    for _ in 0..20 {
        beside.push(one_delivery_latency(&stack, &producer, &healthy, &healthy_id).await);
    }
    beside.sort();
    let (alone_p50, alone_p90) = (percentile(&alone, 0.5), percentile(&alone, 0.9));
    let (beside_p50, beside_p90) = (percentile(&beside, 0.5), percentile(&beside, 0.9));
    println!(
        "healthy endpoint alone: p50 {alone_p50:?}, p90 {alone_p90:?}; \
         beside 800 rate-limited deliveries: p50 {beside_p50:?}, p90 {beside_p90:?}"
    );
    // Noise on a shared machine aside, the healthy endpoint's latency is its
    // all-alone figure.
    let slack = Duration::from_millis(250);
    assert!(
        beside_p50 <= alone_p50 * 2 + slack && beside_p90 <= alone_p90 * 2 + slack * 2,
        "the rate-limited backlog held the healthy endpoint up: p50 {beside_p50:?} / p90 \
         {beside_p90:?} against {alone_p50:?} / {alone_p90:?} alone; logs in {}",
        stack.logs().display()
    );

    // The limited endpoints are served at their limit meanwhile: about one a
    // second each, never two within a second but for a late one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let elapsed = backlog_started.elapsed().as_secs_f64();
    for (id, receiver) in &limited {
        let (arrivals, busiest) = arrivals_and_busiest_second(receiver);
        assert!(
            arrivals.len() as f64 >= elapsed * 0.5 && arrivals.len() as f64 <= elapsed + 2.0,
            "endpoint {id} got {} deliveries in {elapsed:.1} s at 1/s",
            arrivals.len()
        );
        assert!(
            busiest <= 2,
            "endpoint {id}: {busiest} deliveries within one second"
        );
        assert!(receiver.received().iter().all(|r| r.signature_valid));
    }
}
