//! Fan-out's copy of every endpoint's subscriptions: ids and event types
//! only (no URLs, secrets or headers), indexed by event type and reloaded
//! whole when the endpoints' change counter moves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::endpoint::{EndpointStore, EventTypePattern, refresh_every, retry_until_loaded};
use herald_core::redis_store::StoreError;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

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
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(id: &str, types: &[&str], disabled: bool) -> StoredSubscription {
        StoredSubscription {
            id: id.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            disabled,
        }
    }

    fn ids(found: Vec<Arc<str>>) -> Vec<String> {
        found.iter().map(|id| id.to_string()).collect()
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
}
