//! Applications: the platform's customers. Every endpoint belongs to one
//! application, every event is addressed to one, and an event reaches only
//! the endpoints of its own application.
//!
//! Redis layout ([`crate::redis_store::Keys`]): `app:{id}` holds the
//! application's JSON, `apps` every id by creation time, `app:{id}:endpoints`
//! the ids of its endpoints, and `app:{id}:version` a counter bumped by every
//! change to the application or its endpoints, which is how fan-out notices
//! that its copy of one application's subscriptions is stale without
//! reloading any other.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::redis_store::{Keys, StoreError, get_json, mget_counters, mget_json, modify_json};

/// Header of a `herald.events` record that ingest accepted: the
/// application's change counter when the event was accepted. Fan-out reads
/// the application's endpoints again before fanning out an event stamped
/// with a counter newer than its copy, so a change answered before the event
/// was sent always applies to it.
pub const VERSION_HEADER: &str = "herald-application-version";

/// One of the platform's customers, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// The caller's own id for the customer, or `app_…` generated.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free string pairs for the caller.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Most events per second accepted for it, across ingest replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Creates KEYS[1] (the application) unless it exists, indexes it in
/// KEYS[2] and bumps its version KEYS[3]: 1 created, 0 the id is taken.
const CREATE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 1
"#;

/// Deletes the application KEYS[1], every endpoint listed in KEYS[3]
/// (endpoint keys are ARGV[2] .. id, whose counters it bumps) and every
/// token listed in KEYS[6] (token keys are ARGV[3] .. id), unindexes them
/// (KEYS[2], KEYS[4]) and bumps the application's counter (KEYS[5]).
/// Returns the number of endpoints deleted, or -1 when there was no such
/// application.
const DELETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[2] .. id)
  redis.call('INCR', ARGV[2] .. id .. ':version')
  redis.call('ZREM', KEYS[4], id)
end
for _, token in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  redis.call('DEL', ARGV[3] .. token)
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[5])
return #ids
"#;

/// Reads and writes applications in Redis.
#[derive(Clone)]
pub struct ApplicationStore {
    redis: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for ApplicationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationStore")
            .field("keys", &self.keys)
            .finish()
    }
}

impl ApplicationStore {
    /// A store over an existing connection.
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self { redis, keys }
    }

    /// Saves a new application. Returns false when its id is taken.
    pub async fn create(&self, app: &Application, created_ms: i64) -> Result<bool, StoreError> {
        let json = serde_json::to_string(app)?;
        let mut conn = self.redis.clone();
        let created: i64 = Script::new(CREATE)
            .key(self.keys.application(&app.id))
            .key(self.keys.application_index())
            .key(self.keys.application_version(&app.id))
            .arg(json)
            .arg(created_ms)
            .arg(&app.id)
            .invoke_async(&mut conn)
            .await?;
        Ok(created == 1)
    }

    /// One application, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Application>, StoreError> {
        get_json(&self.redis, &self.keys.application(id)).await
    }

    /// A page of applications in creation order, from index `start`.
    pub async fn list(&self, start: usize, limit: usize) -> Result<Vec<Application>, StoreError> {
        let mut conn = self.redis.clone();
        let stop = (start + limit).saturating_sub(1);
        let ids: Vec<String> = conn
            .zrange(self.keys.application_index(), start as isize, stop as isize)
            .await?;
        let keys: Vec<String> = ids.iter().map(|id| self.keys.application(id)).collect();
        mget_json(&self.redis, &keys).await
    }

    /// Changes an application atomically (see
    /// [`crate::redis_store::modify_json`]); `None` when it does not exist.
    pub async fn modify(
        &self,
        id: &str,
        change: impl FnMut(&mut Application),
    ) -> Result<Option<Application>, StoreError> {
        modify_json(
            &self.redis,
            &self.keys.application(id),
            &[self.keys.application_version(id)],
            change,
        )
        .await
    }

    /// Deletes an application and all its endpoints. Returns how many
    /// endpoints went with it, or `None` when it did not exist.
    pub async fn delete(&self, id: &str) -> Result<Option<usize>, StoreError> {
        let mut conn = self.redis.clone();
        let deleted: i64 = Script::new(DELETE)
            .key(self.keys.application(id))
            .key(self.keys.application_index())
            .key(self.keys.application_endpoints(id))
            .key(self.keys.endpoint_index())
            .key(self.keys.application_version(id))
            .key(self.keys.application_tokens(id))
            .arg(id)
            .arg(self.keys.endpoint_prefix())
            .arg(self.keys.application_token_prefix())
            .invoke_async(&mut conn)
            .await?;
        Ok(usize::try_from(deleted).ok())
    }

    /// The change counters of several applications, in the same order (0
    /// for one never changed or gone).
    pub async fn versions(&self, ids: &[&str]) -> Result<Vec<i64>, StoreError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.application_version(id))
            .collect();
        mget_counters(&self.redis, &keys).await
    }

    /// The application's change counter (0 before the first change).
    pub async fn version(&self, id: &str) -> Result<i64, StoreError> {
        let mut conn = self.redis.clone();
        let version: Option<i64> = conn.get(self.keys.application_version(id)).await?;
        Ok(version.unwrap_or(0))
    }
}

