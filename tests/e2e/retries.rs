//! Failed attempts go through the Kafka retry tiers; exhausted and permanent
//! failures become dead letters that can be listed and replayed.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_fails_three_times_gets_the_event_on_the_fourth_attempt() {
    let stack =
        Stack::start(StackOptions::new("fail-3").env("HERALD_RETRY_SCHEDULE", "1s,1s,1s,1s")).await;
    let receiver = Receiver::start(Behaviour::FailFirst {
        count: 3,
        status: 500,
    })
    .await;
    let endpoint_id = stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;

    let id = stack
        .accept_event(
            &json!({"application": "app_test", "type": "invoice.paid", "payload": {"n": 1}}),
        )
        .await;
    assert!(
        receiver.wait_for(4, Duration::from_secs(30)).await,
        "logs in {}",
        stack.logs().display()
    );
    // Done after the success: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 4);
    assert_eq!(
        received.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    for (n, webhook) in received.iter().enumerate() {
        assert_eq!(
            webhook.webhook_id(),
            id,
            "attempt {} carries the event id",
            n + 1
        );
        assert!(webhook.signature_valid);
    }
    // Each retry waited for its tier (1 s ± 20 %).
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(750),
            "retried after only {gap:?}"
        );
    }
    // The attempt count is visible in the dispatcher's log line for the
    // successful delivery.
    let logs: String = stack.dispatchers.iter().map(|d| d.log_text()).collect();
    assert!(
        logs.lines().any(|l| l.contains(" delivered")
            && l.contains("attempt=4")
            && l.contains(&endpoint_id)),
        "no 'delivered' line with attempt=4"
    );
    // The attempt log has all four, newest first, for the event and for the
    // endpoint.
    let (status, log) = stack
        .get_json(&format!("/v1/applications/app_test/events/{id}/attempts"))
        .await;
    assert_eq!(status, 200, "{log}");
    let attempts = log["data"].as_array().unwrap();
    let summary: Vec<(u64, u64, bool)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status_code"].as_u64().unwrap(),
                a["success"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (4, 200, true),
            (3, 500, false),
            (2, 500, false),
            (1, 500, false)
        ],
        "{log}"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["endpoint_id"] == endpoint_id.as_str() && a["event_id"] == id.as_str())
    );
    assert!(attempts[1]["error"].as_str().unwrap().contains("500"));
    let (_, by_endpoint) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{endpoint_id}/attempts?limit=2"
        ))
        .await;
    assert_eq!(by_endpoint["data"].as_array().unwrap().len(), 2);
    assert_eq!(by_endpoint["data"][0]["attempt"], 4);
    assert_eq!(by_endpoint["data"][1]["attempt"], 3);
    let cursor = by_endpoint["next_cursor"].as_str().expect("more pages");
    let (_, rest) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{endpoint_id}/attempts?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["data"][1]["attempt"], 1);

    // And in the endpoint's health: three failures, then a success.
    let (_, health) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{endpoint_id}/health"
        ))
        .await;
    assert_eq!(health["recent"]["failures"], 3, "{health}");
    assert_eq!(health["recent"]["successes"], 1, "{health}");
    assert_eq!(health["state"], "closed");
    assert_eq!(health["consecutive_failures"], 0);
    assert!(health["last_error"].as_str().unwrap().contains("500"));
    let (_, dead) = stack.get_json("/v1/dlq").await;
    assert_eq!(dead["data"], json!([]), "nothing is dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_endpoint_ends_in_the_dlq_and_replay_delivers_once() {
    let stack =
        Stack::start(StackOptions::new("exhausted").env("HERALD_RETRY_SCHEDULE", "1s,1s")).await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(503)).await;
    let endpoint_id = stack.subscribe(&receiver, &["order.*"]).await;
    stack.settle_endpoints().await;

    let id = stack
        .accept_event(
            &json!({"application": "app_test", "type": "order.created", "payload": {"order": 7, "items": ["a", "b"]}}),
        )
        .await;
    let letters = stack
        .wait_for_dead_letters(
            &format!("endpoint_id={endpoint_id}"),
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["reason"], "attempts_exhausted");
    assert_eq!(letter["event_id"], id.as_str());
    assert_eq!(letter["endpoint_id"], endpoint_id.as_str());
    assert_eq!(letter["event_type"], "order.created");
    assert_eq!(letter["payload"], json!({"order": 7, "items": ["a", "b"]}));
    assert_eq!(letter["last_status_code"], 503);
    let attempts = letter["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{letter}");
    assert!(attempts.iter().all(|a| a["status_code"] == 503));
    assert!(
        letter["detail"]
            .as_str()
            .unwrap()
            .contains("3 attempts failed")
    );
    assert_eq!(receiver.count(), 3);

    // The endpoint is fixed; replay sends it again, once, with the same id.
    receiver.set_behaviour(Behaviour::Accept);
    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"endpoint_id": endpoint_id}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], json!([letter["id"]]));
    assert!(receiver.wait_for(4, Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 4, "replay delivers exactly once");
    assert_eq!(received[3].answered, 200);
    assert_eq!(received[3].webhook_id(), id);
    assert!(received[3].signature_valid);
    let (_, remaining) = stack
        .get_json(&format!("/v1/dlq?endpoint_id={endpoint_id}"))
        .await;
    assert_eq!(
        remaining["data"],
        json!([]),
        "a replayed dead letter leaves the list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_for_a_deleted_endpoint_is_a_clear_error() {
    let stack =
        Stack::start(StackOptions::new("replay-deleted").env("HERALD_RETRY_SCHEDULE", "1s")).await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
    let endpoint_id = stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "type": "a", "payload": 1}))
        .await;
    let letters = stack
        .wait_for_dead_letters(
            &format!("endpoint_id={endpoint_id}"),
            1,
            Duration::from_secs(30),
        )
        .await;
    let letter_id = letters[0]["id"].as_str().unwrap().to_owned();

    let deleted = stack
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/applications/app_test/endpoints/{endpoint_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"ids": [letter_id]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "replay_failed");
    assert_eq!(body["failed"][0]["code"], "endpoint_not_found");
    assert!(
        body["failed"][0]["message"]
            .as_str()
            .unwrap()
            .contains("was deleted")
    );
    assert_eq!(body["replayed"], json!([]));

    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"endpoint_id": endpoint_id}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_not_found");

    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"ids": ["dl_nope"]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["failed"][0]["code"], "not_found");

    let (status, body) = stack.post_json("/v1/dlq/replay", &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exactly one of `application`, `endpoint_id` and `ids`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_and_dead_letters_the_event() {
    let stack = Stack::start(StackOptions::new("gone")).await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(410)).await;
    let endpoint_id = stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "type": "a", "payload": 1}))
        .await;

    let letters = stack
        .wait_for_dead_letters(
            &format!("endpoint_id={endpoint_id}"),
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(letters[0]["reason"], "endpoint_gone");
    assert_eq!(receiver.count(), 1, "a 410 is not retried");
    // The list filters by reason.
    for (reason, listed) in [("endpoint_gone", 1), ("attempts_exhausted", 0)] {
        let (status, page) = stack
            .get_json(&format!(
                "/v1/dlq?endpoint_id={endpoint_id}&reason={reason}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["data"].as_array().unwrap().len(),
            listed,
            "{reason}: {page}"
        );
        assert_eq!(page["next_cursor"], Value::Null, "{reason}: {page}");
    }
    let (_, endpoint) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{endpoint_id}"
        ))
        .await;
    assert_eq!(endpoint["disabled"], true);
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410 Gone"),
        "{endpoint}"
    );

    // Later events are not fanned out to the disabled endpoint at all.
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "type": "a", "payload": 2}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count(), 1);
    let (_, letters) = stack
        .get_json(&format!("/v1/dlq?endpoint_id={endpoint_id}"))
        .await;
    assert_eq!(letters["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_events_keep_their_attempt_log() {
    let stack =
        Stack::start(StackOptions::new("attempt-cap").env("HERALD_ATTEMPT_LOG_MAX_ATTEMPTS", "2"))
            .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let endpoint_id = stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;

    // One at a time, so that "newest" is well defined.
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(
            stack
                .accept_event(&json!({"application": "app_test", "type": "invoice.paid", "payload": {"n": n}}))
                .await,
        );
        assert!(
            receiver.wait_for(n, Duration::from_secs(20)).await,
            "logs in {}",
            stack.logs().display()
        );
    }
    let attempts_of = |id: String| {
        let stack = &stack;
        async move {
            let (status, log) = stack
                .get_json(&format!("/v1/applications/app_test/events/{id}/attempts"))
                .await;
            assert_eq!(status, 200, "{log}");
            log["data"].as_array().unwrap().len()
        }
    };
    // The dispatcher trims every second; give it a few.
    let mut kept = Vec::new();
    for _ in 0..50 {
        kept.clear();
        for id in &ids {
            kept.push(attempts_of(id.clone()).await);
        }
        if kept == [0, 0, 0, 1, 1] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        kept,
        [0, 0, 0, 1, 1],
        "attempts kept per event, oldest first"
    );
    // The endpoint's log refers to the events' logs, so it is inside the
    // budget too: it shows the two attempts kept, newest first.
    let (_, by_endpoint) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{endpoint_id}/attempts"
        ))
        .await;
    let shown: Vec<&str> = by_endpoint["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(shown, [ids[4].as_str(), ids[3].as_str()], "{by_endpoint}");
}
