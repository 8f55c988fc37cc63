//! The delivery-attempt log: every HTTP attempt, kept in Redis for a bounded
//! time and number, so that operators can answer "what happened to this
//! event" and "what is this endpoint answering".
//!
//! Redis layout, under the key prefix:
//! - `attempts:event:{application id}.{event id}`: sorted set of one
//!   event's attempt records (JSON, to every endpoint) scored by start
//!   time, expiring [`EXPIRY_GRACE`] after the retention period (so that
//!   the trim still finds them to count when their index entry leaves);
//! - `attempts:endpoint:{endpoint id}`: sorted set of references to the
//!   endpoint's attempts in their events' logs (`{start ms} {attempt}
//!   {application id}.{event id}`, about 60 bytes), scored by start time;
//!   trimmed to the newest `max_per_endpoint` and to the retention period
//!   on every write. A reference whose event's log is gone is dropped when
//!   a read meets it. (Logs written before references held the records
//!   themselves; those are still read. An ingest older than references
//!   cannot read them: upgrade ingest before the dispatchers.)
//! - `attempts:events`: the events (`{application id}.{event id}`) that have
//!   such a log, scored by their latest attempt;
//! - `attempts:retained`: how many attempts the event logs hold together.
//!
//! The event logs hold at most `max_attempts` attempts together, whatever
//! the fan-out: [`AttemptLog::trim`] (every dispatcher runs it each
//! [`TRIM_INTERVAL`]) drops the oldest events' logs, whole, until they fit,
//! so the log's memory is a budget whatever the event rate and however many
//! endpoints an event goes to (an attempt costs Redis about 1.45 KB in its
//! event's log and the index; kept for the whole retention period at 100
//! attempts/s, logs would take some 80 GB). An earlier bound counted events,
//! and at fan-out 10 held ten times the memory it promised.
//!
//! A write is one pipeline of plain commands: the count and the index
//! first, so that a trim running in between finds the written events the
//! newest, the last it would drop. The trimming is a script of its own, run
//! apart from the writes: done on every write, it cost Redis about two
//! thirds more CPU per delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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

