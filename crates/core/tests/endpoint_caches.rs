//! The two endpoint caches against a real Redis (`HERALD_TEST_REDIS_URL`,
//! set by scripts/test): what each holds, and when a change reaches it.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_core::config::{Env, RedisConfig};
use herald_core::endpoint::{Endpoint, EndpointCache, EndpointStore, SubscriptionCache};
use herald_core::redis_store::{Keys, StoreError};
use herald_core::signing::Secret;

fn store() -> EndpointStore {
    let url = std::env::var("HERALD_TEST_REDIS_URL")
        .expect("HERALD_TEST_REDIS_URL is not set: run the tests with scripts/test");
    let config = RedisConfig::from_env(&Env::from_pairs([("HERALD_REDIS_URL", url)])).unwrap();
    let redis = herald_core::redis_store::connect(&config).unwrap();
    EndpointStore::new(
        redis,
        Keys::new(format!("t{}:", uuid::Uuid::new_v4().simple())),
    )
}

fn endpoint(id: &str, url: &str, types: &[&str]) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        url: url.to_owned(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        description: String::new(),
        headers: BTreeMap::new(),
        disabled: false,
        disabled_reason: None,
        rate_limit: None,
        secret: Secret::generate().expose(),
        previous_secrets: Vec::new(),
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        updated_at: "2026-01-01T00:00:00Z".to_owned(),
    }
}

fn ids(found: Vec<Arc<str>>) -> Vec<String> {
    found.iter().map(|id| id.to_string()).collect()
}

async fn url_of(cache: &EndpointCache, id: &str) -> String {
    let found = cache
        .lookup(id)
        .await
        .unwrap()
        .expect("the endpoint exists");
    found.endpoint.url.clone()
}

#[tokio::test]
async fn a_dispatcher_holds_only_the_endpoints_it_used_until_one_changes() {
    let store = store();
    for n in 0..20 {
        let e = endpoint(&format!("ep_{n}"), "http://a.test/hook", &["*"]);
        store.create(&e, n).await.unwrap();
    }
    let cache = EndpointCache::new(store.clone());
    cache.refresh().await.unwrap();
    assert_eq!(cache.fresh(), 0, "nothing is read before it is needed");

    assert_eq!(url_of(&cache, "ep_3").await, "http://a.test/hook");
    assert_eq!(cache.fresh(), 1);
    assert!(cache.lookup("ep_missing").await.unwrap().is_none());
    assert_eq!(cache.fresh(), 1, "an unknown id is not held");

    let changed = store
        .modify("ep_3", |e| e.url = "http://b.test/hook".to_owned())
        .await
        .unwrap();
    assert!(changed.is_some());
    // Until the next refresh, the held copy is used...
    assert_eq!(url_of(&cache, "ep_3").await, "http://a.test/hook");
    // ...and the refresh that sees the change makes it stale.
    cache.refresh().await.unwrap();
    assert_eq!(cache.fresh(), 0);
    assert_eq!(url_of(&cache, "ep_3").await, "http://b.test/hook");

    // A refresh without a change keeps what is held.
    cache.refresh().await.unwrap();
    assert_eq!(cache.fresh(), 1);

    assert!(store.delete("ep_3").await.unwrap());
    cache.refresh().await.unwrap();
    assert!(cache.lookup("ep_3").await.unwrap().is_none());
}

#[tokio::test]
async fn fan_out_reads_every_subscription_and_sees_changes_after_a_refresh() {
    let store = store();
    store
        .create(&endpoint("ep_a", "http://a.test/", &["order.*"]), 1)
        .await
        .unwrap();
    store
        .create(&endpoint("ep_b", "http://b.test/", &["user.created"]), 2)
        .await
        .unwrap();
    let cache = SubscriptionCache::new(store.clone());
    assert!(cache.current().is_none());
    cache.refresh().await.unwrap();
    let index = cache.current().unwrap();
    assert_eq!(index.len(), 2);
    assert_eq!(ids(index.subscribers("order.created")), ["ep_a"]);
    assert_eq!(ids(index.subscribers("user.created")), ["ep_b"]);

    store
        .modify("ep_b", |e| e.event_types = vec!["order.created".to_owned()])
        .await
        .unwrap();
    store.modify("ep_a", |e| e.disabled = true).await.unwrap();
    // The index in use stays as it was; the refresh brings the change.
    assert_eq!(ids(index.subscribers("order.created")), ["ep_a"]);
    let index = cache.refresh().await.unwrap();
    assert_eq!(ids(index.subscribers("order.created")), ["ep_b"]);
    assert!(index.subscribers("user.created").is_empty());
}

/// Fan-out does not read secrets, so an endpoint whose stored secret is
/// damaged still gets its deliveries, and the dispatcher's lookup says what
/// is wrong (it dead-letters them with that reason) instead of the events
/// vanishing before a delivery exists.
#[tokio::test]
async fn a_damaged_secret_is_the_dispatchers_error_not_a_silent_skip() {
    let store = store();
    let mut damaged = endpoint("ep_damaged", "http://a.test/", &["*"]);
    damaged.secret = "not-a-secret".to_owned();
    store.create(&damaged, 1).await.unwrap();

    let subscriptions = SubscriptionCache::new(store.clone());
    let index = subscriptions.refresh().await.unwrap();
    assert_eq!(ids(index.subscribers("order.created")), ["ep_damaged"]);

    let cache = EndpointCache::new(store);
    cache.refresh().await.unwrap();
    match cache.lookup("ep_damaged").await {
        Err(StoreError::Corrupt(problem)) => {
            assert!(problem.contains("unusable secret"), "{problem}")
        }
        other => panic!("expected a corrupt-endpoint error, got {other:?}"),
    }
    assert_eq!(cache.fresh(), 0);
}

/// Concurrent changes to one endpoint (PATCHes, rotations, a 410 disabling
/// it) each apply on top of the others: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_to_one_endpoint_all_survive() {
    const WRITERS: usize = 24;
    let store = store();
    store
        .create(&endpoint("ep_race", "http://a.test/hook", &["base"]), 0)
        .await
        .unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .modify("ep_race", |e| e.event_types.push(format!("t.{i}")))
                    .await
            })
        })
        .collect();
    let disable = {
        let store = store.clone();
        tokio::spawn(async move { store.disable("ep_race", "410 Gone").await })
    };
    for writer in writers {
        assert!(writer.await.unwrap().unwrap().is_some());
    }
    assert!(disable.await.unwrap().unwrap());
    let stored = store.get("ep_race").await.unwrap().unwrap();
    assert_eq!(
        stored.event_types.len(),
        WRITERS + 1,
        "{:?}",
        stored.event_types
    );
    for i in 0..WRITERS {
        assert!(stored.event_types.contains(&format!("t.{i}")));
    }
    assert!(stored.disabled);
    assert_eq!(stored.disabled_reason.as_deref(), Some("410 Gone"));

    // A change to an endpoint deleted meanwhile writes nothing back.
    assert!(store.delete("ep_race").await.unwrap());
    assert!(
        store
            .modify("ep_race", |e| e.disabled = false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get("ep_race").await.unwrap().is_none());
}
