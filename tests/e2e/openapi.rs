//! The API's OpenAPI document: served by ingest to anyone, and the same as
//! the `openapi.json` committed at the repository's root.

use herald_tests::{Stack, StackOptions};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_key_and_is_the_committed_one() {
    let stack = Stack::start(StackOptions::new("openapi").dispatchers(0)).await;
    let response = reqwest::get(format!("{}/openapi.json", stack.ingest_url))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = response.json().await.expect("JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json"),
        )
        .expect("openapi.json at the repository's root"),
    )
    .expect("committed JSON");
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
    // Every operation says who may call it, and what its errors look like.
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
            assert!(
                operation["security"].is_array(),
                "{method} {path} names no security"
            );
            if path.starts_with("/v1/") {
                assert_eq!(
                    operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} documents no 401"
                );
            }
        }
    }
    // The reference page: served without a key, every operation on it,
    // and a policy that lets it load nothing from anywhere.
    let docs = reqwest::get(format!("{}/docs", stack.ingest_url))
        .await
        .expect("GET /docs");
    assert_eq!(docs.status(), 200);
    let policy = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = docs.text().await.unwrap();
    assert!(!page.contains("<script"), "the page needs no script");
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                page.contains(&format!(
                    "<code class=\"method\">{}</code> <code>{path}</code>",
                    method.to_uppercase()
                )),
                "{method} {path} is not on /docs"
            );
        }
    }

    // The documented routes answer: an unknown one is a 404, a documented
    // one without a key a 401.
    let unkeyed = reqwest::get(format!("{}/v1/applications", stack.ingest_url))
        .await
        .unwrap();
    assert_eq!(unkeyed.status(), 401);

    // A query string or a path that cannot be read is answered like every
    // other bad request, in JSON (the fuzzer found plain-text answers).
    let http = reqwest::Client::new();
    for (path, code) in [
        ("/v1/applications?limit=abc", "invalid_query"),
        ("/v1/applications/%FF/endpoints", "invalid_path"),
    ] {
        let response = http
            .get(format!("{}{path}", stack.ingest_url))
            .bearer_auth(&stack.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
}

/// The committed document is valid OpenAPI 3.1 by an independent
/// validator (`openapi-spec-validator`, installed by scripts/test).
#[test]
fn the_committed_document_passes_an_independent_validator() {
    let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    let output = std::process::Command::new(herald_tests::test_tool("openapi-spec-validator"))
        .arg(&document)
        .output()
        .expect("run openapi-spec-validator");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused openapi.json:\n{said}"
    );
    assert!(said.contains(": OK"), "{said}");
}
