//! Per-endpoint circuit breakers, kept in Redis so that every dispatcher
//! replica sees and changes the same state. Every change is one Lua script,
//! so it is atomic across replicas.
//!
//! - **closed**: deliveries go ahead. It opens after `consecutive_failures`
//!   failures in a row, or when at least `min_attempts` attempts in the last
//!   `window` failed at `failure_ratio_percent` or more.
//! - **open**: deliveries are not attempted (and spend no attempt) until the
//!   cool-down ends. The cool-down starts at `cooldown`, doubles each time a
//!   probe fails, and stops at `max_cooldown`.
//! - **half-open**: exactly one delivery, across all replicas, may probe the
//!   endpoint (it holds a lease, so a probe whose replica died is replaced);
//!   the others come back a few seconds later. Success closes the breaker;
//!   failure opens it again.
//!
//! A replica that saw an endpoint's breaker closed trusts that for
//! [`CLOSED_TRUST_MS`] before asking Redis again, which spares a round trip
//! before nearly every request. So a breaker another replica opens stops
//! this one's deliveries that much later; one this replica opens stops them
//! at once.
//!
//! Redis layout, under the key prefix:
//! - `breaker:{endpoint}`: hash with `state`, `consecutive`, `cooldown_ms`,
//!   `open_until`, `probe_until`, `opened_at`, `last_error`,
//!   `last_failure_at`, `last_success_at`;
//! - `breaker:{endpoint}:window`: hash of per-bucket counters, `s:{bucket}`
//!   for successes and `f:{bucket}` for failures, 30 buckets per window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::config::{ConfigError, Env};
use crate::redis_store::{Keys, StoreError};

/// How breakers trip and recover.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// `HERALD_BREAKER_CONSECUTIVE_FAILURES` (default `5`): failures in a row
    /// that open the breaker.
    pub consecutive_failures: u32,
    /// `HERALD_BREAKER_MIN_ATTEMPTS` (default `10`): attempts in the window
    /// before the failure ratio counts.
    pub min_attempts: u32,
    /// `HERALD_BREAKER_FAILURE_RATIO` (default `70`, percent): failure share
    /// in the window that opens the breaker.
    pub failure_ratio_percent: u32,
    /// `HERALD_BREAKER_WINDOW` (default `5m`): the window of recent attempts.
    pub window: Duration,
    /// `HERALD_BREAKER_COOLDOWN` (default `30s`): how long the breaker first
    /// stays open.
    pub cooldown: Duration,
    /// `HERALD_BREAKER_MAX_COOLDOWN` (default `10m`): the longest it stays
    /// open after repeated failed probes.
    pub max_cooldown: Duration,
    /// How long one probe may take before another replica may probe
    /// instead (the HTTP timeout plus a margin).
    pub probe_lease: Duration,
}

impl BreakerConfig {
    /// Reads the breaker settings; `http_timeout` sizes the probe lease.
    pub fn from_env(env: &Env, http_timeout: Duration) -> Result<Self, ConfigError> {
        let config = Self {
            consecutive_failures: env.number("HERALD_BREAKER_CONSECUTIVE_FAILURES", 5, 1, 1000)?
                as u32,
            min_attempts: env.number("HERALD_BREAKER_MIN_ATTEMPTS", 10, 1, 100_000)? as u32,
            failure_ratio_percent: env.number("HERALD_BREAKER_FAILURE_RATIO", 70, 1, 100)? as u32,
            window: env.duration("HERALD_BREAKER_WINDOW", Duration::from_secs(300))?,
            cooldown: env.duration("HERALD_BREAKER_COOLDOWN", Duration::from_secs(30))?,
            max_cooldown: env.duration("HERALD_BREAKER_MAX_COOLDOWN", Duration::from_secs(600))?,
            probe_lease: http_timeout + Duration::from_secs(5),
        };
        if config.window < Duration::from_secs(30) {
            return Err(ConfigError {
                key: "HERALD_BREAKER_WINDOW".into(),
                value: None,
                problem: "must be at least 30s".into(),
            });
        }
        if config.max_cooldown < config.cooldown {
            return Err(ConfigError {
                key: "HERALD_BREAKER_MAX_COOLDOWN".into(),
                value: None,
                problem: "must not be shorter than HERALD_BREAKER_COOLDOWN".into(),
            });
        }
        Ok(config)
    }

    /// How long a delivery waits while another one probes: the probe
    /// usually answers long before its lease ends, so come back soon.
    fn probe_wait(&self) -> Duration {
        self.cooldown.min(Duration::from_secs(5))
    }

