//! Fan-out's subscription cache against a real Redis
//! (`HERALD_TEST_REDIS_URL`, set by scripts/test): what it holds, and when a
//! change reaches it.

use std::sync::Arc;

use herald_fanout::subscriptions::SubscriptionCache;
use herald_tests::{endpoint_store as store, stored_endpoint as endpoint};

fn ids(found: Vec<Arc<str>>) -> Vec<String> {
    found.iter().map(|id| id.to_string()).collect()
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
/// damaged still gets its deliveries (the dispatcher dead-letters them with
/// the reason) instead of the events vanishing before a delivery exists.
#[tokio::test]
async fn an_endpoint_with_a_damaged_secret_still_gets_its_deliveries() {
    let store = store();
    let mut damaged = endpoint("ep_damaged", "http://a.test/", &["*"]);
    damaged.secret = "not-a-secret".to_owned();
    store.create(&damaged, 1).await.unwrap();

    let subscriptions = SubscriptionCache::new(store.clone());
    let index = subscriptions.refresh().await.unwrap();
    assert_eq!(ids(index.subscribers("order.created")), ["ep_damaged"]);
}
