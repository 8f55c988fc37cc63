//! The `apps` mode: Herald sending webhooks to many customers at once.
//!
//! It registers `--apps` applications (10,000 by default) with ten
//! endpoints each, through the API from many connections, or straight into
//! Redis with Herald's own stores (`--seed-directly`, for runs of a million
//! endpoints). Then it sends the fan-out 1 mode's number of events, flat
//! out and straight to `herald.events`, spread over every application with
//! a skew (see [`Spread`]), while ten endpoint changes a second happen
//! through the API: twice, first with caches as empty as after a start
//! (reported as the first pass), then the measured phase, with another
//! sample of the skew: the busy applications are known by then, and quiet
//! ones turn up that were never seen, as in a Herald that has been running
//! for a while. What it reports beside the phases' figures:
//!
//! - Redis's memory per endpoint (`used_memory` before and after the
//!   registration, over the endpoints registered; an application's own
//!   record is shared by its ten);
//! - fan-out's cache hit rate over the phase, from its `/metrics`;
//! - how long a change takes to reach fan-out: a probe adds an event type
//!   to an endpoint of a busy application (one fan-out holds in its cache,
//!   where a change has to be noticed rather than read afresh), then
//!   produces an event of that type every [`PROBE_EVERY`] until one is
//!   delivered; the time from the API's answer to the change to the sending
//!   of the first event delivered is the propagation time. Events produced
//!   straight to Kafka carry no application version, so this is the
//!   `HERALD_ENDPOINT_CACHE_REFRESH` bound at work (over HTTP, ingest's
//!   stamp makes a change apply to the very next event).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use herald_core::application::{Application, ApplicationStore};
use herald_core::config::RedisConfig;
use herald_core::endpoint::{Endpoint, EndpointStore};
use herald_core::redis_store::{self, Keys};
use herald_core::signing::Secret;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use serde_json::json;

use crate::herald::{self, Api};
use crate::load::{self, MAX_FANOUT, Percentiles, PhaseResult, Source, Spread, splitmix64};
use crate::report::{ModeReport, ProcessReport};
use crate::{Bench, Running};

/// Registration requests (or Redis writes) in flight at once.
const REGISTER_CONCURRENCY: usize = 64;

/// Endpoint changes per second while the phase runs.
const CHANGES_PER_S: f64 = 10.0;

/// Propagation probes, of which this many run at once.
const PROBES: usize = 50;
const PROBES_AT_ONCE: usize = 10;

/// How often a probe sends an event while it waits for its change to
/// apply: the resolution of the propagation figure.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// The busiest applications, whose endpoints the probes change.
const PROBED_APPS: usize = 50;

/// Longest a change may take to show before the benchmark fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Bench::measure_phases`] measured.
struct Measured {
    /// The cold pass.
    first_pass: PhaseResult,
    /// The measured phase.
    kafka: PhaseResult,
    /// Herald's processes over the measured phase.
    processes: Vec<ProcessReport>,
    /// Endpoint changes made during it.
    changes_during_phase: u64,
    /// Fan-out's cache hits in it.
    hits: u64,
    /// And misses.
    misses: u64,
    /// From a change's answer to the first event fanned out with it.
    propagation: Percentiles,
}

/// What the mode measured besides its phase (which is in its
/// [`ModeReport`]).
#[derive(Debug, Clone, Serialize)]
pub struct AppsReport {
    /// Applications registered.
    pub applications: usize,
    /// Endpoints registered (ten per application).
    pub endpoints: usize,
    /// `api` or `redis` (`--seed-directly`).
    pub registered_through: String,
    /// How long the registration took.
    pub registration_seconds: f64,
    /// Applications and endpoints registered per second.
    pub registrations_per_s: f64,
    /// The same number of events just after the registration, with the
    /// caches cold; the measured phase follows it.
    pub first_pass: PhaseResult,
    /// Growth of Redis's `used_memory` over the registration, per endpoint.
    pub redis_bytes_per_endpoint: f64,
    /// Fan-out's cache lookups during the phase answered from the cache.
    pub fanout_cache_hits: u64,
    /// Those read from Redis.
    pub fanout_cache_misses: u64,
    /// Hits over all lookups.
    pub fanout_cache_hit_rate: f64,
    /// Endpoint changes made while the phase ran.
    pub changes_during_phase: u64,
    /// Changes the API refused or failed (none should).
    pub failed_changes: u64,
    /// From a change's answer to the first event fanned out with it.
    pub propagation: Percentiles,
}

