//! Prometheus metrics, one registry per process, served as text on
//! `GET /metrics` (herald-ingest's API port; the ops port of fan-out and the
//! dispatchers). Names start with `herald_` and follow Prometheus
//! conventions: counters end in `_total`, durations are in seconds.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label sets are plain name/value pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Builds histograms with buckets from 1 ms to about 65 s.
#[derive(Debug, Clone, Copy)]
pub struct SecondsBuckets;

impl MetricConstructor<Histogram> for SecondsBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

/// Builds histograms of the waits between hops, from 0.25 ms to about 65 s:
/// finer at the bottom than [`SecondsBuckets`], where a healthy hop is.
#[derive(Debug, Clone, Copy)]
pub struct WaitBuckets;

impl MetricConstructor<Histogram> for WaitBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
    }
}

/// Every metric Herald exports. Each service fills the ones that concern it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events accepted by ingest.
    pub events_accepted: Counter,
    /// Events refused by ingest, by `reason` (the error code).
    pub events_rejected: Family<Labels, Counter>,
    /// Events fanned out.
    pub events_fanned_out: Counter,
    /// Events whose application has no endpoint subscribed to their type.
    pub events_without_subscribers: Counter,
    /// Fan-out lookups of an application's subscriptions answered from its
    /// cache.
    pub fanout_cache_hits: Counter,
    /// Fan-out lookups that had to read the application from Redis.
    pub fanout_cache_misses: Counter,
    /// Delivery records written by fan-out.
    pub deliveries_created: Counter,
    /// Delivery results, by `outcome` (`delivered`, `retry_scheduled`,
    /// `dead_lettered`, `deferred`) and `status_class` (`2xx` … `5xx`,
    /// `none`).
    pub deliveries: Family<Labels, Counter>,
    /// Duration of one HTTP attempt.
    pub attempt_duration: Histogram,
    /// From the event's timestamp (acceptance) to the endpoint's 2xx.
    pub end_to_end_latency: Histogram,
    /// Fan-out: from an event record's Kafka timestamp to the start of its
    /// fan-out (the first hop: broker, fetch, and waiting for a slot).
    pub fanout_event_wait: Histogram,
    /// Dispatcher: from fan-out writing a delivery (or a replay of a dead
    /// letter writing it again) to its first attempt's start (the second
    /// hop: produce, broker, fetch, admission).
    pub first_attempt_wait: Histogram,
    /// Deliveries written to a retry tier, by `tier`.
    pub retries: Family<Labels, Counter>,
    /// Dead letters written, by `reason`.
    pub dead_letters: Family<Labels, Counter>,
    /// Endpoints whose circuit this replica last saw open or half-open, by
    /// `state` (`open`, `half_open`). Per-endpoint state is in the API
    /// (`GET /v1/endpoints/{id}/health`): a series per endpoint would grow
    /// with every endpoint ever delivered to.
    pub breakers: BreakerCounts,
    /// Circuit state changes, by `transition`.
    pub breaker_transitions: Family<Labels, Counter>,
    /// Attempts whose record (attempt log, breaker success) was dropped
    /// because Redis fell behind and the dispatcher's queue of records was
    /// full.
    pub attempt_records_dropped: Counter,
    /// Records being processed, by `group`.
    pub in_flight: Family<Labels, Gauge>,
    /// Consumer lag per `topic` and `partition` (from librdkafka statistics;
    /// approximate on brokers whose high watermark lags).
    pub consumer_lag: Family<Labels, Gauge>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            events_accepted: Counter::default(),
            events_rejected: Family::default(),
            events_fanned_out: Counter::default(),
            events_without_subscribers: Counter::default(),
            fanout_cache_hits: Counter::default(),
            fanout_cache_misses: Counter::default(),
            deliveries_created: Counter::default(),
            deliveries: Family::default(),
            attempt_duration: SecondsBuckets.new_metric(),
            end_to_end_latency: SecondsBuckets.new_metric(),
            fanout_event_wait: WaitBuckets.new_metric(),
            first_attempt_wait: WaitBuckets.new_metric(),
            retries: Family::default(),
            dead_letters: Family::default(),
            breakers: BreakerCounts::default(),
            breaker_transitions: Family::default(),
            attempt_records_dropped: Counter::default(),
            in_flight: Family::default(),
            consumer_lag: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "herald_events_accepted",
            "Events accepted by herald-ingest",
            metrics.events_accepted.clone(),
        );
        registry.register(
            "herald_events_rejected",
            "Events refused by herald-ingest, by reason",
            metrics.events_rejected.clone(),
        );
        registry.register(
            "herald_events_fanned_out",
            "Events fanned out",
            metrics.events_fanned_out.clone(),
        );
        registry.register(
            "herald_events_without_subscribers",
            "Events fanned out to nobody: no endpoint of their application subscribes to their type",
            metrics.events_without_subscribers.clone(),
        );
        registry.register(
            "herald_fanout_cache_hits",
            "Fan-out lookups of an application's subscriptions answered from its cache",
            metrics.fanout_cache_hits.clone(),
        );
        registry.register(
            "herald_fanout_cache_misses",
            "Fan-out lookups that read the application's subscriptions from Redis",
            metrics.fanout_cache_misses.clone(),
        );
        registry.register(
            "herald_deliveries_created",
            "Delivery records written by fan-out",
            metrics.deliveries_created.clone(),
        );
        registry.register(
            "herald_deliveries",
            "Delivery results by outcome and status class",
            metrics.deliveries.clone(),
        );
        registry.register(
            "herald_delivery_attempt_duration_seconds",
            "Duration of one webhook request",
            metrics.attempt_duration.clone(),
        );
        registry.register(
            "herald_delivery_end_to_end_seconds",
            "From event acceptance to the endpoint's 2xx",
            metrics.end_to_end_latency.clone(),
        );
        registry.register(
            "herald_fanout_event_wait_seconds",
            "From an event record's Kafka timestamp to the start of its fan-out",
            metrics.fanout_event_wait.clone(),
        );
        registry.register(
            "herald_delivery_first_attempt_wait_seconds",
            "From fan-out writing a delivery to the start of its first attempt",
            metrics.first_attempt_wait.clone(),
        );
        registry.register(
            "herald_retries",
            "Deliveries written to a retry tier, by tier",
            metrics.retries.clone(),
        );
        registry.register(
            "herald_dead_letters",
            "Dead letters written, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "herald_circuit_breakers",
            "Endpoints whose circuit this replica last saw open or half-open, by state",
            metrics.breakers.gauges.clone(),
        );
        registry.register(
            "herald_circuit_breaker_transitions",
            "Circuit state changes, by transition",
            metrics.breaker_transitions.clone(),
        );
        registry.register(
            "herald_attempt_records_dropped",
            "Attempt records dropped because Redis fell behind",
            metrics.attempt_records_dropped.clone(),
        );
        registry.register(
            "herald_in_flight_records",
            "Records being processed, by consumer group",
            metrics.in_flight.clone(),
        );
        registry.register(
            "herald_consumer_lag",
            "Consumer lag per topic partition",
            metrics.consumer_lag.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        #[cfg(feature = "count-allocations")]
        {
            // Before the closing `# EOF` of the OpenMetrics text.
            let end = text.rfind("# EOF").unwrap_or(text.len());
            text.insert_str(
                end,
                &format!(
                    "# HELP herald_allocations Heap allocations of the process (count-allocations builds).\n\
                     # TYPE herald_allocations counter\n\
                     herald_allocations_total {}\n",
                    crate::alloc_count::allocations()
                ),
            );
        }
        text
    }
}

