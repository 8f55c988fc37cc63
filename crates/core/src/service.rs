//! The skeleton every Herald service shares.
//!
//! [`main`] is each binary's whole `main`: read the configuration (exit 2,
//! naming the variable, when it is wrong), start logging and tracing, run
//! the service until SIGINT or SIGTERM, flush the traces, and exit 1 when
//! the service stopped with an error.
//!
//! [`start_worker`] is the start of the two consuming services, fan-out and
//! the dispatchers: create their topics (waiting for the broker), connect to
//! Redis, and serve `/metrics`, `/healthz` and `/readyz`.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env, KafkaConfig, RedisConfig};
use crate::kafka::Producer;
use crate::redis_store;
use crate::telemetry::LogConfig;

/// A service's configuration.
pub trait ServiceConfig: Sized {
    /// Reads and validates it.
    fn from_env(env: &Env) -> Result<Self, ConfigError>;
    /// Its logging settings.
    fn log(&self) -> &LogConfig;
}

/// Runs the service `name` with `serve` (see the module docs).
pub async fn main<C, F, Fut, E>(name: &'static str, serve: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match C::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{name}: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match crate::telemetry::init(config.log(), name) {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("{name}: configuration error: {problem}");
            return ExitCode::from(2);
        }
    };
    let shutdown = crate::shutdown::on_signal();
    let code = match serve(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{name} stopped with an error");
            ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// Why a service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Kafka client creation or consumption failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client creation failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The ops server cannot listen.
    #[error("ops server: {0}")]
    Ops(#[from] std::io::Error),
}

/// What a consuming service starts with.
#[derive(Debug, Clone, Copy)]
pub struct Worker<'a> {
    /// Kafka settings.
    pub kafka: &'a KafkaConfig,
    /// Redis settings.
    pub redis: &'a RedisConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub ops_addr: SocketAddr,
    /// Every topic the service reads or writes, created when missing.
    pub topics: &'a [String],
    /// The topic `/readyz` asks the broker about.
    pub probe_topic: &'a str,
}

/// Creates the worker's topics (retrying while the broker is away),
/// connects to Redis and starts the ops server, whose readiness probe uses
/// `ops_producer`. `Ok(None)` when `shutdown` came first.
pub async fn start_worker(
    worker: Worker<'_>,
    ops_producer: Producer,
    shutdown: &CancellationToken,
) -> Result<Option<ConnectionManager>, ServiceError> {
    crate::kafka::ensure_topics_with_retry(worker.kafka, worker.topics, shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(None);
    }
    let redis = redis_store::connect(worker.redis)?;
    crate::ops::serve(
        worker.ops_addr,
        ops_producer,
        worker.probe_topic.to_owned(),
        redis.clone(),
        shutdown.clone(),
    )
    .await?;
    Ok(Some(redis))
}
