//! The delivery-attempt log: every HTTP attempt, kept in Redis for a bounded
//! time and number, so that operators can answer "what happened to this
//! event" and "what is this endpoint answering".
//!
//! Redis layout, under the key prefix:
//! - `attempts:batch:{batch id}`: a hash of the attempts one dispatcher
//!   wrote together (every few milliseconds): one field per event
//!   (`{application id}.{event id}`) holding that event's records of the
//!   batch (JSON, one per line), one per endpoint (`ep {endpoint id}`)
//!   listing its attempts in the batch (`{start ms} {attempt} {event}`, one
//!   per line), and `#`, how many records it holds; expiring
//!   [`EXPIRY_GRACE`] after the retention period (so that the trim still
//!   finds it to count when its index entry leaves);
//! - `attempts:batches`: the batches by the time they were written;
//! - `attempts:by_event`: which batches hold an event's records, as
//!   `{event} {written ms, 13 digits} {batch id}` members of one score, read
//!   by lexicographic range, newest batch first, until a page is certain;
//! - `attempts:endpoint:{endpoint id}`: sorted set of the batches that hold
//!   the endpoint's attempts, each scored by the latest start among them;
//!   trimmed to the newest `max_per_endpoint` batches and to the retention
//!   period by each writer every so often (see `upkeep`), not on every
//!   write. Its pages show at most its newest `max_per_endpoint` attempts.
//!   A batch that is gone is dropped from it when a read meets it. (Until
//!   batches were named here, each attempt had an entry of its own, `{start
//!   ms} {attempt} {event} {batch id}` scored by its start: an entry per
//!   attempt inserted, and trimmed again, was most of what Redis did for a
//!   webhook at fan-out 10. Those entries are still read.);
//! - `attempts:batched`: how many attempts the batches hold together;
//! - `attempts:by_event:sweep`: where the trim's sweep of the by-event
//!   index goes on from (entries of batches that expired, or were evicted,
//!   before the trim dropped them, which took their list of events along).
//!
//! The batches hold at most `max_attempts` attempts together, whatever the
//! fan-out: [`AttemptLog::trim`] (every dispatcher runs it each
//! [`TRIM_INTERVAL`]) drops the oldest batches, whole, until they fit, so
//! the log's memory is a budget whatever the event rate and however many
//! endpoints an event goes to. An event's view is the records its batches
//! still hold, newest first: a retry hours later may outlive the event's
//! first attempts.
//!
//! Why batches rather than a log per event, as before: Redis's work is per
//! command and per key. A log per event cost two commands and a key made,
//! expired and dropped per event; replayed alone at fan-out 1, the event
//! logs took about 7.8 µs of Redis CPU per attempt and 1.6 KB each, a
//! batch's hash, its index entries and the endpoint's log 3.5 µs and 0.7 KB
//! (at fan-out 10, 2.8 against 1.7 µs). Logs of the former layout
//! (`attempts:event:{event}` sorted sets, indexed by `attempts:events`;
//! endpoint references of three parts; endpoint logs holding records
//! themselves, from before references) are still read; the former logs are
//! trimmed with the batches, whichever is oldest first, each layout by its
//! own count (`attempts:retained` for the former, which dispatchers not yet
//! upgraded keep, and reset, by themselves). An ingest older than the
//! dispatchers' layout cannot read it, and drops the endpoint entries it
//! cannot read: upgrade ingest before the dispatchers, and do not roll it
//! back past them.
//!
//! A write is one pipeline of plain commands: the batch's hash first, then
//! its count and the indexes that name it, the endpoints' entries last.
//! So whoever finds a batch named finds it written, a batch named but
//! missing is really gone, and the trim, which may run between any two of
//! these commands, cannot drop a batch before it is named. The trimming is
//! a script of its own, run apart from the writes.

mod read;
mod trim;
mod upkeep;
mod write;

pub use trim::{EXPIRY_GRACE, TRIM_INTERVAL};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Env};
use crate::redis_store::{Keys, StoreError};

/// Most response-body bytes kept per attempt.
pub const MAX_BODY_BYTES: usize = 4096;

/// One HTTP attempt. `S` is the text type: `String` for records read
/// back, `&str` for one written from a delivery's own fields without
/// copying them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord<S = String> {
    /// The delivery it belongs to.
    pub delivery_id: S,
    /// The endpoint.
    pub endpoint_id: S,
    /// The event.
    pub event_id: S,
    /// The application the event was addressed to.
    #[serde(default)]
    pub application_id: S,
    /// 1 for the first attempt of this delivery.
    pub attempt: u32,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: u32,
    /// The HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<S>,
    /// The start of the response body (at most 4 KiB, lossy UTF-8).
    pub response_body: S,
    /// Whether it succeeded.
    pub success: bool,
    /// The Kafka record the attempt was made from, which holds the event's
    /// payload (the console shows it from there rather than keep a copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RecordSource<S>>,
}

/// Where a Kafka record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSource<S = String> {
    /// Its topic.
    pub topic: S,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// An attempt ready for the log: serialized once, with what the logs are
