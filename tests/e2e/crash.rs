//! `kill -9` in the middle of a run loses nothing: after a restart every
//! event reaches every subscribed endpoint at least once, and a duplicate
//! carries the same `webhook-id` as the original.

use std::collections::HashMap;
use std::time::Duration;

use herald_tests::{Receiver, Stack, StackOptions};
use rdkafka::producer::FutureRecord;
use serde_json::json;

const EVENTS: usize = 2500;

/// Starts publishing the events straight to Kafka (ids `crash_{i}`), two
/// endpoints subscribed: 5,000 deliveries. Publishing goes on in the
/// background (one record at a time, each acknowledged before the next), so
/// that a kill lands while events are still coming in; the returned task
/// ends when the last one is acknowledged.
async fn start_run(name: &str) -> (Stack, [Receiver; 2], tokio::task::JoinHandle<()>) {
    let stack = Stack::start(StackOptions::new(name)).await;
    let receivers = stack.accepting_receivers(&["*"]).await;
    stack.settle_endpoints().await;
    let producer = stack.kafka_producer();
    let topic = stack.topic("herald.events");
    let publishing = tokio::spawn(async move {
        for i in 0..EVENTS {
            let event = json!({"application": "app_test", "id": format!("crash_{i}"), "type": "load.test", "payload": {"i": i}});
            let (key, value) = (format!("crash_{i}"), event.to_string());
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(err, _)| panic!("produce to {topic} failed: {err}"));
        }
    });
    (stack, receivers, publishing)
}

/// Every event at least once at each receiver, and every request's
/// `webhook-id` is the id of the event in its body.
async fn assert_everything_arrived(stack: &Stack, receivers: &[Receiver; 2]) {
    for receiver in receivers {
        let seen = receiver
            .wait_for_distinct(EVENTS, Duration::from_secs(180))
            .await;
        assert_eq!(
            seen,
            EVENTS,
            "not every event arrived after the restart; logs in {}",
            stack.logs().display()
        );
        let mut duplicates = 0;
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for webhook in receiver.received() {
            let i = webhook.json()["data"]["i"].as_u64().expect("payload index");
            assert_eq!(
                webhook.webhook_id(),
                format!("crash_{i}"),
                "a duplicate must carry the original webhook-id"
            );
            assert!(webhook.signature_valid);
            let n = per_id.entry(webhook.webhook_id()).or_default();
            *n += 1;
            if *n > 1 {
                duplicates += 1;
            }
        }
        assert_eq!(per_id.len(), EVENTS);
        println!("{} duplicates after the crash", duplicates);
    }
}

/// Starts a run, kills one service with `kill` once a third of the events
/// reached the first receiver, checks that the kill landed mid-run, starts
/// the service again with `restart`, and checks that nothing was lost.
async fn crash_mid_run(
    name: &str,
    kill: impl FnOnce(&mut Stack),
    restart: impl FnOnce(&mut Stack),
) {
    let (mut stack, receivers, publishing) = start_run(name).await;
    assert!(
        receivers[0]
            .wait_for(EVENTS / 3, Duration::from_secs(120))
            .await,
        "logs in {}",
        stack.logs().display()
    );
    kill(&mut stack);
    let delivered_at_kill = receivers[0].count() + receivers[1].count();
    assert!(
        delivered_at_kill < 2 * EVENTS,
        "the kill came too late to test anything"
    );
    restart(&mut stack);
    publishing.await.expect("publishing");
    assert_everything_arrived(&stack, &receivers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_dispatcher_mid_run_loses_nothing() {
    crash_mid_run(
        "kill-dispatcher",
        |stack| stack.dispatchers.remove(0).kill(),
        Stack::start_dispatcher,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_fanout_mid_run_loses_nothing() {
    crash_mid_run(
        "kill-fanout",
        |stack| stack.fanout.take().expect("fan-out runs").kill(),
        Stack::restart_fanout,
    )
    .await;
}
