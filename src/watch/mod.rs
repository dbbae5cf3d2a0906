//! Watching Consul with blocking queries, and the pure decisions around it:
//! which index to wait on next, what changed between two listings of the
//! desired prefix, which owned config entries drifted from their records,
//! and how fast the loop may go (a token bucket).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::consul::{ConfigEntry, KvPair, QueryMeta, QueryOptions};
use crate::entries;
use crate::keys::{DesiredKey, Layout, ServiceId};
use crate::kind::Kind;
use serde::Deserialize;

pub mod ledger;
pub mod locate;
pub mod shards;

/// The index to wait on after an answer carrying `returned`, per Consul's
/// rules: an index that went backwards resets to 0 (the next read is a fresh,
/// non-blocking one); otherwise never below 1, so that a blocking read never
/// degrades into a busy loop of non-blocking ones.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// What one listing of `<prefix>/desired/` holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every service with a base.json, and that base.json's ModifyIndex.
    pub services: BTreeMap<ServiceId, u64>,
    /// Services with records but no base.json (deleted while nobody watched).
    pub orphans: BTreeSet<ServiceId>,
    /// Keys that do not fit the layout: key → (reason, ModifyIndex).
    pub invalid: BTreeMap<String, (String, u64)>,
    /// What the drift check needs of each record found (readable ones only).
    pub records: HashMap<(ServiceId, Kind), Seen>,
    /// Paused services (a pause.json), and its ModifyIndex.
    pub paused: BTreeMap<ServiceId, u64>,
}

/// What the drift check needs of a record, and no more: the snapshot is
/// kept between listings, so its size is the daemon's memory per service.
/// The entry's name and the ModifyIndex it was left at; for a link, the
/// link itself (a gateway changes whenever any service's link does).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Seen {
    pub name: String,
    pub modify_index: u64,
    /// The link, for a terminating-gateway record only.
    #[serde(skip)]
    pub link: Option<serde_json::Value>,
}

/// A link record's fields the drift check reads.
#[derive(Deserialize)]
struct SeenLink {
    name: String,
    modify_index: u64,
    object: serde_json::Value,
}

impl Seen {
    /// The record in `value`, or `None` when it is not a readable record.
    fn parse(kind: Kind, value: &[u8]) -> Option<Seen> {
        if kind == Kind::TerminatingGateway {
            let l: SeenLink = serde_json::from_slice(value).ok()?;
            Some(Seen {
                name: l.name,
                modify_index: l.modify_index,
                link: Some(l.object),
            })
        } else {
            serde_json::from_slice(value).ok()
        }
    }
}

impl Snapshot {
    pub fn from_pairs(layout: &Layout, pairs: &[KvPair]) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut with_records = BTreeSet::new();
        for p in pairs {
            match layout.parse_desired_key(&p.key) {
                DesiredKey::Base(id) => {
                    snap.services.insert(id, p.modify_index);
                }
                DesiredKey::Record(id, kind) => {
                    with_records.insert(id.clone());
                    if let Some(r) = Seen::parse(kind, &p.value) {
                        snap.records.insert((id, kind), r);
                    }
                }
                DesiredKey::Invalid { key, reason } => {
                    snap.invalid.insert(key, (reason, p.modify_index));
                }
                DesiredKey::Pause(id) => {
                    snap.paused.insert(id, p.modify_index);
                }
                DesiredKey::Other => {}
            }
        }
        snap.orphans = with_records
            .into_iter()
            .filter(|id| !snap.services.contains_key(id))
            .collect();
        snap
    }

    /// About how many keys the listing held: a base.json per service, a
    /// key per readable record, invalid key and pause.json (what a probe of
    /// the tree walks, give or take unreadable records and other keys a folder may hold).
    pub fn keys(&self) -> usize {
        self.services.len() + self.records.len() + self.invalid.len() + self.paused.len()
    }

    /// Takes out what `part` (a listing of one shard, or of several) holds:
    /// its services, orphans, invalid keys and records.
    pub fn remove_part(&mut self, part: &Snapshot) {
        for id in part.services.keys() {
            self.services.remove(id);
        }
        for id in &part.orphans {
            self.orphans.remove(id);
        }
        for key in part.invalid.keys() {
            self.invalid.remove(key);
        }
        for key in part.records.keys() {
            self.records.remove(key);
        }
        for id in part.paused.keys() {
            self.paused.remove(id);
        }
    }

    /// Takes out and returns what this snapshot holds of `units` (service
    /// folders `<p>/<ns>/<name>/` and stray keys under `layout`'s desired
    /// prefix): the part a read of just those units replaces.
    pub fn take_units(&mut self, layout: &Layout, units: &BTreeSet<String>) -> Snapshot {
        let root = layout.desired_prefix();
        // The services of the units, looked up one by one: a read of a few
        // units costs as much with 20,000 services present as with 20.
        let ids: Vec<ServiceId> = (units.iter())
            .filter_map(
                |u| match layout.parse_desired_key(&format!("{u}base.json")) {
                    DesiredKey::Base(id) if layout.service_dir(&id) == *u => Some(id),
                    _ => None,
                },
            )
            .collect();
        let mut out = Snapshot::default();
        for id in ids {
            if let Some(g) = self.services.remove(&id) {
                out.services.insert(id.clone(), g);
            }
            if self.orphans.remove(&id) {
                out.orphans.insert(id.clone());
            }
            for kind in Kind::ALL {
                let key = (id.clone(), kind);
                if let Some(seen) = self.records.remove(&key) {
                    out.records.insert(key, seen);
                }
            }
            if let Some(g) = self.paused.remove(&id) {
                out.paused.insert(id, g);
            }
        }
        self.invalid.retain(|key, v| {
            let take = shards::unit_of(&root, key).is_some_and(|u| units.contains(u));
            if take {
                out.invalid.insert(key.clone(), v.clone());
            }
            !take
        });
        out
    }

    /// Puts in what `part` holds. Shards own disjoint keys, and a service's
    /// keys are always in one shard, so parts never overlap.
    pub fn add_part(&mut self, part: Snapshot) {
        self.services.extend(part.services);
        self.orphans.extend(part.orphans);
        self.invalid.extend(part.invalid);
        self.records.extend(part.records);
        self.paused.extend(part.paused);
    }
}

/// What to do after a new listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New or changed base.json: service and its generation.
    pub changed: Vec<(ServiceId, u64)>,
    /// base.json gone.
    pub gone: Vec<ServiceId>,
    /// Keys outside the layout, new or changed: key, reason, ModifyIndex.
    pub invalid: Vec<(String, String, u64)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gone.is_empty() && self.invalid.is_empty()
    }
}

