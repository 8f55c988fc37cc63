//! Dispatcher replicas share the work; stopping one gracefully in the middle
//! of a run loses and doubles nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::json;

const EVENTS: usize = 400;
const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_run_loses_and_doubles_nothing() {
    let mut stack = Stack::start(StackOptions::new("replicas").dispatchers(2)).await;
    // A few milliseconds per webhook keeps deliveries in flight when the
    // replica is told to stop.
    let receiver = Receiver::start(Behaviour::Slow(Duration::from_millis(5))).await;
    let secret = herald_core::signing::Secret::generate().expose();
    receiver.set_secret(&secret);

    // Deliveries are keyed (and so partitioned) by endpoint id. Register
    // endpoints until every partition of herald.deliveries has traffic, so
    // whichever partitions a replica owns, it has work. (librdkafka's
    // default partitioner is CRC-32 of the key modulo the partition count.)
    let mut covered = HashSet::new();
    let mut paths = Vec::new();
    for n in 0..64 {
        if covered.len() == PARTITIONS as usize {
            break;
        }
        let path = format!("e{n}");
        let created = stack
            .create_endpoint(
                json!({"url": receiver.url_at(&path), "event_types": ["job.*"], "secret": secret}),
            )
            .await;
        covered.insert(crc32fast::hash(created["id"].as_str().unwrap().as_bytes()) % PARTITIONS);
        paths.push(format!("/{path}"));
    }
    assert_eq!(
        covered.len(),
        PARTITIONS as usize,
        "could not cover every partition"
    );
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    let posting = {
        let url = stack.ingest_url.clone();
        let key = stack.api_key.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            futures::stream::iter(0..EVENTS)
                .map(|i| {
                    let http = http.clone();
                    let url = url.clone();
                    let key = key.clone();
                    async move {
                        let response = http
                            .post(format!("{url}/v1/events"))
                            .bearer_auth(key)
                            .json(&json!({"application": "app_test", "id": format!("evt_{i}"), "type": "job.done", "payload": {"i": i}}))
                            .send()
                            .await
                            .expect("post");
                        assert_eq!(response.status(), 202);
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await;
        })
    };

    let expected = EVENTS * paths.len();
    assert!(
        receiver
            .wait_for(expected / 4, Duration::from_secs(60))
            .await,
        "deliveries did not start; logs in {}",
        stack.logs().display()
    );
    let first = stack.dispatchers.remove(0);
    let first_log = first.log.clone();
    let exit = tokio::task::spawn_blocking(move || first.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(exit, Some(0), "the stopped dispatcher must exit cleanly");
    posting.await.unwrap();

    assert!(
        receiver.wait_for(expected, Duration::from_secs(120)).await,
        "only {} of {expected} webhooks arrived; logs in {}",
        receiver.count(),
        stack.logs().display()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for webhook in receiver.received() {
        assert!(webhook.signature_valid, "bad signature: {webhook:?}");
        *counts
            .entry((webhook.path.clone(), webhook.webhook_id()))
            .or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    assert_eq!(
        counts.len(),
        expected,
        "every event exactly once to every endpoint"
    );

    // Both replicas did part of the work.
    let delivered_by = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(" delivered")
            .count()
    };
    let by_first = delivered_by(&first_log);
    let by_second = delivered_by(&stack.dispatchers[0].log);
    assert!(
        by_first > 0 && by_second > 0,
        "work was not shared: {by_first} and {by_second}"
    );
}
