//! Where webhooks may go and what Herald does with the answer: refused
//! destinations at connect time, redirects, endless response bodies, and
//! https endpoints of a private CA speaking HTTP/2.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_tests::{Alpn, Behaviour, Receiver, Stack, StackOptions, eventually};
use serde_json::{Value, json};

/// The attempts of one event, once at least `n` are logged.
async fn wait_for_attempts(stack: &Stack, event_id: &str, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    for _ in 0..300 {
        let (status, body) = stack
            .get_json(&format!(
                "/v1/applications/app_test/events/{event_id}/attempts"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        found = body["data"].as_array().cloned().unwrap_or_default();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "only {} attempts of {event_id} logged: {found:?}",
        found.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_of_a_private_ca_gets_its_webhooks_over_http2_on_one_connection() {
    let stack = Stack::start(
        StackOptions::new("https-http2")
            .env("HERALD_OUTBOUND_CA_FILE", &herald_tests::test_ca_file()),
    )
    .await;
    let receiver = Receiver::start_tls(Behaviour::VerifySignature, Alpn::Http2AndHttp1).await;
    let created = stack
        .create_endpoint(json!({"url": receiver.url(), "event_types": ["tls.*"]}))
        .await;
    receiver.set_secret(created["secret"].as_str().unwrap());
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    // The first one finds out the endpoint speaks HTTP/2; the other 20 go
    // together as streams of the same connection.
    let event = |n: usize| json!({"application": "app_test", "id": format!("tls_{n}"), "type": "tls.sent", "payload": {"n": n}});
    stack.accept_event(&event(0)).await;
    assert!(
        receiver.wait_for(1, Duration::from_secs(60)).await,
        "nothing arrived over https; logs in {}",
        stack.logs().display()
    );
    for n in 1..=20 {
        stack.accept_event(&event(n)).await;
    }
    assert!(
        receiver.wait_for(21, Duration::from_secs(60)).await,
        "{} of 21 arrived; logs in {}",
        receiver.count(),
        stack.logs().display()
    );
    let received = receiver.received();
    assert!(
        received
            .iter()
            .all(|r| r.signature_valid && r.answered == 200),
        "a webhook over https failed its signature check"
    );
    assert!(
        received
            .iter()
            .all(|r| r.version == axum::http::Version::HTTP_2),
        "versions: {:?}",
        received.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    let counts = receiver.id_counts();
    assert_eq!(counts.len(), 21);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(receiver.tls_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_refused_at_connect_time_is_dead_lettered_at_once() {
    // Ingest allows loopback, so both endpoints register; the dispatcher
    // does not, as if the names had resolved elsewhere at registration.
    let mut stack = Stack::start(StackOptions::new("refused-destination").dispatchers(0)).await;
    stack
        .env
        .insert("HERALD_ALLOWED_DESTINATION_CIDRS".into(), String::new());
    stack.start_dispatcher();
    let receiver = Receiver::start(Behaviour::Accept).await;
    let port = receiver.port();
    let by_name = stack
        .create_endpoint(json!({"url": format!("http://localhost:{port}/by-name"), "event_types": ["ssrf.name"]}))
        .await;
    let by_address = stack
        .create_endpoint(json!({"url": format!("http://127.0.0.1:{port}/by-address"), "event_types": ["ssrf.address"]}))
        .await;
    stack.settle_endpoints().await;

    stack
        .accept_event(&json!({"application": "app_test", "id": "ssrf_name", "type": "ssrf.name", "payload": 1}))
        .await;
    stack
        .accept_event(&json!({"application": "app_test", "id": "ssrf_address", "type": "ssrf.address", "payload": 2}))
        .await;

    for (endpoint, needle) in [
        (
            &by_name,
            "localhost resolves only to refused addresses: 127.0.0.1 is a loopback address",
        ),
        (&by_address, "127.0.0.1 is a loopback address"),
    ] {
        let id = endpoint["id"].as_str().unwrap();
        let letters = stack
            .wait_for_dead_letters(&format!("endpoint_id={id}"), 1, Duration::from_secs(60))
            .await;
        let letter = &letters[0];
        assert_eq!(letter["reason"], "destination_refused", "{letter}");
        let detail = letter["detail"].as_str().unwrap();
        assert!(detail.starts_with("destination refused: "), "{detail}");
        assert!(detail.contains(needle), "{detail}");
        assert!(
            detail.contains("HERALD_ALLOWED_DESTINATION_CIDRS"),
            "{detail}"
        );
        // One attempt, not the retry schedule: trying again cannot help.
        assert_eq!(letter["attempts"].as_array().unwrap().len(), 1, "{letter}");
    }
    assert_eq!(receiver.count(), 0, "a refused destination was reached");
    // The refusal is in the attempt log too.
    let attempts = wait_for_attempts(&stack, "ssrf_name", 1).await;
    assert_eq!(attempts[0]["success"], false);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("destination refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
    let stack = Stack::start(StackOptions::new("redirect")).await;
    let elsewhere = Receiver::start(Behaviour::Accept).await;
    let redirecting = Receiver::start(Behaviour::Redirect {
        status: 307,
        location: elsewhere.url(),
    })
    .await;
    stack.subscribe(&redirecting, &["moved.*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "id": "moved_1", "type": "moved.away", "payload": 1}))
        .await;
    // The first attempt fails, and so does the retry a second later.
    assert!(redirecting.wait_for(2, Duration::from_secs(60)).await);
    let attempts = wait_for_attempts(&stack, "moved_1", 2).await;
    for attempt in &attempts {
        assert_eq!(attempt["success"], false, "{attempt}");
        assert_eq!(attempt["status_code"], 307, "{attempt}");
    }
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_cut_off() {
    let stack = Stack::start(StackOptions::new("endless-body")).await;
    let receiver = Receiver::start(Behaviour::EndlessBody).await;
    stack.subscribe(&receiver, &["talk.*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(
            &json!({"application": "app_test", "id": "talk_1", "type": "talk.long", "payload": 1}),
        )
        .await;
    let attempts = wait_for_attempts(&stack, "talk_1", 1).await;
    assert_eq!(attempts[0]["success"], true, "{}", attempts[0]);
    assert_eq!(attempts[0]["status_code"], 200);
    let kept = attempts[0]["response_body"].as_str().unwrap();
    assert!(
        kept.len() <= 4096 && kept.starts_with("xxxx"),
        "{}",
        kept.len()
    );
    // Herald hung up after its bound instead of reading until its timeout
    // (which, over loopback, would have pulled gigabytes).
    let endless = receiver.endless_body();
    assert!(
        eventually(Duration::from_secs(30), || endless
            .closed
            .load(Ordering::SeqCst))
        .await,
        "Herald never closed the connection"
    );
    let sent = endless.sent.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "{sent} bytes were streamed to Herald");
}

/// An endpoint URL may carry credentials and tokens (user info, query):
/// they reach the endpoint, and no log line, whether the delivery succeeds
/// or the endpoint cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_an_endpoint_url_never_reach_a_log() {
    let stack = Stack::start(StackOptions::new("url-credentials")).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let token = format!("tok{}", herald_tests::random_suffix());
    let with_credentials =
        |port: u16| format!("http://herald:pw-{token}@127.0.0.1:{port}/hook?token={token}&x=1");
    let reachable = stack
        .create_endpoint(json!({"url": with_credentials(receiver.port()), "event_types": ["*"]}))
        .await;
    receiver.set_secret(reachable["secret"].as_str().unwrap());
    let unreachable = stack
        .create_endpoint(json!({
            "url": with_credentials(herald_tests::free_port()),
            "event_types": ["*"],
        }))
        .await;
    stack.settle_endpoints().await;
    let id = stack
        .accept_event(&json!({"application": "app_test", "type": "secret.test", "payload": {}}))
        .await;
    assert!(receiver.wait_for(1, Duration::from_secs(30)).await);
    let delivered = &receiver.received()[0];
    assert!(delivered.signature_valid);
    assert!(
        delivered.header("authorization").starts_with("Basic "),
        "the user info reaches the endpoint as basic auth"
    );
    // The unreachable one fails at least once (its error is logged).
    let attempts = wait_for_attempts(&stack, &id, 2).await;
    let unreachable_id = unreachable["id"].as_str().unwrap();
    assert!(
        attempts.iter().any(|a| a["endpoint_id"] == unreachable_id
            && a["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot connect"))),
        "{attempts:?}"
    );
    let attempts_text = serde_json::to_string(&attempts).unwrap();
    assert!(!attempts_text.contains(&token), "{attempts_text}");

    let mut logs = String::new();
    for service in stack
        .ingest
        .iter()
        .chain(stack.fanout.iter())
        .chain(stack.dispatchers.iter())
    {
        logs.push_str(&service.log_text());
    }
    assert!(logs.contains("endpoint created"), "the logs were read");
    assert!(!logs.contains(&token), "a URL's credentials reached a log");
}
