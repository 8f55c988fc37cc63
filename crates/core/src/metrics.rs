//! Prometheus metrics, one registry per process, served as text on
//! `GET /metrics` (herald-ingest's API port; the ops port of fan-out and the
//! dispatchers). Names start with `herald_` and follow Prometheus
//! conventions: counters end in `_total`, durations are in seconds.

use std::sync::OnceLock;

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
    /// Deliveries written to a retry tier, by `tier`.
    pub retries: Family<Labels, Counter>,
    /// Dead letters written, by `reason`.
    pub dead_letters: Family<Labels, Counter>,
    /// Circuit state per `endpoint_id`: 0 closed, 1 open, 2 half-open (as
    /// this replica last saw it).
    pub breaker_state: Family<Labels, Gauge>,
    /// Circuit state changes, by `transition`.
    pub breaker_transitions: Family<Labels, Counter>,
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
            deliveries_created: Counter::default(),
            deliveries: Family::default(),
            attempt_duration: SecondsBuckets.new_metric(),
            end_to_end_latency: SecondsBuckets.new_metric(),
            retries: Family::default(),
            dead_letters: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
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
            "herald_circuit_breaker_state",
            "Circuit state per endpoint: 0 closed, 1 open, 2 half-open",
            metrics.breaker_state.clone(),
        );
        registry.register(
            "herald_circuit_breaker_transitions",
            "Circuit state changes, by transition",
            metrics.breaker_transitions.clone(),
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
        text
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
}
