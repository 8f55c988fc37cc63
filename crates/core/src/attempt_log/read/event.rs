//! An event's attempts: its batches, newest first, until the page is
//! certain.

use super::parse_lines;
use crate::attempt_log::write::by_event_member;
use crate::attempt_log::{AttemptLog, AttemptRecord, event_member};
use crate::redis_store::StoreError;

/// How many of an event's batches are read in one round trip.
const BATCHES_AT_ONCE: usize = 8;

impl AttemptLog {
    /// An event's attempts (to every endpoint), newest first: those its
    /// batches, and its log of the former layout, still hold.
    pub async fn for_event(
        &self,
        application_id: &str,
        event_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let event = event_member(application_id, event_id);
        let mut conn = self.redis.clone();
        // In one round trip: the event's log of the former layout, whole
        // (it is short-lived), and its `{event} {written} {batch}` index
        // members, newest batch first: from `{event}!` down to `{event} `,
        // which holds every member of this event and none of another that
        // starts with it (an event id holds no character below `!`).
        let index = self.keys.attempts_by_event();
        let (former, members): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.keys.event_attempts(&event))
            .arg(0)
            .arg(-1)
            .cmd("ZREVRANGEBYLEX")
            .arg(&index)
            .arg(format!("({event}!"))
            .arg(format!("[{event} "))
            .query_async(&mut conn)
            .await?;
        let mut records = former
            .iter()
            .map(|json| serde_json::from_str(json).map_err(StoreError::from))
            .collect::<Result<Vec<AttemptRecord>, _>>()?;
        let batches: Vec<(i64, &str)> = members
            .iter()
            .filter_map(|m| {
                let (written, batch) = m
                    .strip_prefix(event.as_str())?
                    .strip_prefix(' ')?
                    .split_once(' ')?;
                Some((written.parse().ok()?, batch))
            })
            .collect();
        let wanted = start + count;
        let mut gone = Vec::new();
        // A few batches at a time, until the page is certain: a record
        // starts before its batch is written, so once `wanted` records
        // started after the next batch was written, no batch
        // left can hold one that sorts before them (strictly later: one
        // started in the same millisecond might sort either way).
        for chunk_start in (0..batches.len()).step_by(BATCHES_AT_ONCE) {
            let chunk = &batches[chunk_start..(chunk_start + BATCHES_AT_ONCE).min(batches.len())];
            let mut lookups = redis::pipe();
            for (_, batch) in chunk {
                lookups
                    .cmd("HGET")
                    .arg(self.keys.attempt_batch(batch))
                    .arg(&event);
            }
            let found: Vec<Option<String>> = lookups.query_async(&mut conn).await?;
            for ((written, batch), lines) in chunk.iter().zip(&found) {
                match lines {
                    Some(lines) => records.extend(parse_lines(lines)?),
                    None => gone.push(by_event_member(&event, *written, batch)),
                }
            }
            let Some((next_written, _)) = batches.get(chunk_start + BATCHES_AT_ONCE) else {
                break;
            };
            let settled = records
                .iter()
                .filter(|r| r.started_at_ms > *next_written)
                .count();
            if settled >= wanted {
                break;
            }
        }
        if !gone.is_empty() {
            // Batches that expired unseen: their index entries go too.
            let _: usize = redis::cmd("ZREM")
                .arg(&index)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        // Newest first; attempts that started in the same millisecond by
        // attempt number, then endpoint, so that pages do not shuffle.
        records.sort_by(|a, b| {
            (b.started_at_ms, b.attempt, &b.endpoint_id).cmp(&(
                a.started_at_ms,
                a.attempt,
                &a.endpoint_id,
            ))
        });
        Ok(records.into_iter().skip(start).take(count).collect())
    }
}
