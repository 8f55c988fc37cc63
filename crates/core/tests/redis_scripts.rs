//! The circuit-breaker and rate-limit scripts, run by a real Redis
//! (`HERALD_TEST_REDIS_URL`, set by scripts/test). Times are passed in, so
//! every case is exact.

use std::time::Duration;

use herald_core::circuit::{
    BreakerConfig, Breakers, CLOSED_TRUST_MS, Permission, Transition, read_status,
};
use herald_core::config::{Env, RedisConfig};
use herald_core::rate_limit::{Clock, RateLimiter, RateSlot};
use herald_core::redis_store::Keys;
use redis::aio::ConnectionManager;

fn redis() -> ConnectionManager {
    let url = std::env::var("HERALD_TEST_REDIS_URL")
        .expect("HERALD_TEST_REDIS_URL is not set: run the tests with scripts/test");
    let config = RedisConfig::from_env(&Env::from_pairs([("HERALD_REDIS_URL", url)])).unwrap();
    herald_core::redis_store::connect(&config).unwrap()
}

/// Keys under a prefix of their own, so tests do not meet.
fn keys() -> Keys {
    Keys::new(format!("t{}:", uuid::Uuid::new_v4().simple()))
}

/// How many members the sorted set `key` holds.
async fn zcard(conn: &ConnectionManager, key: String) -> usize {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn.clone())
        .await
        .unwrap()
}

fn config() -> BreakerConfig {
    BreakerConfig::from_env(&Env::default(), Duration::from_secs(15)).unwrap()
}

const T0: i64 = 1_800_000_000_000;

async fn fail(breakers: &Breakers, now: i64, probe: bool) -> Transition {
    breakers
        .record("ep", now, false, probe, "the endpoint answered 503")
        .await
        .unwrap()
}

#[tokio::test]
async fn five_failures_in_a_row_open_the_breaker_for_the_cooldown() {
    let breakers = Breakers::new(redis(), keys(), config());
    assert_eq!(breakers.acquire("ep", T0).await.unwrap(), Permission::Allow);
    for i in 0..4 {
        assert_eq!(fail(&breakers, T0 + i, false).await, Transition::None);
    }
    // A success resets the run.
    breakers
        .record("ep", T0 + 5, true, false, "")
        .await
        .unwrap();
    for i in 0..4 {
        assert_eq!(fail(&breakers, T0 + 10 + i, false).await, Transition::None);
    }
    assert_eq!(fail(&breakers, T0 + 20, false).await, Transition::Opened);
    assert_eq!(
        breakers.acquire("ep", T0 + 21).await.unwrap(),
        Permission::Deny {
            until_ms: T0 + 20 + 30_000
        }
    );
}

#[tokio::test]
async fn a_high_failure_ratio_opens_the_breaker() {
    let breakers = Breakers::new(redis(), keys(), config());
    // 3 successes and 7 failures, never 5 failures in a row.
    let pattern = [
        false, false, true, false, false, true, false, false, true, false,
    ];
    let mut last = Transition::None;
    for (i, ok) in pattern.iter().enumerate() {
        last = breakers
            .record("ep", T0 + i as i64, *ok, false, "x")
            .await
            .unwrap();
    }
    assert_eq!(last, Transition::Opened, "70 % of 10 attempts failed");
}

#[tokio::test]
async fn failures_outside_the_window_do_not_count() {
    let breakers = Breakers::new(redis(), keys(), config());
    for i in 0..7 {
        breakers
            .record("ep", T0 + i, i % 3 == 2, false, "x")
            .await
            .unwrap();
    }
    // Ten minutes later the window holds only the new attempts.
    let later = T0 + 600_000;
    let mut last = Transition::None;
    for i in 0..4 {
        last = breakers
            .record("ep", later + i, i == 0, false, "x")
            .await
            .unwrap();
    }
    assert_eq!(last, Transition::None);
}

#[tokio::test]
async fn exactly_one_probe_after_the_cooldown_and_its_result_decides() {
    let keys = keys();
    let redis = redis();
    let breakers = Breakers::new(redis.clone(), keys.clone(), config());
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    let reopen_at = T0 + 4 + 30_000;
    // Two replicas ask at once after the cool-down: one probe, one wait.
    let other = Breakers::new(redis.clone(), keys.clone(), config());
    let (a, b) = tokio::join!(
        breakers.acquire("ep", reopen_at),
        other.acquire("ep", reopen_at)
    );
    let mut answers = [a.unwrap(), b.unwrap()];
    answers.sort_by_key(|p| matches!(p, Permission::Deny { .. }));
    assert_eq!(answers[0], Permission::Probe);
    assert!(matches!(answers[1], Permission::Deny { .. }));

    // The probe fails: open again for twice as long.
    assert_eq!(
        fail(&breakers, reopen_at + 10, true).await,
        Transition::Reopened
    );
    assert_eq!(
        breakers.acquire("ep", reopen_at + 11).await.unwrap(),
        Permission::Deny {
            until_ms: reopen_at + 10 + 60_000
        }
    );
    let status = read_status(
        &redis,
        &keys,
        "ep",
        Duration::from_secs(300),
        reopen_at + 11,
    )
    .await
    .unwrap();
    assert_eq!(status.state, "open");
    assert_eq!(status.next_probe_at_ms, Some(reopen_at + 10 + 60_000));
    assert_eq!(status.recent_failures, 6);
    assert_eq!(
        status.last_error.as_deref(),
        Some("the endpoint answered 503")
    );

    // The next probe succeeds: closed, and everyone may go.
    let next = reopen_at + 10 + 60_000;
    assert_eq!(
        breakers.acquire("ep", next).await.unwrap(),
        Permission::Probe
    );
    assert_eq!(
        breakers
            .record("ep", next + 5, true, true, "")
            .await
            .unwrap(),
        Transition::Closed
    );
    assert_eq!(
        other.acquire("ep", next + 6).await.unwrap(),
        Permission::Allow
    );
}

#[tokio::test]
async fn a_replica_trusts_a_closed_breaker_only_briefly() {
    let keys = keys();
    let redis = redis();
    let this = Breakers::new(redis.clone(), keys.clone(), config());
    let other = Breakers::new(redis.clone(), keys.clone(), config());
    assert_eq!(this.acquire("ep", T0).await.unwrap(), Permission::Allow);
    assert_eq!(this.acquire("ep2", T0).await.unwrap(), Permission::Allow);
    for endpoint in ["ep", "ep2"] {
        let mut last = Transition::None;
        for i in 0..5 {
            last = other
                .record(endpoint, T0 + 1 + i, false, false, "503")
                .await
                .unwrap();
        }
        assert_eq!(last, Transition::Opened);
    }
    // Another replica opened both: this one goes on what it saw until the
    // trust ends, then asks Redis and stops.
    assert_eq!(
        this.acquire("ep", T0 + 10).await.unwrap(),
        Permission::Allow
    );
    assert!(matches!(
        this.acquire("ep", T0 + CLOSED_TRUST_MS).await.unwrap(),
        Permission::Deny { .. }
    ));
    // A failure this replica records itself ends the trust at once.
    this.record("ep2", T0 + 10, false, false, "503")
        .await
        .unwrap();
    assert!(matches!(
        this.acquire("ep2", T0 + 11).await.unwrap(),
        Permission::Deny { .. }
    ));
}

