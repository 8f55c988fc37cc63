//! The stylesheet, icon and script of the pages, compiled into the binary.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

const STYLESHEET: &str = include_str!("assets/herald.css");
const ICON: &str = include_str!("assets/icon.svg");
const PORTAL_LOGIN_SCRIPT: &str = include_str!("assets/portal-login.js");

/// `GET /console/assets/{file}` and `GET /portal/assets/{file}`.
pub async fn serve(State(state): State<AppState>, uri: Uri, Path(file): Path<String>) -> Response {
    let portal = uri.path().starts_with("/portal/");
    let (content_type, body): (&str, String) = match file.as_str() {
        "herald.css" => ("text/css; charset=utf-8", STYLESHEET.to_owned()),
        "icon.svg" => ("image/svg+xml", ICON.to_owned()),
        "portal-login.js" if portal => (
            "text/javascript; charset=utf-8",
            PORTAL_LOGIN_SCRIPT.to_owned(),
        ),
        // The platform's accent colour, checked at start-up to be a plain
        // hex colour.
        "brand.css" if portal => (
            "text/css; charset=utf-8",
            format!(":root {{ --accent: {}; }}\n", state.console.portal_accent),
        ),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
