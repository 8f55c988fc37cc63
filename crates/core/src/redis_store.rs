//! Redis connections and key names.

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

/// Builds Herald's Redis key names under one prefix.
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
}
