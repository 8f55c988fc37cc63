//! Dead letters: the consumer that copies `herald.dlq` into the index
//! ([`herald_core::dead_letter_index`]), and the API over it.
//!
//! `GET /v1/dlq` lists them; `POST /v1/dlq/replay` sends them back to
//! `herald.deliveries` for a fresh set of attempts, with the same event id
//! (so the same `webhook-id`), and removes them from the index.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
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
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::body::read_json;
use crate::error::ApiError;
use crate::paging::PageParams;
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

fn view(letter: &DeadLetter) -> Value {
    let mut out = json!({
        "id": letter.id,
        "reason": letter.reason,
        "detail": letter.detail,
        "dead_at": format_timestamp(from_unix_millis(letter.dead_at_ms)),
        "source": {
            "topic": letter.source_topic,
            "partition": letter.source_partition,
            "offset": letter.source_offset,
        },
    });
    match &letter.delivery {
        Some(delivery) => {
            let payload: Value =
                serde_json::from_slice(&delivery.payload_json).unwrap_or(Value::Null);
            let attempts: Vec<Value> = delivery
                .history
                .iter()
                .enumerate()
                .map(|(n, a)| {
                    json!({
                        "attempt": n + 1,
                        "started_at": format_timestamp(from_unix_millis(a.started_at_ms)),
                        "status_code": (a.status_code != 0).then_some(a.status_code),
                        "error": (!a.error.is_empty()).then_some(&a.error),
                        "duration_ms": a.duration_ms,
                    })
                })
                .collect();
            let last = delivery.history.last();
            out["endpoint_id"] = json!(delivery.endpoint_id);
            out["application_id"] = json!(delivery.application_id);
            out["event_id"] = json!(delivery.event_id);
            out["event_type"] = json!(delivery.event_type);
            out["payload"] = payload;
            out["attempts"] = Value::Array(attempts);
            out["deferrals"] = json!(delivery.deferrals);
            out["last_status_code"] =
                json!(last.and_then(|a| (a.status_code != 0).then_some(a.status_code)));
            out["last_error"] = json!(last.and_then(|a| (!a.error.is_empty()).then_some(&a.error)));
        }
        None => {
            out["raw_record_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&letter.raw_record));
        }
    }
    out
}

/// Query of `GET /v1/dlq`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    endpoint_id: Option<String>,
    #[serde(default)]
    application: Option<String>,
}

/// `GET /v1/dlq?application=…|endpoint_id=…&limit=50&cursor=…`: newest
/// first.
pub async fn list(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Query(mut params): Query<ListParams>,
    Query(paging): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = paging.page()?;
    // A portal token lists its own application's letters only.
    if let Some(only) = caller.only_application() {
        match (&params.application, &params.endpoint_id) {
            (Some(app), _) if app != only => return Err(crate::applications::not_found(app)),
            (None, Some(endpoint)) => {
                crate::endpoints::find(&state, only, endpoint).await?;
            }
            (None, None) => params.application = Some(only.to_owned()),
            _ => {}
        }
    }
    let filter = match (&params.application, &params.endpoint_id) {
        (None, None) => Filter::All,
        (None, Some(endpoint)) => Filter::Endpoint(endpoint),
        (Some(app), None) => Filter::Application(app),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "filter by `application` or by `endpoint_id`, not both",
            ));
        }
    };
    let mut letters = state.dlq.list(filter, page.start, page.fetch()).await?;
    let next_cursor = page.finish(&mut letters);
    Ok(Json(json!({
        "data": letters.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// Body of `POST /v1/dlq/replay`: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    endpoint_id: Option<String>,
    #[serde(default)]
    application: Option<String>,
    #[serde(default)]
    ids: Option<Vec<String>>,
}

/// `POST /v1/dlq/replay`: 200 `{"replayed": [...]}` when every dead letter
/// was sent back; 409 with the reasons when some could not be.
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
        failed.push(json!({"id": id, "code": "not_found", "message": format!("no dead letter with id {id:?}")}));
    }
    for letter in &letters {
        match replay_one(&state, letter).await {
            Ok(()) => replayed.push(letter.id.clone()),
            Err((code, message)) => {
                failed.push(json!({"id": letter.id, "code": code, "message": message}))
            }
        }
    }
    if failed.is_empty() {
        return Ok(Json(json!({ "replayed": replayed })).into_response());
    }
    let first = failed[0]["message"].as_str().unwrap_or_default().to_owned();
    let body = json!({
        "error": {
            "code": "replay_failed",
            "message": format!("{} of {} dead letters could not be replayed; first: {first}", failed.len(), failed.len() + replayed.len()),
        },
        "replayed": replayed,
        "failed": failed,
    });
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
