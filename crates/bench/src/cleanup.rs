//! Removing what a run leaves behind in Redis: its endpoints, breakers and
//! attempt logs, all under the run's key prefix. Best effort: what cannot
//! be removed is reported and the run goes on.
//!
//! The run's topics (`bench-<run>…`) stay in the broker: Tansu 0.6, asked
//! to delete one topic, deletes every topic of its cluster (its
//! `topic_delete_by.sql` matches on the cluster alone), which would take
//! any other user's topics with it.

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
