//! Dead letters: filter by application, endpoint and reason (the API's own
//! filters); replay one, a selection, or all of an endpoint's.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde_json::{Value, json};

use super::layout::{self, csrf_field};
use super::viewer::{Form, Viewer, query_value};
use crate::state::AppState;

/// Letters per page.
const PAGE: usize = 50;

/// The reasons a letter can die of, for the filter's choices.
const REASONS: [&str; 9] = {
    use herald_core::dead_letter::reason::*;
    [
        ATTEMPTS_EXHAUSTED,
        ENDPOINT_UNAVAILABLE,
        ENDPOINT_GONE,
        ENDPOINT_DELETED,
        ENDPOINT_DISABLED,
        ENDPOINT_UNUSABLE,
        DESTINATION_REFUSED,
        APPLICATION_NOT_FOUND,
        MALFORMED_RECORD,
    ]
};

/// The filters of the page, from its query or a form.
#[derive(Debug, Default, Clone)]
struct Filters {
    application: Option<String>,
    endpoint_id: Option<String>,
    reason: Option<String>,
}

impl Filters {
    fn read(viewer: &Viewer, get: impl Fn(&str) -> Option<String>) -> Self {
        let clean = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Filters {
            application: viewer
                .portal_application()
                .map(str::to_owned)
                .or_else(|| clean(get("application"))),
            endpoint_id: clean(get("endpoint_id")),
            reason: clean(get("reason")),
        }
    }

