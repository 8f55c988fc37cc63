//! Bearer-token authentication of the API.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The accepted API keys, kept only as SHA-256 digests. A presented key is
/// hashed and compared against every digest in constant time, so neither the
/// comparison's timing nor a memory dump gives a key away.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Keys given in plain text.
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Check every key, without stopping at a match.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| found | d.ct_eq(&digest))
            .into()
    }
}

/// Rejects requests without a valid `Authorization: Bearer <key>`.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let is_event = request.uri().path() == "/v1/events";
    check_api_key(&state, &request).inspect_err(|_| {
        if is_event {
            herald_core::metrics::metrics()
                .events_rejected
                .get_or_create(&herald_core::metrics::label("reason", "unauthorized"))
                .inc();
        }
    })?;
    Ok(next.run(request).await)
}

fn check_api_key(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let header = request.headers().get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing Authorization header; send `Authorization: Bearer <api key>`",
        )
    })?;
    let key = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <api key>`")
        })?;
    if !state.api_keys.accepts(key) {
        return Err(ApiError::unauthorized("the API key is not valid"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert!(keys.accepts("first-key-0123456789"));
        assert!(keys.accepts("second-key-0123456789"));
        assert!(!keys.accepts("first-key-012345678"));
        assert!(!keys.accepts(""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }
}
