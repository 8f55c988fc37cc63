//! Driving events into Herald (or into a bare topic) and watching them come
//! out: one [`Phase`] is a numbered batch of events, sent flat out or at a
//! fixed rate, and the deliveries the receiver must see for them.
//!
//! Event `n` of a phase has the id `<phase prefix>-<n>`; the receiver reports
//! every verified webhook with that id, so the phase knows exactly which
//! (event, endpoint) pairs arrived, which are missing and which came twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::herald::Api;
use crate::receiver::Arrivals;

/// Most endpoints one event may reach in the benchmark.
pub const MAX_FANOUT: usize = 10;

/// Events of the phase that precedes every measured one (Herald's and the
/// baselines' alike), so that start-up is not measured.
pub const WARM_UP_EVENTS: usize = 20;

/// The event JSON for event `id` of application `app`, padded so that the
/// whole record is about `size` bytes (the same bytes go to the broker
/// baseline).
pub fn event_json(app: &str, id: &str, event_type: &str, size: usize) -> Vec<u8> {
    let bare = format!(
        r#"{{"application":"{app}","id":"{id}","type":"{event_type}","payload":{{"pad":""}}}}"#
    );
    let pad = "x".repeat(size.saturating_sub(bare.len()));
    format!(
        r#"{{"application":"{app}","id":"{id}","type":"{event_type}","payload":{{"pad":"{pad}"}}}}"#
    )
    .into_bytes()
}

/// How a phase hands its events over.
#[derive(Clone)]
pub enum Source {
    /// Produced straight to a topic.
    Kafka {
        /// The producer.
        producer: FutureProducer,
        /// The topic.
        topic: String,
    },
    /// `POST /v1/events` (or `POST /v1/events/batch`, `batch` events a
    /// request, when `batch` > 1), from `concurrency` connections at once.
    Http {
        /// Herald's API.
        api: Api,
        /// Requests in flight at once.
        concurrency: usize,
        /// Events per request.
        batch: usize,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kafka { topic, .. } => write!(f, "Kafka({topic})"),
            Source::Http {
                api,
                concurrency,
                batch,
            } => write!(f, "Http({}, {concurrency}, {batch})", api.base_url),
        }
    }
}

/// One batch of events and what must arrive for it.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What the progress line calls it.
    pub label: String,
    /// Prefix of its event ids; unique per run.
    pub id_prefix: String,
    /// Number of events.
    pub events: usize,
    /// Events per second, or flat out.
    pub rate: Option<f64>,
    /// Record size in bytes.
    pub size: usize,
    /// `true`: event `n` goes to endpoint `n % 10` only (type
    /// `bench.one.<n % 10>`); `false`: to all ten (type `bench.all`).
    pub fan_out_one: bool,
    /// Endpoints that answer 500; their deliveries are not waited for.
    pub dead: Vec<usize>,
    /// How long to wait for the last delivery.
    pub timeout: Duration,
    /// `None`: every event is for the benchmark application and its ten
    /// endpoints (receiver endpoints 0–9). `Some`: events are spread over
    /// many applications, each with ten endpoints of its own (the `apps`
    /// mode; `fan_out_one` must be set).
    pub spread: Option<Arc<Spread>>,
}

/// Events spread over many applications with a Zipf skew (s = 1): the
/// application of rank `r` gets a share proportional to `1 / (r + 1)`, so a
/// few are busy and most are quiet (with 10,000 applications the busiest
/// gets 10 % of the events, the top 100 half, and the rest are seen a few
/// times each, or never). Application `a`'s endpoint `k` is receiver
/// endpoint `first_endpoint + 10 a + k`, subscribed to `bench.one.<k>` and
/// `bench.all`.
#[derive(Debug)]
pub struct Spread {
    /// Application ids, busiest first.
    pub apps: Vec<String>,
    /// Receiver index of application 0's endpoint 0.
    pub first_endpoint: usize,
    /// Cumulative shares of the applications, rising to 1.
    cumulative: Vec<f64>,
    /// Which sample of the skew a phase draws: phases with different
    /// samples send their events to different quiet applications.
    sample: u64,
}

