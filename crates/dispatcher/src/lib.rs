//! herald-dispatcher: delivers webhooks.
//!
//! Any number of replicas consume `herald.deliveries` in the
//! `herald-dispatcher` consumer group, and the retry tiers in the
//! `herald-dispatcher-retry` group. For each delivery record the
//! dispatcher looks up the endpoint (read from Redis on first use and again
//! after any endpoint changed; [`endpoint_cache::EndpointCache`]), signs
//! the webhook per Standard Webhooks and POSTs it ([`deliver`]). Many deliveries are in
//! flight at once, so a slow endpoint does not hold up the others; the
//! record's offset is stored only once the endpoint answered 2xx (or the
//! delivery was given up), in order per partition, so a crash re-delivers at
//! most what was in flight — with the same `webhook-id`.
//!
//! Before each attempt the endpoint's circuit breaker and rate limit, both
//! shared by all replicas through Redis, may put the delivery off; it then
//! goes to a retry tier without spending an attempt. If Redis is away,
//! delivery goes on as if breakers were closed and limits absent, and the
//! log says so.
//!
//! A failed attempt (non-2xx, timeout, connection error) is never retried in
//! place: the delivery goes to the retry tier topic of its next delay
//! (`herald_core::retry`), which the dispatchers also consume, and only once
//! that record is acknowledged is the original offset stored. After the last
//! attempt, or at once for a permanent failure (endpoint deleted or gone,
//! malformed record), it goes to `herald.dlq` with its reason and attempt
//! history (`herald_core::dead_letter`).
//!
//! Webhooks reach only the addresses the outbound address policy allows,
//! checked on the address actually connected to ([`outbound`]). A delivery
//! the policy refuses is dead-lettered at once (`destination_refused`):
//! trying again would meet the same refusal, and an operator who opens the
//! range can replay it.

pub mod deliver;
pub mod endpoint_cache;
pub mod outbound;
pub mod recorder;

use std::sync::Arc;
use std::time::Duration;

use endpoint_cache::EndpointCache;
use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
use herald_core::circuit::{BreakerConfig, Breakers};
use herald_core::config::{ConfigError, Env, KafkaConfig, RedisConfig};
use herald_core::destination::DestinationPolicy;
use herald_core::endpoint::EndpointStore;
use herald_core::kafka::consumer::ConsumerSettings;
use herald_core::rate_limit::RateLimiter;
use herald_core::redis_store::Keys;
use herald_core::retry::RetrySchedule;
use herald_core::service::{ServiceConfig, ServiceError, Worker, start_worker};
use herald_core::telemetry::LogConfig;
use tokio_util::sync::CancellationToken;

use deliver::Dispatcher;

/// Everything herald-dispatcher reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HERALD_DISPATCHER_MAX_IN_FLIGHT` (default `512`): webhook requests
    /// in flight at once in this replica. Each of its two consumers holds up
    /// to [`RECORDS_PER_REQUEST`] times as many records, so that deliveries
    /// waiting for a busy endpoint do not keep the others from being read.
    pub max_in_flight: usize,
    /// `HERALD_HTTP_TIMEOUT` (default `15s`): how long one webhook request
    /// may take, from connecting to the end of the response.
    pub http_timeout: Duration,
    /// `HERALD_RETRY_SCHEDULE` (default `5s,5m,30m,2h,5h,10h,10h`): delays
    /// between attempts; n delays make n + 1 attempts. Each delay gets ±20 %
    /// jitter.
    pub retry_schedule: RetrySchedule,
    /// `HERALD_MAX_DELIVERY_AGE` (default: the retry schedule's whole span,
    /// 27h35m5s with the default schedule): a delivery still put off
    /// (breaker open, rate limit) this long after its first attempt, or
    /// after fan-out created it when it never had one, is dead-lettered as
    /// `endpoint_unavailable`, with its history and its deferral count.
    pub max_delivery_age: Duration,
    /// `HERALD_ENDPOINT_MAX_IN_FLIGHT` (default `32`): deliveries in flight
    /// to one endpoint at once in this replica, so that one endpoint cannot
    /// take the whole window and a failing one is noticed before many
    /// requests pile up on it.
    pub endpoint_max_in_flight: usize,
    /// Where webhooks may go (`HERALD_ALLOWED_DESTINATION_CIDRS`,
    /// `HERALD_REQUIRE_HTTPS`).
    pub destinations: DestinationPolicy,
    /// `HERALD_OUTBOUND_PROXY` (default none): an `http://` or `https://`
    /// proxy that every webhook goes through.
    pub outbound_proxy: Option<String>,
    /// `HERALD_OUTBOUND_CA_FILE` (default none): a PEM file of CA
    /// certificates webhooks' TLS trusts besides the Web PKI's roots (an
    /// internal CA's endpoints).
    pub outbound_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `HERALD_OUTBOUND_HTTP2` (default `true`): offer HTTP/2 to https
    /// endpoints (ALPN); those that take it get one connection per replica
    /// with their requests as streams, the others HTTP/1.1.
    pub outbound_http2: bool,
    /// Circuit breakers (`HERALD_BREAKER_*`).
    pub breaker: BreakerConfig,
    /// Attempt log retention (`HERALD_ATTEMPT_LOG_*`).
    pub attempt_log: AttemptLogConfig,
    /// `HERALD_ENDPOINT_CACHE_REFRESH` (default `1s`): how often the endpoint
    /// cache checks Redis for changes (a change makes it read the endpoints
    /// it holds again, on their next use).
    pub cache_refresh: Duration,
    /// `HERALD_DISPATCHER_CACHE_ENTRIES` (default `10000`): most endpoints
    /// the replica holds (the least recently used go first).
    pub cache_entries: usize,
    /// `HERALD_DISPATCHER_CACHE_BYTES` (default `16777216`, 16 MiB): about
    /// the most memory those endpoints take.
    pub cache_bytes: usize,
    /// `HERALD_DRAIN_TIMEOUT` (default `30s`): on shutdown or rebalance, how
    /// long in-flight deliveries may take to finish.
    pub drain_timeout: Duration,
    /// `HERALD_OPS_ADDR` (default `0.0.0.0:9090`): `/metrics`, `/healthz`
    /// and `/readyz`.
    pub ops_addr: std::net::SocketAddr,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
}

