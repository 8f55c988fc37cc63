//! Management API for endpoints: `POST/GET /v1/endpoints`,
//! `GET/PATCH/DELETE /v1/endpoints/{id}` and `GET /v1/endpoints/{id}/secret`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use herald_core::endpoint::{Endpoint, EventTypePattern, validate_url};
use herald_core::event::{format_timestamp, new_endpoint_id, unix_millis};
use herald_core::signing::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::body::read_json;
use crate::error::ApiError;
use crate::paging::PageParams;
use crate::state::AppState;

/// Longest accepted URL.
const MAX_URL_LEN: usize = 2048;
/// Most custom headers on one endpoint.
const MAX_HEADERS: usize = 32;
/// Longest description.
const MAX_DESCRIPTION_LEN: usize = 1024;
/// Headers that Herald sets itself and an endpoint may not override.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// Body of `POST /v1/endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    url: String,
    event_types: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    rate_limit: Option<u32>,
}

/// Body of `PATCH /v1/endpoints/{id}`: only the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    disabled: Option<bool>,
    /// `null` removes the limit; absent leaves it as it is.
    #[serde(default, deserialize_with = "present_or_null")]
    rate_limit: Option<Option<u32>>,
}

/// Tells `"field": null` (Some(None)) from an absent field (None).
fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An endpoint as the API shows it: without its secret.
#[derive(Debug, Serialize)]
pub struct EndpointView<'a> {
    id: &'a str,
    url: &'a str,
    event_types: &'a [String],
    description: &'a str,
    headers: &'a BTreeMap<String, String>,
    disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<&'a str>,
    rate_limit: Option<u32>,
    created_at: &'a str,
    updated_at: &'a str,
}

impl<'a> From<&'a Endpoint> for EndpointView<'a> {
    fn from(e: &'a Endpoint) -> Self {
        Self {
            id: &e.id,
            url: &e.url,
            event_types: &e.event_types,
            description: &e.description,
            headers: &e.headers,
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.as_deref(),
            rate_limit: e.rate_limit,
            created_at: &e.created_at,
            updated_at: &e.updated_at,
        }
    }
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("field `{field}` {problem}"))
}

fn check_url(url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL_LEN {
        return Err(invalid(
            "url",
            format_args!(
                "is {} characters long; the limit is {MAX_URL_LEN}",
                url.len()
            ),
        ));
    }
    validate_url(url).map(|_| ()).map_err(|p| invalid("url", p))
}

fn check_event_types(types: &[String]) -> Result<(), ApiError> {
    if types.is_empty() {
        return Err(invalid(
            "event_types",
            "must list at least one event type, `prefix.*` or `*`",
        ));
    }
    if types.len() > 256 {
        return Err(invalid("event_types", "may list at most 256 entries"));
    }
    for pattern in types {
        EventTypePattern::parse(pattern)
            .map_err(|p| invalid("event_types", format_args!("has an invalid entry: {p}")))?;
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ApiError> {
    if description.len() > MAX_DESCRIPTION_LEN {
        return Err(invalid(
            "description",
            format_args!("may be at most {MAX_DESCRIPTION_LEN} characters long"),
        ));
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(
            "headers",
            format_args!("may hold at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "headers",
                format_args!("has an invalid header name {name:?}"),
            )
        })?;
        let lower = parsed.as_str();
        if RESERVED_HEADERS.contains(&lower) || lower.starts_with("webhook-") {
            return Err(invalid(
                "headers",
                format_args!("may not set {name:?}: Herald sets that header itself"),
            ));
        }
        HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "headers",
                format_args!(
                    "has an invalid value for {name:?} (no control characters or line breaks)"
                ),
            )
        })?;
    }
    Ok(())
}

fn check_rate_limit(limit: Option<u32>) -> Result<(), ApiError> {
    match limit {
        Some(0) => Err(invalid(
            "rate_limit",
            "must be at least 1 delivery per second (or null for no limit)",
        )),
        Some(n) if n > 100_000 => Err(invalid(
            "rate_limit",
            "may be at most 100000 deliveries per second",
        )),
        _ => Ok(()),
    }
}

fn now() -> (OffsetDateTime, String) {
    let now = OffsetDateTime::now_utc();
    (now, format_timestamp(now))
}

