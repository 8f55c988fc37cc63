//! Delivering one delivery record, in named steps: decode and prepare the
//! webhook, find the endpoint, make the signed HTTP call, and handle the
//! result (success: done; failure: pause and retry, then give up).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::attempt_log::{self, AttemptLog, AttemptRecord};
use herald_core::backoff::Backoff;
use herald_core::circuit::{Breakers, Permission, Transition};
use herald_core::config::{KafkaConfig, format_duration};
use herald_core::dead_letter::{self, DeadLetterWriter, reason};
use herald_core::endpoint::{EndpointCache, ResolvedEndpoint, redacted_url};
use herald_core::event::{format_timestamp, from_unix_millis, unix_millis};
use herald_core::kafka::Producer;
use herald_core::kafka::consumer::RecordHandler;
use herald_core::kafka::offsets::Outcome;
use herald_core::kafka::{OutgoingRecord, Stopping, produce_until_acked};
use herald_core::metrics::{BreakerState, label, metrics, status_class};
use herald_core::proto::{Attempt, Delivery};
use herald_core::rate_limit::RateLimiter;
use herald_core::redis_store::StoreError;
use herald_core::retry::{
    FailureHints, NOT_BEFORE_HEADER, RetrySchedule, next_wait, parse_retry_after, tier_topic,
};
use herald_core::signing;
use herald_core::trace_context;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers, OwnedMessage};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::outbound::{Outbound, refusal_of};
use crate::{Config, DispatcherError};

/// Most response-body bytes read from an endpoint (the rest is discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The webhook body: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct WebhookBody<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

/// A webhook ready to send: the decoded delivery and its exact body bytes
/// (the bytes that are signed).
#[derive(Debug)]
pub struct PreparedWebhook {
    /// The delivery record.
    pub delivery: Delivery,
    /// The JSON body.
    pub body: Bytes,
}

/// Decodes a delivery record and renders its webhook body. An error means
/// the record can never be delivered (it is malformed).
pub fn prepare(record_value: &[u8]) -> Result<PreparedWebhook, String> {
    let delivery =
        Delivery::decode(record_value).map_err(|err| format!("not a herald.v1.Delivery: {err}"))?;
    if delivery.endpoint_id.is_empty() || delivery.event_id.is_empty() {
        return Err("the delivery has no endpoint id or no event id".to_owned());
    }
    let payload = std::str::from_utf8(&delivery.payload_json)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .ok_or("the delivery's payload is not valid JSON")?;
    let body = serde_json::to_vec(&WebhookBody {
        event_type: &delivery.event_type,
        timestamp: format_timestamp(from_unix_millis(delivery.event_timestamp_ms)),
        data: payload,
    })
    .map_err(|err| format!("the webhook body cannot be rendered: {err}"))?;
    Ok(PreparedWebhook {
        delivery,
        body: Bytes::from(body),
    })
}

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Anything else.
    Failed {
        /// The status code, when a response arrived.
        status: Option<u16>,
        /// What went wrong, for logs and records.
        error: String,
        /// When the endpoint wants the next attempt.
        hints: FailureHints,
    },
}

