//! Test support for Herald's end-to-end tests.
//!
//! The tests run the real `herald-ingest`, `herald-fanout` and
//! `herald-dispatcher` binaries as child processes against a real
//! Kafka-protocol broker and a real Redis, and receive webhooks with real HTTP
//! servers on 127.0.0.1. `scripts/test` starts the broker and Redis and
//! passes their addresses in `HERALD_TEST_KAFKA_BROKERS` and
//! `HERALD_TEST_REDIS_URL`.
//!
//! Every [`Stack`] uses its own topic prefix, consumer groups and Redis key
//! prefix, so tests run in parallel against one broker and one Redis without
//! seeing each other.

pub mod browser;
pub mod cluster;
pub mod otlp;
pub mod receiver;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

pub use cluster::KafkaCluster;
pub use otlp::{CollectedSpan, OtlpReceiver};
pub use receiver::{Alpn, Behaviour, Received, Receiver, test_ca_file};

/// The broker and Redis the tests run against.
#[derive(Debug, Clone)]
pub struct Infra {
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Redis URL.
    pub redis_url: String,
}

/// Reads the addresses `scripts/test` exported.
pub fn infra() -> Infra {
    let get = |key: &str| {
        std::env::var(key).unwrap_or_else(|_| {
            panic!(
                "{key} is not set: run the tests with scripts/test, which starts a broker and Redis"
            )
        })
    };
    Infra {
        kafka_brokers: get("HERALD_TEST_KAFKA_BROKERS"),
        redis_url: get("HERALD_TEST_REDIS_URL"),
    }
}

/// The application every stack creates, which [`Stack::create_endpoint`],
/// [`Stack::post_event`] and [`Stack::produce_event`] use unless told
/// otherwise. (Each stack has Redis keys of its own, so the id is the same
/// in all.)
pub const APP: &str = "app_test";

/// `event` addressed to [`APP`] when it names no `application`.
pub fn addressed(event: &Value) -> Value {
    let mut event = event.clone();
    if let Some(fields) = event.as_object_mut() {
        fields
            .entry("application")
            .or_insert_with(|| Value::String(APP.to_owned()));
    }
    event
}

/// An endpoint store on the test Redis (`HERALD_TEST_REDIS_URL`), under keys
/// of its own, with the application [`APP`] created in it.
pub async fn endpoint_store() -> herald_core::endpoint::EndpointStore {
    stores_with_app().await.0
}

/// [`stores`], with the application [`APP`] created.
pub async fn stores_with_app() -> (
    herald_core::endpoint::EndpointStore,
    herald_core::application::ApplicationStore,
) {
    let (endpoints, applications) = stores();
    let app = herald_core::application::Application {
        id: APP.to_owned(),
        name: "test".to_owned(),
        metadata: std::collections::BTreeMap::new(),
        rate_limit: None,
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        updated_at: "2026-01-01T00:00:00Z".to_owned(),
    };
    assert!(applications.create(&app, 0).await.expect("Redis answers"));
    (endpoints, applications)
}

/// The endpoint and application stores on the test Redis, under keys of
/// their own.
pub fn stores() -> (
    herald_core::endpoint::EndpointStore,
    herald_core::application::ApplicationStore,
) {
    let config = herald_core::config::RedisConfig::from_env(&herald_core::config::Env::from_pairs(
        [("HERALD_REDIS_URL", infra().redis_url)],
    ))
    .expect("the test Redis URL is valid");
    let redis = herald_core::redis_store::connect(&config).expect("connect to the test Redis");
    let keys = herald_core::redis_store::Keys::new(format!("t{}:", random_suffix()));
    (
        herald_core::endpoint::EndpointStore::new(redis.clone(), keys.clone()),
        herald_core::application::ApplicationStore::new(redis, keys),
    )
}

