//! Management API for an application's endpoints, under
//! `/v1/applications/{app}`: `POST/GET …/endpoints`,
//! `GET/PATCH/DELETE …/endpoints/{id}`, `GET …/endpoints/{id}/secret`,
//! `POST …/endpoints/{id}/secret/rotate` and `GET …/endpoints/{id}/health`.
//! An endpoint of another application answers 404, as one that does not
//! exist.
//!
//! A URL is checked against the outbound address policy when it is set
//! ([`herald_core::destination`]); its host name is resolved for that, with
//! a short timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::endpoint::{Endpoint, EventTypePattern, validate_url};
use herald_core::event::{format_timestamp, new_endpoint_id, unix_millis};
use herald_core::signing::Secret;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::body::read_json;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::openapi::ErrorBody;
use crate::paging::{Listed, PageParams};
use crate::state::AppState;

/// Most custom headers on one endpoint.
pub(crate) const MAX_HEADERS: usize = 32;
/// Longest description.
const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest custom header value.
pub(crate) const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Headers that Herald sets itself, or that steer the connection rather than
/// the request, and that an endpoint may not set. `webhook-*` and `proxy-*`
/// are refused as prefixes.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "traceparent",
    "tracestate",
];
/// Prefixes of header names an endpoint cannot set: Herald's signature
/// headers, and what proxies read.
pub(crate) const RESERVED_HEADER_PREFIXES: &[&str] = &["webhook-", "proxy-"];
/// How long registration waits for a host name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest grace period a rotation may ask for.
const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// Body of `POST /v1/applications/{app}/endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where the webhooks go.
    #[schema(schema_with = crate::openapi::endpoint_url)]
    url: String,
    /// What it subscribes to.
    #[schema(schema_with = crate::openapi::event_types)]
    event_types: Vec<String>,
    /// Free text, at most 1024 characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Sent with every webhook.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::custom_headers)]
    headers: Option<BTreeMap<String, String>>,
    /// A disabled endpoint receives nothing.
    #[serde(default)]
    disabled: Option<bool>,
    /// The signing secret; generated when absent.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::endpoint_secret)]
    secret: Option<String>,
    /// Most deliveries per second, across dispatcher replicas.
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    #[schema(minimum = 1, maximum = 100000)]
    rate_limit: Option<u32>,
}

/// Body of `PATCH /v1/applications/{app}/endpoints/{id}`: only the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    /// Where the webhooks go.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::endpoint_url_or_null)]
    url: Option<String>,
    /// Replaces all its subscriptions.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::event_types_or_null)]
    event_types: Option<Vec<String>>,
    /// Free text, at most 1024 characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Replaces all its custom headers.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::custom_headers)]
    headers: Option<BTreeMap<String, String>>,
    /// `false` also clears why it was disabled.
    #[serde(default)]
    disabled: Option<bool>,
    /// `null` removes the limit; absent leaves it as it is.
    #[serde(default, deserialize_with = "crate::body::whole::present_or_null")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    rate_limit: Option<Option<u32>>,
}

/// An endpoint as the API shows it: without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView<'a> {
    /// `ep_…`, unique across Herald.
    id: &'a str,
    /// The application it belongs to.
    application_id: &'a str,
    /// Where the webhooks go.
    url: &'a str,
    /// Exact types, `prefix.*` or `*`.
    event_types: &'a [String],
    /// Free text.
    description: &'a str,
    /// Sent with every webhook.
    headers: &'a BTreeMap<String, String>,
    /// A disabled endpoint receives nothing.
    disabled: bool,
    /// Why Herald disabled it (an endpoint that answered 410).
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<&'a str>,
    /// Most deliveries per second, or `null`.
    rate_limit: Option<u32>,
    /// RFC 3339.
    created_at: &'a str,
    /// RFC 3339.
    updated_at: &'a str,
}

/// A new endpoint, with its secret (shown here and by `GET …/secret`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint<'a> {
    #[serde(flatten)]
    endpoint: EndpointView<'a>,
    /// The signing secret.
    secret: &'a str,
}

/// An endpoint's signing secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// The secret that signs.
    secret: String,
    /// Rotated-out secrets that still sign beside it, until they expire.
    previous_secrets: Vec<PreviousSecret>,
}

/// A rotated-out secret in its grace period.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousSecret {
    /// The secret.
    secret: String,
    /// RFC 3339: when it stops signing.
    expires_at: String,
}

/// The outcome of a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret.
    secret: String,
    /// RFC 3339: when the old one stops signing; `null` when it stopped at
    /// once.
    previous_secret_expires_at: Option<String>,
}

