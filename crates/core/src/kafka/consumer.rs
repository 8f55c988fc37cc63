//! The at-least-once consumer loop shared by fan-out and the dispatchers.
//!
//! One dedicated thread polls Kafka; each record is handed to a tokio task,
//! with at most `max_in_flight` tasks at a time. A record that cannot start
//! — not due yet (a retry tier), or the window is full for longer than
//! [`ROOM_WAIT`] — holds its partition back ([`super::holds`]): the record
//! is kept in memory and the partition paused, while the thread goes on
//! polling, so that the group never takes the consumer out for not polling
//! (`max.poll.interval.ms`) however long the window stays full. A record's offset is stored only once
//! its task reports [`Outcome::Done`] and every earlier record of its
//! partition is done too ([`OffsetTracker`]); the polling thread commits
//! stored offsets every [`COMMIT_INTERVAL`], one commit at a time.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::holds::{Admit, GivenUp, Holds, Until};
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

    /// When the record may be processed, in Unix milliseconds; `None` means
    /// now. A record that is not due yet holds its partition back until it
    /// is, so waiting costs neither a busy loop nor a slot of the in-flight
    /// window, and other partitions go on.
    fn due_at(&self, record: &OwnedMessage) -> Option<i64> {
        let _ = record;
        None
    }
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
    /// How long the broker may hold an empty fetch:
    /// [`crate::config::KafkaConfig::hot_fetch_wait`] or
    /// [`super::RELAXED_FETCH_WAIT`].
    pub fetch_wait: Duration,
    /// How long a revoke or shutdown waits for in-flight records.
    pub drain_timeout: Duration,
    /// Cancelled when a shutdown's drain runs out of time: handlers watch it
    /// (not the shutdown request itself) to give up waits, so that a stop
    /// request lets in-flight records finish.
    pub abandon: CancellationToken,
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
    let holds: SharedHolds = Arc::new(Mutex::new(Holds::new()));
    let context = TrackingContext {
        tracker: tracker.clone(),
        holds: holds.clone(),
        drain_timeout: settings.drain_timeout,
        group: settings.group_id.clone(),
    };
    let consumer: BaseConsumer<TrackingContext> = super::consumer_config(
        kafka,
        &settings.group_id,
        &settings.client_id,
        settings.fetch_wait,
    )
    .create_with_context(context)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = %settings.group_id, topics = ?settings.topics, "consumer started");

    let drain_timeout = settings.drain_timeout;
    let stop_requested = shutdown.clone();
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("poll-{}", settings.group_id))
        .spawn(move || {
            poll_loop(
                &consumer, &settings, &tracker, &holds, handler, &runtime, &shutdown,
            );
            finish(
                &consumer,
                &tracker,
                settings.drain_timeout,
                &settings.abandon,
            );
            // Dropping the consumer leaves the group cleanly.
            drop(consumer);
            let _ = done_tx.send(());
        })
        .map_err(|_| KafkaError::Canceled)?;
    let mut done_rx = done_rx;
    tokio::select! {
        _ = &mut done_rx => {
            tracing::info!("consumer stopped");
            return Ok(());
        }
        _ = stop_requested.cancelled() => {}
    }
    // Draining and leaving the group need the broker; if it is gone, do not
    // hang on it.
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
    holds: &SharedHolds,
    handler: Arc<H>,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) {
    let window = Window {
        slots: Arc::new(Semaphore::new(settings.max_in_flight)),
        in_flight: crate::metrics::metrics()
            .in_flight
            .get_or_create(&crate::metrics::label("group", settings.group_id.clone()))
            .clone(),
        tracker: tracker.clone(),
        handler,
        runtime: runtime.clone(),
        room_chunk: (settings.max_in_flight / 16).clamp(1, MAX_ROOM_CHUNK),
        spare: std::cell::RefCell::new(None),
        starting: std::cell::RefCell::new(Vec::with_capacity(SPAWN_BATCH)),
    };
    let mut idle_check = Instant::now() + IDLE_CHECK_INTERVAL;
    let mut empty_since: Option<Instant> = None;
    let mut next_commit = Instant::now() + COMMIT_INTERVAL;
    let mut uncommitted = false;
    let mut given_up = Vec::new();
    while !shutdown.is_cancelled() {
        uncommitted |= store_releasable(consumer, tracker, None);
        if uncommitted && Instant::now() >= next_commit {
            commit_sync(consumer);
            uncommitted = false;
            next_commit = Instant::now() + COMMIT_INTERVAL;
        }
        let (waiting_for_room, next_due) = {
            let mut holds = lock(holds);
            let room = window.slots.available_permits() > 0;
            given_up.extend(holds.release(consumer, Instant::now(), room, |record| {
                window.admit(record)
            }));
            (holds.waiting_for_room(), holds.next_due())
        };
        if !given_up.is_empty() {
            rejoin_after_giving_up(consumer, settings, tracker, holds, &mut given_up);
        }
        if Instant::now() >= idle_check {
            idle_check = Instant::now() + IDLE_CHECK_INTERVAL;
            rejoin_if_stranded(consumer, settings, &mut empty_since);
        }
        // Partitions waiting for room are resumed as soon as a record
        // finishes: poll without waiting, then wait for room instead.
        // A held record coming due cuts the wait short.
        // Records started but not yet handed to the workers go as soon as
        // nothing more is waiting in the queue (poll without waiting).
        let polled = consumer.poll(if waiting_for_room || window.has_starting() {
            Duration::ZERO
        } else {
            next_due.map_or(POLL_TIMEOUT, |due| {
                due.saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), POLL_TIMEOUT)
            })
        });
        let record = match polled {
            None => {
                if window.has_starting() {
                    window.hand_over();
                    continue;
                }
                // Idle: slots set aside for the next records go back.
                window.spare.take();
                if waiting_for_room {
                    window.wait_for_room(POLL_TIMEOUT, shutdown);
                }
                continue;
            }
            Some(Ok(record)) => record.detach(),
            Some(Err(err)) => {
                tracing::warn!(error = %err, "Kafka consumer error");
                continue;
            }
        };
        let now = Instant::now();
        let key: TopicPartition = (Arc::from(record.topic()), record.partition());
        {
            let mut holds = lock(holds);
            if holds.is_held(&key) {
                // Handed out before the pause took effect, or the pause
                // failed: it goes after the records kept before it.
                given_up.extend(holds.keep(consumer, record, now));
                continue;
            }
        }
        let record = match window.admit(record) {
            Admit::Started => continue,
            Admit::NotDue(due, record) => {
                lock(holds).hold(consumer, record, Until::Due(due), now);
                continue;
            }
            Admit::NoRoom(record) => record,
        };
        // The window is full. Under load a slot frees within milliseconds,
        // so wait for one a moment before holding anything back (a held
        // partition drops what was fetched ahead for it).
        match window.wait_for_room(ROOM_WAIT, shutdown) {
            Some(permit) => window.start(record, permit),
            None if shutdown.is_cancelled() => break,
            None => {
                // Still full: hold every partition back, and poll on (a
                // consumer that stops polling for longer than
                // max.poll.interval.ms is taken out of its group) until
                // records finish.
                tracing::debug!(
                    group = %settings.group_id,
                    in_flight = settings.max_in_flight,
                    "in-flight window full; partitions held until records finish"
                );
                let mut holds = lock(holds);
                holds.hold(consumer, record, Until::Room, now);
                if let Ok(assignment) = consumer.assignment() {
                    for partition in partitions(&assignment) {
                        holds.hold_empty(consumer, partition, now);
                    }
                }
            }
        }
    }
    // Stopping: what was started runs (the drain waits for it).
    window.hand_over();
}

