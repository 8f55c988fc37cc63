//! Management API for applications, the platform's customers:
//! `POST/GET /v1/applications`, `GET/PATCH/DELETE /v1/applications/{app}`.
//! Endpoints live under their application (`endpoints`), and events are
//! addressed to one (`events`).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_core::application::Application;
use herald_core::event::{
    format_timestamp, new_application_id, unix_millis, validate_application_id,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::body::read_json;
use crate::endpoints::{check_rate_limit, invalid};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::openapi::ErrorBody;
use crate::paging::{Listed, PageParams};
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    /// Your own id for the customer (the rules of event ids, without `:`);
    /// generated (`app_…`) when absent.
    #[serde(default)]
    #[schema(example = "acme", pattern = "^[!-\\-/-9;-~]{1,128}$")]
    id: Option<String>,
    /// Display name, 1–256 characters, not only blanks.
    #[schema(example = "Acme Inc.", pattern = "\\S", max_length = 256)]
    name: String,
    /// Up to 32 string pairs of your own.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::metadata_schema)]
    metadata: Option<BTreeMap<String, String>>,
    /// Most events per second accepted for it, across ingest replicas.
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    #[schema(minimum = 1, maximum = 100000)]
    rate_limit: Option<u32>,
}

/// Body of `PATCH /v1/applications/{app}`: only the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApplication {
    /// Display name, 1–256 characters, not only blanks.
    #[serde(default)]
    #[schema(pattern = "\\S", max_length = 256)]
    name: Option<String>,
    /// Replaces all of its metadata.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::metadata_schema)]
    metadata: Option<BTreeMap<String, String>>,
    /// `null` removes the limit; absent leaves it as it is.
    #[serde(default, deserialize_with = "crate::body::whole::present_or_null")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    rate_limit: Option<Option<u32>>,
}

/// An application as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    /// Its id.
    #[schema(example = "acme")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Your string pairs.
    pub metadata: BTreeMap<String, String>,
    /// Most events per second, or `null` for no limit.
    pub rate_limit: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Whitespace as the document's `\S` pattern means it (ECMAScript's `\s`):
/// Unicode's White_Space without U+0085, with U+FEFF. A name of U+0085
/// alone matches the pattern, so it is a name.
fn is_pattern_space(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.chars().all(is_pattern_space) {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("is longer than {MAX_NAME_LEN} characters"),
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
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
            return Err(invalid(
                "metadata",
                format!("keys must be 1-{MAX_METADATA_KEY_LEN} characters long"),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return Err(invalid(
                "metadata",
                format!("value of {key:?} is longer than {MAX_METADATA_VALUE_LEN} characters"),
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

fn view(app: &Application) -> ApplicationView {
    ApplicationView {
        id: app.id.clone(),
        name: app.name.clone(),
        metadata: app.metadata.clone(),
        rate_limit: app.rate_limit,
        created_at: app.created_at.clone(),
        updated_at: app.updated_at.clone(),
    }
}

/// Creates an application.
#[utoipa::path(
    post,
    path = "/v1/applications",
    operation_id = "create_application",
    tag = "applications",
    request_body = CreateApplication,
    responses(
        (status = 201, description = "Created", body = ApplicationView),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`", body = ErrorBody),
        (status = 409, description = "`application_exists`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ApplicationView>), ApiError> {
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

/// Lists the applications, a page at a time, in creation order.
#[utoipa::path(
    get,
    path = "/v1/applications",
    operation_id = "list_applications",
    tag = "applications",
    params(PageParams),
    responses(
        (status = 200, description = "A page", body = Listed<ApplicationView>),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Listed<ApplicationView>>, ApiError> {
    let page = paging.page()?;
    let mut apps = state.applications.list(page.start, page.fetch()).await?;
    Ok(Json(page.answer(&mut apps, view)))
}

/// One application.
#[utoipa::path(
    get,
    path = "/v1/applications/{app}",
    operation_id = "get_application",
    tag = "applications",
    params(("app" = String, Path, description = "The application's id")),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 200, description = "The application", body = ApplicationView),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApplicationView>, ApiError> {
    Ok(Json(view(&find(&state, &id).await?)))
}

/// Changes the fields given, and keeps the others.
#[utoipa::path(
    patch,
    path = "/v1/applications/{app}",
    operation_id = "update_application",
    tag = "applications",
    params(("app" = String, Path, description = "The application's id")),
    request_body = UpdateApplication,
    responses(
        (status = 200, description = "The application as changed", body = ApplicationView),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it kept changing under this change", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ApplicationView>, ApiError> {
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

/// Deletes the application and all its endpoints. Deliveries already on
/// their way to them are dead-lettered as `endpoint_deleted` by the
/// dispatchers.
#[utoipa::path(
    delete,
    path = "/v1/applications/{app}",
    operation_id = "delete_application",
    tag = "applications",
    params(("app" = String, Path, description = "The application's id")),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 204, description = "Deleted, with its endpoints"),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// `portal` or `ingest`.
    #[schema(value_type = TokenScopeName)]
    scope: String,
    /// How long it works, in seconds: 3600 (an hour) when absent, at most
    /// 2592000 (30 days).
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    #[schema(example = 3600, minimum = 1, maximum = 2592000)]
    ttl_seconds: Option<u32>,
}

/// What an application token may do.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Names the values of `IssueToken::scope`; never built.
pub enum TokenScopeName {
    /// Manage the application's endpoints, attempts and dead letters.
    #[schema(rename = "portal")]
    Portal,
    /// Send the application's events.
    #[schema(rename = "ingest")]
    Ingest,
}

/// A token just issued: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenIssued {
    /// The token itself (`hat_…`).
    pub token: String,
    /// Its id, for revoking it.
    pub id: String,
    /// The application it sees.
    pub application_id: String,
    /// `portal` or `ingest`.
    pub scope: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// Issues an application token. It is shown once; Herald keeps only its
/// digest.
#[utoipa::path(
    post,
    path = "/v1/applications/{app}/tokens",
    operation_id = "issue_application_token",
    tag = "applications",
    params(("app" = String, Path, description = "The application's id")),
    request_body = IssueToken,
    responses(
        (status = 201, description = "Issued", body = TokenIssued),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn issue_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
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
    let ttl = std::time::Duration::from_secs(request.ttl_seconds.unwrap_or(3600).into());
    if ttl < std::time::Duration::from_secs(1) || ttl > MAX_TOKEN_TTL {
        return Err(invalid(
            "ttl_seconds",
            "must be between 1 and 2592000 (30 days)",
        ));
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
        Json(TokenIssued {
            token,
            id: record.id,
            application_id: id,
            scope: scope.name().to_owned(),
            expires_at: format_timestamp(herald_core::event::from_unix_millis(
                record.expires_at_ms,
            )),
        }),
    ))
}

/// Revokes a token: it stops working at once.
#[utoipa::path(
    delete,
    path = "/v1/applications/{app}/tokens/{token}",
    operation_id = "revoke_application_token",
    tag = "applications",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("token" = String, Path, description = "The token's id (not the token)"),
    ),
    responses(
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 204, description = "Revoked"),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_blank_exactly_when_the_documents_pattern_says_so() {
        // `\S` in the OpenAPI document is ECMAScript's: U+0085 is not
        // whitespace there, U+FEFF is.
        for name in ["acme", "\u{85}", " a ", "\u{85}\u{85}"] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
        for blank in ["", " ", "\t\n", "\u{a0}\u{3000}", "\u{feff}"] {
            assert!(check_name(blank).is_err(), "{blank:?}");
        }
    }
}
