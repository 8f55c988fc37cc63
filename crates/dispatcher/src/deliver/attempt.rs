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

/// The headers Herald sets on every webhook request.
const WEBHOOK_ID: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-signature");
const APPLICATION_JSON: reqwest::header::HeaderValue =
    reqwest::header::HeaderValue::from_static("application/json");
/// How many headers Herald sets itself (content type and the three above).
const OWN_HEADERS: usize = 4;

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
    // One header map, sized for everything at once, handed to the client
    // whole: a map grown header by header reallocated twice per request.
    let trace_headers = trace_context::current_headers();
    let mut headers = reqwest::header::HeaderMap::with_capacity(
        endpoint.headers.len() + trace_headers.len() + OWN_HEADERS,
    );
    for (name, value) in trace_headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::try_from(name),
            reqwest::header::HeaderValue::try_from(value),
        ) {
            headers.insert(name, value);
        }
    }
    // The URL's user info as basic auth, then the custom headers (a
    // custom `Authorization` replaces it), then Herald's own, which always
    // win. Cloning them copies no bytes.
    if let Some(basic_auth) = &endpoint.basic_auth {
        headers.insert(reqwest::header::AUTHORIZATION, basic_auth.clone());
    }
    for (name, value) in &endpoint.headers {
        headers.insert(name, value.clone());
    }
    headers.insert(reqwest::header::CONTENT_TYPE, APPLICATION_JSON);
    // Without these the webhook cannot be verified: a value that cannot be
    // a header fails the attempt rather than go out without it. (Event ids
    // are printable ASCII and signatures base64, so neither happens.)
    let (Ok(id), Ok(signature)) = (
        reqwest::header::HeaderValue::from_str(msg_id),
        reqwest::header::HeaderValue::try_from(signature),
    ) else {
        return (
            AttemptResult::Failed {
                status: None,
                error: "request failed: the event id or the signature cannot be a header value"
                    .to_owned(),
                hints: FailureHints::default(),
            },
            String::new(),
        );
    };
    headers.insert(WEBHOOK_ID, id);
    headers.insert(
        WEBHOOK_TIMESTAMP,
        reqwest::header::HeaderValue::from(timestamp),
    );
    headers.insert(WEBHOOK_SIGNATURE, signature);
    let mut request = reqwest::Request::new(reqwest::Method::POST, endpoint.request_url.clone());
    *request.headers_mut() = headers;
    *request.body_mut() = Some(webhook.body.clone().into());
    let request = outbound.client().execute(request);
    match request.await {
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
