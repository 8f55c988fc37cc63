//! Per-minute counters in Redis, for the console's and portal's charts.
//!
//! The pages must work on a bare install, with no Prometheus to ask, so each
//! process adds what it saw to one Redis hash per minute, beside the attempt
//! log, and the hashes expire after [`RETENTION`]. Nothing on the hot path
//! talks to Redis for this: a delivery bumps a few process-local counters
//! ([`event_accepted`], [`attempt`], [`delivered`]), and a background task
//! ([`Flusher`]) moves what they hold into Redis every [`FLUSH_INTERVAL`] in
//! one pipeline. The charts are therefore up to that interval behind, and a
//! process that crashes loses at most that much of their data (never an
//! event: these are only counts).
//!
//! | key | fields |
//! | --- | --- |
//! | `stats:{unix minute}` | `accepted`, `delivered`, `failed`, `e2e:{bucket}` (end-to-end latency of delivered webhooks, [`LATENCY_BUCKETS_MS`]), `lag:{group}:{instance}` (the consumer lag that process last saw; the overview sums fan-out's and the dispatchers') |
//! | `stats:endpoint:{endpoint id}:{unix minute}` | `ok`, `failed` (attempts) |

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::redis_store::{Keys, StoreError};

/// How long a minute's counters are kept.
pub const RETENTION: Duration = Duration::from_secs(2 * 3600);
/// How often a process writes what it counted.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Upper bounds, in milliseconds, of the end-to-end latency buckets; a last
/// bucket holds everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];
const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// What this process counted since the last flush.
struct Pending {
    accepted: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Attempts per endpoint: `[successes, failures]`.
    endpoints: Mutex<HashMap<String, [u64; 2]>>,
    /// Consumer lag per consumer group, as librdkafka last reported it.
    lag: Mutex<HashMap<String, i64>>,
}

fn pending() -> &'static Pending {
    static PENDING: std::sync::OnceLock<Pending> = std::sync::OnceLock::new();
    PENDING.get_or_init(|| Pending {
        accepted: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latency: std::array::from_fn(|_| AtomicU64::new(0)),
        endpoints: Mutex::new(HashMap::new()),
        lag: Mutex::new(HashMap::new()),
    })
}

/// `events` events were accepted.
pub fn event_accepted(events: u64) {
    pending().accepted.fetch_add(events, Ordering::Relaxed);
}

/// An HTTP attempt to `endpoint_id` succeeded or failed.
pub fn attempt(endpoint_id: &str, success: bool) {
    let p = pending();
    if !success {
        p.failed.fetch_add(1, Ordering::Relaxed);
    }
    let mut endpoints = p.endpoints.lock().unwrap_or_else(|e| e.into_inner());
    let slot = usize::from(!success);
    match endpoints.get_mut(endpoint_id) {
        Some(counts) => counts[slot] += 1,
        None => {
            let mut counts = [0; 2];
            counts[slot] = 1;
            endpoints.insert(endpoint_id.to_owned(), counts);
        }
    }
}

/// A webhook was delivered `age_ms` after its event was accepted.
pub fn delivered(age_ms: i64) {
    let p = pending();
    p.delivered.fetch_add(1, Ordering::Relaxed);
    p.latency[latency_bucket(age_ms)].fetch_add(1, Ordering::Relaxed);
}

/// The consumer lag (all partitions together) that `group`'s consumer in
/// this process sees now.
pub fn consumer_lag(group: &str, lag: i64) {
    let mut all = pending().lag.lock().unwrap_or_else(|e| e.into_inner());
    all.insert(group.to_owned(), lag);
}

fn latency_bucket(age_ms: i64) -> usize {
    let age = age_ms.max(0) as u64;
    LATENCY_BUCKETS_MS
        .iter()
        .position(|&bound| age <= bound)
        .unwrap_or(LATENCY_BUCKETS_MS.len())
}

/// The Unix minute of `now_ms`.
pub fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(60_000)
}

