//! `herald-bench`: how fast Herald is, against what this machine and broker
//! allow, measured in one run.
//!
//! It starts its own webhook receiver on 127.0.0.1, measures the baselines
//! (the broker's bare produce → consume rate and latency with Herald's own
//! client settings, over one topic and relayed through two; and the
//! receiver's bare POST rate), then starts Herald's
//! binaries in several modes against the same broker and Redis and drives
//! events through them, straight into `herald.events` and through
//! `POST /v1/events`. Every webhook's signature is verified and every
//! (event, endpoint) pair must arrive, or the run fails; timing never fails
//! it. It prints a table, each target with met / not met, and writes the
//! same figures as JSON with `--json FILE`.
//!
//! Layout: [`receiver`] (the webhook receiver), [`load`] (sending a phase of
//! events and accounting for its deliveries), [`baseline`] (broker and
//! receiver baselines), [`herald`] (Herald's processes, `/proc` figures, the
//! API), [`ordinary`] (the idle stack and the 2,000 webhooks/s phase),
//! [`apps`] (many applications, their endpoints changing as events flow),
//! [`report`] (table, targets, JSON), [`cleanup`] (the run's Redis keys and
//! topics).

mod apps;
mod baseline;
mod cleanup;
mod herald;
mod latency;
mod load;
mod ordinary;
mod receiver;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use herald_core::config::{Env, KafkaConfig};
use herald_core::signing::Secret;

use crate::baseline::Hops;
use crate::herald::{Api, Deployment, Process};
use crate::load::{MAX_FANOUT, Phase, PhaseResult, Source};
use crate::receiver::Receiver;
use crate::report::{
    AttemptLogGrowth, Baselines, CostPerWebhook, ModeReport, ProcessReport, RatedPhase,
    RedisCommandCost, Report, Setup,
};

const USAGE: &str = "\
herald-bench: measures Herald's throughput, latency and memory against the
broker's and the receiver's own limits, in one run.