/// Compares two listings. The first listing (`previous` = `None`) reports
/// every service as changed and every orphan as gone. Records written by
/// the daemon itself change nothing here: only base.json generations count.
pub fn diff(previous: Option<&Snapshot>, next: &Snapshot) -> Changes {
    let mut out = Changes::default();
    match previous {
        None => {
            out.changed = next
                .services
                .iter()
                .map(|(id, g)| (id.clone(), *g))
                .collect();
            out.gone = next.orphans.iter().cloned().collect();
            out.invalid = next
                .invalid
                .iter()
                .map(|(k, (r, i))| (k.clone(), r.clone(), *i))
                .collect();
        }
        Some(prev) => {
            for (id, g) in &next.services {
                // A pause or resume counts as a change of the service.
                if prev.services.get(id) != Some(g) || prev.paused.get(id) != next.paused.get(id) {
                    out.changed.push((id.clone(), *g));
                }
            }
            for id in prev.services.keys() {
                if !next.services.contains_key(id) {
                    out.gone.push(id.clone());
                }
            }
            for (k, (r, i)) in &next.invalid {
                if prev.invalid.get(k).map(|(_, pi)| pi) != Some(i) {
                    out.invalid.push((k.clone(), r.clone(), *i));
                }
            }
        }
    }
    out
}

/// The ModifyIndex each service's objects had when this instance last
/// applied them: newer than the records the watch has seen, for a moment.
pub type Applied = HashMap<(ServiceId, Kind), u64>;

/// Services whose owned entries of `kind` no longer match their records:
/// a different ModifyIndex, or the entry gone. For terminating gateways, a
/// recorded link that is missing or different. Only services with a
/// base.json count (deletions are the watch's business). An entry whose
/// ModifyIndex is the one this instance just applied (`applied`) is in sync
/// even if the listing of records does not show it yet.
pub fn drifted(
    snapshot: &Snapshot,
    kind: Kind,
    entries: &[ConfigEntry],
    applied: &Applied,
) -> Vec<ServiceId> {
    let rk = kind;
    let by_name: HashMap<&str, &ConfigEntry> = entries.iter().map(|e| (e.name(), e)).collect();
    // Every service with a record of this kind, or an object of this kind
    // this instance just applied (its record may not be listed yet).
    let mut candidates: BTreeMap<&ServiceId, (Option<&Seen>, Option<u64>)> = BTreeMap::new();
    for ((id, k), rec) in &snapshot.records {
        if *k == rk {
            candidates.entry(id).or_default().0 = Some(rec);
        }
    }
    for ((id, k), idx) in applied {
        if *k == kind {
            candidates.entry(id).or_default().1 = Some(*idx);
        }
    }
    let mut out = Vec::new();
    for (id, (rec, applied_index)) in candidates {
        if !snapshot.services.contains_key(id) {
            continue;
        }
        // Entries are listed per scope; a record in another partition or
        // namespace is checked by the periodic resync.
        let name = match (kind, rec) {
            (_, Some(r)) => r.name.as_str(),
            (Kind::TerminatingGateway, None) => continue,
            (_, None) => id.name.as_str(),
        };
        let known = rec.map(|r| r.modify_index).max(applied_index);
        let drift = match by_name.get(name) {
            None => true,
            Some(e) if Some(e.modify_index()) == known => false,
            // A gateway changes whenever any service's link does: compare
            // this service's link with its record.
            Some(gw) if kind == Kind::TerminatingGateway => {
                match (
                    rec.and_then(|r| r.link.as_ref()),
                    entries::find_link(&gw.0, id),
                ) {
                    (Some(recorded), Some(link)) => !entries::links_equal(link, recorded),
                    _ => true,
                }
            }
            Some(_) => true,
        };
        if drift {
            out.push(id.clone());
        }
    }
    out
}

