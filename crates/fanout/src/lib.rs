//! herald-fanout: turns each event into one delivery per subscribed endpoint.
//!
//! It consumes `herald.events` in the `herald-fanout` consumer group. For
//! each record it parses the event (JSON, see `herald_core::event`), finds
//! the enabled endpoints of the event's application subscribed to its type
//! ([`subscriptions::SubscriptionCache`]: one application's ids and event
//! types, read on first use and again when the application changes), and
//! produces one `herald.v1.Delivery` per endpoint to `herald.deliveries`,
//! keyed by endpoint id so that one endpoint's deliveries share a partition.
//! The record's offset is stored only after every one of those produces was
//! acknowledged, so a crash re-runs fan-out for at most the records in
//! flight; delivery ids derive from (event id, endpoint id), so a re-run
//! produces the same ids.
//!
//! A record that is not a valid event, or is addressed to an application
//! that does not exist, goes to `herald.dlq` with its reason, so it never
//! holds up its partition and is never lost silently.

use std::sync::Arc;
use std::time::Duration;

use herald_core::backoff::Backoff;
use herald_core::config::{ConfigError, Env, KafkaConfig, RedisConfig};
use herald_core::dead_letter::{self, DeadLetterWriter};
use herald_core::endpoint::EndpointStore;

pub mod subscriptions;