    fn bucket_ms(&self) -> u64 {
        (self.window.as_millis() as u64 / 30).max(1)
    }
}

/// Whether a delivery may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Closed: go ahead.
    Allow,
    /// Half-open, and this delivery is the one probe.
    Probe,
    /// Open (or another replica is probing): try again at this time (Unix
    /// milliseconds).
    Deny {
        /// When to come back.
        until_ms: i64,
    },
}

/// A state change caused by an attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// Closed → open.
    Opened,
    /// Half-open → open (the probe failed).
    Reopened,
    /// Half-open or open → closed.
    Closed,
}

const ACQUIRE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {'allow', 0} end
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now < open_until then return {'deny', open_until} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + lease)
  return {'probe', 0}
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return {'deny', math.min(probe_until, now + tonumber(ARGV[3]))} end
redis.call('HSET', KEYS[1], 'probe_until', now + lease)
return {'probe', 0}
"#;

/// Hands a probe back that will not be made (the delivery was deferred or
/// refused before any request): the breaker stays half-open with no lease,
/// so the next delivery probes at once. Only the lease this prober got is
/// released (`probe_until` still the one it set); a later prober's, after
/// this one's lease ran out, is left alone.
const RELEASE_PROBE: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'half_open' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'probe_until', 0)
return 1
"#;

const RECORD: &str = r#"
local now = tonumber(ARGV[1])
local success = ARGV[2] == '1'
local probe = ARGV[3] == '1'
local bucket_ms = tonumber(ARGV[5])
local window_ms = tonumber(ARGV[6])
local threshold = tonumber(ARGV[7])
local min_attempts = tonumber(ARGV[8])
local ratio = tonumber(ARGV[9])
local base = tonumber(ARGV[10])
local max = tonumber(ARGV[11])
local retention = tonumber(ARGV[12])

local bucket = math.floor(now / bucket_ms)
local in_bucket = redis.call('HINCRBY', KEYS[2], (success and 's:' or 'f:') .. bucket, 1)
redis.call('PEXPIRE', KEYS[2], window_ms * 2)
-- Drops the buckets that left the window and sums the others. Failures
-- need the sums; a success prunes only when it starts a bucket, which keeps
-- the hash small without reading it on every success.
local function window()
  local fields = redis.call('HGETALL', KEYS[2])
  local ok, fail = 0, 0
  for i = 1, #fields, 2 do
    local b = tonumber(string.sub(fields[i], 3))
    if (b + 1) * bucket_ms <= now - window_ms then
      redis.call('HDEL', KEYS[2], fields[i])
    elseif string.sub(fields[i], 1, 1) == 's' then
      ok = ok + tonumber(fields[i + 1])
    else
      fail = fail + tonumber(fields[i + 1])
    end
  end
  return ok, fail
end

local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local transition = 'none'
if success then
  if in_bucket == 1 then window() end
  redis.call('HSET', KEYS[1], 'consecutive', 0, 'last_success_at', now)
  if state ~= 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'cooldown_ms', 0, 'open_until', 0, 'probe_until', 0)
    transition = 'closed'
  end
else
  local ok, fail = window()
  local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
  redis.call('HSET', KEYS[1], 'last_error', ARGV[4], 'last_failure_at', now)
  if state == 'half_open' and probe then
    local cooldown = tonumber(redis.call('HGET', KEYS[1], 'cooldown_ms') or '0')
    cooldown = math.min(math.max(cooldown, base) * 2, max)
    redis.call('HSET', KEYS[1], 'state', 'open', 'cooldown_ms', cooldown, 'open_until', now + cooldown, 'probe_until', 0)
    transition = 'reopened'
  elseif state == 'closed' then
    local total = ok + fail
    if consecutive >= threshold or (total >= min_attempts and fail * 100 >= ratio * total) then
      redis.call('HSET', KEYS[1], 'state', 'open', 'cooldown_ms', base, 'open_until', now + base, 'opened_at', now, 'probe_until', 0)
      transition = 'opened'
    end
  end
end
redis.call('PEXPIRE', KEYS[1], retention)
return transition
"#;

/// How long breaker state is kept after the last attempt.
const STATE_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// How long (milliseconds) a replica trusts a breaker it saw closed.
pub const CLOSED_TRUST_MS: i64 = 250;

