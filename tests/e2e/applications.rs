//! Applications: each event reaches only its own application's endpoints,
//! over HTTP and over Kafka; a change answered before an event was sent
//! applies to it; ids are per application; unknown and deleted applications
//! end in precise errors and dead letters, never in silence.

use std::collections::HashSet;
use std::time::Duration;

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use reqwest::Method;
use serde_json::json;

/// An accepting receiver subscribed to `types` in application `app`.
async fn subscribe_in(stack: &Stack, app: &str, types: &[&str]) -> (Receiver, String) {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = stack
        .create_endpoint_in(app, json!({"url": receiver.url(), "event_types": types}))
        .await;
    assert_eq!(created["application_id"], app);
    receiver.set_secret(created["secret"].as_str().unwrap());
    (receiver, created["id"].as_str().unwrap().to_owned())
}

fn ids_at(receiver: &Receiver) -> HashSet<String> {
    receiver.id_counts().into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_only_its_own_applications_endpoints() {
    let stack = Stack::start(StackOptions::new("apps-isolation")).await;
    stack.create_application("acme").await;
    stack.create_application("globex").await;
    let (acme, _) = subscribe_in(&stack, "acme", &["invoice.paid"]).await;
    let (globex, _) = subscribe_in(&stack, "globex", &["invoice.paid"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    let producer = stack.kafka_producer();
    let mut sent: [HashSet<String>; 2] = Default::default();
    for i in 0..5 {
        for (n, app) in ["acme", "globex"].into_iter().enumerate() {
            let http_id = format!("{app}_http_{i}");
            stack
                .accept_event(&json!({"application": app, "id": http_id, "type": "invoice.paid", "payload": {"i": i}}))
                .await;
            let kafka_id = format!("{app}_kafka_{i}");
            stack
                .produce_event(
                    &producer,
                    &json!({"application": app, "id": kafka_id, "type": "invoice.paid", "payload": {"i": i}}),
                )
                .await;
            sent[n].insert(http_id);
            sent[n].insert(kafka_id);
        }
    }
    for (receiver, expected) in [(&acme, &sent[0]), (&globex, &sent[1])] {
        assert_eq!(
            receiver
                .wait_for_distinct(expected.len(), Duration::from_secs(30))
                .await,
            expected.len(),
            "logs in {}",
            stack.logs().display()
        );
    }
    // Give a stray delivery time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ids_at(&acme),
        sent[0],
        "acme got another application's events"
    );
    assert_eq!(
        ids_at(&globex),
        sent[1],
        "globex got another application's events"
    );
    for receiver in [&acme, &globex] {
        assert!(receiver.received().iter().all(|r| r.signature_valid));
        assert!(receiver.id_counts().values().all(|n| *n == 1));
    }
}

/// Read your writes: an endpoint created (201) and at once sent an event
/// gets it — every time, not only after the caches refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_created_and_used_at_once_gets_its_webhook_every_time() {
    // A long refresh interval, so that only the read-your-writes guarantee
    // can make this pass.
    let stack = Stack::start(
        StackOptions::new("apps-read-your-writes").env("HERALD_ENDPOINT_CACHE_REFRESH", "1h"),
    )
    .await;
    stack.wait_dispatchers_assigned().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let event_type = format!("ryw.n{i}");
        stack
            .create_endpoint(json!({
                "url": receiver.url_at(&format!("hook/{i}")),
                "event_types": [event_type],
            }))
            .await;
        ids.push(
            stack
                .accept_event(&json!({"type": event_type, "payload": {"i": i}}))
                .await,
        );
    }
    let seen = receiver
        .wait_for_distinct(ids.len(), Duration::from_secs(60))
        .await;
    let arrived = ids_at(&receiver);
    let missing: Vec<_> = ids.iter().filter(|id| !arrived.contains(*id)).collect();
    assert_eq!(
        seen,
        ids.len(),
        "{} of 100 webhooks never came: {missing:?}; logs in {}",
        missing.len(),
        stack.logs().display()
    );
    // Each went to its own endpoint only.
    for r in receiver.received() {
        let i = r.json()["data"]["i"].as_u64().unwrap();
        assert_eq!(r.path, format!("/hook/{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_is_unique_within_its_application_only() {
    let stack = Stack::start(StackOptions::new("apps-idempotency")).await;
    stack.create_application("acme").await;
    stack.create_application("globex").await;
    let (acme, _) = subscribe_in(&stack, "acme", &["*"]).await;
    let (globex, _) = subscribe_in(&stack, "globex", &["*"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    for app in ["acme", "globex"] {
        let (status, _) = stack
            .post_event(&json!({"application": app, "id": "order-1", "type": "a", "payload": 1}))
            .await;
        assert_eq!(
            status, 202,
            "the same id in another application is another event"
        );
    }
    let again = stack
        .request(Method::POST, "/v1/events")
        .json(&json!({"application": "acme", "id": "order-1", "type": "a", "payload": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers().get("idempotent-replayed").unwrap(),
        "true",
        "the same id twice in one application is one event"
    );
    for receiver in [&acme, &globex] {
        assert_eq!(
            receiver.wait_for_distinct(1, Duration::from_secs(30)).await,
            1
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(acme.count(), 1, "acme got order-1 twice");
    assert_eq!(globex.count(), 1);
    assert_eq!(acme.received()[0].webhook_id(), "order-1");
    assert_eq!(globex.received()[0].webhook_id(), "order-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_application_is_a_404_over_http_and_a_dead_letter_over_kafka() {
    let stack = Stack::start(StackOptions::new("apps-unknown")).await;
    let (receiver, _) = subscribe_in(&stack, herald_tests::APP, &["*"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    let (status, body) = stack
        .post_event(&json!({"application": "initech", "type": "a", "payload": 1}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "application_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("initech")
    );
    let (status, body) = stack.get_json("/v1/applications/initech/endpoints").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "application_not_found");

    // Over Kafka: a dead letter with the reason, and the records behind it
    // are delivered.
    let producer = stack.kafka_producer();
    stack
        .produce_event(
            &producer,
            &json!({"application": "initech", "id": "lost_1", "type": "a", "payload": 1}),
        )
        .await;
    stack
        .produce_event(
            &producer,
            &json!({"id": "behind_1", "type": "a", "payload": 2}),
        )
        .await;
    assert!(
        receiver
            .wait_until_delivered(&["behind_1".to_owned()], Duration::from_secs(30))
            .await,
        "the event behind the unknown application was held up; logs in {}",
        stack.logs().display()
    );
    let letters = stack
        .wait_for_dead_letters("", 1, Duration::from_secs(30))
        .await;
    let letter = &letters[0];
    assert_eq!(letter["reason"], "application_not_found", "{letter}");
    assert!(
        letter["detail"].as_str().unwrap().contains("initech"),
        "{letter}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_application_deletes_its_endpoints_and_dead_letters_what_was_on_its_way() {
    let stack = Stack::start(StackOptions::new("apps-delete")).await;
    stack.create_application("acme").await;
    stack.create_application("globex").await;
    let (_acme, acme_endpoint) = subscribe_in(&stack, "acme", &["*"]).await;
    let (globex, globex_endpoint) = subscribe_in(&stack, "globex", &["*"]).await;

    // Another application's endpoint is not found under this one.
    let (status, _) = stack
        .get_json(&format!(
            "/v1/applications/acme/endpoints/{globex_endpoint}"
        ))
        .await;
    assert_eq!(status, 404);

    let deleted = stack
        .request(Method::DELETE, "/v1/applications/acme")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    for path in [
        "/v1/applications/acme".to_owned(),
        format!("/v1/applications/acme/endpoints/{acme_endpoint}"),
    ] {
        let (status, body) = stack.get_json(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, apps) = stack.get_json("/v1/applications").await;
    let listed: Vec<&str> = apps["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(
        !listed.contains(&"acme") && listed.contains(&"globex"),
        "{apps}"
    );
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    // A delivery that was already on its way to the deleted endpoint.
    let producer = stack.kafka_producer();
    stack
        .produce_delivery(&producer, &acme_endpoint, 0, 0)
        .await;
    let letters = stack
        .wait_for_dead_letters("", 1, Duration::from_secs(30))
        .await;
    assert_eq!(letters[0]["reason"], "endpoint_deleted", "{}", letters[0]);
    // The other application is untouched.
    stack
        .accept_event(&json!({"application": "globex", "type": "a", "payload": 1}))
        .await;
    assert_eq!(
        globex.wait_for_distinct(1, Duration::from_secs(30)).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_two_applications_serves_five_busy_ones_rightly() {
    let stack =
        Stack::start(StackOptions::new("apps-small-cache").env("HERALD_FANOUT_CACHE_ENTRIES", "2"))
            .await;
    let apps = ["a1", "a2", "a3", "a4", "a5"];
    let mut receivers = Vec::new();
    for app in apps {
        stack.create_application(app).await;
        receivers.push(subscribe_in(&stack, app, &["busy"]).await);
    }
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;
    let producer = stack.kafka_producer();
    for i in 0..8 {
        for app in apps {
            stack
                .produce_event(
                    &producer,
                    &json!({"application": app, "id": format!("{app}_{i}"), "type": "busy", "payload": i}),
                )
                .await;
        }
    }
    for (n, (receiver, _)) in receivers.iter().enumerate() {
        assert_eq!(
            receiver.wait_for_distinct(8, Duration::from_secs(30)).await,
            8,
            "logs in {}",
            stack.logs().display()
        );
        let expected: HashSet<String> = (0..8).map(|i| format!("{}_{i}", apps[n])).collect();
        assert_eq!(ids_at(receiver), expected);
    }

    // A change to one application's endpoints reaches fan-out within the
    // refresh interval (100 ms in the tests), for events straight from
    // Kafka too.
    let (a3, a3_endpoint) = &receivers[2];
    let (status, body) = stack
        .request(
            Method::PATCH,
            &format!("/v1/applications/a3/endpoints/{a3_endpoint}"),
        )
        .json(&json!({"event_types": ["renamed"]}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", body.text().await);
    stack.settle_endpoints().await;
    for event_type in ["busy", "renamed"] {
        stack
            .produce_event(
                &producer,
                &json!({"application": "a3", "id": format!("a3_{event_type}"), "type": event_type, "payload": 0}),
            )
            .await;
    }
    assert!(
        a3.wait_until_delivered(&["a3_renamed".to_owned()], Duration::from_secs(30))
            .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !ids_at(a3).contains("a3_busy"),
        "the old subscription still applied after the refresh interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_per_application() {
    let stack =
        Stack::start(StackOptions::new("apps-dlq").env("HERALD_RETRY_SCHEDULE", "1s")).await;
    let mut failing = Vec::new();
    for app in ["acme", "globex"] {
        stack.create_application(app).await;
        let receiver = Receiver::start(Behaviour::AlwaysFail(500)).await;
        let created = stack
            .create_endpoint_in(app, json!({"url": receiver.url(), "event_types": ["*"]}))
            .await;
        receiver.set_secret(created["secret"].as_str().unwrap());
        failing.push(receiver);
    }
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;
    for app in ["acme", "globex"] {
        stack
            .accept_event(&json!({"application": app, "id": format!("{app}_dies"), "type": "a", "payload": 1}))
            .await;
    }
    let acme = stack
        .wait_for_dead_letters("application=acme", 1, Duration::from_secs(30))
        .await;
    stack
        .wait_for_dead_letters("application=globex", 1, Duration::from_secs(30))
        .await;
    assert_eq!(acme.len(), 1, "{acme:?}");
    assert_eq!(acme[0]["application_id"], "acme");
    assert_eq!(acme[0]["event_id"], "acme_dies");
    // Both filters: an endpoint of that application, or not found.
    let acme_endpoint = acme[0]["endpoint_id"].as_str().unwrap();
    let (status, body) = stack
        .get_json(&format!(
            "/v1/dlq?application=acme&endpoint_id={acme_endpoint}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["event_id"], "acme_dies");
    let (status, body) = stack
        .get_json(&format!(
            "/v1/dlq?application=globex&endpoint_id={acme_endpoint}"
        ))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // Replaying one application's dead letters replays those only.
    failing[0].set_behaviour(Behaviour::Accept);
    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"application": "acme"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], json!([acme[0]["id"]]));
    assert!(
        failing[0]
            .wait_until_delivered(&["acme_dies".to_owned()], Duration::from_secs(30))
            .await
    );
    let (_, globex) = stack.get_json("/v1/dlq?application=globex").await;
    assert_eq!(globex["data"].as_array().unwrap().len(), 1, "{globex}");
    // Replayed letters leave the application's list, and the replayed
    // delivery is still the application's: its attempts are listed there.
    let (_, acme_left) = stack.get_json("/v1/dlq?application=acme").await;
    assert_eq!(acme_left["data"], json!([]), "{acme_left}");
    let succeeded = herald_tests::eventually_async(Duration::from_secs(10), || async {
        let (_, log) = stack
            .get_json("/v1/applications/acme/events/acme_dies/attempts")
            .await;
        log["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|attempt| attempt["success"] == true))
    })
    .await;
    assert!(
        succeeded,
        "the replayed attempt is not in the application's log"
    );
    let (status, body) = stack
        .post_json("/v1/dlq/replay", &json!({"application": "initech"}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "application_not_found");
}

/// Calls `method path` with `token`; returns the status and JSON body.
async fn call_with(
    stack: &Stack,
    token: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", stack.ingest_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

async fn issue(stack: &Stack, app: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, token) = stack
        .post_json(&format!("/v1/applications/{app}/tokens"), &body)
        .await;
    assert_eq!(status, 201, "{token}");
    assert!(token["token"].as_str().unwrap().starts_with("hat_"));
    assert_eq!(token["application_id"], app);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_tokens_see_their_own_application_and_nothing_else() {
    let stack = Stack::start(StackOptions::new("apps-tokens")).await;
    stack.create_application("acme").await;
    stack.create_application("globex").await;
    let (acme_receiver, acme_ep) = subscribe_in(&stack, "acme", &["*"]).await;
    let (_globex_receiver, globex_ep) = subscribe_in(&stack, "globex", &["*"]).await;
    let portal = issue(
        &stack,
        "acme",
        json!({"scope": "portal", "ttl_seconds": 3600}),
    )
    .await;
    let portal = portal["token"].as_str().unwrap();
    let ingest = issue(&stack, "acme", json!({"scope": "ingest"})).await;
    let ingest = ingest["token"].as_str().unwrap();

    // The portal token manages its own application's endpoints.
    let (status, listed) = call_with(
        &stack,
        portal,
        Method::GET,
        "/v1/applications/acme/endpoints",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [acme_ep.as_str()]);
    let (status, _) = call_with(
        &stack,
        portal,
        Method::GET,
        &format!("/v1/applications/acme/endpoints/{acme_ep}/secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Every route of the other application is a 404, as if it did not
    // exist — by its own path, and by its endpoint under this one's.
    let globex = format!("/v1/applications/globex/endpoints/{globex_ep}");
    let smuggled = format!("/v1/applications/acme/endpoints/{globex_ep}");
    for (method, path, body) in [
        (
            Method::GET,
            "/v1/applications/globex/endpoints".to_owned(),
            None,
        ),
        (
            Method::POST,
            "/v1/applications/globex/endpoints".to_owned(),
            Some(json!({"url": "http://127.0.0.1:1/", "event_types": ["*"]})),
        ),
        (Method::GET, globex.clone(), None),
        (
            Method::PATCH,
            globex.clone(),
            Some(json!({"disabled": true})),
        ),
        (Method::DELETE, globex.clone(), None),
        (Method::GET, format!("{globex}/secret"), None),
        (
            Method::POST,
            format!("{globex}/secret/rotate"),
            Some(json!({})),
        ),
        (Method::GET, format!("{globex}/health"), None),
        (Method::GET, format!("{globex}/attempts"), None),
        (
            Method::GET,
            "/v1/applications/globex/events/order-1/attempts".to_owned(),
            None,
        ),
        (Method::GET, smuggled.clone(), None),
        (Method::DELETE, smuggled.clone(), None),
        (Method::GET, format!("{smuggled}/secret"), None),
        (Method::GET, "/v1/dlq?application=globex".to_owned(), None),
        (
            Method::GET,
            format!("/v1/dlq?endpoint_id={globex_ep}"),
            None,
        ),
        (
            Method::POST,
            "/v1/dlq/replay".to_owned(),
            Some(json!({"application": "globex"})),
        ),
        (
            Method::POST,
            "/v1/dlq/replay".to_owned(),
            Some(json!({"endpoint_id": globex_ep})),
        ),
    ] {
        let (status, body) = call_with(&stack, portal, method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // The other application's endpoint is untouched.
    let (status, still) = stack.get_json(&globex).await;
    assert_eq!(status, 200);
    assert_eq!(still["disabled"], false);
    // Routes outside any application are not for portal tokens.
    for (method, path) in [
        (Method::GET, "/v1/applications"),
        (Method::POST, "/v1/events"),
        (Method::DELETE, "/v1/applications/acme"),
    ] {
        let (status, body) = call_with(
            &stack,
            portal,
            method.clone(),
            path,
            Some(json!({"type": "a", "payload": 1})),
        )
        .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }

    // The ingest token sends to its own application only.
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;
    let (status, body) = call_with(
        &stack,
        ingest,
        Method::POST,
        "/v1/events",
        Some(json!({"application": "acme", "id": "via_token", "type": "a", "payload": 1})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = call_with(
        &stack,
        ingest,
        Method::POST,
        "/v1/events",
        Some(json!({"application": "globex", "type": "a", "payload": 1})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "application_not_found");
    let (status, _) = call_with(
        &stack,
        ingest,
        Method::GET,
        "/v1/applications/acme/endpoints",
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        acme_receiver
            .wait_until_delivered(&["via_token".to_owned()], Duration::from_secs(30))
            .await
    );

    // Expired and revoked tokens are refused.
    let short = issue(&stack, "acme", json!({"scope": "portal", "ttl_seconds": 1})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = call_with(
        &stack,
        short["token"].as_str().unwrap(),
        Method::GET,
        "/v1/applications/acme/endpoints",
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let revoked = issue(&stack, "acme", json!({"scope": "portal"})).await;
    let deleted = stack
        .request(
            Method::DELETE,
            &format!(
                "/v1/applications/acme/tokens/{}",
                revoked["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _) = call_with(
        &stack,
        revoked["token"].as_str().unwrap(),
        Method::GET,
        "/v1/applications/acme/endpoints",
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Issuing: the scope and lifetime are checked, the application must exist.
    for (body, status) in [
        (json!({"scope": "admin"}), 400),
        (json!({"scope": "portal", "ttl_seconds": 2_592_001}), 400),
        (json!({"scope": "portal", "ttl_seconds": 0}), 400),
        (json!({"scope": "portal", "ttl_seconds": 1.5}), 400),
        (json!({"scope": "portal", "ttl_seconds": "1h"}), 400),
    ] {
        let (got, answer) = stack.post_json("/v1/applications/acme/tokens", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    let (status, _) = stack
        .post_json(
            "/v1/applications/initech/tokens",
            &json!({"scope": "portal"}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_rate_limit_holds_and_touches_no_other() {
    let stack = Stack::start(StackOptions::new("apps-rate-limit").ingest_only()).await;
    stack.create_application(herald_tests::APP).await;
    let (status, body) = stack
        .post_json(
            "/v1/applications",
            &json!({"id": "limited", "name": "Limited", "rate_limit": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let started = std::time::Instant::now();
    let (mut accepted, mut limited) = (0, 0);
    for i in 0..12 {
        let response = stack
            .request(Method::POST, "/v1/events")
            .json(&json!({"application": "limited", "id": format!("l_{i}"), "type": "a", "payload": i}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                limited += 1;
                assert!(response.headers().contains_key("retry-after"));
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("\"limited\""),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of one second's worth, then the rate.
    assert!(
        accepted as f64 <= 2.0 + 2.0 * elapsed + 1.0 && accepted >= 2,
        "{accepted} accepted in {elapsed:.2} s at 2/s"
    );
    assert!(limited > 0);
    // Another application is not held to it.
    for i in 0..12 {
        stack
            .accept_event(&json!({"id": format!("free_{i}"), "type": "a", "payload": i}))
            .await;
    }
    // Removing the limit lifts it.
    let (status, body) = stack
        .request(Method::PATCH, "/v1/applications/limited")
        .json(&json!({"rate_limit": null}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", body.text().await);
    for i in 0..6 {
        stack
            .accept_event(&json!({"application": "limited", "id": format!("after_{i}"), "type": "a", "payload": i}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_api_refuses_bad_input_precisely() {
    let stack = Stack::start(StackOptions::new("apps-api").ingest_only()).await;
    stack.create_application(herald_tests::APP).await;
    for (body, status, code, needle) in [
        (
            json!({"id": "a:b", "name": "x"}),
            400,
            "invalid_field",
            "':'",
        ),
        (
            json!({"id": "a.b", "name": "x"}),
            400,
            "invalid_field",
            "'.'",
        ),
        (json!({"name": ""}), 400, "invalid_field", "`name`"),
        (json!({"id": "x"}), 400, "invalid_request", "name"),
        (
            json!({"name": "x", "rate_limit": 0}),
            400,
            "invalid_field",
            "`rate_limit`",
        ),
        (
            json!({"name": "x", "colour": "red"}),
            400,
            "invalid_request",
            "colour",
        ),
        (
            json!({"id": herald_tests::APP, "name": "again"}),
            409,
            "application_exists",
            herald_tests::APP,
        ),
    ] {
        let (got, answer) = stack.post_json("/v1/applications", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {answer}"
        );
    }
    let (status, created) = stack
        .post_json(
            "/v1/applications",
            &json!({"name": "Generated", "metadata": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("app_"), "{created}");
    assert_eq!(created["metadata"]["plan"], "pro");
    let (status, renamed) = stack
        .request(Method::PATCH, &format!("/v1/applications/{id}"))
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    let renamed: serde_json::Value = renamed.json().await.unwrap();
    assert_eq!(renamed["name"], "Renamed");
    assert_eq!(
        renamed["metadata"]["plan"], "pro",
        "a PATCH keeps what it does not name"
    );
    for path in [
        "/v1/applications/initech",
        "/v1/applications/initech/endpoints",
    ] {
        let (status, body) = stack.get_json(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "application_not_found");
    }
    let (status, page) = stack.get_json("/v1/applications?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string(), "{page}");
}
