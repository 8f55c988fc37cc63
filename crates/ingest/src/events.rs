//! `POST /v1/events`: validate, de-duplicate, publish, answer.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::application::VERSION_HEADER as APPLICATION_VERSION_HEADER;
use herald_core::event::{EventRecord, new_event_id, parse_event, validate_event_id};
use herald_core::metrics;
use herald_core::trace_context;
use rdkafka::producer::FutureRecord;
use redis::AsyncCommands;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::body::read_json_body;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The body of `POST /v1/events`, as [`herald_core::event::parse_event`]
/// reads it (the same JSON that producers write straight to
/// `herald.events`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)] // As `parse_event`; says so in the schema.
#[allow(dead_code)] // Describes what `parse_event` reads; never built.
pub struct NewEvent {
    /// The application the event is for.
    #[schema(example = "acme", pattern = "^[!-\\-/-9;-~]{1,128}$")]
    application: String,
    /// Your id for it (1–128 printable ASCII characters, no `.`): an id accepted
    /// before is accepted again without a second delivery. Generated
    /// (`evt_…`) when absent, unless `Idempotency-Key` gives one.
    #[schema(
        example = "order_1001",
        pattern = "^[!-\\-/-~]{1,128}$",
        nullable = false
    )]
    id: Option<String>,
    /// Its type, what endpoints subscribe to (e.g. `order.paid`).
    #[serde(rename = "type")]
    #[schema(example = "order.paid", pattern = "^[A-Za-z0-9._-]{1,128}$")]
    event_type: String,
    /// Any JSON (`null` too), sent to the endpoints byte for byte.
    payload: serde_json::Value,
    /// RFC 3339; when absent, the time it was accepted.
    #[schema(format = DateTime, nullable = false)]
    timestamp: Option<String>,
}

/// An event accepted (`202`), or accepted before (`Idempotent-Replayed:
/// true`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Its id: the `webhook-id` of its webhooks.
    #[schema(example = "order_1001")]
    id: String,
}

/// How long a concurrent request with the same id is waited for.
const WAIT_FOR_CONCURRENT: Duration = Duration::from_secs(5);

