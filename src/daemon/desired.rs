//! The watch of the desired prefix, in shards (see [`crate::watch::shards`]):
//! one whole listing at start, then a blocking keys-only listing per shard
//! (its service folders, with the separator `/`), and when one answers past
//! its index, a descent to the units that changed ([`crate::watch::locate`])
//! and a read of those units only; and the guard, which finds services
//! outside every shard and redoes the layout when shards grow or shrink: a
//! wake probe of the root (a few bytes, answered on any change under it:
//! see [`WAKE_SUFFIX`]), a blocking probe of the root when that cannot tell
//! (a few bytes, with the whole tree's index, but Consul walks the tree to
//! answer it) and, when no shard explains a change, or later when one does,
//! a sweep: a paced listing of the service folders of the whole tree.
//!
//! No change is missed across a new layout: every shard that gains or loses
//! keys is read afresh, and what those reads hold is compared with what the
//! old shards last held for the same keys; each shard then waits past the
//! index its own fresh read returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::coordinator::Event;
use super::faults::FAULT_FREEZE_WATCH_ENV;
use super::loops::{unix_now, Events, Stop};
use super::Daemon;
use crate::consul::{Client, ConsulError, KvPair, QueryMeta, QueryOptions};
use crate::metrics::Metrics;
use crate::watch::ledger::Account;
use crate::watch::ledger::{Ledger, SharedLedger, LEDGER_GRACE};
use crate::watch::locate::{self, Probed, Prober, CONCURRENCY};
use crate::watch::shards::{self, LIMITS};
use crate::watch::{sweep_when, wake_step, BlockingLoop, Snapshot, Wake, WAKE_SUFFIX};

/// The least time between two reads of one shard.
const SHARD_MIN_GAP: Duration = Duration::from_millis(5);
/// The guard's sweeps read at most this many bytes a second on average: the
/// folder names of 5,000 services (about 300 KB) at most every 2.3 s.
const GUARD_BYTES_PER_SECOND: f64 = 128.0 * 1024.0;
/// How long the guard's probe, answered, lets the shards answer for the
/// same change before it asks whether they explain it.
const GUARD_GRACE: Duration = Duration::from_millis(200);
/// The longest a shard's or the guard's blocking query waits. Consul 1.8
/// serves a blocking query to its end even when its client has gone (a
/// daemon stopped or restarted), counting it against the client address's
/// `http_max_conns_per_client` (200) meanwhile: a short wait frees those
/// slots within a minute.
const SHARD_MAX_WAIT: Duration = Duration::from_secs(60);
/// How many times a sweep walks the tree in Consul (the root's listing,
/// then each partition's, then each namespace's): its pacing by walk is
/// this many times the probe's.
const SWEEP_WALKS: usize = 3;

/// The least time between two reads of the guard.
const GUARD_MIN_GAP: Duration = Duration::from_millis(250);

/// The guard's sweep: the units under `root` (each service's folder
/// `<p>/<ns>/<name>/`, and the stray keys), one key each, not every key of
/// every service: a keys-only listing of `root` with the separator `/` (its
/// partitions), then each partition's namespaces and each namespace's
/// service folders the same way. The meta is the first answer's, with the
/// bytes of all of them. A unit made between two of these reads is found by
/// the next sweep.
async fn guard_units(
    client: &Client,
    root: &str,
    opts: &QueryOptions,
) -> Result<(Vec<String>, QueryMeta), ConsulError> {
    let (mut level, mut meta) = client.kv_keys(root, Some("/"), opts).await?;
    let now = QueryOptions::consistent();
    let mut units = Vec::new();
    // Partitions, then namespaces: a folder goes one level down; a key that
    // is not a folder is a stray key, a unit of its own.
    for _ in 0..2 {
        let mut next = Vec::new();
        for key in level {
            if !key.ends_with('/') || key.len() <= root.len() {
                units.push(key);
                continue;
            }
            let (keys, m) = client.kv_keys(&key, Some("/"), &now).await?;
            meta.body_bytes += m.body_bytes;
            next.extend(keys.into_iter().filter(|k| *k != key));
        }
        level = next;
    }
    units.extend(level);
    Ok((units, meta))
}

/// A shard's pacing and index, what it last held (its part of the snapshot,
/// and its units, which a descent groups), and its read in flight (tagged
/// with an epoch, so that an answer to a read from before a new layout is
/// never taken for the new shard's).
struct Shard {
    lp: BlockingLoop,
    part: Snapshot,
    units: Arc<BTreeSet<String>>,
    read: Option<AbortHandle>,
    epoch: u64,
    /// The last answer changed a base.json: the next read first waits for
    /// that change's reconcile ([`read_own`]).
    expect_own: bool,
    /// About how many bytes a recursive listing returns per service folder
    /// of this shard, from its last read of whole folders (0: none yet).
    unit_bytes: u64,
}

impl Shard {
    /// Takes the bytes per service folder of a read of whole folders.
    fn learn_unit_bytes(&mut self, root: &str, pairs: &[KvPair]) {
        let (bytes, units) = folder_bytes(root, pairs);
        if units > 0 {
            self.unit_bytes = bytes / units as u64;
        }
    }
}

/// What a shard's read found.
enum Update {
    /// Nothing under the shard moved past its index: the wait ran out.
    Same,
    /// The shard read whole: its first read after an error, or an index
    /// that went backwards (a Consul restored or restarted).
    Whole(Vec<KvPair>),
    /// These units changed; what they hold now; found how.
    Units(BTreeSet<String>, Vec<KvPair>, Found),
}

