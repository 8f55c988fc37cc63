//! A dispatcher's endpoints: each read from Redis when a delivery first
//! needs it — once per replica, however many deliveries wait for it — and
//! read again after that endpoint changed. A replica thus holds the
//! endpoints it delivers to, not every registered one, and a change to one
//! endpoint costs one read of that endpoint, not of all.
//!
//! Every change to an endpoint bumps its own change counter in Redis
//! (`endpoint:{id}:version`). Each refresh interval the cache reads the
//! counters of the endpoints it holds (one MGET per 500) and marks the ones
//! that moved stale; a stale endpoint is read again on its next use. While
//! Redis does not answer, the last copy read is used, even a stale one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::endpoint::{EndpointStore, ResolvedEndpoint, refresh_every, retry_until_loaded};
use herald_core::redis_store::StoreError;
use tokio_util::sync::CancellationToken;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct EndpointCache {
    store: EndpointStore,
    held: Arc<Mutex<HashMap<String, HeldEndpoint>>>,
    /// One read per endpoint at a time, however many deliveries wait.
    reading: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

#[derive(Debug)]
struct HeldEndpoint {
    endpoint: Arc<ResolvedEndpoint>,
    /// The endpoint's change counter when it was read.
    version: i64,
    /// It changed since: read it again on next use.
    stale: bool,
}

impl EndpointCache {
    /// An empty cache; call [`EndpointCache::load_first`], then
    /// [`EndpointCache::keep_fresh`].
    pub fn new(store: EndpointStore) -> Self {
        Self {
            store,
            held: Arc::default(),
            reading: Arc::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, HeldEndpoint>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store behind the cache.
    pub fn store(&self) -> &EndpointStore {
        &self.store
    }

    /// Number of endpoints held that no change has made stale.
    pub fn fresh(&self) -> usize {
        self.held().values().filter(|held| !held.stale).count()
    }

    fn fresh_copy(&self, id: &str) -> Option<Arc<ResolvedEndpoint>> {
        match self.held().get(id) {
            Some(held) if !held.stale => Some(held.endpoint.clone()),
            _ => None,
        }
    }

    /// Marks every held endpoint whose change counter moved as stale.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let held: Vec<(String, i64)> = self
            .held()
            .iter()
            .filter(|(_, held)| !held.stale)
            .map(|(id, held)| (id.clone(), held.version))
            .collect();
        if held.is_empty() {
            // Still ask Redis something, so an outage is noticed and logged.
            self.store.versions(&["-"]).await?;
            return Ok(());
        }
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let versions = self.store.versions(&ids).await?;
        let mut map = self.held();
        for ((id, had), now) in held.iter().zip(versions) {
            if now != *had
                && let Some(entry) = map.get_mut(id)
            {
                tracing::debug!(endpoint_id = %id, had, now, "endpoint changed; reading it again on next use");
                entry.stale = true;
            }
        }
        Ok(())
    }

    /// One endpoint: held, or read from Redis. `Ok(None)` means it does not
    /// exist.
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<ResolvedEndpoint>>, StoreError> {
        if let Some(fresh) = self.fresh_copy(id) {
            return Ok(Some(fresh));
        }
        let gate = {
            let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            reading.entry(id.to_owned()).or_default().clone()
        };
        let _reading = gate.lock().await;
        // Another delivery may have read it meanwhile.
        if let Some(fresh) = self.fresh_copy(id) {
            return Ok(Some(fresh));
        }
        let read = self.store.get_versioned(id).await;
        self.reading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let (version, endpoint) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.held().remove(id);
                return Ok(None);
            }
            // Redis does not answer: the last copy is better than none.
            Err(StoreError::Redis(err)) => {
                return match self.held().get(id) {
                    Some(held) => Ok(Some(held.endpoint.clone())),
                    None => Err(StoreError::Redis(err)),
                };
            }
            Err(err) => return Err(err),
        };
        let resolved = Arc::new(ResolvedEndpoint::new(endpoint).map_err(StoreError::Corrupt)?);
        self.held().insert(
            id.to_owned(),
            HeldEndpoint {
                endpoint: resolved.clone(),
                version,
                stale: false,
            },
        );
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
