//! Step 6: what becomes of a delivery — one decision ([`Next`]) that drives
//! both what the dispatcher does and what it counts, so that the metrics can
//! never tell another story than the action.

use std::time::Duration;

use herald_core::config::format_duration;
use herald_core::dead_letter::reason;
use herald_core::event::format_timestamp;
use herald_core::metrics::{metrics, status_class};
use herald_core::proto::Delivery;
use herald_core::retry::{RetrySchedule, next_wait};
use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;

use super::admission::PutOffBy;
use super::attempt::AttemptResult;

/// What is done with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// It arrived: its offset may be stored.
    Delivered {
        /// The endpoint's 2xx status.
        status: u16,
    },
    /// An attempt failed and the schedule allows another: write it to the
    /// retry tier of `wait`.
    Retry {
        /// Until the next attempt.
        wait: Duration,
        /// The failed attempt's status, when a response arrived.
        status: Option<u16>,
    },
    /// It could not be tried now: write it to a retry tier without
    /// spending an attempt.
    PutOff {
        /// Until it is tried again.
        wait: Duration,
        /// The rate-limit moment reserved for it (0: none).
        rate_slot_ms: i64,
    },
    /// The endpoint answered 410 Gone: disable the endpoint, then
    /// dead-letter the delivery as `endpoint_gone`.
    DisableEndpoint {
        /// Why, as stored on the endpoint.
        why: String,
    },
    /// Give up: write it to the dead-letter queue.
    DeadLetter {
        /// One of [`reason`].
        reason: &'static str,
        /// What happened, for the operator.
        detail: String,
        /// The last attempt's status, when a response arrived.
        status: Option<u16>,
    },
    /// The process is stopping before the delivery was decided: leave its
    /// offset unstored, so that the next owner delivers it.
    Stopping,
}

impl Next {
    /// Counts the decision in `herald_deliveries_total`.
    pub fn count(&self) {
        let (outcome, status) = match self {
            Next::Delivered { status } => ("delivered", Some(*status)),
            Next::Retry { status, .. } => ("retry_scheduled", *status),
            Next::PutOff { .. } => ("deferred", None),
            Next::DisableEndpoint { .. } => ("dead_lettered", Some(410)),
            Next::DeadLetter { status, .. } => ("dead_lettered", *status),
            Next::Stopping => return,
        };
        // Nearly every delivery is this one: its counter is looked up once,
        // not with a new label set per delivery.
        static DELIVERED_2XX: std::sync::OnceLock<Counter> = std::sync::OnceLock::new();
        if outcome == "delivered" && status.is_some_and(|s| (200..300).contains(&s)) {
            DELIVERED_2XX
                .get_or_init(|| deliveries_counter("delivered", Some(200)))
                .inc();
            return;
        }
        deliveries_counter(outcome, status).inc();
    }
}

/// The `herald_deliveries_total` series of `outcome` and `status`.
fn deliveries_counter(outcome: &str, status: Option<u16>) -> Counter {
    metrics()
        .deliveries
        .get_or_create(&vec![
            ("outcome", outcome.to_owned()),
            ("status_class", status_class(status)),
        ])
        .clone()
}

/// After an attempt whose `result` is known (`attempts_made` includes it).
pub fn after_attempt(
    result: &AttemptResult,
    attempts_made: u32,
    schedule: &RetrySchedule,
    now: OffsetDateTime,
) -> Next {
    let (status, error, hints) = match result {
        AttemptResult::Delivered { status } => return Next::Delivered { status: *status },
        AttemptResult::Failed {
            status,
            error,
            hints,
        } => (status, error, hints),
    };
    if hints.destination_refused {
        // Trying again would meet the same refusal; an operator who opens
        // the range can replay it.
        return Next::DeadLetter {
            reason: reason::DESTINATION_REFUSED,
            detail: error.clone(),
            status: *status,
        };
    }
    if *status == Some(410) {
        return Next::DisableEndpoint {
            why: format!("it answered 410 Gone at {}", format_timestamp(now)),
        };
    }
    match schedule.delay_after(attempts_made) {
        Some(scheduled) => Next::Retry {
            wait: next_wait(scheduled, *hints),
            status: *status,
        },
        None => Next::DeadLetter {
            reason: reason::ATTEMPTS_EXHAUSTED,
            detail: format!("{attempts_made} attempts failed; the last one: {error}"),
            status: *status,
        },
    }
}

