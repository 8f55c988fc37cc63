//! Rate limits shared by every replica through Redis: the generic cell rate
//! algorithm (GCRA), one atomic Lua script per decision.
//!
//! Per endpoint (the dispatchers): for a limit of `r` deliveries per second,
//! each delivery reserves the next free moment, `1/r` s after the one
//! before it across all replicas ([`RateLimiter::reserve`]). A backlog is
//! thus lined up in one pass — the n-th delivery waits n/r s, in a retry
//! tier when that is long — instead of every waiting delivery asking again
//! and again. A delivery is delayed, never dropped.
//!
//! Per API key (herald-ingest): `r` events per second with a burst of `b`,
//! i.e. up to `b` at once after a quiet spell, then one every `1/r` s.
//!
//! Redis layout: `ratelimit:{endpoint}` and `ingestlimit:{key id}` hold the
//! theoretical arrival time of the next allowed request (Unix milliseconds,
//! fractional).

use redis::Script;
use redis::aio::ConnectionManager;

use crate::redis_store::{Keys, StoreError};

/// Takes the next free moment of an endpoint: returns how long from now it
/// is (0: now) and moves the next free moment one interval past it.
const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return math.ceil(tat - now)
"#;

/// Lets ARGV[4] events through when the limit and burst allow them, or says
/// how long until they do (taking nothing then). More events than the burst
/// go through once the burst is whole, and the time they overdraw is
/// waited for by the requests after them.
const GCRA: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = tolerance - math.min((count - 1) * interval, tolerance)
if tat - now > room then
  return math.ceil(tat - now - room)
end
local next_tat = tat + interval * count
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return 0
"#;

/// The rate limiters of all endpoints.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    keys: Keys,
    script: Script,
    reserve: Script,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl RateLimiter {
    /// Limiters under the Redis keys `keys`.
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            script: Script::new(GCRA),
            reserve: Script::new(RESERVE),
        }
    }

    /// Reserves the next free moment for one delivery to `endpoint_id`
    /// limited to `per_second`: the milliseconds from `now_ms` until it (0:
    /// it may go now). The moment is taken whatever the caller does with it.
    pub async fn reserve(
        &self,
        endpoint_id: &str,
        per_second: u32,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let interval_ms = 1000.0 / f64::from(per_second.max(1));
        let mut conn = self.redis.clone();
        let wait: u64 = self
            .reserve
            .key(self.keys.rate_limit(endpoint_id))
            .arg(now_ms)
            .arg(interval_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(wait)
    }

    /// Takes slots for `events` events sent with the API key `key_id` (a
    /// digest, never the key), limited to `per_second` with bursts of
    /// `burst`: `0` when they may go now, otherwise the milliseconds until
    /// they may.
    pub async fn try_acquire_ingest(
        &self,
        key_id: &str,
        events: u32,
        per_second: u32,
        burst: u32,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.acquire(
            self.keys.ingest_limit(key_id),
            events,
            per_second,
            burst,
            now_ms,
        )
        .await
    }

    async fn acquire(
        &self,
        key: String,
        events: u32,
        per_second: u32,
        burst: u32,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let interval_ms = 1000.0 / f64::from(per_second.max(1));
        let tolerance_ms = interval_ms * f64::from(burst.max(1) - 1);
        let mut conn = self.redis.clone();
        let wait: u64 = self
            .script
            .key(key)
            .arg(now_ms)
            .arg(interval_ms)
            .arg(tolerance_ms)
            .arg(events.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(wait)
    }
}
