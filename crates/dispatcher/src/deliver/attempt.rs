//! Step 4: the signed HTTP call — one attempt, inside its own client span
//! whose context goes to the endpoint as `traceparent`.

use herald_core::endpoint::ResolvedEndpoint;
use herald_core::event::unix_millis;
use herald_core::retry::{FailureHints, parse_retry_after};
use herald_core::{signing, trace_context};
use time::OffsetDateTime;
use tracing::Instrument as _;

use super::prepare::PreparedWebhook;
use crate::outbound::{NoAnswer, Outbound};

/// The headers Herald sets on every webhook request.
const WEBHOOK_ID: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("webhook-signature");
const APPLICATION_JSON: reqwest::header::HeaderValue =
    reqwest::header::HeaderValue::from_static("application/json");
/// `Accept: */*`, as HTTP clients send by default (an endpoint's own
/// `Accept` replaces it): some servers refuse a request without one.
const ANY: reqwest::header::HeaderValue = reqwest::header::HeaderValue::from_static("*/*");
/// How many headers Herald sets itself (content type, accept and the three
/// above).
const OWN_HEADERS: usize = 5;
/// How many the HTTP client adds to the map on its way out (`host`,
/// `content-length`): room for them up front, or the map grows (a
/// reallocation and a rehash) on every request.
const CLIENT_HEADERS: usize = 2;
/// The trace context's headers, when the webhook's trace has one.
const TRACEPARENT: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("traceparent");
const TRACESTATE: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("tracestate");
/// How many those are.
const TRACE_HEADERS: usize = 2;

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
        herald.endpoint_id = %endpoint.id,
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
    let mut headers = reqwest::header::HeaderMap::with_capacity(
        endpoint.headers.len() + TRACE_HEADERS + OWN_HEADERS + CLIENT_HEADERS,
    );
    trace_context::each_current_header(|name, value| {
        let name = match name {
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            other => match reqwest::header::HeaderName::try_from(other) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        if let Ok(value) = reqwest::header::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    });
    // `Accept` and the URL's user info as basic auth, then the custom
    // headers (a custom `Accept` or `Authorization` replaces them), then
    // Herald's own, which always win. Cloning them copies no bytes.
    headers.insert(reqwest::header::ACCEPT, ANY);
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
    let answer = match outbound.send(endpoint, headers, webhook.body.clone()).await {
        Ok(answer) => answer,
        Err(NoAnswer::TimedOut) => return (timed_out(), String::new()),
        Err(NoAnswer::Refused(refused)) => return (refused_attempt(refused), String::new()),
        Err(NoAnswer::Failed(error)) => {
            return (
                AttemptResult::Failed {
                    status: None,
                    error,
                    hints: FailureHints::default(),
                },
                String::new(),
            );
        }
    };
    let status = answer.status;
    let result = if (200..300).contains(&status) {
        AttemptResult::Delivered { status }
    } else {
        let retry_after = answer
            .retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
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
    (result, answer.body)
}

/// No answer within `HERALD_HTTP_TIMEOUT`: the endpoint is slow, so the
/// next attempts come more slowly too.
fn timed_out() -> AttemptResult {
    AttemptResult::Failed {
        status: None,
        error: "timed out".to_owned(),
        hints: FailureHints {
            slow_down: true,
            ..FailureHints::default()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::config::Env;
    use herald_core::proto::Delivery;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// An endpoint on `port` of this machine, and a client that may reach
    /// it and waits `timeout` for it.
    fn setup(port: u16, timeout: &str) -> (Outbound, ResolvedEndpoint, PreparedWebhook) {
        let config = crate::Config::from_env(&Env::from_pairs([
            ("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8"),
            ("HERALD_HTTP_TIMEOUT", timeout),
        ]))
        .unwrap();
        let endpoint = ResolvedEndpoint::new(herald_tests::stored_endpoint(
            "ep_1",
            &format!("http://127.0.0.1:{port}/hook"),
            &["*"],
        ))
        .unwrap();
        let webhook = PreparedWebhook {
            delivery: Delivery {
                event_id: "evt_1".to_owned(),
                endpoint_id: "ep_1".to_owned(),
                ..Delivery::default()
            },
            body: bytes::Bytes::from_static(b"{}"),
        };
        (Outbound::new(&config).unwrap(), endpoint, webhook)
    }

    /// Accepts one connection, reads the request (handed back as text),
    /// writes `answer` (if any) and then keeps the connection open without
    /// a word more.
    async fn stalling_endpoint(
        answer: &'static [u8],
    ) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (request_tx, request_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // The head, and the two bytes of the body after it.
            let mut request = Vec::new();
            let mut chunk = [0; 4096];
            while request
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_none_or(|end| request.len() < end + 4 + 2)
            {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = request_tx.send(String::from_utf8_lossy(&request).into_owned());
            socket.write_all(answer).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (port, request_rx)
    }

    #[tokio::test]
    async fn no_answer_in_time_fails_as_timed_out() {
        let (port, _) = stalling_endpoint(b"").await;
        let (outbound, endpoint, webhook) = setup(port, "300ms");
        let started = std::time::Instant::now();
        let (result, body) = attempt(&outbound, &endpoint, &webhook).await;
        assert_eq!(
            result,
            AttemptResult::Failed {
                status: None,
                error: "timed out".to_owned(),
                hints: FailureHints {
                    slow_down: true,
                    ..FailureHints::default()
                },
            }
        );
        assert!(body.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_2xx_whose_body_stalls_is_still_delivered() {
        let (port, request) =
            stalling_endpoint(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nthe start").await;
        let (outbound, endpoint, webhook) = setup(port, "300ms");
        let (result, body) = attempt(&outbound, &endpoint, &webhook).await;
        assert_eq!(result, AttemptResult::Delivered { status: 200 });
        assert_eq!(body, "the start");
        // What went out: a POST with Herald's headers and the client's.
        let request = request.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /hook http/1.1\r\n"), "{request}");
        for header in [
            "accept: */*\r\n",
            "content-type: application/json\r\n",
            "content-length: 2\r\n",
            "host: 127.0.0.1:",
            "webhook-id: evt_1\r\n",
            "webhook-signature: v1,",
        ] {
            assert!(request.contains(header), "{header} in {request}");
        }
        assert!(request.ends_with("\r\n\r\n{}"), "{request}");
    }
}
