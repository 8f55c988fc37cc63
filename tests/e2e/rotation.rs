//! Secret rotation: while the grace period runs, webhooks carry a signature
//! for the old secret and one for the new, so receivers that know only one
//! of them both accept; afterwards only the new secret signs.

use std::time::Duration;

use herald_core::signing::Secret;
use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Sends one event and waits until both receivers answered it; returns what
/// each answered to it and the signatures it carried.
async fn deliver_one(
    stack: &Stack,
    id: &str,
    old_only: &Receiver,
    new_only: &Receiver,
) -> (u16, u16, usize) {
    stack
        .accept_event(&json!({"application": "app_test", "id": id, "type": "rotation.test", "payload": {"id": id}}))
        .await;
    let first = |receiver: &Receiver| {
        receiver
            .received()
            .into_iter()
            .find(|r| r.webhook_id() == id)
    };
    for receiver in [old_only, new_only] {
        assert!(
            herald_tests::eventually(Duration::from_secs(30), || first(receiver).is_some()).await,
            "{id} did not arrive"
        );
    }
    let old = first(old_only).unwrap();
    let new = first(new_only).unwrap();
    let signatures = new.header("webhook-signature").split(' ').count();
    assert_eq!(
        old.header("webhook-signature"),
        new.header("webhook-signature"),
        "both endpoints share their secrets, so their signatures match"
    );
    (old.answered, new.answered, signatures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_secrets_sign_during_the_grace_period_and_only_the_new_one_after() {
    let stack =
        Stack::start(StackOptions::new("rotation").env("HERALD_SECRET_ROTATION_GRACE", "8s")).await;
    // Two endpoints with the same secrets, each at a receiver that verifies
    // with one secret only.
    let old_secret = Secret::generate().expose();
    let new_secret = Secret::generate().expose();
    let old_only = Receiver::start(Behaviour::VerifySignature).await;
    let new_only = Receiver::start(Behaviour::VerifySignature).await;
    old_only.set_secret(&old_secret);
    new_only.set_secret(&old_secret);
    let mut ids = Vec::new();
    for receiver in [&old_only, &new_only] {
        let created = stack
            .create_endpoint(
                json!({"url": receiver.url(), "event_types": ["rotation.*"], "secret": old_secret}),
            )
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    stack.settle_endpoints().await;
    let (old, new, signatures) = deliver_one(&stack, "before_rotation", &old_only, &new_only).await;
    assert_eq!((old, new, signatures), (200, 200, 1));

    // Rotate both to the same new secret, with the configured grace.
    let mut expires_at = Vec::new();
    for id in &ids {
        let (status, body) = stack
            .post_json(
                &format!("/v1/applications/app_test/endpoints/{id}/secret/rotate"),
                &json!({"secret": new_secret}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["secret"], new_secret.as_str());
        expires_at.push(
            OffsetDateTime::parse(
                body["previous_secret_expires_at"].as_str().unwrap(),
                &Rfc3339,
            )
            .unwrap(),
        );
        let (_, revealed) = stack
            .get_json(&format!("/v1/applications/app_test/endpoints/{id}/secret"))
            .await;
        assert_eq!(revealed["secret"], new_secret.as_str());
        assert_eq!(
            revealed["previous_secrets"][0]["secret"],
            old_secret.as_str()
        );
        // Nothing else shows a secret.
        let (_, shown) = stack
            .get_json(&format!("/v1/applications/app_test/endpoints/{id}"))
            .await;
        assert!(!shown.to_string().contains("whsec_"), "{shown}");
    }
    new_only.set_secret(&new_secret);
    stack.settle_endpoints().await;
    let (old, new, signatures) = deliver_one(&stack, "during_grace", &old_only, &new_only).await;
    assert_eq!(
        (old, new, signatures),
        (200, 200, 2),
        "during the grace period both receivers accept"
    );

    // After the grace period only the new secret signs.
    let latest = expires_at.iter().max().unwrap();
    while OffsetDateTime::now_utc() <= *latest + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (old, new, signatures) = deliver_one(&stack, "after_grace", &old_only, &new_only).await;
    assert_eq!(
        (old, new, signatures),
        (401, 200, 1),
        "after the grace period only the new secret verifies"
    );
    let (_, revealed) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints/{}/secret",
            ids[0]
        ))
        .await;
    assert_eq!(revealed["previous_secrets"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_a_body_generates_a_secret_and_a_zero_grace_retires_the_old_one() {
    let stack = Stack::start(StackOptions::new("rotation-api").dispatchers(0)).await;
    let created = stack
        .create_endpoint(json!({"url": "https://hooks.example.invalid/h", "event_types": ["*"]}))
        .await;
    let id = created["id"].as_str().unwrap();
    let first = created["secret"].as_str().unwrap().to_owned();
    let response = stack
        .request(
            reqwest::Method::POST,
            &format!("/v1/applications/app_test/endpoints/{id}/secret/rotate"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let second = body["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    Secret::parse(&second).expect("a generated whsec_ secret");
    // The default grace is a day.
    let expires = OffsetDateTime::parse(
        body["previous_secret_expires_at"].as_str().unwrap(),
        &Rfc3339,
    )
    .unwrap();
    let hours = (expires - OffsetDateTime::now_utc()).whole_hours();
    assert!((23..=24).contains(&hours), "{hours} h");

    let (status, body) = stack
        .post_json(
            &format!("/v1/applications/app_test/endpoints/{id}/secret/rotate"),
            &json!({"grace_period_seconds": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous_secret_expires_at"], Value::Null);
    let (_, revealed) = stack
        .get_json(&format!("/v1/applications/app_test/endpoints/{id}/secret"))
        .await;
    assert_eq!(revealed["secret"], body["secret"]);
    // The first secret's grace is still running; the second retired at once.
    let previous: Vec<&str> = revealed["previous_secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["secret"].as_str().unwrap())
        .collect();
    assert_eq!(previous, [first.as_str()]);
}

/// A rotation and a PATCH of the same endpoint at the same moment: each
/// lands on top of the other. Before endpoint changes were atomic, the
/// later write could bring the old secret back after the API had answered
/// with the new one, or re-enable a disabled endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_and_a_patch_at_once_both_take_effect() {
    let stack = Stack::start(StackOptions::new("rotation-race").dispatchers(0)).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    for round in 0..15 {
        let id = stack.subscribe(&receiver, &["*"]).await;
        let (rotate_path, rotate_body) = (
            format!("/v1/applications/app_test/endpoints/{id}/secret/rotate"),
            json!({"grace_period_seconds": 0.0}),
        );
        let rotate = stack.post_json(&rotate_path, &rotate_body);
        let patch = async {
            stack
                .request(
                    reqwest::Method::PATCH,
                    &format!("/v1/applications/app_test/endpoints/{id}"),
                )
                .json(&json!({"disabled": true, "description": format!("round {round}")}))
                .send()
                .await
                .expect("PATCH")
                .status()
                .as_u16()
        };
        let ((rotated_status, rotated), patched_status) = tokio::join!(rotate, patch);
        assert_eq!(rotated_status, 200, "{rotated}");
        assert_eq!(patched_status, 200);
        let (_, revealed) = stack
            .get_json(&format!("/v1/applications/app_test/endpoints/{id}/secret"))
            .await;
        assert_eq!(
            revealed["secret"], rotated["secret"],
            "round {round}: the rotated secret was lost"
        );
        let (_, endpoint) = stack
            .get_json(&format!("/v1/applications/app_test/endpoints/{id}"))
            .await;
        assert_eq!(endpoint["disabled"], true, "round {round}: {endpoint}");
        assert_eq!(endpoint["description"], format!("round {round}"));
    }
}
