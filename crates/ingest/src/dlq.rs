//! Dead letters: the consumer that copies `herald.dlq` into the index
//! ([`herald_core::dead_letter_index`]), and the API over it.
//!
//! `GET /v1/dlq` lists them; `POST /v1/dlq/replay` sends them back to
//! `herald.deliveries` for a fresh set of attempts, with the same event id
//! (so the same `webhook-id`), and removes them from the index.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use herald_core::backoff::Backoff;
use herald_core::dead_letter_index::{DlqIndex, Filter};
use herald_core::event::{format_timestamp, from_unix_millis};
use herald_core::kafka::consumer::RecordHandler;
use herald_core::kafka::offsets::Outcome;
use herald_core::kafka::{OutgoingRecord, produce_until_acked};
use herald_core::proto::{DeadLetter, Delivery};
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::body::read_json;
use crate::error::ApiError;
use crate::extract::Query;
use crate::openapi::{ErrorBody, ErrorDetail};
use crate::paging::{Listed, PageParams};
use crate::state::AppState;

/// Most dead letters one replay call handles.
const MAX_REPLAY: usize = 10_000;

/// Copies `herald.dlq` into the index.
pub struct DlqIndexer {
    /// The index.
    pub index: DlqIndex,
    /// Stops retries when in-flight work must be given up.
    pub abandon: CancellationToken,
}

impl std::fmt::Debug for DlqIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqIndexer")
            .field("index", &self.index)
            .finish()
    }
}

impl RecordHandler for DlqIndexer {
    async fn handle(&self, record: OwnedMessage) -> Outcome {
        let letter = match DeadLetter::decode(record.payload().unwrap_or_default()) {
            Ok(letter) => letter,
            Err(err) => {
                tracing::error!(
                    partition = record.partition(),
                    offset = record.offset(),
                    error = %err,
                    "a record on the dead-letter topic is not a herald.v1.DeadLetter; it stays only in Kafka"
                );
                return Outcome::Done;
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(200));
        loop {
            match self.index.put(&letter).await {
                Ok(()) => return Outcome::Done,
                Err(err) => tracing::warn!(error = %err, "cannot index a dead letter; retrying"),
            }
            if backoff.pause(&self.abandon).await.is_err() {
                return Outcome::Abandoned;
            }
        }
    }
}

/// A dead letter as the API shows it. A delivery that died has its
/// delivery's fields; a record that could not be read has
/// `raw_record_base64` instead.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id, for replaying it.
    id: String,
    /// Why it died: `endpoint_unavailable`, `retries_exhausted`,
    /// `endpoint_deleted`, `application_not_found`, `invalid_record`, …
    reason: String,
    /// The specifics.
    detail: String,
    /// RFC 3339.
    dead_at: String,
    /// Where it was read from.
    source: DeadLetterSource,
    /// The endpoint it was for.
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_id: Option<String>,
    /// The application of its event.
    #[serde(skip_serializing_if = "Option::is_none")]
    application_id: Option<String>,
    /// Its event.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    /// Its event's type.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    /// Its event's payload: any JSON, as it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
    /// Every attempt made, first first.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<DeadAttempt>>,
    /// How often it was put off (breaker open, rate limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    deferrals: Option<u32>,
    /// The last attempt's HTTP status (`null`: no answer, or no attempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    last_status_code: Option<Option<u32>>,
    /// The last attempt's error (`null`: none, or no attempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    last_error: Option<Option<String>>,
    /// A record that could not be read, as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_record_base64: Option<String>,
}

/// Where a dead letter was read from.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterSource {
    /// The topic.
    topic: String,
    /// Its partition.
    partition: i32,
    /// The record's offset.
    offset: i64,
}

/// One attempt of a dead delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadAttempt {
    /// 1 for the first.
    attempt: usize,
    /// RFC 3339.
    started_at: String,
    /// The endpoint's HTTP status, when it answered.
    status_code: Option<u32>,
    /// Why it failed, when it did.
    error: Option<String>,
    /// How long it took.
    duration_ms: u32,
}