impl Bench {
    /// Runs the `apps` mode.
    pub(crate) async fn run_apps(&mut self) -> Result<(ModeReport, AppsReport), String> {
        let mode = "apps";
        eprintln!("mode {mode}: starting Herald with 1 dispatcher");
        let mut running = self.start_mode(mode, 1, Vec::new()).await?;
        let result = self.measure_apps(mode, &running).await;
        if result.is_err() {
            running.save_metrics().await;
        }
        for (_, process) in running.processes.iter_mut() {
            process.stop(Duration::from_secs(30));
        }
        result
    }

    async fn measure_apps(
        &self,
        mode: &str,
        running: &Running,
    ) -> Result<(ModeReport, AppsReport), String> {
        let apps = self.options.apps;
        let ids: Vec<String> = (0..apps).map(|a| format!("customer-{a:07}")).collect();
        // Each endpoint's secret is chosen here, so that the receiver knows
        // it before the endpoint exists, in the receiver's order.
        let first_endpoint = self.receiver.endpoints();
        let secrets: Vec<String> = (0..apps * MAX_FANOUT)
            .map(|_| {
                let secret = Secret::generate();
                let text = secret.expose();
                self.receiver.add_endpoint(secret);
                text
            })
            .collect();
        let spread = Arc::new(Spread::zipf(ids, first_endpoint));

        let memory_before = herald::redis_used_memory(&self.options.redis).await?;
        let started = Instant::now();
        let endpoint_ids = if self.options.seed_directly {
            eprintln!(
                "mode {mode}: writing {apps} applications and {} endpoints to Redis",
                spread.endpoints()
            );
            self.seed_redis(&spread, &secrets).await?
        } else {
            eprintln!(
                "mode {mode}: registering {apps} applications and {} endpoints through the API",
                spread.endpoints()
            );
            self.register_through_api(&running.api, &spread, &secrets)
                .await?
        };
        let registration_seconds = started.elapsed().as_secs_f64();
        let memory_after = herald::redis_used_memory(&self.options.redis).await?;
        let endpoint_ids = Arc::new(endpoint_ids);

        let fanout_ops = running
            .processes
            .iter()
            .find(|(name, _)| name == "herald-fanout")
            .and_then(|(_, p)| p.ops_addr())
            .ok_or("fan-out has no ops address")?
            .to_owned();
        let changes = Changes::start(running.api.clone(), spread.clone(), endpoint_ids.clone());
        let measured = self
            .measure_phases(mode, running, &spread, &endpoint_ids, &fanout_ops, &changes)
            .await;
        let failed_changes = changes.stop().await;
        let Measured {
            first_pass,
            kafka,
            mut processes,
            changes_during_phase,
            hits,
            misses,
            propagation,
        } = measured?;
        // Peak RSS over the whole mode, the probes included.
        let watched = self.watched(running);
        for (report, (_, pid)) in processes.iter_mut().zip(&watched) {
            report.peak_rss_mib = report.peak_rss_mib.max(herald::usage(*pid).peak_rss_mib);
        }

        let endpoints = spread.endpoints();
        let report = AppsReport {
            applications: apps,
            endpoints,
            registered_through: if self.options.seed_directly {
                "redis"
            } else {
                "api"
            }
            .to_owned(),
            registration_seconds,
            registrations_per_s: (apps + endpoints) as f64 / registration_seconds.max(1e-6),
            first_pass,
            redis_bytes_per_endpoint: memory_after.saturating_sub(memory_before) as f64
                / endpoints as f64,
            fanout_cache_hits: hits,
            fanout_cache_misses: misses,
            fanout_cache_hit_rate: hits as f64 / (hits + misses).max(1) as f64,
            changes_during_phase,
            failed_changes,
            propagation,
        };
        let mode_report = ModeReport {
            name: mode.to_owned(),
            dispatchers: 1,
            fan_out: 1,
            dead_endpoints: 0,
            dead_endpoint_requests: 0,
            kafka,
            all_healthy: None,
            http: None,
            http_batch: None,
            http_cost: None,
            http_batch_cost: None,
            latency: None,
            latency_split: None,
            processes,
            attempt_log: None,
            redis_commands: Vec::new(),
        };
        Ok((mode_report, report))
    }