/// A circuit state as [`BreakerCounts`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries flow; not counted (every endpoint starts closed).
    Closed,
    /// Deliveries wait for the cool-down.
    Open,
    /// One probe delivery decides.
    HalfOpen,
}

impl BreakerState {
    fn label(self) -> Option<&'static str> {
        match self {
            BreakerState::Closed => None,
            BreakerState::Open => Some("open"),
            BreakerState::HalfOpen => Some("half_open"),
        }
    }
}

/// How many endpoints are in each state that is not closed, as this
/// replica last saw them. It remembers only endpoints that are not closed,
/// so its memory grows with the failing endpoints, not with all of them.
#[derive(Debug, Default)]
pub struct BreakerCounts {
    not_closed: Mutex<HashMap<String, BreakerState>>,
    gauges: Family<Labels, Gauge>,
}

impl BreakerCounts {
    /// Records that `endpoint_id`'s circuit is now `state`.
    pub fn set(&self, endpoint_id: &str, state: BreakerState) {
        let mut not_closed = self
            .not_closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = if state == BreakerState::Closed {
            not_closed.remove(endpoint_id)
        } else {
            not_closed.insert(endpoint_id.to_owned(), state)
        };
        if before == Some(state) {
            return;
        }
        if let Some(name) = before.and_then(BreakerState::label) {
            self.gauges.get_or_create(&label("state", name)).dec();
        }
        if let Some(name) = state.label() {
            self.gauges.get_or_create(&label("state", name)).inc();
        }
    }

    /// The count of endpoints in `state` (0 for `Closed`, which is not
    /// counted).
    pub fn count(&self, state: BreakerState) -> i64 {
        state.label().map_or(0, |name| {
            self.gauges.get_or_create(&label("state", name)).get()
        })
    }
}

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One label.
pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// `2xx` … `5xx`, or `none` when no response arrived.
pub fn status_class(status: Option<u16>) -> String {
    status.map_or_else(|| "none".to_owned(), |s| format!("{}xx", s / 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_text_format() {
        let m = metrics();
        m.events_accepted.inc();
        m.deliveries
            .get_or_create(&vec![
                ("outcome", "delivered".to_owned()),
                ("status_class", status_class(Some(204))),
            ])
            .inc();
        m.end_to_end_latency.observe(0.25);
        let text = m.render();
        assert!(text.contains("herald_events_accepted_total 1"), "{text}");
        assert!(
            text.contains(r#"herald_deliveries_total{outcome="delivered",status_class="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_end_to_end_seconds_count 1"),
            "{text}"
        );
        assert_eq!(status_class(None), "none");
    }

    #[test]
    fn breaker_counts_follow_each_endpoints_latest_state() {
        let counts = BreakerCounts::default();
        counts.set("ep_a", BreakerState::Open);
        counts.set("ep_b", BreakerState::Open);
        counts.set("ep_b", BreakerState::Open);
        assert_eq!(counts.count(BreakerState::Open), 2);
        counts.set("ep_a", BreakerState::HalfOpen);
        assert_eq!(counts.count(BreakerState::Open), 1);
        assert_eq!(counts.count(BreakerState::HalfOpen), 1);
        counts.set("ep_a", BreakerState::Closed);
        counts.set("ep_c", BreakerState::Closed);
        assert_eq!(counts.count(BreakerState::HalfOpen), 0);
        assert_eq!(counts.count(BreakerState::Open), 1);
        assert_eq!(counts.not_closed.lock().unwrap().len(), 1);
    }
}