/// What an application token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Manage the application's endpoints, read their secrets, health,
    /// attempts and dead letters, and replay them: what the customer's
    /// portal needs.
    Portal,
    /// Send events to the application only.
    Ingest,
}

impl TokenScope {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            TokenScope::Portal => "portal",
            TokenScope::Ingest => "ingest",
        }
    }
}

/// A valid application token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppToken {
    /// Names the token (to revoke it) without revealing it.
    pub id: String,
    /// The application it sees.
    pub application: String,
    /// What it may do.
    pub scope: TokenScope,
    /// When it stops working (Unix milliseconds).
    pub expires_at_ms: i64,
    /// SHA-256 of the token, hex: the token itself is never stored.
    digest: String,
}

/// Prefix of every application token.
pub const TOKEN_PREFIX: &str = "hat_";

/// Stores KEYS[1] (the token record) for ARGV[2] ms and lists its id in
/// KEYS[3], only while the application KEYS[2] exists: 1 stored, 0 not.
const ISSUE: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"#;

impl ApplicationStore {
    /// Issues a token of `scope` for `application`, valid for `ttl_ms`.
    /// Returns the token (shown once) and its record, or `None` when the
    /// application does not exist.
    pub async fn issue_token(
        &self,
        application: &str,
        scope: TokenScope,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(String, AppToken)>, StoreError> {
        use rand::RngCore as _;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("{TOKEN_PREFIX}{}", crate::event::hex(&secret));
        let record = AppToken {
            id: token_id(&token),
            application: application.to_owned(),
            scope,
            expires_at_ms: now_ms + ttl_ms,
            digest: token_digest(&token),
        };
        let mut conn = self.redis.clone();
        let stored: i64 = Script::new(ISSUE)
            .key(self.keys.application_token(&record.id))
            .key(self.keys.application(application))
            .key(self.keys.application_tokens(application))
            .arg(serde_json::to_string(&record)?)
            .arg(ttl_ms.max(1))
            .arg(&record.id)
            .invoke_async(&mut conn)
            .await?;
        Ok((stored == 1).then_some((token, record)))
    }

    /// The token `presented`, if it is one Herald issued and it has neither
    /// expired nor been revoked.
    pub async fn find_token(
        &self,
        presented: &str,
        now_ms: i64,
    ) -> Result<Option<AppToken>, StoreError> {
        use subtle::ConstantTimeEq as _;
        if !presented.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let key = self.keys.application_token(&token_id(presented));
        let Some(record) = get_json::<AppToken>(&self.redis, &key).await? else {
            return Ok(None);
        };
        let matches: bool = record
            .digest
            .as_bytes()
            .ct_eq(token_digest(presented).as_bytes())
            .into();
        Ok((matches && record.expires_at_ms > now_ms).then_some(record))
    }

    /// Revokes token `id` of `application`. Returns false when there is no
    /// such token (of that application).
    pub async fn revoke_token(&self, application: &str, id: &str) -> Result<bool, StoreError> {
        let key = self.keys.application_token(id);
        let Some(record) = get_json::<AppToken>(&self.redis, &key).await? else {
            return Ok(false);
        };
        if record.application != application {
            return Ok(false);
        }
        let mut conn = self.redis.clone();
        redis::pipe()
            .del(&key)
            .srem(self.keys.application_tokens(application), id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(true)
    }
}

fn token_digest(token: &str) -> String {
    use sha2::{Digest as _, Sha256};
    crate::event::hex(&Sha256::digest(token.as_bytes()))
}

/// The id of a token: the first half of its digest.
fn token_id(token: &str) -> String {
    format!("tok_{}", &token_digest(token)[..32])
}