/// The in-flight window: records being processed, at most
/// `max_in_flight` at once.
///
/// When it is full (a backlog), the poll thread waits for `room_chunk`
/// slots at once rather than one: waiting for one, it was woken for every
/// record that finished, and those wake-ups cost the dispatcher a sixth of
/// its CPU. The slots it got beyond the record's wait in `spare` for the
/// next records.
struct Window<H> {
    slots: Arc<Semaphore>,
    room_chunk: usize,
    /// Slots taken for the next records (only the poll thread uses them).
    spare: std::cell::RefCell<Option<OwnedSemaphorePermit>>,
    /// Records started since the queue was last found empty, handed to the
    /// workers together ([`Window::hand_over`]): spawned one by one as
    /// they were polled, each woke a parked worker, which parked again
    /// before the next came; a profile put most of the dispatcher's
    /// scheduling cost there.
    starting: std::cell::RefCell<Vec<Starting>>,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    tracker: Arc<OffsetTracker>,
    handler: Arc<H>,
    runtime: tokio::runtime::Handle,
}

impl<H: RecordHandler> Window<H> {
    /// Starts `record` if it is due and there is room; otherwise hands it
    /// back, saying why.
    fn admit(&self, record: OwnedMessage) -> Admit {
        if let Some(due_ms) = self.handler.due_at(&record) {
            let wait_ms = due_ms - unix_now_ms();
            if wait_ms > 0 {
                return Admit::NotDue(
                    Instant::now() + Duration::from_millis(wait_ms as u64),
                    record,
                );
            }
        }
        if let Some(permit) = self.take_spare() {
            self.start(record, permit);
            return Admit::Started;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.start(record, permit);
                Admit::Started
            }
            Err(_) => Admit::NoRoom(record),
        }
    }

    /// One of the slots set aside, if any is left.
    fn take_spare(&self) -> Option<OwnedSemaphorePermit> {
        let mut spare = self.spare.borrow_mut();
        let permits = spare.as_mut()?;
        if permits.num_permits() > 1 {
            permits.split(1)
        } else {
            spare.take()
        }
    }

    /// Waits up to `limit` for a free slot (not past `shutdown`).
    fn wait_for_room(
        &self,
        limit: Duration,
        shutdown: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        // The records waiting to be handed over hold slots: they must run
        // for any to free up.
        self.hand_over();
        let chunk = self.room_chunk as u32;
        let (permit, spare) = self.runtime.block_on(async {
            // A chunk of slots, if they free up soon (under a backlog they
            // do within a millisecond or two); otherwise the first slot.
            let slots = self.slots.clone();
            let wait = async move {
                if chunk > 1
                    && let Ok(Ok(mut permits)) =
                        tokio::time::timeout(CHUNK_WAIT, slots.clone().acquire_many_owned(chunk))
                            .await
                {
                    let one = permits.split(1)?;
                    return Some((one, Some(permits)));
                }
                let rest = limit.saturating_sub(if chunk > 1 {
                    CHUNK_WAIT
                } else {
                    Duration::ZERO
                });
                let one = tokio::time::timeout(rest, slots.acquire_owned())
                    .await
                    .ok()?
                    .ok()?;
                Some((one, None))
            };
            tokio::select! {
                got = wait => got.map_or((None, None), |(one, spare)| (Some(one), spare)),
                _ = shutdown.cancelled() => (None, None),
            }
        });
        if spare.is_some() {
            *self.spare.borrow_mut() = spare;
        }
        permit
    }

    /// Hands `record` to the handler on a task of its own.
    fn start(&self, record: OwnedMessage, permit: OwnedSemaphorePermit) {
        // A record of a partition no longer ours is dropped: its new owner
        // reads it.
        let Some(ticket) = self
            .tracker
            .start(record.topic(), record.partition(), record.offset())
        else {
            return;
        };
        self.in_flight.inc();
        let full = {
            let mut starting = self.starting.borrow_mut();
            starting.push(Starting {
                record,
                permit,
                ticket,
            });
            starting.len() >= SPAWN_BATCH
        };
        if full {
            self.hand_over();
        }
    }

    /// Whether records wait to be handed to the workers.
    fn has_starting(&self) -> bool {
        !self.starting.borrow().is_empty()
    }

    /// Spawns the started records' handlers, one task each, together.
    fn hand_over(&self) {
        let starting = std::mem::take(&mut *self.starting.borrow_mut());
        for Starting {
            record,
            permit,
            ticket,
        } in starting
        {
            let handler = self.handler.clone();
            let tracker = self.tracker.clone();
            let in_flight = self.in_flight.clone();
            self.runtime.spawn(async move {
                let outcome = handler.handle(record).await;
                tracker.finish(ticket, outcome);
                in_flight.dec();
                drop(permit);
            });
        }
    }
}

