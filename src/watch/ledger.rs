//! The raft indexes of this instance's own writes, and what each wrote: so
//! that a shard of the desired watch woken only by the instance's own record
//! writes reads the folders it wrote, without a descent.
//!
//! Consul numbers every write with the raft index it was applied at, one
//! index per write (a transaction is one write), and a KV listing answers
//! with the highest ModifyIndex under its prefix. A shard that answers at
//! `now` after `since` therefore had every change to its keys at an index in
//! `since + 1 ..= now`. When every index of that range is known here (a
//! transaction of this instance, whose keys are known; or a config-entry
//! write, which never touches the KV store), nothing else changed under the
//! shard, and the folders the instance's own transactions wrote under it are
//! all that changed. One index not known (a write of someone else, of any
//! kind, anywhere in Consul) and the shard descends as before: the ledger
//! only ever saves reads, it never decides that something did not change
//! unless every write in between is accounted for.
//!
//! The reconciles record a config entry's index as they read it back after
//! writing it, a lock's as it is taken, and a transaction's as it commits.
//! A shard answers as soon as a transaction commits, about when the
//! transaction's own answer comes back; so an answer with an index not
//! known while transactions are in flight waits for those transactions to
//! be recorded (at most [`LEDGER_GRACE`]) before it gives up and descends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::shards;

/// The most indexes kept; older ones are forgotten (a range that reaches
/// them is not explained, and the shard descends).
const KEPT: usize = 8192;

/// A range longer than this is not looked into: a shard that was quiet
/// while others changed is not explained by the instance's own writes
/// anyway.
const MAX_SPAN: u64 = 4096;

/// How long a shard's answer waits for the transactions in flight to be
/// recorded before it descends.
pub const LEDGER_GRACE: Duration = Duration::from_secs(1);

/// What one raft index wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wrote {
    /// A config-entry write (read back at this ModifyIndex): no KV key.
    NotKv,
    /// A transaction or lock of this instance: these KV keys (set, deleted,
    /// locked or released).
    Keys(Arc<[String]>),
}

/// Whether the instance's own writes explain a shard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explained {
    /// Every index of the range is known: these units of the shard (service
    /// folders, stray keys) are what changed.
    Units(BTreeSet<String>),
    /// An index is not known, but transactions that began up to this
    /// sequence number are in flight and may be it.
    Pending(u64),
    /// Not explained: descend.
    No,
}

/// The indexes (see the module docs), and the transactions in flight.
#[derive(Debug, Default)]
pub struct Ledger {
    wrote: BTreeMap<u64, Wrote>,
    in_flight: BTreeSet<u64>,
    next_seq: u64,
}

impl Ledger {
    fn put(&mut self, index: u64, w: Wrote) {
        if index == 0 {
            return;
        }
        self.wrote.insert(index, w);
        while self.wrote.len() > KEPT {
            self.wrote.pop_first();
        }
    }

    /// A transaction (or a lock taken or released) of this instance,
    /// committed at `index`, that wrote `keys`.
    pub fn keys(&mut self, index: u64, keys: Vec<String>) {
        self.put(index, Wrote::Keys(keys.into()));
    }

    /// A config entry read at ModifyIndex `index`: whoever wrote it, that
    /// write touched no KV key.
    pub fn not_kv(&mut self, index: u64) {
        // A known transaction at the same index is kept (it cannot be, but
        // keeping the keys is the safe side).
        if !self.wrote.contains_key(&index) {
            self.put(index, Wrote::NotKv);
        }
    }

    /// Forgets everything: Consul's indexes went backwards (a Consul wiped
    /// or restored), and what was recorded belongs to another history.
    pub fn clear(&mut self) {
        self.wrote.clear();
    }

    /// A transaction is sent; its sequence number, for [`Ledger::end`].
    pub fn begin(&mut self) -> u64 {
        self.next_seq += 1;
        self.in_flight.insert(self.next_seq);
        self.next_seq
    }

