//! `POST /v1/events/batch`: up to [`MAX_EVENTS`] events in one request,
//! each with its own result. Each event is read, authorised and
//! de-duplicated exactly as `POST /v1/events` does it; what changes is the
//! cost: the ids of the whole batch are claimed in one Redis round trip
//! (one `CLAIM` script call per event, in one pipeline), their records are
//! handed to the producer together (so they leave in the same produce
//! requests, one per partition leader) and awaited together, and the
//! accepted ids are marked done in one more round trip.
//!
//! An event that cannot be accepted does not hold up the others: its
//! result carries the status and error that `POST /v1/events` would have
//! answered for it alone (`in_progress` is answered at once here, where the
//! single route waits for the concurrent request, so that one busy id does
//! not make the whole batch wait).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_core::application::VERSION_HEADER as APPLICATION_VERSION_HEADER;
use herald_core::event::{EventRecord, new_event_id, parse_event};
use herald_core::metrics;
use herald_core::trace_context;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::body::read_json_body;
use crate::error::ApiError;
use crate::events::{Claim, claim_invocation, claim_outcome, claim_script, in_server_span};
use crate::openapi::{ErrorBody, ErrorDetail};
use crate::state::AppState;

/// Most events in one batch.
pub const MAX_EVENTS: usize = 100;

/// The body of `POST /v1/events/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes what `read_batch` reads; never built.
pub struct NewEvents {
    /// 1 to 100 events, each a `NewEvent` as `POST /v1/events` takes it.
    /// Each is read on its own: one that is not a valid event gets its own
    /// `400` result, and the others go on, so any JSON value is taken here.
    #[schema(min_items = 1, max_items = 100, example = json!([{"application": "acme", "id": "order_1001", "type": "order.paid", "payload": {"total": 42}}]))]
    events: Vec<serde_json::Value>,
}

/// What the batch is read into: each event's bytes, parsed one by one, so
/// that one malformed event fails alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchWire<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// One result per event, in the order of the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// One per event, in order.
    results: Vec<EventResult>,
    /// How many were accepted (now or before).
    accepted: usize,
    /// How many were not.
    failed: usize,
}

/// What became of one event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventResult {
    /// `202` when accepted (or accepted before), otherwise the status
    /// `POST /v1/events` would have answered for this event alone.
    #[schema(example = 202)]
    status: u16,
    /// The event's id, when it was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "order_1001", nullable = false)]
    id: Option<String>,
    /// `true` when the id had been accepted before (no second delivery).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    /// Why it was not accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<ErrorDetail>,
    /// With a `429`: how many seconds to wait before sending the event
    /// again (what `Retry-After` says for a single event).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = 1)]
    retry_after_seconds: Option<u64>,
}

impl EventResult {
    fn accepted(id: String, replayed: bool) -> Self {
        Self {
            status: StatusCode::ACCEPTED.as_u16(),
            id: Some(id),
            replayed,
            error: None,
            retry_after_seconds: None,
        }
    }

    fn failed(err: &ApiError) -> Self {
        Self {
            status: err.status.as_u16(),
            id: None,
            replayed: false,
            error: Some(ErrorDetail {
                code: err.code.to_owned(),
                message: err.message.clone(),
            }),
            retry_after_seconds: err.retry_after_secs,
        }
    }
}

/// An event of the batch that passed its checks, on its way to Kafka.
struct Pending {
    /// Its place in the batch.
    index: usize,
    application: String,
    id: String,
    record: Vec<u8>,
}