/// Accepts one event. Answers 202 only after Kafka acknowledged the record.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "send_event",
    tag = "events",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-\\-/-~]{1,128}$",
            description = "Names the event when the body has no `id`. A key names one event: sent again with another event id, it answers 409 `idempotency_key_reused`"),
    ),
    request_body = NewEvent,
    responses(
        (status = 202, description = "Accepted, or accepted before (`Idempotent-Replayed: true`)", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when the id was accepted before"))),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_event`, `missing_field`, `invalid_field`", body = ErrorBody),
        (status = 404, description = "`application_not_found`", body = ErrorBody),
        (status = 409, description = "`in_progress`: the same id is being accepted by another request; `idempotency_key_reused`: the `Idempotency-Key` was sent before with another event id", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`kafka_unavailable`, `redis_unavailable`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn post_event(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The caller's traceparent, if any, becomes this trace's parent.
    let span = tracing::info_span!(
        "POST /v1/events",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/events",
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let result = in_server_span(
        span,
        headers,
        |headers| accept_event(state, caller, headers, body),
        Response::status,
    )
    .await;
    let m = metrics::metrics();
    match &result {
        Ok(_) => {
            m.events_accepted.inc();
            herald_core::stats::event_accepted(1);
        }
        Err(err) => {
            m.events_rejected
                .get_or_create(&metrics::label("reason", err.code))
                .inc();
        }
    };
    result
}

/// Runs `handle` with the request's `headers` inside `span`, an event
/// route's server span (with the fields `trace_id` and
/// `http.response.status_code`): it continues the caller's trace (its
/// `traceparent`), names the trace in logs, and records the answer's
/// status.
pub(crate) async fn in_server_span<T, F>(
    span: tracing::Span,
    headers: HeaderMap,
    handle: impl FnOnce(HeaderMap) -> F,
    status: impl FnOnce(&T) -> StatusCode,
) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    trace_context::adopt(&span, trace_context::from_http(&headers));
    if let Some(trace_id) = span.in_scope(trace_context::current_trace_id) {
        span.record("trace_id", trace_id);
    }
    let result = handle(headers).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        match &result {
            Ok(answer) => status(answer).as_u16(),
            Err(err) => err.status.as_u16(),
        },
    );
    result
}

#[tracing::instrument(
    name = "herald.events publish",
    skip_all,
    fields(otel.kind = "producer", messaging.system = "kafka", event_id)
)]
async fn accept_event(
    state: AppState,
    caller: crate::auth::Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&headers, body, state.max_body_bytes).await?;
    let event =
        parse_event(&bytes).map_err(|err| ApiError::bad_request(err.code(), err.to_string()))?;
    // An application's ingest token sees no other application.
    if let Some(only) = caller.only_application()
        && only != event.application
    {
        return Err(crate::applications::not_found(&event.application));
    }

    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_field",
                    "header `Idempotency-Key` must be printable ASCII",
                )
            })?;
            validate_event_id(key).map_err(|problem| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("header `Idempotency-Key` {problem}"),
                )
            })?;
            Some(key.to_owned())
        }
    };
    // The body's id names the event; a header alone names it too. A key
    // sent with one event id cannot later be sent with another (`CLAIM`).
    let id = match (event.id.clone(), &header_key) {
        (Some(id), _) => id,
        (None, Some(key)) => key.clone(),
        (None, None) => new_event_id(),
    };
    tracing::Span::current().record("event_id", id.as_str());

    let timestamp = event.timestamp.unwrap_or_else(OffsetDateTime::now_utc);
    let app = event.application.as_str();
    let record = EventRecord::new(app, &id, &event.event_type, event.payload, timestamp).to_json();

    let app_version = match claim_id(&state, app, &id, header_key.as_deref()).await? {
        Claim::AlreadyAccepted => return Ok(accepted(&id, true)),
        Claim::Claimed { app_version } => app_version,
    };
    // Fan-out brings its copy of the application's endpoints up to this
    // version before fanning the event out: a change answered before the
    // event was sent is always part of it.
    let app_version = app_version.to_string();
    let headers = trace_context::kafka_headers().insert(rdkafka::message::Header {
        key: APPLICATION_VERSION_HEADER,
        value: Some(app_version.as_bytes()),
    });

    let produced = state
        .producer
        .send(
            FutureRecord::to(&state.events_topic)
                .key(app)
                .payload(&record)
                .headers(headers),
            state.produce_timeout,
        )
        .await;
    let mut redis = state.redis.clone();
    let key = state.keys.idempotency(app, &id);
    match produced {
        Ok(_) => {
            let ttl_ms = state.idempotency_ttl.as_millis() as u64;
            if let Err(err) = redis.pset_ex::<_, _, ()>(&key, "done", ttl_ms).await {
                // The event is stored; only its duplicate protection is at
                // risk (a retry within the pending window may publish again).
                tracing::warn!(error = %err, "event accepted but its idempotency record was not saved");
            }
            tracing::debug!("event accepted");
            Ok(accepted(&id, false))
        }
        Err(err) => {
            // Let a retry of the same id try again.
            let _ = redis.del::<_, ()>(&key).await;
            Err(ApiError::unavailable(
                "kafka_unavailable",
                "Kafka did not acknowledge the event; it was not accepted, retry later",
                err,
            ))
        }
    }
}

fn accepted(id: &str, replayed: bool) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(Accepted { id: id.to_owned() }),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

pub(crate) enum Claim {
    /// This request owns the id and must publish it; the application's
    /// change counter was read with the claim.
    Claimed {
        /// The application's change counter.
        app_version: i64,
    },
    /// The id was accepted before.
    AlreadyAccepted,
}

/// Claims the event id of an application: `{1, counter}` claimed (with the
/// application's change counter), `{2, counter}` accepted before, `{0, …}`
/// being accepted by another request, `{-1, …}` no such application, `{3,
/// counter, wait ms, limit}` over the application's `rate_limit` (GCRA in
/// KEYS[4], a burst of one second's worth; taken only by a claim), `{4, …}`
/// the request's `Idempotency-Key` (KEYS[5], when it has one) was sent
/// before with another event id. A key is bound to the event id ARGV[3]
/// for ARGV[4] ms. One round trip.
const CLAIM: &str = r#"
local app = redis.call('GET', KEYS[1])
if not app then return {-1, 0, 0, 0} end
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
if KEYS[5] then
  local bound = redis.call('GET', KEYS[5])
  if bound and bound ~= ARGV[3] then return {4, version, 0, 0} end
