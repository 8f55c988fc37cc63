//! `GET /healthz` (the process is up) and `GET /readyz` (Kafka and Redis
//! answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// Liveness: answers as long as the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: Kafka and Redis both answer.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
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
    let body = json!({
        "status": if kafka_ok && redis_ok { "ready" } else { "unavailable" },
        "checks": {
            "kafka": describe(kafka_ok, kafka.err().map(|e| e.to_string())),
            "redis": describe(redis_ok, redis.err().map(|e| e.to_string())),
        }
    });
    let status = if kafka_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
