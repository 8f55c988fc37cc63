//! Redis connections, and the name of every key Herald keeps there
//! ([`Keys`], the one place they are built).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

/// A Redis operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value could not be decoded or encoded.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value decoded but is not usable.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// A change kept losing the race against other writers of the same
    /// value and gave up.
    #[error("{0} kept changing under this write; try again")]
    Contended(String),
}

/// Opens a Redis connection that reconnects by itself. It connects lazily, so
/// a service can start while Redis is still coming up; every command is
/// bounded by the configured timeout, so an outage shows up as errors rather
/// than hangs.
pub fn connect(config: &RedisConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(config.url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

/// Every key Herald keeps in Redis, under one prefix (`HERALD_REDIS_PREFIX`,
/// `herald:` by default). Key names are built here and nowhere else; what
/// each value holds is documented by the module that owns it.
///
/// | key | type | written by | owner |
/// | --- | --- | --- | --- |
/// | `endpoint:{id}` | string: the endpoint's JSON | ingest (API), dispatcher (410 disables) | [`crate::endpoint`] |
/// | `endpoints` | sorted set of endpoint ids | ingest | [`crate::endpoint`] |
/// | `endpoints:version` | counter, bumped by every endpoint change | ingest, dispatcher | [`crate::endpoint`] |
/// | `idempotency:{event id}` | string, expiring: the accepted event's digest | ingest | `herald-ingest` |
/// | `ingestlimit:{key digest}` | string: next allowed moment of an API key | ingest | [`crate::rate_limit`] |
/// | `ratelimit:{endpoint id}` | string: the endpoint's next free moment | dispatcher | [`crate::rate_limit`] |
/// | `breaker:{endpoint id}` | hash: breaker state | dispatcher | [`crate::circuit`] |
/// | `breaker:{endpoint id}:window` | hash: per-bucket counts | dispatcher | [`crate::circuit`] |
/// | `attempts:endpoint:{endpoint id}` | sorted set of attempts by time | dispatcher | [`crate::attempt_log`] |
/// | `attempts:event:{event id}` | sorted set of attempts, expiring | dispatcher | [`crate::attempt_log`] |
/// | `attempts:events` | sorted set of event ids by latest attempt | dispatcher | [`crate::attempt_log`] |
/// | `dlq:letter:{id}` | string, expiring: the `herald.v1.DeadLetter` | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `dlq:all` | sorted set of dead-letter ids by time of death | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `dlq:endpoint:{endpoint id}` | the same, per endpoint | ingest (indexer) | [`crate::dead_letter_index`] |
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (for example `herald:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One endpoint's JSON.
    pub fn endpoint(&self, id: &str) -> String {
        format!("{}endpoint:{id}", self.prefix)
    }

    /// Sorted set of all endpoint ids.
    pub fn endpoint_index(&self) -> String {
        format!("{}endpoints", self.prefix)
    }

    /// Counter bumped by every endpoint change.
    pub fn endpoints_version(&self) -> String {
        format!("{}endpoints:version", self.prefix)
    }

    /// Idempotency record of one event id.
    pub fn idempotency(&self, event_id: &str) -> String {
        format!("{}idempotency:{event_id}", self.prefix)
    }

    /// Next allowed moment of an API key (by its digest, never the key).
    pub fn ingest_limit(&self, key_id: &str) -> String {
        format!("{}ingestlimit:{key_id}", self.prefix)
    }

    /// Next free moment of a rate-limited endpoint.
    pub fn rate_limit(&self, endpoint_id: &str) -> String {
        format!("{}ratelimit:{endpoint_id}", self.prefix)
    }

    /// An endpoint's circuit-breaker state.
    pub fn breaker(&self, endpoint_id: &str) -> String {
        format!("{}breaker:{endpoint_id}", self.prefix)
    }

    /// An endpoint's circuit-breaker counts of recent attempts.
    pub fn breaker_window(&self, endpoint_id: &str) -> String {
        format!("{}breaker:{endpoint_id}:window", self.prefix)
    }

    /// An endpoint's attempt log.
    pub fn endpoint_attempts(&self, endpoint_id: &str) -> String {
        format!("{}attempts:endpoint:{endpoint_id}", self.prefix)
    }

    /// The start of every event's attempt log key (the trim script appends
    /// event ids to it).
    pub fn event_attempts_prefix(&self) -> String {
        format!("{}attempts:event:", self.prefix)
    }

    /// One event's attempt log.
    pub fn event_attempts(&self, event_id: &str) -> String {
        format!("{}attempts:event:{event_id}", self.prefix)
    }

    /// The events that have an attempt log, by latest attempt.
    pub fn attempted_events(&self) -> String {
        format!("{}attempts:events", self.prefix)
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: &str) -> String {
        format!("{}dlq:letter:{id}", self.prefix)
    }

    /// Every dead letter's id by time of death (`None`), or one endpoint's.
    pub fn dead_letters(&self, endpoint_id: Option<&str>) -> String {
        match endpoint_id {
            None => format!("{}dlq:all", self.prefix),
            Some(id) => format!("{}dlq:endpoint:{id}", self.prefix),
        }
    }
}
