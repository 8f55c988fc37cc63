//! An endpoint's attempts: its log's entries (batches, and the entries of
//! former layouts), newest first, until the page is certain; then the
//! page's records.

use super::{decode, parse_lines_with};
use crate::attempt_log::{AttemptLog, AttemptRecord};
use crate::redis_store::StoreError;

/// An entry of an endpoint's log, read back.
#[derive(Debug, PartialEq, Eq)]
enum EndpointEntry<'a> {
    /// A batch that holds attempts to the endpoint (its `ep {endpoint}`
    /// field lists them, each as a reference of three parts), scored by
    /// the latest start among them.
    Batch(&'a str),
    /// A reference to one record, scored by its start, as written before
    /// the endpoint's log named batches: `{start ms} {attempt} {event}
    /// {batch id}`, or, before batches, `{start ms} {attempt} {event}` (the
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
        if is_batch_id(member) {
            return Some(Self::Batch(member));
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

/// Whether `member` is a batch's id as writers name them (`{writer, hex}-{n,
/// hex}`).
fn is_batch_id(member: &str) -> bool {
    member.split_once('-').is_some_and(|(writer, n)| {
        !writer.is_empty()
            && !n.is_empty()
            && writer
                .bytes()
                .chain(n.bytes())
                .all(|b| b.is_ascii_hexdigit())
    })
}

/// One of an endpoint's attempts, found in its log: when it started, and
/// where its record is.
#[derive(Debug)]
struct Located {
    started_at_ms: i64,
    attempt: u32,
    at: Place,
    /// The log's member that named it (dropped when the record is gone).
    member: String,
}

#[derive(Debug)]
enum Place {
    /// The event's field of a batch.
    Batch { batch: String, event: String },
    /// The event's log of the layout before batches.
    EventLog { event: String },
    /// In the endpoint's log itself.
    Inline(AttemptRecord),
}

/// An endpoint's log, read from its newest entry: the attempts it names,
/// and the entries to drop (Herald did not write them, or their batch is
/// gone).
#[derive(Debug, Default)]
struct Scanned {
    located: Vec<Located>,
    gone: Vec<String>,
}

impl Scanned {
    /// Adds what `member` names; `list` is its batch's list of the
    /// endpoint's attempts (`None` for an entry that is no batch, or whose
    /// batch is gone). A record that cannot be read is an error, not a
    /// reason to drop its entry.
    fn add(&mut self, member: String, list: Option<&str>) -> Result<(), StoreError> {
        let Some(entry) = EndpointEntry::parse(&member) else {
            self.gone.push(member);
            return Ok(());
        };
        match entry {
            EndpointEntry::Batch(batch) => {
                let Some(list) = list else {
                    self.gone.push(member);
                    return Ok(());
                };
                // Each line is written as a reference of three parts.
                for line in list.split('\n') {
                    let Some(EndpointEntry::Ref {
                        started_at_ms,
                        attempt,
                        event,
                        batch: None,
                    }) = EndpointEntry::parse(line)
                    else {
                        continue;
                    };
                    self.located.push(Located {
                        started_at_ms,
                        attempt,
                        at: Place::Batch {
                            batch: batch.to_owned(),
                            event: event.to_owned(),
                        },
                        member: member.clone(),
                    });
                }
            }
            EndpointEntry::Ref {
                started_at_ms,
                attempt,
                event,
                batch,
            } => {
                let at = match batch {
                    Some(batch) => Place::Batch {
                        batch: batch.to_owned(),
                        event: event.to_owned(),
                    },
                    None => Place::EventLog {
                        event: event.to_owned(),
                    },
                };
                self.located.push(Located {
                    started_at_ms,
                    attempt,
                    at,
                    member,
                });
            }
            EndpointEntry::Record(json) => {
                let record: AttemptRecord = serde_json::from_str(json)?;
                self.located.push(Located {
                    started_at_ms: record.started_at_ms,
                    attempt: record.attempt,
                    at: Place::Inline(record),
                    member,
                });
            }
        }
        Ok(())
    }
}

/// How many entries of an endpoint's log are read, and their batches'
/// lists of the endpoint's attempts looked up, in one round trip.
const ENTRIES_AT_ONCE: usize = 32;

/// How many records of an endpoint's page are looked up in one round trip.
const LOOKUPS_AT_ONCE: usize = 16;

impl AttemptLog {
    /// An endpoint's attempts, newest first, from position `start`: those
    /// the log still holds, at most its newest `max_per_endpoint`.
    /// Entries that name a batch (or a record) that left with the budget or
    /// the retention, and entries Herald did not write, are dropped from the
    /// endpoint's log as they are met, and the page is read again until it
    /// is full or the log ends, so a short page is always the last one.
    pub async fn for_endpoint(
        &self,
        endpoint_id: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        let wanted = start
            .saturating_add(count)
            .min(self.config.max_per_endpoint as usize);
        if start >= wanted {
            return Ok(Vec::new());
        }
        let key = self.keys.endpoint_attempts(endpoint_id);
        let mut conn = self.redis.clone();
        // Each round drops at least one entry of a log bounded by
        // `max_per_endpoint` (plus what writes add meanwhile), so this ends.
        loop {
            let Scanned {
                mut located,
                mut gone,
            } = self
                .scan_endpoint_log(&mut conn, &key, endpoint_id, wanted)
                .await?;
            // Newest first; attempts that started in the same millisecond by
            // attempt number, so that pages do not shuffle.
            located.sort_by_key(|l| std::cmp::Reverse((l.started_at_ms, l.attempt)));
            located.truncate(wanted);
            let page = located.split_off(start.min(located.len()));
            let mut records = Vec::with_capacity(page.len());
            let mut page = page.into_iter().peekable();
            while page.peek().is_some() {
                let chunk: Vec<Located> = page.by_ref().take(LOOKUPS_AT_ONCE).collect();
                for (member, record) in self.look_up(&mut conn, chunk, endpoint_id).await? {
                    match record {
                        Some(record) => records.push(record),
                        None => gone.push(member),
                    }
                }
            }
            if gone.is_empty() {
                return Ok(records);
            }
            gone.sort_unstable();
            gone.dedup();
            let _: usize = redis::cmd("ZREM")
                .arg(&key)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// Reads `endpoint_id`'s log from its newest entry, with each batch's
    /// list of the endpoint's attempts, until it names `wanted` attempts
    /// that started after the next entry's score, or ends. A batch's
    /// attempts all started before it was written (its score), a
    /// reference's score is its start: so no entry left can name an attempt
    /// that sorts among those (strictly after: one started in the same
    /// millisecond might sort either way).
    async fn scan_endpoint_log(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        key: &str,
        endpoint_id: &str,
        wanted: usize,
    ) -> Result<Scanned, StoreError> {
        let field = crate::attempt_log::write::endpoint_field(endpoint_id);
        let mut scanned = Scanned::default();
        // Writes meanwhile move entries down: one read twice is skipped.
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        loop {
            // One entry more than is read now, for the next entry's score.
            let members: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                .arg(key)
                .arg(offset)
                .arg(offset + ENTRIES_AT_ONCE)
                .arg("WITHSCORES")
                .query_async(&mut *conn)
                .await?;
            let next_score = members.get(ENTRIES_AT_ONCE).map(|(_, score)| *score);
            let members: Vec<String> = members
                .into_iter()
                .take(ENTRIES_AT_ONCE)
                .map(|(member, _)| member)
                .filter(|member| seen.insert(member.clone()))
                .collect();
            let mut lists = redis::pipe();
            for batch in members.iter().filter(|m| is_batch_id(m)) {
                lists
                    .cmd("HGET")
                    .arg(self.keys.attempt_batch(batch))
                    .arg(&field);
            }
            let mut lists = if lists.is_empty() {
                Vec::new().into_iter()
            } else {
                lists
                    .query_async::<Vec<Option<String>>>(&mut *conn)
                    .await?
                    .into_iter()
            };
            for member in members {
                let list = if is_batch_id(&member) {
                    lists.next().flatten()
                } else {
                    None
                };
                scanned.add(member, list.as_deref())?;
            }
            let Some(next_score) = next_score else {
                return Ok(scanned);
            };
            let settled = scanned
                .located
                .iter()
                .filter(|l| l.started_at_ms as f64 > next_score)
                .count();
            if settled >= wanted {
                return Ok(scanned);
            }
            offset += ENTRIES_AT_ONCE;
        }
    }

    /// The records of `page` (of `endpoint_id`'s log), in order, in one
    /// round trip, each with the member that named it: `None` for one
    /// whose record is gone. Records that cannot be read are an error, not
    /// a reason to drop their entries.
    async fn look_up(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        page: Vec<Located>,
        endpoint_id: &str,
    ) -> Result<Vec<(String, Option<AttemptRecord>)>, StoreError> {
        // One lookup per attempt: its event's records in its batch, or in
        // its event's former log.
        let mut lookups = redis::pipe();
        for located in &page {
            match &located.at {
                Place::Batch { batch, event } => {
                    lookups
                        .cmd("HGET")
                        .arg(self.keys.attempt_batch(batch))
                        .arg(event);
                }
                Place::EventLog { event } => {
                    lookups
                        .cmd("ZRANGEBYSCORE")
                        .arg(self.keys.event_attempts(event))
                        .arg(located.started_at_ms)
                        .arg(located.started_at_ms);
                }
                Place::Inline(_) => {}
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
        let mut found = Vec::with_capacity(page.len());
        for located in page {
            let candidates: Vec<AttemptRecord> = match located.at {
                Place::Inline(record) => vec![record],
                Place::Batch { .. } => {
                    match decode::<Option<String>>(replies.next().unwrap_or(redis::Value::Nil))? {
                        Some(lines) => parse_lines_with(&lines, &needle)?,
                        None => Vec::new(),
                    }
                }
                Place::EventLog { .. } => {
                    decode::<Vec<String>>(replies.next().unwrap_or(redis::Value::Nil))?
                        .iter()
                        .map(|json| serde_json::from_str(json))
                        .collect::<Result<_, _>>()?
                }
            };
            let record = candidates.into_iter().find(|candidate| {
                candidate.endpoint_id == endpoint_id
                    && candidate.attempt == located.attempt
                    && candidate.started_at_ms == located.started_at_ms
            });
            found.push((located.member, record));
        }
        Ok(found)
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
        assert_eq!(
            EndpointEntry::parse("0123abcd0123abcd-1f"),
            Some(EndpointEntry::Batch("0123abcd0123abcd-1f"))
        );
        for not_ours in [
            "",
            "x 1 e",
            "1 x e",
            "1 2",
            "1 2 e b extra",
            "-1f",
            "abc-",
            "xyz-1",
        ] {
            assert_eq!(EndpointEntry::parse(not_ours), None, "{not_ours:?}");
        }
    }
}
