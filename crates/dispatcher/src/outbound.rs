//! The webhook HTTP client, and the checks on where it may connect.
//!
//! Every address the client connects to passes the outbound address policy
//! ([`herald_core::destination`]) at the moment of connecting:
//!
//! - host names go through [`GuardedResolver`], which drops refused
//!   addresses from what DNS answered (and fails when none is left), so a
//!   name that passed registration but resolves to an internal address now
//!   (DNS rebinding) is not reached;
//! - a URL whose host is an IP address never reaches a resolver, so
//!   [`Outbound::preflight`] checks it before the request is made, together
//!   with the scheme when `HERALD_REQUIRE_HTTPS` is set;
//! - through `HERALD_OUTBOUND_PROXY` the client resolves only the proxy's
//!   name, and the proxy the destination's. The preflight then resolves the
//!   destination itself and refuses it unless every address is allowed.
//!   The proxy resolves it again, so it should enforce an egress policy of
//!   its own too.
//!
//! Environment proxy variables (`HTTP_PROXY`, …) are ignored: they would
//! route around these checks.
//!
//! Without a proxy, webhooks go out through hyper's own pooled client
//! ([`Transport::Direct`]); through one, reqwest's, which speaks the proxy's
//! protocol. Either way [`Outbound::send`] is one POST and the start of its
//! answer within `HERALD_HTTP_TIMEOUT`.
//!
//! TLS trusts the Web PKI's roots and the CAs of `HERALD_OUTBOUND_CA_FILE`.
//! Straight to an https endpoint the client offers HTTP/2 beside HTTP/1.1
//! (ALPN, unless `HERALD_OUTBOUND_HTTP2=false`): an endpoint that takes it
//! gets one connection per replica and every concurrent webhook as a
//! stream on it, one that does not gets pooled HTTP/1.1 connections as
//! before. Plain `http://` endpoints, and everything through the proxy,
//! get HTTP/1.1.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_core::attempt_log;
use herald_core::destination::{DestinationPolicy, DestinationRefused};
use herald_core::endpoint::ResolvedEndpoint;
use http::HeaderMap;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use tokio::time::{Instant, timeout_at};

use crate::Config;

/// How long the preflight waits for a destination to resolve (proxy only).
const PREFLIGHT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most response-body bytes read from an endpoint (the rest is not read).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// TCP keepalive of webhook connections: idle time before the first
/// probe, and between probes.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// Unanswered probes before the connection is dropped.
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// HTTP/2 pings on webhook connections, busy or idle: one endpoint's
/// webhooks all share one HTTP/2 connection, so a peer that vanished
/// without closing it must be noticed within seconds rather than by each
/// webhook's timeout in turn.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The webhook client with its address policy.
#[derive(Debug)]
pub struct Outbound {
    transport: Transport,
    policy: Arc<DestinationPolicy>,
    timeout: Duration,
}

/// How webhook requests leave.
#[derive(Debug)]
enum Transport {
    /// Straight to the endpoint: hyper's pooled client (HTTP/1.1, and
    /// HTTP/2 where TLS negotiates it), TLS by rustls, names resolved by
    /// [`GuardedResolver`]. It takes the request as Herald builds it (the
    /// endpoint's ready `Uri`, one header map), where reqwest copied the
    /// headers for its redirect policy, parsed the URL into a `Uri` again
    /// and boxed the request, its body and its answer: about a dozen
    /// allocations per webhook.
    Direct(Box<hyper_util::client::legacy::Client<Connector, Full<Bytes>>>),
    /// Through `HERALD_OUTBOUND_PROXY`: reqwest speaks the proxy's protocol
    /// (`CONNECT` for https, absolute URIs for http).
    Proxied(reqwest::Client),
}

