//! The dead-letter index: `herald.dlq` is the record of truth, but Kafka
//! cannot be searched by endpoint, so herald-ingest copies the topic into
//! Redis (its `herald-dlq-indexer` consumer group), where the API lists,
//! reads and replays dead letters. Keys ([`crate::redis_store::Keys`]):
//! - `dlq:letter:{id}`: the `herald.v1.DeadLetter`, expiring after the
//!   retention period (`HERALD_DLQ_RETENTION`);
//! - `dlq:all`, `dlq:endpoint:{endpoint id}` and
//!   `dlq:application:{application id}`: sorted sets of ids by the time they
//!   died, trimmed to the retention period on every write.

use std::time::Duration;

use prost::Message as _;
use redis::aio::ConnectionManager;

use crate::event::unix_millis;
use crate::proto::DeadLetter;
use crate::redis_store::{Keys, StoreError};

/// Which dead letters a listing or replay covers.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    /// Every one.
    All,
    /// One endpoint's.
    Endpoint(&'a str),
    /// One application's.
    Application(&'a str),
}

/// Dead letters in Redis.
#[derive(Clone)]
pub struct DlqIndex {
    redis: ConnectionManager,
    keys: Keys,
    retention: Duration,
}

impl std::fmt::Debug for DlqIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqIndex")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl DlqIndex {
    /// An index under the Redis keys `keys`, keeping letters for
    /// `retention`.
    pub fn new(redis: ConnectionManager, keys: Keys, retention: Duration) -> Self {
        Self {
            redis,
            keys,
            retention,
        }
    }

    /// Adds (or refreshes) a dead letter; idempotent.
    pub async fn put(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let expired_before =
            unix_millis(time::OffsetDateTime::now_utc()) - self.retention.as_millis() as i64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.dead_letter(&letter.id))
            .arg(letter.encode_to_vec())
            .arg("PX")
            .arg(self.retention.as_millis() as u64)
            .ignore()
            .zadd(self.keys.dead_letters(None), &letter.id, letter.dead_at_ms)
            .ignore()
            .zrembyscore(self.keys.dead_letters(None), "-inf", expired_before)
            .ignore();
        for key in self.sets_of(letter) {
            pipe.zadd(&key, &letter.id, letter.dead_at_ms)
                .ignore()
                .zrembyscore(&key, "-inf", expired_before)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The per-endpoint and per-application sets a letter is listed in.
    fn sets_of(&self, letter: &DeadLetter) -> Vec<String> {
        let Some(delivery) = &letter.delivery else {
            return Vec::new();
        };
        let mut sets = vec![self.keys.dead_letters(Some(&delivery.endpoint_id))];
        if !delivery.application_id.is_empty() {
            sets.push(self.keys.application_dead_letters(&delivery.application_id));
        }
        sets
    }

    fn set(&self, filter: Filter<'_>) -> String {
        match filter {
            Filter::All => self.keys.dead_letters(None),
            Filter::Endpoint(id) => self.keys.dead_letters(Some(id)),
            Filter::Application(id) => self.keys.application_dead_letters(id),
        }
    }

    /// Newest first, from position `start`.
    pub async fn list(
        &self,
        filter: Filter<'_>,
        start: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let ids = self.ids_at(filter, start, limit).await?;
        self.get_many(&ids).await
    }

    /// The ids at positions `start..start + limit`, newest first.
    pub async fn ids_at(
        &self,
        filter: Filter<'_>,
        start: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.clone();
        Ok(redis::cmd("ZREVRANGE")
            .arg(self.set(filter))
            .arg(start)
            .arg(start + limit - 1)
            .query_async(&mut conn)
            .await?)
    }

    /// The letters with these ids that still exist.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.clone();
        let keys: Vec<String> = ids.iter().map(|id| self.keys.dead_letter(id)).collect();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        values
            .into_iter()
            .flatten()
            .map(|bytes| {
                DeadLetter::decode(bytes.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("dead letter: {e}")))
            })
            .collect()
    }

    /// Every id listed for an endpoint or application (up to `limit`),
    /// oldest first.
    pub async fn ids(&self, filter: Filter<'_>, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.clone();
        Ok(redis::cmd("ZRANGE")
            .arg(self.set(filter))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await?)
    }

    /// Removes a letter (after it was replayed).
    pub async fn remove(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys.dead_letter(&letter.id))
            .ignore()
            .zrem(self.keys.dead_letters(None), &letter.id)
            .ignore();
        for key in self.sets_of(letter) {
            pipe.zrem(key, &letter.id).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
