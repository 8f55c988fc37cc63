//! The benchmark's webhook receiver: a plain HTTP server on 127.0.0.1 that
//! verifies every webhook's signature and notes when it arrived.
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

impl Receiver {
    /// Starts the receiver on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Receiver> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/e/{index}", post(receive))
            .route("/raw", post(raw))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("receiver stopped: {err}");
            }
        });
        Ok(Receiver {
            base_url: format!("http://{addr}"),
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

async fn raw(_body: Bytes) -> StatusCode {
    StatusCode::NO_CONTENT
}
