//! Endpoints (the subscribers), their storage in Redis and the two
//! in-process caches that read them:
//! - fan-out's [`SubscriptionCache`]: every endpoint's id and subscriptions,
//!   and nothing else (no URLs, secrets or headers), reloaded whole when the
//!   change counter moves;
//! - the dispatchers' [`EndpointCache`]: whole endpoints, loaded one at a
//!   time when a delivery first needs them and dropped when the change
//!   counter moves, so that a replica holds only the endpoints it delivers
//!   to, however many are registered.
//!
//! Redis layout, under the configured key prefix:
//! - `endpoint:{id}`: the endpoint as JSON ([`Endpoint`]);
//! - `endpoints`: sorted set of endpoint ids, scored by creation time;
//! - `endpoints:version`: a counter bumped by every change, which caches poll
//!   to notice changes without reloading everything.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::event::validate_event_type;
use crate::redis_store::{Keys, StoreError};
use crate::signing::Secret;

/// Most secrets that keep signing after rotations (the oldest one goes first
/// when a rotation would keep more).
pub const MAX_PREVIOUS_SECRETS: usize = 5;

/// An HTTP endpoint and the event types it subscribes to, as stored.
///
/// Its `Debug` output leaves the secrets out, so an endpoint can be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ep_…`, assigned at creation.
    pub id: String,
    /// Absolute http(s) URL the webhooks are POSTed to.
    pub url: String,
    /// Subscriptions: exact types, `prefix.*` or `*`.
    pub event_types: Vec<String>,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Extra headers sent with every webhook.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A disabled endpoint receives nothing.
    #[serde(default)]
    pub disabled: bool,
    /// Why Herald disabled the endpoint by itself (e.g. it answered 410
    /// Gone); cleared when it is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Most deliveries per second, across all dispatchers; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Signing secret, `whsec_…`.
    pub secret: String,
    /// Secrets replaced by a rotation that keep signing, beside the current
    /// one, until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<RetiringSecret>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &redacted_url(&self.url))
            .field("event_types", &self.event_types)
            .field("disabled", &self.disabled)
            .field("rate_limit", &self.rate_limit)
            .field("previous_secrets", &self.previous_secrets.len())
            .finish_non_exhaustive()
    }
}

/// A secret replaced by a rotation, still signing until `expires_at_ms`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiringSecret {
    /// The old secret, `whsec_…`.
    pub secret: String,
    /// When it stops signing (Unix milliseconds).
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for RetiringSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetiringSecret")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Makes `new` the signing secret. The current one keeps signing beside
    /// it for `grace_ms` (not at all when 0); secrets whose time is up are
    /// dropped.
    pub fn rotate_secret(&mut self, new: &Secret, grace_ms: i64, now_ms: i64) {
        let old = std::mem::replace(&mut self.secret, new.expose());
        self.previous_secrets.retain(|s| s.expires_at_ms > now_ms);
        if grace_ms > 0 {
            self.previous_secrets.push(RetiringSecret {
                secret: old,
                expires_at_ms: now_ms.saturating_add(grace_ms),
            });
        }
        self.previous_secrets
            .sort_by_key(|s| std::cmp::Reverse(s.expires_at_ms));
        self.previous_secrets.truncate(MAX_PREVIOUS_SECRETS);
    }
}

/// One entry of `event_types`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventTypePattern {
    /// `*`: every event.
    All,
    /// `order.*`: every type that starts with `order.` (kept with the dot).
    Prefix(String),
    /// `order.created`: that type only.
    Exact(String),
}

impl EventTypePattern {
    /// Reads a pattern, saying what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            validate_event_type(prefix).map_err(|p| format!("{text:?}: the prefix {p}"))?;
            return Ok(Self::Prefix(format!("{prefix}.")));
        }
        validate_event_type(text)
            .map_err(|p| format!("{text:?} {p} (use an exact type, `prefix.*` or `*`)"))?;
        Ok(Self::Exact(text.to_owned()))
    }

    /// Whether an event of `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            Self::Exact(exact) => exact == event_type,
        }
    }
}

/// Checks an endpoint URL: absolute, http or https, with a host.
pub fn validate_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|err| format!("is not an absolute URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must use http or https, not {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    Ok(url)
}

