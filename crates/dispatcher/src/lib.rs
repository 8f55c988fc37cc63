//! herald-dispatcher: delivers webhooks.
//!
//! Any number of replicas consume `herald.deliveries` in the
//! `herald-dispatcher` consumer group. For each delivery record the
//! dispatcher looks up the endpoint (cache, then Redis), signs the webhook
//! per Standard Webhooks and POSTs it ([`deliver`]). Many deliveries are in
//! flight at once, so a slow endpoint does not hold up the others; the
//! record's offset is stored only once the endpoint answered 2xx (or the
//! delivery was given up), in order per partition, so a crash re-delivers at
//! most what was in flight — with the same `webhook-id`.
//!
//! A failed attempt (non-2xx, timeout, connection error) is retried in place
//! a few times with a growing pause. It is never reported as delivered.

pub mod deliver;

use std::sync::Arc;
use std::time::Duration;

use herald_core::config::{ConfigError, Env, KafkaConfig, RedisConfig};
use herald_core::endpoint::{EndpointCache, EndpointStore};
use herald_core::kafka::consumer::ConsumerSettings;
use herald_core::redis_store::{self, Keys};
use herald_core::telemetry::LogConfig;
use tokio_util::sync::CancellationToken;

use deliver::Dispatcher;

/// Everything herald-dispatcher reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HERALD_DISPATCHER_MAX_IN_FLIGHT` (default `512`): deliveries in
    /// flight at once in this replica.
    pub max_in_flight: usize,
    /// `HERALD_HTTP_TIMEOUT` (default `15s`): how long one webhook request
    /// may take, from connecting to the end of the response.
    pub http_timeout: Duration,
    /// `HERALD_DELIVERY_ATTEMPTS` (default `3`): attempts per delivery.
    pub attempts: u32,
    /// `HERALD_RETRY_BACKOFF` (default `1s`): pause before the second
    /// attempt; it doubles for each further one.
    pub retry_backoff: Duration,
    /// `HERALD_ENDPOINT_CACHE_REFRESH` (default `1s`): how often the endpoint
    /// cache checks Redis for changes.
    pub cache_refresh: Duration,
    /// `HERALD_DRAIN_TIMEOUT` (default `30s`): on shutdown or rebalance, how
    /// long in-flight deliveries may take to finish.
    pub drain_timeout: Duration,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// Reads and validates the configuration.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_in_flight: env.number("HERALD_DISPATCHER_MAX_IN_FLIGHT", 512, 1, 100_000)? as usize,
            http_timeout: env.duration("HERALD_HTTP_TIMEOUT", Duration::from_secs(15))?,
            attempts: env.number("HERALD_DELIVERY_ATTEMPTS", 3, 1, 100)? as u32,
            retry_backoff: env.duration("HERALD_RETRY_BACKOFF", Duration::from_secs(1))?,
            cache_refresh: env.duration("HERALD_ENDPOINT_CACHE_REFRESH", Duration::from_secs(1))?,
            drain_timeout: env.duration("HERALD_DRAIN_TIMEOUT", Duration::from_secs(30))?,
            kafka: KafkaConfig::from_env(env)?,
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
        })
    }
}

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Kafka client creation or consumption failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client creation failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The HTTP client cannot be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs a dispatcher replica until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DispatcherError> {
    let deliveries_topic = config.kafka.deliveries_topic();
    herald_core::kafka::ensure_topics_with_retry(
        &config.kafka,
        std::slice::from_ref(&deliveries_topic),
        &shutdown,
    )
    .await?;

    let redis = redis_store::connect(&config.redis)?;
    let cache = EndpointCache::new(EndpointStore::new(
        redis,
        Keys::new(config.redis.key_prefix.clone()),
    ));
    if !cache.load_first(&shutdown).await {
        return Ok(());
    }
    tokio::spawn(
        cache
            .clone()
            .keep_fresh(config.cache_refresh, shutdown.clone()),
    );

    let dispatcher = Arc::new(Dispatcher::new(&config, cache, shutdown.clone())?);
    let settings = ConsumerSettings {
        group_id: config.kafka.group(herald_core::groups::DISPATCHER),
        client_id: "herald-dispatcher".to_owned(),
        topics: vec![deliveries_topic],
        max_in_flight: config.max_in_flight,
        drain_timeout: config.drain_timeout,
    };
    herald_core::kafka::consumer::run(&config.kafka, settings, dispatcher, shutdown).await?;
    Ok(())
}