impl Spread {
    /// The Zipf spread over `apps`, busiest first.
    pub fn zipf(apps: Vec<String>, first_endpoint: usize) -> Spread {
        let weights: Vec<f64> = (0..apps.len()).map(|r| 1.0 / (r + 1) as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        Spread {
            apps,
            first_endpoint,
            cumulative,
            sample: 0,
        }
    }

    /// The same applications and skew, another sample of it.
    pub fn resampled(&self, sample: u64) -> Spread {
        Spread {
            apps: self.apps.clone(),
            first_endpoint: self.first_endpoint,
            cumulative: self.cumulative.clone(),
            sample,
        }
    }

    /// The application (index) event `n` is for: the same for the same `n`
    /// and sample in every run.
    pub fn app_of(&self, n: usize) -> usize {
        let x = splitmix64(n as u64 ^ self.sample.rotate_left(40));
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative
            .partition_point(|c| *c < u)
            .min(self.apps.len() - 1)
    }

    /// Receiver index of application `app`'s endpoint `k`.
    pub fn endpoint(&self, app: usize, k: usize) -> usize {
        self.first_endpoint + app * MAX_FANOUT + k
    }

    /// Number of endpoints (ten per application).
    pub fn endpoints(&self) -> usize {
        self.apps.len() * MAX_FANOUT
    }
}

/// A well-mixed 64-bit hash of `x` (SplitMix64's finaliser): spreads
/// consecutive numbers evenly.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Phase {
    /// The application event `n` is addressed to.
    fn app(&self, n: usize) -> &str {
        match &self.spread {
            Some(spread) => &spread.apps[spread.app_of(n)],
            None => crate::herald::BENCH_APP,
        }
    }

    /// The record key of event `n` (whose id is `id`) in `herald.events`:
    /// the application id, as the README tells producers, when events are
    /// spread over applications. The benchmark application's events are
    /// keyed by event id, so that one application's phase uses every
    /// partition.
    fn key<'a>(&'a self, n: usize, id: &'a str) -> &'a str {
        if self.spread.is_some() {
            self.app(n)
        } else {
            id
        }
    }

    fn event_type(&self, n: usize) -> String {
        if self.fan_out_one {
            format!("bench.one.{}", n % MAX_FANOUT)
        } else {
            "bench.all".to_owned()
        }
    }

    /// The deliveries event `n` must make, as slots `0..MAX_FANOUT`: the
    /// ten endpoints of its application, of which it goes to one or all.
    fn targets(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let slots = if self.fan_out_one {
            n % MAX_FANOUT..n % MAX_FANOUT + 1
        } else {
            0..MAX_FANOUT
        };
        slots.filter(|slot| !self.dead.contains(slot))
    }

    /// The slot of a webhook of event `n` that reached receiver endpoint
    /// `endpoint`, or `None` when it went to an endpoint of another
    /// application.
    fn slot_of(&self, n: usize, endpoint: usize) -> Option<usize> {
        match &self.spread {
            Some(spread) => {
                let first = spread.endpoint(spread.app_of(n), 0);
                (first..first + MAX_FANOUT)
                    .contains(&endpoint)
                    .then(|| endpoint - first)
            }
            None => (endpoint < MAX_FANOUT).then_some(endpoint),
        }
    }