/// A record started (its offset tracked, its slot held) and not yet handed
/// to a worker.
struct Starting {
    record: OwnedMessage,
    permit: OwnedSemaphorePermit,
    ticket: super::offsets::Ticket,
}

/// Most records handed to the workers together.
const SPAWN_BATCH: usize = 16;

/// Partitions were given up ([`super::holds`]): nothing from their first
/// dropped record on may be stored, and the group is joined again so that
/// they are read again from their committed offsets.
fn rejoin_after_giving_up(
    consumer: &BaseConsumer<TrackingContext>,
    settings: &ConsumerSettings,
    tracker: &OffsetTracker,
    holds: &SharedHolds,
    given_up: &mut Vec<GivenUp>,
) {
    for gone in given_up.drain(..) {
        if let Some(from) = gone.from {
            tracker.block_from(&gone.partition.0, gone.partition.1, from);
        }
    }
    // Every other held partition lets go of its kept records too: nothing
    // from the first of them on may be stored, or a later record started
    // before the rejoin takes effect would commit past them.
    for ((topic, partition), first_kept) in lock(holds).clear() {
        tracker.block_from(&topic, partition, first_kept);
    }
    tracing::warn!(group = %settings.group_id, "rejoining the group to read given-up partitions again");
    consumer.unsubscribe();
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    if let Err(err) = consumer.subscribe(&topics) {
        tracing::error!(error = %err, "cannot subscribe again");
    }
}