/// A token bucket: `burst` tokens, refilled at `per_second`. A loop that
/// takes a token before each request degrades to polling at that rate when
/// what it watches flaps, instead of spinning.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, per_second: f64) -> Self {
        TokenBucket {
            capacity: burst as f64,
            tokens: burst as f64,
            per_second,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + add).min(self.capacity);
        self.last = now;
    }

    /// How long until a token is available (zero when one is).
    pub fn wait_time(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }

    /// Waits for a token and takes it.
    pub async fn take(&mut self) {
        let wait = self.wait_time();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// The most own-write indexes kept between two probe answers (a probe that
/// stays away long forgets the oldest; then its next wake-up lists).
const OWN_WRITES_KEPT: usize = 4096;

/// Adds a raft index (0 is none) to `set`, which keeps the
/// [`OWN_WRITES_KEPT`] highest.
fn keep_index(set: &mut std::collections::BTreeSet<u64>, index: u64) {
    if index == 0 {
        return;
    }
    set.insert(index);
    while set.len() > OWN_WRITES_KEPT {
        set.pop_first();
    }
}

/// The indexes of this instance's own config-entry writes, as read back
/// (and the indexes of entries it found in place, which are older), and the
/// reconciles in flight, whose writes may not be recorded yet: for the drift
/// probe ([`drift_probe`]).
#[derive(Debug, Default)]
pub struct OwnWrites {
    indexes: std::collections::BTreeSet<u64>,
    in_flight: usize,
    /// The ModifyIndexes that records under the desired prefix hold, as the
    /// watch read them: config writes svc-handler made and verified, this
    /// instance's or another's on the same prefix.
    recorded: std::collections::BTreeSet<u64>,
    /// Services whose lock another instance held at this instance's last
    /// try: their writes are coming, and then their records.
    held_elsewhere: std::collections::HashSet<ServiceId>,
}

impl OwnWrites {
    pub fn record(&mut self, index: u64) {
        keep_index(&mut self.indexes, index);
    }

    /// A record read under the desired prefix holds an entry left at
    /// `index`: a config write svc-handler made and verified.
    pub fn recorded(&mut self, index: u64) {
        keep_index(&mut self.recorded, index);
    }

    /// Whether another instance held `id`'s lock when this one last tried.
    pub fn held_elsewhere(&mut self, id: &ServiceId, held: bool) {
        if held {
            self.held_elsewhere.insert(id.clone());
        } else {
            self.held_elsewhere.remove(id);
        }
    }

    /// How long the drift probe waits for an unknown write to show up in a
    /// record ([`RECORD_GRACE`] while another instance holds a lock this
    /// one wanted: its writes are coming; else not at all).
    pub fn record_grace(&self) -> Duration {
        if self.held_elsewhere.is_empty() {
            Duration::ZERO
        } else {
            RECORD_GRACE
        }
    }

    /// A reconcile starts: its writes are recorded when it ends.
    pub fn begin(&mut self) {
        self.in_flight += 1;
    }

    /// A reconcile ended (after its writes were recorded).
    pub fn end(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Forgets every index up to `index` (no later answer can be them).
    fn forget_through(&mut self, index: u64) {
        self.indexes = self.indexes.split_off(&index.saturating_add(1));
        self.recorded = self.recorded.split_off(&index.saturating_add(1));
    }
}

/// What the drift probe does after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftProbe {
    /// Nothing to check: the first answer (the startup sync checks
    /// everything), a wait that timed out, or a change that is this
    /// instance's own write.
    Skip,
    /// Not known as this instance's own yet, but reconciles are in flight
    /// whose writes are recorded only when they end: ask again shortly.
    Wait,
    /// Someone else wrote a config entry (or Consul went back in time):
    /// list every kind and look for drift.
    List,
    /// The write is one another svc-handler instance on the same prefix
    /// made and recorded: nothing to list for it, but it may hide a foreign
    /// write just before it, so a listing is due later (see
    /// [`sweep_when`]).
    Later,
}

/// How long the drift probe waits, while another instance holds the lock
/// of a service this one wanted ([`OwnWrites::record_grace`]), for a write
/// it does not know to show up in a record (that instance's reconcile
/// records its writes when it ends; the watch reads records a few
/// milliseconds after) before it takes the write as foreign.
pub const RECORD_GRACE: Duration = Duration::from_secs(2);

/// How long the drift probe waits for reconciles in flight to record their
/// writes before it takes a change as foreign.
pub const OWN_WRITE_GRACE: Duration = Duration::from_secs(2);

/// The drift probe's decision, purely.
///
/// The probe is a blocking list of `proxy-defaults` (at most one entry,
/// `global`): Consul 1.8 wakes a config-entry list on any config write, of
/// any kind, and answers with the config table's index, so the probe learns
/// of every config write for a few bytes, and the kinds svc-handler owns are
/// listed only when a write is not its own. An answer at `now` after `last`
/// is this instance's own when `now` is the index of one of its writes: all
/// writes up to `now` are then taken as its own. The probe answers as soon
/// as a reconcile writes, before that reconcile has read its entry back and
/// recorded the index; so while reconciles are in flight and `patient` (the
/// caller's [`OWN_WRITE_GRACE`] has not run out) the answer is [`Wait`].
/// A foreign write that lands in the milliseconds before one of this
/// instance's own writes, before the probe is answered, is therefore not
/// listed for; the next foreign write lists everything, and the periodic
/// resync (`--resync-interval`) bounds the wait. A table index below `last`
/// means Consul was wiped or restored: list, and forget the own writes
/// (they are not of this history).
///
/// An answer at an index a record holds (`OwnWrites::recorded`: a write
/// another instance on the same prefix made, verified and recorded; once
/// this instance's reconciles in flight are waited for, since the watch may
/// read one's record before it ends) lists nothing now but makes a listing
/// due later ([`Later`]), so that a foreign
/// write hidden behind it is found within that delay; while
/// `records_patient` (the caller's [`RECORD_GRACE`]) an unknown index waits
/// for such a record.
///
/// [`Wait`]: DriftProbe::Wait
/// [`Later`]: DriftProbe::Later
pub fn drift_probe(
    last: u64,
    now: u64,
    own: &mut OwnWrites,
    patient: bool,
    records_patient: bool,
) -> DriftProbe {
    if last == 0 || now == last {
        own.forget_through(now);
        return DriftProbe::Skip;
    }
    if now < last {
        own.indexes.clear();
        own.recorded.clear();
        return DriftProbe::List;
    }
    if own.indexes.contains(&now) {
        own.forget_through(now);
        return DriftProbe::Skip;
    }
    // A record may hold this instance's own write before its reconcile
    // has ended and recorded the index: that reconcile is waited for first.
    if own.in_flight > 0 && patient {
        return DriftProbe::Wait;
    }
    if own.recorded.contains(&now) {
        own.forget_through(now);
        return DriftProbe::Later;
    }
    if records_patient {
        return DriftProbe::Wait;
    }
    own.forget_through(now);
    DriftProbe::List
}

/// What a *wake probe* lists: a blocking keys-only listing of a tree's
/// prefix followed by this, a prefix no key begins with. It walks no key
/// and answers nothing, yet Consul (1.8.7 measured; the same code in later
/// versions: `KVS.ListKeys` and go-memdb's `SeekPrefixWatch`) answers it
/// when any key under the deepest node of its radix tree on that path
/// changes, that is any key under the tree's prefix (and only those, once
/// the tree holds keys), with the index of the whole KV store. So it tells
/// *that* the tree changed, for the cost of a few bytes, where a keys-only
/// listing of the tree walks every key under it (11.5 ms of Consul CPU with
/// 20,000 services) to tell the tree's own index. What it cannot tell, the
/// caller asks that listing for ([`wake_step`]). An answer that lists keys
/// means someone wrote under this very prefix: the caller goes back to the
/// listing for good.
pub const WAKE_SUFFIX: &str = "~";

/// What a caller of a wake probe does with its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Nothing to look at: the wait ran out, or every write since the last
    /// answer was this instance's own.
    Quiet,
    /// The caller knows what changed (a shard read it, or the last write
    /// is this instance's own), but not that nothing else did: as a probe's
    /// explained answer, it makes a sweep due later ([`sweep_when`]).
    Explained,
    /// Ask the tree's own listing (its exact index), and decide as before.
    Exact,
}

/// A wake probe's decision, purely: it answered at `now` (the KV store's
/// index) after `prev`. `accounted`: every raft index after `prev` up to
/// `now` is one of this instance's own writes
/// ([`ledger::Account::All`]); `explained`: the caller knows what changed.
/// The first answer (`prev` 0) and an index that went backwards (a Consul
/// wiped or restored) know nothing: [`Wake::Exact`].
pub fn wake_step(prev: u64, now: u64, accounted: bool, explained: bool) -> Wake {
    if prev == 0 || now < prev {
        Wake::Exact
    } else if now == prev || accounted {
        Wake::Quiet
    } else if explained {
        Wake::Explained
    } else {
        Wake::Exact
    }
}

impl Wake {
    /// For [`Wake::Quiet`] and [`Wake::Explained`]: whether to sweep now,
    /// and when the next sweep is due, as [`sweep_when`] says (a sweep due
    /// from an explained change before is made when its time comes, whether
    /// the tree moved since or not). `None` for [`Wake::Exact`]: the
    /// listing decides.
    pub fn sweep(
        self,
        due: Option<Instant>,
        sweep_bytes: u64,
        now: Instant,
    ) -> Option<(bool, Option<Instant>)> {
        match self {
            Wake::Exact => None,
            step => Some(sweep_when(
                step == Wake::Explained,
                true,
                due,
                sweep_bytes,
                now,
            )),
        }
    }
}

/// A sweep that a probe's explained answer makes due (see [`sweep_when`])
/// comes after a delay that spends at most this many bytes a second on
/// sweeps. Between [`SWEEP_LATER_MIN`] and
/// [`SWEEP_LATER_MAX`]: 1 s for a few hundred services, 16 s at 5,000,
/// 60 s past 20,000.
const SWEEP_LATER_BYTES_PER_SECOND: f64 = 16.0 * 1024.0;
const SWEEP_LATER_MIN: Duration = Duration::from_secs(1);
const SWEEP_LATER_MAX: Duration = Duration::from_secs(60);

