//! Rate limits shared by every replica through Redis: the generic cell rate
//! algorithm (GCRA), one atomic Lua script per decision.
//!
//! Per endpoint (the dispatchers): for a limit of `r` deliveries per second,
//! each delivery reserves the next free moment, `1/r` s after the one
//! before it across all replicas ([`RateLimiter::take`]). A backlog is
//! thus lined up in one pass — the n-th delivery waits n/r s, in a retry
//! tier when that is long — instead of every waiting delivery asking again
//! and again. A delivery is delayed, never dropped.
//!
//! Moments are kept on two timelines. The reserved one says whose turn is
//! when; the sent one says when the last request actually goes, and every
//! request goes at least `1/r` s after the one before it on it, across all
//! replicas. The second matters when deliveries come back from their retry
//! tiers late and together (a tier hands its records back in batches):
//! sent at their reserved moments, long gone, they would go at once beside
//! the deliveries whose moments are now, and the endpoint would see up to
//! twice its limit within a second.
//!
//! Per API key (herald-ingest): `r` events per second with a burst of `b`,
//! i.e. up to `b` at once after a quiet spell, then one every `1/r` s.
//!
//! Redis layout: `ratelimit:{endpoint}` and `ingestlimit:{key id}` hold the
//! theoretical arrival time of the next allowed request (Unix milliseconds,
//! fractional); `ratesent:{endpoint}` the earliest moment the endpoint's
//! next request may be sent.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::redis_store::{Keys, StoreError};

/// The clock the scripts read: ARGV[1] when it is given (tests), otherwise
/// Redis's own, so that replicas whose clocks differ still share one
/// timeline. Moments are kept to the microsecond (`%.3f`): `tostring` keeps
/// 14 digits, a tenth of a millisecond at Unix-millisecond magnitudes,
/// which would make limits from about 10,000/s drift.
const NOW: &str = r#"
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function keep(key, at)
  redis.call('SET', key, string.format('%.3f', at), 'PX', math.ceil(at - now) + 1000)
end
"#;

/// One request to an endpoint: its moment (the one it reserved, when given
/// and at most the in-place wait ago, or the next free one, reserved now
/// and no earlier than the sent timeline allows), then the moment it is
/// sent, an interval after the last one sent.
/// Returns `{0, ms from now}` to send, `{1, moment, ms from now}` when the
/// moment is further off than the in-place wait (it stays reserved),
/// `{2, 0}` when the requests sent before it are that far ahead (nothing is
/// held).
const TAKE: &str = r#"
local interval = tonumber(ARGV[2])
local reserved = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local sent = tonumber(redis.call('GET', KEYS[2]) or '0')
local moment = reserved
if reserved <= 0 or reserved < now - max_wait then
  -- A new moment: the end of the reserved line, but never before the
  -- sent timeline's, so that it is not reserved only to be crowded out.
  moment = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now, sent)
  keep(KEYS[1], moment + interval)
end
if moment - now > max_wait then
  return {1, math.ceil(moment), math.ceil(moment - now)}
end
local go = math.max(moment, now, sent)
if go - now > max_wait then
  return {2, 0}
end
keep(KEYS[2], go + interval)
return {0, math.ceil(go - now)}
"#;

/// Where the rate limit puts one request to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSlot {
    /// Send it this many milliseconds from now (0: now). Its place on both
    /// timelines is taken.
    SendIn(u64),
    /// Its moment is further off than the wait allowed in place; it stays
    /// reserved for the request.
    Reserved {
        /// The moment, a Unix millisecond on the limiter's clock: handed
        /// back to [`RateLimiter::take`] when the request is made.
        moment_ms: i64,
        /// How long from now that is (on any clock).
        in_ms: u64,
    },
    /// Its moment has come, but the requests sent before it are more than
    /// the wait allowed in place ahead: nothing is held for it.
    Crowded,
}

/// Lets ARGV[4] events through when the limit and burst allow them, or says
/// how long until they do (taking nothing then). More events than the burst
/// go through once the burst is whole, and the time they overdraw is
/// waited for by the requests after them.
const GCRA: &str = r#"
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = tolerance - math.min((count - 1) * interval, tolerance)
if tat - now > room then
  return math.ceil(tat - now - room)
end
keep(KEYS[1], tat + interval * count)
return 0
"#;

/// Which clock a limiter decision is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Redis's own (`TIME`): what every replica uses, so that the skew
    /// between their clocks does not matter.
    Redis,
    /// This Unix millisecond (tests, where every case is exact).
    At(i64),
}

impl Clock {
    /// ARGV[1] of the scripts: empty for Redis's clock.
    fn arg(self) -> String {
        match self {
            Clock::Redis => String::new(),
            Clock::At(ms) => ms.to_string(),
        }
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// The rate limiters of all endpoints.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    keys: Keys,
    script: Script,
    take: Script,
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
            script: script(GCRA),
            take: script(TAKE),
        }
    }

    /// Places one request to `endpoint_id`, limited to `per_second`, on
    /// `clock`: at the moment it reserved earlier (`reserved_ms`, 0 for
    /// none; one more than `max_wait_ms` gone is replaced by a new one), or
    /// at the next free one, and no sooner than an interval after the
    /// request sent before it by any replica. Moments up to `max_wait_ms`
    /// off are [`RateSlot::SendIn`], to be waited for in place.
    pub async fn take(
        &self,
        endpoint_id: &str,
        per_second: u32,
        reserved_ms: i64,
        max_wait_ms: u64,
        clock: Clock,
    ) -> Result<RateSlot, StoreError> {
        let interval_ms = 1000.0 / f64::from(per_second.max(1));
        let mut conn = self.redis.clone();
        let reply: Vec<i64> = self
            .take
            .key(self.keys.rate_limit(endpoint_id))
            .key(self.keys.rate_sent(endpoint_id))
            .arg(clock.arg())
            .arg(interval_ms)
            .arg(reserved_ms)
            .arg(max_wait_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply[..] {
            [0, in_ms, ..] => RateSlot::SendIn(in_ms.max(0) as u64),
            [1, moment_ms, in_ms, ..] => RateSlot::Reserved {
                moment_ms,
                in_ms: in_ms.max(0) as u64,
            },
            _ => RateSlot::Crowded,
        })
    }

    /// Takes slots for `events` events sent with the API key `key_id` (a
    /// digest, never the key), limited to `per_second` with bursts of
    /// `burst`, on `clock`: `0` when they may go now, otherwise the
    /// milliseconds until they may.
    pub async fn try_acquire_ingest(
        &self,
        key_id: &str,
        events: u32,
        per_second: u32,
        burst: u32,
        clock: Clock,
    ) -> Result<u64, StoreError> {
        let interval_ms = 1000.0 / f64::from(per_second.max(1));
        let tolerance_ms = interval_ms * f64::from(burst.max(1) - 1);
        let mut conn = self.redis.clone();
        let wait: u64 = self
            .script
            .key(self.keys.ingest_limit(key_id))
            .arg(clock.arg())
            .arg(interval_ms)
            .arg(tolerance_ms)
            .arg(events.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(wait)
    }
}
