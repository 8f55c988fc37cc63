//! Reads one delivery record back from Kafka by its place, for the event
//! page's payload.
//!
//! Herald keeps no copy of a payload in Redis: the attempt log names the
//! record each attempt was made from ([`herald_core::attempt_log::RecordSource`])
//! and the record, in `herald.deliveries` or a retry tier, holds the event
//! as it was accepted, for as long as the topic's retention keeps it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::attempt_log::RecordSource;
use herald_core::config::KafkaConfig;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message as _, Offset, TopicPartitionList};

/// How long a lookup waits for its record.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// An event as its delivery record holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its type.
    pub event_type: String,
    /// Its payload, as accepted.
    pub payload_json: String,
    /// Its timestamp (Unix milliseconds).
    pub timestamp_ms: i64,
}

/// One consumer, created on first use, reading records by offset.
#[derive(Clone)]
pub struct RecordReader {
    kafka: KafkaConfig,
    consumer: Arc<Mutex<Option<BaseConsumer>>>,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader").finish_non_exhaustive()
    }
}

impl RecordReader {
    /// A reader of the brokers in `kafka`.
    pub fn new(kafka: KafkaConfig) -> Self {
        Self {
            kafka,
            consumer: Arc::new(Mutex::new(None)),
        }
    }

    /// Event `event_id` of `application_id` in the delivery record at
    /// `source`: `Ok(None)` when the record is gone (past the topic's
    /// retention) or holds anything else (a topic deleted and created again
    /// starts its offsets over).
    pub async fn read(
        &self,
        source: &RecordSource,
        application_id: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, String> {
        let reader = self.clone();
        let source = source.clone();
        let (application_id, event_id) = (application_id.to_owned(), event_id.to_owned());
        tokio::task::spawn_blocking(move || {
            reader.read_blocking(&source, &application_id, &event_id)
        })
        .await
        .map_err(|err| format!("the lookup failed: {err}"))?
    }

    fn read_blocking(
        &self,
        source: &RecordSource,
        application_id: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, String> {
        // One lookup at a time (the consumer is assigned to one place); a
        // second one meanwhile is told to try again rather than queue up
        // behind it and hold a blocking thread.
        let mut slot = match self.consumer.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(
                    "another payload lookup is running; reload the page in a moment".to_owned(),
                );
            }
        };
        if slot.is_none() {
            let consumer: BaseConsumer =
                herald_core::kafka::reader_config(&self.kafka, "herald-ingest-console")
                    .create()
                    .map_err(|err| format!("cannot create a Kafka consumer: {err}"))?;
            *slot = Some(consumer);
        }
        let consumer = slot.as_ref().expect("just created");
        let mut place = TopicPartitionList::new();
        place
            .add_partition_offset(
                &source.topic,
                source.partition,
                Offset::Offset(source.offset),
            )
            .map_err(|err| err.to_string())?;
        consumer.assign(&place).map_err(|err| err.to_string())?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(err)) => return Err(format!("Kafka: {err}")),
                Some(Ok(message)) => {
                    if message.topic() != source.topic || message.partition() != source.partition {
                        continue;
                    }
                    if message.offset() < source.offset {
                        continue;
                    }
                    if message.offset() > source.offset {
                        // The record itself is gone (deleted by retention).
                        return Ok(None);
                    }
                    let delivery = message
                        .payload()
                        .and_then(|bytes| herald_core::proto::Delivery::decode(bytes).ok());
                    return Ok(delivery
                        .filter(|d| d.event_id == event_id && d.application_id == application_id)
                        .map(|d| StoredEvent {
                            event_type: d.event_type,
                            payload_json: String::from_utf8_lossy(&d.payload_json).into_owned(),
                            timestamp_ms: d.event_timestamp_ms,
                        }));
                }
            }
        }
        Err("Kafka did not hand the record over in time".to_owned())
    }
}