/// Delivers delivery records; one instance serves every in-flight record.
pub struct Dispatcher {
    cache: EndpointCache,
    breakers: Breakers,
    limiter: RateLimiter,
    attempt_log: AttemptLog,
    slots: EndpointSlots,
    /// Webhook requests in flight in this replica, across both consumers
    /// (`HERALD_DISPATCHER_MAX_IN_FLIGHT`).
    requests: Arc<Semaphore>,
    redis_degraded: AtomicBool,
    outbound: Outbound,
    schedule: RetrySchedule,
    deferrals: DeferralPolicy,
    kafka: KafkaConfig,
    producer: Producer,
    dead_letters: DeadLetterWriter,
    /// Fires when in-flight work must be given up: the drain after a stop
    /// request ran out of time. (A stop request alone lets deliveries finish.)
    abandon: CancellationToken,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// Why an endpoint cannot be used for a delivery.
enum Unavailable {
    /// The process is stopping.
    Stopping,
    /// The stored endpoint cannot be used.
    Unusable(String),
}

impl Dispatcher {
    /// Builds the HTTP client ([`Outbound`]) and the Kafka producer for
    /// retries and dead letters.
    pub fn new(
        config: &Config,
        cache: EndpointCache,
        breakers: Breakers,
        limiter: RateLimiter,
        attempt_log: AttemptLog,
        abandon: CancellationToken,
    ) -> Result<Self, DispatcherError> {
        let outbound = Outbound::new(config)?;
        let producer = herald_core::kafka::producer(&config.kafka, "herald-dispatcher")?;
        let dead_letters = DeadLetterWriter::new(
            producer.clone(),
            config.kafka.topic(herald_core::topics::DLQ),
            config.kafka.produce_timeout,
        );
        Ok(Self {
            cache,
            breakers,
            limiter,
            attempt_log,
            slots: EndpointSlots::new(config.endpoint_max_in_flight),
            requests: Arc::new(Semaphore::new(config.max_in_flight)),
            redis_degraded: AtomicBool::new(false),
            outbound,
            schedule: config.retry_schedule.clone(),
            deferrals: DeferralPolicy {
                first: config.breaker.cooldown,
                longest: config.breaker.max_cooldown,
                max_age: config.max_delivery_age,
            },
            kafka: config.kafka.clone(),
            producer,
            dead_letters,
            abandon,
        })
    }

    /// Finds the endpoint, waiting out Redis errors. `Ok(None)` means it
    /// does not exist.
    async fn endpoint(&self, id: &str) -> Result<Option<Arc<ResolvedEndpoint>>, Unavailable> {
        let mut backoff = Backoff::new(Duration::from_millis(200));
        loop {
            match self.cache.lookup(id).await {
                Ok(found) => return Ok(found),
                Err(StoreError::Corrupt(problem)) => return Err(Unavailable::Unusable(problem)),
                Err(err) => {
                    tracing::warn!(endpoint_id = id, error = %err, "cannot look up endpoint; retrying")
                }
            }
            if backoff.pause(&self.abandon).await.is_err() {
                return Err(Unavailable::Stopping);
            }
        }
    }

