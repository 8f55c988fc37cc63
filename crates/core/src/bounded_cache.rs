//! What fan-out's subscription cache and the dispatcher's endpoint cache
//! hold: copies of records read from Redis, each with the change counter
//! it was read at, bounded in entries and in bytes, the least recently
//! used going first.
//!
//! Every operation is O(1) but [`BoundedCache::to_check`] and
//! [`BoundedCache::mark_moved`], which the once-per-refresh check of the
//! counters makes, and [`BoundedCache::fresh_count`], for tests and
//! reports. A copy whose counter moved is *stale*: it is read again
//! on its next use, and meanwhile still handed out by
//! [`BoundedCache::any`], for when Redis does not answer.
//!
//! The cache is not thread-safe by itself; its users keep it behind a
//! mutex, held only for these short calls, never across a Redis read.

use std::collections::HashMap;
use std::sync::Arc;

use lru::LruCache;

/// See the module docs.
#[derive(Debug)]
pub struct BoundedCache<T> {
    entries: LruCache<String, Entry<T>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    value: Arc<T>,
    /// The record's change counter when it was read.
    version: i64,
    /// About how much memory the copy takes.
    bytes: usize,
    /// Its counter moved since: read it again on next use.
    stale: bool,
}

impl<T> BoundedCache<T> {
    /// An empty cache for at most `max_entries` copies (at least one) and
    /// about `max_bytes` of them.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// The copy of `key` if it is not stale and was read at counter
    /// `at_least` or later (0: any fresh copy); counts as a use.
    pub fn fresh(&mut self, key: &str, at_least: i64) -> Option<Arc<T>> {
        match self.entries.get(key) {
            Some(entry) if !entry.stale && entry.version >= at_least => Some(entry.value.clone()),
            _ => None,
        }
    }

    /// The copy of `key`, however old; not counted as a use.
    pub fn any(&self, key: &str) -> Option<Arc<T>> {
        self.entries.peek(key).map(|entry| entry.value.clone())
    }

    /// Holds `value`, read at counter `version` and taking about `bytes`,
    /// as the most recently used; makes room by letting the least recently
    /// used go. A copy larger than the whole byte bound is held alone.
    pub fn insert(&mut self, key: &str, value: Arc<T>, version: i64, bytes: usize) {
        self.remove(key);
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes)
        {
            if let Some((_, gone)) = self.entries.pop_lru() {
                self.bytes -= gone.bytes;
            }
        }
        self.bytes += bytes;
        self.entries.push(
            key.to_owned(),
            Entry {
                value,
                version,
                bytes,
                stale: false,
            },
        );
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some(gone) = self.entries.pop(key) {
            self.bytes -= gone.bytes;
        }
    }

    /// The keys of the fresh copies with the counters they were read at:
    /// what the refresh asks Redis about.
    pub fn to_check(&self) -> Vec<(String, i64)> {
        self.entries
            .iter()
            .filter(|(_, entry)| !entry.stale)
            .map(|(key, entry)| (key.clone(), entry.version))
            .collect()
    }

    /// Marks stale each copy of `checked` whose counter is no longer what
    /// it was read at (`now`, in the same order; a key gone meanwhile is
    /// skipped). Returns the keys marked.
    pub fn mark_moved<'a>(&mut self, checked: &'a [(String, i64)], now: &[i64]) -> Vec<&'a str> {
        let mut marked = Vec::new();
        for ((key, had), now) in checked.iter().zip(now) {
            if now != had
                && let Some(entry) = self.entries.peek_mut(key.as_str())
                && entry.version == *had
            {
                entry.stale = true;
                marked.push(key.as_str());
            }
        }
        marked
    }

    /// Number of copies held, stale ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of copies held that are not stale.
    pub fn fresh_count(&self) -> usize {
        self.entries.iter().filter(|(_, e)| !e.stale).count()
    }

    /// About how much memory the copies take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One read of a key at a time, however many tasks need it: the caches'
