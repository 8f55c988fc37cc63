//! End-to-end tests: the real Herald binaries against a real broker, a real
//! Redis and real HTTP receivers. Run them with `scripts/test`.

mod api_errors;
mod api_keys;
mod applications;
mod backpressure;
mod batch;
mod bench;
mod breaker;
mod broker;
mod broker_failure;
mod console;
mod crash;
mod hostile;
mod idempotency;
mod local_stack;
mod malformed_records;
mod metrics;
mod openapi;
mod outbound;
mod rate_limit;
mod redis_outage;
mod replicas;
mod retries;
mod rotation;
mod routing;
mod schemathesis;
mod tracing;
