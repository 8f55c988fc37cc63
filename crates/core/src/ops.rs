//! The ops HTTP server of herald-fanout and herald-dispatcher, on
//! `HERALD_OPS_ADDR` (default `0.0.0.0:9090`): `GET /metrics`,
//! `GET /healthz` (the process is up) and `GET /readyz` (Kafka and Redis
//! answer).

use std::net::SocketAddr;
use std::time::Duration;

use crate::kafka::Producer;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};

/// Reads `HERALD_OPS_ADDR`.
pub fn ops_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    env.parse("HERALD_OPS_ADDR", ([0, 0, 0, 0], 9090).into(), |v| {
        v.parse()
            .map_err(|_| "expected an address and port such as 0.0.0.0:9090".to_owned())
    })
}

/// `GET /metrics` for any router.
pub async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::metrics().render(),
    )
}

/// What `/readyz` checks.
#[derive(Clone)]
struct Probes {
    producer: Producer,
    topic: String,
    redis: ConnectionManager,
}

/// Binds `addr` and serves until `shutdown`. A bind failure is returned at
/// once; serving happens in the background.
pub async fn serve(
    addr: SocketAddr,
    producer: Producer,
    topic: String,
    redis: ConnectionManager,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let probes = Probes {
        producer,
        topic,
        redis,
    };
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(move || {
                let probes = probes.clone();
                async move {
                    let kafka = crate::kafka::check_reachable(
                        &probes.producer,
                        &probes.topic,
                        Duration::from_secs(2),
                    );
                    let mut conn = probes.redis.clone();
                    let redis = async { redis::cmd("PING").query_async::<String>(&mut conn).await };
                    let (kafka, redis) = tokio::join!(kafka, redis);
                    match (kafka, redis) {
                        (Ok(()), Ok(_)) => (StatusCode::OK, "ready".to_owned()),
                        (kafka, redis) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "kafka: {}; redis: {}",
                                kafka.err().map_or("ok".to_owned(), |e| e.to_string()),
                                redis.err().map_or("ok".to_owned(), |e| e.to_string())
                            ),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "ops server listening");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "ops server stopped");
        }
    });
    Ok(bound)
}
