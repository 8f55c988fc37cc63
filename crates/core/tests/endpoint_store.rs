//! The endpoint store against a real Redis (`HERALD_TEST_REDIS_URL`, set by
//! scripts/test).

use std::collections::BTreeMap;

use herald_core::application::{Application, ApplicationStore};
use herald_core::config::{Env, RedisConfig};
use herald_core::endpoint::{Endpoint, EndpointStore};
use herald_core::redis_store::Keys;
use herald_core::signing::Secret;

/// The stores under keys of their own, with the application `acme`.
async fn stores() -> (EndpointStore, ApplicationStore) {
    let url = std::env::var("HERALD_TEST_REDIS_URL")
        .expect("HERALD_TEST_REDIS_URL is not set: run the tests with scripts/test");
    let config = RedisConfig::from_env(&Env::from_pairs([("HERALD_REDIS_URL", url)])).unwrap();
    let redis = herald_core::redis_store::connect(&config).unwrap();
    let keys = Keys::new(format!("t{}:", uuid::Uuid::new_v4().simple()));
    let applications = ApplicationStore::new(redis.clone(), keys.clone());
    assert!(applications.create(&application("acme"), 1).await.unwrap());
    (EndpointStore::new(redis, keys), applications)
}

async fn store() -> EndpointStore {
    stores().await.0
}

fn application(id: &str) -> Application {
    Application {
        id: id.to_owned(),
        name: format!("{id} Inc."),
        metadata: BTreeMap::new(),
        rate_limit: None,
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        updated_at: "2026-01-01T00:00:00Z".to_owned(),
    }
}

fn endpoint(id: &str, url: &str, types: &[&str]) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        application_id: "acme".to_owned(),
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

/// Concurrent changes to one endpoint (PATCHes, rotations, a 410 disabling
/// it) each apply on top of the others: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_to_one_endpoint_all_survive() {
    const WRITERS: usize = 24;
    let store = store().await;
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
    assert!(store.delete(&stored).await.unwrap());
    assert!(
        store
            .modify("ep_race", |e| e.disabled = false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get("ep_race").await.unwrap().is_none());
}

/// Every change to an application or its endpoints moves its counter (what
/// fan-out watches); deleting it takes its endpoints along.
#[tokio::test]
async fn an_application_owns_its_endpoints_and_counts_their_changes() {
    let (store, applications) = stores().await;
    assert!(
        applications
            .create(&application("globex"), 2)
            .await
            .unwrap()
    );
    assert!(
        !applications.create(&application("acme"), 3).await.unwrap(),
        "an id is taken once"
    );
    let mut versions = vec![applications.version("acme").await.unwrap()];
    for n in 0..3 {
        assert!(
            store
                .create(&endpoint(&format!("ep_{n}"), "http://a.test/", &["*"]), n)
                .await
                .unwrap()
        );
        versions.push(applications.version("acme").await.unwrap());
    }
    store.modify("ep_0", |e| e.disabled = true).await.unwrap();
    versions.push(applications.version("acme").await.unwrap());
    let first = store.get("ep_1").await.unwrap().unwrap();
    assert!(store.delete(&first).await.unwrap());
    versions.push(applications.version("acme").await.unwrap());
    assert!(
        versions.windows(2).all(|w| w[1] > w[0]),
        "every change moves the counter: {versions:?}"
    );
    assert_eq!(applications.version("globex").await.unwrap(), 1);
    let listed: Vec<String> = store
        .list("acme", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, ["ep_0", "ep_2"]);
    assert!(store.list("globex", 0, 10).await.unwrap().is_empty());

    let renamed = applications
        .modify("acme", |app| app.name = "ACME".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "ACME");
    assert_eq!(applications.delete("acme").await.unwrap(), Some(2));
    assert!(store.get("ep_0").await.unwrap().is_none());
    assert!(store.get("ep_2").await.unwrap().is_none());
    assert!(applications.get("acme").await.unwrap().is_none());
    assert_eq!(applications.delete("acme").await.unwrap(), None);
    let ids: Vec<String> = applications
        .list(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["globex"]);
}
