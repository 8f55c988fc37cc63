//! The delivery-attempt log: every HTTP attempt, kept in Redis for a bounded
//! time and number, so that operators can answer "what happened to this
//! event" and "what is this endpoint answering".
//!
//! Redis layout, under the key prefix:
//! - `attempts:endpoint:{endpoint id}`: sorted set of attempt records (JSON)
//!   scored by start time; trimmed to the newest `max_per_endpoint` and to
//!   the retention period on every write;
//! - `attempts:event:{event id}`: the same records for one event, expiring
//!   after the retention period.

use std::time::Duration;

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
        })
    }
}

/// Reads and writes the attempt log.
#[derive(Clone)]
pub struct AttemptLog {
    redis: ConnectionManager,
    prefix: String,
    config: AttemptLogConfig,
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
        }
    }

    fn endpoint_key(&self, endpoint_id: &str) -> String {
        format!("{}attempts:endpoint:{endpoint_id}", self.prefix)
    }

    fn event_key(&self, event_id: &str) -> String {
        format!("{}attempts:event:{event_id}", self.prefix)
    }

    /// Records one attempt and trims the endpoint's log.
    pub async fn record(&self, attempt: &AttemptRecord, now_ms: i64) -> Result<(), StoreError> {
        let json = serde_json::to_string(attempt)?;
        let retention_ms = self.config.retention.as_millis() as i64;
        let endpoint_key = self.endpoint_key(&attempt.endpoint_id);
        let event_key = self.event_key(&attempt.event_id);
        let keep = self.config.max_per_endpoint as isize;
        let mut conn = self.redis.clone();
        redis::pipe()
            .zadd(&endpoint_key, &json, attempt.started_at_ms)
            .ignore()
            .zrembyscore(&endpoint_key, "-inf", now_ms - retention_ms)
            .ignore()
            // Keep the newest `keep`: drop ranks 0 .. -(keep+1).
            .zremrangebyrank(&endpoint_key, 0, -(keep + 1))
            .ignore()
            .pexpire(&endpoint_key, retention_ms)
            .ignore()
            .zadd(&event_key, &json, attempt.started_at_ms)
            .ignore()
            .pexpire(&event_key, retention_ms)
            .ignore()
            .query_async::<()>(&mut conn)
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
