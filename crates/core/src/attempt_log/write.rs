//! Writing: one batch of attempts, one pipeline.

use std::collections::HashMap;

use super::trim::EXPIRY_GRACE;
use super::{AttemptLog, LoggedAttempt};
use crate::redis_store::StoreError;

/// The hash field of a batch that counts its records (no event is named
/// `#`: event names hold a `.`).
pub(super) const COUNT_FIELD: &str = "#";

/// How an endpoint's log names an attempt: `{start ms} {attempt} {event}
/// {batch id}` (none of them holds a space). The start is the attempt's
/// score in the endpoint's log; the event and the batch find its record.
fn attempt_ref(started_at_ms: i64, attempt: u32, event: &str, batch: &str) -> String {
    format!("{started_at_ms} {attempt} {event} {batch}")
}

/// An `{event} {written ms, 13 digits} {batch id}` member of the by-event
/// index: an event's batches sort by when they were written, so an event's
/// newest attempts are read first.
pub(super) fn by_event_member(event: &str, written_ms: i64, batch: &str) -> String {
    format!("{event} {written_ms:013} {batch}")
}

/// `name key`, in buffers sized at once for `args` more arguments of
/// `bytes` bytes together: a command grown argument by argument reallocated
/// its buffers several times per attempt.
fn sized(name: &str, key: &str, args: usize, bytes: usize) -> redis::Cmd {
    /// The framing of an argument (and a score's digits), at most.
    const PER_ARG: usize = 24;
    let mut cmd =
        redis::Cmd::with_capacity(2 + args, name.len() + key.len() + bytes + PER_ARG * args);
    cmd.arg(name).arg(key);
    cmd
}

impl AttemptLog {
    /// Records attempts as one batch, in one pipeline, and trims the logs
    /// of their endpoints. Each event's records of the batch are one field
    /// of its hash, each endpoint's references one `ZADD`, and each log is
    /// trimmed and given its expiry once: the dispatcher hands over the
    /// attempts of a few milliseconds together.
    pub async fn write(&self, attempts: &[LoggedAttempt], now_ms: i64) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let batch = self.batches.next();
        let retention_ms = self.config.retention.as_millis() as i64;
        let keep = self.config.max_per_endpoint as isize;
        let mut by_endpoint: HashMap<&str, Vec<(i64, String)>> = HashMap::new();
        // Event ids are unique within an application only; the event's
        // name holds both. Its records, one per line.
        let mut by_event: HashMap<&str, Vec<u8>> = HashMap::new();
        for attempt in attempts {
            let lines = by_event.entry(&attempt.event).or_default();
            if !lines.is_empty() {
                lines.push(b'\n');
            }
            lines.extend_from_slice(&attempt.json);
            by_endpoint.entry(&attempt.endpoint_id).or_default().push((
                attempt.started_at_ms,
                attempt_ref(
                    attempt.started_at_ms,
                    attempt.attempt,
                    &attempt.event,
                    &batch,
                ),
            ));
        }
        // The batch first, then its count and the indexes that name it, the
        // endpoints' references last: whoever finds a batch named (a read,
        // the trim) finds it written, so a batch named but missing is
        // really gone (its index entries may be dropped), and the trim,
        // which may run between any two of these commands, cannot drop a
        // batch it has not been told of yet. (A MULTI/EXEC around the whole
        // would cost Redis for every batch, for races this order makes
        // harmless.)
        let kept_ms = retention_ms + EXPIRY_GRACE.as_millis() as i64;
        let batch_key = self.keys.attempt_batch(&batch);
        let count = attempts.len().to_string();
        let mut hash = sized(
            "HSET",
            &batch_key,
            2 + 2 * by_event.len(),
            by_event.iter().map(|(e, l)| e.len() + l.len()).sum(),
        );
        hash.arg(COUNT_FIELD).arg(&count);
        for (event, lines) in &by_event {
            hash.arg(*event).arg(lines.as_slice());
        }
        let members: Vec<String> = by_event
            .keys()
            .map(|event| by_event_member(event, now_ms, &batch))
            .collect();
        let mut index = sized(
            "ZADD",
            &self.keys.attempts_by_event(),
            2 * members.len(),
            members.iter().map(String::len).sum(),
        );
        for member in &members {
            index.arg(0).arg(member);
        }
        let mut pipe = redis::Pipeline::with_capacity(5 + 4 * by_endpoint.len());
        pipe.add_command(hash)
            .ignore()
            .pexpire(&batch_key, kept_ms)
            .ignore()
            .incr(self.keys.batched_attempts(), attempts.len())
            .ignore()
            .zadd(self.keys.attempt_batches(), &batch, now_ms)
            .ignore()
            .add_command(index)
            .ignore();
        for (endpoint_id, entries) in &by_endpoint {
            let key = self.keys.endpoint_attempts(endpoint_id);
            let mut refs = sized(
                "ZADD",
                &key,
                2 * entries.len(),
                entries.iter().map(|(_, r)| r.len()).sum(),
            );
            for (score, reference) in entries {
                refs.arg(*score).arg(reference);
            }
            pipe.add_command(refs)
                .ignore()
                .zrembyscore(&key, "-inf", now_ms - retention_ms)
                .ignore()
                // Keep the newest `keep`: drop ranks 0 .. -(keep+1).
                .zremrangebyrank(&key, 0, -(keep + 1))
                .ignore()
                .pexpire(&key, retention_ms)
                .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