/// When admission put the delivery off until `until_ms`: put it off again,
/// or give it up once it is older than the age limit.
pub fn after_put_off(
    policy: &DeferralPolicy,
    delivery: &Delivery,
    until_ms: i64,
    by: PutOffBy,
    now_ms: i64,
) -> Next {
    match policy.next(delivery, until_ms, by, now_ms) {
        Deferral::Wait(wait) => Next::PutOff {
            wait,
            rate_slot_ms: match by {
                PutOffBy::RateLimit { moment_ms } => moment_ms,
                PutOffBy::Breaker | PutOffBy::Pacing => 0,
            },
        },
        Deferral::GiveUp { since_ms } => Next::DeadLetter {
            reason: reason::ENDPOINT_UNAVAILABLE,
            detail: format!(
                "the endpoint could not be tried for {} (put off {} times after {} attempts); \
                 deliveries are given up after HERALD_MAX_DELIVERY_AGE ({})",
                format_duration(Duration::from_millis(now_ms.saturating_sub(since_ms) as u64)),
                delivery.deferrals,
                delivery.attempts_made,
                format_duration(policy.max_age),
            ),
            status: None,
        },
    }
}

/// How long deliveries are put off while their endpoint cannot be tried.
#[derive(Debug, Clone, Copy)]
pub struct DeferralPolicy {
    /// The first deferral's least wait (the breaker's first cool-down).
    pub first: Duration,
    /// Where the wait stops growing (the breaker's longest cool-down).
    pub longest: Duration,
    /// `HERALD_MAX_DELIVERY_AGE`.
    pub max_age: Duration,
}

/// What [`DeferralPolicy::next`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// Put it off this long.
    Wait(Duration),
    /// Too old: dead-letter it. It has been waiting since `since_ms`.
    GiveUp {
        /// Since when (Unix milliseconds).
        since_ms: i64,
    },
}

