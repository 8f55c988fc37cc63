//! A record that is not a valid event or delivery lands in the DLQ with its
//! reason and does not hold up the records behind it.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_records_are_skipped_and_the_rest_delivered() {
    // One partition, so the garbage really is in front of the good records.
    let stack =
        Stack::start(StackOptions::new("garbage").env("HERALD_TOPIC_PARTITIONS", "1")).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;

    let producer = stack.kafka_producer();
    for garbage in [&b"\xff\xfe not json"[..], b"{\"type\": 5}", b"[]", b""] {
        stack
            .produce(&producer, "herald.events", None, garbage)
            .await;
        stack
            .produce(&producer, "herald.deliveries", Some("ep_x"), garbage)
            .await;
    }
    for i in 0..10 {
        let event = json!({"application": "app_test", "id": format!("after_garbage_{i}"), "type": "t", "payload": i});
        stack.produce_event(&producer, &event).await;
    }
    assert!(
        receiver.wait_for(10, Duration::from_secs(30)).await,
        "records behind the garbage were not delivered; logs in {}",
        stack.logs().display()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 10);
    let fanout_log = stack.fanout.as_ref().unwrap().log_text();
    assert!(
        fanout_log.contains("not a valid event"),
        "fan-out must log why it skipped a record"
    );
}
