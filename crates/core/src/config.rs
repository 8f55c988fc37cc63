//! Configuration from `HERALD_*` environment variables.
//!
//! Every key has a default (documented on the field that holds it and in the
//! README). Values are validated at start-up; a bad value stops the process
//! with a [`ConfigError`] that names the key, shows the value and says how to
//! fix it.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The environment variable, e.g. `HERALD_HTTP_TIMEOUT`.
    pub key: String,
    /// The value it held, when there was one.
    pub value: Option<String>,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?} is invalid: {}", self.key, self.problem),
            None => write!(f, "{} is invalid: {}", self.key, self.problem),
        }
    }
}

/// A snapshot of the environment to read configuration from.
///
/// Reading goes through this type rather than `std::env` directly so that
/// tests can build configurations without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment made of the given pairs only.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value of `key`; an empty value counts as unset.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A string, or `default` when unset.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or(default).to_owned()
    }

    /// A value parsed by `parse`, or `default` when unset. `parse` returns
    /// the problem in words when the value is unusable.
    pub fn parse<T>(
        &self,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(value) => parse(value).map_err(|problem| ConfigError {
                key: key.to_owned(),
                value: Some(value.to_owned()),
                problem,
            }),
        }
    }

    /// A duration such as `500ms`, `15s`, `5m`, `2h` or `1d`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(key, default, parse_duration)
    }

    /// A whole number in `min..=max`.
    pub fn number(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.parse(key, default, |v| {
            let n: u64 = v
                .replace('_', "")
                .parse()
                .map_err(|_| format!("expected a whole number between {min} and {max}"))?;
            if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(format!("must be between {min} and {max}"))
            }
        })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.parse(key, default, |v| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        })
    }

    /// A comma-separated list; empty items are skipped.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parses durations written as a number and a unit: `250ms`, `15s`, `5m`,
/// `2h`, `1d`. A bare `0` is accepted as zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write it like 500ms, 15s, 5m, 2h or 1d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number, like 15s"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
            ));
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a duration the way [`parse_duration`] reads it, with the largest
/// unit that divides it exactly (`300000ms` → `5m`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// How to reach Kafka, and the names of Herald's topics and groups.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `HERALD_KAFKA_BROKERS` (default `127.0.0.1:9092`): bootstrap servers,
    /// comma-separated.
    pub brokers: String,
    /// `HERALD_TOPIC_PREFIX` (default empty): prepended to every topic and
    /// consumer group name, so that several Herald installations (or test
    /// runs) can share one cluster. With `staging.` the events topic is
    /// `staging.herald.events`.
    pub topic_prefix: String,
    /// `HERALD_KAFKA_PROPERTIES` (default empty): extra librdkafka client
    /// properties as `key=value` pairs separated by commas, for example
    /// `security.protocol=SASL_SSL,sasl.mechanism=PLAIN`.
    pub properties: Vec<(String, String)>,
    /// `HERALD_KAFKA_PRODUCE_TIMEOUT` (default `10s`): how long a produce may
    /// wait for the broker's acknowledgement before it counts as failed.
    pub produce_timeout: Duration,
    /// `HERALD_CREATE_TOPICS` (default `true`): create Herald's topics at
    /// start-up when they do not exist.
    pub create_topics: bool,
    /// `HERALD_TOPIC_PARTITIONS` (default `12`): partitions of topics created
    /// at start-up. The number of useful dispatcher replicas is bounded by the
    /// partitions of `herald.deliveries`.
    pub topic_partitions: i32,
    /// `HERALD_TOPIC_REPLICATION` (default `1`): replication factor of topics
    /// created at start-up.
    pub topic_replication: i32,
    /// `HERALD_KAFKA_FETCH_WAIT` (default `500ms`): how long the broker may
    /// hold a fetch of a hot-path consumer (`herald.events`,
    /// `herald.deliveries`) that finds no record. Apache Kafka answers a
    /// waiting fetch as soon as a record arrives, so this only sets how
    /// often an idle consumer asks again. Brokers that hold every fetch for
    /// the whole wait (Tansu 0.6) need it short, e.g. `10ms`, since there it
    /// is the floor of each hop's latency.
    pub hot_fetch_wait: Duration,
    /// `HERALD_KAFKA_MAX_POLL_INTERVAL` (default `60s`, at least the
    /// consumers' 10 s session timeout): librdkafka's `max.poll.interval.ms`.
    /// A consumer that does not poll for this long is taken out of its
    /// group. Herald's consumers poll on while their in-flight window is
    /// full; the one time they do not is a rebalance's drain, so
    /// `HERALD_DRAIN_TIMEOUT` must end well within it ([`drain_timeout`]).
    /// `max.poll.interval.ms` in `HERALD_KAFKA_PROPERTIES` sets it too.
    pub max_poll_interval: Duration,
}