/// How long one poll waits for a record.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a record waits for room in a full window before every
/// partition is held back.
pub const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Most slots the poll thread waits for at once in a full window (see
/// `Window`).
const MAX_ROOM_CHUNK: usize = 16;

/// How long it waits for a whole chunk before it waits for one slot.
const CHUNK_WAIT: Duration = Duration::from_millis(5);

/// How long abandoned handlers get to wind down after the drain timeout.
const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// How often stored offsets are committed while running.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often a consumer without partitions checks that it is not stranded.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long a consumer that cannot describe its group may own nothing
/// before it rejoins.
const STRANDED_AFTER: Duration = Duration::from_secs(15);

/// A consumer that owns no partitions although it is the only member of its
/// group is stranded: Tansu 0.6 keeps a crashed member as the group's leader
/// after its session expired, so the survivor's assignment stays empty until
/// the group is joined again. Re-subscribing rejoins it.
///
/// Where the broker describes groups (Kafka does), the check is exact: rejoin
/// only when no other member holds any partition, which never happens on a
/// healthy broker. Where it cannot (Tansu), a consumer that has owned nothing
/// for [`STRANDED_AFTER`] rejoins; on such a broker an idle extra replica
/// then rejoins that often, which is harmless at local-stack scale.
fn rejoin_if_stranded(
    consumer: &BaseConsumer<TrackingContext>,
    settings: &ConsumerSettings,
    empty_since: &mut Option<Instant>,
) {
    match consumer.assignment() {
        Ok(assignment) if assignment.count() == 0 => {}
        _ => {
            *empty_since = None;
            return;
        }
    }
    let since = *empty_since.get_or_insert_with(Instant::now);
    let stranded =
        match consumer.fetch_group_list(Some(&settings.group_id), Duration::from_secs(2)) {
            Ok(groups) => groups
                .groups()
                .iter()
                .find(|g| g.name() == settings.group_id)
                .is_some_and(|group| {
                    group.members().len() <= 1
                        && !group.members().iter().any(|member| {
                            member.assignment().is_some_and(assignment_has_partitions)
                        })
                }),
            Err(err) => {
                tracing::debug!(error = %err, "cannot describe the consumer group");
                since.elapsed() >= STRANDED_AFTER
            }
        };
    if !stranded {
        return;
    }
    tracing::warn!(
        group = %settings.group_id,
        "no partitions assigned and no other member seems to hold any; rejoining the group"
    );
    *empty_since = None;
    consumer.unsubscribe();
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    if let Err(err) = consumer.subscribe(&topics) {
        tracing::error!(error = %err, "cannot subscribe again");
    }
}

/// Whether a consumer-protocol assignment (version, then topics with their
/// partitions) names at least one partition.
fn assignment_has_partitions(bytes: &[u8]) -> bool {
    // version: i16, topic count: i32, then per topic: name (i16 length +
    // bytes) and partition count (i32) followed by the partitions.
    let read_i32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(topics) = read_i32(2) else {
        return false;
    };
    let mut at = 6;
    for _ in 0..topics.max(0) {
        let Some(len) = bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
        else {
            return false;
        };
        at += 2 + len.max(0) as usize;
        match read_i32(at) {
            Some(partitions) if partitions > 0 => return true,
            Some(partitions) => at += 4 + 4 * partitions.max(0) as usize,
            None => return false,
        }
    }
    false
}

/// The held partitions, shared with the rebalance hooks.
type SharedHolds = Arc<Mutex<Holds>>;

fn lock(holds: &SharedHolds) -> MutexGuard<'_, Holds> {
    holds
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now_ms() -> i64 {
    crate::event::unix_millis(time::OffsetDateTime::now_utc())
}

/// Shutdown: wait for in-flight records, store and commit their offsets.
fn finish(
    consumer: &BaseConsumer<TrackingContext>,
    tracker: &OffsetTracker,
    drain_timeout: Duration,
    abandon: &CancellationToken,
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
        // Let handlers give up their waits, and record what they finish.
        abandon.cancel();
        tracker.wait_idle(None, ABANDON_GRACE);
    }
    store_releasable(consumer, tracker, None);
    commit_sync(consumer);
    log_committed(consumer);
}

