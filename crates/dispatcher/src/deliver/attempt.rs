//! Step 4: the signed HTTP call — one attempt, inside its own client span
//! whose context goes to the endpoint as `traceparent`.

use herald_core::attempt_log;
use herald_core::endpoint::ResolvedEndpoint;
use herald_core::event::unix_millis;
use herald_core::retry::{FailureHints, parse_retry_after};
use herald_core::{signing, trace_context};
use time::OffsetDateTime;
use tracing::Instrument as _;

use super::prepare::PreparedWebhook;
use crate::outbound::{Outbound, refusal_of};

/// Most response-body bytes read from an endpoint (the rest is discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Anything else.
    Failed {
        /// The status code, when a response arrived.
        status: Option<u16>,
        /// What went wrong, for logs and records.
        error: String,
        /// When the endpoint wants the next attempt.
        hints: FailureHints,
    },
}

/// One signed POST. Returns the result and the start of the response
/// body.
pub async fn attempt(
    outbound: &Outbound,
    endpoint: &ResolvedEndpoint,
    webhook: &PreparedWebhook,
) -> (AttemptResult, String) {
    // Exported only: nothing is logged inside it.
    let span = tracing::info_span!(
        target: herald_core::telemetry::EXPORT_ONLY,
        "POST",
        otel.kind = "client",
        http.request.method = "POST",
        url.full = endpoint.redacted_url.as_str(),
        herald.endpoint_id = %endpoint.endpoint.id,
        herald.attempt = webhook.delivery.attempts_made + 1,
        http.response.status_code = tracing::field::Empty,
        herald.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let (result, body) = send(outbound, endpoint, webhook)
        .instrument(span.clone())
        .await;
    match &result {
        AttemptResult::Delivered { status } => {
            span.record("http.response.status_code", status);
            span.record("herald.outcome", "delivered");
        }
        AttemptResult::Failed { status, error, .. } => {
            if let Some(status) = status {
                span.record("http.response.status_code", status);
            }
            span.record("herald.outcome", "failed");
            span.record("error.type", error.as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
    (result, body)
}

/// The HTTP exchange of one attempt, inside its span (whose context
/// goes to the endpoint as `traceparent`).
async fn send(
    outbound: &Outbound,
    endpoint: &ResolvedEndpoint,
    webhook: &PreparedWebhook,
) -> (AttemptResult, String) {
    if let Err(refused) = outbound.preflight(&endpoint.url).await {
        return (refused_attempt(refused), String::new());
    }
    let now = OffsetDateTime::now_utc();
    let timestamp = now.unix_timestamp();
    let msg_id = &webhook.delivery.event_id;
    // During a secret rotation the old secret signs too.
    let signature = signing::signature_header(
        endpoint.signing_secrets(unix_millis(now)),
        msg_id,
        timestamp,
        &webhook.body,
    );
    let mut request = outbound
        .client()
        .request(reqwest::Method::POST, endpoint.url.clone());
    for (name, value) in trace_context::current_headers() {
        request = request.header(name, value);
    }
    // Custom headers first, so Herald's own always win. Cloning them
    // copies no bytes.
    let request = request
        .headers(endpoint.headers.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(webhook.body.clone());
    match request.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
            // Read (a bounded part of) the body so the connection can be
            // reused; keep its start for the attempt log.
            let mut read = 0usize;
            let mut kept = Vec::new();
            while read < MAX_RESPONSE_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len();
                        let room = attempt_log::MAX_BODY_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    _ => break,
                }
            }
            let body = String::from_utf8_lossy(&kept).into_owned();
            let result = if response.status().is_success() {
                AttemptResult::Delivered { status }
            } else {
                AttemptResult::Failed {
                    status: Some(status),
                    error: format!("the endpoint answered {status}"),
                    hints: FailureHints {
                        retry_after,
                        slow_down: status == 429,
                        destination_refused: false,
                    },
                }
            };
            (result, body)
        }
        Err(err) => match refusal_of(&err) {
            Some(refused) => (refused_attempt(refused), String::new()),
            None => (
                AttemptResult::Failed {
                    status: None,
                    error: describe_http_error(&err),
                    hints: FailureHints {
                        retry_after: None,
                        slow_down: err.is_timeout(),
                        destination_refused: false,
                    },
                },
                String::new(),
            ),
        },
    }
}

/// An attempt the outbound address policy stopped before anything was sent.
fn refused_attempt(refused: herald_core::destination::DestinationRefused) -> AttemptResult {
    AttemptResult::Failed {
        status: None,
        error: format!("destination refused: {refused}"),
        hints: FailureHints {
            destination_refused: true,
            ..FailureHints::default()
        },
    }
}

/// A short, precise description of a failed request. It never holds the
/// URL (reqwest's own message does: "error sending request for url (…)"),
/// since it is logged and kept in the attempt log and dead letters, and an
/// endpoint URL can carry credentials.
fn describe_http_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    // The innermost cause says what happened (e.g. "Connection refused").
    let mut innermost = None;
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "response body failed"
    } else if err.is_redirect() {
        "redirect failed"
    } else if err.is_request() {
        "request failed"
    } else {
        "failed"
    };
    match innermost {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}
