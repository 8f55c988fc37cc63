//! Delivering one delivery record, in named steps, each in its own module:
//!
//! 1. [`prepare`]: decode the record and render the webhook body. A
//!    malformed record is dead-lettered.
//! 2. Find the endpoint ([`Dispatcher::endpoint`]): a deleted, disabled or
//!    unusable one dead-letters the delivery.
//! 3. [`admission`]: whether it may go now — endpoint slot, circuit
//!    breaker, rate limit, request slot, decided in one place and in that
//!    order — or is put off.
//! 4. [`attempt`]: the signed HTTP call.
//! 5. Record the attempt: a failure in the breaker at once, and the
//!    attempt log (with a success's count in the breaker) in the next batch
//!    of the replica's [`crate::recorder`] ([`Dispatcher::record_attempt`]).
//! 6. [`outcome`]: one decision ([`outcome::Next`]) — delivered, retry
//!    later, put off, disable the endpoint, dead-letter — that drives both
//!    the action ([`Dispatcher::carry_out`]) and the metrics.

pub mod admission;
pub mod attempt;
pub mod outcome;
pub mod prepare;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::attempt_log::{AttemptRecord, LoggedAttempt, RecordSource};
use herald_core::backoff::Backoff;
use herald_core::circuit::{Breakers, Transition};
use herald_core::config::{KafkaConfig, format_duration};
use herald_core::dead_letter::{self, DeadLetterWriter, reason};
use herald_core::endpoint::ResolvedEndpoint;
use herald_core::event::unix_millis;
use herald_core::kafka::Producer;
use herald_core::kafka::consumer::RecordHandler;
use herald_core::kafka::offsets::Outcome;
use herald_core::kafka::{OutgoingRecord, Stopping, produce_until_acked};
use herald_core::metrics::{BreakerState, label, metrics};
use herald_core::proto::{Attempt, Delivery};
use herald_core::rate_limit::RateLimiter;
use herald_core::redis_store::StoreError;
use herald_core::retry::{NOT_BEFORE_HEADER, RetrySchedule, tier_topic};
use herald_core::trace_context;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::endpoint_cache::EndpointCache;
use crate::outbound::Outbound;
use crate::recorder::{self, Recorder, RecorderTask};
use crate::{Config, DispatcherError};
use admission::{Admission, Admitted, Gate, RedisHealth};
pub use attempt::AttemptResult;
use outcome::{DeferralPolicy, Next};
pub use prepare::{PreparedWebhook, prepare};

/// Delivers delivery records; one instance serves every in-flight record.
pub struct Dispatcher {
    cache: EndpointCache,
    gate: Gate,
    recorder: Recorder,
    redis: Arc<RedisHealth>,
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
    /// Builds the HTTP client ([`Outbound`]), the Kafka producer for
    /// retries and dead letters, and starts the task that writes attempts
    /// to Redis ([`recorder`]; finish it once no delivery is in flight).
    pub fn new(
        config: &Config,
        cache: EndpointCache,
        breakers: Breakers,
        limiter: RateLimiter,
        attempt_log: herald_core::attempt_log::AttemptLog,
        abandon: CancellationToken,
    ) -> Result<(Self, RecorderTask), DispatcherError> {
        let outbound = Outbound::new(config)?;
        let producer = herald_core::kafka::producer(&config.kafka, "herald-dispatcher")?;
        let dead_letters = DeadLetterWriter::new(
            producer.clone(),
            config.kafka.topic(herald_core::topics::DLQ),
            config.kafka.produce_timeout,
        );
        let redis = Arc::new(RedisHealth::default());
        let (recorder, recorder_task) =
            recorder::start(attempt_log, breakers.clone(), redis.clone());
        let dispatcher = Self {
            cache,
            gate: Gate::new(
                config.max_in_flight,
                config.endpoint_max_in_flight,
                breakers,
                limiter,
                redis.clone(),
                abandon.clone(),
            ),
            recorder,
            redis,
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
        };
        Ok((dispatcher, recorder_task))
    }

