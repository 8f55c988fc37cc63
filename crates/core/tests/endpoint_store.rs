//! The endpoint store against a real Redis (`HERALD_TEST_REDIS_URL`, set by
//! scripts/test).

use std::collections::BTreeMap;

use herald_core::config::{Env, RedisConfig};
use herald_core::endpoint::{Endpoint, EndpointStore};
use herald_core::redis_store::Keys;
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