    /// A transaction answered (and was recorded, when it committed).
    pub fn end(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Whether the shard `prefix` (under the watch's `root`), which
    /// answered at `now` after `since`, changed only by this instance's
    /// writes. `waiting` is what an earlier [`Explained::Pending`] said: the
    /// answer waits only for transactions that were in flight then, not
    /// for ones sent since.
    pub fn explain(
        &self,
        root: &str,
        prefix: &str,
        since: u64,
        now: u64,
        waiting: Option<u64>,
    ) -> Explained {
        if since == 0 || now <= since || now - since > MAX_SPAN {
            return Explained::No;
        }
        let mut units = BTreeSet::new();
        for index in since + 1..=now {
            match self.wrote.get(&index) {
                Some(Wrote::NotKv) => {}
                Some(Wrote::Keys(keys)) => {
                    for key in keys.iter().filter(|k| k.starts_with(prefix)) {
                        match unit_written(root, key) {
                            Some(unit) => {
                                units.insert(unit.to_string());
                            }
                            None => return Explained::No,
                        }
                    }
                }
                None => {
                    let horizon = waiting.unwrap_or(self.next_seq);
                    return match self.in_flight.first() {
                        Some(&first) if first <= horizon => Explained::Pending(horizon),
                        _ => Explained::No,
                    };
                }
            }
        }
        // The shard's index moved, so something under it changed: when
        // none of the known writes is under it, something is amiss.
        if units.is_empty() {
            return Explained::No;
        }
        Explained::Units(units)
    }
}

/// How much of a range of raft indexes this instance's own writes account
/// for (see [`Ledger::account`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Account {
    /// Every index of the range is one of its writes: nothing else
    /// happened in Consul.
    All,
    /// The last index is one of its writes, an earlier one is not.
    Last,
    /// An index is not known, but transactions that began up to this
    /// sequence number are in flight and may be it.
    Pending(u64),
    /// The last index is not one of its writes.
    No,
}

impl Ledger {
    /// How much of `since + 1 ..= now` this instance's own writes account
    /// for, wherever they wrote (a wake probe's answer: see
    /// [`crate::watch::WAKE_SUFFIX`]). `waiting` as for [`Ledger::explain`].
    pub fn account(&self, since: u64, now: u64, waiting: Option<u64>) -> Account {
        let horizon = waiting.unwrap_or(self.next_seq);
        let pending = self
            .in_flight
            .first()
            .is_some_and(|&first| first <= horizon);
        if now <= since || since == 0 {
            return Account::No;
        }
        if !self.wrote.contains_key(&now) {
            return if pending {
                Account::Pending(horizon)
            } else {
                Account::No
            };
        }
        let all = now - since <= MAX_SPAN
            && (since + 1..now).all(|index| self.wrote.contains_key(&index));
        if all {
            Account::All
        } else if pending {
            Account::Pending(horizon)
        } else {
            Account::Last
        }
    }

    /// The highest index after `since` at which one of this instance's
    /// transactions wrote a key under `prefix`.
    fn latest_under(&self, prefix: &str, since: u64) -> Option<u64> {
        let wrote_under = |w: &Wrote| match w {
            Wrote::Keys(keys) => keys.iter().any(|k| k.starts_with(prefix)),
            Wrote::NotKv => false,
        };
        (self.wrote.range(since.saturating_add(1)..).rev())
            .find(|(_, w)| wrote_under(w))
            .map(|(index, _)| *index)
    }
}

/// The unit a write of `key` changes: its service folder, or the key
/// itself when it is a stray key. `None` when it is a prefix of more than
/// one folder (a tree deleted above a service folder).
fn unit_written<'a>(root: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(root)?;
    if key.ends_with('/') && rest.matches('/').count() != 3 {
        return None;
    }
    shards::unit_of(root, key)
}

/// The ledger shared by an instance's reconciles and its desired watch,
/// with a wake-up for answers waiting on transactions in flight.
#[derive(Debug, Default)]
pub struct SharedLedger {
    ledger: Mutex<Ledger>,
    ended: Notify,
}

impl SharedLedger {
    pub fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(&mut self.ledger.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A transaction is sent; it counts as in flight until the returned
    /// guard drops (after its index is recorded; also when its future is
    /// dropped half-way).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let seq = self.with(Ledger::begin);
        InFlight {
            ledger: Arc::clone(self),
            seq,
        }
    }

