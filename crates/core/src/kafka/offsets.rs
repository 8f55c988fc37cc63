//! Which offsets may be stored: a watermark per partition.
//!
//! Records are processed concurrently and finish in any order, but a Kafka
//! offset says "everything before me is done". So an offset is released only
//! when every record before it on its partition has finished. A crash then
//! re-delivers at most the records that were in flight, never skips one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A topic and partition.
pub type TopicPartition = (Arc<str>, i32);

/// Proof that a record was started, handed back when it finishes.
#[derive(Debug)]
pub struct Ticket {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    generation: u64,
}

impl Ticket {
    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// How a record's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effects are durable: its offset may be stored.
    Done,
    /// It was not finished (the process is stopping): its offset, and every
    /// later one on the partition, must stay unstored so that the next owner
    /// of the partition processes it again.
    Abandoned,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Bumped on each assignment, so that a record started under an old
    /// assignment cannot move the watermark of a new one.
    generation: u64,
    assigned: bool,
    in_flight: BTreeSet<i64>,
    /// Lowest and highest offsets started in this assignment.
    lowest_started: Option<i64>,
    highest_started: Option<i64>,
    /// Lowest abandoned offset: nothing at or after it may be stored.
    blocked_at: Option<i64>,
    /// Highest offset already handed out for storing.
    released: Option<i64>,
}

impl PartitionState {
    /// The highest offset through which every record is done.
    fn done_through(&self) -> Option<i64> {
        let highest = self.highest_started?;
        let first_open = [self.in_flight.first().copied(), self.blocked_at]
            .into_iter()
            .flatten()
            .min();
        match first_open {
            // Nothing of this assignment is done yet.
            Some(open) if Some(open) <= self.lowest_started => None,
            // Never past what was started: a block can lie beyond it.
            Some(open) => Some((open - 1).min(highest)),
            None => Some(highest),
        }
    }
}

