//! Property tests of the delivery decoder: whatever bytes arrive on a
//! delivery topic, [`prepare`] either renders the webhook or says why not,
//! and a valid delivery's payload reaches the body byte for byte.

use herald_core::proto::{Attempt, Delivery};
use herald_dispatcher::deliver::prepare;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::Value;

fn payload_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        // Numbers beyond f64 keep their digits.
        "[1-9][0-9]{20,40}(\\.[0-9]{1,30})?",
        ".{0,16}".prop_map(|s| Value::String(s).to_string()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|pairs| {
                let fields: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v)| format!("{}: {v}", Value::String(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        "[a-z0-9_]{1,20}",
        "ep_[a-z0-9]{1,20}",
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
        payload_text(),
        0i64..4_000_000_000_000,
        0u32..10,
    )
        .prop_map(
            |(event_id, endpoint_id, event_type, payload, ts, attempts)| Delivery {
                delivery_id: herald_core::event::delivery_id(&event_id, &endpoint_id),
                endpoint_id,
                event_id,
                event_type,
                payload_json: payload.into_bytes(),
                event_timestamp_ms: ts,
                attempts_made: attempts,
                history: (0..attempts)
                    .map(|n| Attempt {
                        started_at_ms: ts + i64::from(n),
                        status_code: 500,
                        error: "the endpoint answered 500".to_owned(),
                        duration_ms: n,
                    })
                    .collect(),
                ..Default::default()
            },
        )
}

proptest! {
    // Saved failing cases live beside this file and are replayed before new
    // ones; proptest's default looks next to the crate's `src/`, which an
    // integration test does not have.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_rendered_or_refused_with_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(problem) = prepare(&bytes) {
            prop_assert!(!problem.is_empty());
        }
    }

    #[test]
    fn valid_deliveries_render_their_payload_unchanged(delivery in delivery()) {
        let encoded = delivery.encode_to_vec();
        prop_assert_eq!(Delivery::decode(encoded.as_slice()).unwrap(), delivery.clone());
        let prepared = prepare(&encoded).unwrap();
        prop_assert_eq!(&prepared.delivery, &delivery);
        let body = std::str::from_utf8(&prepared.body).unwrap();
        let payload = std::str::from_utf8(&delivery.payload_json).unwrap();
        prop_assert!(body.ends_with(&format!(",\"data\":{payload}}}")), "{}", body);
        let parsed: Value = serde_json::from_str(body).unwrap();
        prop_assert_eq!(&parsed["type"], delivery.event_type.as_str());
    }

    #[test]
    fn damaged_deliveries_never_panic(delivery in delivery(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut encoded = delivery.encode_to_vec();
        let i = at.index(encoded.len());
        if cut {
            encoded.truncate(i);
        } else {
            encoded[i] = byte;
        }
        if let Err(problem) = prepare(&encoded) {
            prop_assert!(!problem.is_empty());
        }
    }
}
