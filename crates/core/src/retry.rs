//! The retry schedule and its Kafka topics.
//!
//! A failed attempt is not retried in place: the delivery is written to a
//! retry tier topic, `herald.retry.<delay>` (one per distinct delay of the
//! schedule), with the time before which it must not be attempted again.
//! Dispatchers consume the tiers like `herald.deliveries` and hold back a
//! tier partition, without polling it, until its first record is due.
//!
//! Records in one tier partition are due roughly in the order they were
//! written, since they were written with similar delays; a record whose own
//! wait is longer (a `Retry-After`, an open circuit) goes to the tier with
//! the largest delay not above its wait, so it holds up the records behind it
//! by less than the gap to the next tier.

use std::time::Duration;

use rand::Rng;

use crate::config::{KafkaConfig, format_duration, parse_duration};

/// Header carrying a retry record's due time (Unix milliseconds, decimal).
pub const NOT_BEFORE_HEADER: &str = "herald-not-before";

/// Shortest wait after a 429 answer or a timeout: the endpoint asked for
/// less traffic, or is too busy to answer.
pub const SLOW_DOWN_MINIMUM: Duration = Duration::from_secs(60);

/// Most one retry tier's delay may be above the one before it.
pub const MAX_TIER_RATIO: u32 = 10;

/// Delays between attempts. `n` delays mean `n + 1` attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about a day.
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            delays: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
        }
    }
}

impl RetrySchedule {
    /// Reads `5s,5m,30m`: comma-separated durations, each at least 1 s.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let delay = parse_duration(item)?;
                if delay < Duration::from_secs(1) {
                    return Err(format!("{item:?} is shorter than 1s"));
                }
                Ok(delay)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err("list at least one delay, e.g. 5s,5m,30m".to_owned());
        }
        if delays.len() > 50 {
            return Err("at most 50 delays".to_owned());
        }
        Ok(Self { delays })
    }

    /// The delays in order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The whole schedule, first attempt to last: the sum of the delays
    /// (jitter aside).
    pub fn span(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// Total attempts: the first one plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The delay before the next attempt when `attempts_made` attempts have
    /// failed; `None` when the schedule is exhausted.
    pub fn delay_after(&self, attempts_made: u32) -> Option<Duration> {
        let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    /// The retry tiers, shortest first, one topic each: the distinct
    /// delays, and where two are more than [`MAX_TIER_RATIO`] apart, tiers
    /// in between (`5s`, `50s`, `5m`, … by default), so that a wait of any
    /// length takes a few hops at most ([`RetrySchedule::hop`]).
    pub fn tiers(&self) -> Vec<Duration> {
        let mut delays = self.delays.clone();
        delays.sort();
        delays.dedup();
        let mut tiers: Vec<Duration> = Vec::with_capacity(delays.len());
        for delay in delays {
            if let Some(&shorter) = tiers.last() {
                let mut between = shorter * MAX_TIER_RATIO;
                while between < delay {
                    tiers.push(between);
                    between *= MAX_TIER_RATIO;
                }
            }
            tiers.push(delay);
        }
        tiers
    }

    /// The tier for a record that must wait `wait`: the largest tier delay
    /// not above it (the shortest tier if `wait` is shorter than all).
    pub fn tier_for(&self, wait: Duration) -> Duration {
        let tiers = self.tiers();
        tiers
            .iter()
            .rev()
            .find(|tier| **tier <= wait)
            .or(tiers.first())
            .copied()
            .unwrap_or(wait)
    }

    /// How long a record that must wait `wait` sleeps in its tier
    /// ([`RetrySchedule::tier_for`]) before it is read again: the whole wait
    /// when that is about the tier's delay (a quarter more at most, which
    /// covers the schedule's jitter), otherwise the tier's delay, after
    /// which it hops to the tier of what is left. So every record of a tier
    /// is due about that tier's delay after it was written: the records of
    /// a partition come due in the order they were written, and none waits
    /// behind a record written before it but due much later.
    pub fn hop(&self, wait: Duration) -> Duration {
        let tier = self.tier_for(wait);
        if wait <= tier + tier / 4 { wait } else { tier }
    }

    /// The topic names of every tier.
    pub fn tier_topics(&self, kafka: &KafkaConfig) -> Vec<String> {
        self.tiers()
            .into_iter()
            .map(|d| tier_topic(kafka, d))
            .collect()
    }
}

/// The topic of the tier for `delay`: `herald.retry.5m`.
pub fn tier_topic(kafka: &KafkaConfig, delay: Duration) -> String {
    kafka.topic(&format!(
        "{}{}",
        crate::topics::RETRY_PREFIX,
        format_duration(delay)
    ))
}

/// What the failed attempt said about when to try again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureHints {
    /// The endpoint's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// The endpoint answered 429 or did not answer in time.
    pub slow_down: bool,
    /// The request was not sent: the outbound address policy refuses its
    /// destination. Trying again would meet the same refusal.
    pub destination_refused: bool,
}

