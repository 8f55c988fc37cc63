//! Kafka clients: producer and consumer settings, topic creation, and the
//! at-least-once consumer loop that fan-out and the dispatchers share.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::backoff::Backoff;
use crate::config::KafkaConfig;

pub mod consumer;
pub mod holds;
pub mod offsets;
pub mod producer;

pub use producer::{Acked, Producer};

/// Settings every Herald Kafka client shares; user-supplied properties
/// (`HERALD_KAFKA_PROPERTIES`) are applied last so they can override any of
/// Herald's choices.
fn base_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        // Requests are small and answered at once; Nagle's algorithm would
        // hold a request back while an earlier one is unacknowledged.
        .set("socket.nagle.disable", "true");
    client
}

fn apply_user_properties(client: &mut ClientConfig, config: &KafkaConfig) {
    for (key, value) in &config.properties {
        client.set(key, value);
    }
}

/// Settings of a producer whose acknowledgement means the record is
/// durable: idempotent, `acks=all`, giving up after the configured produce
/// timeout. [`producer`] builds Herald's own from them; the benchmark builds
/// its load generator from the same.
pub fn producer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = base_config(config, client_id);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.produce_timeout.as_millis().to_string(),
        )
        // At ordinary load a record waits up to this long for others to
        // share its request, at every hop. Measured at 2,000 webhooks/s
        // (two hops): p50 13-19 ms at 5 ms (librdkafka's default), 6 ms at
        // 1 ms and at 0.5 ms, 3.4 ms at 0. Under load records batch up
        // anyway while earlier requests are in flight: flat-out fan-out 10
        // measured 7,100-8,100 webhooks/s at 0, 0.5 and 1 ms alike, within
        // the runs' noise. An installation that only cares for throughput
        // can set HERALD_KAFKA_PROPERTIES=linger.ms=5.
        .set("linger.ms", "0");
    apply_user_properties(&mut client, config);
    client
}

/// Herald's producer ([`Producer`]) with [`producer_config`]'s settings.
pub fn producer(config: &KafkaConfig, client_id: &str) -> Result<Producer, KafkaError> {
    Producer::from_config(&producer_config(config, client_id))
}

/// How long the broker may hold a fetch of a consumer whose records wait
/// seconds anyway (retry tiers, dead letters) and finds nothing to return.
/// Hot-path consumers take [`KafkaConfig::hot_fetch_wait`] instead, which is
/// the same on Apache Kafka but can be set shorter for brokers that hold
/// every fetch this long.
pub const RELAXED_FETCH_WAIT: Duration = Duration::from_millis(500);

/// Most kibibytes of records a consumer fetches ahead of its work.
const PREFETCH_KIB: u32 = 4 * 1024;

/// How long librdkafka waits before fetching again for a partition whose
/// records filled the prefetch queue ([`PREFETCH_KIB`]).
const FETCH_QUEUE_BACKOFF_MS: u32 = 10;

/// Most bytes of one partition in one fetch.
const PARTITION_RUN_BYTES: u32 = 128 * 1024;

/// Consumer settings for [`consumer::run`]: offsets are stored by Herald once
/// a record's effects are durable, and committed by the polling thread
/// itself (not librdkafka's background auto-commit), so that no two commits
/// of one consumer are ever in flight together: a broker that answered them
/// out of order could otherwise keep an older offset over a newer one.
pub fn consumer_config(
    config: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut client = base_config(config, client_id);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            crate::config::KAFKA_SESSION_TIMEOUT.as_millis().to_string(),
        )
        // Set, not left to librdkafka's 5 minutes: the drain timeout is
        // checked against it (`config::drain_timeout`).
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        // Feeds the consumer-lag metric.
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        // After a failed fetch, ask again soon rather than after librdkafka's
        // default 500 ms, which would show as a latency spike.
        .set("fetch.error.backoff.ms", "50")
        // Records fetched ahead of the in-flight window wait in librdkafka's
        // queue. Its default (64 MiB) alone would fill a 64 MiB memory
        // budget whenever a backlog builds up. A fetched record keeps its
        // whole fetch response alive, so the queue costs about 2.5 times
        // this figure (heaptrack: 19 MiB at 8 MiB). 4 MiB is still thousands
        // of records ahead of the window; 2 MiB measured 15 % slower.
        .set("queued.max.messages.kbytes", PREFETCH_KIB.to_string())
        // Once that queue is full, librdkafka stops fetching a partition
        // for this long before it looks again. Its default (1 s) made every
        // consumer behind its backlog stop and go: the dispatcher drained
        // the 4 MiB in well under a second and then sat idle, waiting for
        // the next fetch (9,200 webhooks/s at fan-out 10 with a third of a
        // core busy; 23,400/s with the dispatcher's core busy at 10 ms).
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string())
        // Records reach the window in per-partition runs of up to this many
        // bytes. Short runs interleave the partitions (so their endpoints)
        // in the window; a 1 MiB run (the default) of one partition can hold
        // every slot for the one or two endpoints it carries.
        .set("max.partition.fetch.bytes", PARTITION_RUN_BYTES.to_string());
    apply_user_properties(&mut client, config);
    client
}

