//! The console's application pages: search, create, edit, delete, and the
//! portal link for an application's customer.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, csrf_field, error_box};
use super::viewer::{ApiFailure, Form, Viewer, query_value, segment};
use crate::state::AppState;

/// Most applications a search looks through.
const SEARCH_LIMIT: usize = 2_000;

/// `GET /console/applications?q=…&cursor=…`.
pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let search = query.get("q").map(|q| q.trim()).filter(|q| !q.is_empty());
    list_page(
        &state,
        &viewer,
        search,
        query.get("cursor").map(String::as_str),
        None,
    )
    .await
}

async fn list_page(
    state: &AppState,
    viewer: &Viewer,
    search: Option<&str>,
    cursor: Option<&str>,
    error: Option<&str>,
) -> Response {
    let (found, next_cursor, note) = match search {
        Some(q) => match search_applications(viewer, q).await {
            Ok((found, complete)) => (
                found,
                None,
                (!complete).then_some("Only the first 2,000 applications were searched; type an exact id to find any."),
            ),
            Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
        },
        None => {
            let path = match cursor {
                Some(c) => format!("/v1/applications?limit=50&cursor={}", query_value(c)),
                None => "/v1/applications?limit=50".to_owned(),
            };
            match viewer.get(&path).await {
                Ok(page) => (
                    page["data"].as_array().cloned().unwrap_or_default(),
                    page["next_cursor"].as_str().map(str::to_owned),
                    None,
                ),
                Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = html! {
        form class="card" method="get" action="/console/applications" {
            label for="q" { "Search by id or name" }
            div class="row" {
                input id="q" type="search" name="q" value=(search.unwrap_or_default());
                div { button type="submit" { "Search" } }
            }
        }
        @if let Some(note) = note { p class="muted" { (note) } }
        @if found.is_empty() {
            p class="muted" { @if search.is_some() { "No application matches." } @else { "No applications yet." } }
        } @else {
            table {
                thead { tr { th { "Id" } th { "Name" } th { "Rate limit" } th { "Created" } } }
                tbody {
                    @for app in &found {
                        @let id = app["id"].as_str().unwrap_or_default();
                        tr {
                            td class="wrap" { a href={ "/console/applications/" (segment(id)) } { (id) } }
                            td class="wrap" { (app["name"].as_str().unwrap_or_default()) }
                            td { @match app["rate_limit"].as_u64() { Some(n) => { (n) " events/s" }, None => span class="muted" { "none" } } }
                            td { (layout::when(app["created_at"].as_str().unwrap_or_default())) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next_cursor {
            p { a href={ "/console/applications?cursor=" (query_value(&next)) } { "Next page" } }
        }
        h2 { "New application" }
        form class="card" method="post" action="/console/applications" {
            (error_box(error))
            (csrf_field(viewer))
            div class="row" {
                div {
                    label for="new-id" { "Id (optional)" }
                    input id="new-id" type="text" name="id" placeholder="acme";
                }
                div {
                    label for="new-name" { "Name" }
                    input id="new-name" type="text" name="name" placeholder="Acme Inc." required;
                }
            }
            button type="submit" { "Create application" }
        }
    };
    layout::page_with_status(status, viewer, state, "Applications", body)
}

/// Applications whose id or name holds `q` (case-insensitive), an exact id
/// first; and whether every application was looked at.
async fn search_applications(viewer: &Viewer, q: &str) -> Result<(Vec<Value>, bool), ApiFailure> {
    let needle = q.to_lowercase();
    let mut found = Vec::new();
    match viewer.get(&application_api(q)).await {
        Ok(app) => found.push(app),
        Err(err) if err.is_not_found() || err.status == StatusCode::BAD_REQUEST => {}
        Err(err) => return Err(err),
    }
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/applications?limit=250&cursor={}", query_value(c)),
            None => "/v1/applications?limit=250".to_owned(),
        };
        let page = viewer.get(&path).await?;
        for app in page["data"].as_array().into_iter().flatten() {
            seen += 1;
            let id = app["id"].as_str().unwrap_or_default();
            let name = app["name"].as_str().unwrap_or_default();
            if id != q
                && (id.to_lowercase().contains(&needle) || name.to_lowercase().contains(&needle))
            {
                found.push(app.clone());
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        match &cursor {
            None => return Ok((found, true)),
            Some(_) if seen >= SEARCH_LIMIT => return Ok((found, false)),
            Some(_) => {}
        }
    }
}

/// `POST /console/applications`.
pub async fn create(State(state): State<AppState>, viewer: Viewer, form: Form) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let mut body = json!({ "name": form.get("name").unwrap_or_default() });
    if let Some(id) = form.text("id") {
        body["id"] = json!(id);
    }
    match viewer
        .call(Method::POST, "/v1/applications", Some(body))
        .await
    {
        Ok(app) => {
            let id = app["id"].as_str().unwrap_or_default();
            Redirect::to(&format!(
                "/console/applications/{}?notice=created",
                segment(id)
            ))
            .into_response()
        }
        Err(err) => list_page(&state, &viewer, None, None, Some(&err.message)).await,
    }
}

/// `GET /console/applications/{app}`.
pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    render(
        &state,
        &viewer,
        &app,
        query.get("notice").map(String::as_str),
        Errors::default(),
        None,
    )
    .await
}

/// Where a form of the page went wrong.
#[derive(Debug, Default)]
pub(super) struct Errors<'a> {
    edit: Option<&'a str>,
    endpoint: Option<&'a str>,
    portal: Option<&'a str>,
}

impl<'a> Errors<'a> {
    fn edit(message: &'a str) -> Self {
        Self {
            edit: Some(message),
            ..Self::default()
        }
    }

    fn endpoint(message: &'a str) -> Self {
        Self {
            endpoint: Some(message),
            ..Self::default()
        }
    }

    fn portal(message: &'a str) -> Self {
        Self {
            portal: Some(message),
            ..Self::default()
        }
    }
}

/// The API path of application `app`.
pub(super) fn application_api(app: &str) -> String {
    format!("/v1/applications/{}", segment(app))
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    app_id: &str,
    notice: Option<&str>,
    errors: Errors<'_>,
    portal_link: Option<Markup>,
) -> Response {
    let app = match viewer.get(&application_api(app_id)).await {
        Ok(app) => app,
        Err(err) if err.is_not_found() => {
            return layout::not_found(viewer, state, "such application");
        }
        Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
    };
    let endpoints = match super::endpoints::list_section(viewer, app_id, errors.endpoint).await {
        Ok(section) => section,
        Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
    };
    let base = viewer.app_base(app_id);
    let status = if errors.edit.is_some() || errors.endpoint.is_some() || errors.portal.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let name = app["name"].as_str().unwrap_or_default();
    let body = html! {
        (layout::notice(notice))
        section class="card" {
            dl class="facts" {
                dt { "Id" } dd { code { (app_id) } }
                dt { "Name" } dd { (name) }
                dt { "Rate limit" } dd { @match app["rate_limit"].as_u64() { Some(n) => { (n) " events/s" }, None => "none" } }
                dt { "Created" } dd { (layout::when(app["created_at"].as_str().unwrap_or_default())) }
                @if let Some(metadata) = app["metadata"].as_object() {
                    @for (key, value) in metadata {
                        dt { (key) } dd { (value.as_str().unwrap_or_default()) }
                    }
                }
            }
            p class="actions" {
                a href={ "/console/dead-letters?application=" (query_value(app_id)) } { "Dead letters" }
                a href={ "/console/events?application=" (query_value(app_id)) } { "Look up an event" }
            }
        }
        (endpoints)
        h2 { "Customer portal" }
        @if let Some(link) = portal_link { (link) }
        form class="card" method="post" action={ (base) "/portal-link" } {
            (error_box(errors.portal))
            (csrf_field(viewer))
            p class="muted" { "A link that opens this application's portal, for its customer. It works until it expires, and is shown once." }
            label for="ttl" { "Valid for (hours)" }
            input id="ttl" type="number" name="hours" min="1" max="720" value="24";
            button type="submit" class="secondary" { "Create a portal link" }
        }
        h2 { "Edit" }
        form class="card" method="post" action=(base) {
            (error_box(errors.edit))
            (csrf_field(viewer))
            div class="row" {
                div {
                    label for="name" { "Name" }
                    input id="name" type="text" name="name" value=(name) required;
                }
                div {
                    label for="rate" { "Rate limit (events per second, empty for none)" }
                    input id="rate" type="number" name="rate_limit" min="1" max="100000" value=[app["rate_limit"].as_u64()];
                }
            }
            button type="submit" { "Save" }
        }
        form class="card" method="post" action={ (base) "/delete" } {
            (csrf_field(viewer))
            p { "Deleting the application deletes its endpoints; its events are no longer accepted." }
            button type="submit" class="danger" { "Delete application" }
        }
    };
    layout::page_with_status(status, viewer, state, &format!("Application {name}"), body)
}

/// `POST /console/applications/{app}`: name and rate limit.
pub async fn update(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(app): Path<String>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let rate_limit = match form.text("rate_limit").map(str::parse::<u32>) {
        None => Value::Null,
        Some(Ok(n)) => json!(n),
        Some(Err(_)) => {
            let errors =
                Errors::edit("The rate limit must be a whole number of events per second.");
            return render(&state, &viewer, &app, None, errors, None).await;
        }
    };
    let body = json!({ "name": form.get("name").unwrap_or_default(), "rate_limit": rate_limit });
    match viewer
        .call(Method::PATCH, &application_api(&app), Some(body))
        .await
    {
        Ok(_) => Redirect::to(&format!("{}?notice=saved", viewer.app_base(&app))).into_response(),
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such application"),
        Err(err) => {
            let errors = Errors::edit(&err.message);
            render(&state, &viewer, &app, None, errors, None).await
        }
    }
}

/// `POST /console/applications/{app}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(app): Path<String>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    match viewer
        .call(Method::DELETE, &application_api(&app), None)
        .await
    {
        Ok(_) => Redirect::to("/console/applications").into_response(),
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such application"),
        Err(err) => layout::failure_page(viewer.area, err.status, &err.message),
    }
}

/// `POST /console/applications/{app}/portal-link`: issues a portal token
/// and shows the link that opens the portal with it, once.
pub async fn portal_link(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(app): Path<String>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let hours = form
        .text("hours")
        .unwrap_or("24")
        .parse::<u32>()
        .unwrap_or(0);
    if !(1..=720).contains(&hours) {
        let errors = Errors::portal("A portal link is valid for 1 to 720 hours.");
        return render(&state, &viewer, &app, None, errors, None).await;
    }
    let body = json!({ "scope": "portal", "ttl_seconds": hours * 3600 });
    match viewer
        .call(
            Method::POST,
            &format!("{}/tokens", application_api(&app)),
            Some(body),
        )
        .await
    {
        Ok(issued) => {
            let token = issued["token"].as_str().unwrap_or_default();
            let link = html! {
                p class="secret" {
                    "Send this link to the customer; it is shown only now. It opens their portal until "
                    (layout::when(issued["expires_at"].as_str().unwrap_or_default()))
                    " (token id " code { (issued["id"].as_str().unwrap_or_default()) } ", to revoke it)."
                    br;
                    code id="portal-link" { "/portal/login#token=" (token) }
                }
            };
            render(&state, &viewer, &app, None, Errors::default(), Some(link)).await
        }
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such application"),
        Err(err) => {
            let errors = Errors::portal(&err.message);
            render(&state, &viewer, &app, None, errors, None).await
        }
    }
}

/// The application's page with an error above its new-endpoint form.
pub(super) async fn render_with_endpoint_error(
    state: &AppState,
    viewer: &Viewer,
    app: &str,
    message: &str,
) -> Response {
    let errors = Errors::endpoint(message);
    render(state, viewer, app, None, errors, None).await
}
