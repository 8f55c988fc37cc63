//! `GET /healthz` (the process is up) and `GET /readyz` (Kafka and Redis
//! answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether ingest can take events, and what it checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Each dependency: `ok`, or why not.
    checks: ReadinessChecks,
}

/// What `/readyz` checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok`, or why Kafka did not answer.
    kafka: String,
    /// `ok`, or why Redis did not answer.
    redis: String,
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = Alive)),
    security(())
)]
pub async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness: Kafka and Redis both answer.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Kafka or Redis does not answer", body = Readiness),
    ),
    security(())
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let timeout = Duration::from_secs(2);
    let kafka = herald_core::kafka::check_reachable(&state.producer, &state.events_topic, timeout);
    let redis = async {
        let mut conn = state.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    let (kafka, redis) = tokio::join!(kafka, redis);
    let kafka_ok = kafka.is_ok();
    let redis_ok = redis.is_ok();
    let describe = |ok: bool, err: Option<String>| {
        if ok {
            "ok".to_owned()
        } else {
            err.unwrap_or_default()
        }
    };
    let body = Readiness {
        status: if kafka_ok && redis_ok {
            "ready"
        } else {
            "unavailable"
        },
        checks: ReadinessChecks {
            kafka: describe(kafka_ok, kafka.err().map(|e| e.to_string())),
            redis: describe(redis_ok, redis.err().map(|e| e.to_string())),
        },
    };
    let status = if kafka_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
