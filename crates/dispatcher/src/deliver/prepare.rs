//! Step 1: decode a delivery record and render the webhook body, the exact
//! bytes that are signed and sent.

use bytes::Bytes;
use herald_core::event::{format_timestamp, from_unix_millis};
use herald_core::proto::Delivery;
use prost::Message as _;
use serde::Serialize;
use serde_json::value::RawValue;

/// The webhook body: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct WebhookBody<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

/// A webhook ready to send: the decoded delivery and its exact body bytes
/// (the bytes that are signed).
#[derive(Debug)]
pub struct PreparedWebhook {
    /// The delivery record.
    pub delivery: Delivery,
    /// The JSON body.
    pub body: Bytes,
}

/// Decodes a delivery record and renders its webhook body. An error means
/// the record can never be delivered (it is malformed).
pub fn prepare(record_value: &[u8]) -> Result<PreparedWebhook, String> {
    let delivery =
        Delivery::decode(record_value).map_err(|err| format!("not a herald.v1.Delivery: {err}"))?;
    if delivery.endpoint_id.is_empty() || delivery.event_id.is_empty() {
        return Err("the delivery has no endpoint id or no event id".to_owned());
    }
    let payload = std::str::from_utf8(&delivery.payload_json)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .ok_or("the delivery's payload is not valid JSON")?;
    // Sized for the whole body at once: one allocation per webhook.
    let mut body = Vec::with_capacity(payload.get().len() + delivery.event_type.len() + 64);
    serde_json::to_writer(
        &mut body,
        &WebhookBody {
            event_type: &delivery.event_type,
            timestamp: format_timestamp(from_unix_millis(delivery.event_timestamp_ms)),
            data: payload,
        },
    )
    .map_err(|err| format!("the webhook body cannot be rendered: {err}"))?;
    Ok(PreparedWebhook {
        delivery,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_wraps_the_payload_unchanged() {
        let delivery = Delivery {
            delivery_id: "dlv_1".into(),
            endpoint_id: "ep_1".into(),
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            payload_json: br#"{"b": 1, "a": [true]}"#.to_vec(),
            event_timestamp_ms: 1_767_323_045_123,
            ..Default::default()
        };
        let prepared = prepare(&delivery.encode_to_vec()).unwrap();
        assert_eq!(
            std::str::from_utf8(&prepared.body).unwrap(),
            r#"{"type":"order.created","timestamp":"2026-01-02T03:04:05.123Z","data":{"b": 1, "a": [true]}}"#
        );
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        assert!(
            prepare(b"\xff\xff\xff")
                .unwrap_err()
                .contains("not a herald.v1.Delivery")
        );
        let no_endpoint = Delivery {
            event_id: "e".into(),
            payload_json: b"1".to_vec(),
            ..Default::default()
        };
        assert!(
            prepare(&no_endpoint.encode_to_vec())
                .unwrap_err()
                .contains("no endpoint id")
        );
        let bad_json = Delivery {
            event_id: "e".into(),
            endpoint_id: "ep".into(),
            payload_json: b"{nope".to_vec(),
            ..Default::default()
        };
        assert!(
            prepare(&bad_json.encode_to_vec())
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
