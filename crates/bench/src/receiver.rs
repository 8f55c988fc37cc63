//! The benchmark's webhook receiver: an HTTP server on 127.0.0.1 that
//! verifies every webhook's signature and notes when it arrived. Plain
//! HTTP/1.1 by default; with `--tls`, https with the test suite's
//! certificate (`tests/support/tls`, whose CA Herald is then told to trust),
//! offering HTTP/2 and HTTP/1.1 or HTTP/1.1 only.
//!
//! Endpoint `i` of the benchmark is `POST /e/{i}`. `POST /raw` answers without
//! looking at the request; the receiver baseline loads it to find how many
//! POSTs per second this machine can serve at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald_core::signing::{self, Secret};

/// One verified webhook.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Index of the endpoint it was sent to.
    pub endpoint: usize,
    /// Its `webhook-id`, which is the event id.
    pub event_id: String,
    /// When the receiver had read it.
    pub at: Instant,
}

/// Webhooks (or records) that arrived, in arrival order. The receiver fills
/// one; the broker baseline's consumer fills another, so both are measured by
/// the same code.
#[derive(Debug, Default)]
pub struct Arrivals {
    list: Mutex<Vec<Arrival>>,
}

impl Arrivals {
    /// Notes one arrival.
    pub fn push(&self, arrival: Arrival) {
        self.list.lock().expect("arrivals lock").push(arrival);
    }

    /// Number of arrivals so far.
    pub fn count(&self) -> usize {
        self.list.lock().expect("arrivals lock").len()
    }

    /// Arrivals from position `from` on (positions only grow).
    pub fn since(&self, from: usize) -> Vec<Arrival> {
        let list = self.list.lock().expect("arrivals lock");
        list.get(from..)
            .map(<[Arrival]>::to_vec)
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct EndpointSlot {
    secret: Option<Secret>,
    failing: AtomicBool,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    endpoints: RwLock<Vec<Arc<EndpointSlot>>>,
    /// How long every endpoint takes to answer, in milliseconds.
    answer_delay_ms: AtomicU64,
    arrivals: Arrivals,
    invalid_signatures: AtomicU64,
}

/// A running receiver; it stops with the process.
#[derive(Debug, Clone)]
pub struct Receiver {
    base_url: String,
    shared: Arc<Shared>,
}

/// What an https receiver offers in the TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Tls {
    /// `h2`, then `http/1.1`: Herald's dispatchers take HTTP/2.
    Http2,
    /// `http/1.1` only.
    Http1,
}

/// A file of the test certificates the https receiver uses.
pub fn tls_file(name: &str) -> String {
    format!(
        "{}/../../tests/support/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

impl Receiver {
    /// Starts the receiver on a free port of 127.0.0.1: plain HTTP/1.1, or
    /// https offering `tls`.
    pub async fn start(tls: Option<Tls>) -> Result<Receiver, String> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/e/{index}", post(receive))
            .route("/raw", post(raw))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let Some(tls) = tls else {
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, app).await {
                    eprintln!("receiver stopped: {err}");
                }
            });
            return Ok(Receiver {
                base_url: format!("http://{addr}"),
                shared,
            });
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(tls)?));
        tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        // Out of file descriptors, most likely: wait for
                        // some to close rather than spin.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Ok(Receiver {
            base_url: format!("https://{addr}"),
            shared,
        })
    }

    /// The URL of endpoint `index`.
    pub fn endpoint_url(&self, index: usize) -> String {
        format!("{}/e/{index}", self.base_url)
    }

    /// The URL the receiver baseline posts to.
    pub fn raw_url(&self) -> String {
        format!("{}/raw", self.base_url)
    }

    /// Adds an endpoint (index = number added before) with its secret.
    pub fn add_endpoint(&self, secret: Secret) -> usize {
        let mut endpoints = self.shared.endpoints.write().expect("receiver lock");
        endpoints.push(Arc::new(EndpointSlot {
            secret: Some(secret),
            ..EndpointSlot::default()
        }));
        endpoints.len() - 1
    }

    /// Number of endpoints added so far (the next one's index).
    pub fn endpoints(&self) -> usize {
        self.shared.endpoints.read().expect("receiver lock").len()
    }

    /// Makes endpoint `index` answer 500 to everything (or stop doing so).
    pub fn set_failing(&self, index: usize, failing: bool) {
        if let Some(slot) = self.slot(index) {
            slot.failing.store(failing, Ordering::Relaxed);
        }
    }

    /// Makes every endpoint take `delay` to answer (after the webhook is
    /// counted as arrived), like real endpoints that do work before they
    /// answer.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.shared
            .answer_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// How many requests endpoint `index` refused while failing.
    pub fn refused(&self, index: usize) -> u64 {
        self.slot(index)
            .map_or(0, |slot| slot.refused.load(Ordering::Relaxed))
    }

    /// Webhooks whose signature did not verify (they are not counted as
    /// arrivals).
    pub fn invalid_signatures(&self) -> u64 {
        self.shared.invalid_signatures.load(Ordering::Relaxed)
    }

    /// The verified webhooks that arrived.
    pub fn arrivals(&self) -> &Arrivals {
        &self.shared.arrivals
    }

    fn slot(&self, index: usize) -> Option<Arc<EndpointSlot>> {
        let endpoints = self.shared.endpoints.read().expect("receiver lock");
        endpoints.get(index).cloned()
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(slot) = shared
        .endpoints
        .read()
        .expect("receiver lock")
        .get(index)
        .cloned()
    else {
        return StatusCode::NOT_FOUND;
    };
    if slot.failing.load(Ordering::Relaxed) {
        slot.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) else {
        shared.invalid_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    };
    let valid = slot
        .secret
        .as_ref()
        .is_some_and(|secret| signing::verify(secret, id, timestamp, &body, signature));
    if !valid {
        shared.invalid_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let arrival = Arrival {
        endpoint: index,
        event_id: id.to_owned(),
        at: Instant::now(),
    };
    shared.arrivals.push(arrival);
    let delay_ms = shared.answer_delay_ms.load(Ordering::Relaxed);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    StatusCode::NO_CONTENT
}

/// The https receiver's TLS: the test certificate for 127.0.0.1, `tls`'s
/// protocols offered.
fn server_tls(tls: Tls) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(tls_file("localhost.pem"))
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("the test certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(tls_file("localhost-key.pem"))
        .map_err(|e| format!("the test key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|c| c.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = match tls {
        Tls::Http2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Tls::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

async fn raw(_body: Bytes) -> StatusCode {
    StatusCode::NO_CONTENT
}
