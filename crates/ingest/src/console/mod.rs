//! The console (`/console`, for operators) and the portal (`/portal`, for
//! one application's customer), served by herald-ingest on its own port.
//!
//! ## Why it is built this way
//!
//! - **Server-rendered HTML, checked at compile time.** Pages are written
//!   with `maud`'s `html!` macro: a typo in a page is a build error, every
//!   interpolated value is HTML-escaped, and the whole UI builds with
//!   `cargo build` alone — no Node toolchain, no bundle, nothing from
//!   another host. The stylesheet, icon and the one small script are
//!   compiled into the binary ([`assets`]).
//! - **Plain forms that post and redirect.** Every page works with no
//!   script at all; the only script (`portal-login.js`) turns a portal
//!   link's `#token=…` fragment into a posted form, so a token never
//!   appears in a URL the server or a proxy sees.
//! - **Charts as SVG drawn on the server** ([`chart`]) from per-minute
//!   counters that Herald keeps in Redis itself ([`herald_core::stats`]), so
//!   the pages work on a bare install with no Prometheus.
//! - **The API underneath.** Pages read and change things only by calling
//!   the API's own handlers as the session's caller ([`viewer`]), so a page
//!   is authorised, validated and answered exactly as the same call with
//!   curl would be.
//! - **Strict by default.** Every answer carries a policy that allows only
//!   Herald's own files: no inline script, no inline style, no framing of
//!   the console, and framing of the portal only by the hosts in
//!   `HERALD_PORTAL_FRAME_ANCESTORS` ([`layout::secure_headers`]). Sessions
//!   are `HttpOnly`, `SameSite=Strict` cookies, `Secure` over TLS, and
//!   every form carries the session's CSRF token ([`session`]).
//!
//! ## Layout
//!
//! - [`session`]: log-in sessions in Redis and their cookies;
//! - [`viewer`]: the request's session as an extractor, its calls to the
//!   API, and posted forms;
//! - [`layout`]: the frame of every page, error pages, security headers;
//! - [`chart`]: SVG charts;
//! - [`login`]: logging in and out of both areas;
//! - [`overview`], [`applications`], [`endpoints`], [`events`],
//!   [`dead_letters`]: the pages, one module per subject; the endpoint,
//!   event and dead-letter pages serve both the console and the portal;
//! - [`records`]: an event's payload, read back from its delivery record
//!   in Kafka;
//! - [`settings`]: `HERALD_CONSOLE_*` and `HERALD_PORTAL_*`.

pub mod applications;
pub mod assets;
pub mod chart;
pub mod dead_letters;
pub mod endpoints;
pub mod events;
pub mod layout;
pub mod login;
pub mod overview;
pub mod records;
pub mod session;
pub mod settings;
pub mod viewer;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

pub use settings::ConsoleSettings;

use crate::state::AppState;
use viewer::{ApiRoutes, area_of};

/// The console's and portal's routes. `api` is the API's keyed router,
/// with its state, without the key check: the pages call it as their
/// session's caller.
pub fn routes(api: Router, state: AppState) -> Router<AppState> {
    let app = "/console/applications/{app}";
    let console = Router::new()
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console/login", get(login::form).post(login::log_in))
        .route("/console/logout", post(login::log_out))
        .route("/console", get(overview::page))
        .route(
            "/console/applications",
            get(applications::list).post(applications::create),
        )
        .route(app, get(applications::page).post(applications::update))
        .route(&format!("{app}/delete"), post(applications::delete))
        .route(
            &format!("{app}/portal-link"),
            post(applications::portal_link),
        )
        .route(&format!("{app}/endpoints"), post(endpoints::create))
        .route(
            &format!("{app}/endpoints/{{id}}"),
            get(endpoints::page).post(endpoints::update),
        )
        .route(
            &format!("{app}/endpoints/{{id}}/{{action}}"),
            post(endpoints::act),
        )
        .route("/console/events", get(events::page))
        .route("/console/dead-letters", get(dead_letters::page))
        .route("/console/dead-letters/replay", post(dead_letters::replay));
    let portal = Router::new()
        .route("/portal/assets/{file}", get(assets::serve))
        .route("/portal/login", get(login::form).post(login::log_in))
        .route("/portal/logout", post(login::log_out))
        .route("/portal", get(endpoints::portal_home))
        .route("/portal/endpoints", post(endpoints::create))
        .route(
            "/portal/endpoints/{id}",
            get(endpoints::page).post(endpoints::update),
        )
        .route("/portal/endpoints/{id}/{action}", post(endpoints::act))
        .route("/portal/events", get(events::page))
        .route("/portal/dead-letters", get(dead_letters::page))
        .route("/portal/dead-letters/replay", post(dead_letters::replay));
    console
        .merge(portal)
        .layer(axum::Extension(ApiRoutes(api)))
        .layer(axum::middleware::from_fn_with_state(state, secure_headers))
}

/// Adds the security headers of [`layout::secure_headers`] to every
/// answer of either area.
async fn secure_headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let area = area_of(request.uri().path());
    let mut response = next.run(request).await;
    layout::secure_headers(&state, area, response.headers_mut());
    response
}