    /// Delivers one webhook: find the endpoint, attempt, then handle the
    /// result.
    #[tracing::instrument(skip_all, fields(
        event_id = %webhook.delivery.event_id,
        endpoint_id = %webhook.delivery.endpoint_id,
        attempt = webhook.delivery.attempts_made + 1,
    ))]
    async fn deliver(&self, mut webhook: PreparedWebhook, source: &OwnedMessage) -> Outcome {
        let endpoint = match self.endpoint(&webhook.delivery.endpoint_id).await {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                let detail = format!(
                    "endpoint {} does not exist (deleted)",
                    webhook.delivery.endpoint_id
                );
                return self
                    .dead_letter(webhook.delivery, reason::ENDPOINT_DELETED, detail, source)
                    .await;
            }
            Err(Unavailable::Unusable(problem)) => {
                return self
                    .dead_letter(webhook.delivery, reason::ENDPOINT_UNUSABLE, problem, source)
                    .await;
            }
            Err(Unavailable::Stopping) => return Outcome::Abandoned,
        };
        if endpoint.endpoint.disabled {
            let detail = match &endpoint.endpoint.disabled_reason {
                Some(why) => format!("the endpoint is disabled: {why}"),
                None => "the endpoint is disabled".to_owned(),
            };
            return self
                .dead_letter(webhook.delivery, reason::ENDPOINT_DISABLED, detail, source)
                .await;
        }

        let endpoint_id = endpoint.endpoint.id.as_str();
        // First a slot of the endpoint, then one of the replica's requests:
        // a delivery waiting for a busy endpoint holds no request slot, so
        // other endpoints' deliveries go ahead of it. The breaker is asked
        // only once both are held, so that deliveries queued for a failing
        // endpoint see the breaker open instead of all having been allowed
        // while it was still closed.
        let slot = tokio::select! {
            slot = async {
                let endpoint_slot = self.slots.acquire(endpoint_id).await;
                let request_slot = self
                    .requests
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the request semaphore is never closed");
                (endpoint_slot, request_slot)
            } => slot,
            _ = self.abandon.cancelled() => return Outcome::Abandoned,
        };
        let asked_at_ms = now_ms();
        let permission = match self.breakers.acquire(endpoint_id, asked_at_ms).await {
            Ok(permission) => {
                self.redis_answers();
                permission
            }
            Err(err) => {
                self.redis_fails(&err);
                Permission::Allow
            }
        };
        if let Permission::Deny { until_ms } = permission {
            tracing::debug!(until_ms, "circuit open; delivery deferred");
            return self.defer(webhook.delivery, until_ms, source).await;
        }
        let probe = permission == Permission::Probe;
        if let Some(limit) = endpoint.endpoint.rate_limit {
            match self.wait_for_rate_limit(endpoint_id, limit).await {
                RateDecision::Go => {}
                RateDecision::Later(until_ms) => {
                    tracing::debug!(until_ms, "rate limit reached; delivery deferred");
                    if probe {
                        self.hand_back_probe(endpoint_id, asked_at_ms).await;
                    }
                    return self.defer(webhook.delivery, until_ms, source).await;
                }
                RateDecision::Stopping => {
                    if probe {
                        self.hand_back_probe(endpoint_id, asked_at_ms).await;
                    }
                    return Outcome::Abandoned;
                }
            }
        }
        if probe {
            metrics().breakers.set(endpoint_id, BreakerState::HalfOpen);
        }
        if probe {
            tracing::info!("circuit half-open; this delivery probes the endpoint");
        }

        let started_at_ms = unix_millis(OffsetDateTime::now_utc());
        let started = Instant::now();
        let (result, response_body) = self.attempt(&endpoint, &webhook).await;
        drop(slot);
        let (success, error) = match &result {
            AttemptResult::Delivered { .. } => (true, ""),
            AttemptResult::Failed { error, .. } => (false, error.as_str()),
        };
        // A refused destination was not contacted: it says nothing about
        // the endpoint's health.
        let refused =
            matches!(&result, AttemptResult::Failed { hints, .. } if hints.destination_refused);
        let duration_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        let delivery = &mut webhook.delivery;
        delivery.attempts_made += 1;
        delivery.history.push(Attempt {
            started_at_ms,
            status_code: match &result {
                AttemptResult::Delivered { status } => u32::from(*status),
                AttemptResult::Failed { status, .. } => status.map_or(0, u32::from),
            },
            error: match &result {
                AttemptResult::Delivered { .. } => String::new(),
                AttemptResult::Failed { error, .. } => error.clone(),
            },
            duration_ms,
        });
        // The breaker and the attempt log are written together: two
        // requests on one Redis connection, one round trip.
        let record_breaker = async {
            if refused {
                // No request reached the endpoint, so it says nothing of
                // its health; a probe that was refused is handed back.
                if probe {
                    self.hand_back_probe(endpoint_id, asked_at_ms).await;
                }
                Ok(Transition::None)
            } else {
                self.breakers
                    .record(endpoint_id, now_ms(), success, probe, error)
                    .await
            }
        };
        let (recorded, ()) = tokio::join!(
            record_breaker,
            self.log_attempt(delivery, &result, started_at_ms, duration_ms, response_body)
        );
        match recorded {
            Ok(transition) => {
                self.redis_answers();
                record_transition(endpoint_id, transition);
                match transition {
                    Transition::None => {}
                    Transition::Opened => {
                        tracing::warn!(%error, "circuit opened: deliveries to this endpoint are paused")
                    }
                    Transition::Reopened => {
                        tracing::warn!(%error, "probe failed: circuit open again, for longer")
                    }
                    Transition::Closed => {
                        tracing::info!("circuit closed: the endpoint answers again")
                    }
                }
            }
            Err(err) => self.redis_fails(&err),
        }
        let m = metrics();
        m.attempt_duration.observe(f64::from(duration_ms) / 1000.0);
        match &result {
            AttemptResult::Delivered { status } => {
                count_outcome("delivered", Some(*status));
                let age_ms = now_ms() - delivery.event_timestamp_ms;
                m.end_to_end_latency.observe(age_ms.max(0) as f64 / 1000.0);
            }
            AttemptResult::Failed { status, hints, .. } => {
                let retried = *status != Some(410)
                    && !hints.destination_refused
                    && self.schedule.delay_after(delivery.attempts_made).is_some();
                count_outcome(
                    if retried {
                        "retry_scheduled"
                    } else {
                        "dead_lettered"
                    },
                    *status,
                );
            }
        }
        match result {
            AttemptResult::Delivered { status } => {
                tracing::debug!(status, duration_ms, "delivered");
                Outcome::Done
            }
            AttemptResult::Failed {
                status,
                error,
                hints,
            } => {
                tracing::info!(status, %error, duration_ms, "delivery attempt failed");
                self.handle_failure(webhook.delivery, status, error, hints, source)
                    .await
            }
        }
    }

    /// After a failed attempt: disable a gone endpoint, schedule the next
    /// attempt, or give up.
    async fn handle_failure(
        &self,
        delivery: Delivery,
        status: Option<u16>,
        error: String,
        hints: FailureHints,
        source: &OwnedMessage,
    ) -> Outcome {
        if hints.destination_refused {
            return self
                .dead_letter(delivery, reason::DESTINATION_REFUSED, error, source)
                .await;
        }
        if status == Some(410) {
            let why = format!(
                "it answered 410 Gone at {}",
                format_timestamp(OffsetDateTime::now_utc())
            );
            match self
                .cache
                .store()
                .disable(&delivery.endpoint_id, &why)
                .await
            {
                Ok(_) => {
                    tracing::warn!(endpoint_id = %delivery.endpoint_id, "endpoint disabled: {why}")
                }
                Err(err) => {
                    tracing::error!(endpoint_id = %delivery.endpoint_id, error = %err, "cannot disable a gone endpoint")
                }
            }
            return self
                .dead_letter(delivery, reason::ENDPOINT_GONE, why, source)
                .await;
        }
        match self.schedule.delay_after(delivery.attempts_made) {
            None => {
                let detail = format!(
                    "{} attempts failed; the last one: {error}",
                    delivery.attempts_made
                );
                self.dead_letter(delivery, reason::ATTEMPTS_EXHAUSTED, detail, source)
                    .await
            }
            Some(scheduled) => {
                self.retry_later(delivery, next_wait(scheduled, hints))
                    .await
            }
        }
    }

    /// Hands back a probe that will not be made, so that the next delivery
    /// to the endpoint probes at once rather than after the probe lease.
    /// Without Redis the lease simply runs out.
    async fn hand_back_probe(&self, endpoint_id: &str, acquired_at_ms: i64) {
        match self
            .breakers
            .release_probe(endpoint_id, acquired_at_ms)
            .await
        {
            Ok(_) => tracing::debug!("probe handed back"),
            Err(err) => self.redis_fails(&err),
        }
    }

    /// Puts a delivery off until `until_ms` at the earliest, without
    /// spending an attempt, or dead-letters it as `endpoint_unavailable`
    /// once it has been put off for longer than the age limit.
    async fn defer(&self, mut delivery: Delivery, until_ms: i64, source: &OwnedMessage) -> Outcome {
        let now = now_ms();
        match self.deferrals.next(&delivery, until_ms, now) {
            Deferral::Wait(wait) => {
                delivery.deferrals += 1;
                count_outcome("deferred", None);
                self.retry_later(delivery, wait).await
            }
            Deferral::GiveUp { since_ms } => {
                let detail = format!(
                    "the endpoint could not be tried for {} (put off {} times after {} attempts); \
                     deliveries are given up after HERALD_MAX_DELIVERY_AGE ({})",
                    format_duration(Duration::from_millis(now.saturating_sub(since_ms) as u64)),
                    delivery.deferrals,
                    delivery.attempts_made,
                    format_duration(self.deferrals.max_age),
                );
                self.dead_letter(delivery, reason::ENDPOINT_UNAVAILABLE, detail, source)
                    .await
            }
        }
    }

    /// Waits briefly for the endpoint's rate limit, or says when to come
    /// back if the wait is long (so the delivery does not hold a slot of the
    /// in-flight window meanwhile).
    async fn wait_for_rate_limit(&self, endpoint_id: &str, per_second: u32) -> RateDecision {
        loop {
            let now = now_ms();
            let wait_ms = match self.limiter.try_acquire(endpoint_id, per_second, now).await {
                Ok(wait_ms) => {
                    self.redis_answers();
                    wait_ms
                }
                Err(err) => {
                    self.redis_fails(&err);
                    return RateDecision::Go;
                }
            };
            if wait_ms == 0 {
                return RateDecision::Go;
            }
            if wait_ms > MAX_RATE_WAIT_MS {
                return RateDecision::Later(now + wait_ms as i64);
            }
            tokio::select! {
                _ = self.abandon.cancelled() => return RateDecision::Stopping,
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
    }

    fn redis_fails(&self, err: &StoreError) {
        if !self.redis_degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "Redis does not answer: delivering as if every circuit were closed and no rate limit were set, until it does");
        }
    }

    fn redis_answers(&self) {
        if self.redis_degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: circuit breakers and rate limits are back");
        }
    }

    /// Writes the delivery to the retry tier for `wait`, due after `wait`.
    async fn retry_later(&self, mut delivery: Delivery, wait: Duration) -> Outcome {
        let not_before_ms = unix_millis(OffsetDateTime::now_utc()) + wait.as_millis() as i64;
        delivery.not_before_ms = not_before_ms;
        let tier = self.schedule.tier_for(wait);
        let topic = tier_topic(&self.kafka, tier);
        metrics()
            .retries
            .get_or_create(&label("tier", format_duration(tier)))
            .inc();
        let value = delivery.encode_to_vec();
        let due = not_before_ms.to_string();
        let record = OutgoingRecord {
            topic: &topic,
            key: &delivery.endpoint_id,
            value: &value,
            headers: &[(NOT_BEFORE_HEADER, due.as_bytes())],
        };
        match produce_until_acked(
            &self.producer,
            record,
            self.kafka.produce_timeout,
            &self.abandon,
        )
        .await
        {
            Ok(()) => {
                tracing::debug!(%topic, wait_ms = wait.as_millis() as u64, "retry scheduled");
                Outcome::Done
            }
            Err(Stopping) => Outcome::Abandoned,
        }
    }

    async fn dead_letter(
        &self,
        delivery: Delivery,
        why: &str,
        detail: String,
        source: &OwnedMessage,
    ) -> Outcome {
        let letter = dead_letter::for_delivery(delivery, why, detail, source);
        match self.dead_letters.write(&letter, &self.abandon).await {
            Ok(()) => Outcome::Done,
            Err(Stopping) => Outcome::Abandoned,
        }
    }

    /// Adds an attempt to the attempt log (best effort: a Redis outage must
    /// not hold up deliveries).
    async fn log_attempt(
        &self,
        delivery: &Delivery,
        result: &AttemptResult,
        started_at_ms: i64,
        duration_ms: u32,
        response_body: String,
    ) {
        let (success, status_code, error) = match result {
            AttemptResult::Delivered { status } => (true, Some(*status), None),
            AttemptResult::Failed { status, error, .. } => (false, *status, Some(error.clone())),
        };
        let record = AttemptRecord {
            delivery_id: delivery.delivery_id.clone(),
            endpoint_id: delivery.endpoint_id.clone(),
            event_id: delivery.event_id.clone(),
            attempt: delivery.attempts_made,
            started_at_ms,
            duration_ms,
            status_code,
            error,
            response_body,
            success,
        };
        match self.attempt_log.record(&record, now_ms()).await {
            Ok(()) => self.redis_answers(),
            Err(err) => self.redis_fails(&err),
        }
    }

    /// One signed POST. Returns the result and the start of the response
    /// body.
    pub async fn attempt(
        &self,
        endpoint: &ResolvedEndpoint,
        webhook: &PreparedWebhook,
    ) -> (AttemptResult, String) {
        let span = tracing::info_span!(
            "POST",
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %redacted_url(&endpoint.endpoint.url),
            herald.endpoint_id = %endpoint.endpoint.id,
            herald.attempt = webhook.delivery.attempts_made + 1,
            http.response.status_code = tracing::field::Empty,
            herald.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let (result, body) = self.send(endpoint, webhook).instrument(span.clone()).await;
        match &result {
            AttemptResult::Delivered { status } => {
                span.record("http.response.status_code", status);
                span.record("herald.outcome", "delivered");
            }
            AttemptResult::Failed { status, error, .. } => {
                if let Some(status) = status {
                    span.record("http.response.status_code", status);
                }
                span.record("herald.outcome", "failed");
                span.record("error.type", error.as_str());
                span.record("otel.status_code", "ERROR");
            }
        }
        (result, body)
    }

    /// The HTTP exchange of one attempt, inside its span (whose context
    /// goes to the endpoint as `traceparent`).
    async fn send(
        &self,
        endpoint: &ResolvedEndpoint,
        webhook: &PreparedWebhook,
    ) -> (AttemptResult, String) {
        if let Err(refused) = self.outbound.preflight(&endpoint.endpoint.url).await {
            return (refused_attempt(refused), String::new());
        }
        let now = OffsetDateTime::now_utc();
        let timestamp = now.unix_timestamp();
        let msg_id = &webhook.delivery.event_id;
        // During a secret rotation the old secret signs too.
        let signature = signing::signature_header(
            endpoint.signing_secrets(unix_millis(now)),
            msg_id,
            timestamp,
            &webhook.body,
        );
        let mut request = self.outbound.client().post(&endpoint.endpoint.url);
        for (name, value) in trace_context::current_headers() {
            request = request.header(name, value);
        }
        // Custom headers first, so Herald's own always win.
        for (name, value) in &endpoint.endpoint.headers {
            request = request.header(name, value);
        }
        let request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(webhook.body.clone());
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
                // Read (a bounded part of) the body so the connection can be
                // reused; keep its start for the attempt log.
                let mut read = 0usize;
                let mut kept = Vec::new();
                while read < MAX_RESPONSE_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            read += chunk.len();
                            let room = attempt_log::MAX_BODY_BYTES.saturating_sub(kept.len());
                            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        }
                        _ => break,
                    }
                }
                let body = String::from_utf8_lossy(&kept).into_owned();
                let result = if response.status().is_success() {
                    AttemptResult::Delivered { status }
                } else {
                    AttemptResult::Failed {
                        status: Some(status),
                        error: format!("the endpoint answered {status}"),
                        hints: FailureHints {
                            retry_after,
                            slow_down: status == 429,
                            destination_refused: false,
                        },
                    }
                };
                (result, body)
            }
            Err(err) => match refusal_of(&err) {
                Some(refused) => (refused_attempt(refused), String::new()),
                None => (
                    AttemptResult::Failed {
                        status: None,
                        error: describe_http_error(&err),
                        hints: FailureHints {
                            retry_after: None,
                            slow_down: err.is_timeout(),
                            destination_refused: false,
                        },
                    },
                    String::new(),
                ),
            },
        }
    }
}

