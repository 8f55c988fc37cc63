//! Fan-out's copies of applications' subscriptions: endpoint ids and event
//! types only (no URLs, secrets or headers), indexed by event type, one
//! application at a time ([`SubscriptionCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::application::ApplicationStore;
use herald_core::bounded_cache::{BoundedCache, ReadGates};
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

impl StoredSubscription {
    /// About what holding it costs, for the cache's byte bound.
    fn bytes(&self) -> usize {
        // The id once per pattern list it is in, the patterns, and the
        // maps' own overhead (measured loosely: ~64 bytes per entry).
        self.id.len() * (1 + self.event_types.len())
            + self.event_types.iter().map(|t| t.len() + 64).sum::<usize>()
            + 64
    }
}

/// One application's subscriptions at one moment, indexed by event type.
#[derive(Debug, Default)]
pub struct Subscriptions {
    version: i64,
    endpoints: usize,
    exact: HashMap<String, Vec<Arc<str>>>,
    prefix: HashMap<String, Vec<Arc<str>>>,
    all: Vec<Arc<str>>,
}

impl Subscriptions {
    /// Indexes the subscriptions of an application's enabled endpoints. An endpoint with a
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

/// What fan-out knows of one application.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Its subscriptions, at its change counter [`Subscriptions::version`].
    Found(Arc<Subscriptions>),
    /// There is no such application.
    NoSuchApplication,
}

/// Fan-out's copies of applications' subscriptions: each application's read
/// from Redis the first time one of its events comes, kept while it is used
/// (the least recently used are dropped beyond `max_entries` applications
/// or `max_bytes`), and read again when its change counter moves — checked for
/// every held application each refresh interval, and at once for an event
/// stamped by ingest with a counter newer than the copy. So a change to one
/// application's endpoints costs one read of that application, and memory
/// holds the busy applications, not every endpoint registered.
#[derive(Debug, Clone)]
pub struct SubscriptionCache {
    endpoints: EndpointStore,
    applications: ApplicationStore,
    held: Arc<Mutex<Held>>,
    /// One load per application at a time, however many events wait for it.
    loading: Arc<ReadGates>,
}

#[derive(Debug)]
struct Held {
    by_app: BoundedCache<Subscriptions>,
    hits: u64,
    misses: u64,
}

impl SubscriptionCache {
    /// An empty cache holding at most `max_entries` applications and about
    /// `max_bytes` of subscriptions.
    pub fn new(
        endpoints: EndpointStore,
        applications: ApplicationStore,
        max_entries: usize,
        max_bytes: usize,
    ) -> Self {
        Self {
            endpoints,
            applications,
            held: Arc::new(Mutex::new(Held {
                by_app: BoundedCache::new(max_entries, max_bytes),
                hits: 0,
                misses: 0,
            })),
            loading: Arc::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hits and misses so far.
    pub fn hit_counts(&self) -> (u64, u64) {
        let held = self.held();
        (held.hits, held.misses)
    }

    /// Number of applications held.
    pub fn len(&self) -> usize {
        self.held().by_app.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cached(&self, app: &str, at_least: i64) -> Option<Arc<Subscriptions>> {
        let mut held = self.held();
        let found = held.by_app.fresh(app, at_least);
        let m = herald_core::metrics::metrics();
        match found {
            Some(_) => {
                held.hits += 1;
                m.fanout_cache_hits.inc();
            }
            None => {
                held.misses += 1;
                m.fanout_cache_misses.inc();
            }
        }
        found
    }

    /// The subscriptions of `app`, at change counter `at_least` or newer
    /// (0: any copy held will do).
    pub async fn lookup(&self, app: &str, at_least: i64) -> Result<Lookup, StoreError> {
        if let Some(found) = self.cached(app, at_least) {
            return Ok(Lookup::Found(found));
        }
        let _loading = self.loading.enter(app).await;
        // Another task may have loaded it meanwhile.
        if let Some(found) = self.held().by_app.fresh(app, at_least) {
            return Ok(Lookup::Found(found));
        }
        let loaded = self
            .endpoints
            .of_application::<StoredSubscription>(app)
            .await?;
        let Some((version, endpoints)) = loaded else {
            self.held().by_app.remove(app);
            return Ok(Lookup::NoSuchApplication);
        };
        let bytes = endpoints
            .iter()
            .map(StoredSubscription::bytes)
            .sum::<usize>()
            + app.len();
        let subscriptions = Arc::new(Subscriptions::build(version, endpoints));
        tracing::debug!(
            application = app,
            version,
            endpoints = subscriptions.len(),
            "subscriptions read"
        );
        self.held()
            .by_app
            .insert(app, subscriptions.clone(), version, bytes);
        Ok(Lookup::Found(subscriptions))
    }

    /// The copy held of `app`, however old (for when Redis does not answer).
    pub fn held_copy(&self, app: &str) -> Option<Arc<Subscriptions>> {
        self.held().by_app.any(app)
    }

    /// Marks every held application whose change counter moved as stale.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let checked = self.held().by_app.to_check();
        if checked.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = checked.iter().map(|(app, _)| app.as_str()).collect();
        let versions = self.applications.versions(&ids).await?;
        for app in self.held().by_app.mark_moved(&checked, &versions) {
            tracing::debug!(application = %app, "application changed; reading it again on next use");
        }
        Ok(())
    }

    /// Waits until Redis answers (retrying) or `shutdown` fires. Returns
    /// false on shutdown.
    pub async fn load_first(&self, shutdown: &CancellationToken) -> bool {
        // Any read proves that Redis answers.
        retry_until_loaded(shutdown, || async {
            self.applications.versions(&["-"]).await.map(drop)
        })
        .await
    }

    /// Checks the held applications every `interval` until `shutdown`.
    /// While Redis is away what is held stays in use, and that is logged
    /// once per outage.
    pub async fn keep_fresh(self, interval: Duration, shutdown: CancellationToken) {
        refresh_every(interval, &shutdown, || self.refresh()).await;
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