/// Moves what this process counted into Redis, every [`FLUSH_INTERVAL`].
#[derive(Clone)]
pub struct Flusher {
    redis: ConnectionManager,
    keys: Keys,
    /// Names this process among the ones reporting consumer lag.
    instance: String,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// A flusher writing under `keys`.
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        static SEQUENCE: AtomicI64 = AtomicI64::new(0);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".to_owned());
        Self {
            redis,
            keys,
            instance: format!(
                "{host}-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// Flushes every interval until `shutdown`, then once more.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(err) = self
                .flush(crate::event::unix_millis(time::OffsetDateTime::now_utc()))
                .await
            {
                tracing::debug!(error = %err, "cannot write the per-minute counters; they are kept for the next try");
            }
        }
        let _ = self
            .flush(crate::event::unix_millis(time::OffsetDateTime::now_utc()))
            .await;
    }

    /// Writes what was counted into the minute of `now_ms`. What cannot be
    /// written is counted again, for the next flush.
    pub async fn flush(&self, now_ms: i64) -> Result<(), StoreError> {
        let p = pending();
        let accepted = p.accepted.swap(0, Ordering::Relaxed);
        let delivered = p.delivered.swap(0, Ordering::Relaxed);
        let failed = p.failed.swap(0, Ordering::Relaxed);
        let latency: [u64; BUCKETS] =
            std::array::from_fn(|i| p.latency[i].swap(0, Ordering::Relaxed));
        let endpoints = std::mem::take(&mut *p.endpoints.lock().unwrap_or_else(|e| e.into_inner()));
        let lag = p.lag.lock().unwrap_or_else(|e| e.into_inner()).clone();

        let minute = minute_of(now_ms);
        let key = self.keys.minute_stats(minute);
        let ttl = RETENTION.as_secs() as i64;
        // All or nothing: counts put back after a failure must not have
        // been written in part.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (field, value) in [
            ("accepted", accepted),
            ("delivered", delivered),
            ("failed", failed),
        ] {
            if value > 0 {
                pipe.hincr(&key, field, value).ignore();
            }
        }
        for (bucket, count) in latency.iter().enumerate() {
            if *count > 0 {
                pipe.hincr(&key, format!("e2e:{bucket}"), *count).ignore();
            }
        }
        for (group, value) in &lag {
            pipe.hset(&key, format!("lag:{group}:{}", self.instance), *value)
                .ignore();
        }
        pipe.expire(&key, ttl).ignore();
        for (endpoint_id, [ok, failed]) in &endpoints {
            let key = self.keys.endpoint_minute_stats(endpoint_id, minute);
            if *ok > 0 {
                pipe.hincr(&key, "ok", *ok).ignore();
            }
            if *failed > 0 {
                pipe.hincr(&key, "failed", *failed).ignore();
            }
            pipe.expire(&key, ttl).ignore();
        }
        let mut redis = self.redis.clone();
        if let Err(err) = pipe.query_async::<()>(&mut redis).await {
            // Put the counts back: the next flush writes them.
            p.accepted.fetch_add(accepted, Ordering::Relaxed);
            p.delivered.fetch_add(delivered, Ordering::Relaxed);
            p.failed.fetch_add(failed, Ordering::Relaxed);
            for (i, count) in latency.iter().enumerate() {
                p.latency[i].fetch_add(*count, Ordering::Relaxed);
            }
            let mut all = p.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            for (id, [ok, failed]) in endpoints {
                let counts = all.entry(id).or_default();
                counts[0] += ok;
                counts[1] += failed;
            }
            return Err(err.into());
        }
        Ok(())
    }
}

/// One minute of the whole installation, as the overview charts it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// Its Unix minute.
    pub minute: i64,
    /// Events accepted.
    pub accepted: u64,
    /// Webhooks delivered.
    pub delivered: u64,
    /// Failed attempts.
    pub failed: u64,
    /// End-to-end latency of the delivered ones, per bucket.
    pub latency: Vec<u64>,
    /// Consumer lag, summed over the processes that reported it (the
    /// latest value each reported in that minute); `None` when none did.
    pub lag: Option<i64>,
}

impl Minute {
    /// The end-to-end latency at quantile `q` (0–1), in milliseconds: the
    /// upper bound of the bucket it falls in (the slowest bucket reports its
    /// lower bound). `None` when nothing was delivered.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        quantile(&self.latency, q)
    }
}

/// The quantile `q` of latency `buckets` (see [`Minute::latency_quantile_ms`]).
pub fn quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(
                LATENCY_BUCKETS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 1]),
            );
        }
    }
    None
}