/// Logs (at debug level) the offsets the broker holds for this consumer's
/// partitions: what the next owner will start from.
fn log_committed(consumer: &BaseConsumer<TrackingContext>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Ok(committed) = consumer.committed(Duration::from_secs(2)) {
        let positions: Vec<String> = committed
            .elements()
            .iter()
            .map(|e| format!("{}/{}={:?}", e.topic(), e.partition(), e.offset()))
            .collect();
        tracing::debug!(?positions, "committed offsets");
    }
}

/// Stores every offset the tracker releases; returns whether there was any.
fn store_releasable(
    consumer: &BaseConsumer<TrackingContext>,
    tracker: &OffsetTracker,
    only: Option<&[TopicPartition]>,
) -> bool {
    let releasable = tracker.take_releasable(only);
    let any = !releasable.is_empty();
    for ((topic, partition), done_through) in releasable {
        // `store_offset` commits `done_through + 1`: the next record to read.
        if let Err(err) = consumer.store_offset(&topic, partition, done_through) {
            tracing::warn!(%topic, partition, offset = done_through, error = %err, "cannot store offset");
        }
    }
    any
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
    holds: SharedHolds,
    drain_timeout: Duration,
    /// The consumer group, named in rebalance logs (ingest runs a consumer
    /// beside its HTTP server).
    group: String,
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = &crate::metrics::metrics().consumer_lag;
        let mut total = None;
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1 is librdkafka's "unknown"; partition -1 its internal
                // unassigned-messages queue.
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                lag.get_or_create(&vec![
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ])
                .set(p.consumer_lag);
                *total.get_or_insert(0) += p.consumer_lag;
            }
        }
        // No partition with a known lag (none assigned any more): none.
        crate::stats::consumer_lag(&self.group, total.unwrap_or(0));
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = partitions(list);
                tracing::info!(group = %self.group, partitions = assigned.len(), "partitions assigned");
                self.tracker.assign(&assigned);
            }
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                let in_flight = self.tracker.in_flight(Some(&revoked));
                tracing::info!(
                    group = %self.group,
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
                    log_committed(consumer);
                }
                self.tracker.revoke(&revoked);
                lock(&self.holds).forget(&revoked);
            }
            Rebalance::Error(err) => tracing::error!(error = %err, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // A partition that comes back must not stay paused from an earlier
        // assignment.
        if let Rebalance::Assign(list) = rebalance
            && let Err(err) = consumer.resume(list)
        {
            tracing::warn!(error = %err, "cannot resume assigned partitions");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "background offset commit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assignment_has_partitions;

    #[test]
    fn assignments_are_read_from_the_consumer_protocol() {
        // version 1, one topic "t" with partitions [0, 3], no user data.
        let owned = [
            0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 255, 255, 255, 255,
        ];
        assert!(assignment_has_partitions(&owned));
        // version 1, no topics.
        assert!(!assignment_has_partitions(&[
            0, 1, 0, 0, 0, 0, 255, 255, 255, 255
        ]));
        // one topic with no partitions.
        assert!(!assignment_has_partitions(&[
            0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 0
        ]));
        assert!(!assignment_has_partitions(&[]));
    }
}
