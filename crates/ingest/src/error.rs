//! The API's one error type, rendered as `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an API caller. Validation errors say exactly what is
/// wrong; internal errors are logged in full and answered generically.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Sent as `Retry-After` (seconds), when set.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// Any status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 400 with a specific code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 for a dependency that is away; the detail goes to the log only.
    pub fn unavailable(code: &'static str, message: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(code, %detail, "{message}");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the details are in Herald's log",
        )
    }
}

impl From<herald_core::redis_store::StoreError> for ApiError {
    fn from(err: herald_core::redis_store::StoreError) -> Self {
        match err {
            herald_core::redis_store::StoreError::Redis(err) => err.into(),
            herald_core::redis_store::StoreError::Contended(what) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} is being changed by other requests right now; retry shortly"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        ApiError::unavailable(
            "redis_unavailable",
            "Redis is not available; retry later",
            err,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
