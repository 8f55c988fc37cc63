//! `Path` and `Query` as axum's, but a request they cannot read is answered
//! like every other bad request, `400 {"error": {"code", "message"}}`
//! (`invalid_path`, `invalid_query`), instead of axum's plain-text
//! rejection. The API fuzzer found those: a `limit=abc` or a path segment
//! that is not UTF-8 was answered in `text/plain`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The path's parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

/// The query string's parameters.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_path",
                format!("the path cannot be read: {}", rejection.body_text()),
            )),
        }
    }
}

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                format!("the query string cannot be read: {}", rejection.body_text()),
            )),
        }
    }
}
