//! Partitions held back by the consumer loop, with the records it was
//! already handed for them.
//!
//! A partition is held when its next record cannot start: it is not due yet
//! (a retry tier), or the in-flight window is full. The record is kept here,
//! in memory, and the partition is paused. librdkafka then drops what it
//! fetched ahead for that partition and, on resume, fetches again from the
//! record after the last one it handed out — which is the last record kept
//! here. So no record is ever fetched past and forgotten: everything handed
//! out is either started or kept, in order, and nothing is rewound with a
//! `seek`.
//!
//! A record due within [`SHORT_WAIT`] holds its partition without pausing
//! it: the records behind it go on arriving and are kept too (up to
//! [`SHORT_HOLD_RECORDS`]). A retry tier whose records come due moments
//! apart (a rate-limited endpoint's backlog) would otherwise cost a pause,
//! a resume and a fresh fetch per record, each later than the one before.
//!
//! Every failure of the client ends in a state that loses nothing:
//! - a failed `pause` leaves the partition flowing; whatever arrives for it
//!   is kept behind the held record, and the pause is tried again;
//! - a failed `resume` keeps the partition held (its records stay kept) and
//!   is tried again;
//! - a partition whose pause or resume keeps failing for
//!   [`GIVE_UP_AFTER`], or whose kept records pass [`MAX_KEPT_RECORDS`], is
//!   given up: its kept records are dropped, nothing from its first dropped
//!   record on is ever stored ([`super::offsets::OffsetTracker::block_from`]),
//!   later records of it are ignored, and the consumer rejoins its group so
//!   that the partition is read again from its committed offset.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;

use super::offsets::TopicPartition;

/// How long a pause or resume may keep failing before the partition is
/// given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Most records kept for one held partition whose pause did not take
/// effect; past it the partition is given up rather than memory spent.
pub const MAX_KEPT_RECORDS: usize = 10_000;

/// A partition whose next record is due within this is held without a
/// pause.
pub const SHORT_WAIT: Duration = Duration::from_secs(2);

/// Most records kept for a partition held without a pause; past it, it is
/// paused. Kept records are out of librdkafka's prefetch budget, so this is
/// what bounds their memory: a dispatcher reads about 90 tier partitions
/// (7 tiers × 12), 100 records of about 1 KiB each is some 9 MiB at most,
/// and 100 covers the 2 s of a tier whose records come due 50 a second.
pub const SHORT_HOLD_RECORDS: usize = 100;

/// How soon a failed pause or resume is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What holding partitions back needs from the Kafka client; a trait so
/// that the client's failures can be injected in tests.
pub trait PartitionControl {
    /// Stops fetching the partition.
    fn pause(&self, topic: &str, partition: i32) -> KafkaResult<()>;
    /// Fetches the partition again, from the record after the last one
    /// handed out.
    fn resume(&self, topic: &str, partition: i32) -> KafkaResult<()>;
}

impl<C: ConsumerContext> PartitionControl for BaseConsumer<C> {
    fn pause(&self, topic: &str, partition: i32) -> KafkaResult<()> {
        Consumer::pause(self, &single(topic, partition))
    }

    fn resume(&self, topic: &str, partition: i32) -> KafkaResult<()> {
        Consumer::resume(self, &single(topic, partition))
    }
}

fn single(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// What a held partition waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Its first kept record is due at this moment.
    Due(Instant),
    /// The in-flight window has room.
    Room,
}

/// What became of a record offered to the window.
#[derive(Debug)]
pub enum Admit {
    /// It started.
    Started,
    /// It may not start before this moment; here it is back.
    NotDue(Instant, OwnedMessage),
    /// The window is full; here it is back.
    NoRoom(OwnedMessage),
}

