//! Trimming: the oldest batches leave, whole, until the rest fit the
//! budget and the retention period.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AttemptLog;
use crate::redis_store::StoreError;

/// How often each dispatcher trims the log; the budget may be exceeded by
/// about this long's worth of attempts.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// How much longer than the retention period a batch (or an event's log of
/// the former layout) is kept, so that the trim, which drops index entries
/// older than the retention period, still finds it to count (and drop)
/// when it does.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(600);

/// Most batches (or former event logs) one run of [`TRIM`] drops, and
/// most by-event index entries it removes with them, so that a large
/// backlog is dropped in steps rather than in one long-running script.
const TRIM_STEP: usize = 100;
const TRIM_STEP_ENTRIES: usize = 10_000;

/// How many by-event index entries each run checks for a batch that is gone
/// (one that expired, or was evicted, before the trim dropped it, and took
/// the list of its events along).
const SWEEP: usize = 200;

/// Trims the log to the budget. KEYS: the batches, the by-event index, the
/// count of batched attempts, the former layout's index of events, its
/// count, the sweep's cursor. ARGV: the retention cutoff (ms), the most
/// attempts, the key prefix of batches, the most to drop now, the key
/// prefix of the former event logs (keys of what is dropped are named from
/// the prefixes, so this needs a single Redis, not a cluster), the most
/// index entries to remove now, how many to sweep. Returns how many batches
/// and former logs were dropped, and 1 when there is more to drop now.
///
/// Each layout keeps its own count: dispatchers of the former layout, in a
/// rolling upgrade, still trim their logs by their own count and reset it
/// when their index is empty, which would otherwise throw the batches'
/// count away every second. The budget holds for both together; whichever
/// layout holds the oldest attempts leaves first.
pub(super) const TRIM: &str = r#"
local batched = tonumber(redis.call('GET', KEYS[3]) or '0')
local former = tonumber(redis.call('GET', KEYS[5]) or '0')
local budget = tonumber(ARGV[2])
local most = tonumber(ARGV[4])
local most_entries = tonumber(ARGV[6])
local dropped = 0
local entries = 0
local function drop_event(event)
  local key = ARGV[5] .. event
  former = former - redis.call('ZCARD', key)
  redis.call('UNLINK', key)
  dropped = dropped + 1
end
-- A batch takes its count and its entries in the by-event index along.
local function drop_batch(batch, written)
  local key = ARGV[3] .. batch
  local suffix = ' ' .. string.format('%013d', tonumber(written)) .. ' ' .. batch
  batched = batched - tonumber(redis.call('HGET', key, '#') or '0')
  local events = redis.call('HKEYS', key)
  local members = {}
  for i = 1, #events do
    -- Fields of events only: not the count, nor an endpoint's list ('ep
    -- {endpoint}': no event's name holds a space).
    if events[i] ~= '#' and not string.find(events[i], ' ', 1, true) then
      members[#members + 1] = events[i] .. suffix
      if #members == 500 then
        redis.call('ZREM', KEYS[2], unpack(members))
        members = {}
      end
    end
  end
  if #members > 0 then redis.call('ZREM', KEYS[2], unpack(members)) end
  entries = entries + #events
  redis.call('UNLINK', key)
  dropped = dropped + 1
end
local function room()
  return dropped < most and entries < most_entries
end
-- Past the retention period.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, most)
for i = 1, #expired do
  drop_event(expired[i])
  redis.call('ZREM', KEYS[4], expired[i])
end
expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, most - dropped)
for i = 1, #expired, 2 do
  if not room() then break end
  drop_batch(expired[i], expired[i + 1])
  redis.call('ZREM', KEYS[1], expired[i])
end
-- Over the budget: the oldest first, of either layout.
while batched + former > budget and room() do
  local event = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local batch = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #event == 0 and #batch == 0 then break end
  if #batch == 0 or (#event > 0 and tonumber(event[2]) <= tonumber(batch[2])) then
    redis.call('ZREM', KEYS[4], event[1])
    drop_event(event[1])
  else
    redis.call('ZREM', KEYS[1], batch[1])
    drop_batch(batch[1], batch[2])
  end
end
-- Stopped by the step's bounds: there may be more to drop now.
local more = 0
if not room() then more = 1 end
-- Index entries of batches gone before the trim dropped them: a few per
-- run, going round the index.
local cursor = redis.call('GET', KEYS[6])
local from = '-'
if cursor then from = '(' .. cursor end
local swept = redis.call('ZRANGEBYLEX', KEYS[2], from, '+', 'LIMIT', 0, tonumber(ARGV[7]))
for i = 1, #swept do
  local batch = string.match(swept[i], ' ([^ ]+)$')
  if not batch or not redis.call('ZSCORE', KEYS[1], batch) then
    redis.call('ZREM', KEYS[2], swept[i])
  end
end
if #swept < tonumber(ARGV[7]) then
  redis.call('DEL', KEYS[6])
else
  redis.call('SET', KEYS[6], swept[#swept])
end
-- With nothing left, nothing is held: a count that drifted (batches that
-- expired unseen while no dispatcher ran) starts again from zero.
if redis.call('ZCARD', KEYS[1]) == 0 or batched < 0 then batched = 0 end
if redis.call('ZCARD', KEYS[4]) == 0 or former < 0 then former = 0 end
redis.call('SET', KEYS[3], batched)
redis.call('SET', KEYS[5], former)
return {dropped, more}
"#;

impl AttemptLog {
    /// Drops the batches (and former event logs) past the retention
    /// period, then the oldest until the rest hold at most `max_attempts`
    /// attempts. Returns how many were dropped.
    pub async fn trim(&self, now_ms: i64) -> Result<usize, StoreError> {
        let cutoff = now_ms - self.config.retention.as_millis() as i64;
        let mut dropped = 0;
        loop {
            let mut conn = self.redis.clone();
            let (step, more): (usize, u8) = self
                .trim
                .key(self.keys.attempt_batches())
                .key(self.keys.attempts_by_event())
                .key(self.keys.batched_attempts())
                .key(self.keys.attempted_events())
                .key(self.keys.retained_attempts())
                .key(self.keys.attempts_by_event_sweep())
                .arg(cutoff)
                .arg(self.config.max_attempts)
                .arg(self.keys.attempt_batch_prefix())
                .arg(TRIM_STEP)
                .arg(self.keys.event_attempts_prefix())
                .arg(TRIM_STEP_ENTRIES)
                .arg(SWEEP)
                .invoke_async(&mut conn)
                .await?;
            dropped += step;
            if more == 0 {
                return Ok(dropped);
            }
        }
    }

    /// Trims every [`TRIM_INTERVAL`] until `shutdown`. A failure is logged
    /// and the next round tries again (writes go on meanwhile; the bound is
    /// restored once Redis answers).
    pub async fn trim_every_interval(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TRIM_INTERVAL) => {}
            }
            let now_ms = crate::event::unix_millis(time::OffsetDateTime::now_utc());
            match self.trim(now_ms).await {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::debug!(dropped, "attempt log batches of older attempts dropped")
                }
                Err(err) => tracing::debug!(error = %err, "cannot trim the attempt log"),
            }
        }
    }
}
