//! Redis goes away: deliveries go on (breakers treated as closed, rate
//! limits kept by each replica alone, with the cached subscriptions), the
//! logs say so,
//! ingest refuses events it cannot de-duplicate, and everything resumes
//! when Redis answers again.

use std::time::Duration;

use herald_tests::{Behaviour, Receiver, RedisServer, Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_on_while_redis_is_away() {
    let (redis, stack) = stack_on_a_redis_of_its_own("redis-outage").await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    for i in 0..5 {
        stack
            .accept_event(&json!({"application": "app_test", "type": "before", "payload": i}))
            .await;
    }
    assert!(receiver.wait_for(5, Duration::from_secs(30)).await);

    redis.freeze();
    publish_straight_to_kafka(&stack, 30).await;
    wait_for_webhooks(&stack, &receiver, 35, Duration::from_secs(90)).await;
    let dispatcher_log = stack.dispatchers[0].log_text();
    assert!(
        dispatcher_log.contains("Redis does not answer"),
        "the dispatcher must say it lost Redis"
    );
    let (status, body) = stack
        .post_event(&json!({"application": "app_test", "type": "refused", "payload": 1}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "redis_unavailable");

    redis.thaw();
    for i in 0..5 {
        stack
            .accept_event(&json!({"application": "app_test", "id": format!("after_{i}"), "type": "after", "payload": i}))
            .await;
    }
    assert!(receiver.wait_for(40, Duration::from_secs(60)).await);
    assert!(
        herald_tests::eventually(Duration::from_secs(10), || stack.dispatchers[0]
            .log_text()
            .contains("Redis answers again"))
        .await
    );
    let counts = receiver.id_counts();
    assert_eq!(counts.len(), 40);
    assert!(
        counts.values().all(|n| *n == 1),
        "every event exactly once: {counts:?}"
    );
    assert!(receiver.received().iter().all(|r| r.signature_valid));
}

/// A dispatcher re-reads the endpoints it holds after any endpoint changes.
/// If Redis goes away right after such a change, it keeps delivering with
/// the copies it has rather than waiting for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_just_before_redis_goes_away_does_not_stop_deliveries() {
    let (redis, stack) = stack_on_a_redis_of_its_own("redis-outage-change").await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&receiver, &["*"]).await;
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "app_test", "type": "before", "payload": 0}))
        .await;
    assert!(receiver.wait_for(1, Duration::from_secs(30)).await);

    // Any change moves the change counter; the caches notice it, then Redis
    // stops answering.
    let other = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&other, &["unrelated.type"]).await;
    stack.settle_endpoints().await;
    redis.freeze();
    publish_straight_to_kafka(&stack, 10).await;
    wait_for_webhooks(&stack, &receiver, 11, Duration::from_secs(60)).await;
    redis.thaw();
    assert_eq!(other.count(), 0);
}

/// Without Redis, a rate-limited endpoint's deliveries are still spaced, by
/// the replica alone, rather than sent as fast as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_still_spaces_deliveries_while_redis_is_away() {
    let (redis, stack) = stack_on_a_redis_of_its_own("redis-outage-rate-limit").await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = stack
        .create_endpoint(json!({"url": receiver.url(), "event_types": ["*"], "rate_limit": 5}))
        .await;
    receiver.set_secret(created["secret"].as_str().unwrap());
    let endpoint_id = created["id"].as_str().unwrap().to_owned();
    stack.settle_endpoints().await;
    stack.wait_dispatchers_assigned().await;
    // One delivery while Redis answers, so the dispatcher holds the
    // endpoint when Redis goes.
    stack.produce_deliveries(&endpoint_id, 1, 1).await;
    assert!(receiver.wait_for(1, Duration::from_secs(30)).await);

    redis.freeze();
    let ids = stack.produce_deliveries(&endpoint_id, 20, 4).await;
    wait_for_webhooks(&stack, &receiver, 21, Duration::from_secs(90)).await;
    redis.thaw();

    let (arrivals, busiest) = crate::rate_limit::arrivals_and_busiest_second(&receiver);
    let span = *arrivals.last().unwrap() - arrivals[1];
    println!("while Redis was away: busiest second {busiest}, 20 over {span:?}");
    assert!(
        busiest <= 6,
        "{busiest} deliveries within one second (limit 5)"
    );
    // 20 at 5/s: 19 intervals of 200 ms at the least.
    assert!(span >= Duration::from_millis(3_600), "20 within {span:?}");
    let counts = receiver.id_counts();
    assert!(
        ids.iter().all(|id| counts.get(id) == Some(&1)),
        "{counts:?}"
    );
}

/// A stack whose Redis the test can freeze, with a short Redis timeout so
/// that an outage is noticed quickly.
async fn stack_on_a_redis_of_its_own(name: &str) -> (RedisServer, Stack) {
    let redis = RedisServer::start().await;
    let stack = Stack::start(
        StackOptions::new(name)
            .env("HERALD_REDIS_URL", &redis.url)
            .env("HERALD_REDIS_TIMEOUT", "500ms"),
    )
    .await;
    (redis, stack)
}

/// Publishes `count` events (`during_0` …) straight to `herald.events`:
/// ingest refuses events while Redis is away.
async fn publish_straight_to_kafka(stack: &Stack, count: usize) {
    let producer = stack.kafka_producer();
    for i in 0..count {
        let event = json!({"application": "app_test", "id": format!("during_{i}"), "type": "during", "payload": i});
        stack.produce_event(&producer, &event).await;
    }
}

async fn wait_for_webhooks(stack: &Stack, receiver: &Receiver, total: usize, within: Duration) {
    assert!(
        receiver.wait_for(total, within).await,
        "only {} webhooks arrived while Redis was away; logs in {}",
        receiver.count(),
        stack.logs().display()
    );
}

/// An application fan-out has not seen yet cannot be read while Redis is
/// away: its events wait, and are delivered — once — when Redis answers,
/// while an application fan-out holds goes on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_an_application_never_seen_wait_for_redis_and_are_not_lost() {
    let (redis, stack) = stack_on_a_redis_of_its_own("redis-outage-new-app").await;
    let known = Receiver::start(Behaviour::Accept).await;
    stack.subscribe(&known, &["*"]).await;
    stack.create_application("newcomer").await;
    let newcomer = Receiver::start(Behaviour::Accept).await;
    let created = stack
        .create_endpoint_in(
            "newcomer",
            json!({"url": newcomer.url(), "event_types": ["*"]}),
        )
        .await;
    newcomer.set_secret(created["secret"].as_str().unwrap());
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"id": "warm", "type": "a", "payload": 0}))
        .await;
    assert!(known.wait_for(1, Duration::from_secs(30)).await);

    redis.freeze();
    let producer = stack.kafka_producer();
    for i in 0..3 {
        stack
            .produce_event(
                &producer,
                &json!({"application": "newcomer", "id": format!("new_{i}"), "type": "a", "payload": i}),
            )
            .await;
        stack
            .produce_event(
                &producer,
                &json!({"id": format!("known_{i}"), "type": "a", "payload": i}),
            )
            .await;
    }
    wait_for_webhooks(&stack, &known, 4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        newcomer.count(),
        0,
        "nothing can be known of it without Redis"
    );

    redis.thaw();
    assert_eq!(
        newcomer.wait_for_distinct(3, Duration::from_secs(60)).await,
        3,
        "the waiting events were lost; logs in {}",
        stack.logs().display()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(newcomer.id_counts().values().all(|n| *n == 1));
    assert!(newcomer.received().iter().all(|r| r.signature_valid));
}
