//! `GET /v1/events/{id}/attempts` and `GET /v1/endpoints/{id}/attempts`:
//! the delivery-attempt log, newest first.

use axum::Json;
use axum::extract::{Path, Query, State};
use herald_core::attempt_log::AttemptRecord;
use herald_core::event::{format_timestamp, from_unix_millis};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::paging::PageParams;
use crate::state::AppState;

fn view(record: &AttemptRecord) -> Value {
    json!({
        "delivery_id": record.delivery_id,
        "endpoint_id": record.endpoint_id,
        "event_id": record.event_id,
        "attempt": record.attempt,
        "started_at": format_timestamp(from_unix_millis(record.started_at_ms)),
        "duration_ms": record.duration_ms,
        "success": record.success,
        "status_code": record.status_code,
        "error": record.error,
        "response_body": record.response_body,
    })
}

fn page_of(mut records: Vec<AttemptRecord>, page: crate::paging::Page) -> Json<Value> {
    let next_cursor = page.finish(&mut records);
    Json(json!({
        "data": records.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
}

/// `GET /v1/applications/{app}/events/{id}/attempts`: every attempt to
/// deliver one event of the application, to any of its endpoints.
pub async fn for_event(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = paging.page()?;
    crate::applications::find(&state, &app).await?;
    let records = state
        .attempt_log
        .for_event(&app, &id, page.start, page.fetch())
        .await?;
    Ok(page_of(records, page))
}

/// Every attempt to one endpoint (the newest, up to the configured number).
pub async fn for_endpoint(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = paging.page()?;
    crate::endpoints::find(&state, &app, &id).await?;
    let records = state
        .attempt_log
        .for_endpoint(&id, page.start, page.fetch())
        .await?;
    Ok(page_of(records, page))
}
