//! The frame every page shares: head, navigation, notices, error pages, and
//! the security headers of every answer.
//!
//! Pages are written with `maud`'s `html!`, which escapes every value it
//! interpolates: an endpoint description or a response body holding
//! `<script>` shows as text. No element carries a `style` attribute and no
//! page holds a script of its own, so the policy can forbid both.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Area;
use super::viewer::Viewer;
use crate::state::AppState;

/// A page's title, navigation and body, ready to answer.
pub fn page(viewer: &Viewer, state: &AppState, title: &str, body: Markup) -> Response {
    page_with_status(StatusCode::OK, viewer, state, title, body)
}

/// [`page`] with another status.
pub fn page_with_status(
    status: StatusCode,
    viewer: &Viewer,
    state: &AppState,
    title: &str,
    body: Markup,
) -> Response {
    let nav = navigation(viewer);
    let markup = shell(viewer.area, state, title, Some(nav), body);
    (status, markup).into_response()
}

/// A page shown without a session (log-in, errors).
pub fn bare_page(area: Area, state: &AppState, title: &str, body: Markup) -> Markup {
    shell(area, state, title, None, body)
}

fn shell(area: Area, state: &AppState, title: &str, nav: Option<Markup>, body: Markup) -> Markup {
    let brand = match area {
        Area::Console => "Herald console".to_owned(),
        Area::Portal => state.console.portal_title.clone(),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · " (brand) }
                link rel="icon" href={ (area.base()) "/assets/icon.svg" } type="image/svg+xml";
                link rel="stylesheet" href={ (area.base()) "/assets/herald.css" };
                @if area == Area::Portal {
                    link rel="stylesheet" href="/portal/assets/brand.css";
                }
            }
            body class={ "area-" (match area { Area::Console => "console", Area::Portal => "portal" }) } {
                header class="top" {
                    a class="brand" href=(area.base()) { (brand) }
                    @if let Some(nav) = nav { (nav) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn navigation(viewer: &Viewer) -> Markup {
    let base = viewer.area.base();
    html! {
        nav {
            @match viewer.area {
                Area::Console => {
                    a href="/console" { "Overview" }
                    a href="/console/applications" { "Applications" }
                    a href="/console/events" { "Events" }
                    a href="/console/dead-letters" { "Dead letters" }
                }
                Area::Portal => {
                    a href="/portal" { "Endpoints" }
                    a href="/portal/events" { "Events" }
                    a href="/portal/dead-letters" { "Failed deliveries" }
                }
            }
            form method="post" action={ (base) "/logout" } class="inline" {
                input type="hidden" name="csrf" value=(viewer.csrf());
                button type="submit" class="link" { "Log out" }
            }
        }
    }
}

/// An error page, with no navigation (it may be shown without a session).
pub fn failure_page(area: Area, status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::UNAUTHORIZED => "Not logged in",
        StatusCode::FORBIDDEN => "Refused",
        _ if status.is_server_error() => "Herald cannot answer right now",
        _ => "That did not work",
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                link rel="icon" href={ (area.base()) "/assets/icon.svg" } type="image/svg+xml";
                link rel="stylesheet" href={ (area.base()) "/assets/herald.css" };
            }
            body {
                main {
                    h1 { (title) }
                    p class="error" { (message) }
                    p { a href=(area.base()) { "Back" } }
                }
            }
        }
    };
    (status, markup).into_response()
}

/// The not-found page of an id that does not exist (or is another
/// application's: the same page, whichever).
pub fn not_found(viewer: &Viewer, state: &AppState, what: &str) -> Response {
    page_with_status(
        StatusCode::NOT_FOUND,
        viewer,
        state,
        "Not found",
        html! { p class="error" { "There is no " (what) " here." } },
    )
}

/// A notice above a page, from the `notice` of its query: only Herald's
/// own fixed texts, never text from the URL.
pub fn notice(code: Option<&str>) -> Markup {
    let text = match code.unwrap_or_default() {
        "created" => "Created.",
        "saved" => "Saved.",
        "deleted" => "Deleted.",
        "disabled" => "Disabled: it receives nothing until it is enabled again.",
        "enabled" => "Enabled.",
        "replayed" => "Sent again: the deliveries are on their way.",
        _ => return html! {},
    };
    html! { p class="notice" role="status" { (text) } }
}

/// An error above a form.
pub fn error_box(message: Option<&str>) -> Markup {
    html! {
        @if let Some(message) = message {
            p class="error" role="alert" { (message) }
        }
    }
}

/// A hidden CSRF field.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf()); }
}

/// An RFC 3339 time as the pages show it: `2026-12-01 21:37:43 UTC`.
pub fn when(rfc3339: &str) -> String {
    let shown = rfc3339.replacen('T', " ", 1);
    match shown.strip_suffix('Z') {
        Some(rest) => format!("{} UTC", rest.split('.').next().unwrap_or(rest)),
        None => shown,
    }
}

/// Unix milliseconds as the pages show a time.
pub fn when_ms(ms: i64) -> String {
    when(&herald_core::event::format_timestamp(
        herald_core::event::from_unix_millis(ms),
    ))
}

/// Adds the headers every console and portal answer carries: a policy that
/// allows only Herald's own stylesheet, script and images (no inline
/// script, no inline style), no framing except the portal's configured
/// hosts, no caching, no referrer.
pub fn secure_headers(state: &AppState, area: Area, headers: &mut HeaderMap) {
    let frame_ancestors = match area {
        Area::Portal if !state.console.portal_frame_ancestors.is_empty() => {
            state.console.portal_frame_ancestors.join(" ")
        }
        _ => "'none'".to_owned(),
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}"
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&policy).expect("checked origins are ASCII"),
    );
    if area == Area::Console || state.console.portal_frame_ancestors.is_empty() {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when("2026-12-01T21:37:43.123Z"), "2026-12-01 21:37:43 UTC");
        assert_eq!(when("2026-12-01T21:37:43Z"), "2026-12-01 21:37:43 UTC");
    }

    #[test]
    fn notices_are_only_herald_texts() {
        assert_eq!(notice(Some("<script>")).into_string(), "");
        assert!(notice(Some("saved")).into_string().contains("Saved."));
    }
}
