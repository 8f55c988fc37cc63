//! Hostile input against a running herald-ingest: a table of requests that
//! must each be refused with a documented 4xx and a message naming the
//! problem. None may answer 5xx, and ingest must stay up and serving.
//!
//! Loopback is not allowed here (unlike in the other tests), so the SSRF
//! cases include host names that resolve to 127.0.0.1.

use herald_tests::{Stack, StackOptions};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

const MAX_BODY: usize = 65_536;

/// One hostile request and the refusal it must get.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    method: Method,
    path: String,
    /// `None` sends no Content-Type.
    content_type: Option<&'static str>,
    /// Extra headers, as raw bytes.
    headers: Vec<(&'static str, Vec<u8>)>,
    /// `None` sends the stack's key; `Some(value)` sends that Authorization
    /// header, `Some(empty)` none at all.
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Every one must appear in the message.
    needles: Vec<String>,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: &str, body: impl Into<Vec<u8>>) -> Self {
        Case {
            name: name.into(),
            method,
            path: path.to_owned(),
            content_type: Some("application/json"),
            headers: Vec::new(),
            authorization: None,
            body: body.into(),
            status: 400,
            code: "",
            needles: Vec::new(),
        }
    }

    fn event(name: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new(name, Method::POST, "/v1/events", body)
    }

    fn endpoint(name: impl Into<String>, body: Value) -> Self {
        Self::new(
            name,
            Method::POST,
            "/v1/applications/app_test/endpoints",
            body.to_string(),
        )
    }

    fn expect(mut self, status: u16, code: &'static str, needles: &[&str]) -> Self {
        self.status = status;
        self.code = code;
        self.needles = needles.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn authorization(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.authorization = Some(value.into());
        self
    }
}