/// The `minutes` minutes up to and including the one of `now_ms`, oldest
/// first.
pub async fn read_minutes(
    redis: &ConnectionManager,
    keys: &Keys,
    now_ms: i64,
    minutes: usize,
) -> Result<Vec<Minute>, StoreError> {
    let last = minute_of(now_ms);
    let first = last - minutes as i64 + 1;
    let mut pipe = redis::pipe();
    for minute in first..=last {
        pipe.hgetall(keys.minute_stats(minute));
    }
    let mut redis = redis.clone();
    let hashes: Vec<HashMap<String, i64>> = pipe.query_async(&mut redis).await?;
    Ok((first..=last)
        .zip(hashes)
        .map(|(minute, fields)| {
            let count = |name: &str| fields.get(name).copied().unwrap_or(0).max(0) as u64;
            let lags: Vec<i64> = fields
                .iter()
                .filter(|(name, _)| is_hot_path_lag(name))
                .map(|(_, value)| (*value).max(0))
                .collect();
            Minute {
                minute,
                accepted: count("accepted"),
                delivered: count("delivered"),
                failed: count("failed"),
                latency: (0..BUCKETS).map(|i| count(&format!("e2e:{i}"))).collect(),
                lag: (!lags.is_empty()).then(|| lags.iter().sum()),
            }
        })
        .collect())
}

/// Whether a `lag:{group}:{instance}` field is of the event path's own
/// consumers (fan-out, dispatchers), whose lag is work waiting. The retry
/// tiers' records wait for their due time by design, and the dead-letter
/// indexer is not on the event's path.
fn is_hot_path_lag(field: &str) -> bool {
    field
        .strip_prefix("lag:")
        .and_then(|rest| rest.rsplit_once(':'))
        .is_some_and(|(group, _)| {
            group.ends_with(crate::groups::FANOUT) || group.ends_with(crate::groups::DISPATCHER)
        })
}

/// One endpoint's attempts in each of the `minutes` minutes up to the one
/// of `now_ms`, oldest first: `(minute, successes, failures)`.
pub async fn read_endpoint_minutes(
    redis: &ConnectionManager,
    keys: &Keys,
    endpoint_id: &str,
    now_ms: i64,
    minutes: usize,
) -> Result<Vec<(i64, u64, u64)>, StoreError> {
    let last = minute_of(now_ms);
    let first = last - minutes as i64 + 1;
    let mut pipe = redis::pipe();
    for minute in first..=last {
        pipe.cmd("HMGET")
            .arg(keys.endpoint_minute_stats(endpoint_id, minute))
            .arg("ok")
            .arg("failed");
    }
    let mut redis = redis.clone();
    let counts: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut redis).await?;
    Ok((first..=last)
        .zip(counts)
        .map(|(minute, (ok, failed))| (minute, ok.unwrap_or(0), failed.unwrap_or(0)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_of_their_upper_bound() {
        assert_eq!(latency_bucket(-3), 0);
        assert_eq!(latency_bucket(5), 0);
        assert_eq!(latency_bucket(6), 1);
        assert_eq!(latency_bucket(1_000), 7);
        assert_eq!(latency_bucket(10_000_000), LATENCY_BUCKETS_MS.len());
    }

    #[test]
    fn only_the_event_paths_consumers_count_as_lag() {
        assert!(is_hot_path_lag("lag:t1.herald-fanout:host-1-0"));
        assert!(is_hot_path_lag("lag:herald-dispatcher:host-1-0"));
        assert!(!is_hot_path_lag("lag:herald-dispatcher-retry:host-1-0"));
        assert!(!is_hot_path_lag("lag:herald-dlq-indexer:host-1-0"));
        assert!(!is_hot_path_lag("accepted"));
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut buckets = vec![0; BUCKETS];
        assert_eq!(quantile(&buckets, 0.5), None);
        buckets[1] = 98; // ≤ 10 ms
        buckets[7] = 2; // ≤ 1 s
        assert_eq!(quantile(&buckets, 0.5), Some(10));
        assert_eq!(quantile(&buckets, 0.98), Some(10));
        assert_eq!(quantile(&buckets, 0.99), Some(1_000));
        buckets[BUCKETS - 1] = 1_000;
        assert_eq!(quantile(&buckets, 0.99), Some(300_000));
    }
}