fn view(letter: &DeadLetter) -> DeadLetterView {
    let mut out = DeadLetterView {
        id: letter.id.clone(),
        reason: letter.reason.clone(),
        detail: letter.detail.clone(),
        dead_at: format_timestamp(from_unix_millis(letter.dead_at_ms)),
        source: DeadLetterSource {
            topic: letter.source_topic.clone(),
            partition: letter.source_partition,
            offset: letter.source_offset,
        },
        endpoint_id: None,
        application_id: None,
        event_id: None,
        event_type: None,
        payload: None,
        attempts: None,
        deferrals: None,
        last_status_code: None,
        last_error: None,
        raw_record_base64: None,
    };
    match &letter.delivery {
        Some(delivery) => {
            let attempts: Vec<DeadAttempt> = delivery
                .history
                .iter()
                .enumerate()
                .map(|(n, a)| DeadAttempt {
                    attempt: n + 1,
                    started_at: format_timestamp(from_unix_millis(a.started_at_ms)),
                    status_code: (a.status_code != 0).then_some(a.status_code),
                    error: (!a.error.is_empty()).then(|| a.error.clone()),
                    duration_ms: a.duration_ms,
                })
                .collect();
            let last = attempts.last();
            out.last_status_code = Some(last.and_then(|a| a.status_code));
            out.last_error = Some(last.and_then(|a| a.error.clone()));
            out.endpoint_id = Some(delivery.endpoint_id.clone());
            out.application_id = Some(delivery.application_id.clone());
            out.event_id = Some(delivery.event_id.clone());
            out.event_type = Some(delivery.event_type.clone());
            out.payload =
                Some(serde_json::from_slice(&delivery.payload_json).unwrap_or(Value::Null));
            out.attempts = Some(attempts);
            out.deferrals = Some(delivery.deferrals);
        }
        None => {
            out.raw_record_base64 =
                Some(base64::engine::general_purpose::STANDARD.encode(&letter.raw_record));
        }
    }
    out
}

/// Query of `GET /v1/dlq`: either, both (an endpoint of that application)
/// or neither.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this endpoint's dead letters.
    #[serde(default)]
    endpoint_id: Option<String>,
    /// Only this application's dead letters.
    #[serde(default)]
    application: Option<String>,
    /// Only the dead letters that died of this reason
    /// (`attempts_exhausted`, `endpoint_unavailable`, …). Each page is
    /// looked for among the next 1,000 letters of the list, so a page may
    /// hold fewer than `limit` and still have a `next_cursor`.
    #[serde(default)]
    reason: Option<String>,
}

/// Most letters one page of a reason-filtered list looks through.
const REASON_SCAN: usize = 1_000;

/// Lists dead letters, newest first: all, one application's or one
/// endpoint's. An application token sees its own application's only.
/// Naming both an application and an endpoint that is not one of its
/// answers 404.
#[utoipa::path(
    get,
    path = "/v1/dlq",
    operation_id = "list_dead_letters",
    tag = "dead letters",
    params(ListParams, PageParams),
    responses(
        (status = 200, description = "A page, newest first", body = Listed<DeadLetterView>),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 404, description = "`application_not_found`; `not_found`: the endpoint is not one of the application's, or (for an application token) another application", body = ErrorBody),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Query(mut params): Query<ListParams>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Listed<DeadLetterView>>, ApiError> {
    let page = paging.page()?;
    // A portal token lists its own application's letters only.
    if let Some(only) = caller.only_application() {
        match &params.application {
            Some(app) if app != only => return Err(crate::applications::not_found(app)),
            _ => params.application = Some(only.to_owned()),
        }
    }
    let filter = match (&params.application, &params.endpoint_id) {
        (None, None) => Filter::All,
        (None, Some(endpoint)) => Filter::Endpoint(endpoint),
        (Some(app), None) => Filter::Application(app),
        // An endpoint of another application is, here, no endpoint.
        (Some(app), Some(endpoint)) => {
            crate::endpoints::find(&state, app, endpoint).await?;
            Filter::Endpoint(endpoint)
        }
    };
    let Some(reason) = params.reason.as_deref() else {
        let mut letters = state.dlq.list(filter, page.start, page.fetch()).await?;
        return Ok(Json(page.answer(&mut letters, view)));
    };
    // Walk the list from the cursor, keeping the letters of that reason,
    // until the page is full, the list ends, or the scan's bound is reached;
    // the cursor stays a position in the unfiltered list.
    let mut data = Vec::new();
    let mut position = page.start;
    let mut at_end = false;
    while data.len() < page.limit && position - page.start < REASON_SCAN {
        let chunk = (REASON_SCAN - (position - page.start)).min(250);
        let chunk_start = position;
        let ids = state.dlq.ids_at(filter, position, chunk).await?;
        if ids.is_empty() {
            at_end = true;
            break;
        }
        let letters = state.dlq.get_many(&ids).await?;
        let mut letters = letters.iter().peekable();
        for id in &ids {
            position += 1;
            // `get_many` keeps the order and drops letters that expired.
            if let Some(letter) = letters.next_if(|l| &l.id == id)
                && letter.reason == reason
            {
                data.push(view(letter));
                if data.len() == page.limit {
                    break;
                }
            }
        }
        if ids.len() < chunk {
            // The list ended in this chunk; at its end only if every id of
            // it was looked at.
            at_end = position == chunk_start + ids.len();
            break;
        }
    }
    let next_cursor = (!at_end).then(|| position.to_string());
    Ok(Json(Listed { data, next_cursor }))
}