/// callers take a key's gate before reading it from Redis, and after
/// taking it look in the cache again, where the task before them may have
/// put it.
#[derive(Debug, Default)]
pub struct ReadGates {
    gates: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The gate of one key, held; dropping it lets the tasks waiting on it in
/// one by one, and forgets it, so that the map holds only keys being read.
#[derive(Debug)]
pub struct ReadGate<'a> {
    gates: &'a ReadGates,
    key: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl ReadGates {
    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the task reading `key`, if any, and takes its gate.
    pub async fn enter(&self, key: &str) -> ReadGate<'_> {
        let gate = self.gates().entry(key.to_owned()).or_default().clone();
        let held = gate.clone().lock_owned().await;
        ReadGate {
            gates: self,
            key: key.to_owned(),
            gate,
            _held: held,
        }
    }

    /// Number of keys with a gate (being read, or waited for).
    pub fn len(&self) -> usize {
        self.gates().len()
    }

    /// Whether no key is being read.
    pub fn is_empty(&self) -> bool {
        self.gates().is_empty()
    }
}

impl Drop for ReadGate<'_> {
    fn drop(&mut self) {
        let mut gates = self.gates.gates();
        // Not a newer gate of the same key (one taken after ours was
        // forgotten by a task that waited on ours).
        if gates
            .get(&self.key)
            .is_some_and(|g| Arc::ptr_eq(g, &self.gate))
        {
            gates.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn one_task_at_a_time_reads_a_key_and_the_gates_are_forgotten() {
        let gates = Arc::new(ReadGates::default());
        let first = gates.enter("app").await;
        let waiting = tokio::spawn({
            let gates = gates.clone();
            async move {
                let _second = gates.enter("app").await;
            }
        });
        // Another key is not held up.
        drop(gates.enter("other").await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "the second entered while the first read"
        );
        drop(first);
        waiting.await.unwrap();
        assert!(gates.is_empty(), "{} gates left", gates.len());
    }

    use super::*;

    fn cache(entries: usize, bytes: usize) -> BoundedCache<&'static str> {
        BoundedCache::new(entries, bytes)
    }

    #[test]
    fn the_least_recently_used_go_first_when_entries_run_out() {
        let mut c = cache(2, usize::MAX);
        c.insert("a", Arc::new("A"), 1, 10);
        c.insert("b", Arc::new("B"), 1, 10);
        // A use of "a" makes "b" the least recently used.
        assert_eq!(c.fresh("a", 0).as_deref(), Some(&"A"));
        c.insert("c", Arc::new("C"), 1, 10);
        assert!(c.any("b").is_none());
        assert!(c.any("a").is_some() && c.any("c").is_some());
        assert_eq!((c.len(), c.bytes()), (2, 20));
    }

    #[test]
    fn the_byte_bound_holds_and_a_huge_copy_is_held_alone() {
        let mut c = cache(100, 100);
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            c.insert(key, Arc::new("x"), i as i64, 30);
        }
        // 4 × 30 > 100: the oldest went.
        assert_eq!((c.len(), c.bytes()), (3, 90));
        assert!(c.any("a").is_none());
        c.insert("huge", Arc::new("x"), 1, 500);
        assert_eq!((c.len(), c.bytes()), (1, 500));
        // Replacing a key does not count it twice.
        c.insert("huge", Arc::new("y"), 2, 50);
        assert_eq!((c.len(), c.bytes()), (1, 50));
        c.remove("huge");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn a_moved_counter_makes_a_copy_stale_but_still_usable_when_redis_is_away() {
        let mut c = cache(10, usize::MAX);
        c.insert("a", Arc::new("A1"), 3, 1);
        c.insert("b", Arc::new("B1"), 7, 1);
        let checked = c.to_check();
        assert_eq!(checked.len(), 2);
        let now: Vec<i64> = checked
            .iter()
            .map(|(k, v)| if k == "a" { v + 1 } else { *v })
            .collect();
        // Read again meanwhile: a mark from the older check must not stick.
        c.insert("b", Arc::new("B2"), 8, 1);
        assert_eq!(c.mark_moved(&checked, &now), vec!["a"]);
        assert!(c.fresh("a", 0).is_none(), "stale");
        assert_eq!(c.any("a").as_deref(), Some(&"A1"));
        assert_eq!(c.fresh_count(), 1);
        // A stale copy is not checked again; a newer read replaces it.
        assert_eq!(c.to_check(), vec![("b".to_owned(), 8)]);
        c.insert("a", Arc::new("A2"), 4, 1);
        assert_eq!(c.fresh("a", 4).as_deref(), Some(&"A2"));
        // Fresh, but older than the caller has seen: not good enough.
        assert!(c.fresh("a", 5).is_none());
    }
}
