//! Writing: one batch of attempts, one pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use super::trim::EXPIRY_GRACE;
use super::{AttemptLog, LoggedAttempt};
use crate::redis_store::StoreError;

/// The hash field of a batch that counts its records (no event is named
/// `#`: event names hold a `.`).
pub(super) const COUNT_FIELD: &str = "#";

/// The field of a batch that lists an endpoint's attempts in it: `ep
/// {endpoint id}`. No event's field holds a space (neither application nor
/// event ids do), so the two cannot meet.
pub(super) fn endpoint_field(endpoint_id: &str) -> String {
    format!("ep {endpoint_id}")
}

/// How an endpoint's field of a batch names one of its attempts: `{start
/// ms} {attempt} {event}` (none of them holds a space); the event's field
/// of the same batch holds the record.
fn attempt_line(lines: &mut Vec<u8>, started_at_ms: i64, attempt: u32, event: &str) {
    use std::io::Write as _;
    if !lines.is_empty() {
        lines.push(b'\n');
    }
    let _ = write!(lines, "{started_at_ms} {attempt} {event}");
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
    /// of their endpoints when they are due. Each event's records of the
    /// batch are one field of its hash, each endpoint's list of its
    /// attempts another, and each endpoint's log gets one entry naming the
    /// batch: the dispatcher hands over the attempts of a few milliseconds
    /// together.
    pub async fn write(&self, attempts: &[LoggedAttempt], now_ms: i64) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let batch = self.batches.next();
        let retention_ms = self.config.retention.as_millis() as i64;
        let keep = self.config.max_per_endpoint as isize;
        // Each endpoint's attempts in this batch, one per line, and when
        // the latest of them started, with its shared id (what the upkeep
        // remembers its log by).
        let mut by_endpoint: HashMap<&str, (&Arc<str>, Vec<u8>, i64)> = HashMap::new();
        // Event ids are unique within an application only; the event's
        // name holds both. Its records, one per line.
        let mut by_event: HashMap<&str, Vec<u8>> = HashMap::new();
        for attempt in attempts {
            let lines = by_event.entry(&attempt.event).or_default();
            if !lines.is_empty() {
                lines.push(b'\n');
            }
            lines.extend_from_slice(&attempt.json);
            let (_, lines, latest) = by_endpoint
                .entry(&attempt.endpoint_id)
                .or_insert_with(|| (&attempt.endpoint_id, Vec::new(), i64::MIN));
            *latest = (*latest).max(attempt.started_at_ms);
            attempt_line(
                lines,
                attempt.started_at_ms,
                attempt.attempt,
                &attempt.event,
            );
        }
        // The batch first, then its count and the indexes that name it, the
        // endpoints' entries last: whoever finds a batch named (a read,
        // the trim) finds it written, so a batch named but missing is
        // really gone (its index entries may be dropped), and the trim,
        // which may run between any two of these commands, cannot drop a
        // batch it has not been told of yet. (A MULTI/EXEC around the whole
        // would cost Redis for every batch, for races this order makes
        // harmless.)
        let kept_ms = retention_ms + EXPIRY_GRACE.as_millis() as i64;
        let batch_key = self.keys.attempt_batch(&batch);
        let count = attempts.len().to_string();
        let endpoint_fields: Vec<(String, &[u8])> = by_endpoint
            .iter()
            .map(|(endpoint_id, (_, lines, _))| (endpoint_field(endpoint_id), lines.as_slice()))
            .collect();
        let mut hash = sized(
            "HSET",
            &batch_key,
            2 + 2 * (by_event.len() + endpoint_fields.len()),
            by_event
                .iter()
                .map(|(e, l)| e.len() + l.len())
                .sum::<usize>()
                + endpoint_fields
                    .iter()
                    .map(|(f, l)| f.len() + l.len())
                    .sum::<usize>(),
        );
        hash.arg(COUNT_FIELD).arg(&count);
        for (event, lines) in &by_event {
            hash.arg(*event).arg(lines.as_slice());
        }
        for (field, lines) in &endpoint_fields {
            hash.arg(field).arg(*lines);
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
        // Each endpoint's log names the batch once, scored by the latest
        // start among the endpoint's attempts in it: every attempt an entry
        // names started at or before its score, which is what a read's
        // certainty rests on, and the bound keeps the entries of the newest
        // attempts.
        for (endpoint_id, (endpoint, _, latest)) in &by_endpoint {
            let key = self.keys.endpoint_attempts(endpoint_id);
            pipe.zadd(&key, &batch, *latest)
                .ignore()
                .pexpire(&key, retention_ms)
                .ignore();
            let due = self
                .upkeep
                .due(endpoint, 1, now_ms, self.config.max_per_endpoint);
            if due.retention {
                pipe.zrembyscore(&key, "-inf", now_ms - retention_ms)
                    .ignore();
            }
            if due.bound {
                // Keep the newest `keep`: drop ranks 0 .. -(keep+1).
                pipe.zremrangebyrank(&key, 0, -(keep + 1)).ignore();
            }
        }
        let mut conn = self.redis.clone();
        if let Err(err) = pipe.query_async::<()>(&mut conn).await {
            // Its trims may not have run: trim each log on its next write.
            self.upkeep.forget();
            return Err(err.into());
        }
        Ok(())
    }
}