/// An attempt the outbound address policy stopped before anything was sent.
fn refused_attempt(refused: herald_core::destination::DestinationRefused) -> AttemptResult {
    AttemptResult::Failed {
        status: None,
        error: format!("destination refused: {refused}"),
        hints: FailureHints {
            destination_refused: true,
            ..FailureHints::default()
        },
    }
}

/// Counts one delivery result.
fn count_outcome(outcome: &str, status: Option<u16>) {
    metrics()
        .deliveries
        .get_or_create(&vec![
            ("outcome", outcome.to_owned()),
            ("status_class", status_class(status)),
        ])
        .inc();
}

/// Updates the breaker metrics after a state change.
fn record_transition(endpoint_id: &str, transition: Transition) {
    let (name, state) = match transition {
        Transition::None => return,
        Transition::Opened => ("opened", BreakerState::Open),
        Transition::Reopened => ("reopened", BreakerState::Open),
        Transition::Closed => ("closed", BreakerState::Closed),
    };
    let m = metrics();
    m.breaker_transitions
        .get_or_create(&label("transition", name))
        .inc();
    m.breakers.set(endpoint_id, state);
}

/// How long deliveries are put off while their endpoint cannot be tried.
#[derive(Debug, Clone, Copy)]
struct DeferralPolicy {
    /// The first deferral's least wait (the breaker's first cool-down).
    first: Duration,
    /// Where the wait stops growing (the breaker's longest cool-down).
    longest: Duration,
    /// `HERALD_MAX_DELIVERY_AGE`.
    max_age: Duration,
}

