//! A per-endpoint rate limit holds at the receiver with two dispatcher
//! replicas delivering.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

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

    let mut arrivals: Vec<_> = receiver.received().iter().map(|r| r.at).collect();
    arrivals.sort();
    // The busiest one-second window anywhere in the run.
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
        .unwrap();
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
