//! A broker of a three-node Apache Kafka cluster dies with SIGKILL in the
//! middle of a load and comes back: with Herald's topics replicated three
//! times and `min.insync.replicas=2`, every event that ingest accepted with
//! a 202 reaches every subscribed endpoint, and the test says how long
//! delivery stalled.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_tests::{KafkaCluster, Receiver, Stack, StackOptions};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

const EVENTS: usize = 5000;
/// Concurrent HTTP senders.
const SENDERS: usize = 16;

/// The node leading partition 0 of `topic`: killing it takes writes and
/// reads of that partition away until another replica leads.
fn leader_of_partition_0(bootstrap: &str, topic: &str) -> i32 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == 0)
        .map(|p| p.leader())
        .expect("partition 0 has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_broker_mid_load_loses_no_accepted_event() {
    let Some(mut cluster) = KafkaCluster::prepared() else {
        println!("skipped: Tansu is a single broker; this test needs the Kafka cluster");
        return;
    };
    cluster.start_all().await;
    let stack = Stack::start(
        StackOptions::new("broker-kill")
            .kafka_brokers(&cluster.bootstrap)
            .env("HERALD_TOPIC_REPLICATION", "3")
            .dispatchers(2),
    )
    .await;
    let receivers: [Receiver; 2] = stack.accepting_receivers(&["*"]).await;
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;

    // Every event is sent until ingest accepts it, as a client following the
    // API's advice ("retry later") would. What ingest answered besides 202
    // is counted by status.
    let answers: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let sending = {
        let (stack, answers) = (&stack, answers.clone());
        async move {
            futures::stream::iter(0..EVENTS)
                .for_each_concurrent(SENDERS, |i| {
                    let answers = answers.clone();
                    async move {
                        let event = json!({
                            "application": "app_test",
                            "id": format!("bk_{i}"),
                            "type": "load.test",
                            "payload": {"i": i},
                        });
                        loop {
                            let (status, _) = stack.post_event(&event).await;
                            *answers.lock().unwrap().entry(status).or_default() += 1;
                            if status == 202 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                })
                .await;
        }
    };
    let victim = leader_of_partition_0(&cluster.bootstrap, &stack.topic("herald.events"));
    let chaos = async {
        // Kill once a third of the events has arrived at the first receiver.
        assert!(
            receivers[0]
                .wait_for(EVENTS / 3, Duration::from_secs(120))
                .await,
            "a third of the events did not arrive before the kill; logs in {}",
            stack.logs().display()
        );
        let killed_at = Instant::now();
        cluster.kill(victim);
        let delivered_at_kill = receivers[0].count() + receivers[1].count();
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.restart(victim).await;
        (killed_at, delivered_at_kill, killed_at.elapsed())
    };
    let ((killed_at, delivered_at_kill, down_for), ()) = tokio::join!(chaos, sending);
    assert!(
        delivered_at_kill < 2 * EVENTS,
        "every webhook had arrived before the kill: it tested nothing"
    );

    for receiver in &receivers {
        let seen = receiver
            .wait_for_distinct(EVENTS, Duration::from_secs(240))
            .await;
        assert_eq!(
            seen,
            EVENTS,
            "not every accepted event reached a receiver; logs in {} and {}",
            stack.logs().display(),
            cluster.dir().display()
        );
        let expected: HashSet<String> = (0..EVENTS).map(|i| format!("bk_{i}")).collect();
        let received = receiver.received();
        let seen: HashSet<String> = received.iter().map(|r| r.webhook_id()).collect();
        assert_eq!(
            seen, expected,
            "exactly the events sent, each at least once"
        );
        assert!(received.iter().all(|r| r.signature_valid));
    }

    // The longest pause between two webhooks (at either receiver) after the
    // kill is how long delivery stalled.
    let mut arrivals: Vec<Instant> = receivers
        .iter()
        .flat_map(|r| r.received().into_iter().map(|w| w.at))
        .filter(|at| *at >= killed_at)
        .collect();
    arrivals.sort();
    let stall = std::iter::once(killed_at)
        .chain(arrivals.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    let duplicates: usize = receivers.iter().map(|r| r.received().len() - EVENTS).sum();
    println!(
        "killed node {victim} for {down_for:.1?}: delivery stalled for at most {stall:.1?}; \
         ingest answered {:?} (status: count); {duplicates} duplicate webhooks",
        answers.lock().unwrap()
    );
}