    /// The two passes, with the changes going on, and the probes.
    async fn measure_phases(
        &self,
        mode: &str,
        running: &Running,
        spread: &Arc<Spread>,
        endpoint_ids: &[String],
        fanout_ops: &str,
        changes: &Changes,
    ) -> Result<Measured, String> {
        let mut first_pass = self.phase(mode, "cold", self.options.deliveries, true);
        first_pass.spread = Some(spread.clone());
        let first_pass = load::run(&first_pass, &running.kafka_source, self.tally(running)).await?;
        let (hits_before, misses_before) = cache_counts(fanout_ops).await?;
        let changes_before = changes.made();
        let mut phase = self.phase(mode, "kafka", self.options.deliveries, true);
        phase.spread = Some(Arc::new(spread.resampled(1)));
        let watched = self.watched(running);
        let before = herald::usages(&watched);
        let kafka = load::run(&phase, &running.kafka_source, self.tally(running)).await?;
        let processes = ProcessReport::since(&watched, before, kafka.seconds, kafka.delivered);
        let changes_during_phase = changes.made() - changes_before;
        let (hits_after, misses_after) = cache_counts(fanout_ops).await?;

        let probes = if self.options.smoke { 3 } else { PROBES };
        eprintln!("mode {mode}: {probes} changes, each until fan-out applies it");
        let propagation = self
            .probe_propagation(running, spread, endpoint_ids, probes)
            .await?;
        Ok(Measured {
            first_pass,
            kafka,
            processes,
            changes_during_phase,
            hits: hits_after - hits_before,
            misses: misses_after - misses_before,
            propagation,
        })
    }