    fn expected(&self) -> usize {
        (0..self.events).map(|n| self.targets(n).count()).sum()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Percentiles {
    /// Percentiles of `samples` (in milliseconds).
    pub fn of(mut samples: Vec<f64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Percentiles {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1],
            samples: samples.len(),
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Events sent.
    pub events: usize,
    /// Events handed over per second (until the last was acknowledged).
    pub accepted_per_s: f64,
    /// Deliveries that had to arrive.
    pub expected: usize,
    /// Distinct (event, endpoint) pairs that arrived with a valid signature.
    pub delivered: usize,
    /// Deliveries that arrived more than once (extra copies).
    pub duplicates: usize,
    /// Deliveries per second: distinct deliveries over the time from the
    /// first event handed over to the last delivery's arrival.
    pub delivered_per_s: f64,
    /// From handing an event over to its webhook's arrival.
    pub latency: Percentiles,
    /// From handing an event over to its acknowledgement (the broker's, or
    /// ingest's `202`).
    pub accept_latency: Percentiles,
    /// Wall-clock seconds from the first event to the last arrival.
    pub seconds: f64,
}

/// Hand-over times of a phase's events, as the senders record them.
#[derive(Debug)]
struct Handover {
    sent: Vec<Option<Instant>>,
    acked: Vec<Option<Instant>>,
}

impl Handover {
    fn new(events: usize) -> Arc<Mutex<Handover>> {
        Arc::new(Mutex::new(Handover {
            sent: vec![None; events],
            acked: vec![None; events],
        }))
    }

    /// When the first event was handed over (`or` if none was).
    fn first_sent(&self, or: Instant) -> Instant {
        self.sent.iter().flatten().min().copied().unwrap_or(or)
    }

    /// Events acknowledged per second, from the first hand-over.
    fn accepted_per_s(&self, or: Instant) -> f64 {
        let last_acked = self.acked.iter().flatten().max().copied().unwrap_or(or);
        self.sent.len() as f64
            / last_acked
                .duration_since(self.first_sent(or))
                .as_secs_f64()
                .max(1e-6)
    }

    /// From hand-over to acknowledgement, per event.
    fn accept_latency(&self) -> Percentiles {
        Percentiles::of(
            self.sent
                .iter()
                .zip(&self.acked)
                .filter_map(|(sent, acked)| {
                    Some(acked.as_ref()?.saturating_duration_since(*sent.as_ref()?))
                })
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect(),
        )
    }
}

/// Takes the sender's result once it has finished.
async fn collect_sender(
    sender: &mut Option<tokio::task::JoinHandle<Result<(), String>>>,
    label: &str,
) -> Result<(), String> {
    if let Some(task) = sender.as_ref()
        && task.is_finished()
    {
        sender
            .take()
            .expect("sender present")
            .await
            .map_err(|e| format!("{label}: sender failed: {e}"))??;
    }
    Ok(())
}

/// Runs `phase` through `source` and waits for its deliveries to show up in
/// `arrivals`.
pub async fn run_phase(
    phase: &Phase,
    source: &Source,
    arrivals: &Arrivals,
) -> Result<PhaseResult, String> {
    let handover = Handover::new(phase.events);
    let cursor_start = arrivals.count();
    let sender = tokio::spawn(send_all(phase.clone(), source.clone(), handover.clone()));
    let expected = phase.expected();
    let mut arrived: Vec<Option<Instant>> = vec![None; phase.events * MAX_FANOUT];
    let (mut delivered, mut duplicates) = (0usize, 0usize);
    let mut cursor = cursor_start;
    let id_prefix = format!("{}-", phase.id_prefix);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut sender = Some(sender);
    loop {
        let fresh = arrivals.since(cursor);
        cursor += fresh.len();
        for arrival in fresh {
            let Some(n) = arrival
                .event_id
                .strip_prefix(&id_prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n < phase.events)
            else {
                continue;
            };
            let Some(slot) = phase.slot_of(n, arrival.endpoint) else {
                return Err(format!(
                    "{}: event {} of application {} reached receiver endpoint {}, \
                     which is not one of its application's",
                    phase.label,
                    arrival.event_id,
                    phase.app(n),
                    arrival.endpoint
                ));
            };
            let seen = &mut arrived[n * MAX_FANOUT + slot];
            match seen {
                Some(_) => duplicates += 1,
                None => {
                    *seen = Some(arrival.at);
                    if !phase.dead.contains(&slot) {
                        delivered += 1;
                    }
                }
            }
        }
        collect_sender(&mut sender, &phase.label).await?;
        if delivered >= expected && sender.is_none() {
            break;
        }
        if started.elapsed() > phase.timeout {
            let mut missing_per_slot = [0usize; MAX_FANOUT];
            for n in 0..phase.events {
                for slot in phase.targets(n) {
                    if arrived[n * MAX_FANOUT + slot].is_none() {
                        missing_per_slot[slot] += 1;
                    }
                }
            }
            return Err(format!(
                "{}: {} of {expected} webhooks arrived within {:?}; missing per endpoint \
                 (of each application's ten): {:?}",
                phase.label, delivered, phase.timeout, missing_per_slot
            ));
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let accepted = handover
                .lock()
                .expect("handover lock")
                .acked
                .iter()
                .flatten()
                .count();
            eprintln!(
                "  {:<28} accepted {accepted:>7}/{}  delivered {delivered:>7}/{expected}  ({:.0}/s)",
                phase.label,
                phase.events,
                delivered as f64 / started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let handover = handover.lock().expect("handover lock");
    let first_sent = handover.first_sent(started);
    let mut latencies = Vec::with_capacity(expected);
    let mut last_arrival = first_sent;
    for n in 0..phase.events {
        let Some(sent) = handover.sent[n] else {
            continue;
        };
        for slot in phase.targets(n) {
            if let Some(at) = arrived[n * MAX_FANOUT + slot] {
                latencies.push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                last_arrival = last_arrival.max(at);
            }
        }
    }
    let seconds = last_arrival
        .duration_since(first_sent)
        .as_secs_f64()
        .max(1e-6);
    Ok(PhaseResult {
        events: phase.events,
        accepted_per_s: handover.accepted_per_s(started),
        expected,
        delivered,
        duplicates,
        delivered_per_s: delivered as f64 / seconds,
        latency: Percentiles::of(latencies),
        accept_latency: handover.accept_latency(),
        seconds,
    })
}

async fn send_all(
    phase: Phase,
    source: Source,
    handover: Arc<Mutex<Handover>>,
) -> Result<(), String> {
    let started = Instant::now();
    let due = move |n: usize| phase_due(started, phase.rate, n);
    match source {
        Source::Kafka { producer, topic } => {
            let mut in_flight = FuturesUnordered::new();
            for n in 0..phase.events {
                if let Some(due) = due(n) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = format!("{}-{n}", phase.id_prefix);
                let value = event_json(phase.app(n), &id, &phase.event_type(n), phase.size);
                let sent = Instant::now();
                let mut record = FutureRecord::to(&topic)
                    .key(phase.key(n, &id))
                    .payload(&value);
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            // The producer's queue is full: let some of what
                            // is in flight be acknowledged first.
                            match in_flight.next().await {
                                Some(done) => record_ack(&handover, done)?,
                                None => tokio::time::sleep(Duration::from_millis(5)).await,
                            }
                        }
                        Err((err, _)) => return Err(format!("produce {id}: {err}")),
                    }
                };
                handover.lock().expect("handover lock").sent[n] = Some(sent);
                in_flight.push(async move { (n, delivery.await) });
                // Collect acknowledgements that are already in.
                while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
                    record_ack(&handover, done)?;
                }
            }
            while let Some(done) = in_flight.next().await {
                record_ack(&handover, done)?;
            }
            Ok(())
        }
        Source::Http {
            api,
            concurrency,
            batch,
        } => {
            let batch = batch.max(1);
            let next = Arc::new(AtomicUsize::new(0));
            let workers = (0..concurrency.max(1)).map(|_| {
                let (api, next, handover, phase) =
                    (api.clone(), next.clone(), handover.clone(), phase.clone());
                tokio::spawn(async move {
                    loop {
                        let first = next.fetch_add(batch, Ordering::Relaxed);
                        if first >= phase.events {
                            return Ok::<(), String>(());
                        }
                        if let Some(due) = phase_due(started, phase.rate, first) {
                            tokio::time::sleep_until(due.into()).await;
                        }
                        let events = first..(first + batch).min(phase.events);
                        let event = |n: usize| {
                            let id = format!("{}-{n}", phase.id_prefix);
                            event_json(phase.app(n), &id, &phase.event_type(n), phase.size)
                        };
                        let sent = Instant::now();
                        if batch == 1 {
                            let (status, text) = api.post("/v1/events", event(first)).await?;
                            if status != 202 {
                                return Err(format!("POST /v1/events: {status} {text}"));
                            }
                        } else {
                            let mut body = b"{\"events\":[".to_vec();
                            for n in events.clone() {
                                if n > first {
                                    body.push(b',');
                                }
                                body.extend(event(n));
                            }
                            body.extend(b"]}");
                            let (status, text) = api.post("/v1/events/batch", body).await?;
                            let accepted = serde_json::from_str::<serde_json::Value>(&text)
                                .ok()
                                .and_then(|answer| answer["accepted"].as_u64());
                            if status != 200 || accepted != Some(events.len() as u64) {
                                return Err(format!("POST /v1/events/batch: {status} {text}"));
                            }
                        }
                        let mut handover = handover.lock().expect("handover lock");
                        let acked = Instant::now();
                        for n in events {
                            handover.sent[n] = Some(sent);
                            handover.acked[n] = Some(acked);
                        }
                    }
                })
            });
            for worker in futures::future::join_all(workers).await {
                worker.map_err(|e| format!("HTTP sender failed: {e}"))??;
            }
            Ok(())
        }
    }
}

type Acked = (
    usize,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

fn record_ack(handover: &Mutex<Handover>, (n, result): Acked) -> Result<(), String> {
    match result {
        Ok(Ok(_)) => {
            handover.lock().expect("handover lock").acked[n] = Some(Instant::now());
            Ok(())
        }
        Ok(Err((err, _))) => Err(format!("event {n} not acknowledged: {err}")),
        Err(_) => Err(format!("event {n}: producer went away")),
    }
}

/// When event `n` is due at `rate` events per second (`None`: now).
fn phase_due(started: Instant, rate: Option<f64>, n: usize) -> Option<Instant> {
    rate.map(|rate| started + Duration::from_secs_f64(n as f64 / rate))
}

/// Where a phase's deliveries are seen.
#[derive(Debug, Clone, Copy)]
pub enum Tally<'a> {
    /// The benchmark's own receiver: every webhook's id and signature.
    Receiver(&'a Arrivals),
    /// An endpoint the benchmark does not run (`--target-url`): the
    /// dispatchers' own figures, read from their `/metrics` (ops
    /// addresses): deliveries answered 2xx and the end-to-end histogram.
    /// Nothing is known of ids or signatures there.
    Metrics(&'a [String]),
}

/// Runs `phase` through `source` and waits for its deliveries.
pub async fn run(phase: &Phase, source: &Source, tally: Tally<'_>) -> Result<PhaseResult, String> {
    match tally {
        Tally::Receiver(arrivals) => run_phase(phase, source, arrivals).await,
        Tally::Metrics(ops) => run_counted(phase, source, ops).await,
    }
}

/// What the dispatchers' `/metrics` say, summed over them.
#[derive(Debug, Clone, Default)]
struct Scrape {
    /// `herald_deliveries_total{outcome="delivered"}`.
    delivered: f64,
    /// `herald_delivery_end_to_end_seconds_bucket`: (upper bound in
    /// seconds, cumulative count), in bucket order.
    buckets: Vec<(f64, f64)>,
}

async fn scrape(http: &reqwest::Client, ops: &[String]) -> Result<Scrape, String> {
    let mut total = Scrape::default();
    for addr in ops {
        let text = metrics_text(http, addr).await?;
        for line in text.lines() {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(value) = value.parse::<f64>()
                && series.starts_with("herald_deliveries_total{")
                && series.contains("outcome=\"delivered\"")
            {
                total.delivered += value;
            }
        }
        add_buckets(
            &mut total.buckets,
            buckets_of(&text, "herald_delivery_end_to_end_seconds"),
        );
    }
    Ok(total)
}

async fn metrics_text(http: &reqwest::Client, addr: &str) -> Result<String, String> {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| format!("reading {addr}/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("reading {addr}/metrics: {e}"))
}

/// The buckets of histogram `name` in a `/metrics` text: (upper bound in
/// seconds, cumulative count), in bucket order.
fn buckets_of(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            Some((le, value.parse().ok()?))
        })
        .collect()
}

/// Adds one process's buckets to a sum over processes.
fn add_buckets(total: &mut Vec<(f64, f64)>, buckets: Vec<(f64, f64)>) {
    if total.is_empty() {
        *total = buckets;
    } else {
        for (sum, (_, count)) in total.iter_mut().zip(buckets) {
            sum.1 += count;
        }
    }
}

/// Histograms of Herald's processes, summed over the processes that have
/// them, read from their `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Histograms(Vec<(&'static str, Vec<(f64, f64)>)>);

impl Histograms {
    /// Reads `names` from every process in `ops`.
    pub async fn read(ops: &[String], names: &[&'static str]) -> Result<Self, String> {
        let http = reqwest::Client::new();
        let mut read: Vec<_> = names.iter().map(|name| (*name, Vec::new())).collect();
        for addr in ops {
            let text = metrics_text(&http, addr).await?;
            for (name, total) in &mut read {
                add_buckets(total, buckets_of(&text, name));
            }
        }
        Ok(Self(read))
    }

    /// Each histogram's percentiles over what was observed since `before`.
    pub fn since(&self, before: &Histograms) -> Vec<(String, Percentiles)> {
        self.0
            .iter()
            .map(|(name, after)| {
                let earlier = before
                    .0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(&[][..], |(_, b)| b.as_slice());
                (name.to_string(), histogram_percentiles(earlier, after))
            })
            .collect()
    }
}

/// Percentiles from the growth of a cumulative histogram, interpolated
/// within buckets as Prometheus's `histogram_quantile` does; the top
/// finite bound stands for anything above it.
fn histogram_percentiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Percentiles {
    let grown: Vec<(f64, f64)> = after
        .iter()
        .zip(before.iter().map(|b| b.1).chain(std::iter::repeat(0.0)))
        .map(|((le, count), was)| (*le, count - was))
        .collect();
    let total = grown.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return Percentiles::default();
    }
    let top = grown
        .iter()
        .rev()
        .find(|b| b.0.is_finite())
        .map_or(0.0, |b| b.0);
    let at = |q: f64| {
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in &grown {
            if *count >= rank {
                if !le.is_finite() {
                    return top * 1000.0;
                }
                let share = if *count > below {
                    (rank - below) / (count - below)
                } else {
                    1.0
                };
                return (lower + (le - lower) * share) * 1000.0;
            }
            (lower, below) = (*le, *count);
        }
        top * 1000.0
    };
    Percentiles {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        samples: total as usize,
    }
}

/// [`run_phase`] for endpoints the benchmark does not run: waits until the
/// dispatchers have delivered the phase's webhooks (it cannot tell which
/// arrived, so `duplicates` counts deliveries beyond the expected ones).
async fn run_counted(
    phase: &Phase,
    source: &Source,
    ops: &[String],
) -> Result<PhaseResult, String> {
    let handover = Handover::new(phase.events);
    // One client for the whole phase: it scrapes every 100 ms.
    let http = reqwest::Client::new();
    let before = scrape(&http, ops).await?;
    let mut sender = Some(tokio::spawn(send_all(
        phase.clone(),
        source.clone(),
        handover.clone(),
    )));
    let expected = phase.expected();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut now = before.clone();
    let mut done_at = started;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = scrape(&http, ops).await?;
        if seen.delivered > now.delivered {
            done_at = Instant::now();
        }
        now = seen;
        collect_sender(&mut sender, &phase.label).await?;
        let delivered = (now.delivered - before.delivered) as usize;
        if delivered >= expected && sender.is_none() {
            break;
        }
        if started.elapsed() > phase.timeout {
            return Err(format!(
                "{}: the dispatchers delivered {delivered} of {expected} webhooks within {:?}",
                phase.label, phase.timeout
            ));
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "  {:<28} delivered {delivered:>7}/{expected} (dispatchers' count)",
                phase.label
            );
        }
    }
    let delivered = (now.delivered - before.delivered) as usize;
    let handover = handover.lock().expect("handover lock");
    let seconds = done_at
        .duration_since(handover.first_sent(started))
        .as_secs_f64()
        .max(1e-6);
    Ok(PhaseResult {
        events: phase.events,
        accepted_per_s: handover.accepted_per_s(started),
        expected,
        delivered: delivered.min(expected),
        duplicates: delivered.saturating_sub(expected),
        delivered_per_s: delivered.min(expected) as f64 / seconds,
        latency: histogram_percentiles(&before.buckets, &now.buckets),
        accept_latency: handover.accept_latency(),
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_interpolate_within_buckets() {
        let before = [
            (0.001, 0.0),
            (0.002, 0.0),
            (0.004, 0.0),
            (f64::INFINITY, 0.0),
        ];
        // 100 new samples: 50 up to 2 ms, 40 in (2, 4] ms, 10 above 4 ms.
        let after = [
            (0.001, 0.0),
            (0.002, 50.0),
            (0.004, 90.0),
            (f64::INFINITY, 100.0),
        ];
        let p = histogram_percentiles(&before, &after);
        assert_eq!(p.samples, 100);
        assert!((p.p50_ms - 2.0).abs() < 1e-9, "{p:?}");
        // Rank 95 is past the last finite bound: reported as that bound.
        assert!((p.p95_ms - 4.0).abs() < 1e-9, "{p:?}");
        // Nothing new: no figures.
        assert_eq!(histogram_percentiles(&after, &after).samples, 0);
        // All 100 in (2, 4] ms: the median is halfway through it.
        let mid = histogram_percentiles(
            &before,
            &[
                (0.001, 0.0),
                (0.002, 0.0),
                (0.004, 100.0),
                (f64::INFINITY, 100.0),
            ],
        );
        assert!((mid.p50_ms - 3.0).abs() < 1e-9, "{mid:?}");
    }
}