    async fn dispatch(&self, record: OwnedMessage) -> Outcome {
        let prepared = record
            .payload()
            .ok_or_else(|| "the record has no value".to_owned())
            .and_then(prepare);
        match prepared {
            // Read again on its way through the tiers: not due yet.
            Ok(webhook)
                if webhook.delivery.not_before_ms
                    - read_ahead(&webhook.delivery).as_millis() as i64
                    > now_ms() + HOP_TOLERANCE_MS =>
            {
                let wait_ms = webhook.delivery.not_before_ms - now_ms();
                self.retry_later(
                    webhook.delivery,
                    Duration::from_millis(wait_ms.max(1) as u64),
                )
                .await
            }
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

    /// Delivers one webhook: steps 2 to 6 of the module docs.
    async fn deliver(&self, mut webhook: PreparedWebhook, source: &OwnedMessage) -> Outcome {
        // The record's span names the delivery, for every log line of it (a
        // span of its own would cost a span per delivery).
        let span = tracing::Span::current();
        span.record("event_id", webhook.delivery.event_id.as_str());
        span.record("endpoint_id", webhook.delivery.endpoint_id.as_str());
        span.record("attempt", webhook.delivery.attempts_made + 1);
        let next = match self.usable_endpoint(&webhook.delivery.endpoint_id).await {
            Ok(endpoint) => self.try_once(&endpoint, &mut webhook, source).await,
            Err(next) => next,
        };
        self.carry_out(next, webhook.delivery, source).await
    }

    /// Step 2: the endpoint, or why the delivery cannot go to it.
    async fn usable_endpoint(&self, id: &str) -> Result<Arc<ResolvedEndpoint>, Next> {
        let dead = |reason, detail| Next::DeadLetter {
            reason,
            detail,
            status: None,
        };
        match self.endpoint(id).await {
            Ok(Some(endpoint)) if endpoint.disabled => Err(dead(
                reason::ENDPOINT_DISABLED,
                match &endpoint.disabled_reason {
                    Some(why) => format!("the endpoint is disabled: {why}"),
                    None => "the endpoint is disabled".to_owned(),
                },
            )),
            Ok(Some(endpoint)) => Ok(endpoint),
            Ok(None) => Err(dead(
                reason::ENDPOINT_DELETED,
                format!("endpoint {id} does not exist (deleted)"),
            )),
            Err(Unavailable::Unusable(problem)) => Err(dead(reason::ENDPOINT_UNUSABLE, problem)),
            Err(Unavailable::Stopping) => Err(Next::Stopping),
        }
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

    /// Steps 3 to 5, and the decision: admission, the attempt, its record.
    async fn try_once(
        &self,
        endpoint: &ResolvedEndpoint,
        webhook: &mut PreparedWebhook,
        source: &OwnedMessage,
    ) -> Next {
        let admitted = match self.gate.admit(endpoint, &webhook.delivery).await {
            Admission::Go(admitted) => admitted,
            Admission::PutOff { until_ms, by } => {
                return outcome::after_put_off(
                    &self.deferrals,
                    &webhook.delivery,
                    until_ms,
                    by,
                    now_ms(),
                );
            }
            Admission::Stopping => return Next::Stopping,
        };
        let started_at_ms = now_ms();
        let started = Instant::now();
        // Records written before deliveries carried their creation time
        // have none (0).
        if webhook.delivery.attempts_made == 0
            && webhook.delivery.deferrals == 0
            && webhook.delivery.created_at_ms > 0
        {
            metrics()
                .first_attempt_wait
                .observe((started_at_ms - webhook.delivery.created_at_ms).max(0) as f64 / 1000.0);
        }
        let (result, response_body) = attempt::attempt(&self.outbound, endpoint, webhook).await;
        let duration_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        let delivery = &mut webhook.delivery;
        delivery.attempts_made += 1;
        // The history travels with a delivery that goes on (a retry, a
        // dead letter); a success ends it, and is not written there.
        if let AttemptResult::Failed { status, error, .. } = &result {
            delivery.history.push(Attempt {
                started_at_ms,
                status_code: status.map_or(0, u32::from),
                error: error.clone(),
                duration_ms,
            });
        }
        self.record_attempt(
            admitted,
            endpoint,
            delivery,
            &result,
            Exchange {
                started_at_ms,
                duration_ms,
                response_body,
            },
            source,
        )
        .await;
        metrics()
            .attempt_duration
            .observe(f64::from(duration_ms) / 1000.0);
        herald_core::stats::attempt(
            &delivery.endpoint_id,
            matches!(result, AttemptResult::Delivered { .. }),
        );
        match &result {
            AttemptResult::Delivered { status } => {
                tracing::debug!(status, duration_ms, "delivered")
            }
            AttemptResult::Failed { status, error, .. } => {
                tracing::info!(status, %error, duration_ms, "delivery attempt failed")
            }
        }
        outcome::after_attempt(
            &result,
            delivery.attempts_made,
            &self.schedule,
            OffsetDateTime::now_utc(),
        )
    }

    /// Step 5: a failure goes into the endpoint's breaker at once (it may
    /// open it, and the next delivery must know); the attempt, and a
    /// success's count in the breaker, go to the [`recorder`]'s next
    /// batch. The slots are let go first: the call is over.
    async fn record_attempt(
        &self,
        admitted: Admitted,
        endpoint: &ResolvedEndpoint,
        delivery: &Delivery,
        result: &AttemptResult,
        Exchange {
            started_at_ms,
            duration_ms,
            response_body,
        }: Exchange,
        source: &OwnedMessage,
    ) {
        let probe = admitted.probe;
        drop(admitted);
        let endpoint_id = delivery.endpoint_id.as_str();
        // A refused destination was not contacted: it says nothing of the
        // endpoint's health, and a probe refused so is handed back.
        let refused =
            matches!(result, AttemptResult::Failed { hints, .. } if hints.destination_refused);
        let (success, status_code, error) = match result {
            AttemptResult::Delivered { status } => (true, Some(*status), None),
            AttemptResult::Failed { status, error, .. } => (false, *status, Some(error.as_str())),
        };
        // A success of a closed breaker goes with the next batch; a failure,
        // or a probe's success (which closes the breaker for the deliveries
        // behind it), is written at once. (A refused attempt is a failure.)
        let batched_success = success && probe.is_none();
        if refused {
            self.gate.hand_back_probe(endpoint_id, probe).await;
        } else if !batched_success {
            self.record_in_breaker(endpoint_id, success, probe.is_some(), error)
                .await;
        }
        // Written from the delivery's own fields: nothing is copied but
        // the JSON.
        let record = AttemptRecord {
            delivery_id: delivery.delivery_id.as_str(),
            endpoint_id,
            event_id: delivery.event_id.as_str(),
            application_id: delivery.application_id.as_str(),
            attempt: delivery.attempts_made,
            started_at_ms,
            duration_ms,
            status_code,
            error,
            response_body: response_body.as_str(),
            success,
            source: Some(RecordSource {
                topic: source.topic(),
                partition: source.partition(),
                offset: source.offset(),
            }),
        };
        let queued = match LoggedAttempt::new(&record, endpoint.id.clone()) {
            Ok(logged) => self.recorder.record(
                logged,
                started_at_ms + i64::from(duration_ms),
                batched_success,
            ),
            // Plain strings and numbers always serialize.
            Err(err) => {
                tracing::error!(error = %err, "attempt record not serialized");
                false
            }
        };
        if !queued && batched_success {
            // Redis is behind and the queue full: the breaker still gets
            // its success, or it would see only the failures.
            self.record_in_breaker(endpoint_id, true, false, None).await;
        }
    }

    /// Writes one attempt's result to the endpoint's breaker now.
    async fn record_in_breaker(
        &self,
        endpoint_id: &str,
        success: bool,
        probe: bool,
        error: Option<&str>,
    ) {
        let error = error.unwrap_or_default();
        match self
            .gate
            .breakers()
            .record(endpoint_id, now_ms(), success, probe, error)
            .await
        {
            Ok(transition) => {
                self.redis.answers();
                record_transition(endpoint_id, transition);
                match transition {
                    Transition::Opened => {
                        tracing::warn!(%error, "circuit opened: deliveries to this endpoint are paused")
                    }
                    Transition::Reopened => {
                        tracing::warn!(%error, "probe failed: circuit open again, for longer")
                    }
                    Transition::Closed => {
                        tracing::info!("circuit closed: the endpoint answers again")
                    }
                    Transition::None => {}
                }
            }
            Err(err) => self.redis.fails(&err),
        }
    }

    /// Step 6: does what `next` says, and counts it.
    async fn carry_out(
        &self,
        next: Next,
        mut delivery: Delivery,
        source: &OwnedMessage,
    ) -> Outcome {
        next.count();
        match next {
            Next::Delivered { .. } => {
                let age_ms = now_ms() - delivery.event_timestamp_ms;
                metrics()
                    .end_to_end_latency
                    .observe(age_ms.max(0) as f64 / 1000.0);
                herald_core::stats::delivered(age_ms);
                Outcome::Done
            }
            Next::Retry { wait, .. } => {
                delivery.rate_slot_ms = 0;
                self.retry_later(delivery, wait).await
            }
            Next::PutOff { wait, rate_slot_ms } => {
                delivery.deferrals += 1;
                delivery.rate_slot_ms = rate_slot_ms;
                self.retry_later(delivery, wait).await
            }
            Next::DisableEndpoint { why } => {
                let store = self.cache.store();
                match store.disable(&delivery.endpoint_id, &why).await {
                    Ok(_) => {
                        tracing::warn!(endpoint_id = %delivery.endpoint_id, "endpoint disabled: {why}")
                    }
                    Err(err) => {
                        tracing::error!(endpoint_id = %delivery.endpoint_id, error = %err, "cannot disable a gone endpoint")
                    }
                }
                self.dead_letter(delivery, reason::ENDPOINT_GONE, why, source)
                    .await
            }
            Next::DeadLetter { reason, detail, .. } => {
                self.dead_letter(delivery, reason, detail, source).await
            }
            Next::Stopping => Outcome::Abandoned,
        }
    }

    /// Writes the delivery to the retry tier for `wait`, due after `wait`.
    /// A wait much longer than its tier's delay is done in hops
    /// ([`RetrySchedule::hop`]): the record is read again after the tier's
    /// delay and written on ([`Dispatcher::dispatch`]), so that it never
    /// holds up the records written after it.
    async fn retry_later(&self, mut delivery: Delivery, wait: Duration) -> Outcome {
        let now = now_ms();
        let not_before_ms = now + wait.as_millis() as i64;
        delivery.not_before_ms = not_before_ms;
        // Read back in time to wait out the rest in place, if it must.
        let read_in = wait.saturating_sub(read_ahead(&delivery));
        let read_again_ms = now + self.schedule.hop(read_in).as_millis() as i64;
        let tier = self.schedule.tier_for(read_in);
        let topic = tier_topic(&self.kafka, tier);
        metrics()
            .retries
            .get_or_create(&label("tier", format_duration(tier)))
            .inc();
        let value = delivery.encode_to_vec();
        let due = read_again_ms.to_string();
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
}

/// When an attempt started (Unix milliseconds), how long it took, and the
/// start of the answer's body.
struct Exchange {
    started_at_ms: i64,
    duration_ms: u32,
    response_body: String,
}

/// Updates the breaker metrics after a state change.
pub(crate) fn record_transition(endpoint_id: &str, transition: Transition) {
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

/// How long before its due time a delivery is read back from its retry
/// tier. A rate-limit moment is waited for in place for its last stretch
/// (up to [`admission::MAX_WAIT_IN_PLACE`]), so that the tier's own delay in
/// handing the record back (up to a fetch wait) does not make it late, and
/// deliveries given moments one after another go one after another.
fn read_ahead(delivery: &Delivery) -> Duration {
    if delivery.rate_slot_ms > 0 {
        admission::MAX_WAIT_IN_PLACE
    } else {
        Duration::ZERO
    }
}

/// How early a record from a retry tier may be read and still be
/// delivered rather than sent on: the replicas' clocks may differ a little.
const HOP_TOLERANCE_MS: i64 = 100;

pub(crate) fn now_ms() -> i64 {
    unix_millis(OffsetDateTime::now_utc())
}

impl RecordHandler for Dispatcher {
    async fn handle(&self, record: OwnedMessage) -> Outcome {
        // Continue the event's trace from the record's headers.
        let span = trace_context::process_span(&record);
        self.dispatch(record).instrument(span).await
    }

    fn due_at(&self, record: &OwnedMessage) -> Option<i64> {
        let headers = record.headers()?;
        headers
            .iter()
            .find(|h| h.key == NOT_BEFORE_HEADER)
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
    }
}