#[tokio::test]
async fn successes_alone_keep_only_the_window() {
    let keys = keys();
    let redis = redis();
    let breakers = Breakers::new(redis.clone(), keys.clone(), config());
    for i in 0..3 {
        breakers
            .record("ep", T0 + i, true, false, "")
            .await
            .unwrap();
    }
    // Ten minutes later a success starts a new bucket and drops the old.
    let later = T0 + 600_000;
    breakers.record("ep", later, true, false, "").await.unwrap();
    let status = read_status(&redis, &keys, "ep", Duration::from_secs(300), later)
        .await
        .unwrap();
    assert_eq!((status.recent_successes, status.recent_failures), (1, 0));
    let mut conn = redis.clone();
    let buckets: usize = redis::cmd("HLEN")
        .arg(keys.breaker_window("ep"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(buckets, 1, "the old bucket is gone from Redis");
}

#[tokio::test]
async fn the_cooldown_doubles_up_to_its_cap() {
    let breakers = Breakers::new(redis(), keys(), config());
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    let mut now = T0 + 4;
    let mut cooldown = 30_000;
    for _ in 0..8 {
        now += cooldown;
        assert_eq!(
            breakers.acquire("ep", now).await.unwrap(),
            Permission::Probe
        );
        fail(&breakers, now, true).await;
        cooldown = (cooldown * 2).min(600_000);
        assert_eq!(
            breakers.acquire("ep", now + 1).await.unwrap(),
            Permission::Deny {
                until_ms: now + cooldown
            }
        );
    }
    assert_eq!(cooldown, 600_000);
}

#[tokio::test]
async fn a_probe_whose_replica_died_is_replaced_after_its_lease() {
    let breakers = Breakers::new(redis(), keys(), config());
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    let at = T0 + 4 + 30_000;
    assert_eq!(breakers.acquire("ep", at).await.unwrap(), Permission::Probe);
    // Nothing is recorded: the prober died. After the 20 s lease another
    // delivery may probe.
    // Meanwhile others are told to come back in 5 s (min of cool-down, 5 s).
    assert_eq!(
        breakers.acquire("ep", at + 1_000).await.unwrap(),
        Permission::Deny {
            until_ms: at + 6_000
        }
    );
    assert!(matches!(
        breakers.acquire("ep", at + 19_000).await.unwrap(),
        Permission::Deny { .. }
    ));
    assert_eq!(
        breakers.acquire("ep", at + 20_001).await.unwrap(),
        Permission::Probe
    );
}

#[tokio::test]
async fn a_probe_handed_back_lets_the_next_delivery_probe_at_once() {
    let breakers = Breakers::new(redis(), keys(), config());
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    let at = T0 + 4 + 30_000;
    assert_eq!(breakers.acquire("ep", at).await.unwrap(), Permission::Probe);
    assert!(matches!(
        breakers.acquire("ep", at + 1).await.unwrap(),
        Permission::Deny { .. }
    ));
    // The prober was deferred (say, by the rate limit) and hands it back.
    assert!(breakers.release_probe("ep", at).await.unwrap());
    assert_eq!(
        breakers.acquire("ep", at + 2).await.unwrap(),
        Permission::Probe,
        "the next delivery probes without waiting for the lease"
    );
    // A stale hand-back (the first prober's, long after its lease ran out
    // and another took the probe) leaves the new prober's lease alone.
    assert!(!breakers.release_probe("ep", at).await.unwrap());
    assert!(matches!(
        breakers.acquire("ep", at + 3).await.unwrap(),
        Permission::Deny { .. }
    ));
    // Nothing to hand back once the probe closed the breaker.
    breakers.record("ep", at + 4, true, true, "").await.unwrap();
    assert!(!breakers.release_probe("ep", at + 2).await.unwrap());
    assert_eq!(
        breakers.acquire("ep", at + 5).await.unwrap(),
        Permission::Allow
    );
}

/// The in-place wait the dispatcher allows.
const IN_PLACE_MS: u64 = 1_000;

/// One request to `endpoint` at `now` without a moment reserved before.
async fn fresh(limiter: &RateLimiter, endpoint: &str, per_second: u32, now: i64) -> RateSlot {
    limiter
        .take(endpoint, per_second, 0, IN_PLACE_MS, Clock::At(now))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_rate_limit_lines_deliveries_up_across_replicas() {
    let keys = keys();
    let a = RateLimiter::new(redis(), keys.clone());
    let b = RateLimiter::new(redis(), keys.clone());
    // 20 per second: one every 50 ms, whoever asks; each asker is given
    // the next free moment, so a backlog is lined up in one pass.
    assert_eq!(fresh(&a, "ep", 20, T0).await, RateSlot::SendIn(0));
    assert_eq!(fresh(&b, "ep", 20, T0).await, RateSlot::SendIn(50));
    assert_eq!(fresh(&b, "ep", 20, T0 + 30).await, RateSlot::SendIn(70));
    assert_eq!(fresh(&a, "ep", 20, T0 + 60).await, RateSlot::SendIn(90));
    // Moments pass unused once nobody asks: after a quiet second, the next
    // one goes at once.
    assert_eq!(fresh(&a, "ep", 20, T0 + 2_000).await, RateSlot::SendIn(0));
    // 1,000 deliveries asking at once are spaced over 50 s, none sooner
    // than its turn: the first second's in place, the rest at their
    // reserved moments through a tier.
    let mut slots = Vec::new();
    for _ in 0..1000 {
        slots.push(fresh(&a, "other", 20, T0).await);
    }
    for (n, slot) in slots.iter().enumerate() {
        let at = 50 * n as i64;
        let expected = if at <= IN_PLACE_MS as i64 {
            RateSlot::SendIn(at as u64)
        } else {
            RateSlot::Reserved {
                moment_ms: T0 + at,
                in_ms: at as u64,
            }
        };
        assert_eq!(*slot, expected, "delivery {n}");
    }
    // Endpoints are independent.
    assert_eq!(fresh(&b, "third", 1, T0).await, RateSlot::SendIn(0));
    assert_eq!(fresh(&b, "third", 1, T0).await, RateSlot::SendIn(1000));
    assert_eq!(
        fresh(&b, "third", 1, T0).await,
        RateSlot::Reserved {
            moment_ms: T0 + 2000,
            in_ms: 2000
        }
    );
}

#[tokio::test]
async fn deliveries_back_late_from_their_tiers_are_spaced_with_the_ones_on_time() {
    let keys = keys();
    let a = RateLimiter::new(redis(), keys.clone());
    let b = RateLimiter::new(redis(), keys.clone());
    // Every moment a request is sent at, by either replica.
    let mut sends = Vec::new();
    fn send(sends: &mut Vec<i64>, now: i64, slot: RateSlot) -> bool {
        match slot {
            RateSlot::SendIn(ms) => {
                sends.push(now + ms as i64);
                true
            }
            _ => false,
        }
    }
    // A backlog of 60 at 20/s: the first second's 21 sent in place, the
    // other 39 reserved for T0 + 1,050 .. 2,950 and put off to their tiers.
    let mut reserved = Vec::new();
    for _ in 0..60 {
        let slot = fresh(&a, "ep", 20, T0).await;
        if let RateSlot::Reserved { moment_ms, .. } = slot {
            reserved.push(moment_ms);
        }
        send(&mut sends, T0, slot);
    }
    assert_eq!(reserved.len(), 39);
    assert_eq!(reserved[0], T0 + 1_050);

    // Eleven come back late and together at T0 + 1,500, to both replicas:
    // each is sent, the first at once, the others an interval apart.
    let now = T0 + 1_500;
    for (i, at) in reserved[..11].iter().enumerate() {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let slot = limiter
            .take("ep", 20, *at, IN_PLACE_MS, Clock::At(now))
            .await
            .unwrap();
        assert!(
            send(&mut sends, now, slot),
            "moment {at}, back late, was put {slot:?}"
        );
    }
    assert_eq!(sends[21], now, "the first late one goes at once");
    assert_eq!(sends[31], now + 500);
    // The next one, back on time, waits behind them instead of going
    // beside them.
    let next = reserved[11];
    let slot = a
        .take("ep", 20, next, IN_PLACE_MS, Clock::At(next))
        .await
        .unwrap();
    assert_eq!(slot, RateSlot::SendIn((now + 550 - next) as u64));
    send(&mut sends, next, slot);

    // The other 27 all come back at T0 + 2,950. The six more than the
    // in-place wait late take new moments (from T0 + 3,000, the end of the
    // line); the 20 that fit within the in-place wait are sent, spaced; the
    // other 7 are crowded out and hold nothing.
    let now = T0 + 2_950;
    let mut crowded = 0;
    for at in &reserved[12..] {
        let slot = b
            .take("ep", 20, *at, IN_PLACE_MS, Clock::At(now))
            .await
            .unwrap();
        if slot == RateSlot::Crowded {
            crowded += 1;
        } else {
            assert!(send(&mut sends, now, slot), "moment {at} was put {slot:?}");
        }
    }
    assert_eq!(crowded, 7);

    sends.sort();
    assert_eq!(sends.len(), 21 + 11 + 1 + 20);
    assert!(
        sends.windows(2).all(|w| w[1] - w[0] >= 50),
        "requests sent within one interval: {sends:?}"
    );

    // A moment gone by more than the in-place wait is given up for the
    // next free one, which it takes.
    assert_eq!(fresh(&a, "gone", 20, T0).await, RateSlot::SendIn(0));
    assert_eq!(fresh(&a, "gone", 20, T0).await, RateSlot::SendIn(50));
    let late = T0 + 50 + 1_001;
    assert_eq!(
        a.take("gone", 20, T0 + 50, IN_PLACE_MS, Clock::At(late))
            .await
            .unwrap(),
        RateSlot::SendIn(0)
    );
    assert_eq!(fresh(&a, "gone", 20, late).await, RateSlot::SendIn(50));
}

#[tokio::test]
async fn a_fresh_request_behind_crowded_sends_is_reserved_a_moment_not_crowded_out() {
    let limiter = RateLimiter::new(redis(), keys());
    // 60 at 20/s: 21 sent in place, 39 reserved for T0 + 1,050 .. 2,950.
    let mut reserved = Vec::new();
    for _ in 0..60 {
        if let RateSlot::Reserved { moment_ms, .. } = fresh(&limiter, "ep", 20, T0).await {
            reserved.push(moment_ms);
        }
    }
    // All 39 come back together at T0 + 2,000: 21 are sent, through
    // T0 + 3,000, and 18 are crowded out, so the sent timeline is now
    // further ahead than the reserved one.
    let now = T0 + 2_000;
    let mut crowded = 0;
    for at in &reserved {
        let slot = limiter
            .take("ep", 20, *at, IN_PLACE_MS, Clock::At(now))
            .await
            .unwrap();
        crowded += usize::from(slot == RateSlot::Crowded);
    }
    assert_eq!(crowded, 18);
    // A new request is given a moment past the last one sent, to wait for
    // in a tier, rather than a moment it would be crowded out of.
    let slot = fresh(&limiter, "ep", 20, now).await;
    assert_eq!(
        slot,
        RateSlot::Reserved {
            moment_ms: T0 + 3_050,
            in_ms: 1_050
        }
    );
    // Back at its moment, it goes at once.
    let slot = limiter
        .take("ep", 20, T0 + 3_050, IN_PLACE_MS, Clock::At(T0 + 3_050))
        .await
        .unwrap();
    assert_eq!(slot, RateSlot::SendIn(0));
}

#[tokio::test]
async fn limits_of_tens_of_thousands_per_second_are_kept_to_the_microsecond() {
    let limiter = RateLimiter::new(redis(), keys());
    // 40,000/s: one every 25 µs. Kept to a tenth of a millisecond, as Lua's
    // `tostring` does at Unix-millisecond magnitudes, every request would
    // be let through at once.
    for n in 0..400_u64 {
        let slot = fresh(&limiter, "fast", 40_000, T0).await;
        assert_eq!(
            slot,
            RateSlot::SendIn((n * 25).div_ceil(1000)),
            "request {n}"
        );
    }
    // The ingest limit likewise: 40,000/s with no burst takes one event per
    // 25 µs, so a 401st in the same millisecond waits.
    let mut waits = Vec::new();
    for _ in 0..41 {
        waits.push(
            limiter
                .try_acquire_ingest("fast", 1, 40_000, 1, Clock::At(T0))
                .await
                .unwrap(),
        );
    }
    assert_eq!(waits[0], 0);
    assert!(waits[1..].iter().all(|w| *w == 1), "{waits:?}");
}

/// Redis's own clock, in Unix milliseconds.
async fn redis_time_ms() -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis()).await.unwrap();
    seconds * 1000 + micros / 1000
}

#[tokio::test]
async fn on_redis_clock_replicas_share_one_timeline_whatever_their_own_clocks() {
    let a = RateLimiter::new(redis(), keys());
    let b = a.clone();
    let before = redis_time_ms().await;
    let take = |limiter: RateLimiter, reserved: i64| async move {
        limiter
            .take("ep", 1, reserved, IN_PLACE_MS, Clock::Redis)
            .await
            .unwrap()
    };
    // 1/s. No caller clock is passed at all: replicas whose clocks differ
    // by any amount get the same answers.
    assert_eq!(take(a.clone(), 0).await, RateSlot::SendIn(0));
    let RateSlot::SendIn(second) = take(b.clone(), 0).await else {
        panic!("the second request is sent within a second");
    };
    assert!((900..=1000).contains(&second), "{second} ms");
    let RateSlot::Reserved { moment_ms, in_ms } = take(a.clone(), 0).await else {
        panic!("the third request is put off to its moment");
    };
    let after = redis_time_ms().await;
    // The moment is on Redis's clock, two intervals after the first
    // (rounded up to the millisecond, where TIME read here is rounded down).
    assert!(
        (before + 2_000..=after + 2_001).contains(&moment_ms),
        "moment {moment_ms}, Redis's clock {before}..{after}"
    );
    assert!((1_900..=2_000).contains(&in_ms), "{in_ms} ms");
    // Handed back early (a replica whose clock runs ahead), the moment is
    // kept, and the wait is again relative.
    let RateSlot::Reserved {
        moment_ms: kept,
        in_ms,
    } = take(b, moment_ms).await
    else {
        panic!("a moment handed back early stays reserved");
    };
    assert_eq!(kept, moment_ms);
    let now = redis_time_ms().await;
    assert!(
        (moment_ms - now..=moment_ms - before + 1).contains(&(in_ms as i64)),
        "{in_ms} ms"
    );
}

#[tokio::test]
async fn the_ingest_limit_allows_a_burst_then_the_rate() {
    let limiter = RateLimiter::new(redis(), keys());
    // 10 per second with bursts of 3: three at once, then one per 100 ms.
    for _ in 0..3 {
        assert_eq!(
            limiter
                .try_acquire_ingest("k1", 1, 10, 3, Clock::At(T0))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(
        limiter
            .try_acquire_ingest("k1", 1, 10, 3, Clock::At(T0))
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        limiter
            .try_acquire_ingest("k1", 1, 10, 3, Clock::At(T0 + 60))
            .await
            .unwrap(),
        40
    );
    assert_eq!(
        limiter
            .try_acquire_ingest("k1", 1, 10, 3, Clock::At(T0 + 100))
            .await
            .unwrap(),
        0
    );
    // Another key has its own budget, and endpoints are limited apart.
    assert_eq!(
        limiter
            .try_acquire_ingest("k2", 1, 10, 3, Clock::At(T0))
            .await
            .unwrap(),
        0
    );
    assert_eq!(fresh(&limiter, "k1", 10, T0).await, RateSlot::SendIn(0));
    // Over a simulated second of constant asking: the burst plus the rate.
    let mut allowed = 0;
    for ms in 0..1000 {
        if limiter
            .try_acquire_ingest("k3", 1, 10, 3, Clock::At(T0 + ms))
            .await
            .unwrap()
            == 0
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3 + 9);
    // A batch takes a slot per event: three at once fill the burst.
    assert_eq!(
        limiter
            .try_acquire_ingest("k4", 3, 10, 3, Clock::At(T0))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        limiter
            .try_acquire_ingest("k4", 1, 10, 3, Clock::At(T0))
            .await
            .unwrap(),
        100
    );
    // More than the burst goes through once the burst is whole, and the
    // requests after it wait for what it overdrew.
    let later = T0 + 1000;
    assert_eq!(
        limiter
            .try_acquire_ingest("k4", 5, 10, 3, Clock::At(later))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        limiter
            .try_acquire_ingest("k4", 1, 10, 3, Clock::At(later))
            .await
            .unwrap(),
        300
    );
}

/// A first attempt of `event` (of the application `acme`) to `endpoint`,
/// started at `at`, that the endpoint took with a 200: delivery
/// `dlv_{event}_{endpoint}`.
fn delivered(event: &str, endpoint: &str, at: i64) -> herald_core::attempt_log::AttemptRecord {
    herald_core::attempt_log::AttemptRecord {
        delivery_id: format!("dlv_{event}_{endpoint}"),
        endpoint_id: endpoint.into(),
        event_id: event.into(),
        application_id: "acme".into(),
        attempt: 1,
        started_at_ms: at,
        duration_ms: 3,
        status_code: Some(200),
        error: None,
        response_body: String::new(),
        success: true,
        source: None,
    }
}

/// `record`, failed with `status`.
fn failed(
    record: herald_core::attempt_log::AttemptRecord,
    status: u16,
) -> herald_core::attempt_log::AttemptRecord {
    herald_core::attempt_log::AttemptRecord {
        status_code: Some(status),
        error: Some(format!("the endpoint answered {status}")),
        success: false,
        ..record
    }
}

#[tokio::test]
async fn the_attempt_log_keeps_the_newest_within_its_bounds() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let config = AttemptLogConfig {
        retention: Duration::from_secs(3600),
        max_per_endpoint: 3,
        max_attempts: 100,
    };
    let log = AttemptLog::new(redis(), keys(), config);
    let record = |n: u32, at: i64| AttemptRecord {
        delivery_id: format!("dlv_{n}"),
        attempt: n,
        response_body: "oops".into(),
        ..failed(delivered(&format!("evt_{}", n % 2), "ep", at), 500)
    };
    // One attempt older than the retention, then five recent ones.
    log.record(&record(0, T0 - 7_200_000), T0 - 7_200_000)
        .await
        .unwrap();
    for n in 1..=5 {
        log.record(&record(n, T0 + i64::from(n)), T0 + i64::from(n))
            .await
            .unwrap();
    }
    let kept: Vec<u32> = log
        .for_endpoint("ep", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(kept, [5, 4, 3], "newest first, at most 3");
    let event_1: Vec<u32> = log
        .for_event("acme", "evt_1", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(event_1, [5, 3, 1]);
    // The same event id in another application is another event.
    assert!(
        log.for_event("globex", "evt_1", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(log.for_endpoint("ep", 1, 1).await.unwrap()[0].attempt, 4);
}

#[tokio::test]
async fn only_the_newest_batches_of_attempts_are_kept_within_the_budget() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let config = AttemptLogConfig {
        retention: Duration::from_secs(3600),
        max_per_endpoint: 1000,
        max_attempts: 4,
    };
    let log = AttemptLog::new(redis(), keys.clone(), config);
    let write = |event: String, at: i64| {
        let log = log.clone();
        async move {
            // One write, one batch.
            let record = delivered(&event, "ep", at);
            log.record(&record, at).await.unwrap();
        }
    };
    for n in 0..50 {
        write(format!("evt_{n}"), T0 + n).await;
    }
    // A later attempt for an older event is among the newest; its first
    // one is not.
    write("evt_10".to_owned(), T0 + 50).await;
    write("evt_50".to_owned(), T0 + 51).await;
    assert_eq!(log.trim(T0 + 52).await.unwrap(), 48);
    assert_eq!(log.trim(T0 + 53).await.unwrap(), 0, "nothing left to drop");

    let mut with_log = Vec::new();
    for n in 0..=50 {
        let attempts = log
            .for_event("acme", &format!("evt_{n}"), 0, 10)
            .await
            .unwrap();
        if !attempts.is_empty() {
            with_log.push((n, attempts.len()));
        }
    }
    assert_eq!(with_log, [(10, 1), (48, 1), (49, 1), (50, 1)]);
    assert_eq!(
        log.for_event("acme", "evt_10", 0, 10).await.unwrap()[0].started_at_ms,
        T0 + 50
    );
    // The dropped batches are gone from Redis, not merely unlisted, and so
    // are their entries in the by-event index.
    let mut conn = redis();
    let batches: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.attempt_batch_prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(batches.len(), 4, "{batches:?}");
    let indexed = zcard(&conn, keys.attempts_by_event()).await;
    assert_eq!(indexed, 4);
    let retained: usize = redis::cmd("GET")
        .arg(keys.batched_attempts())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(retained, 4);
    // The endpoint's log refers to the batches: it shows what they still
    // hold, newest first. A page that meets references to dropped batches
    // drops them and reads on until it is full...
    let events = |records: Vec<AttemptRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.event_id).collect()
    };
    assert_eq!(
        events(log.for_endpoint("ep", 2, 2).await.unwrap()),
        ["evt_49", "evt_48"]
    );
    // ...or the log ends, so a short page is the last one.
    assert_eq!(
        events(log.for_endpoint("ep", 3, 2).await.unwrap()),
        ["evt_48"]
    );
    assert_eq!(
        events(log.for_endpoint("ep", 0, 1000).await.unwrap()),
        ["evt_50", "evt_10", "evt_49", "evt_48"]
    );
    let references = zcard(&conn, keys.endpoint_attempts("ep")).await;
    assert_eq!(references, 4, "the dropped references are gone from Redis");
}

#[tokio::test]
async fn one_batch_holds_many_events_and_endpoints_and_each_reads_its_own() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 1000,
        },
    );
    // Three events to two endpoints each, in one write; `evt_1` is also
    // an event id of another application, and `evt_10` starts like it.
    let record = |app: &str, event: &str, endpoint: &str, at: i64| AttemptRecord {
        delivery_id: format!("dlv_{app}_{event}_{endpoint}"),
        application_id: app.into(),
        response_body: "line one\nline two".into(),
        ..delivered(event, endpoint, at)
    };
    let mut batch = Vec::new();
    for (n, (app, event)) in [("acme", "evt_1"), ("acme", "evt_10"), ("globex", "evt_1")]
        .into_iter()
        .enumerate()
    {
        for (k, endpoint) in ["ep_a", "ep_b"].into_iter().enumerate() {
            batch.push(record(app, event, endpoint, T0 + (2 * n + k) as i64));
        }
    }
    log.record_many(&batch, T0).await.unwrap();
    let mut conn = redis();
    let batches: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.attempt_batch_prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(batches.len(), 1, "one write is one batch: {batches:?}");

    let acme_1 = log.for_event("acme", "evt_1", 0, 10).await.unwrap();
    assert_eq!(acme_1, [batch[1].clone(), batch[0].clone()], "newest first");
    assert_eq!(acme_1[0].response_body, "line one\nline two");
    let globex_1 = log.for_event("globex", "evt_1", 0, 10).await.unwrap();
    assert_eq!(globex_1, [batch[5].clone(), batch[4].clone()]);
    // Paged.
    assert_eq!(
        log.for_event("acme", "evt_10", 1, 10).await.unwrap(),
        [batch[2].clone()]
    );
    let on_b: Vec<String> = log
        .for_endpoint("ep_b", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.delivery_id)
        .collect();
    assert_eq!(
        on_b,
        [
            "dlv_globex_evt_1_ep_b",
            "dlv_acme_evt_10_ep_b",
            "dlv_acme_evt_1_ep_b"
        ]
    );
}

