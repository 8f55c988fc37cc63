//! Events: the JSON format accepted over HTTP and on `herald.events`, its
//! validation, and Herald's identifiers.
//!
//! The JSON format is the proto3 JSON mapping of `herald.v1.Event` (see
//! `proto/herald/v1/herald.proto`):
//!
//! ```json
//! {"application": "acme", "id": "evt_123", "type": "order.created",
//!  "payload": {"any": "json"}, "timestamp": "2026-01-02T03:04:05Z"}
//! ```
//!
//! `application` (the customer whose endpoints receive it), `type` and
//! `payload` are required, `id` and `timestamp` optional. The
//! payload is kept as the exact JSON text it arrived as ([`RawValue`]), so it
//! is never re-encoded on its way to the endpoints.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest event id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest event type, in bytes.
pub const MAX_TYPE_LEN: usize = 128;
/// Deepest nesting of arrays and objects accepted in an event (and in any
/// API request body). Receivers parse what Herald forwards; a payload nested
/// thousands deep can exhaust their parsers' stacks.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a JSON document is not a valid event. Each variant renders as a
/// message that names the problem, ready to show to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The bytes are not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// Valid JSON, but not an event object (wrong top-level type, unknown or
    /// duplicate field).
    #[error("the body is not an event: {0}")]
    NotAnEvent(String),
    /// Arrays and objects nested deeper than [`MAX_JSON_DEPTH`].
    #[error(
        "the body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; flatten the payload"
    )]
    TooDeep,
    /// A required field is absent.
    #[error("field `{0}` is required")]
    MissingField(&'static str),
    /// A field is present with an unusable value.
    #[error("field `{field}` {problem}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl EventError {
    /// A short machine-readable code for API errors and dead-letter reasons.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::MalformedJson(_) => "malformed_json",
            EventError::NotAnEvent(_) => "invalid_event",
            EventError::TooDeep => "nesting_too_deep",
            EventError::MissingField(_) => "missing_field",
            EventError::InvalidField { .. } => "invalid_field",
        }
    }
}

/// The wire shape, before validation. Every field is kept as raw JSON so that
/// each can be checked and reported on its own.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with the fields `application`, `type`, `payload` and optionally `id` and `timestamp`"
)]
struct WireEvent<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    application: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    event_type: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    timestamp: Option<&'a RawValue>,
}

/// Tells a field that is present (even as `null`) from one that is absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A validated event whose payload still borrows the input bytes.
#[derive(Debug, Clone)]
pub struct ParsedEvent<'a> {
    /// The application it is addressed to.
    pub application: String,
    /// The id given by the sender, if any.
    pub id: Option<String>,
    /// The event type.
    pub event_type: String,
    /// The payload exactly as sent.
    pub payload: &'a RawValue,
    /// The timestamp given by the sender, if any.
    pub timestamp: Option<OffsetDateTime>,
}

/// Walks a JSON value without keeping any of it, converting every number to
/// a double on the way: a number beyond a double's range (`1e400`) is an
/// error, as it is for the event schema's `google.protobuf.Value`, while the
/// payload itself still travels byte for byte.
struct NumbersInRange;

impl<'de> Deserialize<'de> for NumbersInRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumbersInRange)
    }
}

impl<'de> serde::de::Visitor<'de> for NumbersInRange {
    type Value = NumbersInRange;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<NumbersInRange>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut fields: A) -> Result<Self, A::Error> {
        while fields.next_key::<serde::de::IgnoredAny>()?.is_some() {
            fields.next_value::<NumbersInRange>()?;
        }
        Ok(self)
    }
}

