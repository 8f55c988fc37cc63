//! Logging in and out: `/console/login` with an `admin` API key,
//! `/portal/login` with a `portal` application token.
//!
//! The log-in form carries a token of its own, matched against a short-lived
//! cookie, so that another site cannot log a browser into a session of its
//! choosing.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout;
use super::session::{self, Area, CookiePolicy, StoredSession};
use super::viewer::{Form, Viewer, area_of};
use crate::auth::Scope;
use crate::state::AppState;

fn now_ms() -> i64 {
    herald_core::event::unix_millis(time::OffsetDateTime::now_utc())
}

/// `GET …/login`: the form (or the area's first page, for a browser that is
/// logged in already).
pub async fn form(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let area = area_of(uri.path());
    if let Ok(Some(_)) = session::find(&state, area, &headers, now_ms()).await {
        return Redirect::to(area.base()).into_response();
    }
    login_page(&state, area, &headers, StatusCode::OK, None)
}

fn login_page(
    state: &AppState,
    area: Area,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let policy = CookiePolicy::new(state, area, headers);
    let token = session::random_token();
    let (title, label, name, hint) = match area {
        Area::Console => (
            "Log in",
            "Admin API key",
            "key",
            "An API key with the admin scope, as configured in HERALD_API_KEY_HASHES.",
        ),
        Area::Portal => (
            "Open your webhook portal",
            "Portal token",
            "token",
            "The link you were given opens this page by itself. You can also paste its token (hat_…).",
        ),
    };
    let body = html! {
        form id="login" class="card login" method="post" action={ (area.base()) "/login" } {
            (layout::error_box(error))
            input type="hidden" name="login_csrf" value=(token);
            label for=(name) { (label) }
            input id=(name) type="password" name=(name) autocomplete="off" required;
            p class="muted" { (hint) }
            button type="submit" { "Log in" }
        }
        @if area == Area::Portal {
            script src="/portal/assets/portal-login.js" {}
        }
    };
    let markup = layout::bare_page(area, state, title, body);
    let mut response = (status, markup).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, policy.login(&token));
    response
}

/// `POST …/login`: checks the credential and starts a session.
pub async fn log_in(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    form: Form,
) -> Response {
    let area = area_of(uri.path());
    let policy = CookiePolicy::new(&state, area, &headers);
    let refuse = |status, message: &str| login_page(&state, area, &headers, status, Some(message));
    let form_token = form.get("login_csrf").unwrap_or_default();
    if !policy
        .login_token(&headers)
        .is_some_and(|cookie| session::same_secret(cookie, form_token))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "This log-in form has expired or did not come from this page. Try again.",
        );
    }
    let now = now_ms();
    let ttl_ms = state.console.session_ttl.as_millis() as i64;
    let stored = match area {
        Area::Console => {
            let key = form.get("key").unwrap_or_default().trim();
            match state.api_keys.find(key) {
                Some(caller) if caller.scope == Scope::Admin => StoredSession {
                    area,
                    csrf: session::random_token(),
                    key_id: caller.key_id,
                    application: None,
                    expires_at_ms: now + ttl_ms,
                },
                Some(_) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "That key has the ingest scope: it may only send events. The console needs a key with the admin scope.",
                    );
                }
                None => return refuse(StatusCode::UNAUTHORIZED, "That API key is not valid."),
            }
        }
        Area::Portal => {
            let token = form.get("token").unwrap_or_default().trim();
            let found = match state.applications.find_token(token, now).await {
                Ok(found) => found,
                Err(err) => {
                    let err = crate::error::ApiError::from(err);
                    return refuse(err.status, &err.message);
                }
            };
            match found {
                Some(token) if token.scope == herald_core::application::TokenScope::Portal => {
                    StoredSession {
                        area,
                        csrf: session::random_token(),
                        key_id: token.id,
                        application: Some(token.application),
                        // Never longer than the token itself.
                        expires_at_ms: (now + ttl_ms).min(token.expires_at_ms),
                    }
                }
                Some(_) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "That token may only send events; the portal needs a portal token.",
                    );
                }
                None => {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        "That portal token is not valid: it has expired, was revoked, or never existed. Ask for a new link.",
                    );
                }
            }
        }
    };
    let id = match session::create(&state, &stored, now).await {
        Ok(id) => id,
        Err(err) => return refuse(err.status, &err.message),
    };
    let max_age = ((stored.expires_at_ms - now) / 1000).max(1) as u64;
    match &stored.application {
        Some(app) => {
            tracing::info!(application_id = %app, token_id = %stored.key_id, "portal session opened")
        }
        None => tracing::info!(key_id = %stored.key_id, "console session opened"),
    }
    let mut response = Redirect::to(area.base()).into_response();
    let set = response.headers_mut();
    set.append(header::SET_COOKIE, policy.session(&id, max_age));
    set.append(header::SET_COOKIE, policy.login_cleared());
    response
}

/// `POST …/logout`: ends the session.
pub async fn log_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    viewer: Viewer,
    form: Form,
) -> Response {
    if let Some(refused) = viewer.form_refusal(&form) {
        return refused;
    }
    if let Err(err) = session::end(&state, &viewer.session.digest).await {
        return layout::failure_page(viewer.area, err.status, &err.message);
    }
    let policy = CookiePolicy::new(&state, viewer.area, &headers);
    let mut response = Redirect::to(&format!("{}/login", viewer.area.base())).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, policy.cleared());
    response
}