/// The URL without user info, query or fragment, for logs, spans and
/// `Debug`: endpoint URLs sometimes carry credentials or tokens there
/// (`https://user:pw@host/hook?token=…`). Text that is not a URL becomes
/// `(not a URL)`, since it could be anything.
pub fn redacted_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// An endpoint ready for use: its secret decoded and its patterns parsed.
#[derive(Debug)]
pub struct ResolvedEndpoint {
    /// The stored endpoint.
    pub endpoint: Endpoint,
    /// The decoded signing secret.
    pub secret: Secret,
    /// Rotated-out secrets that still sign, with when they stop (Unix
    /// milliseconds).
    pub previous: Vec<(Secret, i64)>,
}

impl ResolvedEndpoint {
    /// Decodes a stored endpoint; fails if what is stored is not valid.
    pub fn new(endpoint: Endpoint) -> Result<Self, String> {
        let secret = Secret::parse(&endpoint.secret)
            .map_err(|p| format!("endpoint {} has an unusable secret: it {p}", endpoint.id))?;
        let previous = endpoint
            .previous_secrets
            .iter()
            .map(|s| Secret::parse(&s.secret).map(|secret| (secret, s.expires_at_ms)))
            .collect::<Result<_, _>>()
            .map_err(|p| {
                format!(
                    "endpoint {} has an unusable previous secret: it {p}",
                    endpoint.id
                )
            })?;
        Ok(Self {
            endpoint,
            secret,
            previous,
        })
    }

    /// The secrets that sign a webhook sent at `now_ms`: the current one,
    /// then every rotated-out one whose grace period is still running.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&Secret> {
        std::iter::once(&self.secret)
            .chain(
                self.previous
                    .iter()
                    .filter(|(_, expires_at_ms)| *expires_at_ms > now_ms)
                    .map(|(secret, _)| secret),
            )
            .collect()
    }
}

/// How often [`EndpointStore::modify`] starts again after losing a race
/// before it gives up.
const MODIFY_TRIES: usize = 32;

/// Replaces KEYS[1] with ARGV[2] only while it still holds ARGV[1], and
/// bumps the change counter KEYS[2]: 1 written, 0 changed meanwhile, -1 gone.
const COMPARE_AND_SET: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"#;

/// Reads and writes endpoints in Redis.
#[derive(Clone)]
pub struct EndpointStore {
    redis: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for EndpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointStore")
            .field("keys", &self.keys)
            .finish()
    }
}

