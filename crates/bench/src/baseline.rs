//! The baselines Herald is compared with, measured in the same run on the
//! same machine:
//!
//! - the broker: records of the event's size produced to one topic and
//!   consumed from it, with the same client settings Herald's own producers
//!   and consumers use (so the ratio isolates Herald's own work); and the
//!   same relayed through a second topic ([`Hops::Two`]), the floor of any
//!   pipeline with a topic between its stages;
//! - the receiver: how many bare HTTP POSTs per second it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_core::config::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::load::{self, MAX_FANOUT, Phase, PhaseResult, Source, WARM_UP_EVENTS};
use crate::receiver::{Arrival, Arrivals};

/// How many topics a baseline record passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hops {
    /// Produce to a topic, consume from it.
    One,
    /// Produce to a topic; a relay consumes it and produces each record to a
    /// second topic, which is consumed. Any pipeline with a topic between
    /// two stages (Herald's `herald.deliveries`) pays for this at least.
    Two,
}

/// Longest a phase's warm-up may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `phase` through bare topics: produce, consume (and relay), nothing
/// else. The record of event `n` counts as arrived at "endpoint" `n % 10`,
/// so the phase's bookkeeping is the same as for Herald with fan-out 1.
/// Also returns this process's CPU per record over the phase (its warm-up
/// aside): what the Kafka client's produce and consume (and the relay's)
/// cost with Herald's settings, the floor under Herald's own stages.
pub async fn broker_phase(
    kafka: &KafkaConfig,
    topic: &str,
    hops: Hops,
    phase: &Phase,
) -> Result<(PhaseResult, f64), String> {
    let relayed = format!("{topic}.relayed");
    let topics = match hops {
        Hops::One => vec![topic.to_owned()],
        Hops::Two => vec![topic.to_owned(), relayed.clone()],
    };
    herald_core::kafka::ensure_topics(kafka, &topics)
        .await
        .map_err(|e| format!("creating {topics:?}: {e}"))?;
    let last = topics.last().expect("one topic at least");
    let producer = herald_core::kafka::producer_config(kafka, "herald-bench")
        .create::<FutureProducer>()
        .map_err(|e| format!("producer: {e}"))?;
    let relay = match hops {
        Hops::One => None,
        Hops::Two => Some(tokio::spawn(relay(
            assigned_consumer(kafka, topic).await?,
            producer.clone(),
            relayed.clone(),
        ))),
    };
    let consumer = assigned_consumer(kafka, last).await?;
    let arrivals = Arc::new(Arrivals::default());
    let reader = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    continue;
                };
                let at = Instant::now();
                // Keys are event ids, `<phase prefix>-<n>`.
                let Some((event_id, n)) = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| Some((k, k.rsplit_once('-')?.1.parse::<usize>().ok()?)))
                else {
                    continue;
                };
                arrivals.push(Arrival {
                    endpoint: n % MAX_FANOUT,
                    event_id: event_id.to_owned(),
                    at,
                });
            }
        })
    };
    let source = Source::Kafka {
        producer,
        topic: topic.to_owned(),
    };
    // Warm up first, as every Herald mode does: a fresh producer fetches its
    // producer id and the topic's metadata, and fresh consumers their first
    // offsets. Records sent meanwhile wait up to a second, which is start-up,
    // not the broker's rate or latency; measured, it cut the broker's
    // flat-out rate to a third.
    let warm_up = Phase {
        label: format!("{} warm-up", phase.label),
        id_prefix: format!("{}-warm", phase.id_prefix),
        events: WARM_UP_EVENTS,
        rate: None,
        // Twenty records take well under a second; a start-up that takes
        // this long has failed, and should say so rather than hold the run.
        timeout: phase.timeout.min(WARM_UP_TIMEOUT),
        ..phase.clone()
    };
    let result = match load::run_phase(&warm_up, &source, &arrivals).await {
        Ok(_) => {
            let before = crate::herald::usage(std::process::id()).cpu_seconds;
            load::run_phase(phase, &source, &arrivals)
                .await
                .map(|result| {
                    let cpu = crate::herald::usage(std::process::id()).cpu_seconds - before;
                    let per_record = 1e6 * cpu / result.delivered.max(1) as f64;
                    (result, per_record)
                })
        }
        Err(err) => Err(err),
    };
    reader.abort();
    if let Some(relay) = relay {
        relay.abort();
    }
    result
}

/// A consumer reading every partition of `topic` from the beginning, with
/// Herald's consumer settings. It reads the partitions directly, not as a
/// group: a group's join only adds start-up time, and the fetch path is the
/// same.
async fn assigned_consumer(kafka: &KafkaConfig, topic: &str) -> Result<StreamConsumer, String> {
    assigned_consumer_at(kafka, topic, Offset::Beginning).await
}

