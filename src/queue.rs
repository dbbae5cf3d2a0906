//! The work queue, with the semantics of Kubernetes controllers' workqueue:
//! one entry per key; a key is never handed to two workers at once; a key
//! added while it is being processed runs again after; failures come back
//! after a per-key, jittered, capped exponential backoff that resets on
//! success.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How failures are spaced.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = first), with
    /// jitter in [50 %, 100 %] of the exponential value so that many keys
    /// failing together do not come back together.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(failures.saturating_sub(1).min(20))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.cap);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to run (in `queue`, or to re-run after processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    /// When each dirty key was first added, for the queue-wait metric.
    added_at: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    shut_down: bool,
}

/// A deduplicating work queue of keys.
pub struct Queue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    backoff: Backoff,
}

/// A key handed to a worker, and how long it waited.
#[derive(Debug)]
pub struct Item<K> {
    pub key: K,
    pub waited: Duration,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Queue<K> {
    pub fn new(backoff: Backoff) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                added_at: HashMap::new(),
                failures: HashMap::new(),
                shut_down: false,
            }),
            notify: Notify::new(),
            backoff,
        })
    }

    /// Adds `key` unless it is already waiting. A key being processed is
    /// marked to run again once done.
    pub fn add(&self, key: K) {
        let mut s = self.state.lock().expect("queue lock");
        if s.shut_down || s.dirty.contains(&key) {
            return;
        }
        s.dirty.insert(key.clone());
        s.added_at.insert(key.clone(), Instant::now());
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Adds `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Counts a failure of `key` and adds it back after its backoff; returns
    /// the delay chosen.
    pub fn add_rate_limited(self: &Arc<Self>, key: K, jitter: f64) -> Duration {
        let failures = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = self.backoff.delay(failures, jitter);
        self.add_after(key, delay);
        delay
    }

    /// Forgets the failures of `key` (after a success).
    pub fn forget(&self, key: &K) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    /// How many times `key` failed in a row.
    pub fn failures(&self, key: &K) -> u32 {
        self.state
            .lock()
            .expect("queue lock")
            .failures
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The next key to process; `None` once shut down.
    pub async fn get(&self) -> Option<Item<K>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if s.shut_down {
                    return None;
                }
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    let waited = s
                        .added_at
                        .remove(&key)
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some(Item { key, waited });
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(key);
        if s.dirty.contains(key) && !s.shut_down {
            s.queue.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting or being processed.
    pub fn in_flight(&self) -> usize {
        let s = self.state.lock().expect("queue lock");
        s.dirty.union(&s.processing).count()
    }

    /// True when `key` is waiting or being processed.
    pub fn contains(&self, key: &K) -> bool {
        let s = self.state.lock().expect("queue lock");
        s.dirty.contains(key) || s.processing.contains(key)
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn shut_down(&self) {
        self.state.lock().expect("queue lock").shut_down = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dedupes_waiting_keys() {
        let q = Queue::new(Backoff::default());
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await.unwrap().key, "a");
        assert_eq!(q.get().await.unwrap().key, "b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn never_hands_out_a_key_twice_at_once_and_reruns_it_after() {
        let q = Queue::new(Backoff::default());
        q.add("a");
        let item = q.get().await.unwrap();
        assert_eq!(item.key, "a");
        q.add("a"); // changed while processing
        assert!(q.is_empty(), "not handed out while processing");
        let second = tokio::time::timeout(Duration::from_secs(1), q.get()).await;
        assert!(second.is_err(), "a second worker must wait");
        q.done(&"a");
        let again = q.get().await.unwrap();
        assert_eq!(again.key, "a", "runs again after");
        q.done(&"a");
        assert_eq!(q.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn measures_wait_from_first_add() {
        let q = Queue::new(Backoff::default());
        q.add("a");
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.add("a");
        let item = q.get().await.unwrap();
        assert_eq!(item.waited, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_reset() {
        let q = Queue::new(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        });
        // Full jitter (1.0) gives the exponential value itself.
        let d: Vec<Duration> = (0..6).map(|_| q.add_rate_limited("a", 1.0)).collect();
        assert_eq!(
            d,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        assert_eq!(q.failures(&"a"), 6);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
        assert_eq!(q.add_rate_limited("a", 0.0), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_arrive_after_their_delay() {
        let q = Queue::new(Backoff::default());
        q.add_after("a", Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_wakes_waiting_workers() {
        let q: Arc<Queue<&str>> = Queue::new(Backoff::default());
        let q2 = Arc::clone(&q);
        let worker = tokio::spawn(async move { q2.get().await.map(|i| i.key) });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(worker.await.unwrap(), None);
        q.add("late");
        assert!(q.is_empty(), "nothing is added after shutdown");
    }

    #[test]
    fn backoff_jitter_stays_within_half_to_full() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(100, 1.0), Duration::from_secs(60));
    }
}
