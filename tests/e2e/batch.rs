//! `POST /v1/events/batch`: each event of a batch gets its own result, the
//! accepted ones are delivered once each with a valid signature, and one
//! bad event holds up none of the others.

use std::time::Duration;

use herald_tests::{APP, Behaviour, Receiver, Stack, StackOptions};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_of_a_batch_has_its_own_result_and_the_accepted_arrive_once() {
    let stack = Stack::start(StackOptions::new("batch")).await;
    let receiver = Receiver::start(Behaviour::VerifySignature).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    // Accepted before: in the batch it is a replay, not a second delivery.
    stack
        .accept_event(&json!({"application": APP, "id": "b_before", "type": "t", "payload": 0}))
        .await;

    let events = json!([
        {"application": APP, "id": "b_1", "type": "order.created", "payload": {"n": 1}},
        {"application": APP, "type": "order.created", "payload": {"n": 2}},
        {"application": APP, "id": "b_3", "payload": {"n": 3}},
        {"application": APP, "id": "b_before", "type": "t", "payload": 0},
        {"application": "nobody", "id": "b_5", "type": "t", "payload": 5},
        {"application": APP, "id": "b_1", "type": "order.created", "payload": {"n": 1}},
        [1, 2, 3],
        {"application": APP, "id": "b_8", "type": "order.created", "payload": "<eight>"},
    ]);
    let (status, body) = stack
        .post_json("/v1/events/batch", &json!({ "events": events }))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{body}");
    let summary: Vec<(u64, &str)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (202, ""),
            (202, ""),
            (400, "missing_field"),
            (202, ""),
            (404, "application_not_found"),
            (409, "in_progress"),
            (400, "invalid_event"),
            (202, ""),
        ],
        "{body}"
    );
    assert_eq!(results[0]["id"], "b_1");
    let generated = results[1]["id"].as_str().unwrap().to_owned();
    assert!(generated.starts_with("evt_"), "{generated}");
    assert_eq!(results[3]["replayed"], true, "{body}");
    assert!(results[0].get("replayed").is_none(), "{body}");
    assert!(
        results[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("type"),
        "{body}"
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["failed"].as_u64()),
        (Some(4), Some(4))
    );

    // b_before once (before the batch), b_1, the generated one and b_8: each
    // once, each signed.
    assert!(receiver.wait_for(4, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = receiver.id_counts();
    for id in ["b_before", "b_1", generated.as_str(), "b_8"] {
        assert_eq!(counts.get(id), Some(&1), "{id}: {counts:?}");
    }
    assert_eq!(receiver.count(), 4, "{counts:?}");
    assert!(receiver.received().iter().all(|r| r.signature_valid));
    let b_8 = receiver
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == "b_8")
        .unwrap();
    let delivered: Value = serde_json::from_slice(&b_8.body).unwrap();
    assert_eq!(delivered["data"], "<eight>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_read_is_refused_whole() {
    let stack = Stack::start(StackOptions::new("batch-refused").dispatchers(0)).await;
    let event = json!({"application": APP, "type": "t", "payload": 1});
    let too_many: Vec<Value> = (0..101).map(|_| event.clone()).collect();
    for (body, code, needle) in [
        (json!({"events": []}), "invalid_request", "1 to 100"),
        (json!({ "events": too_many }), "invalid_request", "1 to 100"),
        (json!({}), "invalid_request", "events"),
        (
            json!({"events": [event], "extra": 1}),
            "invalid_request",
            "extra",
        ),
        (json!([event]), "invalid_request", "object"),
    ] {
        let (status, answer) = stack.post_json("/v1/events/batch", &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }
    let response = stack
        .request(reqwest::Method::POST, "/v1/events/batch")
        .header("Idempotency-Key", "k1")
        .json(&json!({ "events": [event] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid_field");

    // An application's ingest token sends its own application's events
    // only: another's is that event's 404, the rest go through.
    stack.create_application("other_app").await;
    let (status, token) = stack
        .post_json(
            &format!("/v1/applications/{APP}/tokens"),
            &json!({"scope": "ingest"}),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events/batch", stack.ingest_url))
        .bearer_auth(token["token"].as_str().unwrap())
        .json(&json!({"events": [
            {"application": APP, "type": "t", "payload": 1},
            {"application": "other_app", "type": "t", "payload": 2},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["results"][0]["status"], 202, "{answer}");
    assert_eq!(answer["results"][1]["status"], 404, "{answer}");
    assert_eq!(
        answer["results"][1]["error"]["code"], "application_not_found",
        "{answer}"
    );

    // An application's rate limit (one event a second, a burst of one)
    // refuses the second event of a batch alone, saying how long to wait.
    let (status, created) = stack
        .post_json(
            "/v1/applications",
            &json!({"id": "slow_app", "name": "Slow", "rate_limit": 1}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = stack
        .post_json(
            "/v1/events/batch",
            &json!({"events": [
                {"application": "slow_app", "type": "t", "payload": 1},
                {"application": "slow_app", "type": "t", "payload": 2},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], 202, "{answer}");
    assert_eq!(answer["results"][1]["status"], 429, "{answer}");
    assert_eq!(answer["results"][1]["error"]["code"], "rate_limited");
    assert!(
        answer["results"][1]["retry_after_seconds"].as_u64() >= Some(1),
        "{answer}"
    );
    assert!(answer["results"][0].get("retry_after_seconds").is_none());
}
