//! The delivery-attempt log: every HTTP attempt, kept in Redis for a bounded
//! time and number, so that operators can answer "what happened to this
//! event" and "what is this endpoint answering".
//!
//! Redis layout, under the key prefix:
//! - `attempts:endpoint:{endpoint id}`: sorted set of attempt records (JSON)
//!   scored by start time; trimmed to the newest `max_per_endpoint` and to
//!   the retention period on every write;
//! - `attempts:event:{event id}`: the same records for one event, expiring
//!   after the retention period;
//! - `attempts:events`: the event ids that have such a log, scored by their
//!   latest attempt. Only the newest `max_events` keep their log: each write
//!   drops the oldest beyond that, so the log's memory is bounded whatever
//!   the event rate (an event's log costs Redis about 1.3 KB for one
//!   attempt; kept for the whole retention period at 100 attempts/s, logs
//!   would take some 80 GB).
//!
//! One script does a write, in one round trip.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Env};
use crate::redis_store::StoreError;

/// Most response-body bytes kept per attempt.
pub const MAX_BODY_BYTES: usize = 4096;

/// One HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The delivery it belongs to.
    pub delivery_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event.
    pub event_id: String,
    /// 1 for the first attempt of this delivery.
    pub attempt: u32,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: u32,
    /// The HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The start of the response body (at most 4 KiB, lossy UTF-8).
    pub response_body: String,
    /// Whether it succeeded.
    pub success: bool,
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
    /// `HERALD_ATTEMPT_LOG_MAX_EVENTS` (default `100000`): most events whose
    /// attempts stay readable by event id (the newest by latest attempt).
    pub max_events: u64,
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
            max_events: env.number("HERALD_ATTEMPT_LOG_MAX_EVENTS", 100_000, 1, 100_000_000)?,
        })
    }
}

/// Writes one attempt. KEYS: the endpoint's log, the event's log, the index
/// of events. ARGV: the record, its start (score), now, retention (ms), most
/// attempts per endpoint, most events, the event id, and the key prefix of
/// event logs (the logs of events dropped from the index are named from it,
/// so this script needs a single Redis, not a cluster).
const RECORD: &str = r#"
local now = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local cutoff = now - retention
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
-- Keep the newest ARGV[5]: drop ranks 0 .. -(keep+1).
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
redis.call('PEXPIRE', KEYS[1], retention)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], retention)
redis.call('ZADD', KEYS[3], now, ARGV[7])
redis.call('PEXPIRE', KEYS[3], retention)
-- Events whose log has expired leave the index; past the cap, the oldest
-- leave it and their logs go too.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #oldest, 2 do
    redis.call('UNLINK', ARGV[8] .. oldest[i])
  end
end
return 0
"#;

/// Reads and writes the attempt log.
#[derive(Clone)]
pub struct AttemptLog {
    redis: ConnectionManager,
    prefix: String,
    config: AttemptLogConfig,
    record: Arc<Script>,
}

impl std::fmt::Debug for AttemptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptLog")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl AttemptLog {
    /// The log under the Redis key prefix.
    pub fn new(redis: ConnectionManager, prefix: &str, config: AttemptLogConfig) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            config,
            record: Arc::new(Script::new(RECORD)),
        }
    }

    fn endpoint_key(&self, endpoint_id: &str) -> String {
        format!("{}attempts:endpoint:{endpoint_id}", self.prefix)
    }

    fn event_key_prefix(&self) -> String {
        format!("{}attempts:event:", self.prefix)
    }

    fn event_key(&self, event_id: &str) -> String {
        format!("{}{event_id}", self.event_key_prefix())
    }

    fn event_index_key(&self) -> String {
        format!("{}attempts:events", self.prefix)
    }

    /// Records one attempt, and trims the endpoint's log and the index of
    /// event logs.
    pub async fn record(&self, attempt: &AttemptRecord, now_ms: i64) -> Result<(), StoreError> {
        let json = serde_json::to_string(attempt)?;
        let mut conn = self.redis.clone();
        self.record
            .key(self.endpoint_key(&attempt.endpoint_id))
            .key(self.event_key(&attempt.event_id))
            .key(self.event_index_key())
            .arg(json)
            .arg(attempt.started_at_ms)
            .arg(now_ms)
            .arg(self.config.retention.as_millis() as u64)
            .arg(self.config.max_per_endpoint)
            .arg(self.config.max_events)
            .arg(&attempt.event_id)
            .arg(self.event_key_prefix())
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// An endpoint's attempts, newest first, from position `start`.
    pub async fn for_endpoint(
        &self,
        endpoint_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(&self.endpoint_key(endpoint_id), start, count)
            .await
    }

    /// An event's attempts (to every endpoint), newest first.
    pub async fn for_event(
        &self,
        event_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(&self.event_key(event_id), start, count).await
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