    /// Registers the applications, then their endpoints, through the API;
    /// returns the endpoint ids in the spread's order.
    async fn register_through_api(
        &self,
        api: &Api,
        spread: &Spread,
        secrets: &[String],
    ) -> Result<Vec<String>, String> {
        futures::stream::iter(spread.apps.iter().enumerate())
            .map(|(a, id)| async move {
                let body = json!({ "id": id, "name": format!("Customer {a}") });
                let (status, text) = api
                    .post("/v1/applications", body.to_string().into_bytes())
                    .await?;
                if status != 201 {
                    return Err(format!("creating application {id}: {status} {text}"));
                }
                Ok(())
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let done = AtomicU64::new(0);
        let mut registered: Vec<(usize, String)> = futures::stream::iter(0..spread.endpoints())
            .map(|j| {
                let (app, k) = (&spread.apps[j / MAX_FANOUT], j % MAX_FANOUT);
                let body = json!({
                    "url": self.receiver.endpoint_url(spread.first_endpoint + j),
                    "event_types": [format!("bench.one.{k}"), "bench.all"],
                    "secret": secrets[j],
                });
                let done = &done;
                async move {
                    let answer = api.create_endpoint(app, &body).await?;
                    let id = answer["id"]
                        .as_str()
                        .ok_or_else(|| format!("no id in {answer}"))?
                        .to_owned();
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, spread.endpoints());
                    Ok::<_, String>((j, id))
                }
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .try_collect()
            .await?;
        registered.sort_unstable_by_key(|(j, _)| *j);
        Ok(registered.into_iter().map(|(_, id)| id).collect())
    }

    /// Writes the applications and endpoints straight into Redis through
    /// Herald's own stores (what the API calls after its checks); returns
    /// the endpoint ids in the spread's order.
    async fn seed_redis(&self, spread: &Spread, secrets: &[String]) -> Result<Vec<String>, String> {
        let redis = redis_store::connect(&RedisConfig {
            url: self.options.redis.clone(),
            key_prefix: self.redis_prefix(),
            timeout: Duration::from_secs(10),
        })
        .map_err(|e| format!("Redis: {e}"))?;
        let keys = Keys::new(self.redis_prefix());
        let applications = ApplicationStore::new(redis.clone(), keys.clone());
        let endpoint_store = EndpointStore::new(redis, keys);
        let now = time::OffsetDateTime::now_utc();
        let (now_text, now_ms) = (
            herald_core::event::format_timestamp(now),
            herald_core::event::unix_millis(now),
        );
        futures::stream::iter(spread.apps.iter().enumerate())
            .map(|(a, id)| {
                let app = Application {
                    id: id.clone(),
                    name: format!("Customer {a}"),
                    metadata: Default::default(),
                    rate_limit: None,
                    created_at: now_text.clone(),
                    updated_at: now_text.clone(),
                };
                let applications = &applications;
                async move {
                    match applications.create(&app, now_ms).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(format!("application {} exists already", app.id)),
                        Err(err) => Err(format!("creating application {}: {err}", app.id)),
                    }
                }
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let done = AtomicU64::new(0);
        let ids: Vec<String> = (0..spread.endpoints())
            .map(|_| herald_core::event::new_endpoint_id())
            .collect();
        futures::stream::iter(0..spread.endpoints())
            .map(|j| {
                let endpoint = Endpoint {
                    id: ids[j].clone(),
                    application_id: spread.apps[j / MAX_FANOUT].clone(),
                    url: self.receiver.endpoint_url(spread.first_endpoint + j),
                    event_types: vec![format!("bench.one.{}", j % MAX_FANOUT), "bench.all".into()],
                    description: String::new(),
                    headers: Default::default(),
                    disabled: false,
                    disabled_reason: None,
                    rate_limit: None,
                    secret: secrets[j].clone(),
                    previous_secrets: Vec::new(),
                    created_at: now_text.clone(),
                    updated_at: now_text.clone(),
                };
                let (endpoint_store, done) = (&endpoint_store, &done);
                async move {
                    match endpoint_store.create(&endpoint, now_ms).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(format!(
                                "endpoint {}: its application is gone",
                                endpoint.id
                            ));
                        }
                        Err(err) => {
                            return Err(format!("creating endpoint {}: {err}", endpoint.id));
                        }
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, spread.endpoints());
                    Ok(())
                }
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(ids)
    }

    /// Runs `probes` propagation probes ([`PROBES_AT_ONCE`] at a time) and
    /// returns their times in milliseconds.
    async fn probe_propagation(
        &self,
        running: &Running,
        spread: &Spread,
        endpoint_ids: &[String],
        probes: usize,
    ) -> Result<Percentiles, String> {
        let Source::Kafka { producer, topic } = &running.kafka_source else {
            return Err("the apps mode produces straight to Kafka".into());
        };
        let probed_apps = PROBED_APPS.min(spread.apps.len());
        let times: Vec<f64> = futures::stream::iter(0..probes)
            .map(|j| {
                // Probes at once change endpoints of different applications,
                // and no two probes change the same endpoint.
                let (app, k) = (j % probed_apps, (j / probed_apps) % MAX_FANOUT);
                let probe = Probe {
                    api: &running.api,
                    producer,
                    topic,
                    app: &spread.apps[app],
                    endpoint_id: &endpoint_ids[app * MAX_FANOUT + k],
                    receiver_endpoint: spread.endpoint(app, k),
                    slot: k,
                    id_prefix: format!("{}-apps-probe-{j}-", self.run_id),
                    event_type: format!("bench.probe.{j}"),
                    size: self.options.record_bytes,
                };
                // A probe waits a while first: started right as the one
                // before it ended, which is right after one of fan-out's
                // refreshes, it would always wait the longest.
                let jitter = Duration::from_millis(splitmix64(j as u64) % 1000);
                async move {
                    tokio::time::sleep(jitter).await;
                    probe.run(self.receiver.arrivals()).await
                }
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .try_collect()
            .await?;
        Ok(Percentiles::of(times))
    }
}

/// Prints registration progress every 10,000 endpoints.
fn progress(done: u64, of: usize) {
    if done.is_multiple_of(10_000) {
        eprintln!("  registered {done}/{of} endpoints");
    }
}

/// One change, and the events that find out when fan-out applies it.
struct Probe<'a> {
    api: &'a Api,
    producer: &'a rdkafka::producer::FutureProducer,
    topic: &'a str,
    app: &'a str,
    endpoint_id: &'a str,
    receiver_endpoint: usize,
    /// The endpoint's place among its application's ten.
    slot: usize,
    id_prefix: String,
    event_type: String,
    size: usize,
}

impl Probe<'_> {
    /// Subscribes the endpoint to the probe's own event type, then produces
    /// events of that type until one arrives; returns the milliseconds
    /// from the change's answer to the sending of the first event that
    /// arrived.
    async fn run(&self, arrivals: &crate::receiver::Arrivals) -> Result<f64, String> {
        let mut cursor = arrivals.count();
        let body = json!({
            "event_types": [format!("bench.one.{}", self.slot), "bench.all", self.event_type],
        });
        let path = format!(
            "/v1/applications/{}/endpoints/{}",
            self.app, self.endpoint_id
        );
        let (status, text) = self.api.patch(&path, body.to_string().into_bytes()).await?;
        if status != 200 {
            return Err(format!("PATCH {path}: {status} {text}"));
        }
        let changed = Instant::now();
        let mut sent = Vec::new();
        loop {
            if changed.elapsed() > PROBE_TIMEOUT {
                return Err(format!(
                    "a change to endpoint {} of {} did not reach fan-out within {PROBE_TIMEOUT:?}",
                    self.endpoint_id, self.app
                ));
            }
            let id = format!("{}{}", self.id_prefix, sent.len());
            let value = load::event_json(self.app, &id, &self.event_type, self.size);
            sent.push(Instant::now());
            self.producer
                .send(
                    FutureRecord::to(self.topic).key(self.app).payload(&value),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| format!("produce {id}: {e}"))?;
            tokio::time::sleep(PROBE_EVERY).await;
            let fresh = arrivals.since(cursor);
            cursor += fresh.len();
            if let Some(mut first) = self.first_delivered(&fresh) {
                // An event sent earlier may still be on its way: the
                // first sent of those delivered soon after counts.
                tokio::time::sleep(PROBE_EVERY * 5).await;
                if let Some(earlier) = self.first_delivered(&arrivals.since(cursor)) {
                    first = first.min(earlier);
                }
                let at = sent[first];
                return Ok(at.saturating_duration_since(changed).as_secs_f64() * 1000.0);
            }
        }
    }
}

impl Probe<'_> {
    /// The number of the first-sent probe event among `arrivals` that
    /// reached the probed endpoint.
    fn first_delivered(&self, arrivals: &[crate::receiver::Arrival]) -> Option<usize> {
        arrivals
            .iter()
            .filter(|a| a.endpoint == self.receiver_endpoint)
            .filter_map(|a| a.event_id.strip_prefix(&self.id_prefix)?.parse().ok())
            .min()
    }
}

/// Endpoint changes at [`CHANGES_PER_S`] through the API, each to an
/// endpoint picked at random: its description changes, which bumps its and
/// its application's versions as any change does, without changing what
/// it is subscribed to.
struct Changes {
    made: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Changes {
    fn start(api: Api, spread: Arc<Spread>, endpoint_ids: Arc<Vec<String>>) -> Changes {
        let (made, failed, stop) = (
            Arc::<AtomicU64>::default(),
            Arc::<AtomicU64>::default(),
            Arc::<AtomicBool>::default(),
        );
        let (made_here, failed_here, stop_here) = (made.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let (made, failed, stop) = (made_here, failed_here, stop_here);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / CHANGES_PER_S));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let j = (splitmix64(n ^ 0x5eed) % endpoint_ids.len() as u64) as usize;
                let path = format!(
                    "/v1/applications/{}/endpoints/{}",
                    spread.apps[j / MAX_FANOUT],
                    endpoint_ids[j]
                );
                let body = json!({ "description": format!("change {n}") });
                match api.patch(&path, body.to_string().into_bytes()).await {
                    Ok((200, _)) => made.fetch_add(1, Ordering::Relaxed),
                    Ok((status, text)) => {
                        eprintln!("  PATCH {path}: {status} {text}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(err) => {
                        eprintln!("  {err}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Changes {
            made,
            failed,
            stop,
            task,
        }
    }

    fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Stops the changes and waits for the one under way, so that none is
    /// sent to a stopped ingest.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.failed.clone();
        let _ = self.task.await;
        failed.load(Ordering::Relaxed)
    }
}

/// Fan-out's cache hits and misses so far, from its `/metrics`.
async fn cache_counts(ops_addr: &str) -> Result<(u64, u64), String> {
    let mut counts = [0; 2];
    for (count, name) in counts.iter_mut().zip([
        "herald_fanout_cache_hits_total",
        "herald_fanout_cache_misses_total",
    ]) {
        *count = herald::metric(ops_addr, name)
            .await?
            .ok_or_else(|| format!("fan-out's /metrics has no {name}"))? as u64;
    }
    Ok((counts[0], counts[1]))
}