use herald_core::application::ApplicationStore;
use herald_core::dead_letter::reason;
use herald_core::event::{ParsedEvent, event_id_from_position, parse_event, unix_millis};
use herald_core::kafka::Producer;
use herald_core::kafka::consumer::{ConsumerSettings, RecordHandler};
use herald_core::kafka::offsets::Outcome;
use herald_core::proto::Delivery;
use herald_core::redis_store::Keys;
use herald_core::service::{ServiceConfig, ServiceError, Worker, start_worker};
use herald_core::telemetry::LogConfig;
use herald_core::trace_context;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use subscriptions::{Lookup, SubscriptionCache, Subscriptions};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Everything herald-fanout reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HERALD_FANOUT_MAX_IN_FLIGHT` (default `1000`): events being fanned
    /// out at once.
    pub max_in_flight: usize,
    /// `HERALD_ENDPOINT_CACHE_REFRESH` (default `1s`): how often the
    /// subscription cache checks Redis for changes; new or changed
    /// subscriptions take effect within this interval.
    pub cache_refresh: Duration,
    /// `HERALD_FANOUT_CACHE_ENTRIES` (default `10000`): most applications
    /// whose subscriptions are held at once.
    pub cache_entries: usize,
    /// `HERALD_FANOUT_CACHE_BYTES` (default `16777216`, 16 MiB): about the
    /// most memory those subscriptions take.
    pub cache_bytes: usize,
    /// `HERALD_DRAIN_TIMEOUT` (default `30s`): on shutdown or rebalance, how
    /// long in-flight events may take to finish.
    pub drain_timeout: Duration,
    /// `HERALD_OPS_ADDR` (default `0.0.0.0:9090`): `/metrics`, `/healthz`
    /// and `/readyz`.
    pub ops_addr: std::net::SocketAddr,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
}

impl ServiceConfig for Config {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Config::from_env(env)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl Config {
    /// Reads and validates the configuration.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kafka = KafkaConfig::from_env(env)?;
        Ok(Self {
            max_in_flight: env.number("HERALD_FANOUT_MAX_IN_FLIGHT", 1000, 1, 100_000)? as usize,
            cache_refresh: env.duration("HERALD_ENDPOINT_CACHE_REFRESH", Duration::from_secs(1))?,
            cache_entries: env.number("HERALD_FANOUT_CACHE_ENTRIES", 10_000, 1, 10_000_000)?
                as usize,
            cache_bytes: env.number("HERALD_FANOUT_CACHE_BYTES", 16 << 20, 1 << 16, 16 << 30)?
                as usize,
            drain_timeout: herald_core::config::drain_timeout(env, &kafka)?,
            ops_addr: herald_core::ops::ops_addr(env)?,
            kafka,
            redis: RedisConfig::from_env(env)?,
            log: LogConfig::from_env(env)?,
        })
    }
}

/// Why fan-out could not start or stopped.
pub type FanoutError = ServiceError;

/// Runs fan-out until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), FanoutError> {
    let events_topic = config.kafka.events_topic();
    let deliveries_topic = config.kafka.deliveries_topic();
    let dlq_topic = config.kafka.topic(herald_core::topics::DLQ);
    let producer = herald_core::kafka::producer(&config.kafka, "herald-fanout")?;
    let worker = Worker {
        kafka: &config.kafka,
        redis: &config.redis,
        ops_addr: config.ops_addr,
        topics: &[
            events_topic.clone(),
            deliveries_topic.clone(),
            dlq_topic.clone(),
        ],
        probe_topic: &events_topic,
    };
    let Some(redis) = start_worker(worker, producer.clone(), &shutdown).await? else {
        return Ok(());
    };
    let keys = Keys::new(config.redis.key_prefix.clone());
    // The events topic's lag, for the console's overview.
    tokio::spawn(
        herald_core::stats::Flusher::new(redis.clone(), keys.clone()).run(shutdown.clone()),
    );
    let cache = SubscriptionCache::new(
        EndpointStore::new(redis.clone(), keys.clone()),
        ApplicationStore::new(redis, keys),
        config.cache_entries,
        config.cache_bytes,
    );
    // Nothing is consumed before Redis answers.
    if !cache.load_first(&shutdown).await {
        return Ok(());
    }
    tokio::spawn(
        cache
            .clone()
            .keep_fresh(config.cache_refresh, shutdown.clone()),
    );

    let abandon = CancellationToken::new();
    let handler = Arc::new(FanoutHandler {
        cache,
        dead_letters: DeadLetterWriter::new(
            producer.clone(),
            dlq_topic,
            config.kafka.produce_timeout,
        ),
        producer,
        deliveries_topic,
        produce_timeout: config.kafka.produce_timeout,
        abandon: abandon.clone(),
    });
    let settings = ConsumerSettings {
        group_id: config.kafka.group(herald_core::groups::FANOUT),
        client_id: "herald-fanout".to_owned(),
        topics: vec![events_topic],
        max_in_flight: config.max_in_flight,
        fetch_wait: config.kafka.hot_fetch_wait,
        drain_timeout: config.drain_timeout,
        abandon,
    };
    herald_core::kafka::consumer::run(&config.kafka, settings, handler, shutdown).await?;
    Ok(())
}

/// Fans out one event record.
struct FanoutHandler {
    cache: SubscriptionCache,
    dead_letters: DeadLetterWriter,
    producer: Producer,
    deliveries_topic: String,
    produce_timeout: Duration,
    /// Fires when in-flight work must be given up (the drain ran out of
    /// time).
    abandon: CancellationToken,
}

impl RecordHandler for FanoutHandler {
    async fn handle(&self, record: OwnedMessage) -> Outcome {
        // One span per fanned-out event, continuing the trace the record
        // carries (a record published without one starts a trace here).
        let span = trace_context::process_span(&record);
        self.fan_out(record).instrument(span).await
    }
}

impl FanoutHandler {
    async fn fan_out(&self, record: OwnedMessage) -> Outcome {
        if let Some(written_ms) = record.timestamp().to_millis() {
            let waited_ms = unix_millis(time::OffsetDateTime::now_utc()) - written_ms;
            herald_core::metrics::metrics()
                .fanout_event_wait
                .observe(waited_ms.max(0) as f64 / 1000.0);
        }
        let event = match record
            .payload()
            .ok_or_else(|| "the record has no value".to_owned())
            .and_then(|bytes| parse_event(bytes).map_err(|err| err.to_string()))
        {
            Ok(event) => event,
            Err(reason) => {
                let letter = dead_letter::for_malformed_record(
                    &record,
                    format!("not a valid event: {reason}"),
                );
                return self.write_dead_letter(letter).await;
            }
        };
        let Some(lookup) = self
            .subscriptions_of(&event.application, stamped_version(&record))
            .await
        else {
            return Outcome::Abandoned;
        };
        let subscriptions = match lookup {
            Lookup::Found(subscriptions) => subscriptions,
            Lookup::NoSuchApplication => {
                let letter = dead_letter::for_record(
                    &record,
                    reason::APPLICATION_NOT_FOUND,
                    format!(
                        "the event is addressed to application {:?}, which does not exist",
                        event.application
                    ),
                );
                return self.write_dead_letter(letter).await;
            }
        };
        let deliveries = plan(&record, &event, &subscriptions);
        if deliveries.is_empty() {
            herald_core::metrics::metrics()
                .events_without_subscribers
                .inc();
        }
        self.produce_all(deliveries).await
    }

    /// The application's subscriptions, at `at_least` or newer. While Redis
    /// does not answer, the copy held is used (however stale, but not older
    /// than `at_least`); otherwise the event waits. `None` when the process stops meanwhile.
    async fn subscriptions_of(&self, app: &str, at_least: i64) -> Option<Lookup> {
        let mut backoff = Backoff::new(Duration::from_millis(100));
        loop {
            match self.cache.lookup(app, at_least).await {
                Ok(lookup) => return Some(lookup),
                Err(err) => {
                    // Not a copy older than the event's stamp: a change
                    // answered before the event must apply to it.
                    if let Some(held) = self.cache.held_copy(app)
                        && held.version() >= at_least
                    {
                        return Some(Lookup::Found(held));
                    }
                    tracing::warn!(application = app, error = %err, "cannot read the application's endpoints; retrying");
                }
            }
            backoff.pause(&self.abandon).await.ok()?;
        }
    }

    async fn write_dead_letter(&self, letter: herald_core::proto::DeadLetter) -> Outcome {
        match self.dead_letters.write(&letter, &self.abandon).await {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Abandoned,
        }
    }
}

/// The application version ingest stamped on the record (0: none, as on
/// records produced straight to Kafka).
fn stamped_version(record: &OwnedMessage) -> i64 {
    use rdkafka::message::Headers;
    record
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == herald_core::application::VERSION_HEADER)
        })
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The delivery records for one event, encoded and keyed by endpoint id:
/// one per subscribed endpoint of its application. One delivery is filled
/// with the event once and only its endpoint is changed between records,
/// so the payload is copied once per event, not once per endpoint.
fn plan(
    record: &OwnedMessage,
    event: &ParsedEvent<'_>,
    subscriptions: &Subscriptions,
) -> Vec<(Arc<str>, Vec<u8>)> {
    let event_id = event.id.clone().unwrap_or_else(|| {
        event_id_from_position(record.topic(), record.partition(), record.offset())
    });
    let event_timestamp_ms = match event.timestamp {
        Some(ts) => unix_millis(ts),
        None => record
            .timestamp()
            .to_millis()
            .unwrap_or_else(|| unix_millis(time::OffsetDateTime::now_utc())),
    };
    let subscribers = subscriptions.subscribers(&event.event_type);
    let span = tracing::Span::current();
    span.record("event_id", event_id.as_str());
    span.record("subscribers", subscribers.len());
    tracing::debug!(event_id, application = %event.application, subscribers = subscribers.len(), "fanning out");
    let mut delivery = Delivery {
        application_id: event.application.clone(),
        event_type: event.event_type.clone(),
        payload_json: event.payload.get().as_bytes().to_vec(),
        event_timestamp_ms,
        created_at_ms: unix_millis(time::OffsetDateTime::now_utc()),
        event_id,
        ..Default::default()
    };
    subscribers
        .into_iter()
        .map(|endpoint_id| {
            delivery.delivery_id =
                herald_core::event::delivery_id(&delivery.event_id, &endpoint_id);
            delivery.endpoint_id.clear();
            delivery.endpoint_id.push_str(&endpoint_id);
            let encoded = delivery.encode_to_vec();
            (endpoint_id, encoded)
        })
        .collect()
}

impl FanoutHandler {
    /// Produces every delivery, retrying failed produces until each one is
    /// acknowledged; abandons the record only when the process stops.
    async fn produce_all(&self, deliveries: Vec<(Arc<str>, Vec<u8>)>) -> Outcome {
        let mut pending = deliveries;
        let count = pending.len() as u64;
        let mut backoff = Backoff::new(Duration::from_millis(100));
        // The event's trace context, read once for all its deliveries.
        let trace_headers = trace_context::trace_headers();
        loop {
            let sends = pending.iter().map(|(key, value)| {
                let mut record = FutureRecord::to(&self.deliveries_topic)
                    .key(key.as_bytes())
                    .payload(value);
                if let Some(headers) = &trace_headers {
                    record = record.headers(headers.clone());
                }
                self.producer.send(record, self.produce_timeout)
            });
            let results = futures::future::join_all(sends).await;
            let mut failed = Vec::new();
            for (item, result) in pending.into_iter().zip(results) {
                if let Err(err) = result {
                    tracing::warn!(endpoint_id = %item.0, error = %err, "delivery record not acknowledged; retrying");
                    failed.push(item);
                }
            }
            if failed.is_empty() {
                let m = herald_core::metrics::metrics();
                m.events_fanned_out.inc();
                m.deliveries_created.inc_by(count);
                return Outcome::Done;
            }
            pending = failed;
            if backoff.pause(&self.abandon).await.is_err() {
                return Outcome::Abandoned;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use subscriptions::StoredSubscription;

    #[test]
    fn each_subscriber_gets_its_own_record_of_the_same_event() {
        let value =
            br#"{"application":"shop","id":"evt_1","type":"order.created","payload":{"n":1}}"#;
        let record = OwnedMessage::new(
            Some(value.to_vec()),
            None,
            "herald.events".to_owned(),
            Timestamp::CreateTime(1_767_323_045_123),
            3,
            42,
            None,
        );
        let event = parse_event(value).unwrap();
        let subscriptions = Subscriptions::build(
            1,
            ["ep_a", "ep_b", "ep_c"]
                .iter()
                .map(|id| StoredSubscription {
                    id: (*id).to_owned(),
                    event_types: vec!["order.*".to_owned()],
                    disabled: *id == "ep_c",
                })
                .collect(),
        );
        let planned = plan(&record, &event, &subscriptions);
        let keys: Vec<&str> = planned.iter().map(|(key, _)| &**key).collect();
        assert_eq!(keys, ["ep_a", "ep_b"]);
        for (key, encoded) in &planned {
            let delivery = Delivery::decode(encoded.as_slice()).unwrap();
            assert_eq!(delivery.endpoint_id, **key);
            assert_eq!(
                delivery.delivery_id,
                herald_core::event::delivery_id("evt_1", key)
            );
            assert_eq!(delivery.event_id, "evt_1");
            assert_eq!(delivery.application_id, "shop");
            assert_eq!(delivery.event_type, "order.created");
            assert_eq!(delivery.payload_json, br#"{"n":1}"#);
            assert_eq!(delivery.event_timestamp_ms, 1_767_323_045_123);
            assert!(delivery.created_at_ms > 0);
        }
        assert_ne!(planned[0].1, planned[1].1);
    }
}
