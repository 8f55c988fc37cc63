//! herald-ingest configuration.

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::config::{ConfigError, Env, KafkaConfig, RedisConfig};
use herald_core::destination::DestinationPolicy;
use herald_core::telemetry::LogConfig;

use crate::auth::{ApiKeys, IngestRateLimit};

/// Everything herald-ingest reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HERALD_INGEST_ADDR` (default `0.0.0.0:8080`): where the HTTP API
    /// listens.
    pub listen_addr: SocketAddr,
    /// The keys that may call the API, with their scopes:
    /// `HERALD_API_KEY_HASHES` (comma-separated `scope:sha256hex` entries),
    /// `HERALD_API_KEYS_FILE` (a file of such entries, one per line, e.g. a
    /// mounted Kubernetes Secret), and the plain-text `HERALD_API_KEYS`
    /// (comma-separated) and `HERALD_API_KEY`, which have the `admin` scope.
    /// At least one key is required.
    pub api_keys: ApiKeys,
    /// `HERALD_INGEST_RATE_LIMIT` (default `0`, off): events per second each
    /// API key may send, shared by all ingest replicas through Redis;
    /// `HERALD_INGEST_RATE_BURST` (default: one second's worth) events may
    /// come at once.
    pub ingest_rate_limit: Option<IngestRateLimit>,
    /// Where endpoints may point (`HERALD_ALLOWED_DESTINATION_CIDRS`,
    /// `HERALD_REQUIRE_HTTPS`).
    pub destinations: DestinationPolicy,
    /// `HERALD_SECRET_ROTATION_GRACE` (default `24h`): how long a rotated-out
    /// secret keeps signing beside the new one, unless the rotation request
    /// says otherwise.
    pub secret_rotation_grace: Duration,
    /// `HERALD_MAX_BODY_BYTES` (default `1048576`, 1 MiB): largest request
    /// body; larger ones are answered with 413.
    pub max_body_bytes: usize,
    /// `HERALD_IDEMPOTENCY_TTL` (default `24h`): how long an event id is
    /// remembered; the same id within this window is not published again.
    pub idempotency_ttl: Duration,
    /// `HERALD_DLQ_RETENTION` (default `14d`): how long dead letters stay
    /// listed and replayable through the API (`herald.dlq` keeps them as
    /// long as the topic's own retention).
    pub dlq_retention: Duration,
    /// `HERALD_DRAIN_TIMEOUT` (default `30s`): on shutdown, how long the
    /// dead-letter indexer may take to finish.
    pub drain_timeout: Duration,
    /// `HERALD_BREAKER_WINDOW` (default `5m`): the window of the recent
    /// success and failure counts shown by the health endpoint (the same
    /// setting as the dispatchers').
    pub breaker_window: Duration,
    /// Attempt log retention (`HERALD_ATTEMPT_LOG_*`), as the dispatchers
    /// use it.
    pub attempt_log: herald_core::attempt_log::AttemptLogConfig,
    /// Kafka settings (`HERALD_KAFKA_*`, `HERALD_TOPIC_*`).
    pub kafka: KafkaConfig,
    /// Redis settings (`HERALD_REDIS_*`).
    pub redis: RedisConfig,
    /// Logging (`HERALD_LOG`, `HERALD_LOG_FORMAT`).
    pub log: LogConfig,
    /// The console and portal (`HERALD_CONSOLE_*`, `HERALD_PORTAL_*`).
    pub console: crate::console::ConsoleSettings,
}

impl herald_core::service::ServiceConfig for Config {
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
        let listen_addr = env.parse("HERALD_INGEST_ADDR", ([0, 0, 0, 0], 8080).into(), |v| {
            v.parse()
                .map_err(|_| "expected an address and port such as 0.0.0.0:8080".to_owned())
        })?;
        let mut keys = env.list("HERALD_API_KEYS");
        if let Some(single) = env.raw("HERALD_API_KEY") {
            keys.push(single.to_owned());
        }
        if let Some(short) = keys.iter().find(|k| k.len() < 16) {
            return Err(ConfigError {
                key: "HERALD_API_KEYS".to_owned(),
                value: None,
                problem: format!(
                    "a key of {} characters is too easy to guess; use at least 16 random characters",
                    short.len()
                ),
            });
        }
        let mut api_keys = ApiKeys::new(&keys);
        if let Some(hashes) = env.raw("HERALD_API_KEY_HASHES") {
            api_keys.add_hashed(hashes).map_err(|problem| ConfigError {
                key: "HERALD_API_KEY_HASHES".to_owned(),
                value: None,
                problem,
            })?;
        }
        if let Some(path) = env.raw("HERALD_API_KEYS_FILE") {
            let problem = |problem: String| ConfigError {
                key: "HERALD_API_KEYS_FILE".to_owned(),
                value: Some(path.to_owned()),
                problem,
            };
            let text = std::fs::read_to_string(path)
                .map_err(|err| problem(format!("cannot read the file: {err}")))?;
            api_keys.add_hashed(&text).map_err(problem)?;
        }
        if api_keys.is_empty() {
            return Err(ConfigError {
                key: "HERALD_API_KEY_HASHES".to_owned(),
                value: None,
                problem: "no API key is configured; set HERALD_API_KEY_HASHES (or HERALD_API_KEYS_FILE) to scope:sha256hex entries, or HERALD_API_KEYS to plain keys".to_owned(),
            });
        }
        let rate = env.number("HERALD_INGEST_RATE_LIMIT", 0, 0, 1_000_000)? as u32;
        let burst = env.number(
            "HERALD_INGEST_RATE_BURST",
            u64::from(rate.max(1)),
            1,
            1_000_000,
        )? as u32;
        let ingest_rate_limit = (rate > 0).then_some(IngestRateLimit {
            per_second: rate,
            burst,
        });
        let kafka = KafkaConfig::from_env(env)?;
        Ok(Self {
            listen_addr,
            api_keys,
            ingest_rate_limit,
            destinations: DestinationPolicy::from_env(env)?,
            secret_rotation_grace: env
                .duration("HERALD_SECRET_ROTATION_GRACE", Duration::from_secs(86_400))?,
            max_body_bytes: env.number("HERALD_MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20)? as usize,
            idempotency_ttl: env.duration("HERALD_IDEMPOTENCY_TTL", Duration::from_secs(86_400))?,
            breaker_window: env.duration("HERALD_BREAKER_WINDOW", Duration::from_secs(300))?,
            attempt_log: herald_core::attempt_log::AttemptLogConfig::from_env(env)?,
            dlq_retention: env
                .duration("HERALD_DLQ_RETENTION", Duration::from_secs(14 * 86_400))?,
            drain_timeout: herald_core::config::drain_timeout(env, &kafka)?,
            kafka,
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
            console: crate::console::ConsoleSettings::from_env(env)?,
        })
    }
}