impl DeferralPolicy {
    /// The next deferral of `delivery`, which may not go ahead before
    /// `until_ms`. An open breaker's wait doubles with every deferral up to
    /// the longest cool-down, so that a long outage rewrites each held
    /// delivery ever more rarely instead of at every cool-down (and every
    /// few seconds while another replica probes). A rate-limit moment is
    /// waited for exactly: it is the delivery's turn. Neither runs past the
    /// age limit, so the delivery is dead-lettered close to it.
    pub fn next(&self, delivery: &Delivery, until_ms: i64, by: PutOffBy, now_ms: i64) -> Deferral {
        let since_ms = delivery
            .history
            .first()
            .map(|attempt| attempt.started_at_ms)
            .or((delivery.created_at_ms > 0).then_some(delivery.created_at_ms))
            .unwrap_or(delivery.event_timestamp_ms);
        let deadline_ms = since_ms.saturating_add(self.max_age.as_millis() as i64);
        if now_ms >= deadline_ms {
            return Deferral::GiveUp { since_ms };
        }
        // The first deferral waits what it was asked to; each later one at
        // least the first cool-down, doubled per deferral since.
        let doubling = match (by, delivery.deferrals) {
            (PutOffBy::RateLimit { .. } | PutOffBy::Pacing, _) | (_, 0) => Duration::ZERO,
            (PutOffBy::Breaker, n) => self
                .first
                .saturating_mul(1_u32 << (n - 1).min(20))
                .min(self.longest),
        };
        let asked = Duration::from_millis(until_ms.saturating_sub(now_ms).max(1) as u64);
        let to_deadline = Duration::from_millis((deadline_ms - now_ms) as u64);
        Deferral::Wait(
            asked
                .max(doubling)
                .min(to_deadline)
                .max(Duration::from_millis(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use herald_core::proto::Attempt;
    use herald_core::retry::FailureHints;

    use super::*;

    #[test]
    fn deferrals_back_off_to_the_longest_cooldown_and_end_at_the_age_limit() {
        let policy = DeferralPolicy {
            first: Duration::from_secs(30),
            longest: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        };
        let created = 1_000_000;
        let mut delivery = Delivery {
            created_at_ms: created,
            event_timestamp_ms: 1,
            ..Default::default()
        };
        let now = created + 1000;
        // The first deferral waits what the breaker asked (5 s while
        // another replica probes); the later ones double from 30 s to 600 s.
        let mut waits = Vec::new();
        for deferrals in 0..8 {
            delivery.deferrals = deferrals;
            match policy.next(&delivery, now + 5_000, PutOffBy::Breaker, now) {
                Deferral::Wait(wait) => waits.push(wait.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [5, 30, 60, 120, 240, 480, 600, 600]);
        // A rate-limit moment is kept exactly, however often it was put off.
        assert_eq!(
            policy.next(
                &delivery,
                now + 2_500,
                PutOffBy::RateLimit { moment_ms: 7 },
                now
            ),
            Deferral::Wait(Duration::from_millis(2_500))
        );
        // Only a moment Redis reserved travels with the delivery, on
        // Redis's clock, whatever the wait on this replica's.
        let put_off = |by| after_put_off(&policy, &delivery, now + 1_000, by, now);
        assert!(matches!(
            put_off(PutOffBy::RateLimit { moment_ms: now + 900 }),
            Next::PutOff { rate_slot_ms, wait } if rate_slot_ms == now + 900 && wait == Duration::from_secs(1)
        ));
        assert!(matches!(
            put_off(PutOffBy::Pacing),
            Next::PutOff {
                rate_slot_ms: 0,
                ..
            }
        ));
        assert!(matches!(
            put_off(PutOffBy::Breaker),
            Next::PutOff {
                rate_slot_ms: 0,
                ..
            }
        ));
        // Never past the age limit, and given up from there on.
        let late = created + 3_590_000;
        assert_eq!(
            policy.next(&delivery, late + 5_000, PutOffBy::Breaker, late),
            Deferral::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            policy.next(
                &delivery,
                late + 20_000,
                PutOffBy::Breaker,
                created + 3_600_000
            ),
            Deferral::GiveUp { since_ms: created }
        );
        // The first attempt, when there was one, starts the clock.
        delivery.history.push(Attempt {
            started_at_ms: created + 500_000,
            ..Default::default()
        });
        assert!(matches!(
            policy.next(&delivery, 0, PutOffBy::Breaker, created + 3_600_000),
            Deferral::Wait(_)
        ));
    }

    #[test]
    fn one_decision_after_each_kind_of_attempt() {
        let schedule = RetrySchedule::parse("1s,2s").unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        let failed = |status: Option<u16>, hints: FailureHints| AttemptResult::Failed {
            status,
            error: "the endpoint answered 500".into(),
            hints,
        };
        assert_eq!(
            after_attempt(&AttemptResult::Delivered { status: 204 }, 1, &schedule, now),
            Next::Delivered { status: 204 }
        );
        assert!(matches!(
            after_attempt(
                &failed(Some(500), FailureHints::default()),
                1,
                &schedule,
                now
            ),
            Next::Retry {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            after_attempt(
                &failed(Some(500), FailureHints::default()),
                3,
                &schedule,
                now
            ),
            Next::DeadLetter {
                reason: reason::ATTEMPTS_EXHAUSTED,
                ..
            }
        ));
        assert!(matches!(
            after_attempt(
                &failed(Some(410), FailureHints::default()),
                1,
                &schedule,
                now
            ),
            Next::DisableEndpoint { .. }
        ));
        let refused = FailureHints {
            destination_refused: true,
            ..FailureHints::default()
        };
        assert!(matches!(
            after_attempt(&failed(None, refused), 1, &schedule, now),
            Next::DeadLetter {
                reason: reason::DESTINATION_REFUSED,
                ..
            }
        ));
    }
}
