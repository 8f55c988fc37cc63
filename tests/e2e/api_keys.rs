//! Scoped, hashed API keys and the per-key event rate limit.

use std::time::Instant;

use herald_tests::{Stack, StackOptions, random_suffix};
use reqwest::Method;
use serde_json::{Value, json};

fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    herald_core::event::hex(&sha2::Sha256::digest(key.as_bytes()))
}

async fn call(
    stack: &Stack,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", stack.ingest_url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_what_a_key_may_do_and_each_key_has_its_own_rate() {
    let ingest_key = format!("test-key-{}", random_suffix());
    let file_admin_key = format!("test-key-{}", random_suffix());
    // A key file as a Kubernetes Secret would mount it.
    let key_file = std::env::temp_dir().join(format!("herald-keys-{}", random_suffix()));
    std::fs::write(
        &key_file,
        format!("# admins\nadmin:{}\n", sha256_hex(&file_admin_key)),
    )
    .unwrap();
    let stack = Stack::start(
        StackOptions::new("api-keys")
            .dispatchers(0)
            .env(
                "HERALD_API_KEY_HASHES",
                &format!("ingest:{}", sha256_hex(&ingest_key)),
            )
            .env("HERALD_API_KEYS_FILE", key_file.to_str().unwrap())
            .env("HERALD_INGEST_RATE_LIMIT", "1")
            .env("HERALD_INGEST_RATE_BURST", "3"),
    )
    .await;
    let _ = std::fs::remove_file(&key_file);
    let event = || json!({"application": "app_test", "type": "scoped.event", "payload": 1});

    // The ingest key sends events and nothing else.
    let started = Instant::now();
    let (status, body, _) = call(
        &stack,
        &ingest_key,
        Method::POST,
        "/v1/events",
        Some(event()),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    for (method, path, body) in [
        (Method::GET, "/v1/applications/app_test/endpoints", None),
        (
            Method::POST,
            "/v1/applications/app_test/endpoints",
            Some(json!({"url": "https://hooks.example.invalid/", "event_types": ["*"]})),
        ),
        (Method::GET, "/v1/dlq", None),
        (
            Method::GET,
            "/v1/applications/app_test/endpoints/ep_1/secret",
            None,
        ),
    ] {
        let (status, body, _) = call(&stack, &ingest_key, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`ingest` scope")
                && message.contains("`admin` scope")
                && message.contains(path.split('?').next().unwrap()),
            "{message}"
        );
    }
    // Admin keys, hashed in a file or plain, may do everything.
    for key in [&file_admin_key, &stack.api_key] {
        let (status, body, _) = call(
            &stack,
            key,
            Method::GET,
            "/v1/applications/app_test/endpoints",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // One event per second with bursts of three: the burst goes through
    // (one event is already spent), then 429 with Retry-After.
    let mut accepted = 1;
    let refusal = loop {
        let (status, body, retry_after) = call(
            &stack,
            &ingest_key,
            Method::POST,
            "/v1/events",
            Some(event()),
        )
        .await;
        match status {
            202 => accepted += 1,
            429 => break (body, retry_after),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(accepted < 50, "the rate limit never applied");
    };
    let elapsed = started.elapsed().as_secs();
    assert!(accepted >= 3, "{accepted}");
    assert!(
        accepted as u64 <= 3 + elapsed + 1,
        "{accepted} accepted in {elapsed} s"
    );
    let (body, retry_after) = refusal;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 events per second"),
        "{body}"
    );
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Another key has its own budget.
    let (status, body, _) = call(
        &stack,
        &file_admin_key,
        Method::POST,
        "/v1/events",
        Some(event()),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_configuration_stops_ingest_without_echoing_keys() {
    let run = |pairs: &[(&str, &str)]| {
        let mut command = std::process::Command::new(herald_tests::bin_path("herald-ingest"));
        command.env_clear();
        for (k, v) in pairs {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&[("HERALD_API_KEY_HASHES", "test-key-plaintext-by-mistake")]);
    assert!(
        stderr.contains("HERALD_API_KEY_HASHES") && stderr.contains("scope:sha256hex"),
        "{stderr}"
    );
    assert!(!stderr.contains("plaintext-by-mistake"), "{stderr}");
    let stderr = run(&[("HERALD_API_KEY_HASHES", "reader:00")]);
    assert!(stderr.contains("unknown scope \"reader\""), "{stderr}");
    let stderr = run(&[("HERALD_API_KEYS_FILE", "/nonexistent/herald-keys")]);
    assert!(
        stderr.contains("HERALD_API_KEYS_FILE") && stderr.contains("cannot read"),
        "{stderr}"
    );
}