/// [`assigned_consumer`] from `start` in every partition.
async fn assigned_consumer_at(
    kafka: &KafkaConfig,
    topic: &str,
    start: Offset,
) -> Result<StreamConsumer, String> {
    let consumer: StreamConsumer = herald_core::kafka::consumer_config(
        kafka,
        &format!("{topic}.reader"),
        "herald-bench",
        kafka.hot_fetch_wait,
    )
    .create()
    .map_err(|e| format!("consumer: {e}"))?;
    // A topic created a moment ago can be missing from the broker's
    // metadata, or show no partitions yet, for a little while.
    let deadline = Instant::now() + Duration::from_secs(10);
    let partitions = loop {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| format!("metadata of {topic}: {e}"))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions > 0 {
            break partitions;
        }
        if Instant::now() >= deadline {
            return Err(format!("{topic} has no partitions"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    Ok(consumer)
}

/// A plain reader of a topic of Herald's, beside Herald's own consumers:
/// how long the broker takes to hand a record over under the same load,
/// from the record's timestamp to its arrival here.
pub struct HopWatch {
    reader: tokio::task::JoinHandle<()>,
    waits_ms: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl HopWatch {
    /// Starts reading `topic` from its end.
    pub async fn start(kafka: &KafkaConfig, topic: &str) -> Result<HopWatch, String> {
        let consumer = assigned_consumer_at(kafka, topic, Offset::End).await?;
        let waits_ms = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let waits_ms = waits_ms.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(message) = consumer.recv().await else {
                        continue;
                    };
                    let now_ms = herald_core::event::unix_millis(time::OffsetDateTime::now_utc());
                    if let Some(written_ms) = message.timestamp().to_millis() {
                        waits_ms
                            .lock()
                            .expect("hop watch lock")
                            .push((now_ms - written_ms).max(0) as f64);
                    }
                }
            })
        };
        // The assignment takes effect with the first fetch.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(HopWatch { reader, waits_ms })
    }

    /// Stops reading; the waits' percentiles.
    pub fn finish(self) -> load::Percentiles {
        self.reader.abort();
        let waits = std::mem::take(&mut *self.waits_ms.lock().expect("hop watch lock"));
        load::Percentiles::of(waits)
    }
}

/// Produces every record `consumer` reads to `to`, with its key, as fan-out
/// does with events (without its lookups): the sends are not awaited one by
/// one, so the relay keeps reading while the broker acknowledges.
async fn relay(consumer: StreamConsumer, producer: FutureProducer, to: String) {
    loop {
        let Ok(message) = consumer.recv().await else {
            continue;
        };
        let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
        let value = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let (producer, to) = (producer.clone(), to.clone());
        tokio::spawn(async move {
            let record = FutureRecord::to(&to).key(&key).payload(&value);
            if let Err((err, _)) = producer.send(record, Duration::from_secs(30)).await {
                eprintln!("relay: a record was not acknowledged: {err}");
            }
        });
    }
}

/// The receiver's own limit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReceiverBaseline {
    /// POSTs answered per second.
    pub posts_per_s: f64,
    /// This process's CPU per POST: the client's and, with the built-in
    /// receiver, the receiver's too.
    pub cpu_us_per_post: f64,
    /// Connections used.
    pub concurrency: usize,
}

/// Posts `body`-sized requests to `url` (the built-in receiver's bare
/// route, or `--target-url`) for `duration` from `concurrency` keep-alive
/// connections; over https trusting the test CA when `tls`.
pub async fn receiver(
    url: String,
    body_size: usize,
    concurrency: usize,
    duration: Duration,
    tls: bool,
) -> Result<ReceiverBaseline, String> {
    let mut http = reqwest::Client::builder().pool_max_idle_per_host(concurrency);
    if tls {
        let ca = std::fs::read(crate::receiver::tls_file("ca.pem"))
            .map_err(|e| format!("the test CA: {e}"))?;
        http = http
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?);
    }
    let http = http.build().map_err(|e| e.to_string())?;
    let body = load::event_json(crate::herald::BENCH_APP, "baseline", "bench.raw", body_size);
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_before = crate::herald::usage(std::process::id()).cpu_seconds;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, body, url, answered) =
                (http.clone(), body.clone(), url.clone(), answered.clone());
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|e| format!("POST {url}: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!("POST {url}: {}", response.status()));
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for worker in futures::future::join_all(workers).await {
        worker.map_err(|e| e.to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::herald::usage(std::process::id()).cpu_seconds - cpu_before;
    let posts = answered.load(Ordering::Relaxed);
    Ok(ReceiverBaseline {
        posts_per_s: posts as f64 / seconds,
        cpu_us_per_post: 1e6 * cpu / posts.max(1) as f64,
        concurrency,
    })
}