/// How the units an [`Update::Units`] reads were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A descent from the shard's listing.
    Descent,
    /// Only the instance's own writes moved the shard: the folders they
    /// wrote; `polled` when the shard's query answered first, not when the
    /// shard waited for its change's reconcile ([`ARM_AFTER_OWN_UP_TO`]).
    OwnWrites { polled: bool },
}

type ShardRead = Result<(Update, QueryMeta), ConsulError>;

/// At most this many of a daemon's descent listings and folder reads are in
/// flight at once, over all its shards: each holds a connection to the
/// agent, and every client on a node shares the agent's
/// `http_max_conns_per_client`.
const DESCENT_CONNECTIONS: usize = 8;

/// The keys-only listing a descent makes, on the Consul client, holding one
/// of the daemon's [`DESCENT_CONNECTIONS`] permits.
#[derive(Clone)]
struct KeysProbe(Client, Arc<Semaphore>);

impl Prober for KeysProbe {
    type Error = ConsulError;
    async fn probe(self, prefix: String, small: bool) -> Result<Probed, ConsulError> {
        let _permit = self
            .1
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let opts = QueryOptions::consistent();
        let opts = if small { opts.plain() } else { opts };
        let (items, meta) = self.0.kv_keys(&prefix, Some("/"), &opts).await?;
        Ok(Probed {
            items,
            index: meta.index,
            bytes: meta.body_bytes,
        })
    }
}

/// A shard of at most this many services is watched with a recursive
/// listing (values included, one request, about 3 KiB a service before
/// gzip), not keys-only with a descent: for so few, one read costs less
/// than the descent's several.
const READ_WHOLE_UP_TO: usize = 32;

/// What every read of a shard needs.
#[derive(Clone)]
struct Reader {
    client: Client,
    root: String,
    /// Shards of at most this many services are read whole.
    whole_up_to: usize,
    /// A changed group of at most this many services is read whole
    /// ([`group_whole_up_to`]).
    group_whole_up_to: usize,
    /// The daemon's [`DESCENT_CONNECTIONS`].
    permits: Arc<Semaphore>,
    /// The raft indexes of the instance's own writes.
    ledger: Arc<SharedLedger>,
    metrics: Arc<Metrics>,
}

/// One read of a shard, blocking past `since`: a small one's recursive
/// listing, a bigger one's keys-only listing and then what changed. The meta
/// is the listing's, with the bytes of every read.
async fn read_shard(
    r: Reader,
    prefix: String,
    opts: QueryOptions,
    since: u64,
    known: Arc<BTreeSet<String>>,
) -> ShardRead {
    let Reader {
        client,
        root,
        whole_up_to,
        group_whole_up_to,
        permits,
        ledger,
        metrics,
    } = &r;
    let read_as = |how: &str| metrics.watch_reads.with_label_values(&[how]).inc();
    if known.len() <= *whole_up_to {
        let (pairs, meta) = client.kv_list(&prefix, &opts).await?;
        if since != 0 && meta.index == since {
            return Ok((Update::Same, meta));
        }
        read_as("whole");
        return Ok((Update::Whole(pairs), meta));
    }
    let (items, mut meta) = client.kv_keys(&prefix, Some("/"), &opts).await?;
    if since != 0 && meta.index == since {
        return Ok((Update::Same, meta));
    }
    if meta.index < since {
        // Consul went back in time (wiped, or restored from a snapshot):
        // the indexes recorded belong to another history.
        ledger.with(Ledger::clear);
    }
    if since != 0 && meta.index > since {
        // Woken by this instance's own writes only (its records, most
        // often): the folders it wrote are read, nothing else changed.
        let own = r
            .ledger
            .explain(&r.root, &prefix, since, meta.index, LEDGER_GRACE);
        if let Some(units) = own.await {
            let (update, bytes) = read_own_units(&r, units, true).await?;
            meta.body_bytes += bytes;
            return Ok((update, meta));
        }
        let probe = KeysProbe(client.clone(), Arc::clone(permits));
        // Reading a quarter of the shard one folder at a time costs more
        // requests than one listing of it all (a bulk apply, say): the
        // descent gives up past that.
        let most = known.len() / 4;
        let limits = locate::Limits {
            whole_up_to: *group_whole_up_to,
            most,
        };
        let d = locate::locate(&probe, root, &prefix, items, &known, since, limits).await?;
        meta.body_bytes += d.bytes;
        if let Some(mut units) = d.units.filter(|u| u.len() <= most) {
            let (pairs, bytes) = read_units(client, root, &units, &d.whole, permits).await?;
            meta.body_bytes += bytes;
            // A folder made in a group read whole since it was listed.
            units.extend(
                (pairs.iter())
                    .filter_map(|p| shards::unit_of(root, &p.key))
                    .map(str::to_string),
            );
            read_as("descent");
            return Ok((Update::Units(units, pairs, Found::Descent), meta));
        }
    }
    let (pairs, whole) = client.kv_list(&prefix, &QueryOptions::consistent()).await?;
    read_as("whole");
    meta.body_bytes += whole.body_bytes;
    meta.index = whole.index;
    Ok((Update::Whole(pairs), meta))
}

/// After a shard found a change to a base.json, its next query waits, at
/// most this long, for the reconcile of that change to write the service's
/// records ([`SharedLedger::own_write`]): when nothing else happened in
/// Consul meanwhile, the folders written are read and the query waits past
/// the records' index, so the records cost no answer of the shard's
/// listing (and its walk of every key under the shard). A change elsewhere
/// in the shard meanwhile is found when the records are written (the query
/// then goes out at once and answers at once), or after this wait when no
/// record comes (a change that needed none).
const ARM_AFTER_OWN_UP_TO: Duration = Duration::from_millis(100);