#[tokio::test]
async fn an_events_pages_are_newest_first_across_batches_even_when_an_attempt_ends_late() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let log = AttemptLog::new(
        redis(),
        keys(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 10_000,
        },
    );
    let record = |endpoint: &str, at: i64| delivered("evt", endpoint, at);
    // Twenty batches, one attempt each, written 10 ms after it started;
    // the last batch also holds an attempt that started first of all and
    // took long to answer.
    for n in 0..20 {
        let mut batch = vec![record(&format!("ep_{n:02}"), T0 + 10 * n)];
        if n == 19 {
            batch.push(record("ep_slow", T0 - 5));
        }
        log.record_many(&batch, T0 + 10 * n + 10).await.unwrap();
    }
    let starts = |records: Vec<AttemptRecord>| -> Vec<i64> {
        records.iter().map(|r| r.started_at_ms - T0).collect()
    };
    assert_eq!(
        starts(log.for_event("acme", "evt", 0, 3).await.unwrap()),
        [190, 180, 170]
    );
    assert_eq!(
        starts(log.for_event("acme", "evt", 18, 5).await.unwrap()),
        [10, 0, -5],
        "the slow attempt, in the newest batch, is last"
    );
    let all = starts(log.for_event("acme", "evt", 0, 100).await.unwrap());
    assert_eq!(all.len(), 21);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
}

