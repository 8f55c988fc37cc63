//! Dead letters: deliveries Herald gave up on, and records it could not read,
//! written to `herald.dlq` with their reason so that nothing disappears
//! silently. herald-ingest indexes them for the API and can replay them.

use crate::kafka::Producer;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::event::{hex, unix_millis};
use crate::kafka::{OutgoingRecord, Stopping, produce_until_acked};
use crate::proto::{DeadLetter, Delivery};

/// Why a record became a dead letter.
pub mod reason {
    /// Every attempt of the retry schedule failed.
    pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";
    /// The endpoint was deleted before the delivery succeeded.
    pub const ENDPOINT_DELETED: &str = "endpoint_deleted";
    /// The endpoint is disabled.
    pub const ENDPOINT_DISABLED: &str = "endpoint_disabled";
    /// The endpoint answered 410 Gone (and was disabled).
    pub const ENDPOINT_GONE: &str = "endpoint_gone";
    /// The endpoint's stored configuration cannot be used (e.g. its secret
    /// cannot sign).
    pub const ENDPOINT_UNUSABLE: &str = "endpoint_unusable";
    /// The delivery was still being put off (breaker open, rate limit)
    /// `HERALD_MAX_DELIVERY_AGE` after its first attempt, or after its
    /// creation when it never had one.
    pub const ENDPOINT_UNAVAILABLE: &str = "endpoint_unavailable";
    /// A record on one of Herald's topics could not be decoded.
    pub const MALFORMED_RECORD: &str = "malformed_record";
    /// An event on `herald.events` names an application that does not
    /// exist.
    pub const APPLICATION_NOT_FOUND: &str = "application_not_found";
    /// The outbound address policy refuses the endpoint's destination (an
    /// internal address, or plain http when https is required).
    pub const DESTINATION_REFUSED: &str = "destination_refused";
}

/// A dead letter for a record that could not be read at all.
pub fn for_malformed_record(record: &OwnedMessage, detail: impl Into<String>) -> DeadLetter {
    for_record(record, reason::MALFORMED_RECORD, detail)
}

/// A dead letter for a whole record (not one delivery of it), kept as it
/// was read, with its reason.
pub fn for_record(record: &OwnedMessage, why: &str, detail: impl Into<String>) -> DeadLetter {
    let position = format!(
        "{}/{}/{}",
        record.topic(),
        record.partition(),
        record.offset()
    );
    let digest = Sha256::digest(position.as_bytes());
    DeadLetter {
        id: format!("dl_{}", hex(&digest[..16])),
        delivery: None,
        reason: why.to_owned(),
        detail: detail.into(),
        dead_at_ms: now_ms(),
        source_topic: record.topic().to_owned(),
        source_partition: record.partition(),
        source_offset: record.offset(),
        raw_record: record.payload().unwrap_or_default().to_vec(),
    }
}

/// A dead letter for a delivery that was given up on.
pub fn for_delivery(
    delivery: Delivery,
    reason: &str,
    detail: impl Into<String>,
    source: &OwnedMessage,
) -> DeadLetter {
    DeadLetter {
        id: delivery.delivery_id.clone(),
        delivery: Some(delivery),
        reason: reason.to_owned(),
        detail: detail.into(),
        dead_at_ms: now_ms(),
        source_topic: source.topic().to_owned(),
        source_partition: source.partition(),
        source_offset: source.offset(),
        raw_record: Vec::new(),
    }
}

fn now_ms() -> i64 {
    unix_millis(time::OffsetDateTime::now_utc())
}

/// Writes dead letters to `herald.dlq`.
#[derive(Clone)]
pub struct DeadLetterWriter {
    producer: Producer,
    topic: String,
    queue_timeout: std::time::Duration,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .finish()
    }
}

impl DeadLetterWriter {
    /// Writes to `topic` with `producer`.
    pub fn new(producer: Producer, topic: String, queue_timeout: std::time::Duration) -> Self {
        Self {
            producer,
            topic,
            queue_timeout,
        }
    }

    /// Writes one dead letter, keyed by endpoint id (or the letter's id for
    /// records that name no endpoint), and logs it. Returns once the broker
    /// acknowledged it.
    pub async fn write(
        &self,
        letter: &DeadLetter,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopping> {
        use prost::Message as _;
        let key = letter
            .delivery
            .as_ref()
            .map_or(letter.id.as_str(), |d| d.endpoint_id.as_str());
        let value = letter.encode_to_vec();
        produce_until_acked(
            &self.producer,
            OutgoingRecord {
                topic: &self.topic,
                key,
                value: &value,
                headers: &[],
            },
            self.queue_timeout,
            shutdown,
        )
        .await?;
        crate::metrics::metrics()
            .dead_letters
            .get_or_create(&crate::metrics::label("reason", letter.reason.clone()))
            .inc();
        tracing::warn!(
            dead_letter = %letter.id,
            reason = %letter.reason,
            detail = %letter.detail,
            source_topic = %letter.source_topic,
            source_partition = letter.source_partition,
            source_offset = letter.source_offset,
            "dead-lettered"
        );
        Ok(())
    }
}
