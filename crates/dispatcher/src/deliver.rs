//! Delivering one delivery record, in named steps: decode and prepare the
//! webhook, find the endpoint, make the signed HTTP call, and handle the
//! result (success: done; failure: pause and retry, then give up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::endpoint::{EndpointCache, ResolvedEndpoint};
use herald_core::event::{format_timestamp, from_unix_millis};
use herald_core::kafka::consumer::RecordHandler;
use herald_core::kafka::offsets::Outcome;
use herald_core::proto::Delivery;
use herald_core::signing;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::{Config, DispatcherError};

/// Most response-body bytes read from an endpoint (the rest is discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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
    let body = serde_json::to_vec(&WebhookBody {
        event_type: &delivery.event_type,
        timestamp: format_timestamp(from_unix_millis(delivery.event_timestamp_ms)),
        data: payload,
    })
    .map_err(|err| format!("the webhook body cannot be rendered: {err}"))?;
    Ok(PreparedWebhook {
        delivery,
        body: Bytes::from(body),
    })
}

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Anything else.
    Failed {
        /// The status code, when a response arrived.
        status: Option<u16>,
        /// What went wrong, for logs and records.
        error: String,
    },
}

/// Delivers delivery records; one instance serves every in-flight record.
#[derive(Debug)]
pub struct Dispatcher {
    cache: EndpointCache,
    http: reqwest::Client,
    attempts: u32,
    retry_backoff: Duration,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Builds the HTTP client (pooled connections, no redirects).
    pub fn new(
        config: &Config,
        cache: EndpointCache,
        shutdown: CancellationToken,
    ) -> Result<Self, DispatcherError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(10)))
            // A redirect is an answer that is not 2xx: following it would
            // send the signed payload somewhere nobody registered.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            cache,
            http,
            attempts: config.attempts,
            retry_backoff: config.retry_backoff,
            shutdown,
        })
    }

    /// Finds the endpoint, waiting out Redis errors. `Err` means the process
    /// is stopping; `Ok(None)` that the endpoint does not exist.
    async fn endpoint(&self, id: &str) -> Result<Option<Arc<ResolvedEndpoint>>, Stopping> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.cache.lookup(id).await {
                Ok(found) => return Ok(found),
                Err(err) => {
                    tracing::warn!(endpoint_id = id, error = %err, "cannot look up endpoint; retrying")
                }
            }
            self.pause(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Sleeps, unless the process stops first.
    async fn pause(&self, delay: Duration) -> Result<(), Stopping> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Stopping),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Delivers one webhook: up to `attempts` signed POSTs.
    #[tracing::instrument(skip_all, fields(event_id = %webhook.delivery.event_id, endpoint_id = %webhook.delivery.endpoint_id))]
    async fn deliver(&self, webhook: PreparedWebhook) -> Outcome {
        for attempt in 1..=self.attempts {
            let endpoint = match self.endpoint(&webhook.delivery.endpoint_id).await {
                Ok(Some(endpoint)) => endpoint,
                Ok(None) => {
                    tracing::warn!("the endpoint no longer exists; the delivery is dropped");
                    return Outcome::Done;
                }
                Err(Stopping) => return Outcome::Abandoned,
            };
            if endpoint.endpoint.disabled {
                tracing::info!("the endpoint is disabled; the delivery is dropped");
                return Outcome::Done;
            }
            let started = Instant::now();
            match self.attempt(&endpoint, &webhook).await {
                AttemptResult::Delivered { status } => {
                    tracing::debug!(
                        attempt,
                        status,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "delivered"
                    );
                    return Outcome::Done;
                }
                AttemptResult::Failed { status, error } => {
                    tracing::warn!(attempt, status, %error, "delivery attempt failed");
                }
            }
            if attempt < self.attempts {
                let delay = self
                    .retry_backoff
                    .saturating_mul(1 << (attempt - 1).min(16));
                if self.pause(delay).await.is_err() {
                    return Outcome::Abandoned;
                }
            }
        }
        tracing::error!(
            attempts = self.attempts,
            "delivery failed on every attempt; giving up"
        );
        Outcome::Done
    }

    /// One signed POST.
    pub async fn attempt(
        &self,
        endpoint: &ResolvedEndpoint,
        webhook: &PreparedWebhook,
    ) -> AttemptResult {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let msg_id = &webhook.delivery.event_id;
        let signature = signing::sign(&endpoint.secret, msg_id, timestamp, &webhook.body);
        let mut request = self.http.post(&endpoint.endpoint.url);
        // Custom headers first, so Herald's own always win.
        for (name, value) in &endpoint.endpoint.headers {
            request = request.header(name, value);
        }
        let request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(webhook.body.clone());
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read (a bounded part of) the body so the connection can be
                // reused.
                let mut read = 0usize;
                while read < MAX_RESPONSE_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                if response.status().is_success() {
                    AttemptResult::Delivered { status }
                } else {
                    AttemptResult::Failed {
                        status: Some(status),
                        error: format!("the endpoint answered {status}"),
                    }
                }
            }
            Err(err) => AttemptResult::Failed {
                status: None,
                error: describe_http_error(&err),
            },
        }
    }
}

/// The process is shutting down.
#[derive(Debug)]
struct Stopping;

/// A short, precise description of a failed request.
fn describe_http_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        let mut source: Option<&dyn std::error::Error> = Some(err);
        let mut innermost = err.to_string();
        while let Some(s) = source {
            innermost = s.to_string();
            source = s.source();
        }
        format!("cannot connect: {innermost}")
    } else {
        err.to_string()
    }
}

impl RecordHandler for Dispatcher {
    async fn handle(&self, record: OwnedMessage) -> Outcome {
        let prepared = record
            .payload()
            .ok_or_else(|| "the record has no value".to_owned())
            .and_then(prepare);
        match prepared {
            Ok(webhook) => self.deliver(webhook).await,
            Err(reason) => {
                tracing::warn!(
                    topic = record.topic(),
                    partition = record.partition(),
                    offset = record.offset(),
                    %reason,
                    "skipping a malformed delivery record"
                );
                Outcome::Done
            }
        }
    }
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