#[tokio::test]
async fn event_logs_of_the_layout_before_batches_are_read_and_trimmed_first() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 2,
        },
    );
    let record = |event: &str, attempt: u32, at: i64| AttemptRecord {
        attempt,
        ..failed(delivered(event, "ep", at), 503)
    };
    // What an earlier dispatcher wrote: the event's own log, its index
    // entry, the count, and a reference of three parts.
    let old = record("evt_old", 1, T0);
    let mut conn = redis();
    let _: () = redis::pipe()
        .zadd(
            keys.event_attempts("acme.evt_old"),
            serde_json::to_string(&old).unwrap(),
            T0,
        )
        .zadd(keys.attempted_events(), "acme.evt_old", T0)
        .incr(keys.retained_attempts(), 1)
        .zadd(
            keys.endpoint_attempts("ep"),
            format!("{T0} 1 acme.evt_old"),
            T0,
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    // Its retry, written now, goes into a batch.
    let retry = record("evt_old", 2, T0 + 10);
    log.record(&retry, T0 + 10).await.unwrap();
    assert_eq!(
        log.for_event("acme", "evt_old", 0, 10).await.unwrap(),
        [retry.clone(), old.clone()]
    );
    assert_eq!(
        log.for_endpoint("ep", 0, 10).await.unwrap(),
        [retry.clone(), old.clone()]
    );
    // Over the budget, the former log leaves first, then the oldest batch.
    log.record(&record("evt_new", 1, T0 + 20), T0 + 20)
        .await
        .unwrap();
    assert_eq!(log.trim(T0 + 30).await.unwrap(), 1);
    assert_eq!(
        log.for_event("acme", "evt_old", 0, 10).await.unwrap(),
        std::slice::from_ref(&retry)
    );
    let former: bool = redis::cmd("EXISTS")
        .arg(keys.event_attempts("acme.evt_old"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!former);
    log.record(&record("evt_newer", 1, T0 + 40), T0 + 40)
        .await
        .unwrap();
    assert_eq!(log.trim(T0 + 50).await.unwrap(), 1);
    assert!(
        log.for_event("acme", "evt_old", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_budget_holds_while_dispatchers_of_the_former_layout_reset_their_count() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 4,
        },
    );
    for n in 0..10 {
        let record = delivered(&format!("evt_{n}"), "ep", T0 + n);
        log.record(&record, T0 + n).await.unwrap();
        // A dispatcher not yet upgraded trims its own (empty) index every
        // second and, finding it empty, sets its count to zero.
        let mut conn = redis();
        let _: () = redis::cmd("SET")
            .arg(keys.retained_attempts())
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(log.trim(T0 + 20).await.unwrap(), 6);
    let mut kept = Vec::new();
    for n in 0..10 {
        if !log
            .for_event("acme", &format!("evt_{n}"), 0, 10)
            .await
            .unwrap()
            .is_empty()
        {
            kept.push(n);
        }
    }
    assert_eq!(kept, [6, 7, 8, 9]);
}

#[tokio::test]
async fn index_entries_of_batches_gone_before_the_trim_are_swept() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 1000,
        },
    );
    let record = delivered("evt_kept", "ep", T0);
    log.record(&record, T0).await.unwrap();
    // 450 entries naming batches that expired (or were evicted) unseen,
    // the trim dropping none of them: more than one run sweeps.
    let mut conn = redis();
    let mut ghosts = redis::cmd("ZADD");
    ghosts.arg(keys.attempts_by_event());
    for n in 0..450 {
        ghosts.arg(0).arg(format!("acme.evt_{n:03} gone-{n}"));
    }
    let _: () = ghosts.query_async(&mut conn).await.unwrap();
    assert_eq!(zcard(&conn, keys.attempts_by_event()).await, 451);
    for _ in 0..3 {
        log.trim(T0 + 1).await.unwrap();
    }
    assert_eq!(
        zcard(&conn, keys.attempts_by_event()).await,
        1,
        "only the live batch's entry is left"
    );
    assert_eq!(
        log.for_event("acme", "evt_kept", 0, 10).await.unwrap(),
        [record]
    );
}

