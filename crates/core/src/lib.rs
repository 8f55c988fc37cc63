//! Shared building blocks of Herald, the webhook dispatcher.
//!
//! Herald is three services joined by Kafka topics:
//! `herald-ingest` (HTTP → `herald.events`), `herald-fanout`
//! (`herald.events` → one record per subscribed endpoint on
//! `herald.deliveries`) and `herald-dispatcher` (`herald.deliveries` → signed
//! HTTP POSTs). This crate holds what they share:
//!
//! - [`config`]: `HERALD_*` environment variables, validated at start-up;
//! - [`event`]: the JSON event format, its validation, and Herald's ids;
//! - [`proto`]: the protobuf types generated from `proto/herald/v1`;
//! - [`endpoint`]: endpoints and subscriptions, stored in Redis and cached;
//! - [`destination`]: the outbound address policy (which hosts webhooks
//!   may reach);
//! - [`redis_store`]: Redis connections, and every key name with its
//!   layout ([`redis_store::Keys`]);
//! - [`kafka`]: client settings, topic creation, Herald's awaitable
//!   producer ([`kafka::producer`]), and the at-least-once consumer loop
//!   ([`kafka::consumer`]) with its per-partition offset watermark
//!   ([`kafka::offsets`]);
//! - [`retry`]: the retry schedule and its tier topics;
//! - [`dead_letter`] and [`dead_letter_index`]: writing dead letters, and
//!   the Redis index the API lists them from;
//! - [`circuit`] and [`rate_limit`]: per-endpoint breakers and rate limits
//!   shared by all dispatchers through Redis;
//! - [`attempt_log`]: every HTTP attempt, kept for a while in Redis;
//! - [`stats`]: per-minute counters in Redis for the console's charts;
//! - [`signing`]: Standard Webhooks signatures and `whsec_` secrets;
//! - [`metrics`] and [`ops`]: Prometheus metrics and the small ops HTTP
//!   server of fan-out and the dispatchers;
//! - [`backoff`]: the growing pause between retries of work that must
//!   succeed;
//! - [`telemetry`] and [`shutdown`]: logging and signal handling;
//! - [`service`]: the skeleton of every service's `main`, and the start of
//!   the consuming ones;
//! - [`allocator`]: every process allocates through jemalloc, and why;
//!   `alloc_count` (feature `count-allocations`, for the benchmark) counts
//!   those allocations.

#[cfg(feature = "count-allocations")]
pub mod alloc_count;
pub mod allocator;
pub mod application;
pub mod attempt_log;
pub mod backoff;
pub mod bounded_cache;
pub mod circuit;
pub mod config;
pub mod dead_letter;
pub mod dead_letter_index;
pub mod destination;
pub mod endpoint;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod rate_limit;
pub mod redis_store;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod stats;
pub mod telemetry;
pub mod trace_context;

/// Types generated from `proto/herald/v1/herald.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/herald.v1.rs"));
}

/// Base names of Herald's topics (before `HERALD_TOPIC_PREFIX`).
pub mod topics {
    /// Events from ingest and from producers publishing straight to Kafka.
    pub const EVENTS: &str = "herald.events";
    /// One record per (event, endpoint).
    pub const DELIVERIES: &str = "herald.deliveries";
    /// Retry tiers are `herald.retry.<delay>`, e.g. `herald.retry.5m`.
    pub const RETRY_PREFIX: &str = "herald.retry.";
    /// Dead letters.
    pub const DLQ: &str = "herald.dlq";
}

/// Consumer group base names (before `HERALD_TOPIC_PREFIX`).
pub mod groups {
    /// The fan-out service's group.
    pub const FANOUT: &str = "herald-fanout";
    /// The dispatchers' group for new deliveries (`herald.deliveries`).
    pub const DISPATCHER: &str = "herald-dispatcher";
    /// The dispatchers' group for the retry tiers (`herald.retry.*`).
    pub const DISPATCHER_RETRY: &str = "herald-dispatcher-retry";
    /// herald-ingest's dead-letter indexer.
    pub const DLQ_INDEXER: &str = "herald-dlq-indexer";
}
