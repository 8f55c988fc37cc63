//! What an attempt leaves in Redis, written in batches: its entry in the
//! attempt log and, for a success, its count in the endpoint's circuit
//! breaker. Every delivery of the replica hands its attempt to one
//! [`Recorder`]; a task gathers what arrives over [`GATHER`] and writes it
//! in one round trip: the attempt log's pipeline
//! ([`AttemptLog::write`]) beside one script call for all the
//! successes ([`Breakers::record_successes`]).
//!
//! Written one by one, each delivery cost a round trip of its own (the
//! breaker's script and the attempt log's seven commands): about a fifth of
//! the dispatcher's CPU and most of Redis's. Batched, an endpoint's attempts
//! go into its log in one command, and its successes into its breaker in
//! one script step.
//!
//! A failure's breaker record is not batched: it may open the breaker, and
//! the deliveries that follow must see that at once
//! ([`crate::deliver`] writes it itself); nor is a probe's success, which
//! closes the breaker for the deliveries waiting behind it. A success
//! written late carries when it happened, and a failure recorded since
//! outranks it ([`Breakers::record_successes`]), so the breaker's run of
//! failures stays in order.
//!
//! Nothing waits for a batch: a delivery goes on (its offset is stored) as
//! soon as its attempt is queued. The attempt log is best effort, as it was:
//! the queue is bounded ([`QUEUE`]), and when Redis falls behind and it
//! fills, further log entries are dropped and counted
//! (`herald_attempt_records_dropped_total`), so that a slow Redis neither
//! holds up deliveries nor grows the replica's memory. A success that finds
//! the queue full is written to its breaker by the delivery itself, so the
//! breakers never see the failures without the successes between them. On shutdown the task
//! writes what is queued before the process exits
//! ([`RecorderTask::finish`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::attempt_log::{AttemptLog, LoggedAttempt};
use herald_core::circuit::{Breakers, Transition};
use herald_core::metrics::metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deliver::admission::RedisHealth;
use crate::deliver::{now_ms, record_transition};

/// How long the task gathers attempts before writing them: long enough
/// that a busy replica writes tens to hundreds per round trip, short
/// enough that the log reads as current.
pub const GATHER: Duration = Duration::from_millis(5);

/// Most attempts written in one round trip.
const MAX_BATCH: usize = 1024;

/// Most attempts queued for writing (about 0.5 KiB each, 2 MiB together:
/// 10,000 took the dispatcher within a few MiB of its 64 MiB under a
/// backlog). At 20,000 deliveries a second that is 200 ms of Redis being
/// slow.
pub const QUEUE: usize = 4096;

/// One attempt to record.
#[derive(Debug)]
struct Entry {
    attempt: LoggedAttempt,
    /// When the attempt ended, Unix milliseconds.
    ended_at_ms: i64,
    /// Whether it counts as a success in the endpoint's breaker (a failure
    /// was recorded there already, and a refused destination says nothing
    /// of the endpoint's health).
    breaker_success: bool,
}

/// Hands attempts to the writing task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Entry>,
}

/// The writing task, to be finished on shutdown.
#[derive(Debug)]
pub struct RecorderTask {
    handle: tokio::task::JoinHandle<()>,
    done: CancellationToken,
}

/// Starts the task that writes what the returned [`Recorder`] is handed.
pub fn start(
    attempt_log: AttemptLog,
    breakers: Breakers,
    redis: Arc<RedisHealth>,
) -> (Recorder, RecorderTask) {
    let (queue, received) = mpsc::channel(QUEUE);
    let done = CancellationToken::new();
    let writer = Writer {
        attempt_log,
        breakers,
        redis,
    };
    let handle = tokio::spawn(writer.run(received, done.clone()));
    (Recorder { queue }, RecorderTask { handle, done })
}

impl Recorder {
    /// Queues `attempt` for the attempt log, and for the endpoint's breaker
    /// as a success when `breaker_success`. Never waits. Returns `false`
    /// when the queue was full: the log entry is dropped (and counted), and
    /// a success must be written to the breaker by the caller.
    #[must_use]
    pub fn record(&self, attempt: LoggedAttempt, ended_at_ms: i64, breaker_success: bool) -> bool {
        let entry = Entry {
            attempt,
            ended_at_ms,
            breaker_success,
        };
        let queued = self.queue.try_send(entry).is_ok();
        if !queued {
            metrics().attempt_records_dropped.inc();
        }
        queued
    }
}

impl RecorderTask {
    /// Writes what is still queued (no more than `limit` spent on it), then
    /// ends the task. Call once no delivery is left in flight.
    pub async fn finish(self, limit: Duration) {
        self.done.cancel();
        if tokio::time::timeout(limit, self.handle).await.is_err() {
            tracing::warn!(
                "the last attempt records were not written within {limit:?}: Redis is slow or away"
            );
        }
    }
}

struct Writer {
    attempt_log: AttemptLog,
    breakers: Breakers,
    redis: Arc<RedisHealth>,
}

impl Writer {
    async fn run(self, mut received: mpsc::Receiver<Entry>, done: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                got = received.recv_many(&mut batch, MAX_BATCH) => if got == 0 { return },
                () = done.cancelled() => break,
            }
            // Gather for a little longer, unless the batch is full already
            // or the process is stopping.
            if batch.len() < MAX_BATCH {
                tokio::select! {
                    () = tokio::time::sleep(GATHER) => {}
                    () = done.cancelled() => {}
                }
                while batch.len() < MAX_BATCH
                    && let Ok(entry) = received.try_recv()
                {
                    batch.push(entry);
                }
            }
            self.write(&mut batch).await;
        }
        // Stopping: no delivery is in flight any more; write the rest.
        received.close();
        while let Some(entry) = received.recv().await {
            batch.push(entry);
            if batch.len() == MAX_BATCH {
                self.write(&mut batch).await;
            }
        }
        self.write(&mut batch).await;
    }

    /// Writes `batch` in one round trip and empties it.
    async fn write(&self, batch: &mut Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        let mut attempts = Vec::with_capacity(batch.len());
        // Per endpoint: how many succeeded, and when the latest ended.
        let mut successes: HashMap<std::sync::Arc<str>, (u32, i64)> = HashMap::new();
        for entry in batch.drain(..) {
            if entry.breaker_success {
                let (count, latest) = successes
                    .entry(entry.attempt.endpoint_id.clone())
                    .or_default();
                *count += 1;
                *latest = (*latest).max(entry.ended_at_ms);
            }
            attempts.push(entry.attempt);
        }
        let successes: Vec<(&str, u32, i64)> = successes
            .iter()
            .map(|(id, (count, latest))| (&**id, *count, *latest))
            .collect();
        let now = now_ms();
        // Two requests on one multiplexed connection: one round trip.
        let (logged, closed) = tokio::join!(
            self.attempt_log.write(&attempts, now),
            self.breakers.record_successes(&successes, now)
        );
        match (logged, closed) {
            (Ok(()), Ok(closed)) => {
                self.redis.answers();
                for endpoint_id in closed {
                    record_transition(&endpoint_id, Transition::Closed);
                    tracing::info!(%endpoint_id, "circuit closed: the endpoint answers again");
                }
            }
            (Err(err), _) | (_, Err(err)) => self.redis.fails(&err),
        }
    }
}