#[tokio::test]
async fn an_endpoint_log_written_before_references_is_still_read() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 1000,
        },
    );
    let old = delivered("evt_old", "ep", T0);
    let mut conn = redis();
    let _: () = redis::cmd("ZADD")
        .arg(keys.endpoint_attempts("ep"))
        .arg(T0)
        .arg(serde_json::to_string(&old).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let new = delivered("evt_new", "ep", T0 + 1);
    log.record(&new, T0 + 1).await.unwrap();
    let shown = log.for_endpoint("ep", 0, 10).await.unwrap();
    assert_eq!(shown, [new, old]);
}

/// Redis's count of script calls so far (`EVALSHA` and `EVAL`).
async fn script_calls(redis: &ConnectionManager) -> u64 {
    let mut conn = redis.clone();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn closed_breakers_cost_no_round_trip_however_many_endpoints() {
    let keys = keys();
    let redis = redis();
    let breakers = Breakers::new(redis.clone(), keys.clone(), config());
    // One endpoint is open; two thousand others have never failed.
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    let before = script_calls(&redis).await;
    for n in 0..2000 {
        let at = T0 + 10 + n as i64 / 20;
        assert_eq!(
            breakers.acquire(&format!("ep_{n}"), at).await.unwrap(),
            Permission::Allow
        );
    }
    let calls = script_calls(&redis).await - before;
    // A renewal per CLOSED_TRUST_MS of the callers' clock (100 ms here),
    // not a call per endpoint; other tests running beside this one add a
    // few of their own.
    assert!(calls < 500, "{calls} script calls for 2000 closed breakers");
    // The open one is still asked about, and denied.
    assert!(matches!(
        breakers.acquire("ep", T0 + 120).await.unwrap(),
        Permission::Deny { .. }
    ));
}

#[tokio::test]
async fn the_not_closed_set_follows_opening_closing_and_expiry() {
    let keys = keys();
    let redis = redis();
    let breakers = Breakers::new(redis.clone(), keys.clone(), config());
    let mut conn = redis.clone();
    let members = |mut conn: ConnectionManager, keys: Keys| async move {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.breakers_not_closed())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids
    };
    for endpoint in ["ep", "ep2"] {
        for i in 0..5 {
            breakers
                .record(endpoint, T0 + i, false, false, "503")
                .await
                .unwrap();
        }
    }
    let mut listed = members(conn.clone(), keys.clone()).await;
    listed.sort();
    assert_eq!(listed, ["ep", "ep2"]);

    // A successful probe closes ep and takes it out.
    let at = T0 + 4 + 30_000;
    assert_eq!(breakers.acquire("ep", at).await.unwrap(), Permission::Probe);
    assert_eq!(
        breakers.record("ep", at + 5, true, true, "").await.unwrap(),
        Transition::Closed
    );
    assert_eq!(members(conn.clone(), keys.clone()).await, ["ep2"]);

    // ep2's state expires (as it does a week after its last attempt): the
    // first replica to ask takes it out of the set, and it may go ahead.
    let _: () = redis::cmd("DEL")
        .arg(keys.breaker("ep2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let other = Breakers::new(redis.clone(), keys.clone(), config());
    assert_eq!(
        other.acquire("ep2", at + 10).await.unwrap(),
        Permission::Allow
    );
    assert!(members(conn.clone(), keys.clone()).await.is_empty());

    // A member left from before the state's retention is dropped when the
    // set is next read.
    let week_ago = at - 8 * 86_400_000;
    let _: () = redis::cmd("ZADD")
        .arg(keys.breakers_not_closed())
        .arg(week_ago)
        .arg("ep_gone")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("INCR")
        .arg(keys.breakers_not_closed_version())
        .query_async(&mut conn)
        .await
        .unwrap();
    let third = Breakers::new(redis.clone(), keys.clone(), config());
    assert_eq!(
        third.acquire("ep_gone", at + 20).await.unwrap(),
        Permission::Allow
    );
    assert!(members(conn.clone(), keys.clone()).await.is_empty());

    // A breaker opened before the set existed (as after an upgrade) joins
    // it at its next recorded attempt, and is denied from then on.
    for i in 0..5 {
        breakers
            .record("ep_old", at + 30 + i, false, false, "503")
            .await
            .unwrap();
    }
    let _: () = redis::cmd("ZREM")
        .arg(keys.breakers_not_closed())
        .arg("ep_old")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fourth = Breakers::new(redis.clone(), keys.clone(), config());
    assert_eq!(
        fourth.acquire("ep_old", at + 40).await.unwrap(),
        Permission::Allow,
        "not known to be open yet"
    );
    fourth
        .record("ep_old", at + 41, false, false, "503")
        .await
        .unwrap();
    assert_eq!(members(conn.clone(), keys.clone()).await, ["ep_old"]);
    let fifth = Breakers::new(redis.clone(), keys.clone(), config());
    assert!(matches!(
        fifth.acquire("ep_old", at + 42).await.unwrap(),
        Permission::Deny { .. }
    ));
}

#[tokio::test]
async fn batched_successes_count_and_close_as_single_ones_do() {
    let keys = keys();
    let redis = redis();
    let breakers = Breakers::new(redis.clone(), keys.clone(), config());
    // "ep" is open after five failures; "other" has four in a row.
    for i in 0..5 {
        fail(&breakers, T0 + i, false).await;
    }
    for i in 0..4 {
        breakers
            .record("other", T0 + i, false, false, "the endpoint answered 503")
            .await
            .unwrap();
    }
    let closed = breakers
        .record_successes(&[("ep", 3, T0 + 100), ("other", 7, T0 + 100)], T0 + 100)
        .await
        .unwrap();
    assert_eq!(closed, ["ep"], "only the open breaker was closed");
    assert_eq!(
        breakers.acquire("ep", T0 + 101).await.unwrap(),
        Permission::Allow
    );
    for (id, successes) in [("ep", 3), ("other", 7)] {
        let status = read_status(&redis, &keys, id, Duration::from_secs(300), T0 + 100)
            .await
            .unwrap();
        assert_eq!(status.state, "closed", "{id}");
        assert_eq!(status.recent_successes, successes, "{id}");
        assert_eq!(
            status.consecutive_failures, 0,
            "{id}: the run of failures ends"
        );
        assert_eq!(status.last_success_at_ms, Some(T0 + 100), "{id}");
    }
    // The run starts again from zero: four more failures keep "other"
    // closed, the fifth opens it.
    for i in 0..4 {
        let transition = breakers
            .record("other", T0 + 200 + i, false, false, "503")
            .await
            .unwrap();
        assert_eq!(transition, Transition::None);
    }
    let transition = breakers
        .record("other", T0 + 300, false, false, "503")
        .await
        .unwrap();
    assert_eq!(transition, Transition::Opened);
    // A success gathered before a failure that was recorded since counts
    // in the window only: the run of failures goes on, and "other" (open
    // since T0 + 300) stays open.
    let closed = breakers
        .record_successes(&[("other", 1, T0 + 250)], T0 + 400)
        .await
        .unwrap();
    assert!(closed.is_empty(), "{closed:?}");
    let status = read_status(&redis, &keys, "other", Duration::from_secs(300), T0 + 400)
        .await
        .unwrap();
    assert_eq!(status.state, "open");
    assert_eq!(status.consecutive_failures, 5);
    assert_eq!(status.recent_successes, 8);
    assert!(
        breakers
            .record_successes(&[], T0 + 400)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn attempts_recorded_together_land_in_each_endpoints_and_events_log() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let config = AttemptLogConfig {
        retention: Duration::from_secs(3600),
        max_per_endpoint: 4,
        max_attempts: 100,
    };
    let log = AttemptLog::new(redis(), keys(), config);
    // Three events to two endpoints, six attempts in one batch, plus two
    // more attempts of ep_a that push it past its bound of four.
    let mut batch = Vec::new();
    for (n, (event, endpoint)) in [
        ("evt_1", "ep_a"),
        ("evt_1", "ep_b"),
        ("evt_2", "ep_a"),
        ("evt_2", "ep_b"),
        ("evt_3", "ep_a"),
        ("evt_3", "ep_b"),
        ("evt_4", "ep_a"),
        ("evt_5", "ep_a"),
    ]
    .into_iter()
    .enumerate()
    {
        batch.push(AttemptRecord {
            duration_ms: 2,
            ..delivered(event, endpoint, T0 + n as i64)
        });
    }
    log.record_many(&batch, T0 + 10).await.unwrap();
    let events_of = |records: Vec<AttemptRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.event_id).collect()
    };
    assert_eq!(
        events_of(log.for_endpoint("ep_a", 0, 10).await.unwrap()),
        ["evt_5", "evt_4", "evt_3", "evt_2"],
        "newest first, trimmed to four"
    );
    assert_eq!(
        events_of(log.for_endpoint("ep_b", 0, 10).await.unwrap()),
        ["evt_3", "evt_2", "evt_1"]
    );
    let endpoints_of = |records: Vec<AttemptRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.endpoint_id).collect()
    };
    assert_eq!(
        endpoints_of(log.for_event("acme", "evt_2", 0, 10).await.unwrap()),
        ["ep_b", "ep_a"]
    );
    assert!(log.record_many(&[], T0).await.is_ok());
}