#[derive(Debug)]
struct Held {
    kept: VecDeque<OwnedMessage>,
    until: Until,
    /// Whether the partition is to be paused (not for a short wait).
    pause_wanted: bool,
    /// Whether the client accepted the pause (a resume is only asked of a
    /// paused partition).
    paused: bool,
    /// When a pause or resume of it first failed, since it last succeeded.
    failing_since: Option<Instant>,
    /// When to try a failed pause or resume again.
    retry_at: Option<Instant>,
    /// Whether the partition has been given up until the next rebalance.
    given_up: bool,
}

/// A partition given up: the caller must keep its offsets from `from` on
/// unstored and rejoin the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    /// The partition.
    pub partition: TopicPartition,
    /// Its first record that was dropped, if any was kept.
    pub from: Option<i64>,
}

/// Every held partition of one consumer.
#[derive(Debug, Default)]
pub struct Holds {
    held: HashMap<TopicPartition, Held>,
}

impl Holds {
    /// Nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `partition` is held (its records must go to [`Holds::keep`]).
    pub fn is_held(&self, partition: &TopicPartition) -> bool {
        self.held.contains_key(partition)
    }

    /// Whether any partition waits for room in the window.
    pub fn waiting_for_room(&self) -> bool {
        self.held
            .values()
            .any(|held| held.until == Until::Room && !held.given_up)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds the partition of `record` until `until`, keeping `record` as
    /// its first record to go. The partition must not be held already.
    pub fn hold(
        &mut self,
        control: &impl PartitionControl,
        record: OwnedMessage,
        until: Until,
        now: Instant,
    ) {
        let key: TopicPartition = (record.topic().into(), record.partition());
        let mut kept = VecDeque::new();
        kept.push_back(record);
        self.start_holding(control, key, kept, until, now);
    }

    /// Holds a partition with nothing kept (the window is full and its
    /// records must wait).
    pub fn hold_empty(
        &mut self,
        control: &impl PartitionControl,
        partition: TopicPartition,
        now: Instant,
    ) {
        if !self.held.contains_key(&partition) {
            self.start_holding(control, partition, VecDeque::new(), Until::Room, now);
        }
    }

    fn start_holding(
        &mut self,
        control: &impl PartitionControl,
        key: TopicPartition,
        kept: VecDeque<OwnedMessage>,
        until: Until,
        now: Instant,
    ) {
        let pause_wanted = match until {
            Until::Due(at) => at.saturating_duration_since(now) > SHORT_WAIT,
            Until::Room => true,
        };
        let mut held = Held {
            kept,
            until,
            pause_wanted,
            paused: false,
            failing_since: None,
            retry_at: None,
            given_up: false,
        };
        if pause_wanted {
            try_pause(control, &key, &mut held, now);
        }
        self.held.insert(key, held);
    }

    /// Keeps a record of a held partition behind its other kept records.
    /// Returns the partition when keeping it would pass
    /// [`MAX_KEPT_RECORDS`]: it is then given up.
    pub fn keep(
        &mut self,
        control: &impl PartitionControl,
        record: OwnedMessage,
        now: Instant,
    ) -> Option<GivenUp> {
        let key: TopicPartition = (record.topic().into(), record.partition());
        let held = self.held.get_mut(&key)?;
        if held.given_up {
            return None;
        }
        if held.kept.len() >= MAX_KEPT_RECORDS {
            tracing::error!(
                topic = %key.0,
                partition = key.1,
                kept = held.kept.len(),
                "a held partition keeps delivering; giving it up until the group is joined again"
            );
            let from = held.kept.front().map_or(record.offset(), |r| r.offset());
            give_up(held, now);
            return Some(GivenUp {
                partition: key,
                from: Some(from),
            });
        }
        held.kept.push_back(record);
        if !held.pause_wanted && held.kept.len() >= SHORT_HOLD_RECORDS {
            held.pause_wanted = true;
            try_pause(control, &key, held, now);
        }
        None
    }

    /// The earliest moment a held partition's first record comes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|held| match held.until {
                Until::Due(at) if !held.given_up => Some(at),
                _ => None,
            })
            .min()
    }

    /// Forgets partitions taken away by a rebalance (their kept records
    /// were never started, so their new owner reads them).
    pub fn forget(&mut self, partitions: &[TopicPartition]) {
        for key in partitions {
            self.held.remove(key);
        }
    }

    /// Forgets every partition (the consumer rejoins its group), returning
    /// the first kept record of each: none of them was started, so nothing
    /// from it on may be stored before the partition is read again.
    pub fn clear(&mut self) -> Vec<(TopicPartition, i64)> {
        let first_kept = self
            .held
            .iter()
            .filter_map(|(key, held)| Some((key.clone(), held.kept.front()?.offset())))
            .collect();
        self.held.clear();
        first_kept
    }

    /// Moves every held partition on: tries failed pauses and resumes
    /// again, and offers the kept records of each partition whose wait is
    /// over to `admit`, in order, until one cannot start. A partition with
    /// nothing left is resumed and let go. `room` says whether the window
    /// has room at all (partitions waiting for room are skipped when not).
    /// Returns the partitions given up.
    pub fn release(
        &mut self,
        control: &impl PartitionControl,
        now: Instant,
        room: bool,
        mut admit: impl FnMut(OwnedMessage) -> Admit,
    ) -> Vec<GivenUp> {
        let mut given_up = Vec::new();
        let mut done = Vec::new();
        for (key, held) in &mut self.held {
            if held.given_up {
                continue;
            }
            if held.pause_wanted && !held.paused && held.retry_at.is_none_or(|at| at <= now) {
                try_pause(control, key, held, now);
            }
            let over = match held.until {
                Until::Due(at) => at <= now,
                Until::Room => room,
            };
            if over {
                while let Some(record) = held.kept.pop_front() {
                    match admit(record) {
                        Admit::Started => {}
                        Admit::NotDue(at, record) => {
                            held.kept.push_front(record);
                            held.until = Until::Due(at);
                            if at.saturating_duration_since(now) > SHORT_WAIT {
                                held.pause_wanted = true;
                            }
                            break;
                        }
                        Admit::NoRoom(record) => {
                            held.kept.push_front(record);
                            held.until = Until::Room;
                            held.pause_wanted = true;
                            break;
                        }
                    }
                }
                if held.kept.is_empty() {
                    if !held.paused {
                        // Never paused (a short wait, or the pause never
                        // took): nothing to resume.
                        done.push(key.clone());
                    } else if held.retry_at.is_some_and(|at| at > now) {
                        // A failed resume is tried again a little later.
                    } else {
                        match control.resume(&key.0, key.1) {
                            Ok(()) => done.push(key.clone()),
                            Err(err) => {
                                tracing::warn!(topic = %key.0, partition = key.1, error = %err, "cannot resume partition; trying again");
                                failed(held, now);
                            }
                        }
                    }
                }
            }
            if let Some(since) = held.failing_since
                && now.duration_since(since) >= GIVE_UP_AFTER
                && !done.contains(key)
            {
                tracing::error!(
                    topic = %key.0,
                    partition = key.1,
                    "pausing or resuming this partition keeps failing; giving it up until the group is joined again"
                );
                // With nothing kept, every record handed out was started:
                // only the rejoin is needed.
                let from = held.kept.front().map(|r| r.offset());
                give_up(held, now);
                given_up.push(GivenUp {
                    partition: key.clone(),
                    from,
                });
            }
        }
        for key in done {
            self.held.remove(&key);
        }
        given_up
    }
}