/// An endpoint's circuit breaker, as every dispatcher sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointHealth {
    /// The endpoint.
    endpoint_id: String,
    /// Whether it is disabled.
    disabled: bool,
    /// `closed`, `open` or `half_open`.
    #[schema(example = "closed")]
    state: String,
    /// Failures in a row.
    consecutive_failures: u64,
    /// The attempts in the breaker's window.
    recent: RecentAttempts,
    /// RFC 3339: when an open breaker lets a probe through.
    next_probe_at: Option<String>,
    /// RFC 3339: when it last opened.
    opened_at: Option<String>,
    /// The last failure's description.
    last_error: Option<String>,
    /// RFC 3339.
    last_failure_at: Option<String>,
    /// RFC 3339.
    last_success_at: Option<String>,
}

/// Attempts in the breaker's window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentAttempts {
    /// Successful ones.
    successes: u64,
    /// Failed ones.
    failures: u64,
    /// The window, in seconds.
    window_seconds: u64,
}

impl<'a> From<&'a Endpoint> for EndpointView<'a> {
    fn from(e: &'a Endpoint) -> Self {
        Self {
            id: &e.id,
            application_id: &e.application_id,
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

/// 400 `invalid_field`: "field `{field}` {problem}".
pub(crate) fn invalid(field: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("field `{field}` {problem}"))
}

async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    let parsed = validate_url(url).map_err(|p| invalid("url", p))?;
    state
        .destinations
        .check_registration(&parsed, RESOLVE_TIMEOUT)
        .await
        .map_err(|refused| {
            ApiError::bad_request(
                "destination_not_allowed",
                format!("field `url` is not allowed: {refused}"),
            )
        })
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
    if description.chars().count() > MAX_DESCRIPTION_LEN {
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
        if RESERVED_HEADERS.contains(&lower)
            || RESERVED_HEADER_PREFIXES
                .iter()
                .any(|prefix| lower.starts_with(prefix))
        {
            return Err(invalid(
                "headers",
                format_args!(
                    "may not set {name:?}: Herald sets that header itself, or it steers the connection"
                ),
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(invalid(
                "headers",
                format_args!(
                    "has a value for {name:?} longer than {MAX_HEADER_VALUE_LEN} characters"
                ),
            ));
        }
        // Printable ASCII only: no line breaks to smuggle headers with, and
        // no bytes whose meaning depends on the receiver's charset.
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(invalid(
                "headers",
                format_args!(
                    "has an invalid value for {name:?} (printable ASCII only, no control characters or line breaks)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a `rate_limit` of `what` (e.g. "deliveries") per second: 1 to
/// 100,000, or none. Endpoints and applications share it.
pub(crate) fn check_rate_limit(limit: Option<u32>, what: &str) -> Result<(), ApiError> {
    match limit {
        Some(0) => Err(invalid(
            "rate_limit",
            format!("must be at least 1 ({what} per second), or null for no limit"),
        )),
        Some(n) if n > 100_000 => Err(invalid(
            "rate_limit",
            format!("may be at most 100000 {what} per second"),
        )),
        _ => Ok(()),
    }
}

fn now() -> (OffsetDateTime, String) {
    let now = OffsetDateTime::now_utc();
    (now, format_timestamp(now))
}

/// Registers an endpoint of the application; answers with its secret.
#[utoipa::path(
    post,
    path = "/v1/applications/{app}/endpoints",
    operation_id = "create_endpoint",
    tag = "endpoints",
    params(("app" = String, Path, description = "The application's id")),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Registered", body = CreatedEndpoint<'_>),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`, `destination_not_allowed`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CreateEndpoint = read_json(&headers, body, state.max_body_bytes).await?;
    crate::applications::find(&state, &app).await?;
    check_url(&state, &request.url).await?;
    check_event_types(&request.event_types)?;
    let description = request.description.unwrap_or_default();
    check_description(&description)?;
    let custom_headers = request.headers.unwrap_or_default();
    check_headers(&custom_headers)?;
    check_rate_limit(request.rate_limit, "deliveries")?;
    let secret = match request.secret {
        Some(text) => Secret::parse(&text).map_err(|p| invalid("secret", p))?,
        None => Secret::generate(),
    };
    let (now, now_text) = now();
    let endpoint = Endpoint {
        id: new_endpoint_id(),
        application_id: app.clone(),
        url: request.url,
        event_types: request.event_types,
        description,
        headers: custom_headers,
        disabled: request.disabled.unwrap_or(false),
        disabled_reason: None,
        rate_limit: request.rate_limit,
        secret: secret.expose(),
        previous_secrets: Vec::new(),
        created_at: now_text.clone(),
        updated_at: now_text,
    };
    if !state.endpoints.create(&endpoint, unix_millis(now)).await? {
        // Deleted meanwhile.
        return Err(crate::applications::not_found(&app));
    }
    tracing::info!(
        endpoint_id = %endpoint.id,
        application_id = %app,
        url = %herald_core::endpoint::redacted_url(&endpoint.url),
        "endpoint created"
    );
    let created = CreatedEndpoint {
        endpoint: EndpointView::from(&endpoint),
        secret: &endpoint.secret,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Lists the application's endpoints, a page at a time, in creation
/// order.
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/endpoints",
    operation_id = "list_endpoints",
    tag = "endpoints",
    params(("app" = String, Path, description = "The application's id"), PageParams),
    responses(
        (status = 200, description = "A page", body = Listed<EndpointView<'_>>),
        (status = 400, description = "`invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(paging): Query<PageParams>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    crate::applications::find(&state, &app).await?;
    let mut endpoints = state.endpoints.list(&app, page.start, page.fetch()).await?;
    Ok(Json(page.answer(&mut endpoints, EndpointView::from)).into_response())
}

/// The endpoint `id` of application `app`, or a 404: an endpoint of
/// another application is answered exactly as one that does not exist.
pub async fn find(state: &AppState, app: &str, id: &str) -> Result<Endpoint, ApiError> {
    match state.endpoints.get(id).await? {
        Some(endpoint) if endpoint.application_id == app => Ok(endpoint),
        _ => {
            crate::applications::find(state, app).await?;
            Err(ApiError::not_found(format!(
                "no endpoint with id {id:?} in application {app:?}"
            )))
        }
    }
}

/// One endpoint (without its secret).
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/endpoints/{id}",
    operation_id = "get_endpoint",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 200, description = "The endpoint", body = EndpointView<'_>),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, &app, &id).await?;
    Ok(Json(EndpointView::from(&endpoint)).into_response())
}

/// The endpoint's signing secret, with the rotated-out secrets that still
/// sign.
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/endpoints/{id}/secret",
    operation_id = "get_endpoint_secret",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 200, description = "Its secrets", body = SecretView),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn get_secret(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<SecretView>, ApiError> {
    let endpoint = find(&state, &app, &id).await?;
    let now_ms = unix_millis(OffsetDateTime::now_utc());
    let previous_secrets = endpoint
        .previous_secrets
        .iter()
        .filter(|s| s.expires_at_ms > now_ms)
        .map(|s| PreviousSecret {
            secret: s.secret.clone(),
            expires_at: format_timestamp(herald_core::event::from_unix_millis(s.expires_at_ms)),
        })
        .collect();
    Ok(Json(SecretView {
        secret: endpoint.secret,
        previous_secrets,
    }))
}

/// Body of `POST /v1/applications/{app}/endpoints/{id}/secret/rotate`
/// (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the current secret keeps signing, in seconds; `0` retires
    /// it at once. `HERALD_SECRET_ROTATION_GRACE` when absent; at most
    /// 2592000 (30 days).
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    #[schema(example = 86400, minimum = 0, maximum = 2592000)]
    grace_period_seconds: Option<u32>,
    /// The new secret; generated when absent.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::rotated_secret)]
    secret: Option<String>,
}

/// A new signing secret. The old one keeps signing beside it (two
/// signatures in `webhook-signature`) for the grace period, so receivers
/// can switch at their own pace.
#[utoipa::path(
    post,
    path = "/v1/applications/{app}/endpoints/{id}/secret/rotate",
    operation_id = "rotate_endpoint_secret",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    request_body(content = Option<RotateSecret>, description = "Optional: with none, a secret is generated and the old one signs for the default grace period"),
    responses(
        (status = 200, description = "Rotated", body = RotatedSecret),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it kept changing under this change", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RotatedSecret>, ApiError> {
    // The body is optional: without a Content-Type it must be empty.
    // `null` is no body too.
    let request: RotateSecret = if headers.contains_key(axum::http::header::CONTENT_TYPE) {
        read_json::<Option<RotateSecret>>(&headers, body, state.max_body_bytes)
            .await?
            .unwrap_or_default()
    } else {
        let bytes = axum::body::to_bytes(body, state.max_body_bytes)
            .await
            .map_err(|_| invalid("body", "could not be read"))?;
        if !bytes.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with `Content-Type: application/json` (got none)",
            ));
        }
        RotateSecret::default()
    };
    let grace = match request.grace_period_seconds {
        None => state.secret_rotation_grace,
        Some(seconds) => Duration::from_secs(seconds.into()),
    };
    if grace > MAX_ROTATION_GRACE {
        return Err(invalid(
            "grace_period_seconds",
            "may be at most 2592000 (30 days): the old secret should not sign forever",
        ));
    }
    let secret = match &request.secret {
        Some(text) => Secret::parse(text).map_err(|p| invalid("secret", p))?,
        None => Secret::generate(),
    };
    find(&state, &app, &id).await?;
    let (now, now_text) = now();
    let now_ms = unix_millis(now);
    // Atomic: a change written meanwhile (a 410 disabling the endpoint, a
    // PATCH) is kept, and this rotation applied on top of it.
    let endpoint = state
        .endpoints
        .modify(&id, |endpoint| {
            endpoint.rotate_secret(&secret, grace.as_millis() as i64, now_ms);
            endpoint.updated_at = now_text.clone();
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no endpoint with id {id:?}")))?;
    let grace_text = herald_core::config::format_duration(grace);
    tracing::info!(endpoint_id = %id, grace = %grace_text, "endpoint secret rotated");
    let expires_at = (!grace.is_zero()).then(|| {
        format_timestamp(herald_core::event::from_unix_millis(
            now_ms + grace.as_millis() as i64,
        ))
    });
    Ok(Json(RotatedSecret {
        secret: endpoint.secret,
        previous_secret_expires_at: expires_at,
    }))
}

/// The endpoint's circuit breaker and recent attempts, as every
/// dispatcher sees them.
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/endpoints/{id}/health",
    operation_id = "get_endpoint_health",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 200, description = "Its breaker", body = EndpointHealth),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn health(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<EndpointHealth>, ApiError> {
    let endpoint = find(&state, &app, &id).await?;
    let now = OffsetDateTime::now_utc();
    let status = herald_core::circuit::read_status(
        &state.redis,
        &state.keys,
        &id,
        state.breaker_window,
        unix_millis(now),
    )
    .await?;
    let time =
        |ms: Option<i64>| ms.map(|ms| format_timestamp(herald_core::event::from_unix_millis(ms)));
    Ok(Json(EndpointHealth {
        endpoint_id: id,
        disabled: endpoint.disabled,
        state: status.state,
        consecutive_failures: status.consecutive_failures,
        recent: RecentAttempts {
            successes: status.recent_successes,
            failures: status.recent_failures,
            window_seconds: status.window_seconds,
        },
        next_probe_at: time(status.next_probe_at_ms),
        opened_at: time(status.opened_at_ms),
        last_error: status.last_error,
        last_failure_at: time(status.last_failure_at_ms),
        last_success_at: time(status.last_success_at_ms),
    }))
}

/// Changes the fields given, and keeps the others.
#[utoipa::path(
    patch,
    path = "/v1/applications/{app}/endpoints/{id}",
    operation_id = "update_endpoint",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    request_body = UpdateEndpoint,
    responses(
        (status = 200, description = "The endpoint as changed", body = EndpointView<'_>),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`, `destination_not_allowed`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it kept changing under this change", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: UpdateEndpoint = read_json(&headers, body, state.max_body_bytes).await?;
    // An unknown endpoint is a 404 before any field is judged.
    find(&state, &app, &id).await?;
    if let Some(url) = &request.url {
        check_url(&state, url).await?;
    }
    if let Some(types) = &request.event_types {
        check_event_types(types)?;
    }
    if let Some(description) = &request.description {
        check_description(description)?;
    }
    if let Some(custom_headers) = &request.headers {
        check_headers(custom_headers)?;
    }
    if let Some(limit) = request.rate_limit {
        check_rate_limit(limit, "deliveries")?;
    }
    let updated_at = now().1;
    // Atomic: only the given fields change, on top of whatever was written
    // meanwhile (a rotated secret, a 410 disabling the endpoint).
    let endpoint = state
        .endpoints
        .modify(&id, |endpoint| {
            if let Some(url) = &request.url {
                endpoint.url.clone_from(url);
            }
            if let Some(types) = &request.event_types {
                endpoint.event_types.clone_from(types);
            }
            if let Some(description) = &request.description {
                endpoint.description.clone_from(description);
            }
            if let Some(custom_headers) = &request.headers {
                endpoint.headers.clone_from(custom_headers);
            }
            if let Some(disabled) = request.disabled {
                endpoint.disabled = disabled;
                if !disabled {
                    endpoint.disabled_reason = None;
                }
            }
            if let Some(limit) = request.rate_limit {
                endpoint.rate_limit = limit;
            }
            endpoint.updated_at.clone_from(&updated_at);
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no endpoint with id {id:?}")))?;
    tracing::info!(endpoint_id = %id, "endpoint updated");
    Ok(Json(EndpointView::from(&endpoint)).into_response())
}

/// Deletes the endpoint. Deliveries already on their way to it end in the
/// DLQ as `endpoint_deleted`.
#[utoipa::path(
    delete,
    path = "/v1/applications/{app}/endpoints/{id}",
    operation_id = "delete_endpoint",
    tag = "endpoints",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
    ),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 204, description = "Deleted"),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let endpoint = find(&state, &app, &id).await?;
    if state.endpoints.delete(&endpoint).await? {
        tracing::info!(endpoint_id = %id, application_id = %app, "endpoint deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no endpoint with id {id:?} in application {app:?}"
        )))
    }
}