#[tokio::test]
async fn the_attempt_budget_holds_whatever_the_fan_out() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let config = AttemptLogConfig {
        retention: Duration::from_secs(3600),
        max_per_endpoint: 1000,
        max_attempts: 20,
    };
    let log = AttemptLog::new(redis(), keys.clone(), config);
    // Ten events, each to five endpoints: fifty attempts.
    for n in 0..10 {
        let batch: Vec<AttemptRecord> = (0..5)
            .map(|e| delivered(&format!("evt_{n}"), &format!("ep_{e}"), T0 + n))
            .collect();
        log.record_many(&batch, T0 + n).await.unwrap();
    }
    let mut conn = redis();
    let retained = |conn: &mut ConnectionManager| {
        let key = keys.batched_attempts();
        let mut conn = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(retained(&mut conn).await, 50);
    // Whole batches (here one event each) go, oldest first, until twenty
    // attempts are left.
    assert_eq!(log.trim(T0 + 20).await.unwrap(), 6);
    assert_eq!(retained(&mut conn).await, 20);
    let mut with_log = Vec::new();
    for n in 0..10 {
        let attempts = log
            .for_event("acme", &format!("evt_{n}"), 0, 10)
            .await
            .unwrap();
        if !attempts.is_empty() {
            assert_eq!(attempts.len(), 5, "a batch is kept whole");
            with_log.push(n);
        }
    }
    assert_eq!(with_log, [6, 7, 8, 9]);
    // An hour and more later every log is past the retention period: all
    // leave, and the count is zero again.
    assert_eq!(log.trim(T0 + 3_700_000).await.unwrap(), 4);
    assert_eq!(retained(&mut conn).await, 0);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.attempt_batch_prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let indexed = zcard(&conn, keys.attempts_by_event()).await;
    assert_eq!(indexed, 0);
}