impl EndpointStore {
    /// A store over an existing connection.
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self { redis, keys }
    }

    /// Saves a new endpoint.
    pub async fn create(&self, endpoint: &Endpoint, created_ms: i64) -> Result<(), StoreError> {
        let json = serde_json::to_string(endpoint)?;
        let mut conn = self.redis.clone();
        redis::pipe()
            .atomic()
            .set(self.keys.endpoint(&endpoint.id), json)
            .zadd(self.keys.endpoint_index(), &endpoint.id, created_ms)
            .incr(self.keys.endpoints_version(), 1)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes an endpoint. Returns false when it did not exist.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let (deleted, _, _): (i64, i64, i64) = redis::pipe()
            .atomic()
            .del(self.keys.endpoint(id))
            .zrem(self.keys.endpoint_index(), id)
            .incr(self.keys.endpoints_version(), 1)
            .query_async(&mut conn)
            .await?;
        Ok(deleted > 0)
    }

    /// Disables an endpoint, recording why. Returns false when it does not
    /// exist.
    pub async fn disable(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let changed = self
            .modify(id, |endpoint| {
                endpoint.disabled = true;
                endpoint.disabled_reason = Some(reason.to_owned());
                endpoint.updated_at =
                    crate::event::format_timestamp(time::OffsetDateTime::now_utc());
            })
            .await?;
        Ok(changed.is_some())
    }

    /// Changes an endpoint atomically: reads it, applies `change`, and
    /// writes it back only if nobody wrote it in between (the stored JSON
    /// is compared in a Lua script); otherwise reads it again and applies
    /// `change` to what is there now, so concurrent changes (a PATCH, a
    /// rotation, a 410 disabling it) never undo one another. Returns the
    /// endpoint as written, or `None` when it does not exist (any more).
    pub async fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Endpoint),
    ) -> Result<Option<Endpoint>, StoreError> {
        let key = self.keys.endpoint(id);
        let mut conn = self.redis.clone();
        let compare_and_set = Script::new(COMPARE_AND_SET);
        for _ in 0..MODIFY_TRIES {
            let Some(before) = conn.get::<_, Option<String>>(&key).await? else {
                return Ok(None);
            };
            let mut endpoint: Endpoint = serde_json::from_str(&before)?;
            change(&mut endpoint);
            let after = serde_json::to_string(&endpoint)?;
            let written: i64 = compare_and_set
                .key(&key)
                .key(self.keys.endpoints_version())
                .arg(&before)
                .arg(&after)
                .invoke_async(&mut conn)
                .await?;
            match written {
                1 => return Ok(Some(endpoint)),
                -1 => return Ok(None),
                // Someone else wrote it first: start again from theirs.
                _ => continue,
            }
        }
        Err(StoreError::Contended(format!("endpoint {id}")))
    }

    /// One endpoint, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let mut conn = self.redis.clone();
        let json: Option<String> = conn.get(self.keys.endpoint(id)).await?;
        json.map(|j| serde_json::from_str(&j).map_err(StoreError::from))
            .transpose()
    }

    /// A page of endpoints in creation order, starting at index `start`.
    pub async fn list(&self, start: usize, limit: usize) -> Result<Vec<Endpoint>, StoreError> {
        let mut conn = self.redis.clone();
        let stop = (start + limit).saturating_sub(1);
        let ids: Vec<String> = conn
            .zrange(self.keys.endpoint_index(), start as isize, stop as isize)
            .await?;
        self.get_many(&ids).await
    }

    /// Every endpoint, read as `T`: [`Endpoint`], or a part of it such as
    /// [`StoredSubscription`] (the other fields are skipped, not kept).
    pub async fn all<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.zrange(self.keys.endpoint_index(), 0, -1).await?;
        self.get_many(&ids).await
    }

    async fn get_many<T: DeserializeOwned>(&self, ids: &[String]) -> Result<Vec<T>, StoreError> {
        let mut endpoints = Vec::with_capacity(ids.len());
        let mut conn = self.redis.clone();
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.endpoint(id)).collect();
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            for json in values.into_iter().flatten() {
                endpoints.push(serde_json::from_str(&json)?);
            }
        }
        Ok(endpoints)
    }

    /// The change counter (0 before the first change).
    pub async fn version(&self) -> Result<i64, StoreError> {
        let mut conn = self.redis.clone();
        let version: Option<i64> = conn.get(self.keys.endpoints_version()).await?;
        Ok(version.unwrap_or(0))
    }
}

/// What fan-out reads of a stored endpoint: the fields that decide which
/// events it receives.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredSubscription {
    /// `ep_…`.
    pub id: String,
    /// Exact types, `prefix.*` or `*`.
    pub event_types: Vec<String>,
    /// A disabled endpoint receives nothing.
    #[serde(default)]
    pub disabled: bool,
}

/// Every endpoint's subscriptions at one moment, indexed by event type.
#[derive(Debug, Default)]
pub struct Subscriptions {
    version: i64,
    endpoints: usize,
    exact: HashMap<String, Vec<Arc<str>>>,
    prefix: HashMap<String, Vec<Arc<str>>>,
    all: Vec<Arc<str>>,
}

impl Subscriptions {
    /// Indexes the subscriptions of the enabled endpoints. An endpoint with a
    /// subscription that does not parse (only a damaged store holds one) is
    /// skipped with a warning rather than hiding every other endpoint.
    pub fn build(version: i64, endpoints: Vec<StoredSubscription>) -> Self {
        let mut index = Subscriptions {
            version,
            endpoints: endpoints.len(),
            ..Default::default()
        };
        for endpoint in endpoints.into_iter().filter(|e| !e.disabled) {
            let patterns: Result<Vec<_>, _> = endpoint
                .event_types
                .iter()
                .map(|p| EventTypePattern::parse(p))
                .collect();
            let patterns = match patterns {
                Ok(patterns) => patterns,
                Err(problem) => {
                    tracing::warn!(endpoint_id = %endpoint.id, %problem, "skipping an endpoint with a bad subscription");
                    continue;
                }
            };
            let id: Arc<str> = Arc::from(endpoint.id);
            for pattern in patterns {
                let list = match pattern {
                    EventTypePattern::All => &mut index.all,
                    EventTypePattern::Prefix(p) => index.prefix.entry(p).or_default(),
                    EventTypePattern::Exact(t) => index.exact.entry(t).or_default(),
                };
                list.push(id.clone());
            }
        }
        index
    }