/// Settings of a consumer that reads single records by their offset, in
/// no group and committing nothing (the console's payload lookups).
pub fn reader_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = base_config(config, client_id);
    client
        // librdkafka wants a group even for assigned partitions; this one
        // never joins (no subscription) and never commits.
        .set("group.id", config.group("console-reader"))
        // An offset deleted by retention reads on from the earliest kept,
        // which tells the reader its record is gone.
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "1024");
    apply_user_properties(&mut client, config);
    client
}

/// Creates the given topics when they do not exist yet (with the configured
/// partitions and replication). Existing topics are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<(), KafkaError> {
    if !config.create_topics || topics.is_empty() {
        return Ok(());
    }
    let mut client = base_config(config, "herald-admin");
    apply_user_properties(&mut client, config);
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.topic_partitions,
                TopicReplication::Fixed(config.topic_replication),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, error = %code, "cannot create topic");
                });
            }
        }
    }
    Ok(())
}

/// Creates the topics, retrying while the broker is unreachable, until
/// `shutdown`. Services call this at start-up, so a stack can come up in any
/// order.
pub async fn ensure_topics_with_retry(
    config: &KafkaConfig,
    topics: &[String],
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), KafkaError> {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    loop {
        match ensure_topics(config, topics).await {
            Ok(()) => return Ok(()),
            Err(err) if shutdown.is_cancelled() => return Err(err),
            Err(err) => {
                tracing::warn!(error = %err, "cannot create topics yet; retrying");
            }
        }
        if backoff.pause(shutdown).await.is_err() {
            return Ok(());
        }
    }
}

/// Asks the broker for a topic's metadata: a cheap end-to-end check that
/// Kafka answers, for readiness probes.
pub async fn check_reachable(
    producer: &Producer,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), timeout)
            .map(|_| ())
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

pub use crate::backoff::Stopping;

/// A record to produce, with its headers.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRecord<'a> {
    /// Full topic name.
    pub topic: &'a str,
    /// Record key.
    pub key: &'a str,
    /// Record value.
    pub value: &'a [u8],
    /// Record headers.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Produces `record`, retrying with a growing pause until the broker
/// acknowledges it, or until `shutdown`. Herald never stores an offset whose
/// follow-up record (a delivery, a retry, a dead letter) was not
/// acknowledged, so a broker outage pauses the work instead of losing it.
pub async fn produce_until_acked(
    producer: &Producer,
    record: OutgoingRecord<'_>,
    queue_timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), Stopping> {
    use rdkafka::message::Header;
    use rdkafka::producer::FutureRecord;
    let mut backoff = Backoff::new(Duration::from_millis(100));
    loop {
        let headers = record.headers.iter().fold(
            crate::trace_context::kafka_headers(),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(*value),
                })
            },
        );
        let sent = producer
            .send(
                FutureRecord::to(record.topic)
                    .key(record.key)
                    .payload(record.value)
                    .headers(headers),
                queue_timeout,
            )
            .await;
        match sent {
            Ok(_) => return Ok(()),
            Err(err) => {
                tracing::warn!(topic = record.topic, error = %err, "record not acknowledged; retrying");
            }
        }
        backoff.pause(shutdown).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn consumer_setting(env: &Env, key: &str) -> Option<String> {
        let config = KafkaConfig::from_env(env).unwrap();
        consumer_config(&config, "group", "client", Duration::from_millis(100))
            .get(key)
            .map(str::to_owned)
    }

    #[test]
    fn a_full_prefetch_queue_is_looked_at_again_within_milliseconds() {
        // librdkafka's own default is 1,000 ms: a consumer behind a backlog
        // sat idle for most of each second.
        assert_eq!(
            consumer_setting(&Env::default(), "fetch.queue.backoff.ms").as_deref(),
            Some("10")
        );
        let env = Env::from_pairs([("HERALD_KAFKA_PROPERTIES", "fetch.queue.backoff.ms=250")]);
        assert_eq!(
            consumer_setting(&env, "fetch.queue.backoff.ms").as_deref(),
            Some("250"),
            "HERALD_KAFKA_PROPERTIES overrides Herald's choice"
        );
    }
}
