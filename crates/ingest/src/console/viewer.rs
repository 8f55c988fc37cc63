//! Who is looking at a page, and how the pages reach the API on their
//! behalf.
//!
//! A page does nothing the API does not do: every read and every change
//! goes through the API's own handlers (the keyed routes, without their key
//! check, [`ApiRoutes`]), as the session's caller. A console session calls
//! as an `admin` key; a portal session as its `portal` token, held to the
//! token's rules ([`crate::auth::authorize_token`]) exactly as a request
//! with that token would be. So a portal session asking for another
//! application's endpoint gets the API's own 404, and no page can do more
//! than its credential could with curl.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use herald_core::application::TokenScope;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use super::layout;
use super::session::{self, Area, Session};
use crate::auth::{Caller, Scope};
use crate::state::AppState;

/// The API's keyed routes, with their state and without the key check.
#[derive(Clone, Debug)]
pub struct ApiRoutes(pub Router);

/// The person behind a console or portal request, with a valid session.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Console or portal.
    pub area: Area,
    /// The session.
    pub session: Session,
    caller: Caller,
    api: Router,
}

/// An answer of the API other than a success.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// Its status.
    pub status: StatusCode,
    /// Its `error.code`.
    pub code: String,
    /// Its `error.message`.
    pub message: String,
}

impl ApiFailure {
    /// Whether the thing asked for does not exist (for this viewer).
    pub fn is_not_found(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
    }
}

/// The area of a request, from its path.
pub fn area_of(path: &str) -> Area {
    if path == "/portal" || path.starts_with("/portal/") {
        Area::Portal
    } else {
        Area::Console
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let area = area_of(parts.uri.path());
        let now = herald_core::event::unix_millis(time::OffsetDateTime::now_utc());
        let found = session::find(state, area, &parts.headers, now)
            .await
            .map_err(|err| layout::failure_page(area, err.status, &err.message))?;
        let Some(session) = found else {
            // A page asked for with no session leads to the login form; a
            // form posted after the session ended says so.
            return Err(if parts.method == Method::GET {
                Redirect::to(&format!("{}/login", area.base())).into_response()
            } else {
                layout::failure_page(
                    area,
                    StatusCode::UNAUTHORIZED,
                    "Your session has ended. Log in again, then repeat what you did.",
                )
            });
        };
        let api = parts
            .extensions
            .get::<ApiRoutes>()
            .expect("the console router carries the API's routes")
            .0
            .clone();
        let caller = match (&session.stored.application, area) {
            (Some(app), Area::Portal) => Caller {
                scope: Scope::Ingest,
                key_id: session.stored.key_id.clone(),
                application: Some((app.clone(), TokenScope::Portal)),
            },
            // A console session is an admin key's, and only while that key
            // is still configured.
            (None, Area::Console) if state.api_keys.has_admin_key(&session.stored.key_id) => {
                Caller {
                    scope: Scope::Admin,
                    key_id: session.stored.key_id.clone(),
                    application: None,
                }
            }
            _ => {
                return Err(layout::failure_page(
                    area,
                    StatusCode::UNAUTHORIZED,
                    "This session is no longer valid. Log in again.",
                ));
            }
        };
        Ok(Viewer {
            area,
            session,
            caller,
            api,
        })
    }
}

impl Viewer {
    /// The application a portal session sees; `None` in the console.
    pub fn portal_application(&self) -> Option<&str> {
        self.caller.only_application()
    }

    /// The application a page is about: the portal's own, or the one
    /// named in the console's path.
    pub fn application<'a>(&'a self, named: Option<&'a str>) -> &'a str {
        self.portal_application().or(named).unwrap_or_default()
    }

    /// Where an application's pages live: `/console/applications/{app}`,
    /// or `/portal` for the portal's one application.
    pub fn app_base(&self, app: &str) -> String {
        match self.area {
            Area::Console => format!("/console/applications/{}", segment(app)),
            Area::Portal => "/portal".to_owned(),
        }
    }

    /// An endpoint's page.
    pub fn endpoint_page(&self, app: &str, endpoint: &str) -> String {
        format!("{}/endpoints/{}", self.app_base(app), segment(endpoint))
    }

    /// The session's CSRF token, for a form.
    pub fn csrf(&self) -> &str {
        &self.session.stored.csrf
    }

    /// The refusal of a form without the session's CSRF token; `None`
    /// when the form carries it.
    pub fn form_refusal(&self, form: &Form) -> Option<Response> {
        match form.get("csrf") {
            Some(token) if session::same_secret(token, self.csrf()) => None,
            _ => Some(layout::failure_page(
                self.area,
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from this page (its CSRF token does not match). Reload the page and try again.",
            )),
        }
    }

    /// `GET` an API path (with its query).
    pub async fn get(&self, path: &str) -> Result<Value, ApiFailure> {
        self.call(Method::GET, path, None).await
    }

    /// Any API call, with a JSON body or none.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiFailure> {
        if let Some((app, scope)) = &self.caller.application {
            let route = path.split('?').next().unwrap_or(path);
            crate::auth::authorize_token(app, *scope, &method, route).map_err(|err| {
                ApiFailure {
                    status: err.status,
                    code: err.code.to_owned(),
                    message: err.message,
                }
            })?;
        }
        let mut request = Request::builder().method(method).uri(path);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).map_err(|err| ApiFailure {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_path".to_owned(),
            message: format!("cannot ask the API for {path:?}: {err}"),
        })?;
        request.extensions_mut().insert(self.caller.clone());
        let response = self
            .api
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(ApiFailure {
            status,
            code: json["error"]["code"].as_str().unwrap_or("error").to_owned(),
            message: json["error"]["message"]
                .as_str()
                .unwrap_or("the request failed")
                .to_owned(),
        })
    }
}

/// A path segment, percent-encoded (ids may hold `/`, `?` or `%`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query value, percent-encoded.
pub fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A posted HTML form (`application/x-www-form-urlencoded`), in order, with
/// repeated names kept (a selection of checkboxes).
#[derive(Debug, Clone, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name`, trimmed; empty counts as absent.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl FromRequest<AppState> for Form {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let area = area_of(request.uri().path());
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(layout::failure_page(
                area,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Forms are sent as application/x-www-form-urlencoded.",
            ));
        }
        let limited = http_body_util::Limited::new(request.into_body(), state.max_body_bytes);
        let bytes = limited
            .collect()
            .await
            .map_err(|_| {
                layout::failure_page(
                    area,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is larger than Herald accepts.",
                )
            })?
            .to_bytes();
        Ok(Form(
            url::form_urlencoded::parse(&bytes).into_owned().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_escape_what_a_path_would_misread() {
        assert_eq!(segment("acme"), "acme");
        assert_eq!(segment("a/b?c#d%e"), "a%2Fb%3Fc%23d%25e");
        assert_eq!(segment("ép"), "%C3%A9p");
    }

    #[test]
    fn areas_come_from_the_path() {
        assert_eq!(area_of("/portal"), Area::Portal);
        assert_eq!(area_of("/portal/endpoints/x"), Area::Portal);
        assert_eq!(area_of("/portals"), Area::Console);
        assert_eq!(area_of("/console/login"), Area::Console);
    }

    #[test]
    fn forms_keep_repeated_fields() {
        let form = Form(
            url::form_urlencoded::parse(b"csrf=t&ids=a&ids=b&name=+x+")
                .into_owned()
                .collect(),
        );
        assert_eq!(form.get("csrf"), Some("t"));
        assert_eq!(form.all("ids").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(form.text("name"), Some("x"));
        assert_eq!(form.text("missing"), None);
    }
}
