//! When an endpoint's log is trimmed: not on every write.
//!
//! Trimming every endpoint's log on every write cost two commands per
//! endpoint and batch beside its entry and its expiry (to the
//! retention, to the bound): half the commands of a batch, at any fan-out.
//! Each writer now trims a log to its bound once it has added a tenth of the
//! bound to it since it last did, and to the retention once a
//! [`UPKEEP_INTERVAL`]. A log the writer has not trimmed yet (since it
//! started, or since it forgot the log) is trimmed on its first write. So a
//! log may hold up to a tenth more than its bound per dispatcher writing to
//! it, between trims, and entries past the retention for up to an
//! interval longer; both leave at the next trim. (The expiry is still
//! renewed on every write: a log emptied by a read is gone, and the next
//! entry makes it again, without one.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a writer trims an endpoint's log to the retention period (at
/// most: only when it writes to the log).
pub(super) const UPKEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Most logs a writer remembers the trims of. Past that, those not trimmed
/// to the retention within the interval are forgotten (and trimmed on their
/// next write, as if new); when that frees less than a quarter, all are.
const REMEMBERED: usize = 50_000;

/// What a writer knows of the logs it writes to.
#[derive(Debug, Default)]
pub(super) struct Upkeep {
    logs: Mutex<HashMap<Arc<str>, Trimmed>>,
}

/// What a writer did to one log since it last trimmed it.
#[derive(Debug, Clone, Copy)]
struct Trimmed {
    /// Entries added since the log was last trimmed to its bound.
    added: u64,
    /// When it was last trimmed to the retention period.
    at_ms: i64,
}

/// Which trims a write of one log includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    /// Drop all but the newest `bound` entries.
    pub bound: bool,
    /// Drop those past the retention period.
    pub retention: bool,
}

impl Upkeep {
    /// Which trims a write of `added` entries to `endpoint`'s log, at
    /// `now_ms`, includes, for a log of at most `bound` entries; counts them
    /// as done.
    pub(super) fn due(&self, endpoint: &Arc<str>, added: usize, now_ms: i64, bound: u64) -> Due {
        let slack = (bound / 10).max(1);
        let interval_ms = UPKEEP_INTERVAL.as_millis() as i64;
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() >= REMEMBERED && !logs.contains_key(endpoint) {
            logs.retain(|_, t| now_ms.saturating_sub(t.at_ms) < interval_ms);
            // Not again for every new log: a quarter free at least.
            if logs.len() >= REMEMBERED / 4 * 3 {
                logs.clear();
            }
        }
        let Some(trimmed) = logs.get_mut(endpoint) else {
            logs.insert(
                endpoint.clone(),
                Trimmed {
                    added: 0,
                    at_ms: now_ms,
                },
            );
            return Due {
                bound: true,
                retention: true,
            };
        };
        trimmed.added += added as u64;
        let bound_due = trimmed.added >= slack;
        if bound_due {
            trimmed.added = 0;
        }
        // A clock that went back (another replica's, a step) makes it due
        // rather than put it off until the clock catches up.
        let retention_due =
            now_ms < trimmed.at_ms || now_ms.saturating_sub(trimmed.at_ms) >= interval_ms;
        if retention_due {
            trimmed.at_ms = now_ms;
        }
        Due {
            bound: bound_due,
            retention: retention_due,
        }
    }

    /// Forgets every log (a write failed, so its trims may not have run).
    pub(super) fn forget(&self) {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_trimmed_first_then_every_tenth_of_its_bound_and_every_interval() {
        let upkeep = Upkeep::default();
        let ep: Arc<str> = Arc::from("ep");
        let both = Due {
            bound: true,
            retention: true,
        };
        let neither = Due {
            bound: false,
            retention: false,
        };
        assert_eq!(upkeep.due(&ep, 50, 0, 1000), both, "first write");
        assert_eq!(upkeep.due(&ep, 50, 1, 1000), neither);
        let bound_only = Due {
            bound: true,
            retention: false,
        };
        assert_eq!(upkeep.due(&ep, 50, 2, 1000), bound_only, "100 added");
        assert_eq!(upkeep.due(&ep, 99, 3, 1000), neither);
        let interval = UPKEEP_INTERVAL.as_millis() as i64;
        assert_eq!(
            upkeep.due(&ep, 0, interval, 1000),
            Due {
                bound: false,
                retention: true,
            }
        );
        // A bound of 3 is trimmed on every write.
        let small: Arc<str> = Arc::from("small");
        upkeep.due(&small, 1, 0, 3);
        assert_eq!(upkeep.due(&small, 1, 1, 3), bound_only);
        assert_eq!(
            upkeep.due(&ep, 0, interval - 10, 1000),
            Due {
                bound: false,
                retention: true,
            },
            "the clock went back"
        );
        upkeep.forget();
        assert_eq!(upkeep.due(&ep, 1, interval + 1, 1000), both, "forgotten");
    }

    #[test]
    fn past_its_memory_a_writer_forgets_the_logs_it_trimmed_longest_ago() {
        let upkeep = Upkeep::default();
        for n in 0..REMEMBERED {
            upkeep.due(&Arc::from(format!("ep_{n}")), 1, 0, 1000);
        }
        let interval = UPKEEP_INTERVAL.as_millis() as i64;
        upkeep.due(&Arc::from("recent"), 1, interval, 1000);
        let logs = upkeep.logs.lock().unwrap();
        assert_eq!(logs.len(), 1, "only the one trimmed within the interval");
    }
}
