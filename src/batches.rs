//! Callers queued by key for one task per key that serves them in batches:
//! the first caller for a key starts the task; the task takes everything
//! queued, serves it, and takes again what queued meanwhile, until nothing
//! waits. Used by the gateway link group commit and by the shared gateway
//! reads.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// What waits, by key, for the task serving that key.
pub struct Batches<K, W> {
    slots: Mutex<HashMap<K, Vec<W>>>,
}

impl<K, W> Default for Batches<K, W> {
    fn default() -> Self {
        Batches {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, W> Batches<K, W> {
    /// Queues `waiter` for `key`; true when no task serves `key` yet (the
    /// caller starts one).
    pub fn join(&self, key: &K, waiter: W) -> bool {
        let mut slots = self.slots.lock().expect("batches lock");
        let start = !slots.contains_key(key);
        slots.entry(key.clone()).or_default().push(waiter);
        start
    }

    /// The serving side of `key`, for the task the first caller started:
    /// batch after batch, until nothing waits.
    pub fn serve<'a>(&'a self, key: &'a K) -> Serving<'a, K, W> {
        Serving {
            batches: self,
            key,
            over: false,
        }
    }

    /// The next batch for `key`; `None`, and the key's task is over, when
    /// nothing waits.
    fn take(&self, key: &K) -> Option<Vec<W>> {
        let mut slots = self.slots.lock().expect("batches lock");
        let queue = slots.get_mut(key)?;
        if queue.is_empty() {
            slots.remove(key);
            return None;
        }
        Some(std::mem::take(queue))
    }

    /// Forgets `key` (its task ended without emptying it); the waiters
    /// queued are dropped, and the next caller starts a task again.
    fn forget(&self, key: &K) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(key);
        }
    }
}

/// The task serving one key. Dropped before the last batch was taken (the
/// task panicked, or was cancelled), it forgets the key: the waiters queued
/// are dropped (their receivers see it), and the next caller starts a task
/// again instead of queueing for none.
pub struct Serving<'a, K: Eq + Hash + Clone, W> {
    batches: &'a Batches<K, W>,
    key: &'a K,
    over: bool,
}

impl<K: Eq + Hash + Clone, W> Serving<'_, K, W> {
    /// What queued since the last batch; `None`, and the task is over, when
    /// nothing did.
    pub fn next_batch(&mut self) -> Option<Vec<W>> {
        let batch = self.batches.take(self.key);
        self.over = batch.is_none();
        batch
    }
}

impl<K: Eq + Hash + Clone, W> Drop for Serving<'_, K, W> {
    fn drop(&mut self) {
        if !self.over {
            self.batches.forget(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_caller_starts_and_the_task_takes_batches_until_none_waits() {
        let b: Batches<&str, u32> = Batches::default();
        assert!(b.join(&"gw", 1), "first: starts the task");
        assert!(!b.join(&"gw", 2), "second: joins");
        assert!(b.join(&"other", 9), "another key: its own task");
        assert_eq!(b.take(&"gw"), Some(vec![1, 2]));
        assert!(
            !b.join(&"gw", 3),
            "the task still runs: joins the next batch"
        );
        assert_eq!(b.take(&"gw"), Some(vec![3]));
        assert_eq!(b.take(&"gw"), None, "nothing waits: the task ends");
        assert!(
            b.join(&"gw", 4),
            "after the end, a caller starts a task again"
        );
        b.forget(&"gw");
        assert_eq!(b.take(&"gw"), None);
        assert_eq!(b.take(&"other"), Some(vec![9]));
    }

    #[test]
    fn a_task_that_stops_before_the_last_batch_lets_the_next_caller_start_one() {
        let b: Batches<&str, u32> = Batches::default();
        assert!(b.join(&"gw", 1));
        {
            let mut serving = b.serve(&"gw");
            assert_eq!(serving.next_batch(), Some(vec![1]));
            assert!(!b.join(&"gw", 2), "queued for the running task");
            // Dropped here, as when the task panics mid-batch.
        }
        assert!(b.join(&"gw", 3), "the key was forgotten: a new task");
        let mut serving = b.serve(&"gw");
        assert_eq!(serving.next_batch(), Some(vec![3]), "2 went with the task");
        assert_eq!(serving.next_batch(), None);
        drop(serving);
        assert!(b.join(&"gw", 4), "over: the next caller starts a task");
    }
}