/// Parses and validates an event from JSON bytes.
pub fn parse_event(bytes: &[u8]) -> Result<ParsedEvent<'_>, EventError> {
    if json_depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(EventError::TooDeep);
    }
    // Derived deserializers also accept arrays for structs; an event must be
    // an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(err) => EventError::MalformedJson(err.to_string()),
                Ok(_) => EventError::NotAnEvent(format!(
                    "expected a JSON object with the fields `application`, `type`, `payload` and optionally `id` and `timestamp`, found {}",
                    json_kind(std::str::from_utf8(bytes).unwrap_or(""))
                )),
            },
        );
    }
    let wire: WireEvent<'_> = serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => EventError::NotAnEvent(err.to_string()),
            Category::Io | Category::Syntax | Category::Eof => {
                EventError::MalformedJson(err.to_string())
            }
        }
    })?;

    let application = string_field("application", wire.application)?
        .ok_or(EventError::MissingField("application"))?;
    validate_application_id(&application).map_err(|problem| EventError::InvalidField {
        field: "application",
        problem,
    })?;

    let event_type =
        string_field("type", wire.event_type)?.ok_or(EventError::MissingField("type"))?;
    validate_event_type(&event_type).map_err(|problem| EventError::InvalidField {
        field: "type",
        problem,
    })?;

    let payload = wire.payload.ok_or(EventError::MissingField("payload"))?;
    serde_json::from_str::<NumbersInRange>(payload.get()).map_err(|err| {
        EventError::InvalidField {
            field: "payload",
            problem: format!(
                "must be JSON whose numbers fit a double, as the event schema's google.protobuf.Value holds them ({err})"
            ),
        }
    })?;

    let id = string_field("id", wire.id)?;
    if let Some(id) = &id {
        validate_event_id(id).map_err(|problem| EventError::InvalidField {
            field: "id",
            problem,
        })?;
    }

    let timestamp =
        match string_field("timestamp", wire.timestamp)? {
            None => None,
            Some(text) => Some(OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                EventError::InvalidField {
                    field: "timestamp",
                    problem: format!(
                        "must be an RFC 3339 date-time such as 2026-01-02T03:04:05Z, not {text:?}"
                    ),
                }
            })?),
        };

    Ok(ParsedEvent {
        application,
        id,
        event_type,
        payload,
        timestamp,
    })
}

/// Whether the JSON text `bytes` nests arrays and objects more than `max`
/// levels deep. A single pass that skips strings; the bytes need not be
/// valid JSON (the parser reports that), and nothing is allocated, so it is
/// safe on any input.
pub fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Reads an optional field that must be a JSON string.
fn string_field(field: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, EventError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|err| EventError::InvalidField {
                field,
                problem: match json_kind(raw.get()) {
                    // A string whose escapes do not make text, e.g. a lone
                    // surrogate `\ud800`.
                    "a string" => format!("is not a valid string: {err}"),
                    kind => format!("must be a string, not {kind}"),
                },
            }),
    }
}

/// Names the kind of a JSON value for error messages.
fn json_kind(json: &str) -> &'static str {
    match json.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Checks an event type: 1-128 characters of `[A-Za-z0-9._-]`.
pub fn validate_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if event_type.len() > MAX_TYPE_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_TYPE_LEN}",
            event_type.len()
        ));
    }
    if let Some(bad) = event_type
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks an event id: 1-128 printable ASCII characters other than space and
/// `.` (Standard Webhooks forbids `.` in ids, since it separates the signed
/// parts).
pub fn validate_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        ));
    }
    if let Some(bad) = id.chars().find(|c| !c.is_ascii_graphic() || *c == '.') {
        return Err(format!(
            "contains {bad:?}; only printable ASCII characters other than space and '.' are allowed"
        ));
    }
    Ok(())
}

/// Checks an application id: the rules of event ids ([`validate_event_id`]),
/// and no `:` either, which separates the parts of Herald's Redis keys.
pub fn validate_application_id(id: &str) -> Result<(), String> {
    validate_event_id(id)?;
    if id.contains(':') {
        return Err(
            "contains ':'; only printable ASCII characters other than space, '.' and ':' are allowed"
                .to_owned(),
        );
    }
    Ok(())
}

/// A new random, time-ordered event id (`evt_` + 32 hex digits).
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// A new random endpoint id (`ep_` + 32 hex digits).
pub fn new_endpoint_id() -> String {
    format!("ep_{}", uuid::Uuid::now_v7().simple())
}

/// A new random, time-ordered application id (`app_` + 32 hex digits).
pub fn new_application_id() -> String {
    format!("app_{}", uuid::Uuid::now_v7().simple())
}

/// The id of an event that was published to Kafka without one: derived from
/// where it was stored, so that re-reading the record yields the same id.
pub fn event_id_from_position(topic: &str, partition: i32, offset: i64) -> String {
    let readable = format!("evt_kafka_{}_{partition}_{offset}", topic.replace('.', "-"));
    if readable.len() <= MAX_ID_LEN {
        return readable;
    }
    let digest = Sha256::digest(format!("{topic}/{partition}/{offset}"));
    format!("evt_kafka_{}", hex(&digest[..16]))
}