    /// [`Ledger::explain`], waiting (at most `grace`) for transactions in
    /// flight when they may explain the answer. The units the instance's
    /// own writes changed, or `None`: descend.
    pub async fn explain(
        &self,
        root: &str,
        prefix: &str,
        since: u64,
        now: u64,
        grace: Duration,
    ) -> Option<BTreeSet<String>> {
        let mut waiting = None;
        self.settle(grace, |l| {
            match l.explain(root, prefix, since, now, waiting) {
                Explained::Units(units) => Some(Some(units)),
                Explained::No => Some(None),
                Explained::Pending(horizon) => {
                    waiting = Some(horizon);
                    None
                }
            }
        })
        .await
    }

    /// [`Ledger::account`], waiting (at most `grace`) for transactions in
    /// flight when they may account for more of the range.
    pub async fn account(&self, since: u64, now: u64, grace: Duration) -> Account {
        let mut waiting = None;
        let decided = self
            .settle(grace, |l| match l.account(since, now, waiting) {
                Account::Pending(horizon) => {
                    waiting = Some(horizon);
                    None
                }
                decided => Some(Some(decided)),
            })
            .await;
        match decided {
            Some(decided) => decided,
            // Still in flight when the grace ran out: what is known now.
            None => match self.with(|l| l.account(since, now, Some(0))) {
                Account::Pending(_) => Account::No,
                decided => decided,
            },
        }
    }

    /// Waits, at most `grace`, for one of this instance's transactions to
    /// write under the shard `prefix` after `since` (the reconcile of a
    /// change the shard just found), and returns its index and the units it
    /// changed when every index up to it is known ([`Ledger::explain`]):
    /// the shard then holds what it held at `since` plus those units, and
    /// may wait past that index without being asked at the one before it.
    /// `None` when no such write came in time, or an index before it is not
    /// known (someone else wrote meanwhile: the shard is asked as usual).
    pub async fn own_write(
        &self,
        root: &str,
        prefix: &str,
        since: u64,
        grace: Duration,
    ) -> Option<(u64, BTreeSet<String>)> {
        self.settle(grace, |l| {
            let index = l.latest_under(prefix, since)?;
            match l.explain(root, prefix, since, index, None) {
                Explained::Units(units) => Some(Some((index, units))),
                Explained::No => Some(None),
                Explained::Pending(_) => None,
            }
        })
        .await
    }

    /// Looks at the ledger with `look` now and after each transaction
    /// answers, until it decides (`Some`: its answer) or `grace` runs out
    /// (`None`).
    async fn settle<T>(
        &self,
        grace: Duration,
        mut look: impl FnMut(&Ledger) -> Option<Option<T>>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(decided) = self.with(|l| look(l)) {
                return decided;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return None;
            }
        }
    }
}

/// A transaction in flight, as [`SharedLedger::begin`] counts it.
pub struct InFlight {
    ledger: Arc<SharedLedger>,
    seq: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ledger.with(|l| l.end(self.seq));
        self.ledger.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "svc-handler/desired/";
    const SHARD: &str = "svc-handler/desired/default/default/web";

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    fn units(list: &[&str]) -> Explained {
        Explained::Units(list.iter().map(|u| u.to_string()).collect())
    }

    #[test]
    fn own_writes_explain_a_shard_only_when_every_index_is_known() {
        let mut l = Ledger::default();
        // Lock at 11, two config writes, the records' transaction at 14.
        l.keys(11, keys(&["svc-handler/locks/default/default/web-1"]));
        l.not_kv(12);
        l.not_kv(13);
        l.keys(
            14,
            keys(&[
                "svc-handler/locks/default/default/web-1",
                "svc-handler/desired/default/default/web-1/resolver.json",
                "svc-handler/desired/default/default/web-1/defaults.json",
                "svc-handler/observed/default/default/web-1/observed.json",
            ]),
        );
        assert_eq!(
            l.explain(ROOT, SHARD, 10, 14, None),
            units(&["svc-handler/desired/default/default/web-1/"])
        );
        // Another shard: the same writes touch none of its keys, yet its
        // index moved: not explained.
        let other = "svc-handler/desired/default/default/api";
        assert_eq!(l.explain(ROOT, other, 10, 14, None), Explained::No);
        // Index 15 is someone else's: not explained, nothing in flight.
        assert_eq!(l.explain(ROOT, SHARD, 10, 15, None), Explained::No);
        // Index 10 (the user's write) is not part of the range after 10,
        // but it is of the range after 9.
        assert_eq!(l.explain(ROOT, SHARD, 9, 14, None), Explained::No);
        // The first answer and an index that went backwards: never.
        assert_eq!(l.explain(ROOT, SHARD, 0, 14, None), Explained::No);
        assert_eq!(l.explain(ROOT, SHARD, 14, 12, None), Explained::No);
        // Forgotten (Consul went back in time): not explained.
        l.clear();
        assert_eq!(l.explain(ROOT, SHARD, 10, 14, None), Explained::No);
    }

