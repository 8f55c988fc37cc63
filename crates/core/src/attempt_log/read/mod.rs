//! Reading the log back: an event's attempts ([`event`]), an endpoint's
//! attempts ([`endpoint`]), and what both parse batches with.

mod endpoint;
mod event;

use super::AttemptRecord;
use crate::redis_store::StoreError;

/// One reply of a pipeline, as `T`.
pub(super) fn decode<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// The records of one event in one batch (one per line).
pub(super) fn parse_lines(lines: &str) -> Result<Vec<AttemptRecord>, StoreError> {
    parse_lines_with(lines, "")
}

/// Those records of one event in one batch whose line holds `needle`.
pub(super) fn parse_lines_with(
    lines: &str,
    needle: &str,
) -> Result<Vec<AttemptRecord>, StoreError> {
    lines
        .split('\n')
        .filter(|json| json.contains(needle))
        .map(|json| serde_json::from_str(json).map_err(StoreError::from))
        .collect()
}