/// A probe's decision, shared by the desired watch's guard and the
/// observed.json watch: each keeps a cheap blocking probe of a whole tree
/// (a few bytes, answered on any change with the tree's index) and makes a
/// costly *sweep* of the tree (a listing of its keys) only when needed.
/// After the probe answered: whether to sweep now, and when the next sweep
/// is due. A change the caller cannot explain (`explained` false: no shard
/// reached its index; not one of this instance's own writes) is swept for
/// now. One it can explain may hide another that landed just before it
/// (the probe shows only the highest index), so it makes a sweep due later,
/// by the last sweep's size, [`SWEEP_LATER_BYTES_PER_SECOND`], between
/// [`SWEEP_LATER_MIN`] and [`SWEEP_LATER_MAX`]; more changes do not push it
/// back, and it is made when its time comes whether the tree moved since or
/// not.
pub fn sweep_when(
    moved: bool,
    explained: bool,
    due: Option<Instant>,
    sweep_bytes: u64,
    now: Instant,
) -> (bool, Option<Instant>) {
    if moved && !explained {
        return (true, due);
    }
    let due = match due {
        None if moved => {
            let later = Duration::from_secs_f64(sweep_bytes as f64 / SWEEP_LATER_BYTES_PER_SECOND);
            Some(now + later.clamp(SWEEP_LATER_MIN, SWEEP_LATER_MAX))
        }
        other => other,
    };
    (due.is_some_and(|d| d <= now), due)
}

/// A budget of bytes per second shared by the drift listings: each listing
/// spends its size; while the budget is in deficit the next listing waits
/// until it is paid back. So the drift listings together read at most
/// `per_second` on average, however often config entries are written, and
/// the wait grows with the size of the listings (the drift-correction
/// latency the README states).
#[derive(Debug)]
pub struct ByteBudget {
    per_second: f64,
    /// Bytes that may be read now; negative: owed.
    balance: f64,
    /// The most that may be saved up (one second's worth).
    capacity: f64,
    last: Instant,
}

impl ByteBudget {
    pub fn new(per_second: f64) -> Self {
        ByteBudget {
            per_second,
            balance: per_second,
            capacity: per_second,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let add = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.balance = (self.balance + add).min(self.capacity);
        self.last = now;
    }

    /// How long until the next listing may go (zero when nothing is owed).
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.balance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.balance / self.per_second)
        }
    }

    /// A listing of `bytes` bytes was read.
    pub fn spend(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.balance -= bytes as f64;
    }
}

/// How many bytes per second the watch of the desired prefix may fetch.
/// Consul 1.8 cannot filter a recursive read, so every wake-up fetches the
/// whole prefix, records included; pacing by size keeps a bulk apply's watch
/// traffic linear in the number of services instead of quadratic.
pub const WATCH_BYTES_PER_SECOND: f64 = 8.0 * 1024.0 * 1024.0;

/// The least time between two reads of a listing of `bytes` bytes (at most
/// 5 s, so that a change still lands within seconds in a huge fleet).
pub fn pace(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / WATCH_BYTES_PER_SECOND).min(Duration::from_secs(5))
}

/// A probe (a keys-only listing with the separator `/`) answers in a few
/// bytes, but Consul 1.8 walks every key under its prefix to answer it, and
/// again each time it answers: about 0.12 µs a key (10 ms for the 80,000
/// keys of 20,000 services; see ARCHITECTURE.md). A probe that walks `keys`
/// keys is asked again no sooner than this per key after it was asked, so
/// its walks take at most about a quarter of a percent of one Consul core
/// whatever the size of the tree. A probe waiting when a change comes still
/// answers at once: only a busy tree is probed less often.
pub const PROBE_GAP_PER_KEY: Duration = Duration::from_micros(50);

/// The longest [`walk_gap`]: past 200,000 keys a probe still answers every
/// 10 s, so that what it looks for is found within seconds.
pub const WALK_GAP_MAX: Duration = Duration::from_secs(10);

/// The least time between two answers of a probe that walks `keys` keys
/// (see [`PROBE_GAP_PER_KEY`]).
pub fn walk_gap(keys: usize) -> Duration {
    PROBE_GAP_PER_KEY
        .saturating_mul(u32::try_from(keys).unwrap_or(u32::MAX))
        .min(WALK_GAP_MAX)
}

/// Backoff for a watch loop's errors: jittered, exponential, capped, and
/// reset (by building a new one) after a success.
pub fn error_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build()
}

/// The state of one blocking-query loop, shared by the watch of the desired
/// prefix and the config-entry watches: the index to wait past, the token
/// bucket, pacing by answer size (never less than `min_gap` between two
/// requests), and the error backoff, reset after each success.
pub struct BlockingLoop {
    index: u64,
    /// `None`: paced by the cost of what is read only.
    bucket: Option<TokenBucket>,
    backoff: ExponentialBackoff,
    min_gap: Duration,
    /// Pacing by size: the bytes a second the loop may read on average.
    bytes_per_second: f64,
    /// Pacing by what Consul walks to answer (see [`walk_gap`]).
    walk_gap: Duration,
    asked: Instant,
    next_allowed: Instant,
}

impl BlockingLoop {
    /// A loop allowed `per_second` requests after a burst of 2.
    pub fn new(per_second: f64, min_gap: Duration) -> Self {
        BlockingLoop {
            bucket: Some(TokenBucket::new(2, per_second)),
            ..BlockingLoop::by_cost(min_gap)
        }
    }

    /// A loop limited by the cost of what it reads, not by a count of
    /// wake-ups: after an answer of `n` bytes the next request waits
    /// [`pace`]`(n)` (at least `min_gap`), so a change after idle, or right
    /// after a small answer, is read at once, and a flapping key over a big
    /// listing still cannot make the loop hot.
    pub fn by_cost(min_gap: Duration) -> Self {
        BlockingLoop {
            index: 0,
            bucket: None,
            backoff: error_backoff(),
            min_gap,
            bytes_per_second: WATCH_BYTES_PER_SECOND,
            walk_gap: Duration::ZERO,
            asked: Instant::now(),
            next_allowed: Instant::now(),
        }
    }

    /// Paced by cost at `bytes_per_second` (instead of
    /// [`WATCH_BYTES_PER_SECOND`]), and not capped: a big listing read rarely.
    pub fn by_rate(min_gap: Duration, bytes_per_second: f64) -> Self {
        BlockingLoop {
            bytes_per_second,
            ..BlockingLoop::by_cost(min_gap)
        }
    }

    /// Tells the loop how many keys Consul walks to answer it: from the
    /// next answer on, requests go at least [`walk_gap`]`(keys)` apart.
    pub fn walks(&mut self, keys: usize) {
        self.walk_gap = walk_gap(keys);
    }