/// Plain TCP or TLS, by the URL's scheme, to the addresses the policy
/// allows.
type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// What an endpoint answered.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Its `Retry-After`, if it sent one.
    pub retry_after: Option<http::HeaderValue>,
    /// The start of the body (lossy UTF-8). A body cut short, or still
    /// coming at the deadline, leaves the answer as it was.
    pub body: String,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// None within `HERALD_HTTP_TIMEOUT`.
    TimedOut,
    /// The address policy refused where it would connect.
    Refused(DestinationRefused),
    /// Anything else: what went wrong, short and without the URL.
    Failed(String),
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The proxy's client.
    #[error(transparent)]
    Proxy(#[from] reqwest::Error),
    /// TLS settings.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl Outbound {
    /// Builds the client: pooled connections, no redirects (an answer that
    /// is not 2xx is a failure: following it would send the signed payload
    /// somewhere nobody registered), the configured proxy or none, and the
    /// guarded resolver. The whole exchange's time limit is kept with one
    /// deadline per request ([`Outbound::send`]).
    pub fn new(config: &Config) -> Result<Self, OutboundError> {
        let policy = Arc::new(config.destinations.clone());
        let connect_timeout = config.http_timeout.min(Duration::from_secs(10));
        let idle = Duration::from_secs(60);
        let transport = match &config.outbound_proxy {
            Some(proxy) => {
                let mut builder = reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_idle_timeout(idle)
                    .proxy(reqwest::Proxy::all(proxy.as_str())?);
                for root in &config.outbound_roots {
                    builder = builder.add_root_certificate(reqwest::Certificate::from_der(root)?);
                }
                Transport::Proxied(builder.build()?)
            }
            None => {
                let mut http = HttpConnector::new_with_resolver(GuardedResolver {
                    policy: policy.clone(),
                });
                // https URLs go to the TLS layer around it.
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(connect_timeout));
                // As reqwest did: a pooled connection whose peer vanished
                // is noticed, not written to.
                http.set_keepalive(Some(TCP_KEEPALIVE));
                http.set_keepalive_interval(Some(TCP_KEEPALIVE));
                http.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
                let tls = tls_config(&config.outbound_roots, config.outbound_http2)?;
                let connector = hyper_rustls::HttpsConnector::from((http, tls));
                Transport::Direct(Box::new(
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .pool_idle_timeout(idle)
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
                    .http2_keep_alive_timeout(HTTP2_PING_TIMEOUT)
                    .http2_keep_alive_while_idle(true)
                    .build(connector),
                ))
            }
        };
        Ok(Self {
            transport,
            policy,
            timeout: config.http_timeout,
        })
    }

    /// POSTs `body` with `headers` to `endpoint` and reads (a bounded part
    /// of) the answer, so that the connection can be reused, within one
    /// deadline. Call [`Outbound::preflight`] first.
    pub async fn send(
        &self,
        endpoint: &ResolvedEndpoint,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, NoAnswer> {
        let deadline = Instant::now() + self.timeout;
        match &self.transport {
            Transport::Direct(client) => {
                let mut request = http::Request::new(Full::new(body));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = endpoint.request_uri.clone();
                *request.headers_mut() = headers;
                let response = match timeout_at(deadline, client.request(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) => return Err(no_answer(&err, err.is_connect())),
                    Err(_elapsed) => return Err(NoAnswer::TimedOut),
                };
                let (head, mut incoming) = response.into_parts();
                let mut kept = BodyStart::default();
                while kept.wants_more() {
                    match timeout_at(deadline, incoming.frame()).await {
                        Ok(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                kept.add(data);
                            }
                        }
                        _ => break,
                    }
                }
                Ok(Answer {
                    status: head.status.as_u16(),
                    retry_after: head.headers.get(http::header::RETRY_AFTER).cloned(),
                    body: kept.into_text(),
                })
            }
            Transport::Proxied(client) => {
                let mut request =
                    reqwest::Request::new(reqwest::Method::POST, endpoint.request_url.clone());
                *request.headers_mut() = headers;
                *request.body_mut() = Some(body.into());
                let mut response = match timeout_at(deadline, client.execute(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) => return Err(no_answer(&err, err.is_connect())),
                    Err(_elapsed) => return Err(NoAnswer::TimedOut),
                };
                let mut kept = BodyStart::default();
                while kept.wants_more() {
                    match timeout_at(deadline, response.chunk()).await {
                        Ok(Ok(Some(chunk))) => kept.add(&chunk),
                        _ => break,
                    }
                }
                Ok(Answer {
                    status: response.status().as_u16(),
                    retry_after: response.headers().get(http::header::RETRY_AFTER).cloned(),
                    body: kept.into_text(),
                })
            }
        }
    }

    /// The checks that must pass before a request to `parsed` is made.
    pub async fn preflight(&self, parsed: &url::Url) -> Result<(), DestinationRefused> {
        self.policy.check_url(parsed)?;
        if matches!(self.transport, Transport::Proxied(_))
            && let Some(url::Host::Domain(host)) = parsed.host()
        {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let resolved = tokio::time::timeout(
                PREFLIGHT_RESOLVE_TIMEOUT,
                tokio::net::lookup_host((host, port)),
            )
            .await;
            let addrs: Vec<_> = match resolved {
                Ok(Ok(addrs)) => addrs.collect(),
                // The proxy may well resolve names Herald cannot; without an
                // address there is nothing to judge.
                _ => return Ok(()),
            };
            for addr in addrs {
                self.policy.check_ip(addr.ip()).map_err(|refused| {
                    DestinationRefused(format!("{host} resolves to a refused address: {refused}"))
                })?;
            }
        }
        Ok(())
    }
}

