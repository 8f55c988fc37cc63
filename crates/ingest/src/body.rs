//! Reading JSON request bodies with Herald's own errors: 415 for a body that
//! is not declared as JSON, 413 past the size limit.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Checks the content type and reads the whole body, up to `limit` bytes.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be JSON with `Content-Type: application/json` (got {shown})"),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    // Refuse early when the sender already said how much it will send.
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::bad_request(
            "unreadable_body",
            format!("the request body could not be read: {err}"),
        )),
    }
}

/// `application/json`, or any `application/*+json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads a JSON body into `T`; serde's message names the field at fault.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_json_body(headers, body, limit).await?;
    refuse_deep(&bytes, herald_core::event::MAX_JSON_DEPTH)?;
    // serde's derived structs also read a JSON array as their fields in
    // order, so `[]` would pass as a body with every optional field absent.
    // Every request body of the API is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object, not an array",
        ));
    }
    parse_json(&bytes)
}

/// `400 nesting_too_deep` when `bytes` nest more than `max_depth` levels.
pub fn refuse_deep(bytes: &[u8], max_depth: usize) -> Result<(), ApiError> {
    if herald_core::event::json_depth_exceeds(bytes, max_depth) {
        return Err(ApiError::bad_request(
            "nesting_too_deep",
            herald_core::event::EventError::TooDeep.to_string(),
        ));
    }
    Ok(())
}

/// Reads JSON `bytes` into `T`: `invalid_request` naming the field at fault
/// when it is JSON of the wrong shape, `malformed_json` when it is not JSON.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::bad_request("invalid_request", err.to_string()),
            _ => ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {err}"),
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[tokio::test]
    async fn an_array_is_not_read_as_a_body_of_absent_fields() {
        #[derive(Debug, Default, serde::Deserialize)]
        struct AllOptional {
            #[serde(default)]
            _n: Option<u32>,
        }
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        for (json, accepted) in [("{}", true), ("null", true), (" []", false), ("[1]", false)] {
            let body = axum::body::Body::from(json);
            let read = super::read_json::<Option<AllOptional>>(&headers, body, 100).await;
            assert_eq!(read.is_ok(), accepted, "{json}");
        }
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("application/jsonp"));
    }
}

/// Whole numbers in request bodies. JSON Schema's `integer`, which the API's
/// document promises, is any number without a fractional part, so `5.0` is
/// one; serde's own `u32` refuses it. Fields read through these take `5`,
/// `5.0` and `5e0` alike and refuse `5.5` and `-5`.
pub mod whole {
    use serde::Deserialize;
    use serde::de::{self, Deserializer, Unexpected, Visitor};

    /// A `u32` written as any JSON number with no fractional part.
    struct WholeU32(u32);

    impl<'de> Deserialize<'de> for WholeU32 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(WholeU32Visitor)
        }
    }

    struct WholeU32Visitor;

    impl Visitor<'_> for WholeU32Visitor {
        type Value = WholeU32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number from 0 to 4294967295")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<WholeU32, E> {
            u32::try_from(v)
                .map(WholeU32)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<WholeU32, E> {
            u32::try_from(v)
                .map(WholeU32)
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<WholeU32, E> {
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                Ok(WholeU32(v as u32))
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    /// For `#[serde(default, deserialize_with = "…")]` on an `Option<u32>`:
    /// absent or `null` is `None`.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(Option::<WholeU32>::deserialize(d)?.map(|w| w.0))
    }

    /// For `#[serde(default, deserialize_with = "…")]` on an
    /// `Option<Option<u32>>`: absent is `None`, `null` is `Some(None)`.
    pub fn present_or_null<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u32>>, D::Error> {
        optional(d).map(Some)
    }

    #[cfg(test)]
    mod tests {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "super::optional")]
            n: Option<u32>,
            #[serde(default, deserialize_with = "super::present_or_null")]
            m: Option<Option<u32>>,
        }

        fn read(json: &str) -> Result<Body, String> {
            serde_json::from_str(json).map_err(|e| e.to_string())
        }

        #[test]
        fn whole_numbers_are_read_however_json_writes_them() {
            for json in [r#"{"n": 5}"#, r#"{"n": 5.0}"#, r#"{"n": 5e0}"#] {
                assert_eq!(read(json).unwrap().n, Some(5), "{json}");
            }
            assert_eq!(read("{}").unwrap().n, None);
            assert_eq!(read(r#"{"n": null}"#).unwrap().n, None);
            assert_eq!(read("{}").unwrap().m, None);
            assert_eq!(read(r#"{"m": null}"#).unwrap().m, Some(None));
            assert_eq!(read(r#"{"m": 7.0}"#).unwrap().m, Some(Some(7)));
        }

        #[test]
        fn fractions_negatives_overflow_and_strings_are_refused() {
            for json in [
                r#"{"n": 5.5}"#,
                r#"{"n": -1}"#,
                r#"{"n": -1.0}"#,
                r#"{"n": 4294967296}"#,
                r#"{"n": 1e300}"#,
                r#"{"n": "5"}"#,
                r#"{"m": 0.5}"#,
            ] {
                let err = read(json).unwrap_err();
                assert!(
                    err.contains("a whole number") || err.contains("invalid type"),
                    "{json}: {err}"
                );
            }
        }
    }
}