/// Tracks in-flight records of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<TopicPartition, PartitionState>>,
    finished: Condvar,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicPartition, PartitionState>> {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Partitions were assigned: start them afresh.
    pub fn assign(&self, partitions: &[TopicPartition]) {
        let mut map = self.lock();
        for tp in partitions {
            let state = map.entry(tp.clone()).or_default();
            *state = PartitionState {
                generation: state.generation + 1,
                assigned: true,
                ..Default::default()
            };
        }
    }

    /// Partitions were revoked: forget them. Records still in flight on them
    /// will be ignored when they finish.
    pub fn revoke(&self, partitions: &[TopicPartition]) {
        let mut map = self.lock();
        for tp in partitions {
            if let Some(state) = map.get_mut(tp) {
                state.assigned = false;
                state.in_flight.clear();
            }
        }
        self.finished.notify_all();
    }

    /// A record is about to be processed. `None` when its partition is not
    /// assigned (the record must then be skipped: its new owner handles it).
    pub fn start(&self, topic: &str, partition: i32, offset: i64) -> Option<Ticket> {
        let mut map = self.lock();
        let (key, state) = map
            .iter_mut()
            .find(|((t, p), _)| &**t == topic && *p == partition)?;
        if !state.assigned {
            return None;
        }
        state.in_flight.insert(offset);
        state.highest_started = Some(state.highest_started.map_or(offset, |h| h.max(offset)));
        state.lowest_started = Some(state.lowest_started.map_or(offset, |l| l.min(offset)));
        Some(Ticket {
            topic: key.0.clone(),
            partition,
            offset,
            generation: state.generation,
        })
    }

    /// Nothing at or after `offset` on the partition may be stored in this
    /// assignment: its records from there on were dropped unprocessed (see
    /// [`super::holds`]), so the next assignment must read them again.
    pub fn block_from(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.lock();
        if let Some((_, state)) = map
            .iter_mut()
            .find(|((t, p), _)| &**t == topic && *p == partition)
        {
            state.blocked_at = Some(state.blocked_at.map_or(offset, |b| b.min(offset)));
        }
    }

    /// A record finished.
    pub fn finish(&self, ticket: Ticket, outcome: Outcome) {
        let mut map = self.lock();
        if let Some(state) = map.get_mut(&(ticket.topic, ticket.partition))
            && state.assigned
            && state.generation == ticket.generation
        {
            state.in_flight.remove(&ticket.offset);
            if outcome == Outcome::Abandoned {
                state.blocked_at = Some(
                    state
                        .blocked_at
                        .map_or(ticket.offset, |b| b.min(ticket.offset)),
                );
            }
        }
        self.finished.notify_all();
    }

    /// For each partition whose watermark moved since the last call (among
    /// `only`, or all when `None`): the offset through which every record
    /// is done. Store these with `rd_kafka_offset_store` semantics (it
    /// commits `offset + 1`).
    pub fn take_releasable(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for (tp, state) in map.iter_mut() {
            if !state.assigned || only.is_some_and(|only| !only.contains(tp)) {
                continue;
            }
            if let Some(done) = state.done_through()
                && state.released.is_none_or(|r| done > r)
            {
                state.released = Some(done);
                out.push((tp.clone(), done));
            }
        }
        out
    }

    /// Number of records in flight (on `only`, or on every partition).
    pub fn in_flight(&self, only: Option<&[TopicPartition]>) -> usize {
        Self::count(&self.lock(), only)
    }

    fn count(
        map: &HashMap<TopicPartition, PartitionState>,
        only: Option<&[TopicPartition]>,
    ) -> usize {
        map.iter()
            .filter(|(tp, _)| only.is_none_or(|only| only.contains(tp)))
            .map(|(_, s)| s.in_flight.len())
            .sum()
    }

    /// Blocks until nothing is in flight on `only` (or anywhere), or until
    /// `timeout`. Returns whether everything finished.
    pub fn wait_idle(&self, only: Option<&[TopicPartition]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut map = self.lock();
        loop {
            if Self::count(&map, only) == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            map = self
                .finished
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        (Arc::from("t"), p)
    }

    #[test]
    fn the_watermark_waits_for_the_oldest_record() {
        let tracker = OffsetTracker::new();
        tracker.assign(&[tp(0)]);
        let a = tracker.start("t", 0, 10).unwrap();
        let b = tracker.start("t", 0, 11).unwrap();
        let c = tracker.start("t", 0, 12).unwrap();
        tracker.finish(c, Outcome::Done);
        tracker.finish(b, Outcome::Done);
        // 10 is still running: nothing of this assignment can be stored.
        assert!(tracker.take_releasable(None).is_empty());
        tracker.finish(a, Outcome::Done);
        assert_eq!(tracker.take_releasable(None), vec![(tp(0), 12)]);
        // Nothing new: nothing to release.
        assert!(tracker.take_releasable(None).is_empty());
    }

    #[test]
    fn an_abandoned_record_blocks_everything_after_it() {
        let tracker = OffsetTracker::new();
        tracker.assign(&[tp(0)]);
        let a = tracker.start("t", 0, 5).unwrap();
        let b = tracker.start("t", 0, 6).unwrap();
        let c = tracker.start("t", 0, 7).unwrap();
        tracker.finish(a, Outcome::Done);
        tracker.finish(b, Outcome::Abandoned);
        tracker.finish(c, Outcome::Done);
        assert_eq!(tracker.take_releasable(None), vec![(tp(0), 5)]);
        assert_eq!(tracker.in_flight(None), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let tracker = OffsetTracker::new();
        tracker.assign(&[tp(0), tp(1)]);
        let _slow = tracker.start("t", 0, 0).unwrap();
        let fast = tracker.start("t", 1, 0).unwrap();
        tracker.finish(fast, Outcome::Done);
        assert_eq!(tracker.take_releasable(None), vec![(tp(1), 0)]);
    }

    #[test]
    fn records_of_a_revoked_assignment_are_ignored() {
        let tracker = OffsetTracker::new();
        tracker.assign(&[tp(0)]);
        let old = tracker.start("t", 0, 3).unwrap();
        tracker.revoke(&[tp(0)]);
        assert!(tracker.start("t", 0, 4).is_none());
        tracker.assign(&[tp(0)]);
        tracker.finish(old, Outcome::Done);
        assert!(tracker.take_releasable(None).is_empty());
        let fresh = tracker.start("t", 0, 3).unwrap();
        tracker.finish(fresh, Outcome::Done);
        assert_eq!(tracker.take_releasable(None), vec![(tp(0), 3)]);
    }

    #[test]
    fn wait_idle_returns_when_work_finishes() {
        let tracker = Arc::new(OffsetTracker::new());
        tracker.assign(&[tp(0)]);
        let ticket = tracker.start("t", 0, 1).unwrap();
        assert!(!tracker.wait_idle(None, Duration::from_millis(20)));
        let background = {
            let tracker = tracker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tracker.finish(ticket, Outcome::Done);
            })
        };
        assert!(tracker.wait_idle(None, Duration::from_secs(5)));
        background.join().unwrap();
    }
}
