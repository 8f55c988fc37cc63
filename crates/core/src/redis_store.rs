//! Redis connections, and the name of every key Herald keeps there
//! ([`Keys`], the one place they are built).

use redis::AsyncCommands;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::RedisConfig;

/// A Redis operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value could not be decoded or encoded.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value decoded but is not usable.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// A change kept losing the race against other writers of the same
    /// value and gave up.
    #[error("{0} kept changing under this write; try again")]
    Contended(String),
}

/// Opens a Redis connection that reconnects by itself. It connects lazily, so
/// a service can start while Redis is still coming up; every command is
/// bounded by the configured timeout, so an outage shows up as errors rather
/// than hangs.
pub fn connect(config: &RedisConfig) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(config.url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

/// Keys read by one MGET.
const MGET_CHUNK: usize = 500;

/// The JSON value at `key`, if there is one.
pub async fn get_json<T: DeserializeOwned>(
    redis: &ConnectionManager,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let mut conn = redis.clone();
    let json: Option<String> = conn.get(key).await?;
    json.map(|j| serde_json::from_str(&j).map_err(StoreError::from))
        .transpose()
}

/// The JSON values at `keys` that exist, in order (one MGET per
/// [`MGET_CHUNK`] keys).
pub async fn mget_json<T: DeserializeOwned>(
    redis: &ConnectionManager,
    keys: &[String],
) -> Result<Vec<T>, StoreError> {
    let mut values = Vec::with_capacity(keys.len());
    let mut conn = redis.clone();
    for chunk in keys.chunks(MGET_CHUNK) {
        let found: Vec<Option<String>> =
            redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
        for json in found.into_iter().flatten() {
            values.push(serde_json::from_str(&json)?);
        }
    }
    Ok(values)
}

/// The change counters at `keys`, in order: 0 for one never bumped (one
/// MGET per [`MGET_CHUNK`] keys).
pub async fn mget_counters(
    redis: &ConnectionManager,
    keys: &[String],
) -> Result<Vec<i64>, StoreError> {
    let mut counters = Vec::with_capacity(keys.len());
    let mut conn = redis.clone();
    for chunk in keys.chunks(MGET_CHUNK) {
        let found: Vec<Option<i64>> = redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
        counters.extend(found.into_iter().map(|v| v.unwrap_or(0)));
    }
    Ok(counters)
}

/// How often [`modify_json`] starts again after losing a race before it
/// gives up.
const MODIFY_TRIES: usize = 32;

/// Replaces KEYS[1] with ARGV[2] only while it still holds ARGV[1], and
/// bumps every change counter in KEYS[2..]: 1 written, 0 changed meanwhile,
/// -1 gone.
const COMPARE_AND_SET: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 2, #KEYS do redis.call('INCR', KEYS[i]) end
return 1
"#;

/// Changes the JSON value at `key` atomically: reads it, applies `change`,
/// and writes it back (bumping `counters`) only if nobody wrote it in
/// between — the stored JSON is compared in a Lua script. Otherwise it reads
/// it again and applies `change` to what is there now, so concurrent changes
/// never undo one another. Returns the value as written, or `None` when it
/// does not exist (any more).
pub async fn modify_json<T: Serialize + DeserializeOwned>(
    redis: &ConnectionManager,
    key: &str,
    counters: &[String],
    mut change: impl FnMut(&mut T),
) -> Result<Option<T>, StoreError> {
    let mut conn = redis.clone();
    let compare_and_set = Script::new(COMPARE_AND_SET);
    for _ in 0..MODIFY_TRIES {
        let Some(before) = conn.get::<_, Option<String>>(key).await? else {
            return Ok(None);
        };
        let mut value: T = serde_json::from_str(&before)?;
        change(&mut value);
        let after = serde_json::to_string(&value)?;
        let mut invocation = compare_and_set.key(key);
        for counter in counters {
            invocation.key(counter);
        }
        let written: i64 = invocation
            .arg(&before)
            .arg(&after)
            .invoke_async(&mut conn)
            .await?;
        match written {
            1 => return Ok(Some(value)),
            -1 => return Ok(None),
            // Someone else wrote it first: start again from theirs.
            _ => continue,
        }
    }
    Err(StoreError::Contended(key.to_owned()))
}

/// Every key Herald keeps in Redis, under one prefix (`HERALD_REDIS_PREFIX`,
/// `herald:` by default). Key names are built here and nowhere else; what
/// each value holds is documented by the module that owns it.
///
/// | key | type | written by | owner |
/// | --- | --- | --- | --- |
/// | `app:{id}` | string: the application's JSON | ingest (API) | [`crate::application`] |
/// | `apps` | sorted set of application ids by creation | ingest | [`crate::application`] |
/// | `app:{id}:endpoints` | sorted set of its endpoint ids by creation | ingest | [`crate::application`] |
/// | `app:{id}:version` | counter, bumped by every change to it or its endpoints | ingest, dispatcher | [`crate::application`] |
/// | `app:{id}:tokens` | set of its tokens' ids | ingest | [`crate::application`] |
/// | `apptoken:{token id}` | string, expiring: a token's record (its digest, never the token) | ingest | [`crate::application`] |
/// | `endpoint:{id}` | string: the endpoint's JSON | ingest (API), dispatcher (410 disables) | [`crate::endpoint`] |
/// | `endpoints` | sorted set of endpoint ids | ingest | [`crate::endpoint`] |
/// | `endpoint:{id}:version` | counter, bumped by every change to that endpoint | ingest, dispatcher | [`crate::endpoint`] |
/// | `idempotency:{application id}.{event id}` | string, expiring: `pending` or `done` | ingest | `herald-ingest` |
/// | `idempotencykey:{application id}.{key}` | string, expiring: the event id an `Idempotency-Key` was first sent with | ingest | `herald-ingest` |
/// | `ingestlimit:{key digest}` | string: next allowed moment of an API key | ingest | [`crate::rate_limit`] |
/// | `applimit:{application id}` | string: next allowed moment of an application's events | ingest | `herald-ingest` |
/// | `ratelimit:{endpoint id}` | string: the endpoint's next free moment | dispatcher | [`crate::rate_limit`] |
/// | `ratesent:{endpoint id}` | string: the earliest moment the endpoint's next request may be sent | dispatcher | [`crate::rate_limit`] |
/// | `breaker:{endpoint id}` | hash: breaker state | dispatcher | [`crate::circuit`] |
/// | `breaker:{endpoint id}:window` | hash: per-bucket counts | dispatcher | [`crate::circuit`] |
/// | `breakers:not_closed` | sorted set of endpoint ids whose breaker is open or half-open, by when it last opened | dispatcher | [`crate::circuit`] |
/// | `breakers:not_closed:version` | counter, bumped by every change to that set | dispatcher | [`crate::circuit`] |
/// | `attempts:endpoint:{endpoint id}` | sorted set of the batches holding the endpoint's attempts, by their latest start | dispatcher | [`crate::attempt_log`] |
/// | `attempts:batch:{batch id}` | hash, expiring: one write's attempts, a field per event (its records) and per endpoint (`ep {endpoint id}`: its attempts) | dispatcher | [`crate::attempt_log`] |
/// | `attempts:batches` | sorted set of batch ids by when they were written | dispatcher | [`crate::attempt_log`] |
/// | `attempts:by_event` | sorted set of `{application id}.{event id} {written ms} {batch id}`, read by lexicographic range | dispatcher | [`crate::attempt_log`] |
/// | `attempts:batched` | counter: the attempts the batches hold | dispatcher | [`crate::attempt_log`] |
/// | `attempts:by_event:sweep` | string: where the trim's sweep of the by-event index goes on from | dispatcher | [`crate::attempt_log`] |
/// | `attempts:event:{application id}.{event id}`, `attempts:events`, `attempts:retained` | the layout before batches (logs, index, count), still read and trimmed | dispatcher | [`crate::attempt_log`] |
/// | `dlq:letter:{id}` | string, expiring: the `herald.v1.DeadLetter` | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `dlq:all` | sorted set of dead-letter ids by time of death | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `dlq:endpoint:{endpoint id}` | the same, per endpoint | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `dlq:application:{application id}` | the same, per application | ingest (indexer) | [`crate::dead_letter_index`] |
/// | `stats:{unix minute}` | hash, expiring: the installation's counts of that minute | every service | [`crate::stats`] |
/// | `stats:endpoint:{endpoint id}:{unix minute}` | hash, expiring: an endpoint's attempts of that minute | dispatcher | [`crate::stats`] |
/// | `console:session:{digest}` | string, expiring: a console or portal session | ingest | `herald-ingest` |
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (for example `herald:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The installation's counters of one Unix minute.
    pub fn minute_stats(&self, minute: i64) -> String {
        format!("{}stats:{minute}", self.prefix)
    }

    /// One endpoint's counters of one Unix minute.
    pub fn endpoint_minute_stats(&self, endpoint_id: &str, minute: i64) -> String {
        format!("{}stats:endpoint:{endpoint_id}:{minute}", self.prefix)
    }

    /// A console or portal session, by the digest of its cookie.
    pub fn console_session(&self, digest: &str) -> String {
        format!("{}console:session:{digest}", self.prefix)
    }

    /// One application's JSON.
    pub fn application(&self, id: &str) -> String {
        format!("{}app:{id}", self.prefix)
    }

    /// Sorted set of all application ids.
    pub fn application_index(&self) -> String {
        format!("{}apps", self.prefix)
    }

    /// Sorted set of one application's endpoint ids.
    pub fn application_endpoints(&self, id: &str) -> String {
        format!("{}app:{id}:endpoints", self.prefix)
    }

    /// Counter bumped by every change to an application or its endpoints.
    pub fn application_version(&self, id: &str) -> String {
        format!("{}app:{id}:version", self.prefix)
    }

    /// Set of the ids of an application's tokens.
    pub fn application_tokens(&self, id: &str) -> String {
        format!("{}app:{id}:tokens", self.prefix)
    }

    /// One application token's record.
    pub fn application_token(&self, token_id: &str) -> String {
        format!("{}apptoken:{token_id}", self.prefix)
    }

    /// The start of every application token's key (scripts append ids).
    pub fn application_token_prefix(&self) -> String {
        format!("{}apptoken:", self.prefix)
    }

    /// One endpoint's JSON.
    pub fn endpoint(&self, id: &str) -> String {
        format!("{}endpoint:{id}", self.prefix)
    }

    /// Counter bumped by every change to one endpoint.
    pub fn endpoint_version(&self, id: &str) -> String {
        format!("{}endpoint:{id}:version", self.prefix)
    }

    /// The start of every endpoint's key (scripts append ids to it).
    pub fn endpoint_prefix(&self) -> String {
        format!("{}endpoint:", self.prefix)
    }

    /// Sorted set of all endpoint ids.
    pub fn endpoint_index(&self) -> String {
        format!("{}endpoints", self.prefix)
    }

    /// Idempotency record of one event id of one application ('.' is in
    /// neither, so the pair is unambiguous).
    pub fn idempotency(&self, application_id: &str, event_id: &str) -> String {
        format!("{}idempotency:{application_id}.{event_id}", self.prefix)
    }

    /// The event id an `Idempotency-Key` header of one application was
    /// first sent with (the key follows the rules of event ids, so '.' is
    /// in neither part).
    pub fn idempotency_key(&self, application_id: &str, key: &str) -> String {
        format!("{}idempotencykey:{application_id}.{key}", self.prefix)
    }

    /// Next allowed moment of an API key (by its digest, never the key).
    pub fn ingest_limit(&self, key_id: &str) -> String {
        format!("{}ingestlimit:{key_id}", self.prefix)
    }

    /// Next allowed moment of a rate-limited application's events.
    pub fn application_rate_limit(&self, application_id: &str) -> String {
        format!("{}applimit:{application_id}", self.prefix)
    }

    /// Next free moment of a rate-limited endpoint.
    pub fn rate_limit(&self, endpoint_id: &str) -> String {
        format!("{}ratelimit:{endpoint_id}", self.prefix)
    }

    /// Earliest moment a rate-limited endpoint's next request may be sent.
    pub fn rate_sent(&self, endpoint_id: &str) -> String {
        format!("{}ratesent:{endpoint_id}", self.prefix)
    }

    /// An endpoint's circuit-breaker state.
    pub fn breaker(&self, endpoint_id: &str) -> String {
        format!("{}breaker:{endpoint_id}", self.prefix)
    }

    /// An endpoint's circuit-breaker counts of recent attempts.
    pub fn breaker_window(&self, endpoint_id: &str) -> String {
        format!("{}breaker:{endpoint_id}:window", self.prefix)
    }

    /// The endpoints whose breaker is not closed.
    pub fn breakers_not_closed(&self) -> String {
        format!("{}breakers:not_closed", self.prefix)
    }

    /// Change counter of [`Keys::breakers_not_closed`].
    pub fn breakers_not_closed_version(&self) -> String {
        format!("{}breakers:not_closed:version", self.prefix)
    }

    /// An endpoint's attempt log.
    pub fn endpoint_attempts(&self, endpoint_id: &str) -> String {
        format!("{}attempts:endpoint:{endpoint_id}", self.prefix)
    }

    /// The start of every batch of attempts' key (the trim script appends
    /// batch ids to it).
    pub fn attempt_batch_prefix(&self) -> String {
        format!("{}attempts:batch:", self.prefix)
    }

    /// One batch of attempts, as one dispatcher wrote them together.
    pub fn attempt_batch(&self, batch_id: &str) -> String {
        format!("{}attempts:batch:{batch_id}", self.prefix)
    }

    /// The batches of attempts, by the time they were written.
    pub fn attempt_batches(&self) -> String {
        format!("{}attempts:batches", self.prefix)
    }

    /// Which batches hold each event's attempts (`{event} {written ms}
    /// {batch id}`).
    pub fn attempts_by_event(&self) -> String {
        format!("{}attempts:by_event", self.prefix)
    }

    /// The last member of [`Keys::attempts_by_event`] the trim's sweep
    /// looked at.
    pub fn attempts_by_event_sweep(&self) -> String {
        format!("{}attempts:by_event:sweep", self.prefix)
    }

    /// The start of every event's attempt log key, in the layout before
    /// batches (the trim script appends event ids to it).
    pub fn event_attempts_prefix(&self) -> String {
        format!("{}attempts:event:", self.prefix)
    }

    /// One event's attempt log, in the layout before batches.
    pub fn event_attempts(&self, event_id: &str) -> String {
        format!("{}attempts:event:{event_id}", self.prefix)
    }

    /// How many attempts the event logs of the layout before batches hold
    /// together (dispatchers of that layout keep it too, and reset it).
    pub fn retained_attempts(&self) -> String {
        format!("{}attempts:retained", self.prefix)
    }

    /// How many attempts the batches hold together.
    pub fn batched_attempts(&self) -> String {
        format!("{}attempts:batched", self.prefix)
    }

    /// The events that have an attempt log of their own (the layout before
    /// batches), by latest attempt.
    pub fn attempted_events(&self) -> String {
        format!("{}attempts:events", self.prefix)
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: &str) -> String {
        format!("{}dlq:letter:{id}", self.prefix)
    }

    /// Every dead letter's id by time of death (`None`), or one endpoint's.
    pub fn dead_letters(&self, endpoint_id: Option<&str>) -> String {
        match endpoint_id {
            None => format!("{}dlq:all", self.prefix),
            Some(id) => format!("{}dlq:endpoint:{id}", self.prefix),
        }
    }

    /// One application's dead letters' ids by time of death.
    pub fn application_dead_letters(&self, application_id: &str) -> String {
        format!("{}dlq:application:{application_id}", self.prefix)
    }
}
