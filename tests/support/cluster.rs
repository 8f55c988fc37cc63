//! A three-node Apache Kafka cluster that a test starts, kills and restarts
//! itself.
//!
//! `scripts/test` prepares the nodes (configuration, formatted log
//! directories, one `run` script each) in `HERALD_TEST_KAFKA_CLUSTER`, and
//! starts none of them: three JVMs are only worth their memory while a
//! broker-failure test runs. On Tansu, a single broker, the variable is not
//! set and [`KafkaCluster::prepared`] says so.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The prepared cluster; its running nodes are stopped on drop.
#[derive(Debug)]
pub struct KafkaCluster {
    dir: PathBuf,
    /// Client bootstrap list of all nodes.
    pub bootstrap: String,
    /// Node id → client port.
    ports: BTreeMap<i32, u16>,
    running: BTreeMap<i32, Child>,
}

impl KafkaCluster {
    /// The cluster `scripts/test` prepared, or `None` when it prepared none
    /// (a run on Tansu). A run on Apache Kafka without one is a broken set-up
    /// and panics, so that the broker-failure tests cannot skip unnoticed.
    pub fn prepared() -> Option<KafkaCluster> {
        let Some(dir) = std::env::var_os("HERALD_TEST_KAFKA_CLUSTER").map(PathBuf::from) else {
            let broker = std::env::var("HERALD_TEST_BROKER").unwrap_or_default();
            assert_eq!(
                broker, "tansu",
                "HERALD_TEST_KAFKA_CLUSTER is not set: run the tests with scripts/test, which \
                 prepares a three-node Kafka cluster"
            );
            return None;
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("cannot read {}/{name}: {e}", dir.display()))
        };
        let ports = read("nodes")
            .lines()
            .filter_map(|line| {
                let (id, port) = line.split_once(' ')?;
                Some((id.parse().ok()?, port.trim().parse().ok()?))
            })
            .collect();
        Some(KafkaCluster {
            bootstrap: read("bootstrap").trim().to_owned(),
            dir,
            ports,
            running: BTreeMap::new(),
        })
    }

    /// Node ids, in order.
    pub fn nodes(&self) -> Vec<i32> {
        self.ports.keys().copied().collect()
    }

    /// Starts every node and waits until the cluster's metadata lists all
    /// of them.
    pub async fn start_all(&mut self) {
        for node in self.nodes() {
            self.spawn(node);
        }
        self.wait_for_brokers(self.ports.len(), Duration::from_secs(120))
            .await;
    }

    /// Starts node `node` again (after [`KafkaCluster::kill`]) and waits
    /// until the metadata lists it.
    pub async fn restart(&mut self, node: i32) {
        self.spawn(node);
        self.wait_for_brokers(self.ports.len(), Duration::from_secs(120))
            .await;
    }

    /// SIGKILL: the node dies with no chance to close anything.
    pub fn kill(&mut self, node: i32) {
        if let Some(mut child) = self.running.remove(&node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, node: i32) {
        let node_dir = self.dir.join(format!("node-{node}"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("kafka.log"))
            .expect("open the node's log");
        let child = Command::new(node_dir.join("run"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Kafka node {node}: {e}"));
        self.running.insert(node, child);
    }

    /// Waits until a metadata request lists at least `want` brokers.
    pub async fn wait_for_brokers(&self, want: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let listed = self.brokers_listed().await;
            if listed >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster lists {listed} of {want} brokers after {limit:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn brokers_listed(&self) -> usize {
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = match ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
            {
                Ok(consumer) => consumer,
                Err(_) => return 0,
            };
            consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|metadata| metadata.brokers().len())
                .unwrap_or(0)
        })
        .await
        .unwrap_or(0)
    }

    /// The node's data and log directory, for messages.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in self.nodes() {
            self.kill(node);
        }
    }
}