/// Endpoints whose breaker was closed at the time (Unix milliseconds)
/// Redis last said so.
#[derive(Debug, Default)]
struct ClosedSeen {
    at: HashMap<String, i64>,
    /// Pruned to the still-trusted entries when it reaches this size, which
    /// then becomes twice what is left (at least [`CLOSED_SEEN_MIN_PRUNE`]),
    /// so that many busy endpoints do not make every insert a full scan.
    prune_at: usize,
}

const CLOSED_SEEN_MIN_PRUNE: usize = 4096;

fn trusted(seen_ms: i64, now_ms: i64) -> bool {
    (0..CLOSED_TRUST_MS).contains(&(now_ms - seen_ms))
}

impl ClosedSeen {
    fn trusts(&self, endpoint_id: &str, now_ms: i64) -> bool {
        self.at
            .get(endpoint_id)
            .is_some_and(|seen| trusted(*seen, now_ms))
    }

    fn saw_closed(&mut self, endpoint_id: &str, now_ms: i64) {
        if self.at.len() >= self.prune_at.max(CLOSED_SEEN_MIN_PRUNE) {
            self.at.retain(|_, seen| trusted(*seen, now_ms));
            self.prune_at = self.at.len() * 2;
        }
        self.at.insert(endpoint_id.to_owned(), now_ms);
    }

    fn forget(&mut self, endpoint_id: &str) {
        self.at.remove(endpoint_id);
    }
}

