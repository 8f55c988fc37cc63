//! Step 3: whether a delivery may go now, decided in one place and in one
//! order. Each step holds only what the steps before it took:
//!
//! 1. **A slot of the endpoint** (`HERALD_ENDPOINT_MAX_IN_FLIGHT` per
//!    replica), waited for while holding nothing else: deliveries queued for
//!    a busy endpoint take none of the replica's request slots, so other
//!    endpoints' deliveries go ahead of them.
//! 2. **The circuit breaker**, asked only once the endpoint slot is held, so
//!    that deliveries queued behind a failing endpoint see the breaker open
//!    instead of all having been let through while it was closed. Open: the
//!    delivery is put off.
//! 3. **The rate limit**: the delivery reserves the endpoint's next free
//!    moment ([`herald_core::rate_limit::RateLimiter::take`]). Within
//!    [`MAX_WAIT_IN_PLACE`] it waits for it holding only its endpoint slot;
//!    further off, it is put off until that moment through a retry tier and
//!    comes back with the moment reserved (`Delivery.rate_slot_ms`). So a
//!    backlog for a rate-limited endpoint is lined up in one pass and holds
//!    no request slot while it waits. Deliveries that come back from their
//!    tiers late, together, are spaced again in the same Redis call, an
//!    interval after the request sent before them by any replica, so they
//!    do not reach the endpoint as a burst. Every moment is on Redis's
//!    clock, and waits are handed back relative, so the replicas' clocks
//!    may differ.
//! 4. **A request slot** of the replica (`HERALD_DISPATCHER_MAX_IN_FLIGHT`),
//!    held for the HTTP call only.
//!
//! A probe of a half-open breaker that is not made after all (put off by the
//! rate limit, or the process stopping) is handed back at once, so that the
//! next delivery probes. Without Redis, breakers are skipped (as if closed),
//! each replica spaces an endpoint's requests by itself ([`LocalSpacing`]),
//! and [`RedisHealth`] says so once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_core::circuit::{Breakers, Permission};
use herald_core::endpoint::ResolvedEndpoint;
use herald_core::metrics::{BreakerState, metrics};
use herald_core::proto::Delivery;
use herald_core::rate_limit::{Clock, RateLimiter, RateSlot};
use herald_core::redis_store::StoreError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::now_ms;

/// The longest a delivery waits for its rate-limit moment in place (holding
/// its endpoint slot and a slot of the consumer's window); a moment further
/// off is waited for in a retry tier.
pub const MAX_WAIT_IN_PLACE: Duration = Duration::from_secs(1);

/// What [`Gate::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Send it now, holding these slots.
    Go(Admitted),
    /// Put it off until `until_ms` (Unix milliseconds), without an attempt.
    PutOff {
        /// The earliest moment it may go.
        until_ms: i64,
        /// What puts it off.
        by: PutOffBy,
    },
    /// The process is stopping.
    Stopping,
}

/// What put a delivery off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOffBy {
    /// The endpoint's circuit breaker is open (or another replica probes).
    Breaker,
    /// The endpoint's rate limit: the moment is reserved for it.
    RateLimit {
        /// The moment, on the limiter's clock (`Delivery.rate_slot_ms`).
        moment_ms: i64,
    },
    /// The requests sent before it (late ones back from their tiers) are
    /// too far ahead to wait in place: no moment is held, a new one is
    /// reserved when it comes back.
    Pacing,
}

/// A delivery let through: the slots it holds until its attempt ends.
#[derive(Debug)]
pub struct Admitted {
    _endpoint_slot: OwnedSemaphorePermit,
    _request_slot: OwnedSemaphorePermit,
    /// When this delivery probes a half-open breaker: when the probe was
    /// granted (the key to hand it back).
    pub probe: Option<i64>,
}

/// Whether Redis answers; logs each change once.
#[derive(Debug, Default)]
pub struct RedisHealth {
    degraded: AtomicBool,
}

impl RedisHealth {
    /// A Redis call failed.
    pub fn fails(&self, err: &StoreError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "Redis does not answer: delivering as if every circuit were closed, with rate limits kept by each replica alone, until it does");
        }
    }

    /// A Redis call succeeded.
    pub fn answers(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: circuit breakers and rate limits are back");
        }
    }
}

