//! State shared by the request handlers.

use std::sync::Arc;
use std::time::Duration;

use herald_core::endpoint::EndpointStore;
use herald_core::kafka::Producer;
use herald_core::redis_store::Keys;
use redis::aio::ConnectionManager;

use crate::auth::{ApiKeys, IngestRateLimit};

/// Cheap to clone: everything lives behind one `Arc`.
pub type AppState = Arc<Inner>;

/// What the handlers need.
pub struct Inner {
    /// Accepted API keys.
    pub api_keys: ApiKeys,
    /// The per-key event limit, if any.
    pub ingest_rate_limit: Option<IngestRateLimit>,
    /// The shared rate limiters in Redis.
    pub limiter: herald_core::rate_limit::RateLimiter,
    /// Where endpoints may point.
    pub destinations: herald_core::destination::DestinationPolicy,
    /// Default grace period of a rotated-out secret.
    pub secret_rotation_grace: Duration,
    /// Idempotent, acks=all producer for `herald.events`.
    pub producer: Producer,
    /// Full name of the events topic.
    pub events_topic: String,
    /// Full name of the deliveries topic (dead-letter replays go there).
    pub deliveries_topic: String,
    /// The dead-letter index.
    pub dlq: herald_core::dead_letter_index::DlqIndex,
    /// How long a produce may wait for room in the producer's queue.
    pub produce_timeout: Duration,
    /// Redis connection (idempotency records).
    pub redis: ConnectionManager,
    /// Redis key names.
    pub keys: Keys,
    /// Endpoint storage.
    pub endpoints: EndpointStore,
    /// Application storage.
    pub applications: herald_core::application::ApplicationStore,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// The delivery-attempt log.
    pub attempt_log: herald_core::attempt_log::AttemptLog,
    /// Window of the breakers' recent counts.
    pub breaker_window: Duration,
    /// How long event ids are remembered.
    pub idempotency_ttl: Duration,
    /// The console's and portal's settings.
    pub console: crate::console::ConsoleSettings,
    /// Reads delivery records back from Kafka (the event page's payload).
    pub records: crate::console::records::RecordReader,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("events_topic", &self.events_topic)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}