/// The shard read without asking its query: the folders this instance's
/// own transaction wrote under it since `since`, when every raft index up
/// to it is known (see [`ARM_AFTER_OWN_UP_TO`]). `None`: ask the query.
async fn read_own(r: &Reader, prefix: &str, since: u64) -> Option<ShardRead> {
    let own = r
        .ledger
        .own_write(&r.root, prefix, since, ARM_AFTER_OWN_UP_TO);
    let (index, units) = own.await?;
    Some(
        read_own_units(r, units, false)
            .await
            .map(|(update, bytes)| {
                let meta = QueryMeta {
                    index,
                    body_bytes: bytes,
                    ..QueryMeta::default()
                };
                (update, meta)
            }),
    )
}

/// Reads the folders this instance's own writes touched (all that moved
/// under a shard, as the ledger showed), counted as such; `polled` when the
/// shard's query answered first. The update, and the bytes read.
async fn read_own_units(
    r: &Reader,
    units: BTreeSet<String>,
    polled: bool,
) -> Result<(Update, u64), ConsulError> {
    let none = BTreeSet::new();
    let (pairs, bytes) = read_units(&r.client, &r.root, &units, &none, &r.permits).await?;
    (r.metrics.watch_reads.with_label_values(&["own_writes"])).inc();
    let found = Found::OwnWrites { polled };
    Ok((Update::Units(units, pairs, found), bytes))
}

/// A changed group of at most this many service folders is read with one
/// recursive listing of its prefix (a few KiB of records a folder, gzip
/// makes it a fraction on the wire) rather than descended into: one
/// request instead of a listing per next character and a read per folder
/// (but see [`GROUP_WHOLE_UNIT_BYTES`]).
const GROUP_WHOLE_UP_TO: usize = 12;

/// A group is read whole only while the shard's folders average at most
/// this many bytes in a recursive listing. Measured on Consul 1.8.7 (one
/// request at a time, CPU from /proc): a compressed recursive listing costs
/// it about 0.15 ms plus 0.05 ms per KiB (gzip of base64 values is most of
/// it: 3.2 ms for 11 folders of 5.3 KiB, 0.8 ms asked plain), a keys-only
/// listing of one folder about 0.15 ms, one folder's read about 0.2 ms. So
/// for folders above about 3 KiB (a service with a router, a splitter and
/// a gateway link) probing each folder of the group and reading the one
/// that changed costs Consul less, and reads a fraction of the bytes; for
/// smaller ones the group's one listing costs less.
const GROUP_WHOLE_UNIT_BYTES: u64 = 3 * 1024;

/// A shard of at most how many services is watched with a recursive
/// listing ([`READ_WHOLE_UP_TO`]), given the bytes its folders average: past
/// [`GROUP_WHOLE_UNIT_BYTES`] only up to 3 (a descent gives up on a shard
/// of fewer than 4 services anyway, see `read_shard`), since each answer
/// would carry every folder's records, and the keys-only listing with a
/// probe of each folder of the group that moved costs Consul less (see
/// there).
fn shard_whole_up_to(unit_bytes: u64) -> usize {
    if unit_bytes > GROUP_WHOLE_UNIT_BYTES {
        3
    } else {
        READ_WHOLE_UP_TO
    }
}

/// How many service folders of a changed group may be read whole, given
/// the bytes a folder of the shard averages (0: not known yet).
fn group_whole_up_to(unit_bytes: u64) -> usize {
    if unit_bytes > GROUP_WHOLE_UNIT_BYTES {
        0
    } else {
        GROUP_WHOLE_UP_TO
    }
}

/// About the bytes a recursive listing spends on each service folder of
/// `pairs` (Consul's JSON: the key, the value in base64, the indexes), and
/// how many folders they hold.
fn folder_bytes(root: &str, pairs: &[KvPair]) -> (u64, usize) {
    let mut units = BTreeSet::new();
    let mut bytes = 0u64;
    for p in pairs {
        if let Some(u) = shards::unit_of(root, &p.key) {
            if u.ends_with('/') {
                units.insert(u);
                bytes += (p.key.len() + p.value.len().div_ceil(3) * 4 + 100) as u64;
            }
        }
    }
    (bytes, units.len())
}