#[tokio::test]
async fn an_endpoints_log_passes_its_bound_by_at_most_a_tenth_per_writer_between_trims() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let config = AttemptLogConfig {
        retention: Duration::from_secs(3600),
        max_per_endpoint: 100,
        max_attempts: 100_000,
    };
    let mut conn = redis();
    // Two dispatchers, each writing batches of 3 attempts to one endpoint.
    let writers = [
        AttemptLog::new(redis(), keys.clone(), config.clone()),
        AttemptLog::new(redis(), keys.clone(), config.clone()),
    ];
    let mut most = 0;
    let mut n = 0;
    for round in 0..80 {
        for writer in &writers {
            let batch: Vec<AttemptRecord> = (0..3)
                .map(|_| {
                    n += 1;
                    delivered(&format!("evt_{n}"), "ep", T0 + n)
                })
                .collect();
            writer.record_many(&batch, T0 + n).await.unwrap();
            most = most.max(zcard(&conn, keys.endpoint_attempts("ep")).await);
        }
        if round == 0 {
            // The log holds an entry per batch.
            assert_eq!(zcard(&conn, keys.endpoint_attempts("ep")).await, 2);
        }
    }
    // A bound of 100, and a tenth of it (10) per writer.
    assert!(most > 100, "trimmed less often than every write ({most})");
    assert!(most <= 100 + 2 * 10, "{most} entries");
    // A writer that has not trimmed the log yet trims it on its first write.
    let third = AttemptLog::new(redis(), keys.clone(), config);
    n += 1;
    third
        .record(&delivered(&format!("evt_{n}"), "ep", T0 + n), T0 + n)
        .await
        .unwrap();
    assert_eq!(zcard(&conn, keys.endpoint_attempts("ep")).await, 100);
    // Its pages show the newest 100 attempts, however many the batches hold.
    let newest = third.for_endpoint("ep", 0, 1000).await.unwrap();
    assert_eq!(newest.len(), 100);
    assert_eq!(newest[0].event_id, format!("evt_{n}"));
    assert_eq!(newest[99].event_id, format!("evt_{}", n - 99));
    assert!(third.for_endpoint("ep", 100, 10).await.unwrap().is_empty());
    let _: () = redis::cmd("DEL")
        .arg(keys.endpoint_attempts("ep"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_endpoints_pages_order_its_attempts_by_start_across_batches() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 100_000,
        },
    );
    let attempt = |n: i64, endpoint: &str, at: i64| AttemptRecord {
        duration_ms: 2,
        ..delivered(&format!("evt_{n}"), endpoint, at)
    };
    // Forty batches of ten attempts each, to two endpoints...
    let mut expected = Vec::new();
    for b in 0..40 {
        let batch: Vec<AttemptRecord> = (0..10)
            .map(|i| {
                let n = b * 10 + i;
                let endpoint = if i % 3 == 0 { "ep_other" } else { "ep" };
                if endpoint == "ep" {
                    expected.push(T0 + n);
                }
                attempt(n, endpoint, T0 + n)
            })
            .collect();
        log.record_many(&batch, T0 + b * 10 + 10).await.unwrap();
    }
    // ...and a slow one in the last batch, started before all of them.
    log.record(&attempt(999, "ep", T0 - 5), T0 + 1000)
        .await
        .unwrap();
    expected.push(T0 - 5);
    // Newest first, the slow one last.
    expected.sort_unstable_by(|a, b| b.cmp(a));
    let starts = |records: Vec<AttemptRecord>| -> Vec<i64> {
        records.into_iter().map(|r| r.started_at_ms).collect()
    };
    assert_eq!(
        starts(log.for_endpoint("ep", 0, 1000).await.unwrap()),
        expected
    );
    let mut paged = Vec::new();
    for start in (0..expected.len()).step_by(7) {
        let page = log.for_endpoint("ep", start, 7).await.unwrap();
        assert!(page.iter().all(|r| r.endpoint_id == "ep"));
        paged.extend(starts(page));
    }
    assert_eq!(paged, expected, "pages of 7 read as the whole");
    assert_eq!(
        log.for_endpoint("ep_other", 0, 1000).await.unwrap().len(),
        160
    );
}

