//! Fan-out's subscription cache against a real Redis
//! (`HERALD_TEST_REDIS_URL`, set by scripts/test): what it holds, and when a
//! change reaches it.

use std::sync::Arc;

use herald_core::application::{Application, ApplicationStore};
use herald_core::endpoint::EndpointStore;
use herald_fanout::subscriptions::{Lookup, SubscriptionCache, Subscriptions};
use herald_tests::{APP, stored_endpoint as endpoint};

fn ids(found: Vec<Arc<str>>) -> Vec<String> {
    found.iter().map(|id| id.to_string()).collect()
}

fn found(lookup: Lookup) -> Arc<Subscriptions> {
    match lookup {
        Lookup::Found(subscriptions) => subscriptions,
        Lookup::NoSuchApplication => panic!("the application exists"),
    }
}

async fn with_application(applications: &ApplicationStore, id: &str) {
    let app = Application {
        id: id.to_owned(),
        name: id.to_owned(),
        metadata: Default::default(),
        rate_limit: None,
        created_at: String::new(),
        updated_at: String::new(),
    };
    assert!(applications.create(&app, 0).await.unwrap());
}

fn cache(
    store: &EndpointStore,
    applications: &ApplicationStore,
    entries: usize,
) -> SubscriptionCache {
    SubscriptionCache::new(store.clone(), applications.clone(), entries, 1 << 20)
}

#[tokio::test]
async fn an_applications_subscriptions_are_read_once_and_again_after_a_change() {
    let (store, applications) = herald_tests::stores();
    with_application(&applications, APP).await;
    store
        .create(&endpoint("ep_a", "http://a.test/", &["order.*"]), 1)
        .await
        .unwrap();
    store
        .create(&endpoint("ep_b", "http://b.test/", &["user.created"]), 2)
        .await
        .unwrap();
    let cache = cache(&store, &applications, 100);
    let index = found(cache.lookup(APP, 0).await.unwrap());
    assert_eq!(index.len(), 2);
    assert_eq!(ids(index.subscribers("order.created")), ["ep_a"]);
    assert_eq!(ids(index.subscribers("user.created")), ["ep_b"]);
    found(cache.lookup(APP, 0).await.unwrap());
    assert_eq!(cache.hit_counts(), (1, 1));

    store
        .modify("ep_b", |e| e.event_types = vec!["order.created".to_owned()])
        .await
        .unwrap();
    store.modify("ep_a", |e| e.disabled = true).await.unwrap();
    // The copy held stays as it was until a refresh sees the counter move.
    let held = found(cache.lookup(APP, 0).await.unwrap());
    assert_eq!(ids(held.subscribers("order.created")), ["ep_a"]);
    cache.refresh().await.unwrap();
    let index = found(cache.lookup(APP, 0).await.unwrap());
    assert_eq!(ids(index.subscribers("order.created")), ["ep_b"]);
    assert!(index.subscribers("user.created").is_empty());
}

/// Read your writes: an event stamped with the application's counter after
/// a change is fanned out with the change, refresh or not.
#[tokio::test]
async fn an_event_stamped_newer_than_the_copy_reads_the_application_again() {
    let (store, applications) = herald_tests::stores();
    with_application(&applications, APP).await;
    let cache = cache(&store, &applications, 100);
    let before = found(cache.lookup(APP, 0).await.unwrap());
    assert!(before.subscribers("order.created").is_empty());
    store
        .create(&endpoint("ep_new", "http://a.test/", &["*"]), 1)
        .await
        .unwrap();
    let stamped = applications.version(APP).await.unwrap();
    assert!(stamped > before.version());
    let after = found(cache.lookup(APP, stamped).await.unwrap());
    assert_eq!(ids(after.subscribers("order.created")), ["ep_new"]);
}

#[tokio::test]
async fn each_application_sees_only_its_endpoints_and_an_unknown_one_is_said_so() {
    let (store, applications) = herald_tests::stores();
    with_application(&applications, "acme").await;
    with_application(&applications, "globex").await;
    let mut a = endpoint("ep_acme", "http://a.test/", &["invoice.paid"]);
    a.application_id = "acme".to_owned();
    let mut g = endpoint("ep_globex", "http://g.test/", &["invoice.paid"]);
    g.application_id = "globex".to_owned();
    assert!(store.create(&a, 1).await.unwrap());
    assert!(store.create(&g, 2).await.unwrap());
    let cache = cache(&store, &applications, 100);
    let acme = found(cache.lookup("acme", 0).await.unwrap());
    let globex = found(cache.lookup("globex", 0).await.unwrap());
    assert_eq!(ids(acme.subscribers("invoice.paid")), ["ep_acme"]);
    assert_eq!(ids(globex.subscribers("invoice.paid")), ["ep_globex"]);
    assert!(matches!(
        cache.lookup("initech", 0).await.unwrap(),
        Lookup::NoSuchApplication
    ));
    // An endpoint cannot be created in an application that does not exist.
    let mut orphan = endpoint("ep_orphan", "http://o.test/", &["*"]);
    orphan.application_id = "initech".to_owned();
    assert!(!store.create(&orphan, 3).await.unwrap());
}

#[tokio::test]
async fn the_cache_holds_at_most_its_entries_and_stays_right() {
    let (store, applications) = herald_tests::stores();
    for app in ["a1", "a2", "a3"] {
        with_application(&applications, app).await;
        let mut e = endpoint(&format!("ep_{app}"), "http://a.test/", &["*"]);
        e.application_id = app.to_owned();
        store.create(&e, 1).await.unwrap();
    }
    let cache = cache(&store, &applications, 2);
    for round in 0..3 {
        for app in ["a1", "a2", "a3"] {
            let index = found(cache.lookup(app, 0).await.unwrap());
            assert_eq!(
                ids(index.subscribers("x")),
                [format!("ep_{app}")],
                "round {round}"
            );
            assert!(cache.len() <= 2);
        }
    }
}

/// Fan-out does not read secrets, so an endpoint whose stored secret is
/// damaged still gets its deliveries (the dispatcher dead-letters them with
/// the reason) instead of the events vanishing before a delivery exists.
#[tokio::test]
async fn an_endpoint_with_a_damaged_secret_still_gets_its_deliveries() {
    let (store, applications) = herald_tests::stores_with_app().await;
    let mut damaged = endpoint("ep_damaged", "http://a.test/", &["*"]);
    damaged.secret = "not-a-secret".to_owned();
    store.create(&damaged, 1).await.unwrap();
    let index = found(
        cache(&store, &applications, 10)
            .lookup(APP, 0)
            .await
            .unwrap(),
    );
    assert_eq!(ids(index.subscribers("order.created")), ["ep_damaged"]);
}
