//! Removing what a run leaves behind: in Redis its endpoints, breakers and
//! attempt logs, all under the run's key prefix; in the broker its topics
//! (`bench-<run>…`). Best effort: what cannot be removed is reported and
//! the run goes on.
//!
//! `--keep-topics` leaves the topics alone, which Tansu 0.6 needs: asked to
//! delete one topic, it deletes every topic of its cluster (its
//! `topic_delete_by.sql` matches on the cluster alone), which would take any
//! other user's topics with it. Apache Kafka deletes exactly the topics
//! named.

use std::time::Duration;

use herald_core::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Deletes every topic whose name starts with `prefix`.
pub async fn delete_topics(kafka: &KafkaConfig, prefix: &str) {
    match try_delete_topics(kafka, prefix).await {
        Ok(0) => {}
        Ok(n) => eprintln!("  deleted the run's {n} topics"),
        Err(problem) => eprintln!("  could not delete the topics {prefix}*: {problem}"),
    }
}

async fn try_delete_topics(kafka: &KafkaConfig, prefix: &str) -> Result<usize, String> {
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        client.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("admin client: {e}"))?;
    let names: Vec<String> = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| format!("metadata: {e}"))?
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&refs, &options)
        .await
        .map_err(|e| format!("delete: {e}"))?;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|(name, code)| format!("{name}: {code}")))
        .collect();
    if failed.is_empty() {
        Ok(names.len())
    } else {
        Err(failed.join(", "))
    }
}

/// Deletes every Redis key that starts with `prefix`.
pub async fn delete_redis_keys(url: &str, prefix: &str) {
    if let Err(problem) = try_delete_redis_keys(url, prefix).await {
        eprintln!("  could not delete the Redis keys {prefix}*: {problem}");
    }
}

async fn try_delete_redis_keys(url: &str, prefix: &str) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    // The pattern is the prefix with glob characters escaped.
    let mut pattern = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
