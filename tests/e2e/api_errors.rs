//! Every refusal answers its status and a message that names the problem.

use herald_tests::{Stack, StackOptions, free_port};
use reqwest::Method;
use serde_json::{Value, json};

/// Sends `body` (raw) to `path` and returns status, code and message.
async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, String) {
    let mut request = stack.request(method, path).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        json["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn assert_refusal(got: (u16, String, String), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1, code, "{got:?}");
    assert!(
        got.2.contains(needle),
        "message {:?} does not mention {needle:?}",
        got.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_errors_are_precise() {
    let stack = Stack::start(
        StackOptions::new("event-errors")
            .dispatchers(0)
            .env("HERALD_MAX_BODY_BYTES", "4096"),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", stack.ingest_url);
    let ok_event = json!({"application": "app_test", "type": "a", "payload": 1}).to_string();

    // Authentication.
    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .body(ok_event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization")
    );
    let response = http
        .post(&url)
        .bearer_auth("not-the-key-at-all")
        .header("content-type", "application/json")
        .body(ok_event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid")
    );
    let response = http
        .post(&url)
        .header("authorization", "Basic abc")
        .body(ok_event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let json_ct = Some("application/json");
    let post = |body: &str| {
        call(
            &stack,
            Method::POST,
            "/v1/events",
            json_ct,
            body.as_bytes().to_vec(),
        )
    };
    assert_refusal(
        post("{\"type\": ").await,
        400,
        "malformed_json",
        "not valid JSON",
    );
    assert_refusal(post("[]").await, 400, "invalid_event", "JSON object");
    assert_refusal(
        post(r#"{"application":"app_test","payload": 1}"#).await,
        400,
        "missing_field",
        "`type`",
    );
    assert_refusal(
        post(r#"{"application":"app_test","type": "a"}"#).await,
        400,
        "missing_field",
        "`payload`",
    );
    assert_refusal(
        post(r#"{"application":"app_test","type": 7, "payload": 1}"#).await,
        400,
        "invalid_field",
        "`type` must be a string",
    );
    assert_refusal(
        post(r#"{"application":"app_test","type": "a/b", "payload": 1}"#).await,
        400,
        "invalid_field",
        "`type` contains '/'",
    );
    assert_refusal(
        post(r#"{"application":"app_test","id": "", "type": "a", "payload": 1}"#).await,
        400,
        "invalid_field",
        "`id` must not be empty",
    );
    assert_refusal(
        post(r#"{"application":"app_test","type": "a", "payload": 1, "paylod": 2}"#).await,
        400,
        "invalid_event",
        "unknown field `paylod`",
    );
    assert_refusal(
        post(r#"{"application":"app_test","type": "a", "payload": 1, "timestamp": "noon"}"#).await,
        400,
        "invalid_field",
        "`timestamp`",
    );

    // Content type and size.
    assert_refusal(
        call(
            &stack,
            Method::POST,
            "/v1/events",
            Some("text/plain"),
            ok_event.clone().into_bytes(),
        )
        .await,
        415,
        "unsupported_media_type",
        "application/json",
    );
    assert_refusal(
        call(
            &stack,
            Method::POST,
            "/v1/events",
            None,
            ok_event.clone().into_bytes(),
        )
        .await,
        415,
        "unsupported_media_type",
        "got none",
    );
    let huge =
        json!({"application": "app_test", "type": "a", "payload": "x".repeat(5000)}).to_string();
    assert_refusal(post(&huge).await, 413, "body_too_large", "4096 bytes");
    // Also when the size is not announced up front (chunked upload).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(huge.clone().into_bytes()[..3000].to_vec()),
        Ok(huge.into_bytes()[3000..].to_vec()),
    ];
    let response = stack
        .request(Method::POST, "/v1/events")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // An Idempotency-Key beside a body id: the body's id names the event,
    // and the key names that event from then on.
    let send = |key: &'static str, id: &'static str| {
        stack
            .request(Method::POST, "/v1/events")
            .header("Idempotency-Key", key)
            .json(&json!({"application": "app_test", "id": id, "type": "a", "payload": 1}))
            .send()
    };
    let first = send("key-one", "event-two").await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(first.json::<Value>().await.unwrap()["id"], "event-two");
    let again = send("key-one", "event-two").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let reused = send("key-one", "event-three").await.unwrap();
    assert_eq!(reused.status(), 409);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"key-one\""),
        "{body}"
    );
    // The key alone names the event it was first sent with, not a new one.
    let alone = stack
        .request(Method::POST, "/v1/events")
        .header("Idempotency-Key", "key-one")
        .json(&json!({"application": "app_test", "type": "a", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(alone.status(), 409);
    // event-three itself was not accepted: with a fresh key it is.
    let fresh = send("key-four", "event-three").await.unwrap();
    assert_eq!(fresh.status(), 202);
    assert!(fresh.headers().get("idempotent-replayed").is_none());
    // A key first sent with an id accepted before names that event too.
    let replayed = send("key-five", "event-three").await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let reused = send("key-five", "event-six").await.unwrap();
    assert_eq!(reused.status(), 409);

    // Ingest is still healthy after all of it.
    let health = http
        .get(format!("{}/healthz", stack.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_errors_are_precise() {
    let stack = Stack::start(StackOptions::new("endpoint-errors").dispatchers(0)).await;
    let json_ct = Some("application/json");
    let create = |body: Value| {
        call(
            &stack,
            Method::POST,
            "/v1/applications/app_test/endpoints",
            json_ct,
            body.to_string().into_bytes(),
        )
    };

    assert_refusal(
        create(json!({"event_types": ["*"]})).await,
        400,
        "invalid_request",
        "missing field `url`",
    );
    assert_refusal(
        create(json!({"url": "ftp://example.com", "event_types": ["*"]})).await,
        400,
        "invalid_field",
        "`url` must use http or https",
    );
    assert_refusal(
        create(json!({"url": "not a url", "event_types": ["*"]})).await,
        400,
        "invalid_field",
        "`url` is not an absolute URL",
    );
    assert_refusal(
        create(json!({"url": "https://example.com", "event_types": []})).await,
        400,
        "invalid_field",
        "`event_types` must list at least one",
    );
    assert_refusal(
        create(json!({"url": "https://example.com", "event_types": ["order*"]})).await,
        400,
        "invalid_field",
        "\"order*\"",
    );
    assert_refusal(
        create(
            json!({"url": "https://example.com", "event_types": ["*"], "secret": "whsec_short"}),
        )
        .await,
        400,
        "invalid_field",
        "`secret`",
    );
    assert_refusal(
        create(json!({"url": "https://example.com", "event_types": ["*"], "headers": {"webhook-id": "x"}})).await,
        400,
        "invalid_field",
        "`headers` may not set",
    );
    assert_refusal(
        create(json!({"url": "https://example.com", "event_types": ["*"], "colour": "red"})).await,
        400,
        "invalid_request",
        "unknown field `colour`",
    );

    // A valid one, with a caller-chosen secret, then the not-found cases.
    let secret = herald_core::signing::Secret::generate().expose();
    let created = stack
        .create_endpoint(json!({"url": "https://example.com/hook", "event_types": ["order.*"], "secret": secret, "description": "orders"}))
        .await;
    assert_eq!(created["secret"], secret.as_str());
    let id = created["id"].as_str().unwrap();
    let fetched: Value = stack
        .request(
            Method::GET,
            &format!("/v1/applications/app_test/endpoints/{id}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["description"], "orders");
    assert!(
        fetched.get("secret").is_none(),
        "GET must not reveal the secret: {fetched}"
    );
    let revealed: Value = stack
        .request(
            Method::GET,
            &format!("/v1/applications/app_test/endpoints/{id}/secret"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revealed["secret"], secret.as_str());
    let listed: Value = stack
        .request(Method::GET, "/v1/applications/app_test/endpoints")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    // Paging: three endpoints, two per page.
    for n in 0..2 {
        stack
            .create_endpoint(
                json!({"url": format!("https://example.com/{n}"), "event_types": ["*"]}),
            )
            .await;
    }
    let (_, first) = stack
        .get_json("/v1/applications/app_test/endpoints?limit=2")
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["data"][0]["id"], id);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = stack
        .get_json(&format!(
            "/v1/applications/app_test/endpoints?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    let (status, bad) = stack
        .get_json("/v1/applications/app_test/endpoints?limit=0")
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`limit`")
    );
    let (status, _) = stack.get_json("/v1/dlq?cursor=abc").await;
    assert_eq!(status, 400);

    for (method, path) in [
        (
            Method::GET,
            "/v1/applications/app_test/endpoints/ep_missing".to_owned(),
        ),
        (
            Method::DELETE,
            "/v1/applications/app_test/endpoints/ep_missing".to_owned(),
        ),
        (
            Method::GET,
            "/v1/applications/app_test/endpoints/ep_missing/secret".to_owned(),
        ),
    ] {
        assert_refusal(
            call(&stack, method, &path, None, Vec::new()).await,
            404,
            "not_found",
            "ep_missing",
        );
    }
    assert_refusal(
        call(
            &stack,
            Method::PATCH,
            "/v1/applications/app_test/endpoints/ep_missing",
            json_ct,
            b"{\"disabled\": true}".to_vec(),
        )
        .await,
        404,
        "not_found",
        "ep_missing",
    );
    assert_refusal(
        call(
            &stack,
            Method::PATCH,
            &format!("/v1/applications/app_test/endpoints/{id}"),
            json_ct,
            b"{\"url\": \"mailto:x\"}".to_vec(),
        )
        .await,
        400,
        "invalid_field",
        "`url`",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_cannot_take_is_refused_with_503() {
    // Nothing listens on this port: the broker is away.
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let stack = Stack::start(
        StackOptions::new("kafka-down")
            .ingest_only()
            .env("HERALD_KAFKA_BROKERS", &dead_broker)
            .env("HERALD_KAFKA_PRODUCE_TIMEOUT", "2s"),
    )
    .await;
    // Applications live in Redis, which is up.
    stack.create_application(herald_tests::APP).await;
    let (status, body) = stack
        .post_event(&json!({"application": "app_test", "id": "lost_1", "type": "a", "payload": 1}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "kafka_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not accepted")
    );
    let ready = reqwest::get(format!("{}/readyz", stack.ingest_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");
    assert_ne!(ready["checks"]["kafka"], "ok");
    // A refused id is not remembered: it can be sent again later.
    let (status, _) = stack
        .post_event(&json!({"application": "app_test", "id": "lost_1", "type": "a", "payload": 1}))
        .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_redis_is_refused_with_503() {
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let stack = Stack::start(
        StackOptions::new("redis-down")
            .ingest_only()
            .env("HERALD_REDIS_URL", &dead_redis),
    )
    .await;
    let (status, body) = stack
        .post_event(&json!({"application": "app_test", "type": "a", "payload": 1}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "redis_unavailable");
    let (status, body) = {
        let response = stack
            .request(Method::GET, "/v1/applications/app_test/endpoints")
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_stops_the_service_with_the_key_named() {
    let output = std::process::Command::new(herald_tests::bin_path("herald-ingest"))
        .env_clear()
        .env("HERALD_API_KEYS", "a-perfectly-long-api-key")
        .env("HERALD_MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HERALD_MAX_BODY_BYTES=\"lots\" is invalid"),
        "{stderr}"
    );

    let output = std::process::Command::new(herald_tests::bin_path("herald-dispatcher"))
        .env_clear()
        .env("HERALD_HTTP_TIMEOUT", "15")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HERALD_HTTP_TIMEOUT") && stderr.contains("no unit"),
        "{stderr}"
    );

    let output = std::process::Command::new(herald_tests::bin_path("herald-fanout"))
        .env_clear()
        .env("HERALD_WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HERALD_WORKER_THREADS") && stderr.contains("between 1 and 256"),
        "{stderr}"
    );

    let output = std::process::Command::new(herald_tests::bin_path("herald-ingest"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HERALD_API_KEYS"));
}
