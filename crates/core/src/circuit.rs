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
//! Most breakers are closed, and a delivery should not wait for Redis to
//! say so. Redis keeps the set of endpoints whose breaker is *not* closed
//! (changed by the same scripts that open and close them, with a change
//! counter), and each replica holds a copy of it no older than
//! [`CLOSED_TRUST_MS`]: an endpoint not in it may go ahead without a round
//! trip, however many endpoints there are. Renewing the copy costs one
//! small script call per [`CLOSED_TRUST_MS`] while deliveries flow (the set
//! itself is read only when its counter moved), and none while the replica
//! is idle. So a breaker another replica opens stops this one's deliveries
//! at most that much later; one this replica opens, or an endpoint it just
//! saw fail, is asked about at once.
//!
//! Redis layout, under the key prefix:
//! - `breaker:{endpoint}`: hash with `state`, `consecutive`, `cooldown_ms`,
//!   `open_until`, `probe_until`, `opened_at`, `last_error`,
//!   `last_failure_at`, `last_success_at`;
//! - `breaker:{endpoint}:window`: hash of per-bucket counters, `s:{bucket}`
//!   for successes and `f:{bucket}` for failures, 30 buckets per window;
//! - `breakers:not_closed`: sorted set of the endpoints whose breaker is
//!   open or half-open, scored by when it last opened (members older than
//!   the state's retention are dropped, as their state is), and
//!   `breakers:not_closed:version`, bumped whenever the set changes. A
//!   breaker opened before the set existed joins it at its next recorded
//!   attempt. Each change makes every replica read the whole set again, so
//!   its cost follows the number of endpoints whose breaker is open, which
//!   is small next to the number registered; were it to reach tens of
//!   thousands, sending changes instead of the set would be the next step.

use std::collections::HashSet;
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

/// KEYS[1] the breaker, KEYS[2] and KEYS[3] the not-closed set and its
/// counter. A closed breaker that the caller found in the set (ARGV[4] =
/// '1'; its id is ARGV[5]) is taken out of it: its state expired. One not
/// closed that the caller did not find there is put in.
const ACQUIRE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then
  if ARGV[4] == '1' and redis.call('ZREM', KEYS[2], ARGV[5]) == 1 then
    redis.call('INCR', KEYS[3])
  end
  return {'allow', 0}
end
-- Not closed, but missing from the set (opened before the set existed):
-- put it there.
if ARGV[4] ~= '1' and redis.call('ZADD', KEYS[2], 'NX', tonumber(ARGV[1]), ARGV[5]) == 1 then
  redis.call('INCR', KEYS[3])
end
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
-- The not-closed set follows the state it leaves (also for a breaker
-- that was opened before the set existed).
if (redis.call('HGET', KEYS[1], 'state') or 'closed') == 'closed' then
  if redis.call('ZREM', KEYS[3], ARGV[13]) == 1 then redis.call('INCR', KEYS[4]) end
elseif transition == 'opened' or transition == 'reopened' then
  if redis.call('ZADD', KEYS[3], now, ARGV[13]) == 1 then redis.call('INCR', KEYS[4]) end
elseif redis.call('ZADD', KEYS[3], 'NX', now, ARGV[13]) == 1 then
  redis.call('INCR', KEYS[4])
end
return transition
"#;

