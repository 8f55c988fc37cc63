//! Event lookup: every attempt to every endpoint of one event.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::layout;
use super::viewer::{Viewer, segment};
use crate::state::AppState;

/// Most attempts shown.
const MAX_ATTEMPTS: usize = 250;

/// `GET …/events?id=…` (the console also takes `application=…`).
pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let app = viewer.application(field("application")).to_owned();
    let id = field("id");
    let in_console = viewer.portal_application().is_none();
    let form = html! {
        form class="card" method="get" action={ (viewer.area.base()) "/events" } {
            div class="row" {
                @if in_console {
                    div {
                        label for="application" { "Application" }
                        input id="application" type="text" name="application" value=(app) required;
                    }
                }
                div {
                    label for="id" { "Event id" }
                    input id="id" type="text" name="id" value=(id.unwrap_or_default()) required;
                }
                div { button type="submit" { "Look up" } }
            }
        }
    };
    let Some(id) = id.filter(|_| !app.is_empty()) else {
        return layout::page(&viewer, &state, "Events", form);
    };
    let path = format!(
        "{}/events/{}/attempts?limit={MAX_ATTEMPTS}",
        super::applications::application_api(&app),
        segment(id)
    );
    let (status, found) = match viewer.get(&path).await {
        Ok(attempts) if attempts["data"].as_array().is_some_and(|a| !a.is_empty()) => (
            StatusCode::OK,
            html! {
                h2 { "Attempts" }
                (super::endpoints::attempts_table(&viewer, &app, &attempts))
                (payload(&state, &app, id).await)
            },
        ),
        Ok(_) => (
            StatusCode::NOT_FOUND,
            html! { p class="error" { "No attempt of an event with this id is on record (attempts are kept for a while, then trimmed)." } },
        ),
        Err(err) if err.is_not_found() => (
            StatusCode::NOT_FOUND,
            html! { p class="error" { "There is no such application." } },
        ),
        Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
    };
    layout::page_with_status(
        status,
        &viewer,
        &state,
        &format!("Event {id}"),
        html! { (form) (found) },
    )
}

/// The event's payload, read back from the record its first attempt was
/// made from (the attempt log names it; the record is in Kafka for as
/// long as the topic keeps it).
async fn payload(state: &AppState, app: &str, id: &str) -> maud::Markup {
    let attempts = match state.attempt_log.for_event(app, id, 0, MAX_ATTEMPTS).await {
        Ok(attempts) => attempts,
        Err(err) => {
            let err = crate::error::ApiError::from(err);
            return html! { h2 { "Payload" } p class="error" { (err.message) } };
        }
    };
    // The earliest attempt's record: the first copy Kafka took.
    let source = attempts
        .iter()
        .filter_map(|a| a.source.as_ref().map(|s| (a.started_at_ms, s)))
        .min_by_key(|(at, _)| *at)
        .map(|(_, s)| s.clone());
    let found = match &source {
        Some(source) => state.records.read(source, app, id).await,
        None => Ok(None),
    };
    html! {
        h2 { "Payload" }
        @match found {
            Ok(Some(event)) => {
                p class="muted" {
                    code { (event.event_type) } " · accepted "
                    (layout::when_ms(event.timestamp_ms))
                }
                pre id="payload" { (pretty(&event.payload_json)) }
            }
            Ok(None) => p class="muted" { "The delivery record holding the payload is no longer in Kafka (past the topic's retention)." },
            Err(err) => p class="error" { "Cannot read the payload from Kafka: " (err) },
        }
    }
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}
