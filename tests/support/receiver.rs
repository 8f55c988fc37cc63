//! A real HTTP server on 127.0.0.1 that plays a webhook endpoint: it records
//! every request, checks its Standard Webhooks signature with an independent
//! implementation (the `standardwebhooks` crate), and answers as told. Plain
//! HTTP/1.1 ([`Receiver::start`]), or https with the test CA's certificate
//! speaking HTTP/2 and HTTP/1.1 ([`Receiver::start_tls`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt as _;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 to everything.
    Accept,
    /// `status` to the first `count` requests, then 200.
    FailFirst {
        /// How many to fail.
        count: usize,
        /// With which status.
        status: u16,
    },
    /// `status` to everything.
    AlwaysFail(u16),
    /// 200 after a pause.
    Slow(Duration),
    /// `status` with `Location: location`.
    Redirect {
        /// A 3xx status.
        status: u16,
        /// Where it points.
        location: String,
    },
    /// 200 when the signature verifies with the receiver's secret, 401
    /// otherwise: a receiver that knows only that secret.
    VerifySignature,
    /// 200 with a body that never ends; [`Receiver::endless_body`] tells
    /// how much of it was sent before the client hung up.
    EndlessBody,
    /// `status` with `body` (as `text/plain`).
    Reply {
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
}

/// What became of the endless bodies a receiver sent.
#[derive(Debug, Default)]
pub struct EndlessBodyState {
    /// Bytes handed to the connection so far.
    pub sent: AtomicU64,
    /// Whether a client hung up on one.
    pub closed: AtomicBool,
}