/// Body of `POST /v1/dlq/replay`: exactly one of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct ReplayRequest {
    /// Every dead letter of this endpoint.
    #[serde(default)]
    #[schema(nullable = false)]
    endpoint_id: Option<String>,
    /// Every dead letter of this application.
    #[serde(default)]
    #[schema(nullable = false)]
    application: Option<String>,
    /// These dead letters (1 to 10,000 ids).
    #[serde(default)]
    #[schema(nullable = false, min_items = 1, max_items = 10000)]
    ids: Option<Vec<String>>,
}

/// Every dead letter asked for was sent back.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The ids sent back to `herald.deliveries`.
    replayed: Vec<String>,
}

/// Some dead letters could not be sent back; the others were.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayPartlyFailed {
    /// `replay_failed`, with how many failed and the first reason.
    error: ErrorDetail,
    /// The ids sent back.
    replayed: Vec<String>,
    /// The others, each with why.
    failed: Vec<ReplayFailure>,
}

/// A dead letter that could not be sent back.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayFailure {
    /// Its id.
    id: String,
    /// `not_found`, `not_replayable`, `endpoint_deleted`, `kafka_unavailable`, …
    code: String,
    /// Why.
    message: String,
}

/// Sends dead letters back to `herald.deliveries` for a fresh set of
/// attempts, with the same event id (so the same `webhook-id`).
#[utoipa::path(
    post,
    path = "/v1/dlq/replay",
    operation_id = "replay_dead_letters",
    tag = "dead letters",
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "Every one was sent back", body = Replayed),
        (status = 400, description = "`malformed_json`, `nesting_too_deep`, `unreadable_body`, `invalid_field`, `invalid_request`", body = ErrorBody),
        (status = 404, description = "`application_not_found`, `endpoint_not_found`, `not_found`", body = ErrorBody),
        (status = 409, description = "`replay_failed`: some could not be", body = ReplayPartlyFailed),
    ),
    security(("api_key" = []), ("application_token" = []))
)]
pub async fn replay(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ReplayRequest = read_json(&headers, body, state.max_body_bytes).await?;
    // A portal token replays its own application's letters only.
    if let Some(only) = caller.only_application() {
        if let Some(app) = &request.application
            && app != only
        {
            return Err(crate::applications::not_found(app));
        }
        if let Some(endpoint) = &request.endpoint_id {
            crate::endpoints::find(&state, only, endpoint).await?;
        }
    }
    let ids = match (request.endpoint_id, request.application, request.ids) {
        (None, Some(app), None) => {
            crate::applications::find(&state, &app).await?;
            state.dlq.ids(Filter::Application(&app), MAX_REPLAY).await?
        }
        (Some(endpoint_id), None, None) => {
            if state.endpoints.get(&endpoint_id).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "endpoint_not_found",
                    format!(
                        "endpoint {endpoint_id:?} does not exist (it may have been deleted); its dead letters cannot be replayed"
                    ),
                ));
            }
            state
                .dlq
                .ids(Filter::Endpoint(&endpoint_id), MAX_REPLAY)
                .await?
        }
        (None, None, Some(ids)) if !ids.is_empty() && ids.len() <= MAX_REPLAY => ids,
        (None, None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("field `ids` must list 1 to {MAX_REPLAY} dead-letter ids"),
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "send exactly one of `application`, `endpoint_id` and `ids`",
            ));
        }
    };

    let mut letters = state.dlq.get_many(&ids).await?;
    if let Some(only) = caller.only_application() {
        // Another application's letters are, to this token, letters that
        // do not exist.
        letters.retain(|l| {
            l.delivery
                .as_ref()
                .is_some_and(|d| d.application_id == only)
        });
    }
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for id in ids
        .iter()
        .filter(|id| !letters.iter().any(|l| &l.id == *id))
    {
        failed.push(ReplayFailure {
            id: id.clone(),
            code: "not_found".to_owned(),
            message: format!("no dead letter with id {id:?}"),
        });
    }
    for letter in &letters {
        match replay_one(&state, letter).await {
            Ok(()) => replayed.push(letter.id.clone()),
            Err((code, message)) => failed.push(ReplayFailure {
                id: letter.id.clone(),
                code: code.to_owned(),
                message,
            }),
        }
    }
    if failed.is_empty() {
        return Ok(Json(Replayed { replayed }).into_response());
    }
    let message = format!(
        "{} of {} dead letters could not be replayed; first: {}",
        failed.len(),
        failed.len() + replayed.len(),
        failed[0].message
    );
    let body = ReplayPartlyFailed {
        error: ErrorDetail {
            code: "replay_failed".to_owned(),
            message,
        },
        replayed,
        failed,
    };
    Ok((StatusCode::CONFLICT, Json(body)).into_response())
}