usage: herald-bench [options]

  --brokers LIST        Kafka bootstrap servers (default $HERALD_KAFKA_BROKERS
                        or 127.0.0.1:9092); $HERALD_KAFKA_PROPERTIES applies
  --redis URL           Redis (default $HERALD_REDIS_URL or redis://127.0.0.1:6379)
  --bin-dir DIR         where herald-ingest, -fanout and -dispatcher are
                        (default: next to herald-bench)
  --deliveries N        webhooks per throughput phase (default 20000)
  --http-events N       events posted to the ingest API (default 5000)
  --registered N        endpoints registered, 10 of them subscribed (default 10000)
  --record-bytes N      size of each event record (default 512)
  --partitions N        partitions of every topic (default 12)
  --latency-seconds S   length of the latency phases (default 10)
  --concurrency N       HTTP connections of the receiver's baseline (default 64)
  --http-connections N  connections posting to POST /v1/events (default 256;
                        the batch phase posts 100 events a request from 16)
  --modes LIST          fanout-1, fanout-10, fanout-10-one-dead,
                        slow-endpoints-1-dispatcher,
                        slow-endpoints-2-dispatchers, ordinary-load
                        (an idle stack, then 200 events/s to 10 endpoints),
                        apps (many applications with 10 endpoints each,
                        events skewed over them, 10 endpoint changes/s;
                        default: all)
  --apps N              applications of the apps mode (default 10000)
  --seed-directly       the apps mode writes its applications and endpoints
                        straight into Redis, with the code the API uses,
                        instead of registering them through the API (for
                        runs with a million endpoints)
  --slow-endpoint-ms N  how long endpoints take to answer in the
                        slow-endpoints modes (default 200), where each
                        dispatcher may have 64 requests in flight and a
                        phase has a quarter of --deliveries
  --target-url URL      send the webhooks to URL instead of the built-in
                        receiver; deliveries and latency are then the
                        dispatchers' own figures (from /metrics; ids and
                        signatures are not checked), and only the fanout-1
                        and fanout-10 modes run
  --tls h2|http1        the built-in receiver speaks https (the test suite's
                        certificate, whose CA Herald is told to trust through
                        HERALD_OUTBOUND_CA_FILE), offering HTTP/2 and
                        HTTP/1.1 (h2) or HTTP/1.1 only (http1); the receiver
                        baseline then posts over https too, always over
                        HTTP/1.1 (the bare-POST floor)
  --herald-env K=V      extra environment for Herald's processes (repeatable)
  --observe NAME=PID    also report CPU and memory of this process, e.g. the
                        broker (repeatable)
  --keep-topics         leave the run's topics in the broker (by default
                        they are deleted at the end; Tansu 0.6 must keep
                        them: asked to delete one topic, it deletes all)
  --control-readers     during the latency phase, also read Herald's events
                        and deliveries topics with plain consumers, to tell
                        the broker's share of each hop from Herald's (they
                        add to the broker's load)
  --json FILE           write the figures as JSON too
  --log-dir DIR         Herald's logs (default: a new temporary directory)
  --smoke               a few seconds with small numbers: checks that the
                        benchmark works, measures nothing
";

#[derive(Debug, Clone)]
struct Options {
    brokers: String,
    redis: String,
    bin_dir: PathBuf,
    deliveries: usize,
    http_events: usize,
    registered: usize,
    /// Applications of the `apps` mode.
    apps: usize,
    /// The `apps` mode writes to Redis instead of calling the API.
    seed_directly: bool,
    record_bytes: usize,
    partitions: i32,
    latency_seconds: f64,
    /// How long endpoints take to answer in the slow-endpoints modes.
    slow_endpoint: Duration,
    concurrency: usize,
    /// Connections of the `POST /v1/events` phase.
    http_connections: usize,
    modes: Vec<String>,
    /// Where webhooks go instead of the built-in receiver.
    target_url: Option<String>,
    /// The built-in receiver speaks https, offering these protocols.
    tls: Option<receiver::Tls>,
    herald_env: Vec<(String, String)>,
    observe: Vec<(String, u32)>,
    json: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    keep_topics: bool,
    /// Plain readers of the events and deliveries topics during the
    /// latency phase.
    control_readers: bool,
    smoke: bool,
}

/// Requests in flight per dispatcher replica in the slow-endpoints modes.
const SLOW_MODE_REQUESTS: usize = 64;

const ALL_MODES: [&str; 7] = [
    "fanout-1",
    "fanout-10",
    "fanout-10-one-dead",
    "slow-endpoints-1-dispatcher",
    "slow-endpoints-2-dispatchers",
    "ordinary-load",
    "apps",
];

/// The modes that run against `--target-url`.
const TARGET_URL_MODES: [&str; 2] = ["fanout-1", "fanout-10"];

fn parse_options() -> Result<Options, String> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.to_owned());
    let mut options = Options {
        brokers: env("HERALD_KAFKA_BROKERS", "127.0.0.1:9092"),
        redis: env("HERALD_REDIS_URL", "redis://127.0.0.1:6379"),
        bin_dir: herald::own_bin_dir(),
        deliveries: 20_000,
        http_events: 5_000,
        registered: 10_000,
        apps: 10_000,
        seed_directly: false,
        record_bytes: 512,
        partitions: 12,
        latency_seconds: 10.0,
        slow_endpoint: Duration::from_millis(200),
        concurrency: 64,
        http_connections: 256,
        modes: ALL_MODES.iter().map(|m| (*m).to_owned()).collect(),
        target_url: None,
        tls: None,
        herald_env: Vec::new(),
        observe: Vec::new(),
        json: None,
        log_dir: None,
        keep_topics: false,
        control_readers: false,
        smoke: false,
    };
    let mut modes_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--smoke" {
            options.smoke = true;
            options.deliveries = 300;
            options.http_events = 100;
            options.registered = 100;
            options.apps = 20;
            options.latency_seconds = 2.0;
            options.partitions = 4;
            continue;
        }
        if flag == "--seed-directly" {
            options.seed_directly = true;
            continue;
        }
        if flag == "--keep-topics" {
            options.keep_topics = true;
            continue;
        }
        if flag == "--control-readers" {
            options.control_readers = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; see --help"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a whole number"))
        };
        let pair = |v: &str| {
            v.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{flag}: write KEY=VALUE, not {v:?}"))
        };
        match flag.as_str() {
            "--brokers" => options.brokers = value,
            "--redis" => options.redis = value,
            "--bin-dir" => options.bin_dir = PathBuf::from(value),
            "--deliveries" => options.deliveries = number(&value)?.max(10),
            "--http-events" => options.http_events = number(&value)?,
            "--registered" => options.registered = number(&value)?.max(MAX_FANOUT),
            "--apps" => options.apps = number(&value)?.max(1),
            "--record-bytes" => options.record_bytes = number(&value)?,
            "--partitions" => options.partitions = number(&value)?.clamp(1, 1000) as i32,
            "--latency-seconds" => {
                options.latency_seconds = value
                    .parse()
                    .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
            }
            "--concurrency" => options.concurrency = number(&value)?.max(1),
            "--http-connections" => options.http_connections = number(&value)?.max(1),
            "--slow-endpoint-ms" => {
                options.slow_endpoint = Duration::from_millis(number(&value)? as u64);
            }
            "--target-url" => options.target_url = Some(value),
            "--tls" => {
                options.tls = Some(match value.as_str() {
                    "h2" => receiver::Tls::Http2,
                    "http1" => receiver::Tls::Http1,
                    _ => return Err(format!("--tls: expected h2 or http1, not {value:?}")),
                })
            }
            "--modes" => {
                modes_given = true;
                options.modes = value.split(',').map(|m| m.trim().to_owned()).collect();
                if let Some(unknown) = options
                    .modes
                    .iter()
                    .find(|m| !ALL_MODES.contains(&m.as_str()))
                {
                    return Err(format!(
                        "--modes: unknown mode {unknown:?}; modes are {}",
                        ALL_MODES.join(", ")
                    ));
                }
            }
            "--herald-env" => options.herald_env.push(pair(&value)?),
            "--observe" => {
                let (name, pid) = pair(&value)?;
                let pid = pid
                    .parse()
                    .map_err(|_| format!("{flag}: {pid:?} is not a process id"))?;
                options.observe.push((name, pid));
            }
            "--json" => options.json = Some(PathBuf::from(value)),
            "--log-dir" => options.log_dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}; see --help")),
        }
    }
    if options.target_url.is_some() {
        // The other modes make the built-in receiver fail or answer slowly.
        if !modes_given {
            options.modes = TARGET_URL_MODES.map(str::to_owned).to_vec();
        }
        if let Some(mode) = options
            .modes
            .iter()
            .find(|m| !TARGET_URL_MODES.contains(&m.as_str()))
        {
            return Err(format!(
                "--modes: {mode} needs the built-in receiver; with --target-url the modes are {}",
                TARGET_URL_MODES.join(", ")
            ));
        }
    }
    Ok(options)
}

