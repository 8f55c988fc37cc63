//! Endpoint pages, shared by the console (under an application) and the
//! portal (its one application): the list with its creation form, and one
//! endpoint's page with its breaker, chart, latest attempts and actions.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::chart::{Series, line_chart};
use super::layout::{self, csrf_field, error_box};
use super::viewer::{ApiFailure, Form, Viewer, query_value, segment};
use crate::state::AppState;

/// Latest attempts shown on an endpoint's page.
const LATEST_ATTEMPTS: usize = 20;
/// Minutes of the endpoint's chart.
const MINUTES: usize = 60;

fn endpoints_api(app: &str) -> String {
    format!("{}/endpoints", super::applications::application_api(app))
}

fn endpoint_api(app: &str, id: &str) -> String {
    format!("{}/{}", endpoints_api(app), segment(id))
}

/// The application and endpoint a path names: `{app}` (the portal's own
/// application in the portal) and `{id}` (empty on a path with none).
fn addressed(viewer: &Viewer, params: &HashMap<String, String>) -> (String, String) {
    let app = viewer.application(params.get("app").map(String::as_str));
    let id = params.get("id").cloned().unwrap_or_default();
    (app.to_owned(), id)
}

/// The application's endpoints and the form that adds one.
pub(super) async fn list_section(
    viewer: &Viewer,
    app: &str,
    error: Option<&str>,
) -> Result<Markup, ApiFailure> {
    let listed = viewer
        .get(&format!("{}?limit=250", endpoints_api(app)))
        .await?;
    let endpoints = listed["data"].as_array().cloned().unwrap_or_default();
    let action = match viewer.portal_application() {
        Some(_) => "/portal/endpoints".to_owned(),
        None => format!("{}/endpoints", viewer.app_base(app)),
    };
    Ok(html! {
        h2 { "Endpoints" }
        @if endpoints.is_empty() {
            p class="muted" { "No endpoints yet." }
        } @else {
            table id="endpoints" {
                thead { tr { th { "URL" } th { "Event types" } th { "Description" } th { "State" } } }
                tbody {
                    @for endpoint in &endpoints {
                        @let id = endpoint["id"].as_str().unwrap_or_default();
                        tr {
                            td class="wrap" { a href=(viewer.endpoint_page(app, id)) { (endpoint["url"].as_str().unwrap_or_default()) } br; span class="muted" { (id) } }
                            td class="wrap" { (joined(&endpoint["event_types"])) }
                            td class="wrap" { (endpoint["description"].as_str().unwrap_or_default()) }
                            td { @if endpoint["disabled"].as_bool() == Some(true) { span class="badge bad" { "disabled" } } @else { span class="badge ok" { "enabled" } } }
                        }
                    }
                }
            }
            @if listed["next_cursor"].is_string() {
                p class="muted" { "Only the first 250 endpoints are listed." }
            }
        }
        h2 { "New endpoint" }
        form class="card" method="post" action=(action) {
            (error_box(error))
            (csrf_field(viewer))
            (endpoint_fields(None))
            button type="submit" { "Add endpoint" }
        }
    })
}

