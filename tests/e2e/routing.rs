//! Events in over HTTP and straight into Kafka reach exactly the endpoints
//! subscribed to their type, signed, with `webhook-id` = event id.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

const TYPES: [&str; 5] = [
    "order.created",
    "order.paid",
    "user.created",
    "user.deleted",
    "invoice.paid",
];

fn subscribed(filters: &[&str], event_type: &str) -> bool {
    filters.iter().any(|f| {
        *f == "*"
            || *f == event_type
            || f.strip_suffix('*')
                .is_some_and(|prefix| event_type.starts_with(prefix))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_receives_exactly_its_subscriptions() {
    let stack = Stack::start(StackOptions::new("routing")).await;
    let filters: [&[&str]; 3] = [&["order.*"], &["user.created", "invoice.paid"], &["*"]];
    let mut receivers = Vec::new();
    for filter in filters {
        let receiver = Receiver::start(Behaviour::Accept).await;
        stack.subscribe(&receiver, filter).await;
        receivers.push(receiver);
    }
    stack.settle_endpoints().await;

    // marker -> (event type, expected webhook-id if known)
    let mut sent: HashMap<String, (String, Option<String>)> = HashMap::new();

    // 200 over HTTP, 16 at a time.
    let http_events: Vec<(String, String)> = (0..200)
        .map(|i| (format!("http-{i}"), TYPES[i % TYPES.len()].to_owned()))
        .collect();
    let accepted: Vec<(String, String, String)> = futures::stream::iter(http_events)
        .map(|(marker, event_type)| {
            let stack = &stack;
            async move {
                let id = stack
                    .accept_event(&json!({"application": "app_test", "type": event_type, "payload": {"marker": marker, "nested": {"list": [1, 2.5, null]}}}))
                    .await;
                (marker, event_type, id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (marker, event_type, id) in accepted {
        sent.insert(marker, (event_type, Some(id)));
    }

    // 200 straight into Kafka: half with an id, half without (Herald derives
    // one from the record's position).
    let producer = stack.kafka_producer();
    for i in 0..200 {
        let marker = format!("kafka-{i}");
        let event_type = TYPES[(i * 3) % TYPES.len()];
        let (value, id) = if i % 2 == 0 {
            let id = format!("kafka_evt_{i}_{}", herald_tests::random_suffix());
            (
                json!({"application": "app_test", "id": id, "type": event_type, "payload": {"marker": marker}}),
                Some(id),
            )
        } else {
            (
                json!({"application": "app_test", "type": event_type, "payload": {"marker": marker}}),
                None,
            )
        };
        stack.produce_event(&producer, &value).await;
        sent.insert(marker, (event_type.to_owned(), id));
    }

    for (receiver, filter) in receivers.iter().zip(filters) {
        let expected: HashSet<&String> = sent
            .iter()
            .filter(|(_, (event_type, _))| subscribed(filter, event_type))
            .map(|(marker, _)| marker)
            .collect();
        assert!(
            receiver
                .wait_for(expected.len(), Duration::from_secs(60))
                .await,
            "endpoint {filter:?} got {} of {} webhooks; logs in {}",
            receiver.count(),
            expected.len(),
            stack.logs().display()
        );
    }
    // Anything extra or doubled would arrive now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    for (receiver, filter) in receivers.iter().zip(filters) {
        let received = receiver.received();
        let mut markers = HashSet::new();
        for webhook in &received {
            assert!(
                webhook.signature_valid,
                "signature does not verify: {webhook:?}"
            );
            assert_eq!(webhook.header("content-type"), "application/json");
            let body = webhook.json();
            let marker = body["data"]["marker"].as_str().expect("marker").to_owned();
            let (event_type, expected_id) = &sent[&marker];
            assert_eq!(&body["type"], event_type.as_str());
            assert!(
                body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "timestamp: {body}"
            );
            match expected_id {
                Some(id) => assert_eq!(&webhook.webhook_id(), id),
                None => assert!(
                    webhook.webhook_id().starts_with("evt_kafka_"),
                    "{}",
                    webhook.webhook_id()
                ),
            }
            assert!(
                markers.insert(marker.clone()),
                "{marker} delivered twice to {filter:?}"
            );
        }
        let expected: HashSet<String> = sent
            .iter()
            .filter(|(_, (event_type, _))| subscribed(filter, event_type))
            .map(|(marker, _)| marker.clone())
            .collect();
        assert_eq!(
            markers, expected,
            "endpoint {filter:?} received the wrong set"
        );
    }
    // The HTTP payload arrives byte for byte as `data`.
    let sample = receivers[2]
        .received()
        .into_iter()
        .find(|r| {
            r.json()["data"]["marker"]
                .as_str()
                .is_some_and(|m| m.starts_with("http-"))
        })
        .expect("an HTTP event");
    assert_eq!(
        sample.json()["data"]["nested"],
        json!({"list": [1, 2.5, null]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_deleted_endpoints_receive_nothing() {
    let stack = Stack::start(StackOptions::new("lifecycle")).await;
    let live = Receiver::start(Behaviour::Accept).await;
    let disabled = Receiver::start(Behaviour::Accept).await;
    let deleted = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&live, &["*"]).await;
    let disabled_id = stack.subscribe(&disabled, &["*"]).await;
    let deleted_id = stack.subscribe(&deleted, &["*"]).await;
    let patched = stack
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/applications/app_test/endpoints/{disabled_id}"),
        )
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let gone = stack
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/applications/app_test/endpoints/{deleted_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    stack.settle_endpoints().await;

    for i in 0..5 {
        stack
            .accept_event(&json!({"application": "app_test", "type": "a.b", "payload": i}))
            .await;
    }
    assert!(live.wait_for(5, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(disabled.count(), 0);
    assert_eq!(deleted.count(), 0);
}