    /// The change counter this index was loaded at.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Number of endpoints read, enabled or not.
    pub fn len(&self) -> usize {
        self.endpoints
    }

    /// Whether no endpoint was read.
    pub fn is_empty(&self) -> bool {
        self.endpoints == 0
    }

    /// The ids of the enabled endpoints subscribed to `event_type`, each
    /// once, in a stable order.
    pub fn subscribers(&self, event_type: &str) -> Vec<Arc<str>> {
        let mut found: Vec<Arc<str>> = Vec::new();
        found.extend(self.all.iter().cloned());
        if let Some(list) = self.exact.get(event_type) {
            found.extend(list.iter().cloned());
        }
        // `order.*` is stored as "order."; look up every prefix of the type
        // that ends at a dot.
        for (dot, _) in event_type.match_indices('.') {
            if let Some(list) = self.prefix.get(&event_type[..=dot]) {
                found.extend(list.iter().cloned());
            }
        }
        if found.len() > 1 {
            found.sort_unstable();
            found.dedup();
        }
        found
    }
}

/// Fan-out's copy of every endpoint's subscriptions, reloaded when the change
/// counter in Redis moves. Changes reach fan-out within one refresh interval.
#[derive(Debug, Clone)]
pub struct SubscriptionCache {
    store: EndpointStore,
    current: Arc<RwLock<Option<Arc<Subscriptions>>>>,
}