/// An attempt ready for the log: serialized once (both of its logs take
/// the same bytes), with what the logs are keyed by.
#[derive(Debug, Clone)]
pub struct LoggedAttempt {
    /// The endpoint (shared with the endpoint it was delivered to).
    pub endpoint_id: Arc<str>,
    /// `{application}.{event id}`, as the event is named in the log.
    pub event: String,
    /// Start, Unix milliseconds: the score in both logs.
    pub started_at_ms: i64,
    /// The delivery's attempt number (with the event and the start, what
    /// the endpoint's log names it by).
    pub attempt: u32,
    /// The record's JSON.
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

/// How an endpoint's log names an attempt kept in its event's log:
/// `{start ms} {attempt} {event}` (event ids and application ids hold no
/// space). The start is the attempt's score in both logs, so the event's
/// log finds it with one `ZRANGEBYSCORE`.
fn attempt_ref(started_at_ms: i64, attempt: u32, event: &str) -> String {
    format!("{started_at_ms} {attempt} {event}")
}

/// An entry of an endpoint's log, read back.
#[derive(Debug, PartialEq, Eq)]
enum EndpointEntry<'a> {
    /// A reference ([`attempt_ref`]).
    Ref {
        started_at_ms: i64,
        attempt: u32,
        event: &'a str,
    },
    /// The record itself, as logs written before references held it.
    Record(&'a str),
}

impl<'a> EndpointEntry<'a> {
    fn parse(member: &'a str) -> Option<Self> {
        if member.starts_with('{') {
            return Some(Self::Record(member));
        }
        let (started, rest) = member.split_once(' ')?;
        let (attempt, event) = rest.split_once(' ')?;
        Some(Self::Ref {
            started_at_ms: started.parse().ok()?,
            attempt: attempt.parse().ok()?,
            event,
        })
    }
}

/// `ZADD key score member …` for `entries`, built in buffers sized for it
/// at once: a command grown argument by argument reallocated its buffers
/// several times per attempt.
fn zadd(key: &str, entries: &[(i64, &[u8])]) -> redis::Cmd {
    /// A score's digits and the framing of an argument, at most.
    const PER_ENTRY: usize = 24;
    let bytes = key.len()
        + entries
            .iter()
            .map(|(_, m)| m.len() + PER_ENTRY)
            .sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(2 + 2 * entries.len(), 4 + bytes);
    cmd.arg("ZADD").arg(key);
    for (score, member) in entries {
        cmd.arg(*score).arg(*member);
    }
    cmd
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
    /// `HERALD_ATTEMPT_LOG_MAX_ATTEMPTS` (default `100000`, about 145 MB
    /// of Redis): most attempts the event logs hold together; the newest
    /// events (by latest attempt) keep theirs. `HERALD_ATTEMPT_LOG_MAX_EVENTS`
    /// is its former name, still read when it is not set.
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

/// How often each dispatcher trims the event logs; the budget may be
/// exceeded by about this long's worth of attempts.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// How much longer than the retention period an event's log is kept, so
/// that the trim, which drops index entries older than the retention
/// period, still finds the log to count (and drop) when it does.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(600);

/// Most event logs one run of [`TRIM`] drops, so that a large backlog is
/// dropped in steps rather than in one long-running script.
const TRIM_BATCH: usize = 1000;

/// Trims the event logs to the budget. KEYS: the index, the count of
/// retained attempts. ARGV: the retention cutoff (ms), the most attempts,
/// the key prefix of event logs (the logs of dropped events are named from
/// it, so this needs a single Redis, not a cluster), the most logs to drop
/// now. Returns how many logs were dropped.
const TRIM: &str = r#"
local retained = tonumber(redis.call('GET', KEYS[2]) or '0')
local budget = tonumber(ARGV[2])
local most = tonumber(ARGV[4])
local dropped = 0
local function drop(event)
  local key = ARGV[3] .. event
  retained = retained - redis.call('ZCARD', key)
  redis.call('UNLINK', key)
  dropped = dropped + 1
end
-- Events past the retention period leave first (their logs are still
-- there, EXPIRY_GRACE longer, to be counted).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, most)
for i = 1, #expired do
  drop(expired[i])
  redis.call('ZREM', KEYS[1], expired[i])
end
while retained > budget and dropped < most do
  local oldest = redis.call('ZPOPMIN', KEYS[1])
  if #oldest == 0 then break end
  drop(oldest[1])
end
-- With no event left, nothing is retained: a count that drifted (logs
-- that expired unseen while no dispatcher ran) starts again from zero.
if redis.call('ZCARD', KEYS[1]) == 0 or retained < 0 then retained = 0 end
redis.call('SET', KEYS[2], retained)
return dropped
"#;

/// Reads and writes the attempt log.
#[derive(Clone)]
pub struct AttemptLog {
    redis: ConnectionManager,
    keys: Keys,
    config: AttemptLogConfig,
    trim: Arc<Script>,
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
            trim: Arc::new(Script::new(TRIM)),
        }
    }

    /// Records one attempt and trims the endpoint's log.
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

    /// Records attempts in one pipeline, and trims the logs of their
    /// endpoints. Attempts of one endpoint, or of one event, are added to
    /// its log in one command, and each log is trimmed and given its expiry
    /// once: the dispatcher hands over the attempts of a few milliseconds
    /// together, and at fan-out 10 those hold ten attempts per event.
    pub async fn write(&self, attempts: &[LoggedAttempt], now_ms: i64) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let retention_ms = self.config.retention.as_millis() as i64;
        let keep = self.config.max_per_endpoint as isize;
        // The record goes into its event's log; the endpoint's log holds a
        // reference to it, so each attempt's bytes are kept once, inside
        // the budget.
        let refs: Vec<String> = attempts
            .iter()
            .map(|a| attempt_ref(a.started_at_ms, a.attempt, &a.event))
            .collect();
        let mut by_endpoint: HashMap<&str, Vec<(i64, &[u8])>> = HashMap::new();
        // Event ids are unique within an application only.
        let mut by_event: HashMap<&str, Vec<(i64, &[u8])>> = HashMap::new();
        for (attempt, reference) in attempts.iter().zip(&refs) {
            by_event
                .entry(&attempt.event)
                .or_default()
                .push((attempt.started_at_ms, attempt.json.as_slice()));
            by_endpoint
                .entry(&attempt.endpoint_id)
                .or_default()
                .push((attempt.started_at_ms, reference.as_bytes()));
        }
        // The count and the index first, the logs after: the trim, which
        // may run between any two of these commands, drops the oldest
        // events, and these were just made the newest (a MULTI/EXEC around
        // the whole would cost Redis for every batch, for a race this
        // order already makes harmless).
        let kept_ms = retention_ms + EXPIRY_GRACE.as_millis() as i64;
        let index: Vec<(i64, &str)> = by_event.keys().map(|e| (now_ms, *e)).collect();
        let mut pipe =
            redis::Pipeline::with_capacity(2 + 2 * by_event.len() + 4 * by_endpoint.len());
        pipe.incr(self.keys.retained_attempts(), attempts.len())
            .ignore()
            .zadd_multiple(self.keys.attempted_events(), &index)
            .ignore();
        for (event, entries) in &by_event {
            let key = self.keys.event_attempts(event);
            pipe.add_command(zadd(&key, entries))
                .ignore()
                .pexpire(&key, kept_ms)
                .ignore();
        }
        for (endpoint_id, entries) in &by_endpoint {
            let key = self.keys.endpoint_attempts(endpoint_id);
            pipe.add_command(zadd(&key, entries))
                .ignore()
                .zrembyscore(&key, "-inf", now_ms - retention_ms)
                .ignore()
                // Keep the newest `keep`: drop ranks 0 .. -(keep+1).
                .zremrangebyrank(&key, 0, -(keep + 1))
                .ignore()
                .pexpire(&key, retention_ms)
                .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Drops the logs of the events past the retention period, then of the
    /// oldest events until the rest hold at most `max_attempts` attempts.
    /// Returns how many logs were dropped.
    pub async fn trim(&self, now_ms: i64) -> Result<usize, StoreError> {
        let cutoff = now_ms - self.config.retention.as_millis() as i64;
        let mut dropped = 0;
        loop {
            let mut conn = self.redis.clone();
            let step: usize = self
                .trim
                .key(self.keys.attempted_events())
                .key(self.keys.retained_attempts())
                .arg(cutoff)
                .arg(self.config.max_attempts)
                .arg(self.keys.event_attempts_prefix())
                .arg(TRIM_BATCH)
                .invoke_async(&mut conn)
                .await?;
            dropped += step;
            if step < TRIM_BATCH {
                return Ok(dropped);
            }
        }
    }

    /// Trims every [`TRIM_INTERVAL`] until `shutdown`. A failure is logged
    /// and the next round tries again (writes go on meanwhile; the bound is
    /// restored once Redis answers).
    pub async fn trim_every_interval(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TRIM_INTERVAL) => {}
            }
            let now_ms = crate::event::unix_millis(time::OffsetDateTime::now_utc());
            match self.trim(now_ms).await {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(dropped, "attempt logs of older events dropped"),
                Err(err) => tracing::debug!(error = %err, "cannot trim the attempt log index"),
            }
        }
    }

    /// An endpoint's attempts, newest first, from position `start`: those
    /// its events' logs still hold. References to attempts that left with
    /// their event's log (the budget, the retention), and entries Herald
    /// did not write, are dropped from the endpoint's log as they are met,
    /// and the page is read again until it is full or the log ends, so a
    /// short page is always the last one.
    pub async fn for_endpoint(
        &self,
        endpoint_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.endpoint_attempts(endpoint_id);
        let mut conn = self.redis.clone();
        // Each round drops at least one entry of a log bounded by
        // `max_per_endpoint` (plus what writes add meanwhile), so this ends.
        loop {
            let members: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&key)
                .arg(start)
                .arg(start + count - 1)
                .query_async(&mut conn)
                .await?;
            let entries: Vec<Option<EndpointEntry<'_>>> =
                members.iter().map(|m| EndpointEntry::parse(m)).collect();
            let mut lookups = redis::pipe();
            for entry in entries.iter().flatten() {
                if let EndpointEntry::Ref {
                    started_at_ms,
                    event,
                    ..
                } = entry
                {
                    lookups
                        .cmd("ZRANGEBYSCORE")
                        .arg(self.keys.event_attempts(event))
                        .arg(started_at_ms)
                        .arg(started_at_ms);
                }
            }
            let mut found: std::vec::IntoIter<Vec<String>> = if lookups.is_empty() {
                Vec::new().into_iter()
            } else {
                lookups
                    .query_async::<Vec<Vec<String>>>(&mut conn)
                    .await?
                    .into_iter()
            };
            let mut records = Vec::with_capacity(members.len());
            let mut gone = Vec::new();
            for (member, entry) in members.iter().zip(&entries) {
                match entry {
                    Some(EndpointEntry::Record(json)) => records.push(serde_json::from_str(json)?),
                    Some(EndpointEntry::Ref { attempt, .. }) => {
                        let mut record = None;
                        // Records that cannot be read are an error, as in
                        // an event's log, not a reason to drop the entry.
                        for json in found.next().unwrap_or_default() {
                            let candidate: AttemptRecord = serde_json::from_str(&json)?;
                            if candidate.endpoint_id == endpoint_id && candidate.attempt == *attempt
                            {
                                record = Some(candidate);
                                break;
                            }
                        }
                        match record {
                            Some(record) => records.push(record),
                            None => gone.push(member.as_str()),
                        }
                    }
                    None => gone.push(member.as_str()),
                }
            }
            if gone.is_empty() {
                return Ok(records);
            }
            let _: usize = redis::cmd("ZREM")
                .arg(&key)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// An event's attempts (to every endpoint), newest first.
    pub async fn for_event(
        &self,
        application_id: &str,
        event_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        let event = event_member(application_id, event_id);
        self.read(&self.keys.event_attempts(&event), start, count)
            .await
    }

    async fn read(
        &self,
        key: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.clone();
        let items: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(key)
            .arg(start)
            .arg(start + count - 1)
            .query_async(&mut conn)
            .await?;
        items
            .iter()
            .map(|json| serde_json::from_str(json).map_err(StoreError::from))
            .collect()
    }
}
