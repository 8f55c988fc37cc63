//! The at-least-once consumer loop shared by fan-out and the dispatchers.
//!
//! One dedicated thread polls Kafka; each record is handed to a tokio task,
//! with at most `max_in_flight` tasks at a time (a full window stops the
//! polling, which is the backpressure). A record's offset is stored only once
//! its task reports [`Outcome::Done`] and every earlier record of its
//! partition is done too ([`OffsetTracker`]); librdkafka commits stored
//! offsets in the background.
//!
//! On a rebalance that takes partitions away, and on shutdown, the loop stops
//! taking records, waits (up to the drain timeout) for the in-flight ones,
//! stores their offsets and commits synchronously before letting go, so the
//! next owner of a partition starts exactly where this one finished.
//!
//! Polling happens on a plain thread rather than in async code because
//! librdkafka runs rebalance callbacks inside `poll`, and those callbacks must
//! block until in-flight work is drained.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::offsets::{OffsetTracker, Outcome, TopicPartition};
use crate::config::KafkaConfig;

/// How long closing the consumer (leaving the group) may take after the
/// drain.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What to do with each record.
pub trait RecordHandler: Send + Sync + 'static {
    /// Processes one record. Return [`Outcome::Done`] only once its effects
    /// are durable.
    fn handle(&self, record: OwnedMessage) -> impl Future<Output = Outcome> + Send;
}

/// How to run a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Consumer group id.
    pub group_id: String,
    /// Name reported to the broker.
    pub client_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Most records processed at once.
    pub max_in_flight: usize,
    /// How long a revoke or shutdown waits for in-flight records.
    pub drain_timeout: Duration,
}

/// Consumes `settings.topics` until `shutdown`, handing every record to
/// `handler`. Returns once in-flight work is drained and offsets committed.
pub async fn run<H: RecordHandler>(
    kafka: &KafkaConfig,
    settings: ConsumerSettings,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let tracker = Arc::new(OffsetTracker::new());
    let context = TrackingContext {
        tracker: tracker.clone(),
        drain_timeout: settings.drain_timeout,
    };
    let consumer: BaseConsumer<TrackingContext> =
        super::consumer_config(kafka, &settings.group_id, &settings.client_id)
            .create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = %settings.group_id, topics = ?settings.topics, "consumer started");

    let drain_timeout = settings.drain_timeout;
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("poll-{}", settings.group_id))
        .spawn(move || {
            poll_loop(&consumer, &settings, &tracker, handler, &runtime, &shutdown);
            finish(&consumer, &tracker, settings.drain_timeout);
            // Dropping the consumer leaves the group cleanly.
            drop(consumer);
            let _ = done_tx.send(());
        })
        .map_err(|_| KafkaError::Canceled)?;
    // Leaving the group needs the broker; if it is gone, do not hang on it.
    let close_limit = drain_timeout + CLOSE_GRACE;
    match tokio::time::timeout(close_limit, done_rx).await {
        Ok(_) => tracing::info!("consumer stopped"),
        Err(_) => tracing::warn!(
            "consumer did not close within {close_limit:?} (is the broker reachable?); stopping anyway"
        ),
    }
    Ok(())
}

fn poll_loop<H: RecordHandler>(
    consumer: &BaseConsumer<TrackingContext>,
    settings: &ConsumerSettings,
    tracker: &Arc<OffsetTracker>,
    handler: Arc<H>,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) {
    let window = Arc::new(Semaphore::new(settings.max_in_flight));
    while !shutdown.is_cancelled() {
        store_releasable(consumer, tracker, None);
        let record = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(record)) => record,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "Kafka consumer error");
                continue;
            }
        };
        // Wait for room in the window; while waiting nothing is polled, which
        // is what holds back a consumer that cannot keep up.
        let permit = runtime.block_on(async {
            tokio::select! {
                permit = window.clone().acquire_owned() => permit.ok(),
                _ = shutdown.cancelled() => None,
            }
        });
        let Some(permit) = permit else { break };
        let Some(ticket) = tracker.start(record.topic(), record.partition(), record.offset())
        else {
            continue;
        };
        let record = detach(&record);
        let handler = handler.clone();
        let tracker = tracker.clone();
        runtime.spawn(async move {
            let outcome = handler.handle(record).await;
            tracker.finish(ticket, outcome);
            drop(permit);
        });
    }
}

fn detach(record: &BorrowedMessage<'_>) -> OwnedMessage {
    record.detach()
}

/// Shutdown: wait for in-flight records, store and commit their offsets.
fn finish(
    consumer: &BaseConsumer<TrackingContext>,
    tracker: &OffsetTracker,
    drain_timeout: Duration,
) {
    let in_flight = tracker.in_flight(None);
    if in_flight > 0 {
        tracing::info!(in_flight, "draining in-flight records before stopping");
    }
    if !tracker.wait_idle(None, drain_timeout) {
        tracing::warn!(
            still_in_flight = tracker.in_flight(None),
            "drain timeout reached; unfinished records will be processed again by the next owner"
        );
    }
    store_releasable(consumer, tracker, None);
    commit_sync(consumer);
}

fn store_releasable(
    consumer: &BaseConsumer<TrackingContext>,
    tracker: &OffsetTracker,
    only: Option<&[TopicPartition]>,
) {
    for ((topic, partition), done_through) in tracker.take_releasable(only) {
        // `store_offset` commits `done_through + 1`: the next record to read.
        if let Err(err) = consumer.store_offset(&topic, partition, done_through) {
            tracing::warn!(%topic, partition, offset = done_through, error = %err, "cannot store offset");
        }
    }
}

fn commit_sync(consumer: &BaseConsumer<TrackingContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing new to commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(error = %err, "offset commit failed"),
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

/// Rebalance hooks: start tracking assigned partitions; drain and commit
/// revoked ones before they move to another consumer.
struct TrackingContext {
    tracker: Arc<OffsetTracker>,
    drain_timeout: Duration,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = partitions(list);
                tracing::info!(partitions = assigned.len(), "partitions assigned");
                self.tracker.assign(&assigned);
            }
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                let in_flight = self.tracker.in_flight(Some(&revoked));
                tracing::info!(
                    partitions = revoked.len(),
                    in_flight,
                    "partitions revoked; draining"
                );
                if consumer.assignment_lost() {
                    // Another consumer may already own them: storing offsets
                    // now could skip its work.
                    tracing::warn!("assignment lost; in-flight records will be processed again");
                } else {
                    if !self.tracker.wait_idle(Some(&revoked), self.drain_timeout) {
                        tracing::warn!("drain timeout reached during rebalance");
                    }
                    store_releasable(consumer, &self.tracker, Some(&revoked));
                    commit_sync(consumer);
                }
                self.tracker.revoke(&revoked);
            }
            Rebalance::Error(err) => tracing::error!(error = %err, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "background offset commit failed"),
        }
    }
}