/// Marks the endless body closed when the server drops it.
struct ClosedOnDrop(Arc<EndlessBodyState>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/hook`.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// Whether its signature verified with the receiver's secret (false when
    /// no secret was set).
    pub signature_valid: bool,
    /// What the receiver answered.
    pub answered: u16,
    /// The HTTP version it came over.
    pub version: axum::http::Version,
}

impl Received {
    /// The `webhook-id` header.
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id")
    }

    /// A header as text (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Debug)]
struct Shared {
    behaviour: Behaviour,
    secret: Option<String>,
    received: Vec<Received>,
    endless: Arc<EndlessBodyState>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// https: the connections accepted so far.
    tls_connections: Option<Arc<AtomicU64>>,
}

/// What an https receiver offers in the TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2, then HTTP/1.1.
    Http2AndHttp1,
    /// HTTP/1.1 only.
    Http1Only,
}

/// A file of the test certificates (`tests/support/tls`).
pub fn tls_file(name: &str) -> String {
    format!("{}/support/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The test CA, for `HERALD_OUTBOUND_CA_FILE`.
pub fn test_ca_file() -> String {
    tls_file("ca.pem")
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let (shared, app, listener, addr) = Self::listen(behaviour).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            addr,
            shared,
            stop: Some(stop),
            tls_connections: None,
        }
    }

    /// The state answering as `behaviour`, its routes, and a listener on a
    /// free port of 127.0.0.1 with its address: what both kinds of
    /// receiver serve.
    async fn listen(
        behaviour: Behaviour,
    ) -> (
        Arc<Mutex<Shared>>,
        Router,
        tokio::net::TcpListener,
        SocketAddr,
    ) {
        let shared = Arc::new(Mutex::new(Shared {
            behaviour,
            secret: None,
            received: Vec::new(),
            endless: Arc::new(EndlessBodyState::default()),
        }));
        let app = Router::new()
            .route("/{*path}", post(receive))
            .route("/", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        (shared, app, listener, addr)
    }

    /// Starts an https receiver on a free port of 127.0.0.1, with the test
    /// CA's certificate for `localhost` and `127.0.0.1` ([`test_ca_file`]),
    /// offering `alpn`; it speaks whichever version the client does.
    pub async fn start_tls(behaviour: Behaviour, alpn: Alpn) -> Receiver {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(tls_file("localhost.pem"))
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("test certificate");
        let key = PrivateKeyDer::from_pem_file(tls_file("localhost-key.pem")).expect("test key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("test certificate and key");
        config.alpn_protocols = match alpn {
            Alpn::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (shared, app, listener, addr) = Self::listen(behaviour).await;
        let connections = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => {
                            // Out of file descriptors, most likely: wait for
                            // some to close rather than spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = &mut stopped => return,
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Receiver {
            addr,
            shared,
            stop: Some(stop),
            tls_connections: Some(connections),
        }
    }

    /// https: how many connections clients opened to it so far.
    pub fn tls_connections(&self) -> u64 {
        self.tls_connections
            .as_ref()
            .expect("an https receiver (Receiver::start_tls)")
            .load(Ordering::SeqCst)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        self.url_at("hook")
    }

    /// A URL under another path, to register several endpoints that all
    /// land here (their requests are told apart by [`Received::path`]).
    pub fn url_at(&self, path: &str) -> String {
        let scheme = if self.tls_connections.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/{path}", self.addr)
    }

    /// The secret to verify signatures with.
    pub fn set_secret(&self, secret: &str) {
        self.lock().secret = Some(secret.to_owned());
    }

    /// Changes how it answers from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("receiver lock")
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// How the endless bodies fared ([`Behaviour::EndlessBody`]).
    pub fn endless_body(&self) -> Arc<EndlessBodyState> {
        self.lock().endless.clone()
    }

    /// Number of requests received.
    pub fn count(&self) -> usize {
        self.lock().received.len()
    }

    /// How many requests were answered 2xx.
    pub fn accepted_count(&self) -> usize {
        self.lock()
            .received
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count()
    }

    /// For each webhook-id, how many requests carried it.
    pub fn id_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.lock().received.iter() {
            *counts.entry(r.webhook_id()).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until every one of `ids` was answered 2xx at least once, up to
    /// `limit`.
    pub async fn wait_until_delivered(&self, ids: &[String], limit: Duration) -> bool {
        crate::eventually(limit, || {
            let delivered: std::collections::HashSet<String> = self
                .received()
                .into_iter()
                .filter(|r| (200..300).contains(&r.answered))
                .map(|r| r.webhook_id())
                .collect();
            ids.iter().all(|id| delivered.contains(id))
        })
        .await
    }

    /// Waits until requests with `n` distinct `webhook-id`s arrived (up to
    /// `limit`): every event at least once, duplicates aside. Returns how
    /// many distinct ids arrived.
    pub async fn wait_for_distinct(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.id_counts().len();
            if seen >= n || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until at least `n` requests arrived, up to `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        crate::eventually(limit, || self.count() >= n).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn receive(
    State(shared): State<Arc<Mutex<Shared>>>,
    version: axum::http::Version,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (answer, delay, extra) = {
        let mut shared = shared.lock().expect("receiver lock");
        let signature_valid = shared.secret.as_deref().is_some_and(|secret| {
            standardwebhooks::Webhook::new(secret)
                .and_then(|hook| hook.verify(&body, &headers))
                .is_ok()
        });
        let seen = shared.received.len();
        let (answer, delay, extra) = match &shared.behaviour {
            Behaviour::Accept => (200, None, Extra::None),
            Behaviour::FailFirst { count, status } => {
                (if seen < *count { *status } else { 200 }, None, Extra::None)
            }
            Behaviour::AlwaysFail(status) => (*status, None, Extra::None),
            Behaviour::Slow(delay) => (200, Some(*delay), Extra::None),
            Behaviour::Redirect { status, location } => {
                (*status, None, Extra::Location(location.clone()))
            }
            Behaviour::VerifySignature => {
                (if signature_valid { 200 } else { 401 }, None, Extra::None)
            }
            Behaviour::EndlessBody => (200, None, Extra::Endless(shared.endless.clone())),
            Behaviour::Reply { status, body } => (*status, None, Extra::Body(body.clone())),
        };
        shared.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
            signature_valid,
            answered: answer,
            version,
        });
        (answer, delay, extra)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(answer).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match extra {
        Extra::None => status.into_response(),
        Extra::Location(location) => (status, [("location", location)]).into_response(),
        Extra::Body(body) => (status, body).into_response(),
        Extra::Endless(state) => {
            let guard = ClosedOnDrop(state);
            let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
            let stream = futures::stream::repeat(chunk).map(move |chunk| {
                guard.0.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                Ok::<_, std::io::Error>(chunk)
            });
            (status, Body::from_stream(stream)).into_response()
        }
    }
}

/// What goes into a response besides its status.
enum Extra {
    None,
    Body(String),
    Location(String),
    Endless(Arc<EndlessBodyState>),
}
