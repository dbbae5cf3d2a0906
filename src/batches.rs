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

    /// The next batch for `key`; `None`, and the key's task is over, when
    /// nothing waits.
    pub fn take(&self, key: &K) -> Option<Vec<W>> {
        let mut slots = self.slots.lock().expect("batches lock");
        let queue = slots.get_mut(key)?;
        if queue.is_empty() {
            slots.remove(key);
            return None;
        }
        Some(std::mem::take(queue))
    }

    /// Forgets `key` (its task ended without emptying it: a panic); the
    /// waiters queued are dropped, and the next caller starts a task again.
    pub fn forget(&self, key: &K) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(key);
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
}