    /// The index the next request waits past (0: a fresh, non-blocking read).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Waits until the next request may go: a token, and the pacing of the
    /// last answer.
    pub async fn ready(&mut self) {
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.take().await;
        }
        tokio::time::sleep_until(self.next_allowed).await;
        self.asked = Instant::now();
    }

    /// For a request made elsewhere (a spawned read): when it may go, by the
    /// pacing of the last answer; counted as asked then.
    pub fn start(&mut self) -> Instant {
        self.asked = self.next_allowed.max(Instant::now());
        self.asked
    }

    /// `fresh` for a fresh read, else a blocking read past the index.
    pub fn options(&self, fresh: QueryOptions, wait: Duration) -> QueryOptions {
        if self.index == 0 {
            fresh
        } else {
            QueryOptions {
                compress: fresh.compress,
                ..QueryOptions::blocking(self.index, wait)
            }
        }
    }

    /// Takes an answer in (index per Consul's rules, pacing, backoff reset);
    /// returns the index waited past before it.
    pub fn answered(&mut self, meta: &QueryMeta) -> u64 {
        let by_size = if self.bytes_per_second == WATCH_BYTES_PER_SECOND {
            pace(meta.body_bytes)
        } else {
            Duration::from_secs_f64(meta.body_bytes as f64 / self.bytes_per_second)
        };
        self.next_allowed = self.asked + by_size.max(self.min_gap).max(self.walk_gap);
        self.backoff = error_backoff();
        let previous = self.index;
        self.index = next_index(previous, meta.index);
        previous
    }

    /// The loop's state moved to `index` without a request of its own (the
    /// instance read what its own writes changed): the index is taken as an
    /// answer's would be, and the pacing is left as the last answer set it,
    /// since nothing was listed.
    pub fn moved_to(&mut self, index: u64) -> u64 {
        self.backoff = error_backoff();
        let previous = self.index;
        self.index = next_index(previous, index);
        previous
    }

    /// A request failed: how long to wait before the next one. The next
    /// read is a fresh, non-blocking one: the Consul that answers it may be
    /// another server, or one restarted with its data wiped or restored from
    /// an older snapshot, whose index is below the one waited past; a
    /// blocking read past that index would wait out the whole wait for a
    /// change it would not report.
    pub fn failed(&mut self) -> Duration {
        self.index = 0;
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(5));
        self.next_allowed = Instant::now() + delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Record;
    use serde_json::json;

    fn answer(index: u64, body_bytes: u64) -> QueryMeta {
        QueryMeta {
            index,
            body_bytes,
            ..QueryMeta::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_move_without_a_listing_does_not_hold_the_next_read_back() {
        let mut lp = BlockingLoop::by_cost(Duration::from_millis(5));
        lp.ready().await;
        assert_eq!(lp.answered(&answer(10, 2_000)), 0);
        // The instance read what its own writes changed, 1 ms later: the
        // index moves on, and the next read goes out when the last answer
        // allows, not 5 ms after this move.
        tokio::time::advance(Duration::from_millis(5)).await;
        lp.start();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(lp.moved_to(14), 10);
        assert_eq!(lp.index(), 14);
        let t = Instant::now();
        lp.ready().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // An index that went backwards resets to a fresh read, as always.
        lp.moved_to(3);
        assert_eq!(lp.index(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_paced_by_cost_reads_a_lone_change_at_once() {
        let mut lp = BlockingLoop::by_cost(Duration::from_millis(5));
        // Back-to-back small answers: never more than the minimal gap.
        for i in 1..=20 {
            let t = Instant::now();
            lp.ready().await;
            assert!(
                t.elapsed() <= Duration::from_millis(5),
                "wake-up {i}: {:?}",
                t.elapsed()
            );
            lp.answered(&answer(i, 2_000));
        }
        // A big listing paces the next read by its size.
        let big = (WATCH_BYTES_PER_SECOND as u64) / 2;
        lp.ready().await;
        lp.answered(&answer(30, big));
        let t = Instant::now();
        lp.ready().await;
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        // A token bucket, by contrast, delays the third of three quick ones.
        let mut counted = BlockingLoop::new(10.0, Duration::ZERO);
        for i in 1..=2 {
            counted.ready().await;
            counted.answered(&answer(i, 10));
        }
        let t = Instant::now();
        counted.ready().await;
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_wake_probe_asks_the_listing_unless_it_knows() {
        // First answer, and a Consul gone back in time: nothing is known.
        assert_eq!(wake_step(0, 50, true, true), Wake::Exact);
        assert_eq!(wake_step(60, 50, true, true), Wake::Exact);
        // The wait ran out, or only this instance wrote.
        assert_eq!(wake_step(50, 50, false, false), Wake::Quiet);
        assert_eq!(wake_step(50, 57, true, false), Wake::Quiet);
        // Known to the caller, but another write may hide behind it.
        assert_eq!(wake_step(50, 57, false, true), Wake::Explained);
        // Not known: the listing decides.
        assert_eq!(wake_step(50, 57, false, false), Wake::Exact);

        let t = Instant::now();
        assert_eq!(Wake::Exact.sweep(None, 0, t), None);
        // An explained wake makes a sweep due later; a quiet one makes the
        // sweep due when its time has come.
        let (now, due) = Wake::Explained.sweep(None, 0, t).unwrap();
        assert!(!now && due == Some(t + SWEEP_LATER_MIN));
        assert_eq!(Wake::Quiet.sweep(None, 0, t), Some((false, None)));
        let later = t + SWEEP_LATER_MIN;
        assert_eq!(Wake::Quiet.sweep(due, 0, later), Some((true, due)));
    }

    #[test]
    fn a_probes_gap_grows_with_the_keys_it_walks() {
        assert_eq!(walk_gap(0), Duration::ZERO);
        assert_eq!(walk_gap(400), Duration::from_millis(20));
        assert_eq!(walk_gap(20_000), Duration::from_secs(1));
        assert_eq!(walk_gap(80_000), Duration::from_secs(4));
        assert_eq!(walk_gap(10_000_000), WALK_GAP_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_over_a_big_tree_answers_a_lone_change_at_once_and_then_waits() {
        let mut lp = BlockingLoop::by_cost(Duration::from_millis(250));
        lp.walks(80_000);
        // Asked, and answered 30 s later by a change: asked again at once,
        // the gap counting from when it was asked.
        lp.ready().await;
        tokio::time::advance(Duration::from_secs(30)).await;
        lp.answered(&answer(1, 40));
        let t = Instant::now();
        lp.ready().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // Answered at once by the next change: the next ask waits out the
        // walk's gap, not the 250 ms floor.
        lp.answered(&answer(2, 40));
        lp.ready().await;
        assert_eq!(t.elapsed(), Duration::from_secs(4));
        // A small tree keeps the floor.
        lp.walks(400);
        lp.answered(&answer(3, 40));
        let t = Instant::now();
        lp.ready().await;
        assert_eq!(t.elapsed(), Duration::from_millis(250));
    }

    fn layout() -> Layout {
        Layout::new("svc-handler").unwrap()
    }

    fn pair(key: &str, index: u64, value: &[u8]) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        }
    }

    fn id(name: &str) -> ServiceId {
        ServiceId::new("default", "default", name).unwrap()
    }

    fn record(kind: &str, name: &str, modify_index: u64, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Record {
            kind: kind.into(),
            name: name.into(),
            partition: "default".into(),
            namespace: "default".into(),
            resource_id: format!("{kind}/default/default/{name}"),
            create_index: 1,
            modify_index,
            generation: 1,
            object,
            verified_at: "2026-01-01T00:00:00Z".into(),
            base_key: String::new(),
            service: None,
            previous_gateway: None,
            differs: None,
        })
        .unwrap()
    }

    const D: &str = "svc-handler/desired/default/default";

    #[test]
    fn index_resets_when_it_goes_backwards() {
        assert_eq!(next_index(0, 10), 10);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 3), 0);
        assert_eq!(next_index(0, 0), 1, "never wait on an index below 1");
    }

    #[test]
    fn first_listing_reports_everything() {
        let snap = Snapshot::from_pairs(
            &layout(),
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(&format!("{D}/web/defaults.json"), 6, b"{}"),
                pair(&format!("{D}/old/defaults.json"), 3, b"{}"),
                pair(&format!("{D}/bad name/base.json"), 7, b"{}"),
                pair("svc-handler/desired/default/", 1, b""),
            ],
        );
        let c = diff(None, &snap);
        assert_eq!(c.changed, vec![(id("web"), 5)]);
        assert_eq!(c.gone, vec![id("old")], "records without base.json");
        assert_eq!(c.invalid.len(), 1);
        assert_eq!(c.invalid[0].2, 7);
    }

    #[test]
    fn take_units_takes_exactly_what_the_units_hold() {
        let l = layout();
        let resolver = record("service-resolver", "web", 9, json!({}));
        let mut snap = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(&format!("{D}/web/resolver.json"), 9, &resolver),
                pair(&format!("{D}/web/pause.json"), 10, br#"{"reason":"x"}"#),
                pair(&format!("{D}/api/base.json"), 6, b"{}"),
                pair(&format!("{D}/old/defaults.json"), 3, b"{}"),
                pair(&format!("{D}/bad name/base.json"), 7, b"{}"),
                pair(&format!("{D}/stray.json"), 8, b"{}"),
            ],
        );
        let whole = snap.clone();
        let units: BTreeSet<String> = [
            format!("{D}/web/"),
            format!("{D}/old/"),
            format!("{D}/bad name/"),
            format!("{D}/stray.json"),
            format!("{D}/absent/"),
        ]
        .into();
        let taken = snap.take_units(&l, &units);
        assert_eq!(taken.services.keys().collect::<Vec<_>>(), [&id("web")]);
        assert!(taken
            .records
            .contains_key(&(id("web"), Kind::ServiceResolver)));
        assert!(taken.paused.contains_key(&id("web")));
        assert!(taken.orphans.contains(&id("old")));
        assert_eq!(taken.invalid.len(), 2, "{:?}", taken.invalid);
        assert_eq!(snap.services.keys().collect::<Vec<_>>(), [&id("api")]);
        assert!(snap.records.is_empty() && snap.paused.is_empty() && snap.orphans.is_empty());
        assert!(snap.invalid.is_empty());
        // Taking and putting back gives the snapshot it was.
        snap.add_part(taken);
        assert_eq!(snap, whole);
    }

    #[test]
    fn own_record_writes_cause_nothing() {
        let l = layout();
        let before = Snapshot::from_pairs(&l, &[pair(&format!("{D}/web/base.json"), 5, b"{}")]);
        let after = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(&format!("{D}/web/defaults.json"), 9, b"{}"),
                pair(&format!("{D}/web/tgw.json"), 10, b"{}"),
            ],
        );
        assert!(diff(Some(&before), &after).is_empty());
    }

    #[test]
    fn changes_and_deletions_are_seen_once() {
        let l = layout();
        let a = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(&format!("{D}/api/base.json"), 6, b"{}"),
            ],
        );
        let b = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 8, b"{}"),
                pair(&format!("{D}/new/base.json"), 9, b"{}"),
            ],
        );
        let c = diff(Some(&a), &b);
        assert_eq!(c.changed, vec![(id("new"), 9), (id("web"), 8)]);
        assert_eq!(c.gone, vec![id("api")]);
        assert!(
            diff(Some(&b), &b).is_empty(),
            "the same listing twice: nothing"
        );
    }

    #[test]
    fn invalid_keys_are_reported_when_they_change() {
        let l = layout();
        let k = format!("{D}/x/y/base.json");
        let a = Snapshot::from_pairs(&l, &[pair(&k, 5, b"{}")]);
        let b = Snapshot::from_pairs(&l, &[pair(&k, 6, b"{}")]);
        assert!(diff(Some(&a), &a).is_empty());
        assert_eq!(diff(Some(&a), &b).invalid.len(), 1);
    }

    #[test]
    fn drift_is_a_changed_or_missing_entry() {
        let l = layout();
        let snap = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(
                    &format!("{D}/web/defaults.json"),
                    6,
                    &record("service-defaults", "web", 40, json!({})),
                ),
                pair(&format!("{D}/api/base.json"), 5, b"{}"),
                pair(
                    &format!("{D}/api/defaults.json"),
                    6,
                    &record("service-defaults", "api", 41, json!({})),
                ),
            ],
        );
        let none = Applied::new();
        let same = |name: &str, idx: u64| {
            ConfigEntry(json!({"Kind": "service-defaults", "Name": name, "ModifyIndex": idx}))
        };
        assert!(drifted(
            &snap,
            Kind::ServiceDefaults,
            &[same("web", 40), same("api", 41)],
            &none
        )
        .is_empty());
        assert_eq!(
            drifted(
                &snap,
                Kind::ServiceDefaults,
                &[same("web", 44), same("api", 41)],
                &none
            ),
            vec![id("web")]
        );
        assert_eq!(
            drifted(&snap, Kind::ServiceDefaults, &[same("web", 40)], &none),
            vec![id("api")],
            "deleted behind our back"
        );
        assert!(drifted(&snap, Kind::ServiceRouter, &[], &none).is_empty());
        // Just applied by this instance, before the listing shows the record.
        let mut applied = Applied::new();
        applied.insert((id("web"), Kind::ServiceDefaults), 44);
        assert_eq!(
            drifted(
                &snap,
                Kind::ServiceDefaults,
                &[same("web", 44), same("api", 41)],
                &applied
            ),
            Vec::<ServiceId>::new()
        );
    }

    #[test]
    fn drift_is_seen_before_the_record_is_listed() {
        let l = layout();
        // base.json listed, its record not yet: only this instance's memory
        // of what it applied tells.
        let snap = Snapshot::from_pairs(&l, &[pair(&format!("{D}/web/base.json"), 5, b"{}")]);
        let mut applied = Applied::new();
        applied.insert((id("web"), Kind::ServiceDefaults), 40);
        let entry = |idx: u64| {
            ConfigEntry(json!({"Kind": "service-defaults", "Name": "web", "ModifyIndex": idx}))
        };
        assert!(drifted(&snap, Kind::ServiceDefaults, &[entry(40)], &applied).is_empty());
        assert_eq!(
            drifted(&snap, Kind::ServiceDefaults, &[entry(47)], &applied),
            vec![id("web")]
        );
    }

    #[test]
    fn the_snapshot_keeps_only_what_drift_needs() {
        let l = layout();
        let body = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"});
        let link = json!({"Name": "web", "SNI": "a"});
        let snap = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(
                    &format!("{D}/web/defaults.json"),
                    6,
                    &record("service-defaults", "web", 40, body),
                ),
                pair(
                    &format!("{D}/web/tgw.json"),
                    7,
                    &record("terminating-gateway", "egress", 41, link.clone()),
                ),
                pair(&format!("{D}/web/resolver.json"), 8, b"not json"),
            ],
        );
        let seen = |k| snap.records.get(&(id("web"), k));
        let defaults = seen(Kind::ServiceDefaults).unwrap();
        assert_eq!((defaults.name.as_str(), defaults.modify_index), ("web", 40));
        assert_eq!(defaults.link, None, "no copy of the entry is kept");
        let tgw = seen(Kind::TerminatingGateway).unwrap();
        assert_eq!(
            (tgw.name.as_str(), tgw.link.as_ref()),
            ("egress", Some(&link))
        );
        assert!(
            seen(Kind::ServiceResolver).is_none(),
            "unreadable: not kept"
        );
    }

    #[test]
    fn gateway_drift_compares_the_link_only() {
        let l = layout();
        let mut rec: Record = serde_json::from_slice(&record(
            "terminating-gateway",
            "egress",
            10,
            json!({"Name": "web", "SNI": "a"}),
        ))
        .unwrap();
        rec.service = Some("web".into());
        let snap = Snapshot::from_pairs(
            &l,
            &[
                pair(&format!("{D}/web/base.json"), 5, b"{}"),
                pair(
                    &format!("{D}/web/tgw.json"),
                    6,
                    &serde_json::to_vec(&rec).unwrap(),
                ),
            ],
        );
        let gw = |services: serde_json::Value, idx: u64| {
            ConfigEntry(json!({"Kind": "terminating-gateway", "Name": "egress",
                "ModifyIndex": idx, "Services": services}))
        };
        // Another service's link changed the gateway's index: not our drift.
        let other = gw(json!([{"Name": "web", "SNI": "a"}, {"Name": "db"}]), 99);
        assert!(drifted(&snap, Kind::TerminatingGateway, &[other], &Applied::new()).is_empty());
        let changed = gw(json!([{"Name": "web", "SNI": "b"}]), 100);
        assert_eq!(
            drifted(&snap, Kind::TerminatingGateway, &[changed], &Applied::new()),
            vec![id("web")]
        );
        let removed = gw(json!([{"Name": "db"}]), 101);
        assert_eq!(
            drifted(&snap, Kind::TerminatingGateway, &[removed], &Applied::new()),
            vec![id("web")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_a_burst_then_paces() {
        let mut b = TokenBucket::new(2, 10.0);
        let start = Instant::now();
        b.take().await;
        b.take().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "burst of 2");
        b.take().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        for _ in 0..10 {
            b.take().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(1100),
            "10 per second"
        );
    }

    #[test]
    fn pacing_grows_with_the_listing_and_caps() {
        assert!(pace(100_000) < Duration::from_millis(15));
        assert_eq!(pace(8 * 1024 * 1024), Duration::from_secs(1));
        assert_eq!(pace(1 << 40), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_loop_follows_the_index_and_paces() {
        let meta = |index: u64, body_bytes: u64| QueryMeta {
            index,
            body_bytes,
            ..QueryMeta::default()
        };
        let mut lp = BlockingLoop::new(10.0, Duration::from_millis(250));
        let fresh = QueryOptions::consistent();
        let wait = Duration::from_secs(60);
        lp.ready().await;
        assert_eq!(lp.options(fresh, wait), fresh, "first read is fresh");
        assert_eq!(lp.answered(&meta(7, 10)), 0);
        assert_eq!(lp.options(fresh, wait), QueryOptions::blocking(7, wait));
        let start = Instant::now();
        lp.ready().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(250),
            "the minimum gap"
        );
        assert_eq!(lp.answered(&meta(3, 8 * 1024 * 1024)), 7);
        assert_eq!(lp.index(), 0, "backwards: a fresh read next");
        let start = Instant::now();
        lp.ready().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1), "paced by size");
        let first = lp.failed();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
    }

    #[test]
    fn drift_probe_lists_for_foreign_writes_only() {
        use DriftProbe::{List, Skip};
        let mut own = OwnWrites::default();
        let probe = |last, now, own: &mut OwnWrites| drift_probe(last, now, own, true, false);
        // The first answer and a timed-out wait: nothing to list.
        assert_eq!(probe(0, 50, &mut own), Skip);
        assert_eq!(probe(50, 50, &mut own), Skip);
        // Our own writes at 51..=53: the probe answers at 53.
        for i in [51, 52, 53] {
            own.record(i);
        }
        assert_eq!(probe(50, 53, &mut own), Skip);
        // A foreign write at 54: list.
        assert_eq!(probe(53, 54, &mut own), List);
        // Ours at 60, then a foreign one at 61 before the probe answers:
        // 61 is not ours, list.
        own.record(60);
        assert_eq!(probe(54, 61, &mut own), List);
        // 60 was forgotten with the answer at 61: it cannot explain later.
        assert_eq!(probe(61, 60 + 10, &mut own), List);
        // An own write found again after a later answer explains nothing.
        own.record(65);
        assert_eq!(probe(70, 71, &mut own), List);
        // Consul wiped or restored: list, and forget.
        own.record(90);
        assert_eq!(probe(71, 12, &mut own), List);
        assert_eq!(probe(12, 90, &mut own), List, "forgotten");
    }

    #[test]
    fn drift_probe_waits_for_reconciles_in_flight() {
        use DriftProbe::{List, Skip, Wait};
        let mut own = OwnWrites::default();
        own.begin();
        // The reconcile wrote at 101; the probe answers before it recorded.
        assert_eq!(drift_probe(100, 101, &mut own, true, false), Wait);
        assert_eq!(
            drift_probe(100, 101, &mut own, true, false),
            Wait,
            "nothing forgotten"
        );
        own.record(101);
        own.end();
        assert_eq!(drift_probe(100, 101, &mut own, true, false), Skip);
        // A foreign write while a reconcile runs: listed once patience ends.
        own.begin();
        assert_eq!(drift_probe(101, 102, &mut own, true, false), Wait);
        assert_eq!(drift_probe(101, 102, &mut own, false, false), List);
        // With nothing in flight there is nothing to wait for.
        own.end();
        assert_eq!(drift_probe(102, 103, &mut own, true, false), List);
        // A wipe keeps the count of reconciles in flight.
        own.begin();
        own.record(200);
        assert_eq!(drift_probe(300, 5, &mut own, true, false), List);
        assert_eq!(drift_probe(5, 6, &mut own, true, false), Wait);
    }

    #[test]
    fn drift_probe_takes_other_instances_recorded_writes_as_due_later() {
        use DriftProbe::{Later, List, Skip, Wait};
        let mut own = OwnWrites::default();
        // Another instance wrote at 201: until its record is read, the
        // probe waits (while patient), then takes it as foreign.
        assert_eq!(drift_probe(200, 201, &mut own, true, true), Wait);
        assert_eq!(drift_probe(200, 201, &mut own, true, false), List);
        // Its record read: a listing due later, not now.
        own.recorded(205);
        assert_eq!(drift_probe(201, 205, &mut own, true, true), Later);
        // Forgotten with the answer: an older record explains nothing.
        own.recorded(203);
        assert_eq!(drift_probe(205, 206, &mut own, false, false), List);
        // This instance's own write still costs nothing at all, also when
        // the watch read its record before the reconcile ended.
        own.begin();
        own.recorded(210);
        assert_eq!(drift_probe(206, 210, &mut own, true, true), Wait);
        own.record(210);
        own.end();
        assert_eq!(drift_probe(206, 210, &mut own, true, true), Skip);
        // With reconciles of its own in flight past patience, a recorded
        // write is another instance's.
        own.begin();
        own.recorded(212);
        assert_eq!(drift_probe(210, 212, &mut own, true, true), Wait);
        assert_eq!(drift_probe(210, 212, &mut own, false, true), Later);
        own.end();
        // Consul wiped or restored: the records are of another history.
        own.recorded(300);
        assert_eq!(drift_probe(212, 5, &mut own, true, true), List);
        assert_eq!(drift_probe(5, 300, &mut own, false, false), List);
        // Bounded, and index 0 is no write.
        for i in 1..=(OWN_WRITES_KEPT as u64 + 10) {
            own.recorded(1000 + i);
        }
        own.recorded(0);
        assert_eq!(own.recorded.len(), OWN_WRITES_KEPT);
        assert!(!own.recorded.contains(&0));
    }

    #[test]
    fn records_are_waited_for_only_while_another_instance_holds_a_wanted_lock() {
        let mut own = OwnWrites::default();
        assert_eq!(own.record_grace(), Duration::ZERO, "alone: no wait");
        let (web, api) = (
            ServiceId::new("default", "default", "web").unwrap(),
            ServiceId::new("default", "default", "api").unwrap(),
        );
        own.held_elsewhere(&web, true);
        own.held_elsewhere(&api, true);
        assert_eq!(own.record_grace(), RECORD_GRACE);
        own.held_elsewhere(&web, false);
        assert_eq!(own.record_grace(), RECORD_GRACE, "api still held");
        own.held_elsewhere(&api, false);
        assert_eq!(own.record_grace(), Duration::ZERO);
    }

    #[test]
    fn a_listing_made_due_by_other_instances_writes_comes_once_its_delay_passed() {
        let t = Instant::now();
        // Later: due after the last listing's bytes at the sweep rate.
        let (now, due) = sweep_when(true, true, None, 0, t);
        assert!(!now);
        assert_eq!(due, Some(t + SWEEP_LATER_MIN));
        // More such writes do not push it back; a timed-out wait after it
        // lists.
        let (now, again) = sweep_when(true, true, due, 0, t + Duration::from_millis(500));
        assert!(!now);
        assert_eq!(again, due);
        let (now, _) = sweep_when(false, true, due, 0, t + SWEEP_LATER_MIN);
        assert!(now);
    }

    #[test]
    fn own_writes_stay_bounded() {
        let mut own = OwnWrites::default();
        for i in 1..=(OWN_WRITES_KEPT as u64 + 10) {
            own.record(i);
        }
        assert_eq!(own.indexes.len(), OWN_WRITES_KEPT);
        assert!(!own.indexes.contains(&10) && own.indexes.contains(&11));
        own.record(0);
        assert!(!own.indexes.contains(&0));
    }

    #[tokio::test(start_paused = true)]
    async fn byte_budget_bounds_the_average_rate() {
        let mut b = ByteBudget::new(1000.0);
        let start = Instant::now();
        // One second's worth is there at once.
        assert_eq!(b.wait_time(start), Duration::ZERO);
        b.spend(3000, start);
        // 2000 bytes owed at 1000/s.
        assert_eq!(b.wait_time(start), Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.wait_time(Instant::now()), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.wait_time(Instant::now()), Duration::ZERO);
        // Idle time saves up one second's worth, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        b.spend(1000, now);
        assert_eq!(b.wait_time(now), Duration::ZERO);
        b.spend(500, now);
        assert_eq!(b.wait_time(now), Duration::from_millis(500));
        // Over any stretch, bytes spent <= rate x time + one second's worth.
        let mut b = ByteBudget::new(1000.0);
        let begin = Instant::now();
        let mut spent = 0u64;
        for _ in 0..50 {
            let w = b.wait_time(Instant::now());
            tokio::time::advance(w).await;
            b.spend(700, Instant::now());
            spent += 700;
        }
        let secs = begin.elapsed().as_secs_f64();
        assert!(
            spent as f64 <= 1000.0 * secs + 1000.0 + 700.0,
            "{spent} in {secs}"
        );
        assert!(spent as f64 >= 1000.0 * secs, "{spent} in {secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_error_the_next_read_is_fresh() {
        let mut lp = BlockingLoop::by_cost(Duration::from_millis(5));
        lp.ready().await;
        lp.answered(&answer(35, 100));
        let wait = Duration::from_secs(300);
        assert_eq!(lp.options(QueryOptions::default(), wait).index, Some(35));
        // Consul goes away (restarted, wiped): the next read does not block
        // past 35, which the new Consul may not reach for a long time.
        lp.failed();
        assert_eq!(lp.index(), 0);
        assert_eq!(lp.options(QueryOptions::default(), wait).index, None);
        // Its answer (index 15) is taken as is; then reads block past it.
        lp.ready().await;
        assert_eq!(lp.answered(&answer(15, 100)), 0);
        assert_eq!(lp.index(), 15);
    }

    #[test]
    fn error_backoff_grows_and_caps() {
        let d: Vec<Duration> = error_backoff().take(12).collect();
        assert!(d[0] >= Duration::from_millis(250));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(10)), "{d:?}");
        assert!(d[8] >= Duration::from_secs(5), "{d:?}");
    }

    #[test]
    fn a_change_outside_every_shard_is_swept_for_at_once_others_later() {
        let t0 = Instant::now();
        // Nothing moved, nothing due: keep probing.
        assert_eq!(sweep_when(false, true, None, 300_000, t0), (false, None));
        // A change no shard explains: sweep now.
        assert_eq!(sweep_when(true, false, None, 300_000, t0), (true, None));
        // Explained: a sweep is due later, by size: 300 KB at 16 KiB/s.
        let (now, due) = sweep_when(true, true, None, 300_000, t0);
        assert!(!now);
        let due = due.unwrap();
        let later = due - t0;
        assert!(
            later > Duration::from_secs(17) && later < Duration::from_secs(19),
            "{later:?}"
        );
        // More changes do not push it back; its time comes even if the
        // tree is quiet then.
        assert_eq!(
            sweep_when(true, true, Some(due), 300_000, t0 + Duration::from_secs(5)),
            (false, Some(due))
        );
        assert_eq!(
            sweep_when(false, true, Some(due), 300_000, due),
            (true, Some(due))
        );
        // Small trees: at least a second; huge ones: at most a minute.
        let (_, d) = sweep_when(true, true, None, 1_000, t0);
        assert_eq!(d, Some(t0 + SWEEP_LATER_MIN));
        let (_, d) = sweep_when(true, true, None, 50_000_000, t0);
        assert_eq!(d, Some(t0 + SWEEP_LATER_MAX));
    }
}