/// The actual wait before the next attempt: the scheduled delay with ±20 %
/// jitter (so that failures at the same moment do not retry at the same
/// moment), or the endpoint's `Retry-After` kept within 1× to 2× of the
/// scheduled delay, and at least [`SLOW_DOWN_MINIMUM`] after a 429 or a
/// timeout.
pub fn next_wait(scheduled: Duration, hints: FailureHints) -> Duration {
    let mut wait = match hints.retry_after {
        Some(asked) => asked.clamp(scheduled, scheduled * 2),
        None => jitter(scheduled, 0.2),
    };
    if hints.slow_down {
        wait = wait.max(SLOW_DOWN_MINIMUM);
    }
    wait
}

/// `delay` scaled by a random factor in `1 ± fraction`.
pub fn jitter(delay: Duration, fraction: f64) -> Duration {
    let factor = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    delay.mul_f64(factor)
}

/// Reads a `Retry-After` header: delay in seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let when = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    Some((when - now).try_into().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn the_default_schedule_makes_eight_attempts() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(schedule.delay_after(7), Some(Duration::from_secs(36_000)));
        assert_eq!(schedule.delay_after(8), None);
        assert_eq!(schedule.delay_after(0), None);
        // 10h appears twice but is one tier; 50s lies between 5s and 5m.
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(
            schedule.tiers(),
            [
                Duration::from_secs(5),
                Duration::from_secs(50),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600)
            ]
        );
    }

    #[test]
    fn schedules_parse_and_name_their_topics() {
        let schedule = RetrySchedule::parse("1s, 2s,4s,2s").unwrap();
        assert_eq!(schedule.max_attempts(), 5);
        let kafka =
            KafkaConfig::from_env(&Env::from_pairs([("HERALD_TOPIC_PREFIX", "x.")])).unwrap();
        assert_eq!(
            schedule.tier_topics(&kafka),
            [
                "x.herald.retry.1s",
                "x.herald.retry.2s",
                "x.herald.retry.4s"
            ]
        );
        assert!(RetrySchedule::parse("").is_err());
        assert!(
            RetrySchedule::parse("500ms")
                .unwrap_err()
                .contains("shorter than 1s")
        );
        assert!(RetrySchedule::parse("5s,soon").is_err());
    }

    #[test]
    fn a_wait_goes_to_the_largest_tier_not_above_it() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.tier_for(Duration::from_secs(1)),
            Duration::from_secs(5)
        );
        assert_eq!(
            schedule.tier_for(Duration::from_secs(40)),
            Duration::from_secs(5)
        );
        assert_eq!(
            schedule.tier_for(Duration::from_secs(60)),
            Duration::from_secs(50)
        );
        assert_eq!(
            schedule.tier_for(Duration::from_secs(400)),
            Duration::from_secs(300)
        );
        assert_eq!(
            schedule.tier_for(Duration::from_secs(100_000)),
            Duration::from_secs(36_000)
        );
    }

    #[test]
    fn a_long_wait_hops_through_its_tiers() {
        let schedule = RetrySchedule::default();
        let secs = Duration::from_secs;
        // About the tier's delay (the schedule's jitter): in one go.
        assert_eq!(schedule.hop(secs(6)), secs(6));
        assert_eq!(schedule.hop(secs(2)), secs(2));
        assert_eq!(schedule.hop(secs(360)), secs(360));
        // Longer: the tier's delay, then what is left.
        assert_eq!(schedule.hop(secs(40)), secs(5));
        let mut left = secs(290);
        let mut hops = Vec::new();
        while !left.is_zero() {
            let hop = schedule.hop(left);
            hops.push(hop.as_secs());
            left -= hop;
        }
        // Tiers at most ten times apart: a few hops per tier at most.
        assert_eq!(hops, [50, 50, 50, 50, 50, 5, 5, 5, 5, 5, 5, 5, 5]);
    }

    #[test]
    fn waits_follow_jitter_retry_after_and_slow_down_rules() {
        let five = Duration::from_secs(5);
        for _ in 0..200 {
            let wait = next_wait(five, FailureHints::default());
            assert!(
                wait >= Duration::from_secs(4) && wait <= Duration::from_secs(6),
                "{wait:?}"
            );
        }
        let asked = |secs| FailureHints {
            retry_after: Some(Duration::from_secs(secs)),
            ..FailureHints::default()
        };
        assert_eq!(next_wait(five, asked(7)), Duration::from_secs(7));
        assert_eq!(next_wait(five, asked(1)), five);
        assert_eq!(next_wait(five, asked(3600)), Duration::from_secs(10));
        let slow = FailureHints {
            slow_down: true,
            ..FailureHints::default()
        };
        assert_eq!(next_wait(five, slow), SLOW_DOWN_MINIMUM);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 03:05:05 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
