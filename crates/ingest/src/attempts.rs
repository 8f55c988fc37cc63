//! `GET /v1/applications/{app}/events/{id}/attempts` and
//! `GET /v1/applications/{app}/endpoints/{id}/attempts`: the
//! delivery-attempt log, newest first.

use axum::Json;
use axum::extract::State;
use herald_core::attempt_log::AttemptRecord;
use herald_core::event::{format_timestamp, from_unix_millis};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::openapi::ErrorBody;
use crate::paging::{Listed, PageParams};
use crate::state::AppState;

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// The delivery (one event to one endpoint).
    delivery_id: String,
    /// The endpoint.
    endpoint_id: String,
    /// The event.
    event_id: String,
    /// 1 for the delivery's first attempt.
    attempt: u32,
    /// RFC 3339.
    started_at: String,
    /// How long it took.
    duration_ms: u32,
    /// Whether the endpoint answered 2xx.
    success: bool,
    /// The endpoint's HTTP status, when it answered.
    status_code: Option<u16>,
    /// Why it failed, when it did.
    error: Option<String>,
    /// The start of the endpoint's answer (at most 4 KiB).
    response_body: String,
}

fn view(record: &AttemptRecord) -> AttemptView {
    AttemptView {
        delivery_id: record.delivery_id.clone(),
        endpoint_id: record.endpoint_id.clone(),
        event_id: record.event_id.clone(),
        attempt: record.attempt,
        started_at: format_timestamp(from_unix_millis(record.started_at_ms)),
        duration_ms: record.duration_ms,
        success: record.success,
        status_code: record.status_code,
        error: record.error.clone(),
        response_body: record.response_body.clone(),
    }
}

/// Every attempt to deliver one event of the application, to any of its
/// endpoints.
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/events/{id}/attempts",
    operation_id = "list_event_attempts",
    tag = "attempts",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The event's id"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page, newest first", body = Listed<AttemptView>),
        (status = 400, description = "`invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn for_event(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Listed<AttemptView>>, ApiError> {
    let page = paging.page()?;
    crate::applications::find(&state, &app).await?;
    let mut records = state
        .attempt_log
        .for_event(&app, &id, page.start, page.fetch())
        .await?;
    Ok(Json(page.answer(&mut records, view)))
}

/// Every attempt to one endpoint still in the log (the newest, up to the
/// configured number, of those whose batches the budget keeps).
#[utoipa::path(
    get,
    path = "/v1/applications/{app}/endpoints/{id}/attempts",
    operation_id = "list_endpoint_attempts",
    tag = "attempts",
    params(
        ("app" = String, Path, description = "The application's id"),
        ("id" = String, Path, description = "The endpoint's id"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page, newest first", body = Listed<AttemptView>),
        (status = 400, description = "`invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`application_not_found`, `not_found`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn for_endpoint(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Listed<AttemptView>>, ApiError> {
    let page = paging.page()?;
    crate::endpoints::find(&state, &app, &id).await?;
    let mut records = state
        .attempt_log
        .for_endpoint(&id, page.start, page.fetch())
        .await?;
    Ok(Json(page.answer(&mut records, view)))
}