/// Sends one dead letter back to `herald.deliveries`.
async fn replay_one(state: &AppState, letter: &DeadLetter) -> Result<(), (&'static str, String)> {
    let Some(dead) = &letter.delivery else {
        return Err((
            "not_replayable",
            format!(
                "dead letter {} is a record that could not be read ({}); there is nothing to deliver",
                letter.id, letter.detail
            ),
        ));
    };
    match state.endpoints.get(&dead.endpoint_id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err((
                "endpoint_not_found",
                format!(
                    "endpoint {} of dead letter {} was deleted; it cannot be replayed",
                    dead.endpoint_id, letter.id
                ),
            ));
        }
        Err(err) => {
            return Err((
                "redis_unavailable",
                format!("Redis is not available: {err}"),
            ));
        }
    }
    // A fresh set of attempts for the same event: same event id, so the
    // endpoint sees the same webhook-id.
    let fresh = Delivery {
        delivery_id: dead.delivery_id.clone(),
        endpoint_id: dead.endpoint_id.clone(),
        event_id: dead.event_id.clone(),
        event_type: dead.event_type.clone(),
        payload_json: dead.payload_json.clone(),
        event_timestamp_ms: dead.event_timestamp_ms,
        application_id: dead.application_id.clone(),
        // A fresh start: the age limit counts from the replay.
        created_at_ms: herald_core::event::unix_millis(time::OffsetDateTime::now_utc()),
        ..Default::default()
    };
    let value = fresh.encode_to_vec();
    // Bounded: an API call must answer.
    let shutdown = CancellationToken::new();
    let give_up = shutdown.clone();
    let produce_timeout = state.produce_timeout;
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(produce_timeout).await;
        give_up.cancel();
    });
    let produced = produce_until_acked(
        &state.producer,
        OutgoingRecord {
            topic: &state.deliveries_topic,
            key: &fresh.endpoint_id,
            value: &value,
            headers: &[],
        },
        produce_timeout,
        &shutdown,
    )
    .await;
    watchdog.abort();
    if produced.is_err() {
        return Err((
            "kafka_unavailable",
            "Kafka did not acknowledge the replay; retry later".to_owned(),
        ));
    }
    if let Err(err) = state.dlq.remove(letter).await {
        // Delivered again, but still listed: a second replay would deliver
        // once more, with the same webhook-id.
        tracing::warn!(dead_letter = %letter.id, error = %err, "replayed, but not removed from the index");
    }
    tracing::info!(dead_letter = %letter.id, endpoint_id = %fresh.endpoint_id, event_id = %fresh.event_id, "dead letter replayed");
    Ok(())
}