fn try_pause(control: &impl PartitionControl, key: &TopicPartition, held: &mut Held, now: Instant) {
    match control.pause(&key.0, key.1) {
        Ok(()) => {
            held.paused = true;
            held.failing_since = None;
            held.retry_at = None;
        }
        Err(err) => {
            tracing::warn!(topic = %key.0, partition = key.1, error = %err, "cannot pause partition; its records are kept meanwhile");
            failed(held, now);
        }
    }
}

fn failed(held: &mut Held, now: Instant) {
    held.failing_since.get_or_insert(now);
    held.retry_at = Some(now + RETRY_AFTER);
}

fn give_up(held: &mut Held, now: Instant) {
    held.kept.clear();
    held.given_up = true;
    held.failing_since.get_or_insert(now);
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;

    use rdkafka::Timestamp;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::*;
    use crate::kafka::offsets::{OffsetTracker, Outcome, Ticket};

    /// A client whose pauses and resumes fail while told to, and which
    /// hands out records in order unless paused.
    #[derive(Default)]
    struct Client {
        fail_pause: RefCell<usize>,
        fail_resume: RefCell<usize>,
        paused: RefCell<bool>,
        calls: RefCell<Vec<&'static str>>,
    }

    fn refused() -> KafkaError {
        KafkaError::PauseResume(RDKafkaErrorCode::UnknownPartition.to_string())
    }

    impl PartitionControl for Client {
        fn pause(&self, _: &str, _: i32) -> KafkaResult<()> {
            self.calls.borrow_mut().push("pause");
            let mut fail = self.fail_pause.borrow_mut();
            if *fail > 0 {
                *fail -= 1;
                return Err(refused());
            }
            *self.paused.borrow_mut() = true;
            Ok(())
        }

        fn resume(&self, _: &str, _: i32) -> KafkaResult<()> {
            self.calls.borrow_mut().push("resume");
            let mut fail = self.fail_resume.borrow_mut();
            if *fail > 0 {
                *fail -= 1;
                return Err(refused());
            }
            *self.paused.borrow_mut() = false;
            Ok(())
        }
    }

    fn record(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(offset.to_string().into_bytes()),
            None,
            "retry".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    fn tp() -> TopicPartition {
        (Arc::from("retry"), 0)
    }

    /// The consumer loop in small: records of partition 0 are due at
    /// `due[offset]` (or now), and start as long as `room` allows.
    struct Pipeline {
        tracker: OffsetTracker,
        holds: Holds,
        started: Vec<Ticket>,
        due: HashMap<i64, Instant>,
        room: usize,
    }

    impl Pipeline {
        fn new() -> Self {
            let tracker = OffsetTracker::new();
            tracker.assign(&[tp()]);
            Self {
                tracker,
                holds: Holds::new(),
                started: Vec::new(),
                due: HashMap::new(),
                room: usize::MAX,
            }
        }

        fn admit(&mut self, record: OwnedMessage, now: Instant) -> Admit {
            admit(
                &self.tracker,
                &mut self.started,
                &self.due,
                &mut self.room,
                record,
                now,
            )
        }

        /// What the loop does with a record it polled.
        fn polled(&mut self, client: &Client, record: OwnedMessage, now: Instant) {
            let key = tp();
            if self.holds.is_held(&key) {
                self.holds.keep(client, record, now);
                return;
            }
            match self.admit(record, now) {
                Admit::Started => {}
                Admit::NotDue(at, record) => {
                    self.holds.hold(client, record, Until::Due(at), now);
                }
                Admit::NoRoom(record) => {
                    self.holds.hold(client, record, Until::Room, now);
                }
            }
        }

        fn release(&mut self, client: &Client, now: Instant) -> Vec<GivenUp> {
            let Self {
                tracker,
                holds,
                started,
                due,
                room,
            } = self;
            let has_room = *room > 0;
            holds.release(client, now, has_room, |record| {
                admit(tracker, started, due, room, record, now)
            })
        }

        fn finish_all(&mut self) {
            for ticket in self.started.drain(..) {
                self.tracker.finish(ticket, Outcome::Done);
                self.room = self.room.saturating_add(1);
            }
        }

        fn started_offsets(&self) -> Vec<i64> {
            self.started.iter().map(Ticket::offset).collect()
        }
    }

    fn admit(
        tracker: &OffsetTracker,
        started: &mut Vec<Ticket>,
        due: &HashMap<i64, Instant>,
        room: &mut usize,
        record: OwnedMessage,
        now: Instant,
    ) -> Admit {
        if let Some(at) = due.get(&record.offset())
            && *at > now
        {
            return Admit::NotDue(*at, record);
        }
        if *room == 0 {
            return Admit::NoRoom(record);
        }
        *room -= 1;
        started.push(
            tracker
                .start(record.topic(), record.partition(), record.offset())
                .unwrap(),
        );
        Admit::Started
    }

    #[test]
    fn a_failed_pause_keeps_every_later_record_and_commits_nothing_past_the_held_one() {
        let client = Client::default();
        *client.fail_pause.borrow_mut() = 2;
        let mut pipeline = Pipeline::new();
        let t0 = Instant::now();
        let due_at = t0 + Duration::from_secs(5);
        pipeline.due.insert(11, due_at);

        pipeline.polled(&client, record(10), t0);
        // 11 is not due: its partition is held, but the pause fails and
        // the partition goes on delivering.
        pipeline.polled(&client, record(11), t0);
        pipeline.polled(&client, record(12), t0);
        pipeline.polled(&client, record(13), t0);
        assert_eq!(pipeline.started_offsets(), [10]);
        pipeline.finish_all();
        // Only 10 is done: nothing past it may be stored.
        assert_eq!(pipeline.tracker.take_releasable(None), vec![(tp(), 10)]);

        // The pause is tried again (and fails once more, then takes).
        pipeline.release(&client, t0 + Duration::from_secs(1));
        pipeline.release(&client, t0 + Duration::from_secs(2));
        assert!(*client.paused.borrow());
        assert!(pipeline.started_offsets().is_empty());

        // When 11 is due, it and everything kept behind it go, in order.
        pipeline.release(&client, due_at);
        assert_eq!(pipeline.started_offsets(), [11, 12, 13]);
        assert!(!*client.paused.borrow(), "resumed once nothing was kept");
        assert!(pipeline.holds.is_empty());
        pipeline.finish_all();
        assert_eq!(pipeline.tracker.take_releasable(None), vec![(tp(), 13)]);
    }

    #[test]
    fn a_failed_resume_keeps_the_partition_held_until_it_takes() {
        let client = Client::default();
        *client.fail_resume.borrow_mut() = 3;
        let mut pipeline = Pipeline::new();
        let t0 = Instant::now();
        pipeline.due.insert(20, t0 + Duration::from_secs(10));
        pipeline.polled(&client, record(20), t0);
        let mut now = t0 + Duration::from_secs(10);
        pipeline.release(&client, now);
        assert_eq!(pipeline.started_offsets(), [20]);
        // The resume failed: still held, so a record that arrives for it
        // is kept, not lost.
        assert!(pipeline.holds.is_held(&tp()));
        pipeline.polled(&client, record(21), now);
        for _ in 0..3 {
            now += Duration::from_secs(1);
            pipeline.release(&client, now);
        }
        assert_eq!(pipeline.started_offsets(), [20, 21]);
        assert!(pipeline.holds.is_empty());
        assert_eq!(
            client
                .calls
                .borrow()
                .iter()
                .filter(|c| **c == "resume")
                .count(),
            4
        );
    }

    #[test]
    fn a_full_window_holds_records_until_there_is_room() {
        let client = Client::default();
        let mut pipeline = Pipeline::new();
        pipeline.room = 1;
        let now = Instant::now();
        pipeline.polled(&client, record(1), now);
        pipeline.polled(&client, record(2), now);
        pipeline.polled(&client, record(3), now);
        assert_eq!(pipeline.started_offsets(), [1]);
        assert!(pipeline.holds.waiting_for_room());
        // Still no room: nothing moves.
        pipeline.release(&client, now);
        assert_eq!(pipeline.started_offsets(), [1]);
        pipeline.finish_all();
        pipeline.room = 1;
        pipeline.release(&client, now);
        assert_eq!(pipeline.started_offsets(), [2]);
        pipeline.finish_all();
        pipeline.room = 5;
        pipeline.release(&client, now);
        assert_eq!(pipeline.started_offsets(), [3]);
        assert!(pipeline.holds.is_empty());
        pipeline.finish_all();
        assert_eq!(pipeline.tracker.take_releasable(None), vec![(tp(), 3)]);
    }

    #[test]
    fn a_partition_that_cannot_be_paused_for_long_is_given_up_without_committing_past_it() {
        let client = Client::default();
        *client.fail_pause.borrow_mut() = usize::MAX;
        let mut pipeline = Pipeline::new();
        let t0 = Instant::now();
        pipeline.due.insert(5, t0 + Duration::from_secs(3600));
        pipeline.polled(&client, record(4), t0);
        pipeline.polled(&client, record(5), t0);
        pipeline.polled(&client, record(6), t0);
        let given_up = pipeline.release(&client, t0 + GIVE_UP_AFTER);
        assert_eq!(
            given_up,
            vec![GivenUp {
                partition: tp(),
                from: Some(5)
            }]
        );
        pipeline.tracker.block_from("retry", 0, 5);
        // Later records of it are ignored until the group is joined again.
        pipeline.polled(&client, record(7), t0 + GIVE_UP_AFTER);
        assert_eq!(pipeline.started_offsets(), [4]);
        pipeline.finish_all();
        assert_eq!(pipeline.tracker.take_releasable(None), vec![(tp(), 4)]);
        assert!(pipeline.holds.is_held(&tp()));
    }

    #[test]
    fn a_short_wait_holds_without_pausing_and_keeps_the_records_behind() {
        let client = Client::default();
        let mut pipeline = Pipeline::new();
        let t0 = Instant::now();
        pipeline.due.insert(1, t0 + Duration::from_millis(300));
        pipeline.due.insert(2, t0 + Duration::from_millis(600));
        pipeline.polled(&client, record(1), t0);
        pipeline.polled(&client, record(2), t0);
        pipeline.polled(&client, record(3), t0);
        assert!(
            client.calls.borrow().is_empty(),
            "no pause for a short wait"
        );
        assert_eq!(
            pipeline.holds.next_due(),
            Some(t0 + Duration::from_millis(300))
        );
        pipeline.release(&client, t0 + Duration::from_millis(300));
        assert_eq!(pipeline.started_offsets(), [1]);
        pipeline.release(&client, t0 + Duration::from_millis(600));
        assert_eq!(pipeline.started_offsets(), [1, 2, 3]);
        assert!(pipeline.holds.is_empty());
        assert!(client.calls.borrow().is_empty(), "nothing to resume");
    }

    #[test]
    fn letting_go_of_every_hold_says_where_each_partition_must_be_read_again() {
        let client = Client::default();
        let mut holds = Holds::new();
        let now = Instant::now();
        holds.hold(&client, record(7), Until::Room, now);
        holds.keep(&client, record(8), now);
        holds.hold_empty(&client, (Arc::from("other"), 3), now);
        assert_eq!(holds.clear(), vec![(tp(), 7)]);
        assert!(holds.is_empty());
    }

    #[test]
    fn too_many_kept_records_give_the_partition_up() {
        let client = Client::default();
        *client.fail_pause.borrow_mut() = usize::MAX;
        let mut holds = Holds::new();
        let now = Instant::now();
        holds.hold(&client, record(0), Until::Room, now);
        for offset in 1..MAX_KEPT_RECORDS as i64 {
            assert_eq!(holds.keep(&client, record(offset), now), None);
        }
        assert_eq!(
            holds.keep(&client, record(MAX_KEPT_RECORDS as i64), now),
            Some(GivenUp {
                partition: tp(),
                from: Some(0)
            })
        );
        assert!(!holds.waiting_for_room());
    }
}
