//! Property tests of what Herald decodes from untrusted bytes and of its
//! signatures. (`schema.rs` holds the event format against the protobuf
//! schema; these check robustness and round trips.)

use base64::Engine as _;
use herald_core::event::{
    EventRecord, MAX_JSON_DEPTH, json_depth_exceeds, parse_event, validate_event_id,
    validate_event_type,
};
use herald_core::signing::{Secret, sign, signature_header, verify};
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

/// Every code `parse_event` may answer with.
const EVENT_CODES: &[&str] = &[
    "malformed_json",
    "invalid_event",
    "missing_field",
    "invalid_field",
    "nesting_too_deep",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A valid event with one byte range replaced: truncations, insertions and
/// corruptions of real events, the inputs a fuzzer would find first.
fn mangled_event() -> impl Strategy<Value = Vec<u8>> {
    (
        json_value(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(payload, at, len, insert)| {
            let mut bytes = serde_json::to_vec(
                &serde_json::json!({"application": "acme", "id": "evt_1", "type": "a.b", "payload": payload}),
            )
            .unwrap();
            let start = at.index(bytes.len() + 1);
            let end = (start + len.index(4)).min(bytes.len());
            bytes.splice(start..end, insert);
            bytes
        })
}

/// Saved failing cases live beside this file
/// (`properties.proptest-regressions`) and are replayed before new ones.
/// proptest's default looks for them next to the crate's `src/`, which an
/// integration test does not have.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes at all: an event or a classified refusal, never a panic.
    #[test]
    fn the_event_decoder_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(err) = parse_event(&bytes) {
            prop_assert!(EVENT_CODES.contains(&err.code()));
            prop_assert!(!err.to_string().is_empty());
        }
    }

    /// Damaged events are refused with a reason, or (when the damage
    /// happens to leave a valid event) accepted with every field valid.
    #[test]
    fn the_event_decoder_takes_mangled_events(bytes in mangled_event()) {
        match parse_event(&bytes) {
            Err(err) => prop_assert!(EVENT_CODES.contains(&err.code())),
            Ok(event) => {
                prop_assert!(validate_event_type(&event.event_type).is_ok());
                if let Some(id) = &event.id {
                    prop_assert!(validate_event_id(id).is_ok());
                }
                prop_assert!(serde_json::from_str::<Value>(event.payload.get()).is_ok());
            }
        }
    }

    /// Any JSON payload within the depth bound goes through unchanged; the
    /// depth check agrees with the payload's real depth.
    #[test]
    fn payloads_round_trip_and_depth_is_measured_exactly(payload in json_value()) {
        let text = payload.to_string();
        prop_assert_eq!(json_depth_exceeds(text.as_bytes(), depth(&payload)), false);
        if depth(&payload) > 0 {
            prop_assert!(json_depth_exceeds(text.as_bytes(), depth(&payload) - 1));
        }
        let raw = RawValue::from_string(text.clone()).unwrap();
        let record = EventRecord::new("acme", "evt_1", "a.b", &raw, time::OffsetDateTime::UNIX_EPOCH).to_json();
        let parsed = parse_event(&record);
        if depth(&payload) < MAX_JSON_DEPTH {
            // Byte for byte: numbers keep whatever precision they came with.
            prop_assert_eq!(parsed.unwrap().payload.get(), text.as_str());
        }
    }

    /// What Herald signs verifies with the same secret, with an independent
    /// Standard Webhooks implementation, and with nothing else.
    #[test]
    fn signatures_verify_with_their_secret_only(
        key in prop::collection::vec(any::<u8>(), 24..=64),
        other in prop::collection::vec(any::<u8>(), 24..=64),
        id in "[A-Za-z0-9_-]{1,40}",
        // Webhook bodies are JSON, so text (the independent implementation
        // takes nothing else).
        body in ".{0,200}",
        flip in any::<prop::sample::Index>(),
    ) {
        let body = body.into_bytes();
        let text = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let secret = Secret::parse(&text).unwrap();
        prop_assert_eq!(Secret::parse(&secret.expose()).unwrap(), secret.clone());
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = sign(&secret, &id, timestamp, &body);
        prop_assert!(verify(&secret, &id, timestamp, &body, &header));

        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        prop_assert!(standardwebhooks::Webhook::new(&text).unwrap().verify(&body, &headers).is_ok());

        let stranger = Secret::parse(&format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&other))).unwrap();
        if stranger != secret {
            prop_assert!(!verify(&stranger, &id, timestamp, &body, &header));
        }
        prop_assert!(!verify(&secret, &id, timestamp + 1, &body, &header));
        if !body.is_empty() {
            let mut tampered = body.clone();
            tampered[flip.index(body.len())] ^= 1;
            prop_assert!(!verify(&secret, &id, timestamp, &tampered, &header));
        }
    }

    /// During a rotation every listed secret verifies the one header, in
    /// any order.
    #[test]
    fn every_rotating_secret_verifies_the_shared_header(n in 1usize..5, body in ".{0,64}") {
        let secrets: Vec<Secret> = (0..n).map(|_| Secret::generate()).collect();
        let header = signature_header(&secrets, "evt_r", 1_767_323_045, body.as_bytes());
        prop_assert_eq!(header.split(' ').count(), n);
        for secret in &secrets {
            prop_assert!(verify(secret, "evt_r", 1_767_323_045, body.as_bytes(), &header));
        }
        prop_assert!(!verify(&Secret::generate(), "evt_r", 1_767_323_045, body.as_bytes(), &header));
    }

    /// Arbitrary signature headers never verify by accident and never panic.
    #[test]
    fn arbitrary_signature_headers_do_not_verify(header in ".{0,120}") {
        let verified = verify(&Secret::generate(), "evt_x", 1, b"[]", &header);
        prop_assert!(!verified);
    }

    /// Any text offered as a secret is refused with a reason or reads back
    /// to itself.
    #[test]
    fn secret_texts_parse_or_say_why(text in "(whsec_)?[A-Za-z0-9+/=!]{0,100}") {
        match Secret::parse(&text) {
            Ok(secret) => prop_assert_eq!(secret.expose(), text),
            Err(problem) => prop_assert!(!problem.is_empty()),
        }
    }
}
