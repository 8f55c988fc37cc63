//! The skeleton every Herald service shares.
//!
//! [`main`] is each binary's whole `main`: read the configuration (exit 2,
//! naming the variable, when it is wrong), start the async runtime with
//! `HERALD_WORKER_THREADS` threads ([`Threads`]), start logging and
//! tracing, run the service until SIGINT or SIGTERM, flush the traces, and
//! exit 1 when the service stopped with an error.
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

/// How many threads run a service's tasks when `HERALD_WORKER_THREADS`
/// is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One. Fan-out and the dispatchers: their work comes from a consumer's
    /// own poll thread and goes to librdkafka's and the sockets' own
    /// threads, and a second worker mostly woke and parked again. On two
    /// shared cores, one worker cost the dispatcher 20–35 % less CPU per
    /// webhook at the same throughput (README, "Cost per webhook"); they
    /// scale by replicas.
    One,
    /// One per core the process may use. Ingest: requests arrive on many
    /// connections at once.
    PerCore,
}

/// Most threads `HERALD_WORKER_THREADS` may ask for.
const MAX_WORKER_THREADS: u64 = 256;

/// The number of worker threads: `HERALD_WORKER_THREADS`, or `default`.
pub fn worker_threads(env: &Env, default: Threads) -> Result<usize, ConfigError> {
    let default = match default {
        Threads::One => 1,
        Threads::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let threads = env.number(
        "HERALD_WORKER_THREADS",
        default as u64,
        1,
        MAX_WORKER_THREADS,
    )?;
    Ok(threads as usize)
}

/// Runs the service `name` with `serve` (see the module docs), its tasks
/// on `threads` worker threads unless `HERALD_WORKER_THREADS` says.
pub fn main<C, F, Fut, E>(name: &'static str, threads: Threads, serve: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let env = Env::from_process();
    let (config, threads) = match C::from_env(&env).and_then(|config| {
        let threads = worker_threads(&env, threads)?;
        Ok((config, threads))
    }) {
        Ok(read) => read,
        Err(err) => {
            eprintln!("{name}: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start its runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(name, config, serve))
}

/// [`main`] once the runtime runs.
async fn run<C, F, Fut, E>(name: &'static str, config: C, serve: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
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

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(pairs: &[(&str, &str)], default: Threads) -> Result<usize, String> {
        worker_threads(&Env::from_pairs(pairs.iter().copied()), default).map_err(|e| e.to_string())
    }

    #[test]
    fn worker_threads_default_per_service_and_can_be_set() {
        assert_eq!(threads(&[], Threads::One), Ok(1));
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(threads(&[], Threads::PerCore), Ok(cores));
        assert_eq!(
            threads(&[("HERALD_WORKER_THREADS", "4")], Threads::One),
            Ok(4)
        );
        for bad in ["0", "many", "257"] {
            let err = threads(&[("HERALD_WORKER_THREADS", bad)], Threads::One).unwrap_err();
            assert!(err.contains("HERALD_WORKER_THREADS"), "{bad}: {err}");
        }
    }
}
