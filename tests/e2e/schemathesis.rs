//! Schemathesis (from PyPI, installed by scripts/test) against the live
//! ingest of a test stack: every operation of `/openapi.json`, with
//! examples, the coverage and fuzzing phases, and stateful sequences that
//! follow the document's links (an application created is then read,
//! patched, given endpoints and tokens, and deleted; an endpoint created is
//! read, patched, rotated and deleted).
//!
//! With the admin key, every Schemathesis check must pass: no 5xx, every
//! response as the document says (status, content type, body and headers),
//! a request the schema calls valid is accepted and one it calls invalid is
//! refused. Without a key and with a wrong one, every `/v1` request answers
//! 401. Each run's summary is written to the test's output, and its HAR
//! (every request and answer) to `target/tmp/schemathesis/`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::{Value, json};

/// Examples per operation and phase with the admin key: enough to reach
/// every operation's success answers through the fixtures, and under a
/// minute on two cores.
const EXAMPLES_WITH_KEY: u32 = 30;
/// Examples per operation without a valid key: every answer is a 401 at
/// once, so fewer find the same.
const EXAMPLES_WITHOUT_KEY: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_live_api_as_its_document_says() {
    let accepting = Receiver::start(Behaviour::Accept).await;
    let failing = Receiver::start(Behaviour::AlwaysFail(500)).await;
    // Fuzzed endpoint URLs name any host; the outbound policy is the
    // operator's, and would refuse most of them with a 400 the document
    // cannot foresee.
    // And the failing fixture endpoint's breaker stays closed, so that its
    // events are dead-lettered after the retry schedule, not put off.
    let mut stack = Stack::start(
        StackOptions::new("schemathesis")
            .env("HERALD_ALLOWED_DESTINATION_CIDRS", "0.0.0.0/0,::/0")
            .env("HERALD_BREAKER_CONSECUTIVE_FAILURES", "1000")
            .env("HERALD_BREAKER_MIN_ATTEMPTS", "100000"),
    )
    .await;
    let fixtures = Fixtures::create(&stack, &accepting, &failing).await;
    // With the fixtures' attempts made, nothing is delivered any more: the
    // fuzzed endpoints name any host (a cloud's metadata address, another
    // service's port on this machine), and their webhooks would go there.
    for dispatcher in stack.dispatchers.drain(..) {
        dispatcher.terminate(Duration::from_secs(10));
    }
    // Not beside the services' logs: the HARs hold the requests' keys and
    // secrets, which scripts/test looks for in those logs.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("schemathesis")
        .join(stack.logs().file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, fixtures.config()).unwrap();
    let schemathesis = Schemathesis {
        schema_url: format!("{}/openapi.json", stack.ingest_url),
        config,
        dir,
    };
    let document: Value = reqwest::get(format!("{}/openapi.json", stack.ingest_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = Operations::of(&document);

    // The admin key: every check passes, and every operation answered
    // success at least once (the run reached past its validation).
    let with_key = schemathesis
        .run(
            "admin-key",
            Some(&format!("Bearer {}", stack.api_key)),
            "examples,coverage,fuzzing,stateful",
            EXAMPLES_WITH_KEY,
        )
        .await;
    assert!(
        with_key.passed,
        "Schemathesis found gaps with the admin key:\n{}",
        with_key.output
    );
    let answers = with_key.answers(&operations);
    let server_errors: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status >= 500)
        .collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    // Every operation answered each documented status a fuzzer can reach
    // from outside: success, 401 (Schemathesis also tries without the
    // key), 404, and 400 where the request has a body or query to get
    // wrong. The rest are listed: 403 needs a narrower key, 409 a race,
    // 413 a body larger than the fuzzer sends, 429 a rate limit, 5xx a
    // fault.
    let mut unreached = Vec::new();
    for operation in &operations.routes {
        let reached: BTreeSet<u16> = answers
            .iter()
            .filter(|(name, _, _)| name.as_deref() == Some(&operation.id))
            .map(|(_, status, _)| *status)
            .collect();
        for status in &operation.documented {
            let reachable = (200..300).contains(status)
                || [401, 404].contains(status)
                || (*status == 400 && operation.takes_input);
            if reachable {
                assert!(
                    reached.contains(status),
                    "{} never answered {status} (answers {reached:?})",
                    operation.id
                );
            } else if !reached.contains(status) {
                unreached.push(format!("{} {status}", operation.id));
            }
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "documented statuses not reached (403 needs a narrower key, 409 a race, 413 a larger body, 429 a rate limit, 400 of a path-only route a path that is not UTF-8, 5xx a fault): {}",
        unreached.join(", ")
    );
    assert!(
        with_key.output.contains("Stateful") && with_key.output.contains("API Links"),
        "no stateful phase ran:\n{}",
        with_key.output
    );

    // No key, then a wrong one: nothing but 401 from any `/v1` operation.
    for (name, authorization) in [
        ("no-key", None),
        ("wrong-key", Some("Bearer wrong-key-0123456789abcdef")),
    ] {
        let without = schemathesis
            .run(
                name,
                authorization,
                "examples,coverage,fuzzing",
                EXAMPLES_WITHOUT_KEY,
            )
            .await;
        assert!(
            without.passed,
            "Schemathesis found gaps with {name}:\n{}",
            without.output
        );
        let answers = without.answers(&operations);
        let v1: Vec<_> = answers
            .iter()
            .filter(|(_, _, path)| path.starts_with("/v1/"))
            .collect();
        assert!(v1.len() > 100, "{name}: only {} /v1 requests", v1.len());
        let not_401: Vec<_> = v1.iter().filter(|(_, status, _)| *status != 401).collect();
        assert!(
            not_401.is_empty(),
            "{name}: answers other than 401: {not_401:?}"
        );
    }
}

/// What Schemathesis is given to reach past "not found": a real
/// application with endpoints, an event, tokens and dead letters, and
/// spares for the operations that delete.
struct Fixtures {
    endpoints: Vec<String>,
    spare_applications: Vec<String>,
    spare_endpoints: Vec<String>,
    tokens: Vec<String>,
    dead_letters: Vec<String>,
}

/// The application the fixtures live in.
const APPLICATION: &str = "shop";
/// The event id the fixtures sent.
const EVENT: &str = "order_1";

impl Fixtures {
    async fn create(stack: &Stack, accepting: &Receiver, failing: &Receiver) -> Fixtures {
        let create = |path: String, body: Value| async move {
            let (status, answer) = stack.post_json(&path, &body).await;
            assert_eq!(status, 201, "{path}: {answer}");
            answer["id"].as_str().unwrap().to_owned()
        };
        create(
            "/v1/applications".into(),
            json!({"id": APPLICATION, "name": "Shop"}),
        )
        .await;
        let endpoints_path = format!("/v1/applications/{APPLICATION}/endpoints");
        let mut endpoints = Vec::new();
        for receiver in [accepting, failing] {
            endpoints.push(
                create(
                    endpoints_path.clone(),
                    json!({"url": receiver.url(), "event_types": ["*"]}),
                )
                .await,
            );
        }
        let mut spare_applications = Vec::new();
        let mut spare_endpoints = Vec::new();
        for n in 0..4 {
            spare_applications.push(
                create(
                    "/v1/applications".into(),
                    json!({"id": format!("spare-{n}"), "name": "Spare"}),
                )
                .await,
            );
            spare_endpoints.push(
                create(
                    endpoints_path.clone(),
                    json!({"url": accepting.url_at(&format!("spare-{n}")), "event_types": ["none"]}),
                )
                .await,
            );
        }
        stack.settle_endpoints().await;
        let mut tokens = Vec::new();
        for _ in 0..3 {
            tokens.push(
                create(
                    format!("/v1/applications/{APPLICATION}/tokens"),
                    json!({"scope": "portal"}),
                )
                .await,
            );
        }
        // Events the failing endpoint turns into dead letters (four
        // attempts over the tests' 1 s, 2 s, 4 s schedule).
        for n in 1..=3 {
            let (status, answer) = stack
                .post_json(
                    "/v1/events",
                    &json!({"application": APPLICATION, "id": format!("order_{n}"), "type": "order.paid", "payload": {"n": n}}),
                )
                .await;
            assert_eq!(status, 202, "{answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let dead_letters = loop {
            let (_, page) = stack
                .get_json(&format!("/v1/dlq?endpoint_id={}", endpoints[1]))
                .await;
            let ids: Vec<String> = page["data"]
                .as_array()
                .map(|letters| {
                    letters
                        .iter()
                        .map(|l| l["id"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if ids.len() == 3 {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "the failing endpoint's events were not dead-lettered: {page}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        Fixtures {
            endpoints,
            spare_applications,
            spare_endpoints,
            tokens,
            dead_letters,
        }
    }

    /// `schemathesis.toml`: the fixtures as dictionaries that parameters
    /// draw from (often, not always: the rest stays fuzzed).
    fn config(&self) -> String {
        let list = |values: &[String]| serde_json::to_string(values).unwrap();
        let mut ids = self.endpoints.clone();
        ids.push(EVENT.to_owned());
        format!(
            r#"[dictionaries.applications]
values = ["{APPLICATION}"]
[dictionaries.ids]
values = {ids}
[dictionaries.tokens]
values = {tokens}
[dictionaries.dead_letters]
values = {dead_letters}
[dictionaries.spare_applications]
values = {spare_applications}
[dictionaries.spare_endpoints]
values = {spare_endpoints}

[parameters]
"path.app" = {{ dictionary = "applications", probability = 0.7 }}
"path.id" = {{ dictionary = "ids", probability = 0.7 }}
"path.token" = {{ dictionary = "tokens", probability = 0.7 }}
"query.application" = {{ dictionary = "applications", probability = 0.5 }}
"query.endpoint_id" = {{ dictionary = "ids", probability = 0.5 }}
"body.application" = {{ dictionary = "applications", probability = 0.6 }}
"body.endpoint_id" = {{ dictionary = "ids", probability = 0.5 }}
"body.ids[*]" = {{ dictionary = "dead_letters", probability = 0.7 }}

# What deletes takes the spares, so that the rest keeps its fixtures.
[[operations]]
include-operation-id = "delete_application"
parameters = {{ "path.app" = {{ dictionary = "spare_applications", probability = 0.7 }} }}

[[operations]]
include-operation-id = "delete_endpoint"
parameters = {{ "path.id" = {{ dictionary = "spare_endpoints", probability = 0.7 }} }}

[phases.stateful]
max-steps = 12
"#,
            ids = list(&ids),
            tokens = list(&self.tokens),
            dead_letters = list(&self.dead_letters),
            spare_applications = list(&self.spare_applications),
            spare_endpoints = list(&self.spare_endpoints),
        )
    }
}

/// One Schemathesis run.
struct Run {
    passed: bool,
    output: String,
    har: Value,
}

impl Run {
    /// Every answer of the run: (operation, status, path).
    fn answers(&self, operations: &Operations) -> Vec<(Option<String>, u16, String)> {
        self.har["log"]["entries"]
            .as_array()
            .expect("a HAR log")
            .iter()
            .map(|entry| {
                let method = entry["request"]["method"].as_str().unwrap();
                let url = reqwest::Url::parse(entry["request"]["url"].as_str().unwrap()).unwrap();
                let status = entry["response"]["status"].as_u64().unwrap() as u16;
                let path = url.path().to_owned();
                (operations.find(method, &path), status, path)
            })
            .collect()
    }
}

/// Schemathesis against one stack's document, with one configuration,
/// writing its reports to one directory.
struct Schemathesis {
    schema_url: String,
    config: PathBuf,
    dir: PathBuf,
}

impl Schemathesis {
    /// One run, named `name` in the output and the HAR's file name.
    async fn run(
        &self,
        name: &str,
        authorization: Option<&str>,
        phases: &str,
        examples: u32,
    ) -> Run {
        let har = self.dir.join(format!("{name}.har"));
        let mut command = tokio::process::Command::new(herald_tests::test_tool("st"));
        command
            .arg("--config-file")
            .arg(&self.config)
            .arg("--no-color")
            .arg("run")
            .arg(&self.schema_url)
            .args(["--checks", "all", "--phases", phases, "--workers", "2"])
            .args(["--max-examples", &examples.to_string()])
            .args(["--request-timeout", "10", "--max-failures", "20"])
            .args(["--report", "har", "--report-har-path"])
            .arg(&har)
            .env("SCHEMATHESIS_HOOKS", "")
            // Its cache (`.schemathesis/`) goes beside its reports.
            .current_dir(&self.dir)
            .kill_on_drop(true);
        match authorization {
            Some(value) => {
                command.args(["--header", &format!("Authorization: {value}")]);
            }
            // Not even one made up from the security schemes.
            None => {
                command.args(["--generation-with-security-parameters", "false"]);
            }
        }
        let started = Instant::now();
        let output = tokio::time::timeout(Duration::from_secs(300), command.output())
            .await
            .expect("Schemathesis finished within five minutes")
            .expect("run Schemathesis");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        // The summary belongs in the suite's output whether the test passes or
        // not; writing to the process's stderr directly is not captured by the
        // test harness, as `eprintln!` would be.
        let summary = text
            .find("=== SUMMARY ===")
            .map(|at| &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..])
            .unwrap_or(&text);
        let _ = writeln!(
            std::io::stderr(),
            "\n--- Schemathesis, {name}, {:.0} s ---\n{summary}",
            started.elapsed().as_secs_f64()
        );
        let har = std::fs::read_to_string(&har)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("no HAR from Schemathesis ({name}):\n{text}"));
        Run {
            passed: output.status.success(),
            output: text,
            har,
        }
    }
}

/// The document's operations, to tell which one a request was for.
struct Operations {
    routes: Vec<Operation>,
}

/// One operation of the document.
struct Operation {
    method: String,
    path: regex::Regex,
    id: String,
    /// The statuses it documents.
    documented: BTreeSet<u16>,
    /// Whether it has a body or query parameters to get wrong.
    takes_input: bool,
}

impl Operations {
    fn of(document: &Value) -> Operations {
        let mut routes = Vec::new();
        // `{app}` as `regex::escape` writes it.
        let parameter = regex::Regex::new(r"\\\{[a-z_]+\\\}").unwrap();
        for (path, item) in document["paths"].as_object().unwrap() {
            let pattern = regex::Regex::new(&format!(
                "^{}$",
                parameter.replace_all(&regex::escape(path), "[^/]+")
            ))
            .unwrap();
            for (method, operation) in item.as_object().unwrap() {
                let takes_query = operation["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
                routes.push(Operation {
                    method: method.to_uppercase(),
                    path: pattern.clone(),
                    id: operation["operationId"].as_str().unwrap().to_owned(),
                    documented: operation["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|status| status.parse().unwrap())
                        .collect(),
                    takes_input: takes_query || operation.get("requestBody").is_some(),
                });
            }
        }
        Operations { routes }
    }

    /// Path parameters never hold a `/`, so at most one route matches.
    fn find(&self, method: &str, path: &str) -> Option<String> {
        self.routes
            .iter()
            .find(|route| route.method == method && route.path.is_match(path))
            .map(|route| route.id.clone())
    }
}
