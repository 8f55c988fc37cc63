//! A dispatcher's endpoints: each read from Redis when a delivery first
//! needs it and dropped when the endpoints' change counter moves, so that a
//! replica holds only the endpoints it delivers to, however many are
//! registered.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::endpoint::{EndpointStore, ResolvedEndpoint, refresh_every, retry_until_loaded};
use herald_core::redis_store::StoreError;
use tokio_util::sync::CancellationToken;

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