/// The shared state of one run.
#[derive(Debug)]
struct Bench {
    options: Options,
    run_id: String,
    kafka: KafkaConfig,
    receiver: Receiver,
    api_key: String,
    log_dir: PathBuf,
    /// Whether the endpoints are registered (the first mode does it).
    registered: bool,
}

/// A running mode: Herald's processes with their own topic prefix.
#[derive(Debug)]
struct Running {
    api: Api,
    /// A producer to the mode's `herald.events`, shared by its phases.
    kafka_source: Source,
    processes: Vec<(String, Process)>,
    /// The dispatchers' ops addresses, for their `/metrics`.
    dispatcher_ops: Vec<String>,
    /// Fan-out's and the dispatchers' ops addresses.
    ops: Vec<String>,
    /// The mode's Kafka settings (its topics).
    kafka: KafkaConfig,
}

impl Running {
    async fn save_metrics(&self) {
        for (_, process) in &self.processes {
            process.save_metrics().await;
        }
    }
}

/// The Kafka part of the environment, for Herald's processes and the
/// benchmark's own clients alike: the broker, the topic prefix, the
/// partitions of created topics and any `HERALD_KAFKA_PROPERTIES` and
/// `HERALD_KAFKA_FETCH_WAIT`.
fn kafka_env(options: &Options, topic_prefix: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("HERALD_KAFKA_BROKERS".to_owned(), options.brokers.clone()),
        ("HERALD_TOPIC_PREFIX".to_owned(), topic_prefix.to_owned()),
        (
            "HERALD_TOPIC_PARTITIONS".to_owned(),
            options.partitions.to_string(),
        ),
    ];
    for key in ["HERALD_KAFKA_PROPERTIES", "HERALD_KAFKA_FETCH_WAIT"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// The partition of `herald.deliveries` an endpoint's deliveries go to:
/// librdkafka's default partitioner (`consistent_random`) takes the CRC-32
/// of the key, the endpoint id, modulo the partitions.
fn delivery_partition(endpoint_id: &str, partitions: u32) -> u32 {
    crc32fast::hash(endpoint_id.as_bytes()) % partitions.max(1)
}

/// The benchmark's own Kafka settings for topics under `topic_prefix`.
fn kafka_config(options: &Options, topic_prefix: &str) -> Result<KafkaConfig, String> {
    KafkaConfig::from_env(&Env::from_pairs(kafka_env(options, topic_prefix)))
        .map_err(|e| e.to_string())
}

impl Bench {
    /// The attempts the attempt log holds (by event, by endpoint) and
    /// Redis's `used_memory`; `None` when Redis cannot say.
    async fn attempt_log_size(&self) -> Option<(u64, u64, u64)> {
        let (by_event, by_endpoint) =
            herald::attempts_retained(&self.options.redis, &self.redis_prefix())
                .await
                .ok()?;
        let memory = herald::redis_used_memory(&self.options.redis).await.ok()?;
        Some((by_event, by_endpoint, memory))
    }

    /// The Redis key prefix of the run, shared by its modes so that the
    /// endpoints are registered once.
    fn redis_prefix(&self) -> String {
        format!("bench-{}:", self.run_id)
    }

    async fn start_mode(
        &mut self,
        mode: &str,
        dispatchers: usize,
        extra_env: Vec<(String, String)>,
    ) -> Result<Running, String> {
        let topic_prefix = format!("bench-{}-{mode}.", self.run_id);
        let port = herald::free_port();
        let mut env = kafka_env(&self.options, &topic_prefix);
        env.extend(
            [
                ("HERALD_REDIS_URL", self.options.redis.clone()),
                ("HERALD_REDIS_PREFIX", self.redis_prefix()),
                ("HERALD_API_KEYS", self.api_key.clone()),
                ("HERALD_INGEST_ADDR", format!("127.0.0.1:{port}")),
                ("HERALD_LOG", "info".to_owned()),
                // The receiver is on loopback, which Herald refuses by default.
                (
                    "HERALD_ALLOWED_DESTINATION_CIDRS",
                    "127.0.0.1/32".to_owned(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        if self.options.tls.is_some() {
            // The https receiver's certificate is the test CA's.
            env.push((
                "HERALD_OUTBOUND_CA_FILE".to_owned(),
                receiver::tls_file("ca.pem"),
            ));
        }
        env.extend(extra_env);
        env.extend(self.options.herald_env.iter().cloned());
        let deployment = Deployment {
            bin_dir: self.options.bin_dir.clone(),
            log_dir: self.log_dir.join(mode),
            env,
        };
        let ops = || {
            vec![(
                "HERALD_OPS_ADDR",
                format!("127.0.0.1:{}", herald::free_port()),
            )]
        };
        let mut processes = vec![
            (
                "herald-ingest".to_owned(),
                Process::spawn(&deployment, "herald-ingest", "ingest", &[])?,
            ),
            (
                "herald-fanout".to_owned(),
                Process::spawn(&deployment, "herald-fanout", "fanout", &ops())?,
            ),
        ];
        for i in 1..=dispatchers {
            let name = format!("dispatcher-{i}");
            processes.push((
                format!("herald-{name}"),
                Process::spawn(&deployment, "herald-dispatcher", &name, &ops())?,
            ));
        }
        let api = Api::new(format!("http://127.0.0.1:{port}"), self.api_key.clone());
        api.wait_ready(Duration::from_secs(90)).await?;
        if !self.registered {
            self.register(&api).await?;
            self.registered = true;
            // Fan-out and the dispatchers see new subscriptions within one
            // endpoint-cache refresh (1 s by default); events sent before
            // that reach only the endpoints they already knew.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        // Fan-out's and each dispatcher's hot-path consumer must own
        // partitions before the clock starts.
        for (name, process) in processes.iter_mut().skip(1) {
            let group = if name == "herald-fanout" {
                herald_core::groups::FANOUT
            } else {
                herald_core::groups::DISPATCHER
            };
            let needle = format!("partitions assigned group={topic_prefix}{group} ");
            process
                .wait_for_log(&needle, Duration::from_secs(90))
                .await?;
        }
        let kafka = kafka_config(&self.options, &topic_prefix)?;
        let running = Running {
            api,
            kafka_source: Source::Kafka {
                producer: herald_core::kafka::producer_config(&kafka, "herald-bench")
                    .create()
                    .map_err(|e| format!("producer: {e}"))?,
                topic: kafka.events_topic(),
            },
            dispatcher_ops: processes
                .iter()
                .filter(|(name, _)| name.starts_with("herald-dispatcher"))
                .filter_map(|(_, p)| p.ops_addr().map(str::to_owned))
                .collect(),
            ops: processes
                .iter()
                .filter_map(|(_, p)| p.ops_addr().map(str::to_owned))
                .collect(),
            processes,
            kafka,
        };
        // Warm up: every endpoint gets traffic once, so caches are filled,
        // connections open and every partition has been fetched.
        let warm_up = Phase {
            label: format!("{mode} warm-up"),
            id_prefix: format!("{}-{mode}-warm", self.run_id),
            events: load::WARM_UP_EVENTS,
            rate: None,
            size: self.options.record_bytes,
            fan_out_one: false,
            dead: Vec::new(),
            timeout: Duration::from_secs(120),
            spread: None,
        };
        let warmed = load::run(&warm_up, &running.kafka_source, self.tally(&running)).await;
        if let Err(err) = warmed {
            running.save_metrics().await;
            return Err(err);
        }
        Ok(running)
    }

    /// Where the deliveries of `running`'s phases are seen.
    fn tally<'a>(&'a self, running: &'a Running) -> load::Tally<'a> {
        if self.options.target_url.is_some() {
            load::Tally::Metrics(&running.dispatcher_ops)
        } else {
            load::Tally::Receiver(self.receiver.arrivals())
        }
    }

    /// The URL of subscribed endpoint `index`.
    fn endpoint_url(&self, index: usize) -> String {
        match &self.options.target_url {
            Some(url) => url.clone(),
            None => self.receiver.endpoint_url(index),
        }
    }

    /// Registers the ten subscribed endpoints and the unsubscribed rest.
    ///
    /// An endpoint's deliveries share one partition of `herald.deliveries`
    /// (they are keyed by its id), and two dispatcher replicas each own
    /// half of the partitions. So that the two-replica mode measures the
    /// replicas and not how ten ids happen to hash (an 8:2 split caps two
    /// replicas at 1.25 × one), the ten are chosen five on each half: an
    /// endpoint whose half is full is deleted and registered again.
    async fn register(&self, api: &Api) -> Result<(), String> {
        let partitions = self.options.partitions as u32;
        let mut per_half = [0usize; 2];
        for index in 0..MAX_FANOUT {
            let types = vec![format!("bench.one.{index}"), "bench.all".to_owned()];
            let secret = loop {
                let (id, secret) = api.register(&self.endpoint_url(index), &types).await?;
                let half =
                    usize::from(delivery_partition(&id, partitions) >= partitions.div_ceil(2));
                if partitions < 2 || per_half[half] < MAX_FANOUT / 2 {
                    per_half[half] += 1;
                    break secret;
                }
                api.delete_endpoint(&id).await?;
            };
            let secret = Secret::parse(&secret).map_err(|e| format!("secret: {e}"))?;
            let added = self.receiver.add_endpoint(secret);
            assert_eq!(added, index, "receiver endpoints are added in order");
        }
        let others = self.options.registered.saturating_sub(MAX_FANOUT);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let (api, next, url) = (api.clone(), next.clone(), self.endpoint_url(1_000_000));
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= others {
                            return Ok::<(), String>(());
                        }
                        if i > 0 && i % 2000 == 0 {
                            eprintln!("  registered {i}/{others} unsubscribed endpoints");
                        }
                        api.register(&url, &[format!("bench.unsubscribed.{i}")])
                            .await?;
                    }
                })
            })
            .collect();
        for worker in futures::future::join_all(workers).await {
            worker.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    fn phase(&self, mode: &str, name: &str, events: usize, fan_out_one: bool) -> Phase {
        Phase {
            label: format!("{mode} {name}"),
            id_prefix: format!("{}-{mode}-{name}", self.run_id),
            events,
            rate: None,
            size: self.options.record_bytes,
            fan_out_one,
            dead: Vec::new(),
            timeout: Duration::from_secs(if self.options.smoke { 120 } else { 600 }),
            spread: None,
        }
    }

    async fn run_mode(&mut self, mode: &str) -> Result<(ModeReport, Option<f64>), String> {
        let (dispatchers, fan_out_one, dead) = match mode {
            "fanout-1" => (1, true, vec![]),
            "fanout-10" | "slow-endpoints-1-dispatcher" => (1, false, vec![]),
            "slow-endpoints-2-dispatchers" => (2, false, vec![]),
            _ => (1, false, vec![MAX_FANOUT - 1]),
        };
        // With endpoints that take a while to answer and replicas allowed
        // SLOW_MODE_REQUESTS requests each, a replica is the limit long
        // before the broker is, so the two slow-endpoint modes show what a
        // second replica adds.
        let slow = mode.starts_with("slow-endpoints");
        let (answer_delay, extra_env, deliveries) = if slow {
            (
                self.options.slow_endpoint,
                // Each endpoint may take all of a replica's requests: with
                // ten endpoints, one replica may own only one or two of
                // them (an endpoint's deliveries share a partition).
                [
                    "HERALD_DISPATCHER_MAX_IN_FLIGHT",
                    "HERALD_ENDPOINT_MAX_IN_FLIGHT",
                ]
                .map(|key| (key.to_owned(), SLOW_MODE_REQUESTS.to_string()))
                .to_vec(),
                (self.options.deliveries / 4).max(MAX_FANOUT),
            )
        } else {
            (Duration::ZERO, Vec::new(), self.options.deliveries)
        };
        eprintln!("mode {mode}: starting Herald with {dispatchers} dispatcher(s)");
        let mut running = self.start_mode(mode, dispatchers, extra_env).await?;
        let fan_out = if fan_out_one { 1 } else { MAX_FANOUT };
        // The dead-endpoint target compares with this phase: every endpoint
        // healthy, on the same processes and topics, just before.
        let all_healthy = if dead.is_empty() {
            None
        } else {
            let phase = self.phase(mode, "kafka-all-healthy", deliveries / fan_out, fan_out_one);
            Some(load::run(&phase, &running.kafka_source, self.tally(&running)).await?)
        };
        for index in &dead {
            self.receiver.set_failing(*index, true);
        }
        self.receiver.set_answer_delay(answer_delay);
        let mut phase = self.phase(mode, "kafka", deliveries / fan_out, fan_out_one);
        phase.dead = dead.clone();
        let refused_before: u64 = dead.iter().map(|i| self.receiver.refused(*i)).sum();
        let watched = self.watched(&running);
        let allocations_before = herald::allocations(&running.processes).await;
        let log_before = self.attempt_log_size().await;
        let commands_before = herald::redis_command_stats(&self.options.redis).await;
        let before = herald::usages(&watched);
        let kafka = load::run(&phase, &running.kafka_source, self.tally(&running)).await?;
        // The dispatchers write their attempts every few milliseconds.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let redis_commands = match (
            commands_before,
            herald::redis_command_stats(&self.options.redis).await,
        ) {
            (Ok(before), Ok(after)) => RedisCommandCost::between(&before, &after, kafka.delivered),
            _ => Vec::new(),
        };
        let attempt_log = match (log_before, self.attempt_log_size().await) {
            (
                Some((event, endpoint, memory)),
                Some((event_after, endpoint_after, memory_after)),
            ) => Some(AttemptLogGrowth {
                by_event: event_after as i64 - event as i64,
                by_endpoint: endpoint_after as i64 - endpoint as i64,
                redis_bytes: memory_after as i64 - memory as i64,
            }),
            _ => None,
        };
        let mut processes = ProcessReport::since(&watched, before, kafka.seconds, kafka.delivered);
        let allocations_after = herald::allocations(&running.processes).await;
        // `watched` lists Herald's processes first, in the same order.
        for (report, (before, after)) in processes
            .iter_mut()
            .zip(allocations_before.into_iter().zip(allocations_after))
        {
            if let (Some(before), Some(after)) = (before, after) {
                report.allocations_per_delivery =
                    Some((after - before) / kafka.delivered.max(1) as f64);
            }
        }
        let dead_endpoint_requests =
            dead.iter().map(|i| self.receiver.refused(*i)).sum::<u64>() - refused_before;
        for index in &dead {
            self.receiver.set_failing(*index, false);
        }
        self.receiver.set_answer_delay(Duration::ZERO);

        let mut http = None;
        let mut http_batch = None;
        let mut http_cost = None;
        let mut http_batch_cost = None;
        let mut latency = None;
        let mut latency_rate = None;
        let mut latency_split = None;
        if mode == "fanout-1" {
            // Single events, then the batch route with 100 events a request
            // from fewer connections (each carries a hundred times as much).
            let phases = [
                (
                    "http",
                    self.options.http_events,
                    self.options.http_connections,
                    1,
                ),
                (
                    "http-batch",
                    self.options.http_events * 4,
                    self.options.concurrency.min(16),
                    100,
                ),
            ];
            for (label, events, concurrency, batch) in phases {
                let phase = self.phase(mode, label, events, true);
                let source = Source::Http {
                    api: running.api.clone(),
                    concurrency,
                    batch,
                };
                let before = herald::usages(&watched);
                let result = load::run(&phase, &source, self.tally(&running)).await?;
                let cost = CostPerWebhook::of_processes(&ProcessReport::since(
                    &watched,
                    before,
                    result.seconds,
                    result.events,
                ));
                if batch == 1 {
                    (http, http_cost) = (Some(result), Some(cost));
                } else {
                    (http_batch, http_batch_cost) = (Some(result), Some(cost));
                }
            }
            let rate = (kafka.delivered_per_s * 0.2).max(1.0);
            let measured = self.latency_phase(mode, &running, &watched, rate).await?;
            latency = Some(measured.phase);
            latency_split = Some(measured.split);
            latency_rate = Some(rate);
        }
        // Peak RSS over the whole mode, including the HTTP and latency phases.
        for (report, (_, pid)) in processes.iter_mut().zip(&watched) {
            report.peak_rss_mib = report.peak_rss_mib.max(herald::usage(*pid).peak_rss_mib);
        }
        // Each process's /metrics beside its log, for reading a run later
        // (attempt durations, lag, what was dropped).
        running.save_metrics().await;
        for (_, process) in running.processes.iter_mut() {
            process.stop(Duration::from_secs(30));
        }
        Ok((
            ModeReport {
                name: mode.to_owned(),
                dispatchers,
                fan_out,
                dead_endpoints: dead.len(),
                dead_endpoint_requests,
                kafka,
                all_healthy,
                http,
                http_batch,
                http_cost,
                http_batch_cost,
                latency,
                latency_split,
                attempt_log,
                redis_commands,
                processes,
            },
            latency_rate,
        ))
    }

    /// The broker's flat-out rate through one topic or relayed through two:
    /// the best of two rounds, because a shared machine's noise only ever
    /// lowers it, and a baseline that came out low would flatter Herald.
    async fn broker_throughput(
        &self,
        name: &str,
        hops: Hops,
    ) -> Result<(PhaseResult, f64), String> {
        let mut best: Option<(PhaseResult, f64)> = None;
        for round in 1..=2 {
            eprintln!("baseline: {name} throughput, round {round} of 2");
            let phase = self.phase(
                name,
                &format!("throughput-{round}"),
                self.options.deliveries,
                true,
            );
            let measured = baseline::broker_phase(
                &self.kafka,
                &self
                    .kafka
                    .topic(&format!("bench.baseline.{name}-throughput-{round}")),
                hops,
                &phase,
            )
            .await?;
            if best
                .as_ref()
                .is_none_or(|(b, _)| measured.0.delivered_per_s > b.delivered_per_s)
            {
                best = Some(measured);
            }
        }
        Ok(best.expect("two rounds ran"))
    }

    /// Herald's processes of a mode, and the observed ones.
    fn watched(&self, running: &Running) -> Vec<(String, u32)> {
        running
            .processes
            .iter()
            .map(|(name, p)| (name.clone(), p.pid()))
            .chain(self.options.observe.iter().cloned())
            .collect()
    }
}

async fn run(options: Options) -> Result<Report, String> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let log_dir = options
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("herald-bench-{run_id}")));
    eprintln!(
        "herald-bench run {run_id}: Herald's logs in {}",
        log_dir.display()
    );
    let receiver = Receiver::start(options.tls)
        .await
        .map_err(|e| format!("cannot start the receiver: {e}"))?;
    let mut bench = Bench {
        kafka: kafka_config(&options, &format!("bench-{run_id}."))?,
        options,
        run_id,
        receiver,
        api_key: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        log_dir,
        registered: false,
    };
    let report = measure(&mut bench).await;
    cleanup::delete_redis_keys(&bench.options.redis, &bench.redis_prefix()).await;
    if !bench.options.keep_topics {
        cleanup::delete_topics(&bench.kafka, &format!("bench-{}", bench.run_id)).await;
    }
    report
}

