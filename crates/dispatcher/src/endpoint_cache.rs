//! A dispatcher's endpoints: each read from Redis when a delivery first
//! needs it — once per replica, however many deliveries wait for it — and
//! read again after that endpoint changed. A replica thus holds the
//! endpoints it delivers to, not every registered one — and of those at
//! most `HERALD_DISPATCHER_CACHE_ENTRIES`, taking about
//! `HERALD_DISPATCHER_CACHE_BYTES`, the least recently used going first —
//! and a change to one endpoint costs one read of that endpoint, not of
//! all.
//!
//! Every change to an endpoint bumps its own change counter in Redis
//! (`endpoint:{id}:version`). Each refresh interval the cache reads the
//! counters of the endpoints it holds (one MGET per 500) and marks the ones
//! that moved stale; a stale endpoint is read again on its next use. While
//! Redis does not answer, the last copy read is used, even a stale one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::bounded_cache::{BoundedCache, ReadGates};
use herald_core::endpoint::{EndpointStore, ResolvedEndpoint, refresh_every, retry_until_loaded};
use herald_core::redis_store::StoreError;
use tokio_util::sync::CancellationToken;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct EndpointCache {
    store: EndpointStore,
    held: Arc<Mutex<BoundedCache<ResolvedEndpoint>>>,
    /// One read per endpoint at a time, however many deliveries wait.
    reading: Arc<ReadGates>,
}

impl EndpointCache {
    /// An empty cache for at most `max_entries` endpoints and about
    /// `max_bytes` of them; call [`EndpointCache::load_first`], then
    /// [`EndpointCache::keep_fresh`].
    pub fn new(store: EndpointStore, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            store,
            held: Arc::new(Mutex::new(BoundedCache::new(max_entries, max_bytes))),
            reading: Arc::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, BoundedCache<ResolvedEndpoint>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store behind the cache.
    pub fn store(&self) -> &EndpointStore {
        &self.store
    }

    /// Number of endpoints held that no change has made stale.
    pub fn fresh(&self) -> usize {
        self.held().fresh_count()
    }

    /// Number of endpoints held, stale ones included.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// Whether no endpoint is held.
    pub fn is_empty(&self) -> bool {
        self.held().is_empty()
    }

    /// Marks every held endpoint whose change counter moved as stale.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let checked = self.held().to_check();
        if checked.is_empty() {
            // Still ask Redis something, so an outage is noticed and logged.
            self.store.versions(&["-"]).await?;
            return Ok(());
        }
        let ids: Vec<&str> = checked.iter().map(|(id, _)| id.as_str()).collect();
        let versions = self.store.versions(&ids).await?;
        for id in self.held().mark_moved(&checked, &versions) {
            tracing::debug!(endpoint_id = %id, "endpoint changed; reading it again on next use");
        }
        Ok(())
    }

    /// One endpoint: held, or read from Redis. `Ok(None)` means it does not
    /// exist.
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<ResolvedEndpoint>>, StoreError> {
        if let Some(fresh) = self.held().fresh(id, 0) {
            return Ok(Some(fresh));
        }
        let _reading = self.reading.enter(id).await;
        // Another delivery may have read it meanwhile.
        if let Some(fresh) = self.held().fresh(id, 0) {
            return Ok(Some(fresh));
        }
        let (version, endpoint) = match self.store.get_versioned(id).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.held().remove(id);
                return Ok(None);
            }
            // Redis does not answer: the last copy is better than none.
            Err(StoreError::Redis(err)) => {
                return match self.held().any(id) {
                    Some(held) => Ok(Some(held)),
                    None => Err(StoreError::Redis(err)),
                };
            }
            Err(err) => return Err(err),
        };
        let resolved = Arc::new(ResolvedEndpoint::new(endpoint).map_err(StoreError::Corrupt)?);
        let bytes = held_bytes(&resolved);
        self.held().insert(id, resolved.clone(), version, bytes);
        Ok(Some(resolved))
    }

    /// Waits until Redis answers (retrying) or `shutdown` fires. Returns
    /// false on shutdown.
    pub async fn load_first(&self, shutdown: &CancellationToken) -> bool {
        retry_until_loaded(shutdown, || self.refresh()).await
    }

    /// Checks the held endpoints every `interval` until `shutdown`. While
    /// Redis is away the endpoints held stay in use, and that is logged once
    /// per outage.
    pub async fn keep_fresh(self, interval: Duration, shutdown: CancellationToken) {
        refresh_every(interval, &shutdown, || self.refresh()).await;
    }
}

/// What one held endpoint costs, for the byte bound: the endpoint
/// ([`ResolvedEndpoint::held_bytes`]) and the cache's own entry (its key,
/// change counter and place in the recency order; the key is the
/// endpoint's id).
fn held_bytes(endpoint: &ResolvedEndpoint) -> usize {
    const ENTRY: usize = 96;
    endpoint.held_bytes() + endpoint.id.len() + ENTRY
}
