//! Reading: an event's attempts, an endpoint's attempts.

use super::write::by_event_member;
use super::{AttemptLog, AttemptRecord, event_member};
use crate::redis_store::StoreError;

/// An entry of an endpoint's log, read back.
#[derive(Debug, PartialEq, Eq)]
enum EndpointEntry<'a> {
    /// A reference to a record: `{start ms} {attempt} {event} {batch id}`,
    /// or, as written before batches, `{start ms} {attempt} {event}` (the
    /// record is in its event's log then).
    Ref {
        started_at_ms: i64,
        attempt: u32,
        event: &'a str,
        batch: Option<&'a str>,
    },
    /// The record itself, as logs written before references held it.
    Record(&'a str),
}

impl<'a> EndpointEntry<'a> {
    fn parse(member: &'a str) -> Option<Self> {
        if member.starts_with('{') {
            return Some(Self::Record(member));
        }
        let mut parts = member.split(' ');
        let started_at_ms = parts.next()?.parse().ok()?;
        let attempt = parts.next()?.parse().ok()?;
        let event = parts.next()?;
        let batch = parts.next();
        if parts.next().is_some() {
            return None;
        }
        Some(Self::Ref {
            started_at_ms,
            attempt,
            event,
            batch,
        })
    }
}

/// One reply of a pipeline, as `T`.
fn decode<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// The records of one event in one batch (one per line).
fn parse_lines(lines: &str) -> Result<Vec<AttemptRecord>, StoreError> {
    parse_lines_with(lines, "")
}

/// Those records of one event in one batch whose line holds `needle`.
fn parse_lines_with(lines: &str, needle: &str) -> Result<Vec<AttemptRecord>, StoreError> {
    lines
        .split('\n')
        .filter(|json| json.contains(needle))
        .map(|json| serde_json::from_str(json).map_err(StoreError::from))
        .collect()
}

/// How many of an event's batches are read in one round trip.
const BATCHES_AT_ONCE: usize = 8;

/// How many references of an endpoint's page are looked up in one round
/// trip.
const LOOKUPS_AT_ONCE: usize = 16;

impl AttemptLog {
    /// An endpoint's attempts, newest first, from position `start`: those
    /// the log still holds. References to attempts that left with their
    /// batch (the budget, the retention), and entries Herald did not write,
    /// are dropped from the endpoint's log as they are met, and the page is
    /// read again until it is full or the log ends, so a short page is
    /// always the last one.
    pub async fn for_endpoint(
        &self,
        endpoint_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.endpoint_attempts(endpoint_id);
        let mut conn = self.redis.clone();
        // Each round drops at least one entry of a log bounded by
        // `max_per_endpoint` (plus what writes add meanwhile), so this ends.
        loop {
            let members: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&key)
                .arg(start)
                .arg(start + count - 1)
                .query_async(&mut conn)
                .await?;
            let entries: Vec<Option<EndpointEntry<'_>>> =
                members.iter().map(|m| EndpointEntry::parse(m)).collect();
            let mut records = Vec::with_capacity(members.len());
            let mut gone = Vec::new();
            // A few references' lookups at a time: an event's field holds
            // its records to every endpoint, so at a high fan-out each
            // lookup may be large.
            for (members, entries) in members
                .chunks(LOOKUPS_AT_ONCE)
                .zip(entries.chunks(LOOKUPS_AT_ONCE))
            {
                let found = self.look_up(&mut conn, entries, endpoint_id).await?;
                for ((member, entry), record) in members.iter().zip(entries).zip(found) {
                    match (entry, record) {
                        (Some(_), Some(record)) => records.push(record),
                        _ => gone.push(member.as_str()),
                    }
                }
            }
            if gone.is_empty() {
                return Ok(records);
            }
            let _: usize = redis::cmd("ZREM")
                .arg(&key)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// The records `entries` of `endpoint_id`'s log name, in order, in one
    /// round trip: `None` for an entry that is not Herald's or whose record
    /// is gone. Records that cannot be read are an error, not a reason to
    /// drop their entries.
    async fn look_up(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        entries: &[Option<EndpointEntry<'_>>],
        endpoint_id: &str,
    ) -> Result<Vec<Option<AttemptRecord>>, StoreError> {
        // One lookup per reference: its event's records in its batch, or in
        // its event's former log.
        let mut lookups = redis::pipe();
        for entry in entries.iter().flatten() {
            if let EndpointEntry::Ref {
                started_at_ms,
                event,
                batch,
                ..
            } = entry
            {
                match batch {
                    Some(batch) => lookups
                        .cmd("HGET")
                        .arg(self.keys.attempt_batch(batch))
                        .arg(*event),
                    None => lookups
                        .cmd("ZRANGEBYSCORE")
                        .arg(self.keys.event_attempts(event))
                        .arg(started_at_ms)
                        .arg(started_at_ms),
                };
            }
        }
        let mut replies = if lookups.is_empty() {
            Vec::new().into_iter()
        } else {
            lookups
                .query_async::<Vec<redis::Value>>(conn)
                .await?
                .into_iter()
        };
        // Only this endpoint's lines of a batch's field are parsed: the field
        // holds the event's records to every endpoint.
        let needle = format!("\"endpoint_id\":{}", serde_json::Value::from(endpoint_id));
        let mut found = Vec::with_capacity(entries.len());
        for entry in entries {
            let record = match entry {
                None => None,
                Some(EndpointEntry::Record(json)) => Some(serde_json::from_str(json)?),
                Some(EndpointEntry::Ref {
                    started_at_ms,
                    attempt,
                    batch,
                    ..
                }) => {
                    let reply = replies.next().unwrap_or(redis::Value::Nil);
                    let candidates = match batch {
                        Some(_) => match decode::<Option<String>>(reply)? {
                            Some(lines) => parse_lines_with(&lines, &needle)?,
                            None => Vec::new(),
                        },
                        None => decode::<Vec<String>>(reply)?
                            .iter()
                            .map(|json| serde_json::from_str(json))
                            .collect::<Result<_, _>>()?,
                    };
                    candidates.into_iter().find(|candidate: &AttemptRecord| {
                        candidate.endpoint_id == endpoint_id
                            && candidate.attempt == *attempt
                            && candidate.started_at_ms == *started_at_ms
                    })
                }
            };
            found.push(record);
        }
        Ok(found)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_entries_of_every_layout_are_told_apart() {
        assert_eq!(
            EndpointEntry::parse("1800000000000 2 acme.evt_1 0123abcd-1f"),
            Some(EndpointEntry::Ref {
                started_at_ms: 1_800_000_000_000,
                attempt: 2,
                event: "acme.evt_1",
                batch: Some("0123abcd-1f"),
            })
        );
        assert_eq!(
            EndpointEntry::parse("1800000000000 2 acme.evt_1"),
            Some(EndpointEntry::Ref {
                started_at_ms: 1_800_000_000_000,
                attempt: 2,
                event: "acme.evt_1",
                batch: None,
            })
        );
        assert_eq!(
            EndpointEntry::parse("{\"attempt\":1}"),
            Some(EndpointEntry::Record("{\"attempt\":1}"))
        );
        for not_ours in ["", "x 1 e", "1 x e", "1 2", "1 2 e b extra"] {
            assert_eq!(EndpointEntry::parse(not_ours), None, "{not_ours:?}");
        }
    }
}