/// The breakers of all endpoints.
#[derive(Clone)]
pub struct Breakers {
    redis: ConnectionManager,
    keys: Keys,
    config: BreakerConfig,
    acquire: Script,
    release_probe: Script,
    record: Script,
    closed_seen: Arc<Mutex<ClosedSeen>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Breakers {
    /// Breakers under the Redis keys `keys`.
    pub fn new(redis: ConnectionManager, keys: Keys, config: BreakerConfig) -> Self {
        Self {
            redis,
            keys,
            config,
            acquire: Script::new(ACQUIRE),
            release_probe: Script::new(RELEASE_PROBE),
            record: Script::new(RECORD),
            closed_seen: Arc::default(),
        }
    }

    fn closed_seen(&self) -> std::sync::MutexGuard<'_, ClosedSeen> {
        self.closed_seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a delivery to `endpoint_id` go ahead at `now_ms`?
    pub async fn acquire(&self, endpoint_id: &str, now_ms: i64) -> Result<Permission, StoreError> {
        if self.closed_seen().trusts(endpoint_id, now_ms) {
            return Ok(Permission::Allow);
        }
        let mut conn = self.redis.clone();
        let (decision, until): (String, i64) = self
            .acquire
            .key(self.keys.breaker(endpoint_id))
            .arg(now_ms)
            .arg(self.config.probe_lease.as_millis() as u64)
            .arg(self.config.probe_wait().as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let permission = match decision.as_str() {
            "allow" => Permission::Allow,
            "probe" => Permission::Probe,
            _ => Permission::Deny { until_ms: until },
        };
        if permission == Permission::Allow {
            self.closed_seen().saw_closed(endpoint_id, now_ms);
        }
        Ok(permission)
    }

    /// Hands back the probe that [`Breakers::acquire`] granted at
    /// `acquired_at_ms` when no request will be made for it, so that the
    /// next delivery probes at once instead of after the probe lease.
    /// Returns whether the lease was still this prober's.
    pub async fn release_probe(
        &self,
        endpoint_id: &str,
        acquired_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let lease_until = acquired_at_ms + self.config.probe_lease.as_millis() as i64;
        let released: i64 = self
            .release_probe
            .key(self.keys.breaker(endpoint_id))
            .arg(lease_until)
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// Records an attempt's result and returns the state change it caused.
    pub async fn record(
        &self,
        endpoint_id: &str,
        now_ms: i64,
        success: bool,
        probe: bool,
        error: &str,
    ) -> Result<Transition, StoreError> {
        let mut conn = self.redis.clone();
        let config = &self.config;
        let transition: String = self
            .record
            .key(self.keys.breaker(endpoint_id))
            .key(self.keys.breaker_window(endpoint_id))
            .arg(now_ms)
            .arg(if success { "1" } else { "0" })
            .arg(if probe { "1" } else { "0" })
            .arg(error)
            .arg(config.bucket_ms())
            .arg(config.window.as_millis() as u64)
            .arg(config.consecutive_failures)
            .arg(config.min_attempts)
            .arg(config.failure_ratio_percent)
            .arg(config.cooldown.as_millis() as u64)
            .arg(config.max_cooldown.as_millis() as u64)
            .arg(STATE_RETENTION.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let transition = match transition.as_str() {
            "opened" => Transition::Opened,
            "reopened" => Transition::Reopened,
            "closed" => Transition::Closed,
            _ => Transition::None,
        };
        // After a failure, ask Redis again before the next delivery: this
        // failure, or another replica's, may have opened the breaker.
        if !success {
            self.closed_seen().forget(endpoint_id);
        }
        Ok(transition)
    }
}

/// What `GET /v1/endpoints/{id}/health` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Failures in a row.
    pub consecutive_failures: u64,
    /// Successful attempts in the window.
    pub recent_successes: u64,
    /// Failed attempts in the window.
    pub recent_failures: u64,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// When an open breaker lets a probe through (Unix milliseconds).
    pub next_probe_at_ms: Option<i64>,
    /// When it last opened (Unix milliseconds).
    pub opened_at_ms: Option<i64>,
    /// The last failure's description.
    pub last_error: Option<String>,
    /// When the last attempt failed (Unix milliseconds).
    pub last_failure_at_ms: Option<i64>,
    /// When the last attempt succeeded (Unix milliseconds).
    pub last_success_at_ms: Option<i64>,
}

/// Reads an endpoint's breaker (closed with no history when none exists).
pub async fn read_status(
    redis: &ConnectionManager,
    keys: &Keys,
    endpoint_id: &str,
    window: Duration,
    now_ms: i64,
) -> Result<BreakerStatus, StoreError> {
    use std::collections::HashMap;
    let mut conn = redis.clone();
    let (state, buckets): (HashMap<String, String>, HashMap<String, u64>) = redis::pipe()
        .hgetall(keys.breaker(endpoint_id))
        .hgetall(keys.breaker_window(endpoint_id))
        .query_async(&mut conn)
        .await?;
    let bucket_ms = (window.as_millis() as i64 / 30).max(1);
    let (mut ok, mut fail) = (0, 0);
    for (field, count) in buckets {
        let Some(bucket) = field.get(2..).and_then(|b| b.parse::<i64>().ok()) else {
            continue;
        };
        if (bucket + 1) * bucket_ms <= now_ms - window.as_millis() as i64 {
            continue;
        }
        if field.starts_with("s:") {
            ok += count;
        } else {
            fail += count;
        }
    }
    let number = |key: &str| {
        state
            .get(key)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let current = state
        .get("state")
        .cloned()
        .unwrap_or_else(|| "closed".to_owned());
    Ok(BreakerStatus {
        next_probe_at_ms: if current == "open" {
            number("open_until")
        } else {
            None
        },
        state: current,
        consecutive_failures: number("consecutive").unwrap_or(0) as u64,
        recent_successes: ok,
        recent_failures: fail,
        window_seconds: window.as_secs(),
        opened_at_ms: number("opened_at"),
        last_error: state.get("last_error").cloned().filter(|e| !e.is_empty()),
        last_failure_at_ms: number("last_failure_at"),
        last_success_at_ms: number("last_success_at"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_breaker_is_trusted_for_a_quarter_second() {
        let mut seen = ClosedSeen::default();
        seen.saw_closed("ep", 1_000);
        assert!(seen.trusts("ep", 1_000));
        assert!(seen.trusts("ep", 1_000 + CLOSED_TRUST_MS - 1));
        assert!(!seen.trusts("ep", 1_000 + CLOSED_TRUST_MS));
        assert!(!seen.trusts("ep", 999), "a clock that went back");
        assert!(!seen.trusts("other", 1_000));
    }

    #[test]
    fn stale_entries_are_pruned_without_scanning_on_every_insert() {
        let mut seen = ClosedSeen::default();
        let min = CLOSED_SEEN_MIN_PRUNE;
        for i in 0..min {
            seen.saw_closed(&format!("busy-{i}"), 10_000);
        }
        // All still trusted: the scan keeps them and the next waits for
        // twice as many.
        seen.saw_closed("one-more", 10_000);
        assert_eq!((seen.at.len(), seen.prune_at), (min + 1, 2 * min));
        for i in min + 1..2 * min {
            seen.saw_closed(&format!("busy-{i}"), 10_100);
        }
        assert_eq!(seen.prune_at, 2 * min, "no scan before the mark");
        // A second later every entry is stale and goes.
        seen.saw_closed("late", 11_000);
        assert_eq!(seen.at.len(), 1);
        assert!(seen.trusts("late", 11_000));
    }
}