/// `POST /v1/endpoints`: 201 with the endpoint and its secret.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: CreateEndpoint = read_json(&headers, body, state.max_body_bytes).await?;
    check_url(&request.url)?;
    check_event_types(&request.event_types)?;
    let description = request.description.unwrap_or_default();
    check_description(&description)?;
    let custom_headers = request.headers.unwrap_or_default();
    check_headers(&custom_headers)?;
    check_rate_limit(request.rate_limit)?;
    let secret = match request.secret {
        Some(text) => Secret::parse(&text).map_err(|p| invalid("secret", p))?,
        None => Secret::generate(),
    };
    let (now, now_text) = now();
    let endpoint = Endpoint {
        id: new_endpoint_id(),
        url: request.url,
        event_types: request.event_types,
        description,
        headers: custom_headers,
        disabled: request.disabled.unwrap_or(false),
        disabled_reason: None,
        rate_limit: request.rate_limit,
        secret: secret.expose(),
        created_at: now_text.clone(),
        updated_at: now_text,
    };
    state.endpoints.create(&endpoint, unix_millis(now)).await?;
    tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, "endpoint created");
    let mut view =
        serde_json::to_value(EndpointView::from(&endpoint)).map_err(ApiError::internal)?;
    view["secret"] = Value::String(endpoint.secret.clone());
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/endpoints?limit=50&cursor=…`: a page in creation order, with
/// `next_cursor` when there are more.
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = paging.page()?;
    let mut endpoints = state.endpoints.list(page.start, page.fetch()).await?;
    let next_cursor = page.finish(&mut endpoints);
    let data: Vec<EndpointView<'_>> = endpoints.iter().map(EndpointView::from).collect();
    Ok(Json(json!({ "data": data, "next_cursor": next_cursor })))
}

async fn find(state: &AppState, id: &str) -> Result<Endpoint, ApiError> {
    state
        .endpoints
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no endpoint with id {id:?}")))
}

/// `GET /v1/endpoints/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = find(&state, &id).await?;
    Ok(Json(
        serde_json::to_value(EndpointView::from(&endpoint)).map_err(ApiError::internal)?,
    ))
}

/// `GET /v1/endpoints/{id}/secret`: the only read of a secret after creation.
pub async fn get_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = find(&state, &id).await?;
    Ok(Json(json!({ "secret": endpoint.secret })))
}

/// `GET /v1/endpoints/{id}/health`: the circuit breaker's state and the
/// recent attempts, as every dispatcher sees them.
pub async fn health(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = find(&state, &id).await?;
    let now = OffsetDateTime::now_utc();
    let status = herald_core::circuit::read_status(
        &state.redis,
        state.keys.prefix(),
        &id,
        state.breaker_window,
        unix_millis(now),
    )
    .await?;
    let time =
        |ms: Option<i64>| ms.map(|ms| format_timestamp(herald_core::event::from_unix_millis(ms)));
    Ok(Json(json!({
        "endpoint_id": id,
        "disabled": endpoint.disabled,
        "state": status.state,
        "consecutive_failures": status.consecutive_failures,
        "recent": {
            "successes": status.recent_successes,
            "failures": status.recent_failures,
            "window_seconds": status.window_seconds,
        },
        "next_probe_at": time(status.next_probe_at_ms),
        "opened_at": time(status.opened_at_ms),
        "last_error": status.last_error,
        "last_failure_at": time(status.last_failure_at_ms),
        "last_success_at": time(status.last_success_at_ms),
    })))
}

/// `PATCH /v1/endpoints/{id}`: changes the given fields.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let request: UpdateEndpoint = read_json(&headers, body, state.max_body_bytes).await?;
    let mut endpoint = find(&state, &id).await?;
    if let Some(url) = request.url {
        check_url(&url)?;
        endpoint.url = url;
    }
    if let Some(types) = request.event_types {
        check_event_types(&types)?;
        endpoint.event_types = types;
    }
    if let Some(description) = request.description {
        check_description(&description)?;
        endpoint.description = description;
    }
    if let Some(custom_headers) = request.headers {
        check_headers(&custom_headers)?;
        endpoint.headers = custom_headers;
    }
    if let Some(disabled) = request.disabled {
        endpoint.disabled = disabled;
        if !disabled {
            endpoint.disabled_reason = None;
        }
    }
    if let Some(limit) = request.rate_limit {
        check_rate_limit(limit)?;
        endpoint.rate_limit = limit;
    }
    endpoint.updated_at = now().1;
    if !state.endpoints.update(&endpoint).await? {
        return Err(ApiError::not_found(format!("no endpoint with id {id:?}")));
    }
    tracing::info!(endpoint_id = %id, "endpoint updated");
    Ok(Json(
        serde_json::to_value(EndpointView::from(&endpoint)).map_err(ApiError::internal)?,
    ))
}

/// `DELETE /v1/endpoints/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.endpoints.delete(&id).await? {
        tracing::info!(endpoint_id = %id, "endpoint deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no endpoint with id {id:?}")))
    }
}