/// A failed request: the policy's refusal inside it, or a short,
/// precise description. It never holds the URL (the clients' own
/// messages may), since it is logged and kept in the attempt log and
/// dead letters, and an endpoint URL can carry credentials.
fn no_answer(err: &(dyn std::error::Error + 'static), connect: bool) -> NoAnswer {
    if let Some(refused) = refusal_of(err) {
        return NoAnswer::Refused(refused);
    }
    // Connecting took too long: as slow as no answer.
    let mut source = Some(err);
    while let Some(current) = source {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || current
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
        {
            return NoAnswer::TimedOut;
        }
        source = current.source();
    }
    // The innermost cause says what happened (e.g. "Connection refused").
    let mut innermost = None;
    let mut source = err.source();
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let kind = if connect {
        "cannot connect"
    } else {
        "request failed"
    };
    NoAnswer::Failed(match innermost {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    })
}

/// TLS for webhooks: rustls with ring, TLS 1.2 and 1.3, the Web PKI's
/// roots and `extra_roots`; ALPN offers HTTP/2 first when `http2`, and
/// HTTP/1.1 (the connection then says which was taken, and the client
/// speaks that).
fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    http2: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The start of a response body: at most [`MAX_RESPONSE_BYTES`] are read,
/// and the first [`attempt_log::MAX_BODY_BYTES`] of them kept for the
/// attempt log.
#[derive(Default)]
struct BodyStart {
    read: usize,
    kept: Vec<u8>,
}

impl BodyStart {
    fn wants_more(&self) -> bool {
        self.read < MAX_RESPONSE_BYTES
    }

    fn add(&mut self, chunk: &[u8]) {
        self.read += chunk.len();
        let room = attempt_log::MAX_BODY_BYTES.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// Valid UTF-8 (most bodies) becomes the text without a copy.
    fn into_text(self) -> String {
        String::from_utf8(self.kept)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
    }
}

/// The refusal inside a failed request, if the address policy stopped it.
pub fn refusal_of(err: &(dyn std::error::Error + 'static)) -> Option<DestinationRefused> {
    let mut source = Some(err);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<DestinationRefused>() {
            return Some(refused.clone());
        }
        source = current.source();
    }
    None
}

/// Resolves with the system resolver, then keeps only the addresses the
/// policy allows.
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the connector puts in the URL's port.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = policy.filter(&host, resolved)?;
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::Env;
    use herald_tests::{Alpn, Behaviour, Receiver};

    fn outbound(pairs: &[(&str, &str)]) -> Outbound {
        let config = Config::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap();
        Outbound::new(&config).unwrap()
    }

    fn parsed(url: &str) -> url::Url {
        url::Url::parse(url).unwrap()
    }

    fn endpoint(url: &str) -> ResolvedEndpoint {
        ResolvedEndpoint::new(herald_tests::stored_endpoint("ep_1", url, &["*"])).unwrap()
    }

    async fn post(out: &Outbound, url: &str) -> Result<Answer, NoAnswer> {
        out.send(&endpoint(url), HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
    }

    /// A listener that would accept the request if the client got through.
    async fn listener() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        let (_listener, port) = listener().await;
        let out = outbound(&[]);
        let url = format!("http://localhost:{port}/hook");
        // Names are not resolved by the preflight without a proxy...
        assert_eq!(out.preflight(&parsed(&url)).await, Ok(()));
        // ...but by the client, which refuses the address it got.
        match post(&out, &url).await {
            Err(NoAnswer::Refused(refused)) => {
                assert!(refused.0.contains("loopback"), "{refused}")
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn allowed_ranges_are_reached() {
        let (listener, port) = listener().await;
        let out = outbound(&[("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8,::1")]);
        let accept = tokio::spawn(async move { listener.accept().await.is_ok() });
        let url = format!("http://localhost:{port}/hook");
        // The listener hangs up at once: the request fails, but only after
        // it connected.
        match post(&out, &url).await {
            Err(NoAnswer::Failed(error)) => {
                assert!(error.starts_with("request failed"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(accept.await.unwrap());
    }

    #[tokio::test]
    async fn a_closed_port_cannot_be_connected_to() {
        let (listener, port) = listener().await;
        drop(listener);
        let out = outbound(&[("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8")]);
        match post(&out, &format!("http://127.0.0.1:{port}/hook")).await {
            Err(NoAnswer::Failed(error)) => {
                assert!(error.starts_with("cannot connect: "), "{error}");
                assert!(!error.contains("127.0.0.1"), "no address: {error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn https_urls_speak_tls() {
        // A plain-text listener: a TLS client hello gets garbage back (or a
        // hang-up), so the request fails in the handshake, which shows the
        // scheme chose TLS rather than plain HTTP.
        let (listener, port) = listener().await;
        let out = outbound(&[("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8")]);
        let answer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 5];
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            socket.read_exact(&mut hello).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
            hello
        });
        let result = post(&out, &format!("https://localhost:{port}/hook")).await;
        assert!(matches!(result, Err(NoAnswer::Failed(_))), "{result:?}");
        // 0x16: a TLS handshake record.
        assert_eq!(answer.await.unwrap()[0], 0x16);
    }

    /// An https endpoint answering 200 `ok`, offering `alpn`.
    async fn tls_endpoint(alpn: Alpn) -> Receiver {
        let answer = Behaviour::Reply {
            status: 200,
            body: "ok".to_owned(),
        };
        Receiver::start_tls(answer, alpn).await
    }

    /// The HTTP versions the requests came over, in order.
    fn versions(receiver: &Receiver) -> Vec<http::Version> {
        receiver.received().iter().map(|r| r.version).collect()
    }

    /// A client allowed to reach 127.0.0.1 and trusting the test CA.
    fn trusting_outbound(more: &[(&str, &str)]) -> Outbound {
        let ca = herald_tests::test_ca_file();
        let mut pairs = vec![
            ("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8"),
            ("HERALD_OUTBOUND_CA_FILE", ca.as_str()),
        ];
        pairs.extend_from_slice(more);
        outbound(&pairs)
    }

    #[tokio::test]
    async fn https_endpoints_that_take_http2_get_their_webhooks_as_streams_of_one_connection() {
        let endpoint = tls_endpoint(Alpn::Http2AndHttp1).await;
        let out = trusting_outbound(&[]);
        let answer = post(&out, &endpoint.url()).await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        // Five at once, once the first has found the endpoint speaks
        // HTTP/2: all on its one connection.
        let url = endpoint.url();
        let five = (0..5).map(|_| post(&out, &url));
        for answer in futures::future::join_all(five).await {
            assert_eq!(answer.unwrap().status, 200);
        }
        assert_eq!(versions(&endpoint), vec![http::Version::HTTP_2; 6]);
        assert_eq!(endpoint.tls_connections(), 1);
    }

    #[tokio::test]
    async fn https_endpoints_without_http2_get_http1() {
        let endpoint = tls_endpoint(Alpn::Http1Only).await;
        let out = trusting_outbound(&[]);
        let answer = post(&out, &endpoint.url()).await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        assert_eq!(versions(&endpoint), vec![http::Version::HTTP_11]);
    }

    #[tokio::test]
    async fn http2_can_be_turned_off() {
        let endpoint = tls_endpoint(Alpn::Http2AndHttp1).await;
        let out = trusting_outbound(&[("HERALD_OUTBOUND_HTTP2", "false")]);
        assert_eq!(post(&out, &endpoint.url()).await.unwrap().status, 200);
        assert_eq!(versions(&endpoint), vec![http::Version::HTTP_11]);
    }

    #[tokio::test]
    async fn an_endpoint_whose_certificate_no_trusted_ca_signed_gets_nothing() {
        let endpoint = tls_endpoint(Alpn::Http2AndHttp1).await;
        // The Web PKI's roots only: the test CA is not among them.
        let out = outbound(&[("HERALD_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8")]);
        match post(&out, &endpoint.url()).await {
            Err(NoAnswer::Failed(error)) => {
                assert!(error.contains("certificate"), "{error}");
                assert!(!error.contains("127.0.0.1"), "no URL: {error}");
            }
            other => panic!("sent despite an untrusted certificate: {other:?}"),
        }
        assert_eq!(endpoint.count(), 0);
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let config =
            |path: &str| Config::from_env(&Env::from_pairs([("HERALD_OUTBOUND_CA_FILE", path)]));
        let trusted = config(&herald_tests::test_ca_file()).unwrap();
        assert_eq!(trusted.outbound_roots.len(), 1);
        let missing = config("/nonexistent/ca.pem").unwrap_err().to_string();
        assert!(
            missing.contains("HERALD_OUTBOUND_CA_FILE") && missing.contains("cannot read it"),
            "{missing}"
        );
        // A file without a certificate (here: a key) is refused too.
        let key = config(&herald_tests::receiver::tls_file("localhost-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(key.contains("no certificate in it"), "{key}");
    }

    #[tokio::test]
    async fn ip_literals_and_plain_http_are_refused_before_sending() {
        let out = outbound(&[("HERALD_REQUIRE_HTTPS", "true")]);
        for (url, needle) in [
            ("https://127.0.0.1/", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://[::ffff:169.254.169.254]/", "metadata"),
            ("https://10.0.0.1:8443/", "private"),
            ("http://example.com/", "only over https"),
        ] {
            let refused = out.preflight(&parsed(url)).await.unwrap_err();
            assert!(refused.0.contains(needle), "{url}: {refused}");
        }
        assert_eq!(out.preflight(&parsed("https://example.com/")).await, Ok(()));
    }

    #[tokio::test]
    async fn through_a_proxy_the_preflight_resolves_the_destination() {
        let out = outbound(&[("HERALD_OUTBOUND_PROXY", "http://127.0.0.1:3128")]);
        let refused = out
            .preflight(&parsed("http://localhost/hook"))
            .await
            .unwrap_err();
        assert!(
            refused
                .0
                .starts_with("localhost resolves to a refused address")
        );
    }
}