impl SubscriptionCache {
    /// An empty cache; call [`SubscriptionCache::load_first`], then
    /// [`SubscriptionCache::keep_fresh`].
    pub fn new(store: EndpointStore) -> Self {
        Self {
            store,
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// The latest index, or `None` before the first successful load.
    pub fn current(&self) -> Option<Arc<Subscriptions>> {
        read(&self.current).clone()
    }

    /// Reloads when the change counter moved (or nothing is loaded yet).
    pub async fn refresh(&self) -> Result<Arc<Subscriptions>, StoreError> {
        let version = self.store.version().await?;
        if let Some(current) = self.current()
            && current.version() == version
        {
            return Ok(current);
        }
        // The counter is read before the endpoints: a change made during the
        // load leaves the counter ahead of this index, so the next refresh
        // loads again.
        let endpoints = self.store.all::<StoredSubscription>().await?;
        let index = Arc::new(Subscriptions::build(version, endpoints));
        tracing::debug!(version, endpoints = index.len(), "subscriptions reloaded");
        *write(&self.current) = Some(index.clone());
        Ok(index)
    }

    /// Loads the index, retrying until it succeeds or `shutdown` fires.
    /// Returns false on shutdown.
    pub async fn load_first(&self, shutdown: &CancellationToken) -> bool {
        retry_until_loaded(shutdown, || async { self.refresh().await.map(drop) }).await
    }

    /// Refreshes every `interval` until `shutdown`. While Redis is away the
    /// last index stays in use, and that is logged once per outage.
    pub async fn keep_fresh(self, interval: Duration, shutdown: CancellationToken) {
        refresh_every(interval, &shutdown, || async {
            self.refresh().await.map(drop)
        })
        .await;
    }
}

/// A dispatcher's endpoints: each read from Redis when a delivery first needs
/// it and used until the change counter moves, then read again on its next
/// use. A replica thus holds the endpoints it delivers to, not every
/// registered one, and a change costs one read per endpoint in use rather
/// than a reload of all of them. Changes reach the dispatchers within one
/// refresh interval. While Redis does not answer, the last copy read is used,
/// even one that a change has made stale.
#[derive(Debug, Clone)]
pub struct EndpointCache {
    store: EndpointStore,
    loaded: Arc<RwLock<LoadedEndpoints>>,
}

#[derive(Debug, Default)]
struct LoadedEndpoints {
    /// The change counter as last read (`None` before the first refresh).
    version: Option<i64>,
    by_id: HashMap<String, HeldEndpoint>,
}

#[derive(Debug)]
struct HeldEndpoint {
    endpoint: Arc<ResolvedEndpoint>,
    /// The change counter it was read under: older than
    /// [`LoadedEndpoints::version`] means stale.
    read_under: Option<i64>,
}

impl EndpointCache {
    /// An empty cache; call [`EndpointCache::load_first`], then
    /// [`EndpointCache::keep_fresh`].
    pub fn new(store: EndpointStore) -> Self {
        Self {
            store,
            loaded: Arc::new(RwLock::new(LoadedEndpoints::default())),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &EndpointStore {
        &self.store
    }

    /// Number of endpoints held that no change has made stale.
    pub fn fresh(&self) -> usize {
        let loaded = read(&self.loaded);
        loaded
            .by_id
            .values()
            .filter(|held| held.read_under == loaded.version)
            .count()
    }

    /// Reads the change counter; when it moved, every endpoint held becomes
    /// stale (read again on its next use).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let version = self.store.version().await?;
        let mut loaded = write(&self.loaded);
        if loaded.version != Some(version) {
            if !loaded.by_id.is_empty() {
                tracing::debug!(version, "endpoints changed; reading them again on next use");
            }
            loaded.version = Some(version);
        }
        Ok(())
    }

    /// One endpoint: held, or read from Redis. `Ok(None)` means it does not
    /// exist.
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<ResolvedEndpoint>>, StoreError> {
        let (read_under, stale) = {
            let loaded = read(&self.loaded);
            match loaded.by_id.get(id) {
                Some(held) if held.read_under == loaded.version => {
                    return Ok(Some(held.endpoint.clone()));
                }
                Some(held) => (loaded.version, Some(held.endpoint.clone())),
                None => (loaded.version, None),
            }
        };
        let endpoint = match (self.store.get(id).await, stale) {
            (Ok(Some(endpoint)), _) => endpoint,
            (Ok(None), _) => {
                write(&self.loaded).by_id.remove(id);
                return Ok(None);
            }
            // Redis does not answer: the last copy is better than none.
            (Err(StoreError::Redis(_)), Some(stale)) => return Ok(Some(stale)),
            (Err(err), _) => return Err(err),
        };
        let resolved = Arc::new(ResolvedEndpoint::new(endpoint).map_err(StoreError::Corrupt)?);
        let mut loaded = write(&self.loaded);
        // A refresh that saw another change while this read was under way
        // makes what it returned possibly out of date: it is used once, and
        // read again next time.
        if loaded.version == read_under {
            loaded.by_id.insert(
                id.to_owned(),
                HeldEndpoint {
                    endpoint: resolved.clone(),
                    read_under,
                },
            );
        }
        Ok(Some(resolved))
    }

    /// Waits until Redis answers (retrying) or `shutdown` fires. Returns
    /// false on shutdown.
    pub async fn load_first(&self, shutdown: &CancellationToken) -> bool {
        retry_until_loaded(shutdown, || self.refresh()).await
    }

    /// Watches the change counter every `interval` until `shutdown`. While
    /// Redis is away the endpoints held stay in use, and that is logged once
    /// per outage.
    pub async fn keep_fresh(self, interval: Duration, shutdown: CancellationToken) {
        refresh_every(interval, &shutdown, || self.refresh()).await;
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Calls `refresh` until it succeeds (backing off) or `shutdown` fires.
/// Returns false on shutdown.
async fn retry_until_loaded<F, Fut>(shutdown: &CancellationToken, refresh: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100));
    loop {
        match refresh().await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, "cannot load endpoints from Redis yet; retrying");
            }
        }
        if backoff.pause(shutdown).await.is_err() {
            return false;
        }
    }
}