impl ServiceConfig for Config {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Config::from_env(env)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl Config {
    /// Reads and validates the configuration.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kafka = KafkaConfig::from_env(env)?;
        let http_timeout = env.duration("HERALD_HTTP_TIMEOUT", Duration::from_secs(15))?;
        let retry_schedule = env.parse(
            "HERALD_RETRY_SCHEDULE",
            RetrySchedule::default(),
            RetrySchedule::parse,
        )?;
        Ok(Self {
            endpoint_max_in_flight: env.number("HERALD_ENDPOINT_MAX_IN_FLIGHT", 32, 1, 100_000)?
                as usize,
            breaker: BreakerConfig::from_env(env, http_timeout)?,
            destinations: DestinationPolicy::from_env(env)?,
            outbound_proxy: outbound_proxy(env)?,
            outbound_roots: outbound_roots(env)?,
            outbound_http2: env.boolean("HERALD_OUTBOUND_HTTP2", true)?,
            attempt_log: AttemptLogConfig::from_env(env)?,
            max_in_flight: env.number("HERALD_DISPATCHER_MAX_IN_FLIGHT", 512, 1, 100_000)? as usize,
            http_timeout,
            max_delivery_age: env.duration("HERALD_MAX_DELIVERY_AGE", retry_schedule.span())?,
            retry_schedule,
            cache_refresh: env.duration("HERALD_ENDPOINT_CACHE_REFRESH", Duration::from_secs(1))?,
            cache_entries: env.number("HERALD_DISPATCHER_CACHE_ENTRIES", 10_000, 1, 10_000_000)?
                as usize,
            cache_bytes: env.number("HERALD_DISPATCHER_CACHE_BYTES", 16 << 20, 1 << 16, 16 << 30)?
                as usize,
            drain_timeout: herald_core::config::drain_timeout(env, &kafka)?,
            ops_addr: herald_core::ops::ops_addr(env)?,
            kafka,
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
        })
    }
}

/// Reads `HERALD_OUTBOUND_PROXY`. Its value is not echoed in errors: it may
/// hold the proxy's credentials.
fn outbound_proxy(env: &Env) -> Result<Option<String>, ConfigError> {
    let Some(value) = env.raw("HERALD_OUTBOUND_PROXY") else {
        return Ok(None);
    };
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(Some(value.to_owned()))
        }
        _ => Err(ConfigError {
            key: "HERALD_OUTBOUND_PROXY".to_owned(),
            value: None,
            problem: "expected a proxy URL such as http://proxy.internal:3128".to_owned(),
        }),
    }
}