/// What [`DeferralPolicy::next`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deferral {
    /// Put it off this long.
    Wait(Duration),
    /// Too old: dead-letter it. It has been waiting since `since_ms`.
    GiveUp { since_ms: i64 },
}

impl DeferralPolicy {
    /// The next deferral of `delivery`, which may not go ahead before
    /// `until_ms`. The wait doubles with every deferral up to the longest
    /// cool-down, so that a long outage rewrites each held delivery ever
    /// more rarely instead of at every cool-down (and every few seconds while
    /// another replica probes); it never runs past the age limit, so the
    /// delivery is dead-lettered close to it.
    fn next(&self, delivery: &Delivery, until_ms: i64, now_ms: i64) -> Deferral {
        let since_ms = delivery
            .history
            .first()
            .map(|attempt| attempt.started_at_ms)
            .or((delivery.created_at_ms > 0).then_some(delivery.created_at_ms))
            .unwrap_or(delivery.event_timestamp_ms);
        let deadline_ms = since_ms.saturating_add(self.max_age.as_millis() as i64);
        if now_ms >= deadline_ms {
            return Deferral::GiveUp { since_ms };
        }
        // The first deferral waits what it was asked to; each later one at
        // least the first cool-down, doubled per deferral since.
        let doubling = match delivery.deferrals {
            0 => Duration::ZERO,
            n => self
                .first
                .saturating_mul(1_u32 << (n - 1).min(20))
                .min(self.longest),
        };
        let asked = Duration::from_millis(until_ms.saturating_sub(now_ms).max(1) as u64);
        let to_deadline = Duration::from_millis((deadline_ms - now_ms) as u64);
        Deferral::Wait(
            asked
                .max(doubling)
                .min(to_deadline)
                .max(Duration::from_millis(1)),
        )
    }
}