/// An enabled endpoint of [`APP`] with a fresh secret, as the API stores
/// one.
pub fn stored_endpoint(id: &str, url: &str, types: &[&str]) -> herald_core::endpoint::Endpoint {
    herald_core::endpoint::Endpoint {
        id: id.to_owned(),
        application_id: APP.to_owned(),
        url: url.to_owned(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        description: String::new(),
        headers: std::collections::BTreeMap::new(),
        disabled: false,
        disabled_reason: None,
        rate_limit: None,
        secret: herald_core::signing::Secret::generate().expose(),
        previous_secrets: Vec::new(),
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        updated_at: "2026-01-01T00:00:00Z".to_owned(),
    }
}

/// A short random lowercase string for names.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A free TCP port on 127.0.0.1 for a service to listen on.
///
/// It is taken below the kernel's ephemeral range (32768 and up): a port the
/// kernel hands out for `bind(0)` is also the kind it gives outgoing
/// connections, so between this check and the service's own bind another
/// process's connection could take it. Each port is handed out once per
/// test process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// Where the Herald binaries are: `HERALD_BIN_DIR`, or the cargo target
/// directory this test binary was built into.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("HERALD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/e2e-<hash> → target/<profile>
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("test binary lives in target/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A Python tool of the suite (`openapi-spec-validator`, Schemathesis' `st`,
/// `hadolint`, `kubernetes-validate`), from the virtualenv that scripts/test
/// installs and names in `HERALD_TEST_TOOLS`.
pub fn test_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("HERALD_TEST_TOOLS")
        .expect("HERALD_TEST_TOOLS is not set: run the tests with scripts/test");
    PathBuf::from(dir).join(name)
}

/// Where the services' logs go: `HERALD_TEST_LOG_DIR`, or `target/e2e-logs`.
pub fn log_dir() -> PathBuf {
    match std::env::var_os("HERALD_TEST_LOG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => bin_path("herald-ingest")
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("e2e-logs"),
    }
}

/// One running Herald process.
#[derive(Debug)]
pub struct Service {
    /// e.g. `dispatcher-1`.
    pub name: String,
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// Base URL of its ops server (`/metrics`, `/healthz`, `/readyz`), for
    /// fan-out and the dispatchers.
    pub ops_url: Option<String>,
}

impl Service {
    fn spawn(
        binary: &str,
        name: &str,
        env: &HashMap<String, String>,
        logs: &std::path::Path,
    ) -> Service {
        std::fs::create_dir_all(logs).expect("create log dir");
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        // Fan-out and dispatchers serve /metrics on a port of their own.
        let ops_port = (binary != "herald-ingest").then(free_port);
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(bin_path(binary))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .envs(ops_port.map(|port| ("HERALD_OPS_ADDR", format!("127.0.0.1:{port}"))))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Service {
            name: name.to_owned(),
            child,
            log,
            ops_url: ops_port.map(|port| format!("http://127.0.0.1:{port}")),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    /// SIGTERM, then waits for the process to exit (up to `limit`).
    /// Returns its exit code.
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        self.signal("-TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {limit:?} of SIGTERM (log: {})",
                self.name,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log contains `needle`, up to `limit`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || self.log_text().contains(needle)).await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Names the log directory.
    pub name: String,
    /// Number of dispatcher replicas.
    pub dispatchers: usize,
    /// Extra or overriding `HERALD_*` variables for every service.
    pub env: Vec<(String, String)>,
    /// Whether to start herald-fanout.
    pub fanout: bool,
    /// Whether to wait for ingest's `/readyz` (off for tests of outages).
    pub wait_ready: bool,
    /// Another broker than the suite's own (a [`KafkaCluster`]'s).
    pub kafka_brokers: Option<String>,
}

impl StackOptions {
    /// One ingest, one fan-out, one dispatcher.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dispatchers: 1,
            env: Vec::new(),
            fanout: true,
            wait_ready: true,
            kafka_brokers: None,
        }
    }

    /// Only herald-ingest, and do not wait for readiness.
    pub fn ingest_only(mut self) -> Self {
        self.dispatchers = 0;
        self.fanout = false;
        self.wait_ready = false;
        self
    }

    /// Sets the number of dispatchers.
    pub fn dispatchers(mut self, n: usize) -> Self {
        self.dispatchers = n;
        self
    }

    /// Runs the stack against these bootstrap servers instead of the
    /// suite's broker.
    pub fn kafka_brokers(mut self, brokers: &str) -> Self {
        self.kafka_brokers = Some(brokers.to_owned());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running Herald: ingest, fan-out and dispatchers, isolated by prefix.
#[derive(Debug)]
pub struct Stack {
    /// Base URL of herald-ingest.
    pub ingest_url: String,
    /// The API key.
    pub api_key: String,
    /// Topic and group prefix of this stack.
    pub topic_prefix: String,
    /// The environment every service was started with.
    pub env: HashMap<String, String>,
    /// The broker and Redis.
    pub infra: Infra,
    /// herald-ingest.
    pub ingest: Option<Service>,
    /// herald-fanout.
    pub fanout: Option<Service>,
    /// herald-dispatcher replicas.
    pub dispatchers: Vec<Service>,
    logs: PathBuf,
    next_dispatcher: usize,
    http: reqwest::Client,
}

impl Stack {
    /// Starts every service and waits until ingest is ready.
    pub async fn start(options: StackOptions) -> Stack {
        let mut infra = infra();
        if let Some(brokers) = &options.kafka_brokers {
            infra.kafka_brokers = brokers.clone();
        }
        let id = random_suffix();
        let topic_prefix = format!("t{id}.");
        let api_key = format!("test-key-{}", random_suffix());
        let port = free_port();
        let mut env: HashMap<String, String> = [
            ("HERALD_KAFKA_BROKERS", infra.kafka_brokers.as_str()),
            ("HERALD_REDIS_URL", infra.redis_url.as_str()),
            ("HERALD_TOPIC_PREFIX", topic_prefix.as_str()),
            ("HERALD_TOPIC_PARTITIONS", "4"),
            ("HERALD_API_KEYS", api_key.as_str()),
            ("HERALD_ENDPOINT_CACHE_REFRESH", "100ms"),
            ("HERALD_DRAIN_TIMEOUT", "10s"),
            ("HERALD_RETRY_SCHEDULE", "1s,2s,4s"),
            // By default a delivery put off (breaker open) longer than the
            // retry schedule's span is given up; with the tests' short
            // schedule that would be 7 s, shorter than the outages some
            // tests stage. The test of that limit sets its own.
            ("HERALD_MAX_DELIVERY_AGE", "10m"),
            // The receivers listen on loopback, which Herald refuses by
            // default.
            ("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.1/32,::1/128"),
            (
                "HERALD_LOG",
                "info,herald_core=debug,herald_dispatcher=debug,herald_fanout=debug",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // The broker's own fetch wait, where scripts/test set one (Tansu).
        if let Ok(wait) = std::env::var("HERALD_KAFKA_FETCH_WAIT") {
            env.insert("HERALD_KAFKA_FETCH_WAIT".into(), wait);
        }
        env.insert("HERALD_REDIS_PREFIX".into(), format!("t{id}:"));
        env.insert("HERALD_INGEST_ADDR".into(), format!("127.0.0.1:{port}"));
        for (k, v) in &options.env {
            env.insert(k.clone(), v.clone());
        }
        let logs = log_dir().join(format!("{}-{id}", options.name));
        let mut stack = Stack {
            ingest_url: format!("http://127.0.0.1:{port}"),
            api_key,
            topic_prefix,
            ingest: Some(Service::spawn("herald-ingest", "ingest", &env, &logs)),
            fanout: options
                .fanout
                .then(|| Service::spawn("herald-fanout", "fanout", &env, &logs)),
            dispatchers: Vec::new(),
            env,
            infra,
            logs,
            next_dispatcher: 1,
            http: reqwest::Client::new(),
        };
        for _ in 0..options.dispatchers {
            stack.start_dispatcher();
        }
        if options.wait_ready {
            stack.wait_ready().await;
            stack.create_application(APP).await;
        } else {
            stack.wait_listening().await;
        }
        stack
    }

    /// Creates an application with this id (`201`), and returns the API's
    /// answer.
    pub async fn create_application(&self, id: &str) -> Value {
        let (status, body) = self
            .post_json(
                "/v1/applications",
                &serde_json::json!({"id": id, "name": format!("{id} (test)")}),
            )
            .await;
        assert_eq!(status, 201, "application {id} not created: {body}");
        body
    }

    /// Starts one more dispatcher replica.
    pub fn start_dispatcher(&mut self) {
        let name = format!("dispatcher-{}", self.next_dispatcher);
        self.next_dispatcher += 1;
        self.dispatchers.push(Service::spawn(
            "herald-dispatcher",
            &name,
            &self.env,
            &self.logs,
        ));
    }

    /// Starts fan-out again (after it was stopped or killed).
    pub fn restart_fanout(&mut self) {
        let name = format!("fanout-{}", random_suffix());
        self.fanout = Some(Service::spawn(
            "herald-fanout",
            &name,
            &self.env,
            &self.logs,
        ));
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/readyz", self.ingest_url))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "herald-ingest did not become ready; logs in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until ingest answers `/healthz`.
    pub async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .http
            .get(format!("{}/healthz", self.ingest_url))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "herald-ingest did not start; logs in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Full name of a topic of this stack.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix)
    }

    /// An authenticated request builder.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.ingest_url))
            .bearer_auth(&self.api_key)
    }

    /// Posts an event (to [`APP`] unless it names an `application`); returns
    /// the status and JSON body.
    pub async fn post_event(&self, event: &Value) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::POST, "/v1/events")
            .json(&addressed(event))
            .send()
            .await
            .expect("POST /v1/events");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts an event and asserts it was accepted; returns its id.
    pub async fn accept_event(&self, event: &Value) -> String {
        let (status, body) = self.post_event(event).await;
        assert_eq!(status, 202, "event not accepted: {body}");
        body["id"].as_str().expect("id in 202 body").to_owned()
    }

    /// Registers an endpoint of [`APP`]; returns the API's answer (with `id`
    /// and `secret`).
    pub async fn create_endpoint(&self, body: Value) -> Value {
        self.create_endpoint_in(APP, body).await
    }

    /// Registers an endpoint of application `app`.
    pub async fn create_endpoint_in(&self, app: &str, body: Value) -> Value {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/applications/{app}/endpoints"),
            )
            .json(&body)
            .send()
            .await
            .expect("POST /v1/applications/{app}/endpoints");
        let status = response.status().as_u16();
        let json: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 201, "endpoint not created: {json}");
        json
    }

    /// Registers an endpoint for `receiver` subscribed to `event_types`, and
    /// teaches the receiver its secret so it can verify signatures.
    pub async fn subscribe(&self, receiver: &Receiver, event_types: &[&str]) -> String {
        let created = self
            .create_endpoint(json!({ "url": receiver.url(), "event_types": event_types }))
            .await;
        receiver.set_secret(created["secret"].as_str().expect("secret"));
        created["id"].as_str().expect("id").to_owned()
    }

    /// Starts `N` receivers that accept everything, each registered as an
    /// endpoint subscribed to `event_types`.
    pub async fn accepting_receivers<const N: usize>(&self, event_types: &[&str]) -> [Receiver; N] {
        let mut receivers = Vec::with_capacity(N);
        for _ in 0..N {
            let receiver = Receiver::start(Behaviour::Accept).await;
            self.subscribe(&receiver, event_types).await;
            receivers.push(receiver);
        }
        receivers
            .try_into()
            .unwrap_or_else(|_| unreachable!("exactly N receivers were started"))
    }

    /// Waits until every dispatcher replica has partitions assigned in both
    /// of its consumer groups (new deliveries and retries), i.e. the groups
    /// have settled with all of them in it.
    pub async fn wait_dispatchers_assigned(&self) {
        for group in [
            herald_core::groups::DISPATCHER,
            herald_core::groups::DISPATCHER_RETRY,
        ] {
            // The trailing space keeps `herald-dispatcher` from matching
            // `herald-dispatcher-retry`.
            let needle = format!("partitions assigned group={}{group} ", self.topic_prefix);
            for dispatcher in &self.dispatchers {
                assert!(
                    dispatcher
                        .wait_for_log(&needle, Duration::from_secs(60))
                        .await,
                    "{} never got partitions in {group}; logs in {}",
                    dispatcher.name,
                    self.logs.display()
                );
            }
        }
    }

    /// Waits until fan-out and the dispatchers have surely seen endpoint
    /// changes made so far (their caches refresh every 100 ms in tests).
    pub async fn settle_endpoints(&self) {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    /// A producer for writing straight to this stack's topics.
    pub fn kafka_producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.infra.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()
            .expect("create producer")
    }

    /// Writes one record to `topic` (a base name such as `herald.events`).
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: Option<&str>,
        value: &[u8],
    ) {
        let topic = self.topic(topic);
        let mut record = FutureRecord::to(&topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(err, _)| panic!("produce to {topic} failed: {err}"));
    }

    /// Writes one JSON event straight to `herald.events` (to [`APP`] unless
    /// it names an `application`, keyed by it), as a producer that
    /// publishes to Kafka rather than calling ingest does.
    pub async fn produce_event(&self, producer: &FutureProducer, event: &Value) {
        let event = addressed(event);
        let key = event["application"].as_str().unwrap_or(APP).to_owned();
        self.produce(
            producer,
            "herald.events",
            Some(&key),
            event.to_string().as_bytes(),
        )
        .await;
    }

    /// `GET path` with the API key; returns status and JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body and the API key; returns status and JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `GET /v1/dlq?{query}` lists at least `n` dead letters;
    /// returns them.
    pub async fn wait_for_dead_letters(
        &self,
        query: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get_json(&format!("/v1/dlq?{query}")).await;
            assert_eq!(status, 200, "{body}");
            let data = body["data"].as_array().cloned().unwrap_or_default();
            if data.len() >= n {
                return data;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} dead letters for {query:?}; logs in {}",
                data.len(),
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes `count` delivery records for `endpoint_id` straight to
    /// `herald.deliveries`, spread round-robin over `partitions` partitions
    /// (so every dispatcher replica gets some). Returns the event ids.
    pub async fn produce_deliveries(
        &self,
        endpoint_id: &str,
        count: usize,
        partitions: i32,
    ) -> Vec<String> {
        let producer = self.kafka_producer();
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            ids.push(
                self.produce_delivery(&producer, endpoint_id, i, i as i32 % partitions)
                    .await,
            );
        }
        ids
    }

    /// Writes one delivery record for `endpoint_id` (payload `{"n": n}`)
    /// to `partition` of `herald.deliveries`, and returns its event id once
    /// Kafka acknowledged it.
    pub async fn produce_delivery(
        &self,
        producer: &FutureProducer,
        endpoint_id: &str,
        n: usize,
        partition: i32,
    ) -> String {
        use prost::Message as _;
        let topic = self.topic("herald.deliveries");
        let event_id = format!("direct_{n}_{}", random_suffix());
        let delivery = herald_core::proto::Delivery {
            delivery_id: herald_core::event::delivery_id(&event_id, endpoint_id),
            endpoint_id: endpoint_id.to_owned(),
            application_id: APP.to_owned(),
            event_id: event_id.clone(),
            event_type: "direct.test".to_owned(),
            payload_json: format!("{{\"n\":{n}}}").into_bytes(),
            event_timestamp_ms: herald_core::event::unix_millis(time::OffsetDateTime::now_utc()),
            ..Default::default()
        };
        let value = delivery.encode_to_vec();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(endpoint_id)
                    .payload(&value)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(err, _)| panic!("produce to {topic} failed: {err}"));
        event_id
    }

    /// The directory holding this stack's logs.
    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }
}

/// A private Redis server for tests that take Redis away. Stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl RedisServer {
    /// Starts `redis-server` on a free port, without persistence.
    pub async fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Freezes the server: connections stay open but nothing answers, as
    /// with a hung or unreachable Redis.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server answer again.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{base}/metrics` as text.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Fetches `{base}/metrics` and returns the value of the sample whose name
/// and labels are exactly `series` (e.g. `herald_retries_total{tier="1s"}`),
/// or 0 when it is absent.
pub async fn metric(base: &str, series: &str) -> f64 {
    metrics_text(base)
        .await
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`eventually`], for a check that has to await (an HTTP request, say).
pub async fn eventually_async<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