/// `{"type": "order.created", "payload": 1}` with `field` set to `value`.
fn event_with(field: &str, value: Value) -> String {
    let mut event = json!({"application": "app_test", "type": "order.created", "payload": 1});
    event[field] = value;
    event.to_string()
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn event_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Malformed and truncated JSON.
    for (name, body) in [
        ("empty body", ""),
        ("only whitespace", "   \n "),
        ("lone open brace", "{"),
        ("lone close brace", "}"),
        ("truncated after key", r#"{"application":"app_test","type""#),
        (
            "truncated after colon",
            r#"{"application":"app_test","type":"#,
        ),
        (
            "truncated string",
            r#"{"application":"app_test","type":"order.cr"#,
        ),
        (
            "truncated before payload",
            r#"{"application":"app_test","type":"a","payload":"#,
        ),
        (
            "truncated object payload",
            r#"{"application":"app_test","type":"a","payload":{"#,
        ),
        (
            "truncated array payload",
            r#"{"application":"app_test","type":"a","payload":[1,2"#,
        ),
        (
            "unterminated payload string",
            r#"{"application":"app_test","type":"a","payload":"abc}"#,
        ),
        (
            "trailing comma",
            r#"{"application":"app_test","type":"a","payload":1,}"#,
        ),
        ("single quotes", "{'type':'a','payload':1}"),
        ("unquoted keys", "{type:\"a\",payload:1}"),
        ("truncated literal", "nul"),
        (
            "extra closing brace",
            r#"{"application":"app_test","type":"a","payload":1}}"#,
        ),
        (
            "trailing garbage",
            r#"{"application":"app_test","type":"a","payload":1} x"#,
        ),
        (
            "two documents",
            r#"{"application":"app_test","type":"a","payload":1} {"type":"b","payload":2}"#,
        ),
        (
            "NaN payload",
            r#"{"application":"app_test","type":"a","payload":NaN}"#,
        ),
        (
            "Infinity payload",
            r#"{"application":"app_test","type":"a","payload":Infinity}"#,
        ),
        (
            "leading zero number",
            r#"{"application":"app_test","type":"a","payload":01}"#,
        ),
        (
            "raw control character",
            "{\"type\":\"a\",\"payload\":\"a\u{1}b\"}",
        ),
        ("comment", r#"/* hi */ {"type":"a","payload":1}"#),
        ("byte order mark", "\u{feff}{\"type\":\"a\",\"payload\":1}"),
        (
            "missing colon",
            r#"{"application":"app_test","type" "a","payload":1}"#,
        ),
        (
            "bad escape",
            r#"{"application":"app_test","type":"a\q","payload":1}"#,
        ),
    ] {
        cases.push(Case::event(name, body).expect(400, "malformed_json", &["not valid JSON"]));
    }
    // Not an event object.
    for (name, body, kind) in [
        ("array", "[]", "an array"),
        (
            "array of events",
            r#"[{"type":"a","payload":1}]"#,
            "an array",
        ),
        ("string", r#""order.created""#, "a string"),
        ("number", "42", "a number"),
        ("boolean", "true", "a boolean"),
        ("null", "null", "null"),
    ] {
        cases.push(Case::event(name, body).expect(400, "invalid_event", &["JSON object", kind]));
    }
    for (name, body, needle) in [
        (
            "unknown field",
            event_with("paylod", json!(1)),
            "unknown field `paylod`",
        ),
        (
            "field in wrong case",
            event_with("Type", json!("a")),
            "unknown field `Type`",
        ),
        (
            "data instead of payload",
            r#"{"application":"app_test","type":"a","data":1}"#.to_owned(),
            "unknown field `data`",
        ),
        (
            "duplicate type",
            r#"{"application":"app_test","type":"a","type":"b","payload":1}"#.to_owned(),
            "duplicate field `type`",
        ),
        (
            "duplicate payload",
            r#"{"application":"app_test","type":"a","payload":1,"payload":2}"#.to_owned(),
            "duplicate field `payload`",
        ),
    ] {
        cases.push(Case::event(name, body).expect(400, "invalid_event", &[needle]));
    }
    cases.push(
        Case::event("missing type", r#"{"application":"app_test","payload":1}"#).expect(
            400,
            "missing_field",
            &["`type`", "required"],
        ),
    );
    cases.push(
        Case::event(
            "missing payload",
            r#"{"application":"app_test","type":"a"}"#,
        )
        .expect(400, "missing_field", &["`payload`", "required"]),
    );
    cases.push(Case::event("empty object", "{}").expect(
        400,
        "missing_field",
        &["`application`", "required"],
    ));
    // Wrong types.
    for (field, value, kind) in [
        ("type", json!(7), "a number"),
        ("type", json!(1.5), "a number"),
        ("type", json!(true), "a boolean"),
        ("type", Value::Null, "null"),
        ("type", json!(["a"]), "an array"),
        ("type", json!({"name": "a"}), "an object"),
        ("id", json!(5), "a number"),
        ("id", json!(true), "a boolean"),
        ("id", Value::Null, "null"),
        ("id", json!(["a"]), "an array"),
        ("id", json!({}), "an object"),
        ("timestamp", json!(1_767_323_045), "a number"),
        ("timestamp", Value::Null, "null"),
    ] {
        cases.push(
            Case::event(format!("{field} as {kind}"), event_with(field, value)).expect(
                400,
                "invalid_field",
                &[&format!("`{field}` must be a string, not {kind}")],
            ),
        );
    }
    for stamp in [
        "noon",
        "2026-13-01T00:00:00Z",
        "2026-01-02",
        "",
        "2026-01-02 03:04:05",
    ] {
        cases.push(
            Case::event(
                format!("timestamp {stamp:?}"),
                event_with("timestamp", json!(stamp)),
            )
            .expect(400, "invalid_field", &["`timestamp`", "RFC 3339"]),
        );
    }
    // Bad types.
    let long_type = "t".repeat(129);
    for (value, needle) in [
        ("", "must not be empty"),
        (" ", "contains ' '"),
        ("order created", "contains ' '"),
        ("order/created", "contains '/'"),
        ("../../etc/passwd", "contains '/'"),
        ("order.créé", "contains 'é'"),
        ("a\nb", "contains '\\n'"),
        ("a\u{0}b", "contains '\\0'"),
        ("<script>", "contains '<'"),
        ("a:b", "contains ':'"),
        ("order.*", "contains '*'"),
        ("a,b", "contains ','"),
        ("🎉", "contains '🎉'"),
        (long_type.as_str(), "the limit is 128"),
    ] {
        cases.push(
            Case::event(
                format!("type {value:.20?}"),
                event_with("type", json!(value)),
            )
            .expect(400, "invalid_field", &["`type`", needle]),
        );
    }
    // Bad ids.
    let long_id = "i".repeat(129);
    for (value, needle) in [
        ("", "must not be empty"),
        (".", "contains '.'"),
        ("evt.1", "contains '.'"),
        ("a b", "contains ' '"),
        ("a\tb", "contains '\\t'"),
        ("a\nb", "contains '\\n'"),
        ("a\u{0}", "contains '\\0'"),
        ("a\u{7f}", "contains '\\u{7f}'"),
        ("é", "contains 'é'"),
        ("🎉", "contains '🎉'"),
        (long_id.as_str(), "the limit is 128"),
    ] {
        cases.push(
            Case::event(format!("id {value:.20?}"), event_with("id", json!(value))).expect(
                400,
                "invalid_field",
                &["`id`", needle],
            ),
        );
    }
    // Bad UTF-8 and broken escapes.
    for (name, body) in [
        (
            "invalid byte in type",
            b"{\"type\":\"a\xff\",\"payload\":1}".to_vec(),
        ),
        (
            "invalid byte in payload",
            b"{\"type\":\"a\",\"payload\":\"\xc3\x28\"}".to_vec(),
        ),
        (
            "overlong encoding",
            b"{\"type\":\"a\",\"payload\":\"\xc0\xaf\"}".to_vec(),
        ),
        (
            "encoded surrogate",
            b"{\"type\":\"a\",\"payload\":\"\xed\xa0\x80\"}".to_vec(),
        ),
        (
            "stray continuation byte",
            b"{\"type\":\"a\",\"payload\":1\x80}".to_vec(),
        ),
        (
            "latin-1 body",
            b"{\"type\":\"caf\xe9\",\"payload\":1}".to_vec(),
        ),
    ] {
        cases.push(Case::event(name, body).expect(400, "malformed_json", &["not valid JSON"]));
    }
    cases.push(
        Case::event(
            "lone surrogate in type",
            r#"{"application":"app_test","type":"\ud800","payload":1}"#,
        )
        .expect(400, "invalid_field", &["`type` is not a valid string"]),
    );
    cases.push(
        Case::event(
            "lone surrogate in id",
            r#"{"application":"app_test","id":"\udfff","type":"a","payload":1}"#,
        )
        .expect(400, "invalid_field", &["`id` is not a valid string"]),
    );
    // Huge and deep bodies.
    let huge = event_with("payload", json!("x".repeat(MAX_BODY)));
    cases.push(Case::event("body over the limit", huge).expect(
        413,
        "body_too_large",
        &["65536 bytes"],
    ));
    for depth in [65, 1_000, 30_000] {
        cases.push(
            Case::event(
                format!("payload nested {depth} deep"),
                format!(r#"{{"type":"a","payload":{}}}"#, nested(depth)),
            )
            .expect(400, "nesting_too_deep", &["64 levels"]),
        );
    }
    cases.push(
        Case::event("objects nested 100 deep", {
            let mut body = String::from(r#"{"application":"app_test","type":"a","payload":"#);
            body.push_str(&r#"{"a":"#.repeat(100));
            body.push('1');
            body.push_str(&"}".repeat(101));
            body
        })
        .expect(400, "nesting_too_deep", &["64 levels"]),
    );
    cases.push(
        Case::event("unclosed nesting 70 deep", "[".repeat(70)).expect(
            400,
            "nesting_too_deep",
            &["64 levels"],
        ),
    );
    // Content types.
    let ok = r#"{"application":"app_test","type":"a","payload":1}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/xml"),
        Some("application/jsonp"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        cases.push(
            Case::event(format!("content type {content_type:?}"), ok)
                .content_type(content_type)
                .expect(
                    415,
                    "unsupported_media_type",
                    &["Content-Type: application/json"],
                ),
        );
    }
    // Idempotency-Key header.
    for (value, needle) in [
        (b"a.b".to_vec(), "contains '.'"),
        (b"".to_vec(), "must not be empty"),
        (vec![b'k'; 129], "the limit is 128"),
        (b"caf\xe9".to_vec(), "printable ASCII"),
        (b"\xff\xfe".to_vec(), "printable ASCII"),
    ] {
        cases.push(
            Case::event(
                format!("Idempotency-Key {:?}", String::from_utf8_lossy(&value)),
                ok,
            )
            .header("idempotency-key", value)
            .expect(400, "invalid_field", &["`Idempotency-Key`", needle]),
        );
    }
    // Authentication.
    for (name, value, needle) in [
        ("no Authorization", Vec::new(), "missing Authorization"),
        (
            "Basic scheme",
            b"Basic dXNlcjpwdw==".to_vec(),
            "`Bearer <api key>`",
        ),
        (
            "lowercase bearer",
            b"bearer whatever-key".to_vec(),
            "`Bearer <api key>`",
        ),
        (
            "Bearer without key",
            b"Bearer".to_vec(),
            "`Bearer <api key>`",
        ),
        (
            "wrong key",
            b"Bearer not-the-key-at-all-0000".to_vec(),
            "not valid",
        ),
        (
            "non-ASCII key",
            b"Bearer cl\xe9".to_vec(),
            "`Bearer <api key>`",
        ),
    ] {
        cases.push(Case::event(name, ok).authorization(value).expect(
            401,
            "unauthorized",
            &[needle],
        ));
    }
    cases
}

fn endpoint_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let with_url = |url: &str| json!({"url": url, "event_types": ["*"]});
    // SSRF: every range Herald refuses, in many spellings.
    for (url, needle) in [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("https://127.0.0.1/", "loopback"),
        ("http://127.255.255.254/", "loopback"),
        ("http://user:pw@127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::1]:9000/x", "loopback"),
        ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "stands for 127.0.0.1"),
        ("http://[::ffff:7f00:1]/", "stands for 127.0.0.1"),
        ("http://[::127.0.0.1]/", "stands for 127.0.0.1"),
        ("http://[64:ff9b::127.0.0.1]/", "stands for 127.0.0.1"),
        ("http://[2002:7f00:1::]/", "stands for 127.0.0.1"),
        (
            "http://localhost/",
            "localhost resolves to a refused address",
        ),
        ("http://localhost:8080/hook", "loopback"),
        ("http://LOCALHOST/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://10.255.255.255/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://172.31.255.254/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://192.168.1.1:8443/admin", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[::ffff:192.168.1.1]/", "private"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://[fd00::1]/", "unique-local"),
        ("http://[fdff:ffff::1]/", "unique-local"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.169.254/computeMetadata/v1/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "metadata"),
        ("http://169.254.0.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[febf::1]/", "link-local"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://100.127.255.254/", "carrier-grade NAT"),
        ("http://[::ffff:100.64.0.1]/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://239.255.255.250:1900/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[ff05::2]/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://0.1.2.3/", "this network"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.1/", "documentation"),
        ("http://[2001:db8::1]/", "documentation"),
        ("http://[fec0::1]/", "site-local"),
    ] {
        cases.push(Case::endpoint(format!("SSRF {url}"), with_url(url)).expect(
            400,
            "destination_not_allowed",
            &["field `url` is not allowed", needle],
        ));
    }
    // The same addresses spelled as some parsers read them (octal, hex, a
    // bare integer, a shortened form, a trailing dot): refused before any
    // parser reads them, since parsers disagree on what they mean.
    for url in [
        "http://127.1/",
        "http://127.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://0x7F.0x00.0x00.0x01/",
        "http://127.0.0.1./",
        "http://012.0.0.1/",
        "http://167772161/",
        "http://0xc0.0xa8.1.1/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://0251.0376.0251.0376/",
        "http://0/",
    ] {
        cases.push(
            Case::endpoint(format!("SSRF spelled oddly {url}"), with_url(url)).expect(
                400,
                "invalid_field",
                &["field `url`", "four decimal numbers"],
            ),
        );
    }
    // Other bad URLs.
    for (url, needle) in [
        ("ftp://example.com/", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("javascript:alert(1)", "must use http or https"),
        ("gopher://example.com:70/", "must use http or https"),
        ("not a url", "is not an absolute URL"),
        ("/relative/path", "is not an absolute URL"),
        ("http://", "is not an absolute URL"),
        ("", "is not an absolute URL"),
        ("http://exa mple.com/", "is not an absolute URL"),
    ] {
        cases.push(
            Case::endpoint(format!("url {url:?}"), with_url(url)).expect(
                400,
                "invalid_field",
                &["`url`", needle],
            ),
        );
    }
    let long_url = format!("https://example.com/{}", "a".repeat(2040));
    cases.push(
        Case::endpoint("url over 2048 characters", with_url(&long_url)).expect(
            400,
            "invalid_field",
            &["`url`", "the limit is 2048"],
        ),
    );
    cases.push(
        Case::endpoint("url as number", json!({"url": 5, "event_types": ["*"]})).expect(
            400,
            "invalid_request",
            &["invalid type"],
        ),
    );
    cases.push(
        Case::endpoint("missing url", json!({"event_types": ["*"]})).expect(
            400,
            "invalid_request",
            &["missing field `url`"],
        ),
    );
    // Subscriptions.
    let base = |extra: Value| {
        let mut body = json!({"url": "https://example.com/hook", "event_types": ["*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (types, needle) in [
        (json!([]), "at least one"),
        (json!([""]), "must not be empty"),
        (json!(["a b"]), "contains ' '"),
        (json!(["order*"]), "\"order*\""),
        (json!(["*.*"]), "\"*.*\""),
        (json!([".*"]), "\".*\""),
        (
            json!((0..257).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            "at most 256",
        ),
    ] {
        cases.push(
            Case::endpoint(
                format!("event_types {types:.30}"),
                base(json!({"event_types": types})),
            )
            .expect(400, "invalid_field", &["`event_types`", needle]),
        );
    }
    cases.push(
        Case::endpoint("event_types as string", base(json!({"event_types": "*"}))).expect(
            400,
            "invalid_request",
            &["invalid type"],
        ),
    );
    // Header smuggling and overrides.
    for (name, value, needle) in [
        ("webhook-id", "x", "may not set"),
        ("Webhook-Signature", "v1,forged", "may not set"),
        ("WEBHOOK-TIMESTAMP", "1", "may not set"),
        ("Content-Type", "text/plain", "may not set"),
        ("content-length", "0", "may not set"),
        ("Host", "internal.example", "may not set"),
        ("Transfer-Encoding", "chunked", "may not set"),
        ("Connection", "upgrade", "may not set"),
        ("Upgrade", "websocket", "may not set"),
        ("TE", "trailers", "may not set"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "may not set",
        ),
        ("Proxy-Authorization", "Basic eDp5", "may not set"),
        ("X-Team", "a\r\nHost: evil.example", "invalid value"),
        ("X-Team", "a\nX-Injected: 1", "invalid value"),
        ("X-Team", "a\u{0}b", "invalid value"),
        ("X-Team", "caf\u{e9}", "invalid value"),
        ("Bad Name", "x", "invalid header name"),
        ("X-A:B", "x", "invalid header name"),
        ("", "x", "invalid header name"),
        ("X-A\r\nHost", "x", "invalid header name"),
    ] {
        cases.push(
            Case::endpoint(
                format!("header {name:?}: {value:?}"),
                base(json!({"headers": {name: value}})),
            )
            .expect(400, "invalid_field", &["`headers`", needle]),
        );
    }
    cases.push(
        Case::endpoint(
            "header value over 4096 characters",
            base(json!({"headers": {"X-Big": "v".repeat(4097)}})),
        )
        .expect(400, "invalid_field", &["`headers`", "longer than 4096"]),
    );
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    cases.push(
        Case::endpoint("33 headers", base(json!({"headers": many}))).expect(
            400,
            "invalid_field",
            &["`headers`", "at most 32"],
        ),
    );
    // Other fields.
    for (extra, code, needles) in [
        (
            json!({"description": "d".repeat(1025)}),
            "invalid_field",
            vec!["`description`", "at most 1024"],
        ),
        (
            json!({"secret": "short"}),
            "invalid_field",
            vec!["`secret`", "whsec_"],
        ),
        (
            json!({"secret": "whsec_"}),
            "invalid_field",
            vec!["`secret`", "24 to 64 bytes"],
        ),
        (
            json!({"secret": "whsec_!!!"}),
            "invalid_field",
            vec!["`secret`", "base64"],
        ),
        (
            json!({"rate_limit": 0}),
            "invalid_field",
            vec!["`rate_limit`", "at least 1"],
        ),
        (
            json!({"rate_limit": 100_001}),
            "invalid_field",
            vec!["`rate_limit`", "at most 100000"],
        ),
        (
            json!({"rate_limit": -1}),
            "invalid_request",
            vec!["invalid value"],
        ),
        (
            json!({"rate_limit": "fast"}),
            "invalid_request",
            vec!["invalid type"],
        ),
        (
            json!({"disabled": "yes"}),
            "invalid_request",
            vec!["invalid type"],
        ),
        (
            json!({"colour": "red"}),
            "invalid_request",
            vec!["unknown field `colour`"],
        ),
    ] {
        let name = format!("endpoint field {extra:.40}");
        cases.push(Case::endpoint(name, base(extra)).expect(400, code, &needles));
    }
    cases.push(
        Case::new(
            "endpoint body nested 100 deep",
            Method::POST,
            "/v1/applications/app_test/endpoints",
            format!(
                r#"{{"url":"https://example.com","event_types":["*"],"x":{}}}"#,
                nested(100)
            ),
        )
        .expect(400, "nesting_too_deep", &["64 levels"]),
    );
    cases.push(
        Case::new(
            "endpoint body malformed",
            Method::POST,
            "/v1/applications/app_test/endpoints",
            r#"{"url":"#,
        )
        .expect(400, "malformed_json", &["not valid JSON"]),
    );
    cases.push(
        Case::new(
            "endpoint body as text",
            Method::POST,
            "/v1/applications/app_test/endpoints",
            "url=x",
        )
        .content_type(Some("text/plain"))
        .expect(415, "unsupported_media_type", &["application/json"]),
    );
    cases
}

/// Cases against an existing endpoint `id`.
fn existing_endpoint_cases(id: &str) -> Vec<Case> {
    let patch = |name: &str, body: Value| {
        Case::new(
            name,
            Method::PATCH,
            &format!("/v1/applications/app_test/endpoints/{id}"),
            body.to_string(),
        )
    };
    let rotate = |name: &str, body: Value| {
        Case::new(
            name,
            Method::POST,
            &format!("/v1/applications/app_test/endpoints/{id}/secret/rotate"),
            body.to_string(),
        )
    };
    vec![
        patch(
            "PATCH url to metadata",
            json!({"url": "http://169.254.169.254/"}),
        )
        .expect(400, "destination_not_allowed", &["`url`", "metadata"]),
        patch(
            "PATCH url to localhost",
            json!({"url": "http://localhost:6379/"}),
        )
        .expect(400, "destination_not_allowed", &["`url`", "loopback"]),
        patch(
            "PATCH url to mapped private",
            json!({"url": "http://[::ffff:10.1.1.1]/"}),
        )
        .expect(400, "destination_not_allowed", &["`url`", "private"]),
        patch("PATCH Host header", json!({"headers": {"Host": "x"}})).expect(
            400,
            "invalid_field",
            &["`headers`", "may not set"],
        ),
        patch("PATCH unknown field", json!({"secret": "whsec_x"})).expect(
            400,
            "invalid_request",
            &["unknown field `secret`"],
        ),
        rotate(
            "rotate with a bad grace period",
            json!({"grace_period_seconds": "forever"}),
        )
        .expect(400, "invalid_request", &["a whole number"]),
        rotate(
            "rotate with a fractional grace period",
            json!({"grace_period_seconds": 1.5}),
        )
        .expect(400, "invalid_request", &["a whole number"]),
        rotate(
            "rotate with a too long grace period",
            json!({"grace_period_seconds": 2_592_001}),
        )
        .expect(
            400,
            "invalid_field",
            &["`grace_period_seconds`", "at most 2592000"],
        ),
        rotate(
            "rotate with a bad secret",
            json!({"secret": "not-a-secret"}),
        )
        .expect(400, "invalid_field", &["`secret`"]),
        rotate("rotate with an unknown field", json!({"secrets": []})).expect(
            400,
            "invalid_request",
            &["unknown field `secrets`"],
        ),
        rotate("rotate with a body but no type", json!({}))
            .content_type(None)
            .expect(415, "unsupported_media_type", &["Content-Type"]),
        Case::new(
            "rotate a missing endpoint",
            Method::POST,
            "/v1/applications/app_test/endpoints/ep_missing/secret/rotate",
            "{}",
        )
        .expect(404, "not_found", &["ep_missing"]),
        Case::new(
            "secret of a missing endpoint",
            Method::GET,
            "/v1/applications/app_test/endpoints/ep_missing/secret",
            "",
        )
        .content_type(None)
        .expect(404, "not_found", &["ep_missing"]),
        Case::new(
            "list with limit 0",
            Method::GET,
            "/v1/applications/app_test/endpoints?limit=0",
            "",
        )
        .content_type(None)
        .expect(400, "invalid_query", &["`limit`"]),
        Case::new("unknown route", Method::GET, "/v1/nothing-here", "")
            .content_type(None)
            .expect(404, "not_found", &["no such route"]),
    ]
}

async fn run_case(stack: &Stack, http: &reqwest::Client, case: &Case) -> Result<(), String> {
    let mut request = http
        .request(
            case.method.clone(),
            format!("{}{}", stack.ingest_url, case.path),
        )
        .body(case.body.clone());
    match &case.authorization {
        None => request = request.bearer_auth(&stack.api_key),
        Some(value) if value.is_empty() => {}
        Some(value) => {
            request = request.header(
                "authorization",
                HeaderValue::from_bytes(value).map_err(|e| format!("{}: {e}", case.name))?,
            )
        }
    }
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in &case.headers {
        request = request.header(
            *name,
            HeaderValue::from_bytes(value).map_err(|e| format!("{}: {e}", case.name))?,
        );
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{}: request failed: {e}", case.name))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if status >= 500 {
        return Err(format!("{}: answered {status} {body}", case.name));
    }
    if status != case.status || code != case.code {
        return Err(format!(
            "{}: expected {} {}, got {status} {body}",
            case.name, case.status, case.code
        ));
    }
    if let Some(missing) = case.needles.iter().find(|n| !message.contains(n.as_str())) {
        return Err(format!(
            "{}: message {message:?} does not mention {missing:?}",
            case.name
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_precisely_and_ingest_stays_healthy() {
    let mut options = StackOptions::new("hostile")
        .dispatchers(0)
        .env("HERALD_MAX_BODY_BYTES", &MAX_BODY.to_string())
        // Nothing but public addresses, as in production.
        .env("HERALD_ALLOWED_DESTINATION_CIDRS", "");
    options.fanout = false;
    let stack = Stack::start(options).await;
    // A connection per case: a refusal answered before the body was read
    // (413) closes its connection, which a pooled client could pick up
    // again for the next case.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // An endpoint to aim PATCH and rotation at. Its host does not resolve
    // here, which registration accepts (delivery checks again).
    let created = stack
        .create_endpoint(json!({"url": "https://hooks.example.invalid/h", "event_types": ["*"]}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    let mut cases = event_cases();
    cases.extend(endpoint_cases());
    cases.extend(existing_endpoint_cases(&id));
    assert!(cases.len() >= 150, "only {} hostile cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        if let Err(failure) = run_case(&stack, &http, case).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still up, healthy and working.
    let health = http
        .get(format!("{}/healthz", stack.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("{}/readyz", stack.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    stack
        .accept_event(&json!({"application": "app_test", "type": "order.created", "payload": {"after": "the storm"}}))
        .await;
    let (status, _) = stack
        .get_json(&format!("/v1/applications/app_test/endpoints/{id}"))
        .await;
    assert_eq!(status, 200);
    let ingest = stack.ingest.as_ref().unwrap();
    assert!(
        !ingest.log_text().contains("panicked"),
        "ingest panicked; see {}",
        ingest.log.display()
    );
}