    #[test]
    fn own_writes_account_for_a_wake_wherever_they_wrote() {
        let mut l = Ledger::default();
        // The user's write at 10; lock at 11, a config write, the records'
        // transaction at 13.
        l.keys(11, keys(&["svc-handler/locks/default/default/web-1"]));
        l.not_kv(12);
        l.keys(
            13,
            keys(&["svc-handler/observed/default/default/web-1/observed.json"]),
        );
        assert_eq!(l.account(10, 13, None), Account::All);
        assert_eq!(l.account(10, 11, None), Account::All);
        // The user's write is in the range: only the last index is known.
        assert_eq!(l.account(9, 13, None), Account::Last);
        // Someone else's write last.
        assert_eq!(l.account(10, 14, None), Account::No);
        // The first answer and an index that went backwards: nothing.
        assert_eq!(l.account(0, 13, None), Account::No);
        assert_eq!(l.account(13, 12, None), Account::No);
        // A transaction in flight may be index 14: wait for it, but only
        // for transactions in flight then.
        let seq = l.begin();
        assert_eq!(l.account(10, 14, None), Account::Pending(seq));
        let later = l.begin();
        assert_eq!(l.account(10, 14, Some(seq)), Account::Pending(seq));
        l.end(seq);
        assert_eq!(l.account(10, 14, Some(seq)), Account::No);
        l.keys(14, keys(&["svc-handler/locks/default/default/web-2"]));
        assert_eq!(l.account(10, 14, Some(seq)), Account::All);
        l.end(later);
        // Past the span looked into: the last index only.
        l.keys(20_000, keys(&["svc-handler/locks/default/default/web-3"]));
        assert_eq!(
            l.account(20_000 - MAX_SPAN - 1, 20_000, None),
            Account::Last
        );
    }

    #[test]
    fn a_key_that_is_no_unit_is_not_explained() {
        let mut l = Ledger::default();
        // A prefix under the shard that is not inside a service folder.
        l.keys(5, keys(&["svc-handler/desired/default/default/web"]));
        // A key that is its own unit (a stray key) is fine.
        assert_eq!(
            l.explain(ROOT, SHARD, 4, 5, None),
            units(&["svc-handler/desired/default/default/web"])
        );
        // A service folder's whole tree: that folder.
        l.keys(6, keys(&["svc-handler/desired/default/default/web-1/"]));
        assert_eq!(
            l.explain(ROOT, SHARD, 5, 6, None),
            units(&["svc-handler/desired/default/default/web-1/"])
        );
        // A tree above the folders: not explained.
        for tree in ["svc-handler/desired/", "svc-handler/desired/default/"] {
            l.keys(7, keys(&[tree]));
            assert_eq!(l.explain(ROOT, ROOT, 6, 7, None), Explained::No);
        }
    }

    #[test]
    fn an_unknown_index_waits_only_for_transactions_already_in_flight() {
        let mut l = Ledger::default();
        l.keys(3, keys(&["svc-handler/desired/default/default/web-1/x"]));
        let a = l.begin();
        // Index 2 unknown; transaction `a` may be it.
        assert_eq!(l.explain(ROOT, SHARD, 1, 3, None), Explained::Pending(a));
        let b = l.begin();
        l.end(a);
        // `a` answered without it; `b` was sent after the first look: no
        // wait.
        assert_eq!(l.explain(ROOT, SHARD, 1, 3, Some(a)), Explained::No);
        // Had `a` been recorded at 2: explained.
        l.not_kv(2);
        assert_eq!(
            l.explain(ROOT, SHARD, 1, 3, Some(a)),
            units(&["svc-handler/desired/default/default/web-1/"])
        );
        l.end(b);
    }

