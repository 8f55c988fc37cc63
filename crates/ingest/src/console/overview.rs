//! `GET /console`: what is failing right now, and the last hour in charts.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::chart::{Series, line_chart};
use super::layout;
use super::viewer::Viewer;
use crate::state::AppState;

/// Most open or half-open breakers listed.
const MAX_BREAKERS: isize = 50;
/// Minutes charted.
const MINUTES: usize = 60;

/// The overview page.
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = herald_core::event::unix_millis(time::OffsetDateTime::now_utc());
    let breakers = match not_closed(&state, now).await {
        Ok(rows) => breakers_table(&viewer, &rows),
        Err(err) => html! { p class="error" { "Cannot read the breakers: " (err.message) } },
    };
    let charts =
        match herald_core::stats::read_minutes(&state.redis, &state.keys, now, MINUTES).await {
            Ok(minutes) => charts(&minutes, now),
            Err(err) => {
                let err = crate::error::ApiError::from(err);
                html! { p class="error" { "Cannot read the counters: " (err.message) } }
            }
        };
    layout::page(
        &viewer,
        &state,
        "Overview",
        html! {
            h2 { "Endpoints failing now" }
            (breakers)
            h2 { "The last hour" }
            (charts)
            p class="muted" { "Counted by every Herald process and written to Redis every few seconds; kept for two hours." }
        },
    )
}

/// An endpoint whose breaker is not closed.
struct FailingEndpoint {
    id: String,
    endpoint: Option<herald_core::endpoint::Endpoint>,
    status: herald_core::circuit::BreakerStatus,
}

async fn not_closed(
    state: &AppState,
    now_ms: i64,
) -> Result<Vec<FailingEndpoint>, crate::error::ApiError> {
    let mut redis = state.redis.clone();
    // Most recently opened first.
    let ids: Vec<String> = redis::cmd("ZREVRANGE")
        .arg(state.keys.breakers_not_closed())
        .arg(0)
        .arg(MAX_BREAKERS - 1)
        .query_async(&mut redis)
        .await?;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let status = herald_core::circuit::read_status(
            &state.redis,
            &state.keys,
            &id,
            state.breaker_window,
            now_ms,
        )
        .await?;
        let endpoint = state.endpoints.get(&id).await?;
        rows.push(FailingEndpoint {
            id,
            endpoint,
            status,
        });
    }
    Ok(rows)
}

fn breakers_table(viewer: &Viewer, rows: &[FailingEndpoint]) -> Markup {
    if rows.is_empty() {
        return html! { p class="notice" { "Every endpoint's breaker is closed." } };
    }
    html! {
        table {
            thead { tr { th { "Endpoint" } th { "Application" } th { "Breaker" } th { "Opened" } th { "Next probe" } th { "Last error" } } }
            tbody {
                @for row in rows {
                    tr {
                        td class="wrap" {
                            @if let Some(endpoint) = &row.endpoint {
                                a href=(viewer.endpoint_page(&endpoint.application_id, &row.id)) { (row.id) }
                                br;
                                span class="muted" { (herald_core::endpoint::redacted_url(&endpoint.url)) }
                            } @else {
                                (row.id) " " span class="muted" { "(deleted)" }
                            }
                        }
                        td class="wrap" {
                            @if let Some(endpoint) = &row.endpoint {
                                a href=(viewer.app_base(&endpoint.application_id)) { (endpoint.application_id) }
                            }
                        }
                        td { span class={ "badge state-" (row.status.state) } { (row.status.state.replace('_', "-")) } }
                        td { @if let Some(ms) = row.status.opened_at_ms { (layout::when_ms(ms)) } }
                        td { @if let Some(ms) = row.status.next_probe_at_ms { (layout::when_ms(ms)) } }
                        td class="wrap" { (row.status.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// Minutes the headline figures cover.
const RECENT: usize = 5;

fn charts(minutes: &[herald_core::stats::Minute], now_ms: i64) -> Markup {
    // The current minute has only run this long.
    let current_seconds = ((now_ms.rem_euclid(60_000)) as f64 / 1000.0).max(1.0);
    let last = minutes.len().saturating_sub(1);
    let seconds = |i: usize| if i == last { current_seconds } else { 60.0 };
    let per_second = |i: usize, count: u64| Some(count as f64 / seconds(i));
    let accepted: Vec<_> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| per_second(i, m.accepted))
        .collect();
    let delivered: Vec<_> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| per_second(i, m.delivered))
        .collect();
    let failure_rate: Vec<_> = minutes
        .iter()
        .map(|m| {
            let attempts = m.delivered + m.failed;
            (attempts > 0).then(|| 100.0 * m.failed as f64 / attempts as f64)
        })
        .collect();
    let p50: Vec<_> = minutes
        .iter()
        .map(|m| m.latency_quantile_ms(0.5).map(|v| v as f64))
        .collect();
    let p99: Vec<_> = minutes
        .iter()
        .map(|m| m.latency_quantile_ms(0.99).map(|v| v as f64))
        .collect();
    let lag: Vec<_> = minutes.iter().map(|m| m.lag.map(|v| v as f64)).collect();
    // The headline figures: the last few minutes together.
    let recent = &minutes[minutes.len().saturating_sub(RECENT)..];
    let recent_seconds = 60.0 * recent.len().saturating_sub(1) as f64 + current_seconds;
    let sum = |count: fn(&herald_core::stats::Minute) -> u64| recent.iter().map(count).sum::<u64>();
    let (accepted_sum, delivered_sum, failed_sum) =
        (sum(|m| m.accepted), sum(|m| m.delivered), sum(|m| m.failed));
    let mut latency = vec![0; recent.first().map_or(0, |m| m.latency.len())];
    for m in recent {
        for (total, count) in latency.iter_mut().zip(&m.latency) {
            *total += count;
        }
    }
    let recent_p99 = herald_core::stats::quantile(&latency, 0.99).map(|v| v as f64);
    let recent_failure_rate = (delivered_sum + failed_sum > 0)
        .then(|| 100.0 * failed_sum as f64 / (delivered_sum + failed_sum) as f64);
    let figure = |value: Option<f64>, unit: &str, what: &str| {
        html! {
            div class="figure" {
                div class="value" { @match value { Some(v) => { (figure_value(v)) " " (unit) }, None => "–" } }
                div class="what" { (what) }
            }
        }
    };
    html! {
        div class="figures" {
            (figure(Some(accepted_sum as f64 / recent_seconds), "/s", "events accepted, last 5 min"))
            (figure(Some(delivered_sum as f64 / recent_seconds), "/s", "webhooks delivered, last 5 min"))
            (figure(recent_failure_rate, "%", "attempts failing, last 5 min"))
            (figure(recent_p99, "ms", "end-to-end p99, last 5 min"))
        }
        div class="charts" {
            (line_chart("Events accepted", "per second", &[Series { name: "accepted", class: "s1", values: accepted }]))
            (line_chart("Deliveries", "per second", &[Series { name: "delivered", class: "s3", values: delivered }]))
            (line_chart("Failure rate", "% of attempts", &[Series { name: "failed", class: "s2", values: failure_rate }]))
            (line_chart("End-to-end latency", "ms", &[
                Series { name: "p50", class: "s1", values: p50 },
                Series { name: "p99", class: "s4", values: p99 },
            ]))
            (line_chart("Consumer lag", "records", &[Series { name: "lag", class: "s4", values: lag }]))
        }
    }
}

/// A headline figure: small rates keep two decimals, so a trickle does not
/// read as zero.
fn figure_value(value: f64) -> String {
    if value > 0.0 && value < 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}
