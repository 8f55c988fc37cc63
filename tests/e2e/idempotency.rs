//! The same event id accepted more than once is published, and delivered,
//! once.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_three_times_is_delivered_once() {
    let stack = Stack::start(StackOptions::new("idempotency")).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;

    let event = json!({"application": "app_test", "id": "order_42", "type": "order.created", "payload": {"n": 42}});
    // Two at once (racing each other), then one more later.
    let (first, second) = tokio::join!(stack.post_event(&event), stack.post_event(&event));
    let third = stack.post_event(&event).await;
    for (status, body) in [first, second, third] {
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["id"], "order_42");
    }

    // The same key given as a header.
    let with_header =
        json!({"application": "app_test", "type": "order.created", "payload": {"n": 43}});
    for _ in 0..3 {
        let response = stack
            .request(reqwest::Method::POST, "/v1/events")
            .header("Idempotency-Key", "order_43")
            .json(&with_header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["id"], "order_43");
    }

    assert!(receiver.wait_for(2, Duration::from_secs(30)).await);
    // Give any duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = receiver.id_counts();
    assert_eq!(counts.get("order_42"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("order_43"), Some(&1), "{counts:?}");
    assert_eq!(receiver.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_says_so() {
    let stack = Stack::start(StackOptions::new("replayed").dispatchers(0)).await;
    let event = json!({"application": "app_test", "id": "once", "type": "t", "payload": null});
    let first = stack
        .request(reqwest::Method::POST, "/v1/events")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let again = stack
        .request(reqwest::Method::POST, "/v1/events")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
}