/// What a drain must leave of the poll interval: the store and commit
/// after it, and a wait for room in the window.
const POLL_INTERVAL_MARGIN: Duration = Duration::from_secs(5);

/// The consumers' `session.timeout.ms`: a crashed replica's partitions move
/// to the others after this long. librdkafka refuses a poll interval
/// shorter than it.
pub const KAFKA_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `HERALD_DRAIN_TIMEOUT` (default `30s`): on shutdown or rebalance,
/// how long in-flight records may take to finish. A rebalance's drain runs
/// inside the consumer's poll, so it is refused at start-up when it would
/// not end, with its commit, within the poll interval
/// (`HERALD_KAFKA_MAX_POLL_INTERVAL`): the group would otherwise take the
/// consumer out in the middle of it and hand its records to another.
pub fn drain_timeout(env: &Env, kafka: &KafkaConfig) -> Result<Duration, ConfigError> {
    let drain = env.duration("HERALD_DRAIN_TIMEOUT", Duration::from_secs(30))?;
    let longest = kafka.max_poll_interval.saturating_sub(POLL_INTERVAL_MARGIN);
    if drain > longest {
        return Err(ConfigError {
            key: "HERALD_DRAIN_TIMEOUT".to_owned(),
            value: Some(format_duration(drain)),
            problem: format!(
                "a drain must end {} before the Kafka poll interval \
                 (HERALD_KAFKA_MAX_POLL_INTERVAL, {}): set it to at most {}, or raise the poll interval",
                format_duration(POLL_INTERVAL_MARGIN),
                format_duration(kafka.max_poll_interval),
                format_duration(longest),
            ),
        });
    }
    Ok(drain)
}

/// librdkafka's own default fetch wait, which suits Apache Kafka.
const DEFAULT_HOT_FETCH_WAIT: Duration = Duration::from_millis(500);

impl KafkaConfig {
    /// Reads the Kafka settings shared by every Herald service.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let brokers = env.string("HERALD_KAFKA_BROKERS", "127.0.0.1:9092");
        let topic_prefix = env.parse("HERALD_TOPIC_PREFIX", String::new(), |v| {
            if v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                Ok(v.to_owned())
            } else {
                Err("use only letters, digits, '.', '_' and '-'".to_owned())
            }
        })?;
        let properties = env.parse("HERALD_KAFKA_PROPERTIES", Vec::new(), |v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        Ok((k.trim().to_owned(), v.trim().to_owned()))
                    }
                    _ => Err(format!(
                        "{pair:?} is not key=value; write e.g. security.protocol=SSL"
                    )),
                })
                .collect()
        })?;
        Ok(Self {
            brokers,
            topic_prefix,
            produce_timeout: env
                .duration("HERALD_KAFKA_PRODUCE_TIMEOUT", Duration::from_secs(10))?,
            create_topics: env.boolean("HERALD_CREATE_TOPICS", true)?,
            topic_partitions: env.number("HERALD_TOPIC_PARTITIONS", 12, 1, 10_000)? as i32,
            topic_replication: env.number("HERALD_TOPIC_REPLICATION", 1, 1, 32)? as i32,
            hot_fetch_wait: env.duration("HERALD_KAFKA_FETCH_WAIT", DEFAULT_HOT_FETCH_WAIT)?,
            max_poll_interval: max_poll_interval(env, &properties)?,
            properties,
        })
    }

    /// The full name of one of Herald's topics.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix)
    }

    /// The topic that events arrive on.
    pub fn events_topic(&self) -> String {
        self.topic(crate::topics::EVENTS)
    }

    /// The topic of per-endpoint delivery records.
    pub fn deliveries_topic(&self) -> String {
        self.topic(crate::topics::DELIVERIES)
    }

    /// The full name of a consumer group.
    pub fn group(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix)
    }
}