/// The baselines and the modes, in order, and the report of them.
async fn measure(bench: &mut Bench) -> Result<Report, String> {
    let o = bench.options.clone();
    bench.warm_up_broker().await?;

    eprintln!("baseline: receiver");
    let receiver_baseline = baseline::receiver(
        o.target_url
            .clone()
            .unwrap_or_else(|| bench.receiver.raw_url()),
        o.record_bytes,
        o.concurrency,
        Duration::from_secs_f64(if o.smoke { 1.0 } else { 3.0 }),
        o.tls.is_some(),
    )
    .await?;
    let (broker_throughput, broker_client_us) =
        bench.broker_throughput("broker", Hops::One).await?;
    let (relay_throughput, relay_client_us) = bench.broker_throughput("relay", Hops::Two).await?;

    let mut modes = Vec::new();
    let mut broker_latency = None;
    let mut relay_latency = None;
    let mut ordinary = None;
    let mut apps = None;
    for mode in &o.modes {
        if mode == "ordinary-load" {
            ordinary = Some(bench.run_ordinary_load().await?);
            continue;
        }
        if mode == "apps" {
            let (mode, report) = bench.run_apps().await?;
            modes.push(mode);
            apps = Some(report);
            continue;
        }
        let (report, latency_rate) = bench.run_mode(mode).await?;
        modes.push(report);
        if let Some(rate) = latency_rate {
            eprintln!("baseline: broker at {rate:.0} records/s, one topic and relayed");
            for (name, hops, measured) in [
                ("broker", Hops::One, &mut broker_latency),
                ("relay", Hops::Two, &mut relay_latency),
            ] {
                let mut phase = bench.phase(
                    name,
                    "latency",
                    ((rate * o.latency_seconds) as usize).max(20),
                    true,
                );
                phase.rate = Some(rate);
                let cpu_before = herald::MachineCpu::read();
                let (result, _) = baseline::broker_phase(
                    &bench.kafka,
                    &bench.kafka.topic(&format!("bench.baseline.{name}-latency")),
                    hops,
                    &phase,
                )
                .await?;
                let machine = cpu_before.until(&herald::MachineCpu::read());
                *measured = Some(RatedPhase {
                    rate,
                    result,
                    machine,
                });
            }
        }
    }
    let invalid = bench.receiver.invalid_signatures();
    if invalid > 0 {
        return Err(format!(
            "{invalid} webhooks arrived with a signature that does not verify"
        ));
    }
    let baselines = Baselines {
        broker_throughput,
        broker_client_us,
        broker_latency,
        relay_throughput,
        relay_client_us,
        relay_latency,
        receiver: receiver_baseline,
    };
    let targets = report::targets(&baselines, &modes, ordinary.as_ref(), apps.as_ref());
    let against_relay = report::against_relay(&baselines, &modes);
    let latency_breakdown = report::latency_breakdown(&baselines, &modes);
    Ok(Report {
        setup: Setup {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            brokers: o.brokers.clone(),
            record_bytes: o.record_bytes,
            partitions: o.partitions,
            registered_endpoints: o.registered,
            deliveries_per_phase: o.deliveries,
            webhooks_to: match &o.target_url {
                Some(url) => {
                    format!("{url} (counted by the dispatchers; ids and signatures not checked)")
                }
                None => format!(
                    "the built-in receiver over {} (every id and signature checked)",
                    match o.tls {
                        None => "plain HTTP/1.1",
                        Some(receiver::Tls::Http2) => "https, HTTP/2 offered",
                        Some(receiver::Tls::Http1) => "https, HTTP/1.1 only",
                    }
                ),
            },
            smoke: o.smoke,
        },
        baselines,
        modes,
        ordinary,
        apps,
        targets,
        against_relay,
        latency_breakdown,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("herald-bench: {message}");
            std::process::exit(2);
        }
    };
    let json = options.json.clone();
    match run(options).await {
        Ok(report) => {
            report::print(&report);
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("report is JSON");
                if let Err(err) = std::fs::write(&path, text) {
                    eprintln!("herald-bench: cannot write {}: {err}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(message) => {
            eprintln!("herald-bench: {message}");
            std::process::exit(1);
        }
    }
}