/// Accepts up to 100 events; each has its own result. Answers once Kafka
/// acknowledged every accepted event's record.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    operation_id = "send_events",
    tag = "events",
    request_body = NewEvents,
    responses(
        (status = 200, description = "The batch was read: one result per event, each accepted (`202`) or with its own error", body = BatchAccepted),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_request` (no `events`, or more than 100), `invalid_field` (an `Idempotency-Key`: each event names itself by its `id`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn post_events(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchAccepted>, ApiError> {
    // As for a single event: the caller's traceparent, if any, becomes the
    // parent of this trace, which the records carry on.
    let span = tracing::info_span!(
        "POST /v1/events/batch",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/events/batch",
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let result = in_server_span(
        span,
        headers,
        |headers| accept_batch(state, caller, headers, body),
        |_| StatusCode::OK,
    )
    .await;
    // A batch refused whole counts as one refused request; its events'
    // own results are counted in `accept_batch`.
    if let Err(err) = &result
        && err.code != "rate_limited"
    {
        metrics::metrics()
            .events_rejected
            .get_or_create(&metrics::label("reason", err.code))
            .inc();
    }
    result
}

async fn accept_batch(
    state: AppState,
    caller: crate::auth::Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchAccepted>, ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_request(
            "invalid_field",
            "header `Idempotency-Key` names one event; in a batch, give each event its own `id`",
        ));
    }
    // A batch may be as large as its events together.
    let limit = state.max_body_bytes.saturating_mul(MAX_EVENTS);
    let bytes = read_json_body(&headers, body, limit.min(MAX_BATCH_BYTES)).await?;
    let wire = read_batch(&bytes)?;
    // `HERALD_INGEST_RATE_LIMIT` counts events, whatever carries them.
    crate::auth::take_ingest_slots(&state, &caller, wire.events.len() as u32).await?;
    let mut results: Vec<Option<EventResult>> = (0..wire.events.len()).map(|_| None).collect();
    let mut pending = Vec::with_capacity(wire.events.len());
    let now = OffsetDateTime::now_utc();
    for (index, raw) in wire.events.iter().enumerate() {
        let event_bytes = raw.get().as_bytes();
        let checked = if event_bytes.len() > state.max_body_bytes {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the event is larger than the limit of {} bytes",
                    state.max_body_bytes
                ),
            ))
        } else {
            parse_event(event_bytes)
                .map_err(|err| ApiError::bad_request(err.code(), err.to_string()))
        };
        let event = match checked {
            Ok(event) => event,
            Err(err) => {
                results[index] = Some(EventResult::failed(&err));
                continue;
            }
        };
        if let Some(only) = caller.only_application()
            && only != event.application
        {
            let err = crate::applications::not_found(&event.application);
            results[index] = Some(EventResult::failed(&err));
            continue;
        }
        let id = event.id.clone().unwrap_or_else(new_event_id);
        let timestamp = event.timestamp.unwrap_or(now);
        let record = EventRecord::new(
            &event.application,
            &id,
            &event.event_type,
            event.payload,
            timestamp,
        )
        .to_json();
        pending.push(Pending {
            index,
            application: event.application.to_string(),
            id,
            record,
        });
    }

    // Claim every id in one round trip; a batch that names one id twice
    // claims it once (the second finds it pending: `in_progress`).
    let claims = claim_all(&state, &pending).await?;
    let mut publishing = Vec::with_capacity(pending.len());
    for (event, claim) in pending.into_iter().zip(claims) {
        match claim {
            Ok(Claim::Claimed { app_version }) => publishing.push((event, app_version)),
            Ok(Claim::AlreadyAccepted) => {
                results[event.index] = Some(EventResult::accepted(event.id, true));
            }
            Err(err) => results[event.index] = Some(EventResult::failed(&err)),
        }
    }

    // Hand every record to the producer before awaiting any.
    let deliveries: Vec<_> = publishing
        .iter()
        .map(|(event, app_version)| {
            let app_version = app_version.to_string();
            let headers = trace_context::kafka_headers().insert(rdkafka::message::Header {
                key: APPLICATION_VERSION_HEADER,
                value: Some(app_version.as_bytes()),
            });
            state.producer.send(
                FutureRecord::to(&state.events_topic)
                    .key(&event.application)
                    .payload(&event.record)
                    .headers(headers),
                state.produce_timeout,
            )
        })
        .collect();
    let produced = futures::future::join_all(deliveries).await;

    let mut done = redis::pipe();
    let mut given_up = redis::pipe();
    let ttl_ms = (state.idempotency_ttl.as_millis() as u64).max(1);
    for ((event, _), produced) in publishing.into_iter().zip(produced) {
        let key = state.keys.idempotency(&event.application, &event.id);
        match produced {
            Ok(_) => {
                done.pset_ex(&key, "done", ttl_ms).ignore();
                results[event.index] = Some(EventResult::accepted(event.id, false));
            }
            Err(err) => {
                // Let a retry of the same id try again.
                given_up.del(&key).ignore();
                let err = ApiError::unavailable(
                    "kafka_unavailable",
                    "Kafka did not acknowledge the event; it was not accepted, retry later",
                    err,
                );
                results[event.index] = Some(EventResult::failed(&err));
            }
        }
    }
    let mut redis = state.redis.clone();
    if let Err(err) = done.query_async::<()>(&mut redis).await {
        // The events are stored; only their duplicate protection is at risk.
        tracing::warn!(error = %err, "events accepted but their idempotency records were not saved");
    }
    let _ = given_up.query_async::<()>(&mut redis).await;

    let results: Vec<EventResult> = results
        .into_iter()
        .map(|r| r.expect("every event of the batch has a result"))
        .collect();
    let m = metrics::metrics();
    let mut accepted = 0;
    for result in &results {
        match &result.error {
            None => {
                accepted += 1;
                m.events_accepted.inc();
            }
            Some(error) => {
                m.events_rejected
                    .get_or_create(&metrics::label("reason", error.code.clone()))
                    .inc();
            }
        }
    }
    herald_core::stats::event_accepted(accepted as u64);
    tracing::debug!(accepted, events = results.len(), "event batch read");
    Ok(Json(BatchAccepted {
        failed: results.len() - accepted,
        accepted,
        results,
    }))
}

/// Largest batch body, whatever `HERALD_MAX_BODY_BYTES` allows one event.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Reads the batch's envelope; its events are read one by one after.
fn read_batch(bytes: &[u8]) -> Result<BatchWire<'_>, ApiError> {
    // The envelope adds two levels; each event's own depth is checked
    // with the event.
    crate::body::refuse_deep(bytes, herald_core::event::MAX_JSON_DEPTH + 2)?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object: {\"events\": [ … ]}",
        ));
    }
    let wire: BatchWire<'_> = crate::body::parse_json(bytes)?;
    if wire.events.is_empty() || wire.events.len() > MAX_EVENTS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "`events` holds {} events; a batch holds 1 to {MAX_EVENTS}",
                wire.events.len()
            ),
        ));
    }
    Ok(wire)
}

/// Claims the ids of `pending` in one round trip: each one's outcome, as
/// `POST /v1/events` would decide it.
async fn claim_all(
    state: &AppState,
    pending: &[Pending],
) -> Result<Vec<Result<Claim, ApiError>>, ApiError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let script = claim_script();
    let now = herald_core::event::unix_millis(OffsetDateTime::now_utc());
    let mut pipe = redis::pipe();
    // EVALSHA in a pipeline does not load a missing script by itself.
    pipe.load_script(script).ignore();
    for event in pending {
        let invocation = claim_invocation(state, script, &event.application, &event.id, None, now);
        pipe.invoke_script(&invocation);
    }
    let mut redis = state.redis.clone();
    let replies: Vec<(i64, i64, u64, u64)> = pipe.query_async(&mut redis).await?;
    Ok(pending
        .iter()
        .zip(replies)
        .map(|(event, reply)| {
            claim_outcome(&event.application, &event.id, None, reply).and_then(|claim| {
                claim.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "in_progress",
                        format!(
                            "an event with id {:?} is being accepted by another request (or earlier in this batch); retry shortly",
                            event.id
                        ),
                    )
                })
            })
        })
        .collect())
}