/// `HERALD_KAFKA_MAX_POLL_INTERVAL`, or `max.poll.interval.ms` among the
/// client properties, which wins since it is what librdkafka is given.
fn max_poll_interval(env: &Env, properties: &[(String, String)]) -> Result<Duration, ConfigError> {
    let from_properties = properties
        .iter()
        .find(|(key, _)| key == "max.poll.interval.ms");
    let interval = match from_properties {
        Some((_, ms)) => ms
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError {
                key: "HERALD_KAFKA_PROPERTIES".to_owned(),
                value: Some(format!("max.poll.interval.ms={ms}")),
                problem: "max.poll.interval.ms is a number of milliseconds".to_owned(),
            })?,
        None => env.duration("HERALD_KAFKA_MAX_POLL_INTERVAL", Duration::from_secs(60))?,
    };
    if interval < KAFKA_SESSION_TIMEOUT {
        return Err(ConfigError {
            key: "HERALD_KAFKA_MAX_POLL_INTERVAL".to_owned(),
            value: Some(format_duration(interval)),
            problem: format!(
                "must be at least the consumers' session timeout, {}",
                format_duration(KAFKA_SESSION_TIMEOUT)
            ),
        });
    }
    Ok(interval)
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `HERALD_REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// `HERALD_REDIS_PREFIX` (default `herald:`): prepended to every key
    /// Herald writes.
    pub key_prefix: String,
    /// `HERALD_REDIS_TIMEOUT` (default `2s`): how long one Redis command may
    /// take before it counts as failed.
    pub timeout: Duration,
}

impl RedisConfig {
    /// Reads the Redis settings shared by every Herald service.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.parse(
            "HERALD_REDIS_URL",
            "redis://127.0.0.1:6379".to_owned(),
            |v| match redis::Client::open(v) {
                Ok(_) => Ok(v.to_owned()),
                Err(err) => Err(format!(
                    "not a Redis URL ({err}); write it like redis://host:6379/0"
                )),
            },
        )?;
        Ok(Self {
            url,
            key_prefix: env.string("HERALD_REDIS_PREFIX", "herald:"),
            timeout: env.duration("HERALD_REDIS_TIMEOUT", Duration::from_secs(2))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_how_to_write_them() {
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("15 minutes")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
    }

    #[test]
    fn durations_format_with_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(36_000)), "10h");
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let env = Env::from_pairs([("HERALD_HTTP_TIMEOUT", "soon")]);
        let err = env
            .duration("HERALD_HTTP_TIMEOUT", Duration::from_secs(1))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("HERALD_HTTP_TIMEOUT=\"soon\" is invalid"),
            "{text}"
        );
    }

    #[test]
    fn numbers_are_range_checked() {
        let env = Env::from_pairs([("N", "0")]);
        let err = env.number("N", 5, 1, 10).unwrap_err();
        assert_eq!(err.problem, "must be between 1 and 10");
        assert_eq!(Env::default().number("N", 5, 1, 10), Ok(5));
    }

    #[test]
    fn kafka_properties_must_be_pairs() {
        let env = Env::from_pairs([("HERALD_KAFKA_PROPERTIES", "security.protocol")]);
        let err = KafkaConfig::from_env(&env).unwrap_err();
        assert_eq!(err.key, "HERALD_KAFKA_PROPERTIES");
        let env = Env::from_pairs([(
            "HERALD_KAFKA_PROPERTIES",
            "security.protocol=SSL, linger.ms = 5",
        )]);
        let config = KafkaConfig::from_env(&env).unwrap();
        assert_eq!(
            config.properties,
            vec![
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("linger.ms".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn topic_prefix_applies_to_topics_and_groups() {
        let env = Env::from_pairs([("HERALD_TOPIC_PREFIX", "t1.")]);
        let config = KafkaConfig::from_env(&env).unwrap();
        assert_eq!(config.events_topic(), "t1.herald.events");
        assert_eq!(config.group("herald-fanout"), "t1.herald-fanout");
    }
}