/// Calls `refresh` every `interval` until `shutdown`, logging an outage
/// once when it starts and once when it ends.
async fn refresh_every<F, Fut>(interval: Duration, shutdown: &CancellationToken, refresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match refresh().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("endpoint cache refreshes again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "cannot refresh endpoints; using the last copy until Redis answers");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_logs_and_debug_carry_no_credentials() {
        assert_eq!(
            redacted_url("https://user:pw@example.com:8443/hook?token=abc#x"),
            "https://example.com:8443/hook"
        );
        assert_eq!(redacted_url("not a url, user:pw"), "(not a URL)");
        let mut endpoint = endpoint("ep_1", &["*"], false);
        endpoint.url = "https://user:hunter2@example.com/hook?token=tok".to_owned();
        let debug = format!("{endpoint:?}");
        assert!(debug.contains("https://example.com/hook"), "{debug}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("token"),
            "{debug}"
        );
    }

    fn endpoint(id: &str, types: &[&str], disabled: bool) -> Endpoint {
        Endpoint {
            id: id.to_owned(),
            url: "http://example.com/hook".to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            description: String::new(),
            headers: BTreeMap::new(),
            disabled,
            disabled_reason: None,
            rate_limit: None,
            secret: Secret::generate().expose(),
            previous_secrets: Vec::new(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    /// What fan-out reads of `endpoint(..)`: parsed from its stored JSON,
    /// as the cache does.
    fn subscription(id: &str, types: &[&str], disabled: bool) -> StoredSubscription {
        let stored = serde_json::to_string(&endpoint(id, types, disabled)).unwrap();
        serde_json::from_str(&stored).unwrap()
    }

    fn ids(found: Vec<Arc<str>>) -> Vec<String> {
        found.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(EventTypePattern::parse("*"), Ok(EventTypePattern::All));
        let prefix = EventTypePattern::parse("order.*").unwrap();
        assert!(prefix.matches("order.created"));
        assert!(prefix.matches("order.item.added"));
        assert!(!prefix.matches("order"));
        assert!(!prefix.matches("orders.created"));
        assert!(
            EventTypePattern::parse("order.created")
                .unwrap()
                .matches("order.created")
        );
        assert!(EventTypePattern::parse("order*").is_err());
        assert!(EventTypePattern::parse(".*").is_err());
        assert!(EventTypePattern::parse("").is_err());
    }

    #[test]
    fn subscribers_come_from_every_kind_of_pattern_once() {
        let index = Subscriptions::build(
            1,
            vec![
                subscription("ep_all", &["*"], false),
                subscription("ep_orders", &["order.*", "order.created"], false),
                subscription("ep_exact", &["order.created"], false),
                subscription("ep_deep", &["order.item.*"], false),
                subscription("ep_users", &["user.*"], false),
                subscription("ep_off", &["*"], true),
            ],
        );
        assert_eq!(
            ids(index.subscribers("order.created")),
            ["ep_all", "ep_exact", "ep_orders"]
        );
        assert_eq!(
            ids(index.subscribers("order.item.added")),
            ["ep_all", "ep_deep", "ep_orders"]
        );
        // The disabled endpoint receives nothing, though it was read.
        assert_eq!(ids(index.subscribers("invoice.paid")), ["ep_all"]);
        assert_eq!(index.len(), 6);
    }

    #[test]
    fn an_endpoint_with_a_bad_subscription_is_skipped_alone() {
        let index = Subscriptions::build(
            1,
            vec![
                subscription("ep_good", &["order.created"], false),
                StoredSubscription {
                    id: "ep_damaged".to_owned(),
                    event_types: vec!["order.created".to_owned(), "order*".to_owned()],
                    disabled: false,
                },
            ],
        );
        assert_eq!(ids(index.subscribers("order.created")), ["ep_good"]);
    }

    #[test]
    fn rotated_secrets_sign_until_their_grace_ends() {
        let mut e = endpoint("ep_1", &["*"], false);
        let first = Secret::parse(&e.secret).unwrap();
        let second = Secret::generate();
        e.rotate_secret(&second, 1_000, 10_000);
        let resolved = ResolvedEndpoint::new(e.clone()).unwrap();
        assert_eq!(resolved.signing_secrets(10_999), vec![&second, &first]);
        assert_eq!(resolved.signing_secrets(11_000), vec![&second]);
        // A rotation without grace retires the current secret at once, and
        // expired ones are dropped.
        let third = Secret::generate();
        e.rotate_secret(&third, 0, 20_000);
        assert!(e.previous_secrets.is_empty());
        assert_eq!(e.secret, third.expose());
        // The stored form round-trips; Debug shows no secret.
        e.rotate_secret(&Secret::generate(), 5_000, 30_000);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), e);
        let debug = format!("{e:?}");
        assert!(!debug.contains("whsec_"), "{debug}");
        for n in 0..10 {
            e.rotate_secret(&Secret::generate(), 5_000, 30_000 + n);
        }
        assert_eq!(e.previous_secrets.len(), MAX_PREVIOUS_SECRETS);
    }

    #[test]
    fn urls_are_validated() {
        assert!(validate_url("https://example.com/x").is_ok());
        assert!(
            validate_url("ftp://example.com")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(validate_url("/relative").unwrap_err().contains("absolute"));
        assert!(validate_url("example.com").is_err());
    }
}
