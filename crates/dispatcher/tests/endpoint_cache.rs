//! The dispatcher's endpoint cache against a real Redis
//! (`HERALD_TEST_REDIS_URL`, set by scripts/test): what it holds, and when a
//! change reaches it.

use herald_core::redis_store::StoreError;
use herald_dispatcher::endpoint_cache::EndpointCache;
use herald_tests::{endpoint_store as store, stored_endpoint as endpoint};

async fn url_of(cache: &EndpointCache, id: &str) -> String {
    let found = cache
        .lookup(id)
        .await
        .unwrap()
        .expect("the endpoint exists");
    found.url.to_string()
}

#[tokio::test]
async fn a_dispatcher_holds_only_the_endpoints_it_used_until_one_changes() {
    let store = store().await;
    for n in 0..20 {
        let e = endpoint(&format!("ep_{n}"), "http://a.test/hook", &["*"]);
        store.create(&e, n).await.unwrap();
    }
    let cache = EndpointCache::new(store.clone(), 10_000, 16 << 20);
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
    // ...and the refresh that sees the change makes it stale, and it alone.
    assert_eq!(url_of(&cache, "ep_4").await, "http://a.test/hook");
    assert_eq!(cache.fresh(), 2);
    cache.refresh().await.unwrap();
    assert_eq!(cache.fresh(), 1, "only the changed endpoint goes stale");
    assert_eq!(url_of(&cache, "ep_3").await, "http://b.test/hook");

    // Many deliveries waiting for one endpoint read it once.
    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup("ep_7").await })
        })
        .collect();
    for lookup in waiting {
        assert!(lookup.await.unwrap().unwrap().is_some());
    }
    assert_eq!(cache.fresh(), 3);

    // A refresh without a change keeps what is held.
    cache.refresh().await.unwrap();
    assert_eq!(cache.fresh(), 3);

    let third = store.get("ep_3").await.unwrap().unwrap();
    assert!(store.delete(&third).await.unwrap());
    cache.refresh().await.unwrap();
    assert!(cache.lookup("ep_3").await.unwrap().is_none());
}

/// However many endpoints a replica delivers to, it holds at most the
/// configured number: the least recently used go, and are read again when
/// a delivery needs them.
#[tokio::test]
async fn a_dispatcher_holds_at_most_its_bound_of_endpoints() {
    let store = store().await;
    for n in 0..20 {
        let e = endpoint(&format!("ep_bound_{n}"), "http://a.test/hook", &["*"]);
        store.create(&e, n).await.unwrap();
    }
    let cache = EndpointCache::new(store.clone(), 5, 16 << 20);
    for n in 0..20 {
        assert!(
            cache
                .lookup(&format!("ep_bound_{n}"))
                .await
                .unwrap()
                .is_some()
        );
        // A delivery to ep_bound_0 between every other keeps it the most
        // recently used.
        assert!(cache.lookup("ep_bound_0").await.unwrap().is_some());
        assert!(cache.len() <= 5, "{} held", cache.len());
    }
    assert_eq!(cache.len(), 5);
    // An endpoint let go is read again, with any change made meanwhile.
    store
        .modify("ep_bound_1", |e| e.url = "http://b.test/hook".to_owned())
        .await
        .unwrap();
    assert_eq!(url_of(&cache, "ep_bound_1").await, "http://b.test/hook");
    assert_eq!(url_of(&cache, "ep_bound_0").await, "http://a.test/hook");

    // The byte bound holds too: each endpoint counts for over 512 bytes.
    let small = EndpointCache::new(store, 10_000, 2_000);
    for n in 0..20 {
        small.lookup(&format!("ep_bound_{n}")).await.unwrap();
    }
    assert!(
        small.len() < 20 && !small.is_empty(),
        "{} held",
        small.len()
    );
}

/// A damaged stored secret is an error the dispatcher reports (it
/// dead-letters the delivery with it), never a silent skip.
#[tokio::test]
async fn a_damaged_secret_is_the_dispatchers_error_not_a_silent_skip() {
    let store = store().await;
    let mut damaged = endpoint("ep_damaged", "http://a.test/", &["*"]);
    damaged.secret = "not-a-secret".to_owned();
    store.create(&damaged, 1).await.unwrap();

    let cache = EndpointCache::new(store, 10_000, 16 << 20);
    cache.refresh().await.unwrap();
    match cache.lookup("ep_damaged").await {
        Err(StoreError::Corrupt(problem)) => {
            assert!(problem.contains("unusable secret"), "{problem}")
        }
        other => panic!("expected a corrupt-endpoint error, got {other:?}"),
    }
    assert_eq!(cache.fresh(), 0);
}