/// Reads the CA certificates of `HERALD_OUTBOUND_CA_FILE`, if set: a PEM
/// file holding at least one.
fn outbound_roots(
    env: &Env,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject as _;
    let Some(path) = env.raw("HERALD_OUTBOUND_CA_FILE") else {
        return Ok(Vec::new());
    };
    let problem = |problem: String| ConfigError {
        key: "HERALD_OUTBOUND_CA_FILE".to_owned(),
        value: Some(path.to_owned()),
        problem,
    };
    let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|err| problem(format!("cannot read it: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| problem(format!("not a PEM file of certificates: {err}")))?;
    if certificates.is_empty() {
        return Err(problem(
            "no certificate in it (expected PEM, \"-----BEGIN CERTIFICATE-----\")".to_owned(),
        ));
    }
    Ok(certificates)
}

/// Records a consumer may hold per request slot: most wait for their
/// endpoint's slot (`HERALD_ENDPOINT_MAX_IN_FLIGHT`) while a few endpoints
/// take the requests. A waiting record costs several times its own size
/// (its task and spans), so the factor is kept small: at 4 the dispatcher
/// went past 64 MiB under full load with 10,000 endpoints.
pub const RECORDS_PER_REQUEST: usize = 2;

/// How long a stopping replica spends writing its last attempt records.
const RECORDER_FINISH_LIMIT: Duration = Duration::from_secs(5);

/// Why a dispatcher could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Kafka, Redis or the ops server.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The HTTP client cannot be built.
    #[error("HTTP client: {0}")]
    Http(#[from] outbound::OutboundError),
}

impl From<rdkafka::error::KafkaError> for DispatcherError {
    fn from(err: rdkafka::error::KafkaError) -> Self {
        Self::Service(err.into())
    }
}

/// Runs a dispatcher replica until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DispatcherError> {
    // Consumed: new deliveries and every retry tier. Written: retry tiers
    // and dead letters.
    let retry_tiers = config.retry_schedule.tier_topics(&config.kafka);
    let mut needed = vec![config.kafka.deliveries_topic()];
    needed.extend(retry_tiers.iter().cloned());
    needed.push(config.kafka.topic(herald_core::topics::DLQ));
    let worker = Worker {
        kafka: &config.kafka,
        redis: &config.redis,
        ops_addr: config.ops_addr,
        topics: &needed,
        probe_topic: &config.kafka.deliveries_topic(),
    };
    let ops_producer = herald_core::kafka::producer(&config.kafka, "herald-dispatcher-ops")?;
    let Some(redis) = start_worker(worker, ops_producer, &shutdown).await? else {
        return Ok(());
    };
    let keys = Keys::new(config.redis.key_prefix.clone());
    let cache = EndpointCache::new(
        EndpointStore::new(redis.clone(), keys.clone()),
        config.cache_entries,
        config.cache_bytes,
    );
    if !cache.load_first(&shutdown).await {
        return Ok(());
    }
    tokio::spawn(
        cache
            .clone()
            .keep_fresh(config.cache_refresh, shutdown.clone()),
    );

    let breakers = Breakers::new(redis.clone(), keys.clone(), config.breaker.clone());
    let limiter = RateLimiter::new(redis.clone(), keys.clone());
    tokio::spawn(
        herald_core::stats::Flusher::new(redis.clone(), keys.clone()).run(shutdown.clone()),
    );
    let attempt_log = AttemptLog::new(redis, keys.clone(), config.attempt_log.clone());
    tokio::spawn(attempt_log.clone().trim_every_interval(shutdown.clone()));
    let abandon = CancellationToken::new();
    let (dispatcher, recorder) = Dispatcher::new(
        &config,
        cache,
        breakers,
        limiter,
        attempt_log,
        abandon.clone(),
    )?;
    let dispatcher = Arc::new(dispatcher);
    // New deliveries and retries are read by two consumers in two groups.
    // Retry records wait seconds at least, so their consumer may let the
    // broker hold its fetches longer; and on brokers whose fetch cost grows
    // with the partitions in a fetch (Tansu), the tiers' partitions no longer
    // slow the hot path down. Each consumer has its own window of records, so
    // a backlog of retries (an endpoint back after an outage) never keeps new
    // deliveries from being read; both share the replica's request slots.
    let stop = shutdown.child_token();
    let consume = |settings: ConsumerSettings| {
        let (kafka, dispatcher, stop) = (&config.kafka, dispatcher.clone(), stop.clone());
        async move {
            let result =
                herald_core::kafka::consumer::run(kafka, settings, dispatcher, stop.clone()).await;
            // A consumer that cannot start stops its sibling too (which then
            // drains), so that the process exits and is restarted whole.
            if result.is_err() {
                stop.cancel();
            }
            result
        }
    };
    let new_deliveries = ConsumerSettings {
        group_id: config.kafka.group(herald_core::groups::DISPATCHER),
        client_id: "herald-dispatcher".to_owned(),
        topics: vec![config.kafka.deliveries_topic()],
        max_in_flight: config.max_in_flight * RECORDS_PER_REQUEST,
        fetch_wait: config.kafka.hot_fetch_wait,
        drain_timeout: config.drain_timeout,
        abandon: abandon.clone(),
    };
    let retries = ConsumerSettings {
        group_id: config.kafka.group(herald_core::groups::DISPATCHER_RETRY),
        client_id: "herald-dispatcher-retry".to_owned(),
        topics: retry_tiers,
        fetch_wait: herald_core::kafka::RELAXED_FETCH_WAIT,
        ..new_deliveries.clone()
    };
    let (new_deliveries, retries) = tokio::join!(consume(new_deliveries), consume(retries));
    // Both consumers have drained: every attempt made is queued.
    recorder.finish(RECORDER_FINISH_LIMIT).await;
    new_deliveries?;
    retries?;
    Ok(())
}