    #[test]
    fn a_config_index_never_hides_a_transaction_at_the_same_index() {
        let mut l = Ledger::default();
        l.keys(7, keys(&["svc-handler/desired/default/default/web-1/x"]));
        l.not_kv(7);
        assert_eq!(
            l.explain(ROOT, SHARD, 6, 7, None),
            units(&["svc-handler/desired/default/default/web-1/"])
        );
    }

    #[test]
    fn the_oldest_indexes_are_forgotten_past_the_bound() {
        let mut l = Ledger::default();
        for i in 1..=(KEPT as u64 + 10) {
            l.not_kv(i);
        }
        l.keys(
            KEPT as u64 + 11,
            keys(&["svc-handler/desired/default/default/web-1/x"]),
        );
        assert_eq!(l.wrote.len(), KEPT);
        assert_eq!(l.explain(ROOT, SHARD, 5, 20, None), Explained::No);
        let top = KEPT as u64 + 11;
        assert!(matches!(
            l.explain(ROOT, SHARD, top - 100, top, None),
            Explained::Units(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_waits_for_the_reconcile_of_its_change_at_most_the_grace() {
        let shared = Arc::new(SharedLedger::default());
        let grace = Duration::from_millis(100);
        let wait = |since| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.own_write(ROOT, SHARD, since, grace).await })
        };
        // The change was found at 10; the reconcile locks at 11, writes an
        // entry at 12, then its records under the shard at 13.
        let waiter = wait(10);
        let flight = shared.begin();
        shared.with(|l| l.keys(11, keys(&["svc-handler/locks/default/default/web-1"])));
        shared.with(|l| l.not_kv(12));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!waiter.is_finished(), "no write under the shard yet");
        shared.with(|l| {
            let k = "svc-handler/desired/default/default/web-1/resolver.json";
            l.keys(13, keys(&[k]))
        });
        drop(flight);
        let want: BTreeSet<String> =
            ["svc-handler/desired/default/default/web-1/".to_string()].into();
        assert_eq!(waiter.await.unwrap(), Some((13, want)));
        // Someone else wrote at 15, before the next records at 16: not
        // explained, asked as usual at once.
        let start = tokio::time::Instant::now();
        shared.with(|l| l.keys(16, keys(&["svc-handler/desired/default/default/web-2/x"])));
        assert_eq!(wait(13).await.unwrap(), None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // No write comes (a change that needed none): the grace runs out.
        assert_eq!(wait(16).await.unwrap(), None);
        assert_eq!(start.elapsed(), grace);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waits_for_the_transaction_that_wrote_it() {
        let shared = Arc::new(SharedLedger::default());
        shared.with(|l| l.keys(3, keys(&["svc-handler/desired/default/default/web-1/x"])));
        let flight = shared.begin();
        let waiter = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.explain(ROOT, SHARD, 1, 3, LEDGER_GRACE).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!waiter.is_finished());
        // The transaction answers and is recorded.
        shared.with(|l| l.keys(2, keys(&["svc-handler/observed/x"])));
        drop(flight);
        let got = waiter.await.unwrap();
        let want: BTreeSet<String> =
            ["svc-handler/desired/default/default/web-1/".to_string()].into();
        assert_eq!(got, Some(want));
        // Nothing in flight and an index unknown: no wait at all.
        let start = tokio::time::Instant::now();
        assert_eq!(shared.explain(ROOT, SHARD, 1, 4, LEDGER_GRACE).await, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A transaction that never answers: the grace runs out.
        let _stuck = shared.begin();
        assert_eq!(shared.explain(ROOT, SHARD, 1, 4, LEDGER_GRACE).await, None);
        assert_eq!(start.elapsed(), LEDGER_GRACE);
    }
}
