//! herald-ingest: Herald's HTTP front door.
//!
//! - `POST /v1/events` validates an event, de-duplicates it by id (Redis),
//!   publishes it to `herald.events` and answers `202 {"id"}` only once Kafka
//!   acknowledged the write ([`events`]); `POST /v1/events/batch` does the
//!   same for up to 100 events at once, each with its own result, at one
//!   Redis round trip and one batch of produce requests per batch
//!   ([`batch`]).
//! - `/v1/applications…` manages applications, the platform's customers
//!   ([`applications`]), and under each its endpoints and their
//!   subscriptions ([`endpoints`]), stored in Redis.
//! - `/v1/dlq…` lists and replays dead letters, which a background consumer
//!   copies from `herald.dlq` into Redis ([`dlq`]).
//! - `…/events/{id}/attempts` and `…/endpoints/{id}/attempts` under an
//!   application read the
//!   delivery-attempt log ([`attempts`]).
//! - `/console` (operators, with an `admin` key) and `/portal` (one
//!   application's customer, with a `portal` token) are the same things in
//!   a browser: server-rendered pages over the API's own handlers
//!   ([`console`]).
//! - `/healthz` and `/readyz` report liveness and readiness ([`health`]);
//!   `/metrics` serves Prometheus metrics.
//! - `/openapi.json` serves the API's OpenAPI document, built from the
//!   handlers' `#[utoipa::path]` annotations ([`openapi`]): the router is
//!   assembled from the same annotated handlers ([`keyed_routes`],
//!   [`open_routes`]), so a route cannot exist undocumented; `/docs` shows
//!   it as a page ([`docs`]).
//!
//! Every `/v1` route requires `Authorization: Bearer <api key>`; keys with
//! the `ingest` scope may only send events, `admin` keys may do everything,
//! and each key may be held to an event rate ([`auth`]).
//! Errors are `{"error": {"code", "message"}}` ([`error`]).
//!
//! [`Application::build`] binds the listener and connects the clients;
//! [`Application::run`] serves until the shutdown token fires. `main.rs` and
//! the tests both go through these two calls.

pub mod applications;
pub mod attempts;
pub mod auth;
pub mod batch;
pub mod body;
pub mod config;
pub mod console;
pub mod dlq;
pub mod docs;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod paging;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use herald_core::application::ApplicationStore;
use herald_core::endpoint::EndpointStore;
use herald_core::kafka::consumer::ConsumerSettings;
use herald_core::redis_store::{self, Keys};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use state::{AppState, Inner};

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A Kafka client cannot be created from the configuration.
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Redis client cannot be created from the configuration.
    #[error("Redis client: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Why ingest could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// It could not start.
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Builds the server and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngestError> {
    Application::build(config).await?.run(shutdown).await?;
    Ok(())
}

/// A bound, ready-to-run ingest server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    config: Config,
    dlq: herald_core::dead_letter_index::DlqIndex,
    stats: herald_core::stats::Flusher,
}