/// keyed by.
#[derive(Debug, Clone)]
pub struct LoggedAttempt {
    /// The endpoint (shared with the endpoint it was delivered to).
    pub endpoint_id: Arc<str>,
    /// `{application}.{event id}`, as the event is named in the log.
    pub event: String,
    /// Start, Unix milliseconds: what the endpoint's log orders it by.
    pub started_at_ms: i64,
    /// The delivery's attempt number (with the event and the start, what
    /// the endpoint's list in its batch names it by).
    pub attempt: u32,
    /// The record's JSON (one line: serde_json escapes every newline).
    pub json: Vec<u8>,
}

impl LoggedAttempt {
    /// Serializes `record`, whose endpoint is `endpoint_id`.
    pub fn new<S: AsRef<str> + Serialize>(
        record: &AttemptRecord<S>,
        endpoint_id: Arc<str>,
    ) -> Result<Self, serde_json::Error> {
        let mut json = Vec::with_capacity(256 + record.response_body.as_ref().len());
        serde_json::to_writer(&mut json, record)?;
        Ok(Self {
            endpoint_id,
            event: event_member(record.application_id.as_ref(), record.event_id.as_ref()),
            started_at_ms: record.started_at_ms,
            attempt: record.attempt,
            json,
        })
    }
}

/// How an event is named in the log: `{application}.{event id}` ('.' is in
/// neither).
fn event_member(application_id: &str, event_id: &str) -> String {
    format!("{application_id}.{event_id}")
}

/// Retention of the attempt log.
#[derive(Debug, Clone)]
pub struct AttemptLogConfig {
    /// `HERALD_ATTEMPT_LOG_RETENTION` (default `7d`): how long attempts are
    /// kept.
    pub retention: Duration,
    /// `HERALD_ATTEMPT_LOG_MAX_PER_ENDPOINT` (default `1000`): most attempts
    /// kept per endpoint.
    pub max_per_endpoint: u64,
    /// `HERALD_ATTEMPT_LOG_MAX_ATTEMPTS` (default `100000`, 55–65 MB of
    /// Redis): most attempts the batches hold together; the newest
    /// batches keep theirs. `HERALD_ATTEMPT_LOG_MAX_EVENTS` is its former
    /// name, still read when it is not set.
    pub max_attempts: u64,
}

impl AttemptLogConfig {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            retention: env.duration(
                "HERALD_ATTEMPT_LOG_RETENTION",
                Duration::from_secs(7 * 86_400),
            )?,
            max_per_endpoint: env.number(
                "HERALD_ATTEMPT_LOG_MAX_PER_ENDPOINT",
                1000,
                1,
                1_000_000,
            )?,
            max_attempts: if env.raw("HERALD_ATTEMPT_LOG_MAX_ATTEMPTS").is_none()
                && env.raw("HERALD_ATTEMPT_LOG_MAX_EVENTS").is_some()
            {
                env.number("HERALD_ATTEMPT_LOG_MAX_EVENTS", 100_000, 1, 100_000_000)?
            } else {
                env.number("HERALD_ATTEMPT_LOG_MAX_ATTEMPTS", 100_000, 1, 100_000_000)?
            },
        })
    }
}

/// Reads and writes the attempt log.
#[derive(Clone)]
pub struct AttemptLog {
    redis: ConnectionManager,
    keys: Keys,
    config: AttemptLogConfig,
    trim: Arc<Script>,
    batches: Arc<BatchNames>,
    upkeep: Arc<upkeep::Upkeep>,
}

/// Names this writer's batches: a random writer id (no two dispatchers, or
/// runs of one, share it) and a counter.
#[derive(Debug)]
struct BatchNames {
    writer: String,
    written: AtomicU64,
}

impl BatchNames {
    fn new() -> Self {
        Self {
            writer: format!("{:016x}", rand::random::<u64>()),
            written: AtomicU64::new(0),
        }
    }

    /// The next batch's id (no space, no `.`).
    fn next(&self) -> String {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.writer)
    }
}

impl std::fmt::Debug for AttemptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptLog")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl AttemptLog {
    /// The log under the Redis keys `keys`.
    pub fn new(redis: ConnectionManager, keys: Keys, config: AttemptLogConfig) -> Self {
        Self {
            redis,
            keys,
            config,
            trim: Arc::new(Script::new(trim::TRIM)),
            batches: Arc::new(BatchNames::new()),
            upkeep: Arc::default(),
        }
    }

    /// Records one attempt (a batch of its own).
    pub async fn record(&self, attempt: &AttemptRecord, now_ms: i64) -> Result<(), StoreError> {
        self.record_many(std::slice::from_ref(attempt), now_ms)
            .await
    }

    /// [`AttemptLog::write`] for records not serialized yet.
    pub async fn record_many(
        &self,
        attempts: &[AttemptRecord],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let logged = attempts
            .iter()
            .map(|a| LoggedAttempt::new(a, Arc::from(a.endpoint_id.as_str())))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(&logged, now_ms).await
    }
}