/// Admission to the HTTP call, shared by every in-flight delivery of a
/// replica.
#[derive(Debug)]
pub struct Gate {
    slots: EndpointSlots,
    /// Webhook requests in flight in this replica, across both consumers.
    requests: Arc<Semaphore>,
    breakers: Breakers,
    limiter: RateLimiter,
    local_spacing: LocalSpacing,
    redis: Arc<RedisHealth>,
    abandon: CancellationToken,
}

impl Gate {
    /// A gate with `max_requests` request slots and `per_endpoint` slots
    /// per endpoint; `abandon` gives up every wait.
    pub fn new(
        max_requests: usize,
        per_endpoint: usize,
        breakers: Breakers,
        limiter: RateLimiter,
        redis: Arc<RedisHealth>,
        abandon: CancellationToken,
    ) -> Self {
        Self {
            slots: EndpointSlots::new(per_endpoint),
            requests: Arc::new(Semaphore::new(max_requests)),
            breakers,
            limiter,
            local_spacing: LocalSpacing::default(),
            redis,
            abandon,
        }
    }

    /// The breakers (the attempt's result is recorded in them).
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Decides whether `delivery` may go to `endpoint` now, in the order the
    /// module documents.
    pub async fn admit(&self, endpoint: &ResolvedEndpoint, delivery: &Delivery) -> Admission {
        let endpoint_id = &*endpoint.id;
        let Some(endpoint_slot) = self.unless_abandoned(self.slots.acquire(endpoint_id)).await
        else {
            return Admission::Stopping;
        };

        let asked_at_ms = now_ms();
        let probe = match self.breakers.acquire(endpoint_id, asked_at_ms).await {
            Ok(permission) => {
                self.redis.answers();
                match permission {
                    Permission::Deny { until_ms } => {
                        tracing::debug!(until_ms, "circuit open; delivery deferred");
                        return Admission::PutOff {
                            until_ms,
                            by: PutOffBy::Breaker,
                        };
                    }
                    Permission::Probe => Some(asked_at_ms),
                    Permission::Allow => None,
                }
            }
            Err(err) => {
                self.redis.fails(&err);
                None
            }
        };

        if let Some(per_second) = endpoint.rate_limit {
            let wait = match self.rate_slot(endpoint_id, per_second, delivery).await {
                RateSlot::SendIn(ms) => Duration::from_millis(ms),
                RateSlot::Reserved { moment_ms, in_ms } => {
                    tracing::debug!(in_ms, "rate limit reached; delivery deferred to its moment");
                    self.hand_back_probe(endpoint_id, probe).await;
                    return Admission::PutOff {
                        until_ms: now_ms() + in_ms as i64,
                        by: PutOffBy::RateLimit { moment_ms },
                    };
                }
                RateSlot::Crowded => {
                    // Too many came back together to space them in place:
                    // come back after a while and be spaced then.
                    self.hand_back_probe(endpoint_id, probe).await;
                    return Admission::PutOff {
                        until_ms: now_ms() + MAX_WAIT_IN_PLACE.as_millis() as i64,
                        by: PutOffBy::Pacing,
                    };
                }
            };
            if !wait.is_zero() {
                let paced = tokio::time::sleep(wait);
                if self.unless_abandoned(paced).await.is_none() {
                    self.hand_back_probe(endpoint_id, probe).await;
                    return Admission::Stopping;
                }
            }
        }

        let request = async {
            self.requests
                .clone()
                .acquire_owned()
                .await
                .expect("the request semaphore is never closed")
        };
        let Some(request_slot) = self.unless_abandoned(request).await else {
            self.hand_back_probe(endpoint_id, probe).await;
            return Admission::Stopping;
        };
        if probe.is_some() {
            metrics().breakers.set(endpoint_id, BreakerState::HalfOpen);
            tracing::info!("circuit half-open; this delivery probes the endpoint");
        }
        Admission::Go(Admitted {
            _endpoint_slot: endpoint_slot,
            _request_slot: request_slot,
            probe,
        })
    }

