//! What Herald relies on from the broker, checked against the one the tests
//! run on: a consumer that resumes from an offset in the middle of a produced
//! batch (as every consumer does after a rebalance or restart) gets each
//! later record exactly once, in order.

use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::config::{Env, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_inside_a_batch_yields_every_later_record_once() {
    let infra = herald_tests::infra();
    let topic = format!("t{}.broker-contract", herald_tests::random_suffix());
    let kafka = KafkaConfig::from_env(&Env::from_pairs([
        ("HERALD_KAFKA_BROKERS", infra.kafka_brokers.as_str()),
        ("HERALD_TOPIC_PARTITIONS", "1"),
    ]))
    .unwrap();
    herald_core::kafka::ensure_topics(&kafka, std::slice::from_ref(&topic))
        .await
        .unwrap();

    // Sent concurrently with lingering on, so records travel in batches.
    let producer = herald_core::kafka::producer(&kafka, "broker-contract").unwrap();
    let results: Vec<_> = futures::stream::iter(0..500)
        .map(|i| {
            let producer = &producer;
            let topic = &topic;
            async move {
                let value = format!("record-{i}");
                producer
                    .send(
                        FutureRecord::<(), _>::to(topic).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|acked| (acked.offset, value))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut by_offset: Vec<(i64, String)> =
        results.into_iter().map(|r| r.expect("produced")).collect();
    by_offset.sort();
    assert_eq!(by_offset.len(), 500);

    for start in [137_i64, 250, 499] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &infra.kafka_brokers)
            .set(
                "group.id",
                format!("contract-{}", herald_tests::random_suffix()),
            )
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let expected: Vec<(i64, String)> = by_offset
            .iter()
            .filter(|(o, _)| *o >= start)
            .cloned()
            .collect();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while got.len() < 600 && Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => got.push((
                        m.offset(),
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    )),
                    Some(Err(err)) => panic!("consume failed: {err}"),
                    None if got.len() >= 500 - start as usize => break,
                    None => {}
                }
            }
            got
        })
        .await
        .unwrap();
        assert_eq!(got, expected, "resuming at offset {start}");
    }
}