    /// The filters as a query string: the page's (the portal's application
    /// is implied there, so left out) or, `for_api`, the API's.
    fn query(&self, viewer: &Viewer, for_api: bool) -> String {
        let application = self
            .application
            .as_ref()
            .filter(|_| for_api || viewer.portal_application().is_none());
        [
            ("application", application),
            ("endpoint_id", self.endpoint_id.as_ref()),
            ("reason", self.reason.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", query_value(v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// `GET …/dead-letters`.
pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filters = Filters::read(&viewer, |name| query.get(name).cloned());
    let cursor = query.get("cursor").cloned();
    let (letters, next_cursor) = match fetch(&viewer, &filters, cursor).await {
        Ok(found) => found,
        Err(err) if err.is_not_found() => {
            return layout::not_found(&viewer, &state, "such application or endpoint");
        }
        Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
    };
    let base = viewer.area.base();
    let in_console = viewer.portal_application().is_none();
    let app_of = |letter: &Value| {
        letter["application_id"]
            .as_str()
            .or(filters.application.as_deref())
            .unwrap_or_default()
            .to_owned()
    };
    let body = html! {
        (layout::notice(query.get("notice").map(String::as_str)))
        form class="card" method="get" action={ (base) "/dead-letters" } {
            div class="row" {
                @if in_console {
                    div {
                        label for="application" { "Application" }
                        input id="application" type="text" name="application" value=(filters.application.clone().unwrap_or_default());
                    }
                }
                div {
                    label for="endpoint_id" { "Endpoint" }
                    input id="endpoint_id" type="text" name="endpoint_id" value=(filters.endpoint_id.clone().unwrap_or_default());
                }
                div {
                    label for="reason" { "Reason" }
                    select id="reason" name="reason" {
                        option value="" { "any" }
                        @for reason in REASONS {
                            option value=(reason) selected[filters.reason.as_deref() == Some(reason)] { (reason) }
                        }
                    }
                }
                div { button type="submit" { "Filter" } }
            }
        }
        @if letters.is_empty() {
            p class="muted" id="no-dead-letters" { "No dead letters." }
        } @else {
            form method="post" action={ (base) "/dead-letters/replay" } {
                (csrf_field(&viewer))
                (hidden_filters(&viewer, &filters))
                table id="dead-letters" {
                    thead { tr { th { "" } th { "Died" } th { "Reason" } th { "Event" } th { "Endpoint" } th { "Last answer" } th { "" } } }
                    tbody {
                        @for letter in &letters {
                            @let id = letter["id"].as_str().unwrap_or_default();
                            @let app = app_of(letter);
                            tr {
                                td { input type="checkbox" name="ids" value=(id) aria-label="select"; }
                                td { (layout::when(letter["dead_at"].as_str().unwrap_or_default())) }
                                td { span class="badge bad" { (letter["reason"].as_str().unwrap_or_default()) } br; span class="muted" { (letter["detail"].as_str().unwrap_or_default()) } }
                                td class="wrap" {
                                    (letter["event_type"].as_str().unwrap_or_default()) br;
                                    span class="muted" { (letter["event_id"].as_str().unwrap_or_default()) }
                                    @if in_console { br; span class="muted" { (app) } }
                                }
                                td class="wrap" {
                                    @if let Some(endpoint) = letter["endpoint_id"].as_str() {
                                        @if app.is_empty() { (endpoint) } @else {
                                            a href=(viewer.endpoint_page(&app, endpoint)) { (endpoint) }
                                        }
                                    }
                                }
                                td class="wrap" {
                                    @if let Some(status) = letter["last_status_code"].as_u64() { (status) " " }
                                    @if let Some(error) = letter["last_error"].as_str() { span class="muted" { (error) } }
                                }
                                td { button type="submit" name="one" value=(id) class="small" { "Replay" } }
                            }
                        }
                    }
                }
                div class="actions" {
                    button type="submit" name="selected" value="1" { "Replay selected" }
                    @if let Some(endpoint) = &filters.endpoint_id {
                        button type="submit" name="all_of_endpoint" value=(endpoint) class="secondary" { "Replay all of this endpoint's" }
                    }
                }
            }
        }
        @if let Some(next) = next_cursor {
            p { a href={ (base) "/dead-letters?" (filters.query(&viewer, false)) "&cursor=" (query_value(&next)) } { "Older" } }
        }
    };
    let title = if in_console {
        "Dead letters"
    } else {
        "Failed deliveries"
    };
    layout::page(&viewer, &state, title, body)
}

fn hidden_filters(viewer: &Viewer, filters: &Filters) -> maud::Markup {
    html! {
        @if viewer.portal_application().is_none() {
            @if let Some(app) = &filters.application { input type="hidden" name="application" value=(app); }
        }
        @if let Some(endpoint) = &filters.endpoint_id { input type="hidden" name="endpoint_id" value=(endpoint); }
        @if let Some(reason) = &filters.reason { input type="hidden" name="reason" value=(reason); }
    }
}

/// A page of letters under `filters`, and the next page's cursor.
async fn fetch(
    viewer: &Viewer,
    filters: &Filters,
    cursor: Option<String>,
) -> Result<(Vec<Value>, Option<String>), super::viewer::ApiFailure> {
    let mut path = format!("/v1/dlq?limit={PAGE}");
    let query = filters.query(viewer, true);
    if !query.is_empty() {
        path.push('&');
        path.push_str(&query);
    }
    if let Some(c) = &cursor {
        path.push_str("&cursor=");
        path.push_str(&query_value(c));
    }
    let page = viewer.get(&path).await?;
    Ok((
        page["data"].as_array().cloned().unwrap_or_default(),
        page["next_cursor"].as_str().map(str::to_owned),
    ))
}

/// `POST …/dead-letters/replay`: one (`one`), the ticked ones (`ids`), or
/// every one of an endpoint (`all_of_endpoint`).
pub async fn replay(State(state): State<AppState>, viewer: Viewer, form: Form) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let filters = Filters::read(&viewer, |name| form.get(name).map(str::to_owned));
    let body = if let Some(one) = form.text("one") {
        json!({ "ids": [one] })
    } else if let Some(endpoint) = form.text("all_of_endpoint") {
        json!({ "endpoint_id": endpoint })
    } else {
        let ids: Vec<&str> = form.all("ids").collect();
        if ids.is_empty() {
            return layout::failure_page(
                viewer.area,
                axum::http::StatusCode::BAD_REQUEST,
                "Tick the dead letters to replay first.",
            );
        }
        json!({ "ids": ids })
    };
    match viewer
        .call(Method::POST, "/v1/dlq/replay", Some(body))
        .await
    {
        Ok(_) => {
            let query = filters.query(&viewer, false);
            let separator = if query.is_empty() { "" } else { "&" };
            Redirect::to(&format!(
                "{}/dead-letters?{query}{separator}notice=replayed",
                viewer.area.base()
            ))
            .into_response()
        }
        Err(err) if err.is_not_found() => {
            layout::not_found(&viewer, &state, "such dead letter or endpoint")
        }
        Err(err) => layout::failure_page(viewer.area, err.status, &err.message),
    }
}