impl Application {
    /// Binds the listener and creates the Kafka and Redis clients. Neither
    /// Kafka nor Redis has to be up yet: `/readyz` says when they are.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let producer = herald_core::kafka::producer(&config.kafka, "herald-ingest")?;
        let redis = redis_store::connect(&config.redis)?;
        let keys = Keys::new(config.redis.key_prefix.clone());
        let applications = ApplicationStore::new(redis.clone(), keys.clone());
        let dlq = herald_core::dead_letter_index::DlqIndex::new(
            redis.clone(),
            keys.clone(),
            config.dlq_retention,
        );
        let state: AppState = Arc::new(Inner {
            api_keys: config.api_keys.clone(),
            ingest_rate_limit: config.ingest_rate_limit,
            limiter: herald_core::rate_limit::RateLimiter::new(redis.clone(), keys.clone()),
            destinations: config.destinations.clone(),
            secret_rotation_grace: config.secret_rotation_grace,
            producer,
            events_topic: config.kafka.events_topic(),
            deliveries_topic: config.kafka.deliveries_topic(),
            dlq: dlq.clone(),
            produce_timeout: config.kafka.produce_timeout,
            endpoints: EndpointStore::new(redis.clone(), keys.clone()),
            applications,
            attempt_log: herald_core::attempt_log::AttemptLog::new(
                redis.clone(),
                keys.clone(),
                config.attempt_log.clone(),
            ),
            redis,
            keys,
            max_body_bytes: config.max_body_bytes,
            breaker_window: config.breaker_window,
            idempotency_ttl: config.idempotency_ttl,
            console: config.console.clone(),
            records: console::records::RecordReader::new(config.kafka.clone()),
        });
        let stats = herald_core::stats::Flusher::new(state.redis.clone(), state.keys.clone());
        Ok(Self {
            listener,
            router: router(state),
            config,
            dlq,
            stats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then finishes the requests in progress.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // Topics and the dead-letter indexer start in the background: ingest
        // serves (and answers 503 for events) even while Kafka is starting.
        let kafka = self.config.kafka.clone();
        let abandon = tokio_util::sync::CancellationToken::new();
        let indexer = dlq::DlqIndexer {
            index: self.dlq.clone(),
            abandon: abandon.clone(),
        };
        let drain_timeout = self.config.drain_timeout;
        let background_shutdown = shutdown.clone();
        let background = tokio::spawn(async move {
            let dlq_topic = kafka.topic(herald_core::topics::DLQ);
            let topics = [
                kafka.events_topic(),
                kafka.deliveries_topic(),
                dlq_topic.clone(),
            ];
            if let Err(err) =
                herald_core::kafka::ensure_topics_with_retry(&kafka, &topics, &background_shutdown)
                    .await
            {
                tracing::error!(error = %err, "cannot create Herald's topics");
            }
            let settings = ConsumerSettings {
                group_id: kafka.group(herald_core::groups::DLQ_INDEXER),
                client_id: "herald-ingest".to_owned(),
                topics: vec![dlq_topic],
                max_in_flight: 64,
                fetch_wait: herald_core::kafka::RELAXED_FETCH_WAIT,
                drain_timeout,
                abandon,
            };
            if let Err(err) = herald_core::kafka::consumer::run(
                &kafka,
                settings,
                Arc::new(indexer),
                background_shutdown,
            )
            .await
            {
                tracing::error!(error = %err, "the dead-letter indexer stopped");
            }
        });
        let flusher = tokio::spawn(self.stats.run(shutdown.clone()));
        tracing::info!(addr = %self.listener.local_addr()?, "herald-ingest listening");
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        let _ = background.await;
        let _ = flusher.await;
        served
    }
}

/// The routes that need a key, with the OpenAPI document built from their
/// annotations ([`openapi`]).
pub fn keyed_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::post_event))
        .routes(routes!(batch::post_events))
        .routes(routes!(applications::create, applications::list))
        .routes(routes!(
            applications::get,
            applications::update,
            applications::delete
        ))
        .routes(routes!(applications::issue_token))
        .routes(routes!(applications::revoke_token))
        .routes(routes!(endpoints::create, endpoints::list))
        .routes(routes!(
            endpoints::get,
            endpoints::update,
            endpoints::delete
        ))
        .routes(routes!(endpoints::get_secret))
        .routes(routes!(endpoints::rotate_secret))
        .routes(routes!(endpoints::health))
        .routes(routes!(attempts::for_endpoint))
        .routes(routes!(attempts::for_event))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay))
}

/// The routes open to anyone.
pub fn open_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The OpenAPI document of the whole API, as `GET /openapi.json` serves it
/// and `openapi.json` at the repository's root holds it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes_and_document().2
}

/// The keyed routes, the open ones, and the document of both.
fn routes_and_document() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (keyed, mut document) = keyed_routes().split_for_parts();
    let (open, open_document) = open_routes().split_for_parts();
    document.merge(open_document);
    openapi::finish(&mut document);
    (keyed, open, document)
}

/// The answer to a path no route serves: the console's or portal's
/// not-found page under theirs, the API's JSON 404 elsewhere.
async fn not_found(
    axum::extract::State(state): axum::extract::State<AppState>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = uri.path();
    let pages = ["/console", "/portal"].iter().any(|base| {
        path.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    if !pages {
        return error::ApiError::not_found("no such route").into_response();
    }
    let area = console::viewer::area_of(path);
    let mut response = console::layout::failure_page(
        area,
        axum::http::StatusCode::NOT_FOUND,
        "There is no such page.",
    );
    console::layout::secure_headers(&state, area, response.headers_mut());
    response
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let (keyed, open, document) = routes_and_document();
    // Both answers are made once; each request gets a cheap copy.
    let document_json = axum::body::Bytes::from(
        document
            .to_pretty_json()
            .expect("the OpenAPI document is JSON"),
    );
    let docs_page =
        docs::Page::new(&serde_json::to_value(&document).expect("the OpenAPI document is JSON"));
    // The pages call the same handlers, as their session's caller.
    let pages = console::routes(keyed.clone().with_state(state.clone()), state.clone());
    let keyed = keyed.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_api_key,
    ));
    Router::new()
        .merge(keyed)
        .merge(open)
        .merge(pages)
        .route(
            "/openapi.json",
            get(move || {
                let json = document_json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        json,
                    )
                }
            }),
        )
        .route(
            "/docs",
            get(move || {
                let page = docs_page.clone();
                async move { page.response() }
            }),
        )
        .route("/metrics", get(herald_core::ops::metrics_handler))
        .fallback(not_found)
        .with_state(state)
}