/// The fields of the creation and edit forms, filled from `endpoint`.
fn endpoint_fields(endpoint: Option<&Value>) -> Markup {
    let text = |name: &str| {
        endpoint
            .and_then(|e| e[name].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let headers = endpoint
        .and_then(|e| e["headers"].as_object())
        .map(|h| {
            h.iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let types = endpoint
        .map(|e| joined(&e["event_types"]))
        .unwrap_or_default();
    html! {
        label for="url" { "URL" }
        input id="url" type="url" name="url" value=(text("url")) placeholder="https://example.com/webhooks" required;
        label for="event_types" { "Event types (comma-separated; " code { "order.*" } " or " code { "*" } " for many)" }
        input id="event_types" type="text" name="event_types" value=(types) placeholder="order.created, order.*" required;
        label for="description" { "Description" }
        input id="description" type="text" name="description" value=(text("description"));
        div class="row" {
            div {
                label for="rate_limit" { "Rate limit (deliveries per second, empty for none)" }
                input id="rate_limit" type="number" name="rate_limit" min="1" max="100000" value=[endpoint.and_then(|e| e["rate_limit"].as_u64())];
            }
        }
        label for="headers" { "Custom headers (one " code { "Name: value" } " per line)" }
        textarea id="headers" name="headers" { (headers) }
    }
}

fn joined(list: &Value) -> String {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The API body of an endpoint form, or what is wrong with it.
fn endpoint_body(form: &Form, creating: bool) -> Result<Value, String> {
    let event_types: Vec<&str> = form
        .get("event_types")
        .unwrap_or_default()
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut headers = BTreeMap::new();
    for line in form.get("headers").unwrap_or_default().lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("The header line {line:?} has no colon; write Name: value."))?;
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let rate_limit = match form.text("rate_limit") {
        None => Value::Null,
        Some(text) => json!(
            text.parse::<u32>()
                .map_err(|_| "The rate limit must be a whole number of deliveries per second.")?
        ),
    };
    let mut body = json!({
        "url": form.get("url").unwrap_or_default().trim(),
        "event_types": event_types,
        "description": form.get("description").unwrap_or_default(),
        "headers": headers,
    });
    if !creating || !rate_limit.is_null() {
        body["rate_limit"] = rate_limit;
    }
    Ok(body)
}

/// `GET /portal`: the portal's first page, its application's endpoints.
pub async fn portal_home(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    portal_list(
        &state,
        &viewer,
        query.get("notice").map(String::as_str),
        None,
    )
    .await
}

async fn portal_list(
    state: &AppState,
    viewer: &Viewer,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let app = viewer.application(None).to_owned();
    match list_section(viewer, &app, error).await {
        Ok(section) => {
            let status = if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            layout::page_with_status(
                status,
                viewer,
                state,
                "Your webhook endpoints",
                html! { (layout::notice(notice)) (section) },
            )
        }
        Err(err) => layout::failure_page(viewer.area, err.status, &err.message),
    }
}

/// `POST …/endpoints`: adds an endpoint, then shows its secret once.
pub async fn create(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(params): Path<HashMap<String, String>>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let (app, _) = addressed(&viewer, &params);
    let failed = |message: String| {
        let viewer = viewer.clone();
        let state = state.clone();
        let app = app.clone();
        async move {
            match viewer.portal_application() {
                Some(_) => portal_list(&state, &viewer, None, Some(&message)).await,
                None => {
                    super::applications::render_with_endpoint_error(&state, &viewer, &app, &message)
                        .await
                }
            }
        }
    };
    let body = match endpoint_body(&form, true) {
        Ok(body) => body,
        Err(message) => return failed(message).await,
    };
    match viewer
        .call(Method::POST, &endpoints_api(&app), Some(body))
        .await
    {
        Ok(created) => {
            let id = created["id"].as_str().unwrap_or_default();
            let page = viewer.endpoint_page(&app, id);
            layout::page(
                &viewer,
                &state,
                "Endpoint added",
                html! {
                    p class="notice" { "The endpoint " code { (id) } " receives the events it subscribes to from now on." }
                    (secret_box(created["secret"].as_str().unwrap_or_default(), "Its signing secret"))
                    p { a class="button" href=(page) { "Go to the endpoint" } }
                },
            )
        }
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such application"),
        Err(err) => failed(err.message).await,
    }
}

fn secret_box(secret: &str, what: &str) -> Markup {
    html! {
        p class="secret" {
            (what) ", shown this once (the receiver verifies signatures with it): "
            br;
            code id="secret" { (secret) }
        }
    }
}

/// `GET …/endpoints/{id}`: one endpoint.
pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (app, id) = addressed(&viewer, &params);
    render(
        &state,
        &viewer,
        &app,
        &id,
        query.get("notice").map(String::as_str),
        None,
        None,
    )
    .await
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    app: &str,
    id: &str,
    notice: Option<&str>,
    error: Option<&str>,
    shown_secret: Option<Markup>,
) -> Response {
    let endpoint = match viewer.get(&endpoint_api(app, id)).await {
        Ok(endpoint) => endpoint,
        Err(err) if err.is_not_found() => return layout::not_found(viewer, state, "such endpoint"),
        Err(err) => return layout::failure_page(viewer.area, err.status, &err.message),
    };
    let health_path = format!("{}/health", endpoint_api(app, id));
    let attempts_path = format!("{}/attempts?limit={LATEST_ATTEMPTS}", endpoint_api(app, id));
    let (health, attempts) =
        match tokio::join!(viewer.get(&health_path), viewer.get(&attempts_path)) {
            (Ok(health), Ok(attempts)) => (health, attempts),
            (Err(err), _) | (_, Err(err)) => {
                return layout::failure_page(viewer.area, err.status, &err.message);
            }
        };
    let now = herald_core::event::unix_millis(time::OffsetDateTime::now_utc());
    let chart = match herald_core::stats::read_endpoint_minutes(
        &state.redis,
        &state.keys,
        id,
        now,
        MINUTES,
    )
    .await
    {
        Ok(minutes) => line_chart(
            "Attempts per minute",
            "",
            &[
                Series {
                    name: "succeeded",
                    class: "s3",
                    values: minutes.iter().map(|(_, ok, _)| Some(*ok as f64)).collect(),
                },
                Series {
                    name: "failed",
                    class: "s2",
                    values: minutes
                        .iter()
                        .map(|(_, _, failed)| Some(*failed as f64))
                        .collect(),
                },
            ],
        ),
        Err(err) => {
            let err = crate::error::ApiError::from(err);
            html! { p class="error" { "Cannot read the counters: " (err.message) } }
        }
    };
    let base = viewer.endpoint_page(app, id);
    let disabled = endpoint["disabled"].as_bool() == Some(true);
    let dead_letters = match viewer.portal_application() {
        Some(_) => format!("/portal/dead-letters?endpoint_id={}", query_value(id)),
        None => format!(
            "/console/dead-letters?application={}&endpoint_id={}",
            query_value(app),
            query_value(id)
        ),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let title = format!("Endpoint {id}");
    let body = html! {
        (layout::notice(notice))
        @if let Some(secret) = shown_secret { (secret) }
        section class="card" {
            dl class="facts" {
                dt { "URL" } dd { (endpoint["url"].as_str().unwrap_or_default()) }
                dt { "Event types" } dd { (joined(&endpoint["event_types"])) }
                dt { "Description" } dd id="description" { (endpoint["description"].as_str().unwrap_or_default()) }
                dt { "Custom headers" } dd {
                    @if let Some(headers) = endpoint["headers"].as_object().filter(|h| !h.is_empty()) {
                        @for (name, value) in headers { code { (name) ": " (value.as_str().unwrap_or_default()) } br; }
                    } @else { span class="muted" { "none" } }
                }
                dt { "Rate limit" } dd { @match endpoint["rate_limit"].as_u64() { Some(n) => { (n) " deliveries/s" }, None => "none" } }
                dt { "State" } dd {
                    @if disabled {
                        span class="badge bad" { "disabled" }
                        @if let Some(why) = endpoint["disabled_reason"].as_str() { " " (why) }
                    } @else { span class="badge ok" { "enabled" } }
                }
                dt { "Application" } dd { (app) }
                dt { "Created" } dd { (layout::when(endpoint["created_at"].as_str().unwrap_or_default())) }
            }
        }
        h2 { "Circuit breaker" }
        (breaker(&health))
        div class="charts" { (chart) }
        h2 { "Latest attempts" }
        (attempts_table(viewer, app, &attempts))
        p { a href=(dead_letters) { "Dead letters of this endpoint" } }
        h2 { "Actions" }
        div class="actions" {
            form method="post" action={ (base) "/rotate" } class="card" {
                (csrf_field(viewer))
                label for="grace" { "Old secret keeps signing for (hours)" }
                input id="grace" type="number" name="grace_hours" min="0" max="720" value="24";
                button type="submit" id="rotate" { "Rotate secret" }
            }
            form method="post" action={ (base) "/secret" } class="card" {
                (csrf_field(viewer))
                p class="muted" { "Show the secret the receiver verifies with." }
                button type="submit" class="secondary" { "Show secret" }
            }
            form method="post" action={ (base) (if disabled { "/enable" } else { "/disable" }) } class="card" {
                (csrf_field(viewer))
                @if disabled {
                    button type="submit" id="enable" { "Enable" }
                } @else {
                    button type="submit" id="disable" class="secondary" { "Disable" }
                }
            }
            form method="post" action={ (base) "/replay" } class="card" {
                (csrf_field(viewer))
                p class="muted" { "Send every dead letter of this endpoint again." }
                button type="submit" class="secondary" { "Replay all its dead letters" }
            }
            form method="post" action={ (base) "/delete" } class="card" {
                (csrf_field(viewer))
                button type="submit" class="danger" { "Delete endpoint" }
            }
        }
        h2 { "Edit" }
        form class="card" method="post" action=(base) {
            (error_box(error))
            (csrf_field(viewer))
            (endpoint_fields(Some(&endpoint)))
            button type="submit" { "Save" }
        }
    };
    layout::page_with_status(status, viewer, state, &title, body)
}

fn breaker(health: &Value) -> Markup {
    let state = health["state"].as_str().unwrap_or("closed");
    let time = |name: &str| health[name].as_str().map(layout::when);
    html! {
        section class="card" {
            dl class="facts" {
                dt { "State" } dd { span class={ "badge state-" (state) } id="breaker-state" { (state.replace('_', "-")) } }
                dt { "Failures in a row" } dd { (health["consecutive_failures"].as_u64().unwrap_or(0)) }
                dt { "Recent" } dd {
                    (health["recent"]["successes"].as_u64().unwrap_or(0)) " succeeded, "
                    (health["recent"]["failures"].as_u64().unwrap_or(0)) " failed in the last "
                    (health["recent"]["window_seconds"].as_u64().unwrap_or(0) / 60) " min"
                }
                @if let Some(at) = time("next_probe_at") { dt { "Next probe" } dd { (at) } }
                @if let Some(at) = time("opened_at") { dt { "Opened" } dd { (at) } }
                @if let Some(error) = health["last_error"].as_str() { dt { "Last error" } dd { (error) } }
                @if let Some(at) = time("last_failure_at") { dt { "Last failure" } dd { (at) } }
                @if let Some(at) = time("last_success_at") { dt { "Last success" } dd { (at) } }
            }
        }
    }
}

/// A table of attempts (of an endpoint, or of an event).
pub(super) fn attempts_table(viewer: &Viewer, app: &str, attempts: &Value) -> Markup {
    let rows = attempts["data"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return html! { p class="muted" { "No attempts yet." } };
    }
    let event_page = |event: &str| match viewer.portal_application() {
        Some(_) => format!("/portal/events?id={}", query_value(event)),
        None => format!(
            "/console/events?application={}&id={}",
            query_value(app),
            query_value(event)
        ),
    };
    html! {
        table class="attempts" {
            thead { tr { th { "When" } th { "Event" } th { "Endpoint" } th { "#" } th { "Answer" } th { "Took" } th { "Response" } } }
            tbody {
                @for attempt in &rows {
                    @let event = attempt["event_id"].as_str().unwrap_or_default();
                    @let endpoint = attempt["endpoint_id"].as_str().unwrap_or_default();
                    tr {
                        td { (layout::when(attempt["started_at"].as_str().unwrap_or_default())) }
                        td class="wrap" { a href=(event_page(event)) { (event) } }
                        td class="wrap" { a href=(viewer.endpoint_page(app, endpoint)) { (endpoint) } }
                        td { (attempt["attempt"].as_u64().unwrap_or(0)) }
                        td {
                            @if attempt["success"].as_bool() == Some(true) { span class="badge ok" { (attempt["status_code"].as_u64().unwrap_or(0)) } }
                            @else {
                                span class="badge bad" { @match attempt["status_code"].as_u64() { Some(s) => (s), None => "no answer" } }
                                @if let Some(error) = attempt["error"].as_str() { br; span class="muted" { (error) } }
                            }
                        }
                        td { (attempt["duration_ms"].as_u64().unwrap_or(0)) " ms" }
                        td { pre class="response" { (attempt["response_body"].as_str().unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

/// `POST …/endpoints/{id}`: saves the edit form.
pub async fn update(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(params): Path<HashMap<String, String>>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let (app, id) = addressed(&viewer, &params);
    let body = match endpoint_body(&form, false) {
        Ok(body) => body,
        Err(message) => {
            return render(&state, &viewer, &app, &id, None, Some(&message), None).await;
        }
    };
    match viewer
        .call(Method::PATCH, &endpoint_api(&app, &id), Some(body))
        .await
    {
        Ok(_) => Redirect::to(&format!("{}?notice=saved", viewer.endpoint_page(&app, &id)))
            .into_response(),
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such endpoint"),
        Err(err) => render(&state, &viewer, &app, &id, None, Some(&err.message), None).await,
    }
}

/// `POST …/endpoints/{id}/{action}`: `rotate`, `secret`, `disable`,
/// `enable`, `replay` or `delete`.
pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(params): Path<HashMap<String, String>>,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    let (app, id) = addressed(&viewer, &params);
    let action = params.get("action").map(String::as_str).unwrap_or_default();
    let api = endpoint_api(&app, &id);
    let page = viewer.endpoint_page(&app, &id);
    let done = |notice: &str| Redirect::to(&format!("{page}?notice={notice}")).into_response();
    let result = match action {
        "rotate" => {
            let hours = form
                .text("grace_hours")
                .unwrap_or("24")
                .parse::<u32>()
                .unwrap_or(u32::MAX);
            if hours > 720 {
                return render(
                    &state,
                    &viewer,
                    &app,
                    &id,
                    None,
                    Some("The old secret may keep signing for 0 to 720 hours."),
                    None,
                )
                .await;
            }
            let body = json!({ "grace_period_seconds": hours * 3600 });
            match viewer
                .call(Method::POST, &format!("{api}/secret/rotate"), Some(body))
                .await
            {
                Ok(rotated) => {
                    tracing::info!(endpoint_id = %id, "endpoint secret rotated from the console");
                    let until = rotated["previous_secret_expires_at"]
                        .as_str()
                        .map(layout::when);
                    let shown = html! {
                        p class="notice" {
                            "Rotated. "
                            @match until { Some(until) => { "The old secret keeps signing beside the new one until " (until) "." }, None => "The old secret stopped signing." }
                        }
                        (secret_box(rotated["secret"].as_str().unwrap_or_default(), "The new secret"))
                    };
                    return render(&state, &viewer, &app, &id, None, None, Some(shown)).await;
                }
                Err(err) => Err(err),
            }
        }
        "secret" => match viewer.get(&format!("{api}/secret")).await {
            Ok(secret) => {
                let shown = secret_box(
                    secret["secret"].as_str().unwrap_or_default(),
                    "The signing secret",
                );
                return render(&state, &viewer, &app, &id, None, None, Some(shown)).await;
            }
            Err(err) => Err(err),
        },
        "disable" | "enable" => viewer
            .call(
                Method::PATCH,
                &api,
                Some(json!({ "disabled": action == "disable" })),
            )
            .await
            .map(|_| {
                done(if action == "disable" {
                    "disabled"
                } else {
                    "enabled"
                })
            }),
        "replay" => viewer
            .call(
                Method::POST,
                "/v1/dlq/replay",
                Some(json!({ "endpoint_id": id })),
            )
            .await
            .map(|_| done("replayed")),
        "delete" => viewer.call(Method::DELETE, &api, None).await.map(|_| {
            Redirect::to(&format!("{}?notice=deleted", viewer.app_base(&app))).into_response()
        }),
        _ => return layout::not_found(&viewer, &state, "such action"),
    };
    match result {
        Ok(response) => response,
        Err(err) if err.is_not_found() => layout::not_found(&viewer, &state, "such endpoint"),
        Err(err) => render(&state, &viewer, &app, &id, None, Some(&err.message), None).await,
    }
}