/// The longest a delivery waits in place for its rate limit; longer waits
/// go through a retry tier.
const MAX_RATE_WAIT_MS: u64 = 1000;

fn now_ms() -> i64 {
    unix_millis(OffsetDateTime::now_utc())
}

/// What the rate limit allows.
enum RateDecision {
    /// Deliver now.
    Go,
    /// Come back at this time (Unix milliseconds).
    Later(i64),
    /// The process is stopping.
    Stopping,
}

/// Per-endpoint caps on concurrent requests.
#[derive(Debug)]
struct EndpointSlots {
    per_endpoint: usize,
    semaphores: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointSlots {
    fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint,
            semaphores: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn acquire(&self, endpoint_id: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut map = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
            // Forget idle endpoints now and then, so the map does not grow
            // with every endpoint ever seen.
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < self.per_endpoint);
            }
            map.entry(endpoint_id.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
                .clone()
        };
        semaphore
            .acquire_owned()
            .await
            .expect("endpoint semaphores are never closed")
    }
}

/// A short, precise description of a failed request. It never holds the
/// URL (reqwest's own message does: "error sending request for url (…)"),
/// since it is logged and kept in the attempt log and dead letters, and an
/// endpoint URL can carry credentials.
fn describe_http_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    // The innermost cause says what happened (e.g. "Connection refused").
    let mut innermost = None;
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "response body failed"
    } else if err.is_redirect() {
        "redirect failed"
    } else if err.is_request() {
        "request failed"
    } else {
        "failed"
    };
    match innermost {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

impl RecordHandler for Dispatcher {
    async fn handle(&self, record: OwnedMessage) -> Outcome {
        // Continue the event's trace from the record's headers.
        let span = trace_context::process_span(&record);
        self.dispatch(record).instrument(span).await
    }

    fn due_at(&self, record: &BorrowedMessage<'_>) -> Option<i64> {
        let headers = record.headers()?;
        headers
            .iter()
            .find(|h| h.key == NOT_BEFORE_HEADER)
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
    }
}

impl Dispatcher {
    async fn dispatch(&self, record: OwnedMessage) -> Outcome {
        let prepared = record
            .payload()
            .ok_or_else(|| "the record has no value".to_owned())
            .and_then(prepare);
        match prepared {
            Ok(webhook) => self.deliver(webhook, &record).await,
            Err(detail) => {
                let letter = dead_letter::for_malformed_record(&record, detail);
                match self.dead_letters.write(&letter, &self.abandon).await {
                    Ok(()) => Outcome::Done,
                    Err(Stopping) => Outcome::Abandoned,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_wraps_the_payload_unchanged() {
        let delivery = Delivery {
            delivery_id: "dlv_1".into(),
            endpoint_id: "ep_1".into(),
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            payload_json: br#"{"b": 1, "a": [true]}"#.to_vec(),
            event_timestamp_ms: 1_767_323_045_123,
            ..Default::default()
        };
        let prepared = prepare(&delivery.encode_to_vec()).unwrap();
        assert_eq!(
            std::str::from_utf8(&prepared.body).unwrap(),
            r#"{"type":"order.created","timestamp":"2026-01-02T03:04:05.123Z","data":{"b": 1, "a": [true]}}"#
        );
    }

    #[test]
    fn deferrals_back_off_to_the_longest_cooldown_and_end_at_the_age_limit() {
        let policy = DeferralPolicy {
            first: Duration::from_secs(30),
            longest: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        };
        let created = 1_000_000;
        let mut delivery = Delivery {
            created_at_ms: created,
            event_timestamp_ms: 1,
            ..Default::default()
        };
        let now = created + 1000;
        // The first deferral waits what the breaker asked (5 s while
        // another replica probes); the later ones double from 30 s to 600 s.
        let mut waits = Vec::new();
        for deferrals in 0..8 {
            delivery.deferrals = deferrals;
            match policy.next(&delivery, now + 5_000, now) {
                Deferral::Wait(wait) => waits.push(wait.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [5, 30, 60, 120, 240, 480, 600, 600]);
        // Never past the age limit, and given up from there on.
        let late = created + 3_590_000;
        assert_eq!(
            policy.next(&delivery, late + 5_000, late),
            Deferral::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            policy.next(&delivery, late + 20_000, created + 3_600_000),
            Deferral::GiveUp { since_ms: created }
        );
        // The first attempt, when there was one, starts the clock.
        delivery.history.push(Attempt {
            started_at_ms: created + 500_000,
            ..Default::default()
        });
        assert!(matches!(
            policy.next(&delivery, 0, created + 3_600_000),
            Deferral::Wait(_)
        ));
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        assert!(
            prepare(b"\xff\xff\xff")
                .unwrap_err()
                .contains("not a herald.v1.Delivery")
        );
        let no_endpoint = Delivery {
            event_id: "e".into(),
            payload_json: b"1".to_vec(),
            ..Default::default()
        };
        assert!(
            prepare(&no_endpoint.encode_to_vec())
                .unwrap_err()
                .contains("no endpoint id")
        );
        let bad_json = Delivery {
            event_id: "e".into(),
            endpoint_id: "ep".into(),
            payload_json: b"{nope".to_vec(),
            ..Default::default()
        };
        assert!(
            prepare(&bad_json.encode_to_vec())
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