/// Reads `units` afresh, at most [`CONCURRENCY`] requests at once (and
/// within the daemon's [`DESCENT_CONNECTIONS`]): the groups in `whole` with
/// one recursive listing each (every unit under them), each other unit
/// alone: a service folder with everything in it, a stray key alone.
/// Returns their keys and the bytes read.
async fn read_units(
    client: &Client,
    root: &str,
    units: &BTreeSet<String>,
    whole: &BTreeSet<String>,
    permits: &Arc<Semaphore>,
) -> Result<(Vec<KvPair>, u64), ConsulError> {
    let alone = units
        .iter()
        .filter(|u| !whole.iter().any(|g| u.starts_with(g.as_str())));
    let mut pending = whole
        .iter()
        .map(|g| (g, true))
        .chain(alone.map(|u| (u, false)));
    let mut running = JoinSet::new();
    let (mut pairs, mut bytes) = (Vec::new(), 0);
    loop {
        while running.len() < CONCURRENCY {
            let Some((unit, group)) = pending.next() else {
                break;
            };
            let (client, root, unit) = (client.clone(), root.to_string(), unit.clone());
            let permits = Arc::clone(permits);
            running.spawn(async move {
                let _permit = permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let opts = QueryOptions::consistent();
                if group {
                    let (pairs, meta) = client.kv_list(&unit, &opts).await?;
                    let under: Vec<KvPair> = pairs
                        .into_iter()
                        .filter(|p| shards::unit_of(&root, &p.key).is_some())
                        .collect();
                    return Ok::<_, ConsulError>((under, meta.body_bytes));
                }
                // A service folder (a stray key never ends with `/` below
                // the namespaces).
                if unit.ends_with('/') && !locate::is_upper_folder(&root, &unit) {
                    // One service's keys: a few KiB, asked for plain.
                    let (pairs, meta) = client.kv_list(&unit, &opts.plain()).await?;
                    let mine: Vec<KvPair> = pairs
                        .into_iter()
                        .filter(|p| shards::unit_of(&root, &p.key) == Some(unit.as_str()))
                        .collect();
                    Ok((mine, meta.body_bytes))
                } else {
                    let (pair, meta) = client.kv_get(&unit, &opts).await?;
                    Ok((pair.into_iter().collect(), meta.body_bytes))
                }
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (got, b) = done.expect("a unit's read panicked")?;
        pairs.extend(got);
        bytes += b;
    }
    Ok((pairs, bytes))
}

/// What a spawned read brings back.
enum Answer {
    Shard(String, u64, ShardRead),
    /// The guard's probe of the root answered (and waited its grace).
    Moved(Result<QueryMeta, ConsulError>),
    /// The guard's wake probe of the root answered (and waited its grace),
    /// and whether the instance's own writes account for every raft index
    /// since the index it waited past ([`Account::All`]).
    Woken(Result<(Vec<String>, QueryMeta), ConsulError>, bool),
    /// The guard's sweep.
    Guard(Result<(Vec<String>, QueryMeta), ConsulError>),
}

struct DesiredWatch {
    d: Arc<Daemon>,
    root: String,
    events: Events,
    shards: BTreeMap<String, Shard>,
    /// The guard's probe: a blocking keys-only listing of the root with the
    /// separator `/` (a few bytes: the partitions), answered when anything
    /// under the root changes, with the whole tree's highest index. It walks
    /// every key of the tree: asked only when the wake probe cannot tell.
    guard: BlockingLoop,
    /// The guard's wake probe of the root (see [`WAKE_SUFFIX`]): answered
    /// when anything under the root changes, for a few bytes.
    wake: BlockingLoop,
    /// False once someone wrote under the wake probe's own prefix: the
    /// guard then asks its probe only, as before.
    wake_on: bool,
    /// The shards' highest index when the guard last decided: a shard
    /// moved past it explains a wake.
    wake_shards: u64,
    /// The next read of the guard is its probe (the wake could not tell).
    exact_due: bool,
    /// The pacing of the guard's sweeps, by their size.
    sweep: BlockingLoop,
    /// The bytes of the last sweep, and when the next one is due (set when
    /// the tree changed in a way the shards explain).
    sweep_bytes: u64,
    sweep_due: Option<Instant>,
    /// The guard's probe or sweep in flight.
    guard_read: Option<AbortHandle>,
    reads: JoinSet<Answer>,
    outage_since: Option<Instant>,
    epochs: u64,
    /// The daemon's [`DESCENT_CONNECTIONS`].
    permits: Arc<Semaphore>,
}

impl Daemon {
    /// The watch of the desired prefix (see the module docs).
    pub(super) async fn watch_desired(self: Arc<Self>, events: Events, mut stop: Stop) {
        let root = self.cfg.layout.desired_prefix();
        let mut w = DesiredWatch {
            d: self,
            root,
            events,
            shards: BTreeMap::new(),
            guard: BlockingLoop::by_cost(GUARD_MIN_GAP),
            wake: BlockingLoop::by_cost(GUARD_MIN_GAP),
            wake_on: true,
            wake_shards: 0,
            exact_due: false,
            sweep: BlockingLoop::by_rate(GUARD_MIN_GAP, GUARD_BYTES_PER_SECOND),
            sweep_bytes: 0,
            sweep_due: None,
            guard_read: None,
            reads: JoinSet::new(),
            outage_since: None,
            epochs: 0,
            permits: Arc::new(Semaphore::new(DESCENT_CONNECTIONS)),
        };
        let Some((pairs, meta)) = w.whole(&mut stop).await else {
            return;
        };
        if !w.begin(pairs, meta) {
            return;
        }
        if w.d.cfg.faults.freeze_watch {
            tracing::warn!(
                "{FAULT_FREEZE_WATCH_ENV} is set: the watch loop freezes now (fault tests only)"
            );
            std::future::pending::<()>().await;
        }
        loop {
            w.d.health.beat();
            let answer = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = w.reads.join_next() => a,
            };
            let ok = match answer {
                Some(Ok(Answer::Shard(prefix, epoch, r))) => w.on_shard(prefix, epoch, r).await,
                Some(Ok(Answer::Moved(r))) => w.on_moved(r),
                Some(Ok(Answer::Woken(r, accounted))) => w.on_woken(r, accounted),
                Some(Ok(Answer::Guard(r))) => w.on_guard(r).await,
                Some(Err(_)) => true, // a read aborted by a new layout
                None => std::future::pending().await,
            };
            if !ok {
                return;
            }
        }
    }
}

impl DesiredWatch {
    /// The first, whole listing, retried until it succeeds; `None` on stop.
    async fn whole(&mut self, stop: &mut Stop) -> Option<(Vec<KvPair>, QueryMeta)> {
        let mut lp = BlockingLoop::by_cost(SHARD_MIN_GAP);
        loop {
            self.d.health.beat();
            let opts = QueryOptions::consistent();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                r = self.d.client.kv_list(&self.root, &opts) => r,
            };
            match result {
                Ok(answer) => {
                    self.answered(answer.1.index);
                    return Some(answer);
                }
                Err(e) => {
                    let delay = lp.failed();
                    self.failed(&e, delay);
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sends the whole listing, lays the shards out over it and starts
    /// their reads, each waiting past the listing's index. False when the
    /// coordinator is gone.
    fn begin(&mut self, pairs: Vec<KvPair>, meta: QueryMeta) -> bool {
        let layout = &self.d.cfg.layout;
        let units = shards::units(&self.root, pairs.iter().map(|p| p.key.as_str()));
        let set = shards::layout(&self.root, &units, LIMITS);
        let index = meta.index.max(1);
        let mut by_shard: BTreeMap<&str, Vec<KvPair>> = BTreeMap::new();
        for p in &pairs {
            if let Some(owner) = shards::owner(&set, &p.key) {
                by_shard.entry(owner).or_default().push(p.clone());
            }
        }
        for prefix in &set {
            let owned = by_shard.remove(prefix.as_str()).unwrap_or_default();
            let mut lp = BlockingLoop::by_cost(SHARD_MIN_GAP);
            lp.answered(&QueryMeta { index, ..meta });
            let part = Snapshot::from_pairs(layout, &owned);
            let units = shards::units(&self.root, owned.iter().map(|p| p.key.as_str()));
            let shard = Shard {
                lp,
                part,
                units: Arc::new(units),
                read: None,
                epoch: 0,
                expect_own: false,
                unit_bytes: 0,
            };
            self.shards.insert(prefix.clone(), shard);
        }
        let snap = Snapshot::from_pairs(layout, &pairs);
        self.d.metrics.watch_index.set(index as i64);
        self.d.metrics.watch_shards.set(set.len() as i64);
        tracing::info!(
            shards = set.len(),
            services = snap.services.len(),
            "watching the desired prefix"
        );
        if self.events.send(Event::Listing(snap)).is_err() {
            return false;
        }
        for prefix in set {
            self.spawn_shard(prefix);
        }
        // The whole listing is the first sweep.
        let probe = QueryMeta {
            index,
            body_bytes: 0,
            ..meta
        };
        let keys = self.tree_keys();
        self.guard.walks(keys);
        self.guard.answered(&probe);
        self.sweep.walks(SWEEP_WALKS * keys);
        self.sweep.answered(&QueryMeta { index, ..meta });
        self.sweep_bytes = meta.body_bytes;
        self.spawn_guard();
        true
    }

    fn spawn_shard(&mut self, prefix: String) {
        let wait = self.shard_wait();
        let Some(shard) = self.shards.get_mut(&prefix) else {
            return;
        };
        self.epochs += 1;
        let epoch = self.epochs;
        let at = shard.lp.start();
        let opts = shard.lp.options(QueryOptions::consistent(), wait);
        let since = shard.lp.index();
        let known = shard.units.clone();
        let expect_own = std::mem::take(&mut shard.expect_own);
        let reader = Reader {
            client: self.d.client.clone(),
            root: self.root.clone(),
            whole_up_to: if self.d.cfg.faults.always_descend {
                0
            } else {
                shard_whole_up_to(shard.unit_bytes)
            },
            group_whole_up_to: group_whole_up_to(shard.unit_bytes),
            permits: Arc::clone(&self.permits),
            ledger: Arc::clone(self.d.reconciler.ledger()),
            metrics: Arc::clone(&self.d.metrics),
        };
        let abort = self.reads.spawn(async move {
            tokio::time::sleep_until(at).await;
            if expect_own && since != 0 {
                if let Some(r) = read_own(&reader, &prefix, since).await {
                    return Answer::Shard(prefix, epoch, r);
                }
            }
            let r = read_shard(reader, prefix.clone(), opts, since, known).await;
            Answer::Shard(prefix, epoch, r)
        });
        shard.read = Some(abort);
        shard.epoch = epoch;
    }

    /// Starts the guard's probe, unless one shard covers everything. Once
    /// answered, it waits [`GUARD_GRACE`] for the shards to answer too.
    fn spawn_guard(&mut self) {
        if let Some(old) = self.guard_read.take() {
            old.abort();
        }
        let set: BTreeSet<String> = self.shards.keys().cloned().collect();
        if shards::complete(&self.root, &set) {
            return;
        }
        let wake = self.wake_on && !self.exact_due;
        let shard_wait = self.shard_wait();
        let lp = if wake {
            &mut self.wake
        } else {
            &mut self.guard
        };
        let at = lp.start();
        // Answered by the time a sweep is due at the latest.
        let wait = match self.sweep_due {
            Some(due) => (due.saturating_duration_since(at)).max(Duration::from_secs(1)),
            None => shard_wait,
        };
        // Its answer is a few bytes (the partitions, or nothing): plain.
        let opts = lp.options(QueryOptions::consistent().plain(), wait);
        let (client, root) = (self.d.client.clone(), self.root.clone());
        if wake {
            let since = self.wake.index();
            let ledger = Arc::clone(self.d.reconciler.ledger());
            self.guard_read = Some(self.reads.spawn(async move {
                tokio::time::sleep_until(at).await;
                let r = client.kv_wake(&root, &opts).await;
                let mut accounted = false;
                if let Ok((_, meta)) = &r {
                    tokio::time::sleep(GUARD_GRACE).await;
                    accounted =
                        ledger.account(since, meta.index, LEDGER_GRACE).await == Account::All;
                }
                Answer::Woken(r, accounted)
            }));
            return;
        }
        self.guard_read = Some(self.reads.spawn(async move {
            tokio::time::sleep_until(at).await;
            let r = client.kv_keys(&root, Some("/"), &opts).await;
            if r.is_ok() {
                tokio::time::sleep(GUARD_GRACE).await;
            }
            Answer::Moved(r.map(|(_, meta)| meta))
        }));
    }

    /// About how many keys the shards hold: what the guard's probe walks.
    fn tree_keys(&self) -> usize {
        self.shards.values().map(|s| s.part.keys()).sum()
    }

    /// Starts a sweep, paced by the size of the last one.
    fn spawn_sweep(&mut self) {
        if let Some(old) = self.guard_read.take() {
            old.abort();
        }
        let at = self.sweep.start();
        let (client, root) = (self.d.client.clone(), self.root.clone());
        self.guard_read = Some(self.reads.spawn(async move {
            tokio::time::sleep_until(at).await;
            let opts = QueryOptions::consistent();
            Answer::Guard(guard_units(&client, &root, &opts).await)
        }));
    }

    /// The guard's probe answered: the tree changed up to its index. When no
    /// shard has reached that index, the change lies outside every shard (a
    /// service under a name no shard covers) and a sweep looks for it now;
    /// else a sweep is due later (see [`sweep_when`]).
    fn on_moved(&mut self, r: Result<QueryMeta, ConsulError>) -> bool {
        self.guard_read = None;
        let meta = match r {
            Ok(meta) => meta,
            Err(e) => {
                let delay = self.guard.failed();
                self.failed(&e, delay);
                self.spawn_guard();
                return true;
            }
        };
        // The probe walks the whole tree: pace it by the tree's size.
        self.guard.walks(self.tree_keys());
        let previous = self.guard.answered(&meta);
        self.answered(meta.index);
        self.exact_due = false;
        let moved = self.guard.index() != previous || previous == 0;
        let shards = self.shards_index();
        self.wake_shards = shards;
        let explained = shards >= meta.index;
        let (now, due) = sweep_when(
            moved,
            explained,
            self.sweep_due,
            self.sweep_bytes,
            Instant::now(),
        );
        self.sweep_due = due;
        if now {
            self.spawn_sweep();
        } else {
            self.spawn_guard();
        }
        true
    }

    /// The highest index the shards have reached.
    fn shards_index(&self) -> u64 {
        self.shards
            .values()
            .map(|s| s.lp.index())
            .max()
            .unwrap_or(0)
    }

    /// The guard's wake probe answered (and waited [`GUARD_GRACE`]): the
    /// tree may have changed. A shard that moved meanwhile explains it (a
    /// sweep is then due later, as for the probe's explained answer); the
    /// instance's own writes, when they are all that happened, need
    /// nothing; else the guard's probe decides (see [`wake_step`]).
    fn on_woken(
        &mut self,
        r: Result<(Vec<String>, QueryMeta), ConsulError>,
        accounted: bool,
    ) -> bool {
        self.guard_read = None;
        let meta = match r {
            Ok((found, _)) if !found.is_empty() => {
                tracing::info!(
                    prefix = %format!("{}{WAKE_SUFFIX}", self.root),
                    "keys exist under the guard's wake probe: the guard lists the tree instead"
                );
                self.wake_on = false;
                self.spawn_guard();
                return true;
            }
            Ok((_, meta)) => meta,
            Err(e) => {
                let delay = self.wake.failed();
                self.failed(&e, delay);
                self.spawn_guard();
                return true;
            }
        };
        // The index is the KV store's, not the tree's: not shown as the
        // watch's.
        self.answered(0);
        let prev = self.wake.answered(&meta);
        let shards = self.shards_index();
        let explained = shards > self.wake_shards;
        self.wake_shards = shards;
        let step = wake_step(prev, meta.index, accounted, explained);
        let Some((now, due)) = step.sweep(self.sweep_due, self.sweep_bytes, Instant::now()) else {
            self.exact_due = true;
            self.spawn_guard();
            return true;
        };
        self.sweep_due = due;
        // What the shards read since is known: the next wake waits past it
        // (a write outside them hidden behind it is found by the sweep due).
        if step == Wake::Explained && shards > meta.index {
            self.wake.moved_to(shards);
        }
        if now {
            self.spawn_sweep();
        } else {
            self.spawn_guard();
        }
        true
    }

    /// A shard answered: hand the coordinator what changed, read again.
    async fn on_shard(&mut self, prefix: String, epoch: u64, r: ShardRead) -> bool {
        let Some(shard) = self.shards.get_mut(&prefix).filter(|s| s.epoch == epoch) else {
            return true; // dropped or read afresh by a new layout meanwhile
        };
        shard.read = None;
        let (update, before) = match r {
            Ok((update, meta)) => {
                let polled = !matches!(
                    update,
                    Update::Units(.., Found::OwnWrites { polled: false })
                );
                let before = if polled {
                    self.d.metrics.watch_wakeups.inc();
                    shard.lp.answered(&meta)
                } else {
                    // Nothing was listed: the next query is not held back.
                    shard.lp.moved_to(meta.index)
                };
                self.answered(meta.index);
                (update, before)
            }
            Err(e) => {
                let delay = shard.lp.failed();
                self.failed(&e, delay);
                // The next read is a fresh one, perhaps from a Consul
                // wiped or restored meanwhile: forget the indexes recorded.
                self.d.reconciler.ledger().with(Ledger::clear);
                self.spawn_shard(prefix);
                return true;
            }
        };
        let set: BTreeSet<String> = self.shards.keys().cloned().collect();
        let owned = |pairs: Vec<KvPair>| -> Vec<KvPair> {
            (pairs.into_iter())
                .filter(|p| shards::owner(&set, &p.key) == Some(prefix.as_str()))
                .collect()
        };
        let layout = &self.d.cfg.layout;
        let Some(shard) = self.shards.get_mut(&prefix) else {
            return true;
        };
        // A change found (not the first read, not the instance's own
        // records) is reconciled next, which writes records under the shard.
        let found_change =
            before != 0 && matches!(update, Update::Whole(_) | Update::Units(.., Found::Descent));
        let (old, new) = match update {
            Update::Same => {
                self.spawn_shard(prefix);
                return true;
            }
            Update::Whole(pairs) => {
                let owned = owned(pairs);
                shard.learn_unit_bytes(&self.root, &owned);
                let units = shards::units(&self.root, owned.iter().map(|p| p.key.as_str()));
                shard.units = Arc::new(units);
                let new = Snapshot::from_pairs(layout, &owned);
                (std::mem::replace(&mut shard.part, new.clone()), new)
            }
            Update::Units(read, pairs, _) => {
                let owned = owned(pairs);
                shard.learn_unit_bytes(&self.root, &owned);
                let units = Arc::make_mut(&mut shard.units);
                for u in &read {
                    units.remove(u);
                }
                units.extend(shards::units(
                    &self.root,
                    owned.iter().map(|p| p.key.as_str()),
                ));
                let old = shard.part.take_units(layout, &read);
                let new = Snapshot::from_pairs(layout, &owned);
                shard.part.add_part(new.clone());
                (old, new)
            }
        };
        shard.expect_own = found_change && old.services != new.services;
        // One shard over everything has no guard: its own units are the
        // whole tree, and tell when to split.
        if shards::complete(&self.root, &set) {
            let units = shard.units.clone();
            if shards::needs_relayout(&self.root, &set, &units, LIMITS) {
                if old != new && !self.send_part(old, new) {
                    return false;
                }
                let next = shards::layout(&self.root, &units, LIMITS);
                match self.relayout(&set, next).await {
                    Some(sent) => return sent && self.restart_guard(),
                    // Not laid out: read the shard afresh.
                    None => self.reread(&prefix),
                }
                self.spawn_shard(prefix);
                return true;
            }
        }
        if old != new && !self.send_part(old, new) {
            return false;
        }
        self.spawn_shard(prefix);
        true
    }

    /// Hands the coordinator a shard's part read again, and tells the drift
    /// probe which config writes its records hold (another instance's
    /// writes, most often: see [`OwnWrites::recorded`]). False when the
    /// coordinator is gone.
    ///
    /// [`OwnWrites::recorded`]: crate::watch::OwnWrites::recorded
    fn send_part(&self, old: Snapshot, new: Snapshot) -> bool {
        if !new.records.is_empty() {
            let mut own = self.d.own_writes.lock().unwrap_or_else(|e| e.into_inner());
            for seen in new.records.values() {
                own.recorded(seen.modify_index);
            }
        }
        self.events.send(Event::Part { old, new }).is_ok()
    }

    /// The guard answered: redo the layout when a key lies outside every
    /// shard, or the shards grew or shrank past their bounds.
    async fn on_guard(&mut self, r: Result<(Vec<String>, QueryMeta), ConsulError>) -> bool {
        self.guard_read = None;
        let keys = match r {
            Ok((keys, meta)) => {
                self.sweep.walks(SWEEP_WALKS * self.tree_keys());
                self.sweep.answered(&meta);
                self.sweep_bytes = meta.body_bytes;
                self.sweep_due = None;
                self.answered(meta.index);
                keys
            }
            Err(e) => {
                let delay = self.sweep.failed();
                self.failed(&e, delay);
                self.spawn_sweep();
                return true;
            }
        };
        let current: BTreeSet<String> = self.shards.keys().cloned().collect();
        let units = shards::units(&self.root, keys.iter().map(String::as_str));
        if shards::needs_relayout(&self.root, &current, &units, LIMITS) {
            let next = shards::layout(&self.root, &units, LIMITS);
            if self.relayout(&current, next).await == Some(false) {
                return false;
            }
        }
        self.spawn_guard();
        true
    }

    /// Moves to the `next` layout: reads afresh every shard whose keys
    /// change, then hands the coordinator the old and new parts of them. A
    /// failed read leaves the current layout as it is (the guard tries
    /// again). `None` then; else whether the coordinator took the change.
    async fn relayout(
        &mut self,
        current: &BTreeSet<String>,
        next: BTreeSet<String>,
    ) -> Option<bool> {
        let plan = shards::relayout(current, &next);
        let mut fresh = Vec::new();
        for prefix in &plan.read {
            match self
                .d
                .client
                .kv_list(prefix, &QueryOptions::consistent())
                .await
            {
                Ok((pairs, meta)) => {
                    self.answered(meta.index);
                    let owned: Vec<KvPair> = (pairs.into_iter())
                        .filter(|p| shards::owner(&next, &p.key) == Some(prefix.as_str()))
                        .collect();
                    fresh.push((prefix.clone(), owned, meta));
                }
                Err(e) => {
                    let delay = self.guard.failed();
                    self.failed(&e, delay);
                    return None;
                }
            }
        }
        let mut old = Snapshot::default();
        for prefix in plan.dropped.iter().chain(&plan.read) {
            if let Some(mut shard) = self.shards.remove(prefix) {
                // Its read in flight is left to finish (its answer is
                // dropped by epoch): Consul 1.8 keeps serving a blocking
                // query whose client went away until the query ends, and
                // counts it against `http_max_conns_per_client` meanwhile.
                drop(shard.read.take());
                old.add_part(shard.part);
            }
        }
        let mut new = Snapshot::default();
        for (prefix, owned, meta) in fresh {
            let mut lp = BlockingLoop::by_cost(SHARD_MIN_GAP);
            lp.answered(&QueryMeta {
                index: meta.index.max(1),
                ..meta
            });
            let part = Snapshot::from_pairs(&self.d.cfg.layout, &owned);
            let units = shards::units(&self.root, owned.iter().map(|p| p.key.as_str()));
            new.add_part(part.clone());
            let shard = Shard {
                lp,
                part,
                units: Arc::new(units),
                read: None,
                epoch: 0,
                expect_own: false,
                unit_bytes: 0,
            };
            self.shards.insert(prefix, shard);
        }
        tracing::info!(
            shards = next.len(),
            dropped = plan.dropped.len(),
            read = plan.read.len(),
            "the desired prefix's shards were laid out again"
        );
        self.d.metrics.watch_shards.set(next.len() as i64);
        if old != new && !self.send_part(old, new) {
            return Some(false);
        }
        for prefix in plan.read {
            self.spawn_shard(prefix);
        }
        Some(true)
    }

    /// The next read of `prefix` is a fresh one (its last answer was not
    /// taken in), after the error backoff.
    fn reread(&mut self, prefix: &str) {
        if let Some(shard) = self.shards.get_mut(prefix) {
            shard.lp.failed();
        }
    }

    /// How long a shard's or the guard's blocking query may wait: at most
    /// [`SHARD_MAX_WAIT`], so that the queries a stopped or restarted
    /// daemon leaves behind free their slots in Consul soon.
    fn shard_wait(&self) -> Duration {
        self.d.cfg.watch_wait.min(SHARD_MAX_WAIT)
    }

    /// Starts the guard after the layout went from one shard to several.
    fn restart_guard(&mut self) -> bool {
        if self.guard_read.is_none() {
            self.spawn_guard();
        }
        true
    }

    /// Consul answered at `index`.
    fn answered(&mut self, index: u64) {
        self.d.health.beat();
        self.d.metrics.watch_last_success.set(unix_now());
        let shown = self.d.metrics.watch_index.get();
        if index as i64 > shown {
            self.d.metrics.watch_index.set(index as i64);
        }
        if let Some(since) = self.outage_since.take() {
            tracing::info!(after = ?since.elapsed(), "Consul answers again; watching");
        }
    }

    /// A read failed; it is retried after `delay`, as a fresh read.
    fn failed(&mut self, e: &ConsulError, delay: Duration) {
        self.d.metrics.watch_errors.inc();
        if self.outage_since.is_none() {
            self.outage_since = Some(Instant::now());
            tracing::error!(error = %e, retry_in = ?delay, "watch failed; Consul unreachable or erroring");
        } else {
            tracing::debug!(error = %e, retry_in = ?delay, "watch still failing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value_len: usize) -> KvPair {
        KvPair {
            key: key.to_string(),
            value: vec![b'x'; value_len],
            flags: 0,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            session: None,
        }
    }

    #[test]
    fn folder_bytes_counts_service_folders_only() {
        let root = "p/desired/";
        let pairs = [
            pair("p/desired/default/default/web/base.json", 300),
            pair(
                "p/desired/default/default/web/records/service-defaults.json",
                600,
            ),
            pair("p/desired/default/default/api/base.json", 300),
            // A stray key is no folder.
            pair("p/desired/default/default/stray", 3000),
        ];
        let (bytes, units) = folder_bytes(root, &pairs);
        assert_eq!(units, 2);
        let expected: usize = pairs[..3]
            .iter()
            .map(|p| p.key.len() + p.value.len().div_ceil(3) * 4 + 100)
            .sum();
        assert_eq!(bytes, expected as u64);
        assert_eq!(folder_bytes(root, &pairs[3..]), (0, 0));
    }

    #[test]
    fn big_folders_are_probed_one_by_one_small_ones_read_as_a_group() {
        // Not known yet, or small: the group's one listing.
        assert_eq!(group_whole_up_to(0), GROUP_WHOLE_UP_TO);
        assert_eq!(group_whole_up_to(2 * 1024), GROUP_WHOLE_UP_TO);
        assert_eq!(group_whole_up_to(GROUP_WHOLE_UNIT_BYTES), GROUP_WHOLE_UP_TO);
        // A folder with a router, a splitter and a link: each on its own.
        assert_eq!(group_whole_up_to(GROUP_WHOLE_UNIT_BYTES + 1), 0);
        assert_eq!(group_whole_up_to(5 * 1024), 0);
        // The same for a small shard's recursive watch.
        assert_eq!(shard_whole_up_to(0), READ_WHOLE_UP_TO);
        assert_eq!(shard_whole_up_to(GROUP_WHOLE_UNIT_BYTES), READ_WHOLE_UP_TO);
        assert_eq!(shard_whole_up_to(GROUP_WHOLE_UNIT_BYTES + 1), 3);
    }

    #[test]
    fn a_shard_learns_its_folders_size_from_whole_folder_reads() {
        let mut shard = Shard {
            lp: BlockingLoop::by_cost(SHARD_MIN_GAP),
            part: Snapshot::default(),
            units: Arc::default(),
            read: None,
            epoch: 0,
            expect_own: false,
            unit_bytes: 0,
        };
        let root = "p/desired/";
        shard.learn_unit_bytes(
            root,
            &[pair("p/desired/default/default/web/base.json", 6000)],
        );
        assert!(shard.unit_bytes > GROUP_WHOLE_UNIT_BYTES);
        // A read without folders (a stray key) leaves it as it was.
        let before = shard.unit_bytes;
        shard.learn_unit_bytes(root, &[pair("p/desired/default/default/stray", 1)]);
        assert_eq!(shard.unit_bytes, before);
        shard.learn_unit_bytes(root, &[pair("p/desired/default/default/api/base.json", 10)]);
        assert!(shard.unit_bytes < 1024);
    }
}