/// The id of the delivery of one event to one endpoint. Deterministic, so a
/// re-run of fan-out produces the same delivery ids.
pub fn delivery_id(event_id: &str, endpoint_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event_id.as_bytes());
    hasher.update([0]);
    hasher.update(endpoint_id.as_bytes());
    format!("dlv_{}", hex(&hasher.finalize()[..16]))
}

/// Lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The canonical JSON record Herald writes to `herald.events`.
#[derive(Debug, Serialize)]
pub struct EventRecord<'a> {
    /// The application it is addressed to.
    pub application: &'a str,
    /// Event id.
    pub id: &'a str,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The payload, unchanged.
    pub payload: &'a RawValue,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

impl<'a> EventRecord<'a> {
    /// Builds the record for an event accepted at `timestamp`.
    pub fn new(
        application: &'a str,
        id: &'a str,
        event_type: &'a str,
        payload: &'a RawValue,
        timestamp: OffsetDateTime,
    ) -> Self {
        Self {
            application,
            id,
            event_type,
            payload,
            timestamp: format_timestamp(timestamp),
        }
    }

    /// The record's JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising borrowed strings and an already-valid RawValue cannot
        // fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats a timestamp as RFC 3339 in UTC (`2026-01-02T03:04:05.123Z`).
pub fn format_timestamp(timestamp: OffsetDateTime) -> String {
    timestamp
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(timestamp: OffsetDateTime) -> i64 {
    (timestamp.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`unix_millis`]; out-of-range values clamp to the epoch.
pub fn from_unix_millis(millis: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_event_parses() {
        let event = parse_event(
            br#"{"application":"acme","id":"evt_1","type":"order.created","payload":{"n": [1, 2]},"timestamp":"2026-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(event.id.as_deref(), Some("evt_1"));
        assert_eq!(event.event_type, "order.created");
        assert_eq!(event.payload.get(), r#"{"n": [1, 2]}"#);
        assert_eq!(unix_millis(event.timestamp.unwrap()), 1_767_323_045_000);
    }

    #[test]
    fn null_payload_is_present_but_missing_payload_is_not() {
        let event = parse_event(br#"{"application":"acme","type":"a","payload":null}"#).unwrap();
        assert_eq!(event.payload.get(), "null");
        assert_eq!(
            parse_event(br#"{"application":"acme","type":"a"}"#).unwrap_err(),
            EventError::MissingField("payload")
        );
    }

    #[test]
    fn an_event_names_its_application() {
        assert_eq!(
            parse_event(br#"{"type":"a","payload":1}"#).unwrap_err(),
            EventError::MissingField("application")
        );
        let err = parse_event(br#"{"application":"a.b","type":"a","payload":1}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_field");
        assert!(err.to_string().contains("`application`"), "{err}");
        let err = parse_event(br#"{"application":7,"type":"a","payload":1}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_field");
        let err =
            parse_event(br#"{"application":"a:version","type":"a","payload":1}"#).unwrap_err();
        assert!(err.to_string().contains("':'"), "{err}");
    }

    #[test]
    fn payload_numbers_must_fit_a_double_and_travel_unchanged() {
        let err = parse_event(br#"{"application":"acme","type":"a","payload":{"n":[1e400]}}"#)
            .unwrap_err();
        assert_eq!(err.code(), "invalid_field");
        assert!(err.to_string().contains("fit a double"), "{err}");
        // Within range, however written, the bytes are kept as sent: huge
        // integers and tiny fractions included.
        let text = r#"{"big":123456789012345678901234567890,"tiny":1e-400,"x":-0.0E+2}"#;
        let bytes = format!(r#"{{"application":"acme","type":"a","payload":{text}}}"#);
        let event = parse_event(bytes.as_bytes()).unwrap();
        assert_eq!(event.payload.get(), text);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"{", "malformed_json", "not valid JSON"),
            (b"[1]", "invalid_event", "JSON object"),
            (b"[1", "malformed_json", "not valid JSON"),
            (b"\"text\"", "invalid_event", "found a string"),
            (
                br#"{"application":"acme","type":"a","payload":1,"extra":1}"#,
                "invalid_event",
                "unknown field `extra`",
            ),
            (
                br#"{"application":"acme","payload":1}"#,
                "missing_field",
                "`type`",
            ),
            (
                br#"{"application":"acme","type":5,"payload":1}"#,
                "invalid_field",
                "`type` must be a string, not a number",
            ),
            (
                br#"{"application":"acme","type":"a b","payload":1}"#,
                "invalid_field",
                "`type` contains ' '",
            ),
            (
                br#"{"application":"acme","type":"","payload":1}"#,
                "invalid_field",
                "`type` must not be empty",
            ),
            (
                br#"{"application":"acme","id":"a.b","type":"a","payload":1}"#,
                "invalid_field",
                "`id` contains '.'",
            ),
            (
                br#"{"application":"acme","id":null,"type":"a","payload":1}"#,
                "invalid_field",
                "`id` must be a string, not null",
            ),
            (
                br#"{"application":"acme","type":"a","payload":1,"timestamp":"yesterday"}"#,
                "invalid_field",
                "RFC 3339",
            ),
            (
                br#"{"application":"acme","type":"a","type":"b","payload":1}"#,
                "invalid_event",
                "duplicate field",
            ),
            (
                br#"{"application":"acme","type":"\ud800","payload":1}"#,
                "invalid_field",
                "`type` is not a valid string",
            ),
            (
                b"{\"type\":\"a\xff\",\"payload\":1}",
                "malformed_json",
                "not valid JSON",
            ),
        ];
        for (body, code, needle) in cases {
            let err = parse_event(body).unwrap_err();
            assert_eq!(err.code(), *code, "{}", String::from_utf8_lossy(body));
            assert!(
                err.to_string().contains(needle),
                "{:?} does not mention {needle:?}",
                err.to_string()
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_and_strings_do_not_count() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_depth_exceeds(nested(64).as_bytes(), 64));
        assert!(json_depth_exceeds(nested(65).as_bytes(), 64));
        let in_string = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(!json_depth_exceeds(in_string.as_bytes(), 2));
        let ok = format!(
            r#"{{"application":"acme","type":"a","payload":{}}}"#,
            nested(63)
        );
        assert!(parse_event(ok.as_bytes()).is_ok());
        let deep = format!(
            r#"{{"application":"acme","type":"a","payload":{}}}"#,
            nested(64)
        );
        let err = parse_event(deep.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "nesting_too_deep");
        assert!(err.to_string().contains("64 levels"));
    }

    #[test]
    fn long_ids_and_types_are_refused() {
        assert!(validate_event_id(&"a".repeat(128)).is_ok());
        assert!(validate_event_id(&"a".repeat(129)).is_err());
        assert!(validate_event_type(&"a".repeat(128)).is_ok());
        assert!(validate_event_type(&"a".repeat(129)).is_err());
    }

    #[test]
    fn generated_ids_are_valid() {
        validate_event_id(&new_event_id()).unwrap();
        validate_event_id(&event_id_from_position("herald.events", 3, 42)).unwrap();
        validate_event_id(&event_id_from_position(&"t".repeat(249), 3, 42)).unwrap();
        assert_eq!(
            event_id_from_position("herald.events", 3, 42),
            "evt_kafka_herald-events_3_42"
        );
    }

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        assert_eq!(delivery_id("e1", "ep1"), delivery_id("e1", "ep1"));
        assert_ne!(delivery_id("e1", "ep1"), delivery_id("e1", "ep2"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(delivery_id("ab", "c"), delivery_id("a", "bc"));
    }

    #[test]
    fn records_round_trip_through_the_parser() {
        let payload = RawValue::from_string(r#"{"a":"é"}"#.to_owned()).unwrap();
        let when = from_unix_millis(1_767_323_045_123);
        let json = EventRecord::new("acme", "evt_9", "a.b", &payload, when).to_json();
        let parsed = parse_event(&json).unwrap();
        assert_eq!(parsed.id.as_deref(), Some("evt_9"));
        assert_eq!(parsed.application, "acme");
        assert_eq!(parsed.payload.get(), payload.get());
        assert_eq!(unix_millis(parsed.timestamp.unwrap()), 1_767_323_045_123);
    }
}