    /// Where the endpoint's rate limit puts `delivery`: decided in Redis on
    /// Redis's clock, across replicas; without Redis, spaced by this
    /// replica alone.
    async fn rate_slot(&self, endpoint_id: &str, per_second: u32, delivery: &Delivery) -> RateSlot {
        let max_wait_ms = MAX_WAIT_IN_PLACE.as_millis() as u64;
        let slot = self
            .limiter
            .take(
                endpoint_id,
                per_second,
                delivery.rate_slot_ms,
                max_wait_ms,
                Clock::Redis,
            )
            .await;
        match slot {
            Ok(slot) => {
                self.redis.answers();
                slot
            }
            Err(err) => {
                self.redis.fails(&err);
                self.local_spacing
                    .take(endpoint_id, per_second, MAX_WAIT_IN_PLACE)
            }
        }
    }

    /// Hands back a probe that will not be made, so that the next delivery
    /// to the endpoint probes at once rather than after the probe lease.
    /// Without Redis the lease simply runs out.
    pub async fn hand_back_probe(&self, endpoint_id: &str, probe: Option<i64>) {
        let Some(granted_at_ms) = probe else { return };
        match self
            .breakers
            .release_probe(endpoint_id, granted_at_ms)
            .await
        {
            Ok(_) => tracing::debug!("probe handed back"),
            Err(err) => self.redis.fails(&err),
        }
    }

    async fn unless_abandoned<T>(&self, wait: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = wait => Some(done),
            _ = self.abandon.cancelled() => None,
        }
    }
}

/// The rate limit while Redis does not answer: each endpoint's requests
/// spaced by this replica alone (so `n` replicas may together send up to `n`
/// times the limit), none reserved ahead. Better than no limit at all.
#[derive(Debug, Default)]
struct LocalSpacing {
    /// When each endpoint's next request may go.
    next_send: std::sync::Mutex<HashMap<String, Instant>>,
}

impl LocalSpacing {
    fn take(&self, endpoint_id: &str, per_second: u32, max_wait: Duration) -> RateSlot {
        let interval = Duration::from_secs(1) / per_second.max(1);
        let now = Instant::now();
        let mut next_send = self.next_send.lock().unwrap_or_else(|p| p.into_inner());
        if next_send.len() > 10_000 {
            next_send.retain(|_, at| *at > now);
        }
        let at = next_send.get(endpoint_id).map_or(now, |at| (*at).max(now));
        let wait = at - now;
        if wait > max_wait {
            return RateSlot::Crowded;
        }
        next_send.insert(endpoint_id.to_owned(), at + interval);
        RateSlot::SendIn(wait.as_millis() as u64)
    }
}

/// Per-endpoint caps on concurrent requests.
#[derive(Debug)]
struct EndpointSlots {
    per_endpoint: usize,
    semaphores: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointSlots {
    fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint,
            semaphores: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn acquire(&self, endpoint_id: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut map = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
            // Forget idle endpoints now and then, so the map does not grow
            // with every endpoint ever seen.
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < self.per_endpoint);
            }
            // Looked up by `&str` first: a key String only for a new one.
            match map.get(endpoint_id) {
                Some(semaphore) => semaphore.clone(),
                None => map
                    .entry(endpoint_id.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
                    .clone(),
            }
        };
        semaphore
            .acquire_owned()
            .await
            .expect("endpoint semaphores are never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_redis_a_replica_spaces_each_endpoints_requests_itself() {
        let spacing = LocalSpacing::default();
        let max_wait = MAX_WAIT_IN_PLACE;
        // 10/s: one every 100 ms; the first second's eleven wait in place,
        // the twelfth is crowded out (held nowhere, tried again later).
        let waits: Vec<RateSlot> = (0..12).map(|_| spacing.take("ep", 10, max_wait)).collect();
        for (n, slot) in waits[..11].iter().enumerate() {
            let RateSlot::SendIn(ms) = *slot else {
                panic!("request {n} was put {slot:?}");
            };
            // Instant::now() moves on between calls: each wait is at most
            // its turn, and at most a few ms short of it.
            let turn = 100 * n as u64;
            assert!(ms <= turn && ms + 20 >= turn, "request {n} waits {ms} ms");
        }
        assert_eq!(waits[11], RateSlot::Crowded);
        // Endpoints are spaced apart from each other.
        assert_eq!(spacing.take("other", 10, max_wait), RateSlot::SendIn(0));
    }
}
