//! Holds Herald's JSON event format against `proto/herald/v1/herald.proto`:
//! the JSON on `herald.events` must be the proto3 JSON mapping of
//! `herald.v1.Event`, so that anyone can produce events from the schema
//! alone.

use herald_core::event::{EventRecord, from_unix_millis, parse_event, unix_millis};
use proptest::prelude::*;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value;
use serde_json::value::RawValue;

fn event_descriptor() -> MessageDescriptor {
    let mut compiler = protox::Compiler::new([concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto")])
        .expect("proto dir");
    compiler.include_imports(true);
    compiler
        .open_file("herald/v1/herald.proto")
        .expect("herald.proto compiles");
    compiler
        .descriptor_pool()
        .get_message_by_name("herald.v1.Event")
        .expect("herald.v1.Event exists")
}

/// Reads `json` as a `herald.v1.Event` per the proto3 JSON mapping (unknown
/// fields refused) and writes it back as JSON.
fn through_schema(json: &str) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(event_descriptor(), &mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    serde_json::to_value(&message).map_err(|e| e.to_string())
}

/// `google.protobuf.Value` holds every number as a double; Herald itself
/// passes payloads through byte for byte. Compare numbers as doubles.
fn numbers_as_doubles(value: Value) -> Value {
    match value {
        Value::Number(n) => serde_json::Number::from_f64(n.as_f64().unwrap_or(f64::NAN))
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_doubles).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_doubles(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn the_schema_has_exactly_the_fields_herald_reads() {
    let names: Vec<String> = event_descriptor()
        .fields()
        .map(|f| f.json_name().to_owned())
        .collect();
    assert_eq!(names, ["id", "type", "payload", "timestamp", "application"]);
    // Herald's parser knows every one of them.
    parse_event(
        br#"{"application":"acme","id":"e1","type":"a.b","payload":{"x":1},"timestamp":"2026-01-02T03:04:05Z"}"#,
    )
    .unwrap();
}

#[test]
fn events_herald_accepts_are_valid_under_the_schema_with_the_same_values() {
    let corpus = [
        r#"{"application":"acme","type":"order.created","payload":{"id":7,"items":[{"sku":"a","qty":2}]}}"#,
        r#"{"application":"acme","id":"evt_1","type":"user.deleted","payload":null}"#,
        r#"{"application":"acme","type":"t","payload":"just a string"}"#,
        r#"{"application":"acme","type":"t","payload":[1,2.5,true,null,"x"]}"#,
        r#"{"application":"acme","type":"t","payload":{},"timestamp":"2026-01-02T03:04:05.123Z"}"#,
        r#"{"application":"acme","type":"t","payload":{"deep":{"deeper":{"deepest":[{}]}}}}"#,
    ];
    for json in corpus {
        let parsed = parse_event(json.as_bytes()).expect("Herald accepts it");
        let via_schema =
            through_schema(json).unwrap_or_else(|e| panic!("schema refuses {json}: {e}"));
        assert_eq!(via_schema["type"], parsed.event_type.as_str(), "{json}");
        assert_eq!(
            via_schema["application"],
            parsed.application.as_str(),
            "{json}"
        );
        if let Some(id) = &parsed.id {
            assert_eq!(via_schema["id"], id.as_str());
        }
        let payload: Value = serde_json::from_str(parsed.payload.get()).unwrap();
        // proto3 JSON writes a null Value as null and leaves out nothing else.
        assert_eq!(
            via_schema.get("payload").cloned().unwrap_or(Value::Null),
            numbers_as_doubles(payload),
            "{json}"
        );
    }
}

#[test]
fn events_the_schema_refuses_herald_refuses_too() {
    for json in [
        r#"{"application":"acme","type":7,"payload":1}"#,
        r#"{"application":"acme","id":{"a":1},"type":"t","payload":1}"#,
        r#"{"application":"acme","type":"t","payload":1,"timestamp":"noon"}"#,
        r#"{"application":"acme","type":"t","payload":1,"colour":"red"}"#,
        r#"{"application":"acme","type":"t","payload":{"n":[1e400]}}"#,
        r#"["type","t"]"#,
    ] {
        assert!(through_schema(json).is_err(), "schema accepts {json}");
        assert!(
            parse_event(json.as_bytes()).is_err(),
            "Herald accepts {json}"
        );
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1_000_000i64..1_000_000).prop_map(Value::from),
        "[ -~é€]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    // Saved failing cases live beside this file
    // (`schema.proptest-regressions`) and are replayed before new ones;
    // proptest's default looks next to the crate's `src/`, which an
    // integration test does not have.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// What herald-ingest writes to `herald.events` reads back unchanged,
    /// both through Herald's parser and through the schema.
    #[test]
    fn written_records_round_trip(
        id in "[A-Za-z0-9_:-]{1,40}",
        application in "[A-Za-z0-9_-]{1,40}",
        event_type in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
        payload in json_value(),
        millis in 0i64..4_000_000_000_000,
    ) {
        let raw = RawValue::from_string(payload.to_string()).unwrap();
        let record = EventRecord::new(&application, &id, &event_type, &raw, from_unix_millis(millis)).to_json();
        let parsed = parse_event(&record).unwrap();
        prop_assert_eq!(parsed.id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(&parsed.event_type, &event_type);
        prop_assert_eq!(&parsed.application, &application);
        prop_assert_eq!(serde_json::from_str::<Value>(parsed.payload.get()).unwrap(), payload.clone());
        prop_assert_eq!(unix_millis(parsed.timestamp.unwrap()), millis);

        let via_schema = through_schema(std::str::from_utf8(&record).unwrap()).unwrap();
        prop_assert_eq!(&via_schema["id"], id.as_str());
        prop_assert_eq!(via_schema.get("payload").cloned().unwrap_or(Value::Null), numbers_as_doubles(payload));
    }
}