#[tokio::test]
async fn an_endpoint_log_of_references_per_attempt_is_still_read() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 1000,
        },
    );
    // What a dispatcher wrote before endpoint logs named batches: the
    // batch without the endpoint's list, and a reference to the attempt.
    let old = delivered("evt_old", "ep", T0);
    let batch = "00000000000000ff-0";
    let mut conn = redis();
    let _: () = redis::pipe()
        .hset(
            keys.attempt_batch(batch),
            "acme.evt_old",
            serde_json::to_string(&old).unwrap(),
        )
        .zadd(
            keys.endpoint_attempts("ep"),
            format!("{T0} 1 acme.evt_old {batch}"),
            T0,
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let new = delivered("evt_new", "ep", T0 + 1);
    log.record(&new, T0 + 1).await.unwrap();
    assert_eq!(
        log.for_endpoint("ep", 0, 10).await.unwrap(),
        [new.clone(), old]
    );
    // Once its batch is gone, its reference goes when a read meets it.
    let _: () = redis::cmd("DEL")
        .arg(keys.attempt_batch(batch))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(log.for_endpoint("ep", 0, 10).await.unwrap(), [new]);
    let left = zcard(&conn, keys.endpoint_attempts("ep")).await;
    assert_eq!(left, 1);
}

#[tokio::test]
async fn an_endpoints_page_reads_on_past_entries_that_tie_with_its_attempts() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig, AttemptRecord};
    let log = AttemptLog::new(
        redis(),
        keys(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 100_000,
        },
    );
    // Thirty-three batches, each one attempt started in the same
    // millisecond: the first written holds a second attempt, which sorts
    // first, and its entry is read last (equal scores go by member, and
    // this writer's first batch id is the lowest).
    let retry = AttemptRecord {
        attempt: 2,
        ..delivered("evt_retried", "ep", T0)
    };
    log.record(&retry, T0 + 1).await.unwrap();
    for n in 0..32 {
        log.record(&delivered(&format!("evt_{n}"), "ep", T0), T0 + 1)
            .await
            .unwrap();
    }
    let first = log.for_endpoint("ep", 0, 1).await.unwrap();
    assert_eq!(first, [retry]);
    let all = log.for_endpoint("ep", 0, 100).await.unwrap();
    assert_eq!(all.len(), 33);
    assert!(all[1..].iter().all(|r| r.attempt == 1));
}

#[tokio::test]
async fn a_writer_trims_an_endpoints_log_to_the_retention_once_an_interval() {
    use herald_core::attempt_log::{AttemptLog, AttemptLogConfig};
    let keys = keys();
    let log = AttemptLog::new(
        redis(),
        keys.clone(),
        AttemptLogConfig {
            retention: Duration::from_secs(3600),
            max_per_endpoint: 1000,
            max_attempts: 100_000,
        },
    );
    let mut conn = redis();
    let hour = 3_600_000;
    // Its first write trims the log (nothing to drop yet).
    log.record(&delivered("evt_old", "ep", T0), T0 + hour - 10_000)
        .await
        .unwrap();
    // evt_old is past the retention now, but the last trim was 20 s ago.
    log.record(
        &delivered("evt_1", "ep", T0 + hour + 10_000),
        T0 + hour + 10_000,
    )
    .await
    .unwrap();
    assert_eq!(zcard(&conn, keys.endpoint_attempts("ep")).await, 2);
    // A minute after the last trim, what is past the retention goes.
    let later = T0 + hour + 60_000;
    log.record(&delivered("evt_2", "ep", later), later)
        .await
        .unwrap();
    assert_eq!(
        zcard(&conn, keys.endpoint_attempts("ep")).await,
        2,
        "evt_old's entry left"
    );
    let kept: Vec<String> = log
        .for_endpoint("ep", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(kept, ["evt_2", "evt_1"]);
    let _: () = redis::cmd("DEL")
        .arg(keys.endpoint_attempts("ep"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