/// Successes of many endpoints at once, each as RECORD records one success
/// (`count` times). KEYS: the not-closed set, its counter, then each
/// endpoint's breaker and window. ARGV: now, the bucket and window lengths
/// (ms), the state's retention (ms), then each endpoint's id, count and
/// when its latest success ended. Successes are written a few milliseconds
/// after they happened, so a failure recorded since (at once, as failures
/// are) is newer than they are: then they only count in the window, and
/// neither end the run of failures nor close the breaker. Returns the ids
/// whose breaker these successes closed.
const RECORD_SUCCESSES: &str = r#"
local now = tonumber(ARGV[1])
local bucket_ms = tonumber(ARGV[2])
local window_ms = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local bucket = math.floor(now / bucket_ms)
local closed = {}
for i = 0, (#KEYS - 2) / 2 - 1 do
  local breaker, window = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local id, count, at = ARGV[5 + 3 * i], tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i])
  -- A new bucket prunes the ones that left the window, as in RECORD.
  if redis.call('HINCRBY', window, 's:' .. bucket, count) == count then
    local fields = redis.call('HGETALL', window)
    for j = 1, #fields, 2 do
      if (tonumber(string.sub(fields[j], 3)) + 1) * bucket_ms <= now - window_ms then
        redis.call('HDEL', window, fields[j])
      end
    end
  end
  redis.call('PEXPIRE', window, window_ms * 2)
  local state = redis.call('HGET', breaker, 'state') or 'closed'
  if tonumber(redis.call('HGET', breaker, 'last_failure_at') or '0') <= at then
    redis.call('HSET', breaker, 'consecutive', 0, 'last_success_at', at)
    if state ~= 'closed' then
      redis.call('HSET', breaker, 'state', 'closed', 'cooldown_ms', 0, 'open_until', 0, 'probe_until', 0)
      closed[#closed + 1] = id
    end
  end
  redis.call('PEXPIRE', breaker, retention)
  if redis.call('ZREM', KEYS[1], id) == 1 then redis.call('INCR', KEYS[2]) end
end
return closed
"#;

/// The not-closed set KEYS[1] if its counter KEYS[2] is no longer ARGV[1]:
/// `{counter}` when it is, `{counter, ids}` when it moved (after dropping
/// members scored before ARGV[2], whose state has expired).
const NOT_CLOSED: &str = r#"
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
if version == tonumber(ARGV[1]) then return {version} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
return {version, redis.call('ZRANGE', KEYS[1], 0, -1)}
"#;

/// How long breaker state is kept after the last attempt.
const STATE_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Longest (milliseconds) a replica goes on its copy of the not-closed
/// set before renewing it.
pub const CLOSED_TRUST_MS: i64 = 250;

/// A replica's copy of the endpoints whose breaker is not closed.
#[derive(Debug, Default)]
struct NotClosedCopy {
    ids: HashSet<String>,
    /// The set's change counter when it was read.
    version: i64,
    /// When (Unix milliseconds, the callers' clock) the read began; `None`
    /// before the first.
    read_at_ms: Option<i64>,
    /// When the last renewal failed: the next waits [`CLOSED_TRUST_MS`],
    /// so that while Redis is away deliveries do not queue behind renewals
    /// that cannot succeed.
    failed_at_ms: Option<i64>,
    /// Endpoints this replica saw fail since the read began: they may have
    /// opened, so they are asked about until the next renewal.
    failed_since: HashSet<String>,
}

impl NotClosedCopy {
    /// Whether `endpoint_id` may go ahead without asking Redis: `None`
    /// when the copy is too old to say.
    fn may_skip_asking(&self, endpoint_id: &str, now_ms: i64) -> Option<bool> {
        // A caller whose clock reading is a little older than the read
        // (it raced the renewal) is answered too.
        let fresh = self
            .read_at_ms
            .is_some_and(|at| (-CLOSED_TRUST_MS..CLOSED_TRUST_MS).contains(&(now_ms - at)));
        fresh.then(|| !self.ids.contains(endpoint_id) && !self.failed_since.contains(endpoint_id))
    }

    fn renewal_failed_recently(&self, now_ms: i64) -> bool {
        self.failed_at_ms
            .is_some_and(|at| (0..CLOSED_TRUST_MS).contains(&(now_ms - at)))
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
    record_successes: Script,
    not_closed: Script,
    copy: Arc<Mutex<NotClosedCopy>>,
    /// One renewal of the copy at a time.
    renewing: Arc<tokio::sync::Mutex<()>>,
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
            record_successes: Script::new(RECORD_SUCCESSES),
            not_closed: Script::new(NOT_CLOSED),
            copy: Arc::default(),
            renewing: Arc::default(),
        }
    }

    fn copy(&self) -> std::sync::MutexGuard<'_, NotClosedCopy> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a delivery to `endpoint_id` go ahead at `now_ms`?
    pub async fn acquire(&self, endpoint_id: &str, now_ms: i64) -> Result<Permission, StoreError> {
        let listed = match self.may_skip_asking(endpoint_id, now_ms).await {
            Some(true) => return Ok(Permission::Allow),
            Some(false) => self.copy().ids.contains(endpoint_id),
            None => false,
        };
        let mut conn = self.redis.clone();
        let (decision, until): (String, i64) = self
            .acquire
            .key(self.keys.breaker(endpoint_id))
            .key(self.keys.breakers_not_closed())
            .key(self.keys.breakers_not_closed_version())
            .arg(now_ms)
            .arg(self.config.probe_lease.as_millis() as u64)
            .arg(self.config.probe_wait().as_millis() as u64)
            .arg(if listed { "1" } else { "0" })
            .arg(endpoint_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(match decision.as_str() {
            "allow" => Permission::Allow,
            "probe" => Permission::Probe,
            _ => Permission::Deny { until_ms: until },
        })
    }

    /// What the copy of the not-closed set says of `endpoint_id` (see
    /// [`NotClosedCopy::may_skip_asking`]), renewing the copy first when
    /// it is too old; `None` when it cannot be renewed.
    async fn may_skip_asking(&self, endpoint_id: &str, now_ms: i64) -> Option<bool> {
        if let Some(answer) = self.copy().may_skip_asking(endpoint_id, now_ms) {
            return Some(answer);
        }
        // One renewal at a time; the deliveries that come meanwhile ask
        // Redis about their own endpoint instead of queueing behind it (a
        // slow or absent Redis must not make them wait one after another).
        let Ok(_renewing) = self.renewing.try_lock() else {
            return None;
        };
        {
            let copy = self.copy();
            if let Some(answer) = copy.may_skip_asking(endpoint_id, now_ms) {
                return Some(answer);
            }
            if copy.renewal_failed_recently(now_ms) {
                return None;
            }
        }
        match self.renew(now_ms).await {
            Ok(()) => self.copy().may_skip_asking(endpoint_id, now_ms),
            Err(_) => {
                self.copy().failed_at_ms = Some(now_ms);
                None
            }
        }
    }

    /// Reads the not-closed set again if it changed since the copy.
    async fn renew(&self, now_ms: i64) -> Result<(), StoreError> {
        let had = {
            let mut copy = self.copy();
            // Failures seen from now on are asked about until the next
            // renewal; those before are in what this one reads.
            copy.failed_since.clear();
            copy.version
        };
        let oldest = now_ms - STATE_RETENTION.as_millis() as i64;
        let mut conn = self.redis.clone();
        let reply: Vec<redis::Value> = self
            .not_closed
            .key(self.keys.breakers_not_closed())
            .key(self.keys.breakers_not_closed_version())
            .arg(had)
            .arg(oldest)
            .invoke_async(&mut conn)
            .await?;
        let corrupt = |e: redis::ParsingError| StoreError::Corrupt(format!("not-closed set: {e}"));
        let mut reply = reply.into_iter();
        let version: i64 = match reply.next() {
            Some(value) => redis::from_redis_value(value).map_err(corrupt)?,
            None => return Err(StoreError::Corrupt("empty not-closed reply".into())),
        };
        let ids: Option<Vec<String>> = reply
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(corrupt)?;
        let mut copy = self.copy();
        if let Some(ids) = ids {
            copy.ids = ids.into_iter().collect();
        }
        copy.version = version;
        copy.read_at_ms = Some(now_ms);
        copy.failed_at_ms = None;
        Ok(())
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
            .key(self.keys.breakers_not_closed())
            .key(self.keys.breakers_not_closed_version())
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
            .arg(endpoint_id)
            .invoke_async(&mut conn)
            .await?;
        let transition = match transition.as_str() {
            "opened" => Transition::Opened,
            "reopened" => Transition::Reopened,
            "closed" => Transition::Closed,
            _ => Transition::None,
        };
        // The copy follows what this replica changed at once; after a
        // failure, ask Redis before the next delivery: another replica's
        // failure may have opened the breaker meanwhile.
        let mut copy = self.copy();
        match transition {
            Transition::Opened | Transition::Reopened => {
                copy.ids.insert(endpoint_id.to_owned());
            }
            Transition::Closed => {
                copy.ids.remove(endpoint_id);
            }
            Transition::None => {}
        }
        if !success {
            copy.failed_since.insert(endpoint_id.to_owned());
        }
        Ok(transition)
    }
}

impl Breakers {
    /// Records successful attempts of many endpoints in one script call:
    /// `successes` holds each endpoint once, with how many attempts to it
    /// succeeded and when the latest ended (Unix ms). Each counts as
    /// [`Breakers::record`] with success would (a success closes an open or
    /// half-open breaker), unless a failure was recorded after it; returns
    /// the endpoints whose breaker they closed. The dispatcher gathers its
    /// successes over a few milliseconds and records them so, which costs
    /// Redis one call per endpoint and batch instead of one per attempt.
    pub async fn record_successes(
        &self,
        successes: &[(&str, u32, i64)],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if successes.is_empty() {
            return Ok(Vec::new());
        }
        let config = &self.config;
        let mut invocation = self.record_successes.prepare_invoke();
        invocation
            .key(self.keys.breakers_not_closed())
            .key(self.keys.breakers_not_closed_version())
            .arg(now_ms)
            .arg(config.bucket_ms())
            .arg(config.window.as_millis() as u64)
            .arg(STATE_RETENTION.as_millis() as u64);
        for (endpoint_id, count, at_ms) in successes {
            invocation
                .key(self.keys.breaker(endpoint_id))
                .key(self.keys.breaker_window(endpoint_id))
                .arg(*endpoint_id)
                .arg(*count)
                .arg(*at_ms);
        }
        let mut conn = self.redis.clone();
        let closed: Vec<String> = invocation.invoke_async(&mut conn).await?;
        let mut copy = self.copy();
        for id in &closed {
            copy.ids.remove(id);
        }
        Ok(closed)
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
    fn a_copy_of_the_not_closed_set_answers_for_a_quarter_second() {
        let mut copy = NotClosedCopy::default();
        assert_eq!(copy.may_skip_asking("ep", 1_000), None, "never read");
        copy.read_at_ms = Some(1_000);
        copy.ids.insert("open".to_owned());
        assert_eq!(copy.may_skip_asking("ep", 1_000), Some(true));
        assert_eq!(
            copy.may_skip_asking("ep", 1_000 + CLOSED_TRUST_MS - 1),
            Some(true)
        );
        assert_eq!(copy.may_skip_asking("ep", 1_000 + CLOSED_TRUST_MS), None);
        assert_eq!(
            copy.may_skip_asking("ep", 990),
            Some(true),
            "raced the renewal"
        );
        assert_eq!(
            copy.may_skip_asking("ep", 1_000 - CLOSED_TRUST_MS - 1),
            None,
            "a clock that went far back"
        );
        assert_eq!(copy.may_skip_asking("open", 1_000), Some(false));
        copy.failed_since.insert("ep".to_owned());
        assert_eq!(
            copy.may_skip_asking("ep", 1_000),
            Some(false),
            "it just failed"
        );
        copy.failed_at_ms = Some(2_000);
        assert!(copy.renewal_failed_recently(2_000 + CLOSED_TRUST_MS - 1));
        assert!(!copy.renewal_failed_recently(2_000 + CLOSED_TRUST_MS));
    }
}
