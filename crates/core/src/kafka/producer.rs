//! Herald's Kafka producer: a record's `send` resolves once the broker has
//! acknowledged it (or it failed), as rdkafka's `FutureProducer` does, but
//! with a polling thread that costs nothing while nothing is produced.
//!
//! Why not `FutureProducer`: its thread calls `BaseProducer::poll(100 ms)`
//! in a loop, and rdkafka 0.39's poll waits in whole milliseconds (the
//! remaining time is truncated) until an `Instant` deadline, so the last
//! fraction of a millisecond of every call is spent polling with a zero
//! timeout, over and over. Measured on an idle stack: about 0.9 % of a core
//! per producer, most of it in `clock_gettime`, which was most of an idle
//! Herald's CPU. Here the thread polls in 10 s calls: delivery reports
//! still arrive at once (a poll returns each event as it comes), and the
//! spin happens once per call instead of ten times a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer as _, ProducerContext,
};
use tokio::sync::oneshot;

/// How long one call of the polling thread waits for delivery reports. It
/// bounds how long the thread outlives its producer, nothing else.
const POLL_CALL: Duration = Duration::from_secs(10);

/// How long a `send` that finds the producer's queue full waits before it
/// tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(50);

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The partition.
    pub partition: i32,
    /// The record's offset in it.
    pub offset: i64,
}

type AckSender = oneshot::Sender<KafkaResult<Acked>>;

/// Hands each delivery report to the `send` waiting for it.
#[derive(Debug, Default)]
pub struct AckContext;

/// librdkafka's logs go through the `log` crate, as with rdkafka's default
/// context.
impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<AckSender>;

    fn delivery(&self, result: &DeliveryResult<'_>, sender: Self::DeliveryOpaque) {
        let ack = match result {
            Ok(message) => Ok(Acked {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((err, _)) => Err(err.clone()),
        };
        // The sender's future may have been dropped; nobody waits then.
        let _ = sender.send(ack);
    }
}

/// An idempotent producer whose sends can be awaited. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

struct Shared {
    base: Arc<BaseProducer<AckContext>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The thread sees it within one poll call and lets go of the
        // librdkafka handle; nothing waits for that here.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates the producer and its polling thread.
    pub fn from_config(config: &ClientConfig) -> KafkaResult<Producer> {
        let base = Arc::new(BaseProducer::from_config_and_context(config, AckContext)?);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-acks".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        base.poll(POLL_CALL);
                    }
                })
                .map_err(|_| {
                    KafkaError::ClientCreation("cannot start the polling thread".into())
                })?;
        }
        Ok(Producer {
            shared: Arc::new(Shared { base, stop }),
        })
    }

    /// Queues `record` and waits for the broker's answer. A full queue is
    /// waited out for up to `queue_timeout`; after that the send fails with
    /// `QueueFull`.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> KafkaResult<Acked>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        let (sender, ack) = oneshot::channel();
        let mut base_record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(sender),
        };
        loop {
            match self.shared.base.send(base_record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
                    if started.elapsed() < queue_timeout =>
                {
                    base_record = record;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
        ack.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// The librdkafka client, for metadata requests.
    pub fn client(&self) -> &Client<AckContext> {
        self.shared.base.client()
    }
}
