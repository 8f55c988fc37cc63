//! Management API for applications, the platform's customers:
//! `POST/GET /v1/applications`, `GET/PATCH/DELETE /v1/applications/{app}`.
//! Endpoints live under their application (`endpoints`), and events are
//! addressed to one (`events`).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use herald_core::application::Application;
use herald_core::event::{
    format_timestamp, new_application_id, unix_millis, validate_application_id,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::body::read_json;
use crate::endpoints::{check_rate_limit, invalid};
use crate::error::ApiError;
use crate::paging::PageParams;
use crate::state::AppState;

/// Longest name.
const MAX_NAME_LEN: usize = 256;
/// Most metadata pairs.
const MAX_METADATA: usize = 32;
/// Longest metadata key.
const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest metadata value.
const MAX_METADATA_VALUE_LEN: usize = 1024;

/// Body of `POST /v1/applications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<u32>,
}

/// Body of `PATCH /v1/applications/{app}`: only the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApplication {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    /// `null` removes the limit; absent leaves it as it is.
    #[serde(default, deserialize_with = "crate::endpoints::present_or_null")]
    rate_limit: Option<Option<u32>>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA {
        return Err(invalid(
            "metadata",
            format!("has more than {MAX_METADATA} entries"),
        ));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
            return Err(invalid(
                "metadata",
                format!("keys must be 1-{MAX_METADATA_KEY_LEN} bytes long"),
            ));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(invalid(
                "metadata",
                format!("value of {key:?} is longer than {MAX_METADATA_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// The 404 of an application that does not exist, for every route under it.
pub fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "application_not_found",
        format!("no application with id {id:?}"),
    )
}

/// The application, or its 404.
pub async fn find(state: &AppState, id: &str) -> Result<Application, ApiError> {
    state
        .applications
        .get(id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn view(app: &Application) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "metadata": app.metadata,
        "rate_limit": app.rate_limit,
        "created_at": app.created_at,
        "updated_at": app.updated_at,
    })
}

/// `POST /v1/applications`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: CreateApplication = read_json(&headers, body, state.max_body_bytes).await?;
    let id = match request.id {
        Some(id) => {
            validate_application_id(&id).map_err(|problem| invalid("id", problem))?;
            id
        }
        None => new_application_id(),
    };
    check_name(&request.name)?;
    let metadata = request.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    check_rate_limit(request.rate_limit, "events")?;
    let now = OffsetDateTime::now_utc();
    let app = Application {
        id,
        name: request.name,
        metadata,
        rate_limit: request.rate_limit,
        created_at: format_timestamp(now),
        updated_at: format_timestamp(now),
    };
    if !state.applications.create(&app, unix_millis(now)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "application_exists",
            format!("an application with id {:?} exists already", app.id),
        ));
    }
    tracing::info!(application_id = %app.id, "application created");
    Ok((StatusCode::CREATED, Json(view(&app))))
}

/// `GET /v1/applications?limit=50&cursor=…`.
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = paging.page()?;
    let mut apps = state.applications.list(page.start, page.fetch()).await?;
    let next_cursor = page.finish(&mut apps);
    let data: Vec<Value> = apps.iter().map(view).collect();
    Ok(Json(json!({ "data": data, "next_cursor": next_cursor })))
}

/// `GET /v1/applications/{app}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&find(&state, &id).await?)))
}

/// `PATCH /v1/applications/{app}`.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let request: UpdateApplication = read_json(&headers, body, state.max_body_bytes).await?;
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    if let Some(metadata) = &request.metadata {
        check_metadata(metadata)?;
    }
    if let Some(limit) = request.rate_limit {
        check_rate_limit(limit, "events")?;
    }
    let now = format_timestamp(OffsetDateTime::now_utc());
    let app = state
        .applications
        .modify(&id, |app| {
            if let Some(name) = &request.name {
                app.name = name.clone();
            }
            if let Some(metadata) = &request.metadata {
                app.metadata = metadata.clone();
            }
            if let Some(limit) = request.rate_limit {
                app.rate_limit = limit;
            }
            app.updated_at = now.clone();
        })
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&app)))
}

/// `DELETE /v1/applications/{app}`: the application and all its endpoints.
/// Deliveries already on their way to them are dead-lettered as
/// `endpoint_deleted` by the dispatchers.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state.applications.delete(&id).await? {
        Some(endpoints) => {
            tracing::info!(application_id = %id, endpoints, "application deleted with its endpoints");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(not_found(&id)),
    }
}

/// Longest life of an application token.
const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Body of `POST /v1/applications/{app}/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    scope: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST /v1/applications/{app}/tokens`: `201 {"token", "id", "scope",
/// "expires_at"}`. The token is shown once; Herald keeps only its digest.
pub async fn issue_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: IssueToken = read_json(&headers, body, state.max_body_bytes).await?;
    let scope = match request.scope.as_str() {
        "portal" => herald_core::application::TokenScope::Portal,
        "ingest" => herald_core::application::TokenScope::Ingest,
        other => {
            return Err(invalid(
                "scope",
                format!("must be \"portal\" or \"ingest\", not {other:?}"),
            ));
        }
    };
    let ttl = match &request.ttl {
        None => std::time::Duration::from_secs(3600),
        Some(text) => herald_core::config::parse_duration(text).map_err(|p| invalid("ttl", p))?,
    };
    if ttl < std::time::Duration::from_secs(1) || ttl > MAX_TOKEN_TTL {
        return Err(invalid("ttl", "must be between 1s and 30d"));
    }
    let now = unix_millis(OffsetDateTime::now_utc());
    let (token, record) = state
        .applications
        .issue_token(&id, scope, ttl.as_millis() as i64, now)
        .await?
        .ok_or_else(|| not_found(&id))?;
    tracing::info!(application_id = %id, token_id = %record.id, scope = scope.name(), "application token issued");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "id": record.id,
            "application_id": id,
            "scope": scope.name(),
            "expires_at": format_timestamp(herald_core::event::from_unix_millis(record.expires_at_ms)),
        })),
    ))
}

/// `DELETE /v1/applications/{app}/tokens/{token id}`: `204`; the token
/// stops working at once.
pub async fn revoke_token(
    State(state): State<AppState>,
    Path((app, token_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    find(&state, &app).await?;
    if state.applications.revoke_token(&app, &token_id).await? {
        tracing::info!(application_id = %app, %token_id, "application token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no token with id {token_id:?} in application {app:?}"
        )))
    }
}