end
if redis.call('GET', KEYS[2]) == 'done' then
  if KEYS[5] then redis.call('SET', KEYS[5], ARGV[3], 'NX', 'PX', ARGV[4]) end
  return {2, version, 0, 0}
end
local limit = cjson.decode(app)['rate_limit']
local now = tonumber(ARGV[2])
local next_tat = nil
if type(limit) == 'number' and limit > 0 then
  local interval = 1000 / limit
  local tolerance = interval * (limit - 1)
  local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then
    return {3, version, math.ceil(tat - now - tolerance), limit}
  end
  next_tat = tat + interval
end
if redis.call('SET', KEYS[2], 'pending', 'NX', 'PX', ARGV[1]) then
  if KEYS[5] then redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[4]) end
  if next_tat then
    redis.call('SET', KEYS[4], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
  end
  return {1, version, 0, 0}
end
return {0, version, 0, 0}
"#;

/// Marks the id as "being published" unless it is known, in an application
/// that exists and within its rate limit. A second request with the same id
/// waits for the first to finish: it is then either a duplicate of an
/// accepted event, or (if the first failed) gets its turn.
async fn claim_id(
    state: &AppState,
    app: &str,
    id: &str,
    header_key: Option<&str>,
) -> Result<Claim, ApiError> {
    let mut redis = state.redis.clone();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_CONCURRENT;
    let script = claim_script();
    loop {
        let now = herald_core::event::unix_millis(OffsetDateTime::now_utc());
        let reply = claim_invocation(state, script, app, id, header_key, now)
            .invoke_async(&mut redis)
            .await?;
        if let Some(claim) = claim_outcome(app, id, header_key, reply)? {
            return Ok(claim);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_progress",
                format!(
                    "an event with id {id:?} is being accepted by another request; retry shortly"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The [`CLAIM`] script, built once.
pub(crate) fn claim_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(CLAIM))
}

/// One [`CLAIM`] call for `id` of application `app` at `now` (Unix ms).
pub(crate) fn claim_invocation<'a>(
    state: &AppState,
    script: &'a redis::Script,
    app: &str,
    id: &str,
    header_key: Option<&str>,
    now: i64,
) -> redis::ScriptInvocation<'a> {
    // Long enough to cover a produce that runs into its timeout.
    let pending_ms = (state.produce_timeout + Duration::from_secs(5)).as_millis() as u64;
    let mut invocation = script.key(state.keys.application(app));
    invocation
        .key(state.keys.idempotency(app, id))
        .key(state.keys.application_version(app))
        .key(state.keys.application_rate_limit(app));
    if let Some(header_key) = header_key {
        invocation.key(state.keys.idempotency_key(app, header_key));
    }
    invocation
        .arg(pending_ms)
        .arg(now)
        .arg(id)
        // PX takes no 0 (an idempotency TTL of `0`).
        .arg((state.idempotency_ttl.as_millis() as u64).max(1));
    invocation
}

/// What a [`CLAIM`] reply means: the claim, an error, or `None` while
/// another request is accepting the same id.
pub(crate) fn claim_outcome(
    app: &str,
    id: &str,
    header_key: Option<&str>,
    (claimed, app_version, wait_ms, limit): (i64, i64, u64, u64),
) -> Result<Option<Claim>, ApiError> {
    match claimed {
        1 => Ok(Some(Claim::Claimed { app_version })),
        2 => Ok(Some(Claim::AlreadyAccepted)),
        -1 => Err(crate::applications::not_found(app)),
        4 => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "header `Idempotency-Key` {:?} was sent before with another event id than {id:?}; a key names one event, so send a new key for a new event",
                header_key.unwrap_or_default()
            ),
        )),
        3 => {
            let seconds = wait_ms.div_ceil(1000).max(1);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "application {app:?} may receive {limit} events per second; retry after {seconds} s"
                ),
            );
            err.retry_after_secs = Some(seconds);
            Err(err)
        }
        _ => Ok(None),
    }
}
