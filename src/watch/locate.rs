//! Finding what changed under a shard without reading it whole.
//!
//! A shard is watched with a keys-only listing with the separator `/`: one
//! line per service folder, not every record's value. Consul answers it with
//! the highest ModifyIndex under the prefix, deleted keys' tombstones
//! included. When that index passes `since` (the index the shard's part was
//! last read at), the changed units are found by descending: the units under
//! a prefix are grouped by the character that follows it, each group's
//! common prefix is listed the same way, and only the groups whose index
//! passed `since` are descended into. A unit found is then read whole (its
//! base.json and records), and only it.
//!
//! No change is missed: a key written or deleted after `since` carries an
//! index above it, and so does every prefix above the key, however many
//! more writes land during the descent. The units last read
//! (`known`) take part in the grouping beside the ones listed now, so a
//! unit deleted since (every key gone, only tombstones left) is found and
//! read too: its read is empty.
//!
//! The cost is the shard's list of folders plus one listing per group on the
//! way down, about twice the folder names of the shard and a few hundred
//! bytes per unit read, instead of every value of every record in it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use tokio::task::JoinSet;

use super::shards::{common_prefix, unit_of};
use crate::keys::has_dot_segment;

/// At most this many listings of one descent are in flight at once.
pub const CONCURRENCY: usize = 8;

/// A descent may always make this many listings, however small its
/// `most`: a few hundred bytes each, against a whole read of a small shard
/// (a few KiB per service).
pub const MIN_LISTINGS: usize = 64;

/// One keys-only listing with the separator `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probed {
    /// The keys, cut after the first `/` past the prefix.
    pub items: Vec<String>,
    /// The highest ModifyIndex under the prefix (Consul's X-Consul-Index).
    pub index: u64,
    /// The size of the answer.
    pub bytes: u64,
}

/// What lists a prefix (the Consul client, or a model in tests). Taken by
/// value so that several listings can run at once.
pub trait Prober: Clone + Send + 'static {
    type Error: Send + 'static;
    /// Lists `prefix`; `small` when it is known to hold few folders (see
    /// [`Group::small`]).
    fn probe(
        self,
        prefix: String,
        small: bool,
    ) -> impl Future<Output = Result<Probed, Self::Error>> + Send + 'static;
}

/// How far a descent goes (see [`locate`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A changed group of at most this many units is taken whole.
    pub whole_up_to: usize,
    /// Past this many changed units and groups, the descent gives up.
    pub most: usize,
}

/// The outcome of a descent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descent {
    /// The units to read, or `None`: read the shard whole (a prefix on the
    /// way down has a `.` or `..` path segment, which Consul's HTTP API
    /// cannot address, or more than the descent's `most` changed).
    pub units: Option<BTreeSet<String>>,
    /// Groups to read whole (one recursive listing each) rather than one
    /// folder at a time: every unit under them is in `units`.
    pub whole: BTreeSet<String>,
    /// Listings made.
    pub probes: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// True when `item` (a key or a listed folder under `root`) is a folder
/// above the service folders: `<root><p>/` or `<root><p>/<ns>/`.
pub fn is_upper_folder(root: &str, item: &str) -> bool {
    match item.strip_prefix(root) {
        Some(rest) => rest.ends_with('/') && rest.matches('/').count() < 3,
        None => false,
    }
}

/// What a listed item stands for: an upper folder as itself, anything else
/// as its unit (a service folder, or a stray key).
fn candidate(root: &str, item: &str) -> Option<String> {
    if is_upper_folder(root, item) {
        Some(item.to_string())
    } else {
        unit_of(root, item).map(str::to_string)
    }
}

/// A group to list: its prefix, and whether it is one unit (read it when it
/// changed) rather than a prefix to descend into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub prefix: String,
    pub unit: bool,
    /// At most [`SMALL_GROUP`] service folders were known in it (no
    /// partition or namespace): its listing is a few KiB at most.
    pub small: bool,
}

/// A group of at most this many known service folders is small: its
/// listing is about 100 bytes a folder.
pub const SMALL_GROUP: usize = 32;

/// The candidates strictly under `prefix`, grouped by the character after
/// it, each group named by the longest prefix its members share. `None`
/// when a group's prefix has a `.` or `..` path segment.
pub fn groups(root: &str, prefix: &str, candidates: &BTreeSet<String>) -> Option<Vec<Group>> {
    let mut by_char: BTreeMap<char, Vec<&str>> = BTreeMap::new();
    for c in candidates {
        if let Some(next) = c.strip_prefix(prefix).and_then(|r| r.chars().next()) {
            by_char.entry(next).or_default().push(c);
        }
    }
    let mut out = Vec::with_capacity(by_char.len());
    for members in by_char.into_values() {
        let shared = common_prefix(&members);
        if has_dot_segment(shared) {
            return None;
        }
        let unit = members.len() == 1 && shared == members[0] && !is_upper_folder(root, shared);
        let small =
            members.len() <= SMALL_GROUP && !members.iter().any(|m| is_upper_folder(root, m));
        out.push(Group {
            prefix: shared.to_string(),
            unit,
            small,
        });
    }
    Some(out)
}

/// The units under `prefix` that changed after `since` (see the module
/// docs). `items` is the shard's own listing, answered past `since`;
/// `known` the units the shard held when last read. A changed group of at
/// most `limits.whole_up_to` units is not descended into: its units are all
/// taken, to be read with one recursive listing of the group (one request
/// for a few units' records, instead of a listing per character and a read
/// per unit). The descent gives up
/// (units `None`: read the shard whole) as soon as more than `limits.most` units
/// and groups on the way down have changed, or its listings would pass
/// `most` (and [`MIN_LISTINGS`]): past that, one listing of the shard costs
/// fewer requests than the rest of the descent and the units' reads (a bulk
/// apply, or a burst of changes).
pub async fn locate<P: Prober>(
    prober: &P,
    root: &str,
    prefix: &str,
    items: Vec<String>,
    known: &BTreeSet<String>,
    since: u64,
    limits: Limits,
) -> Result<Descent, P::Error> {
    let Limits { whole_up_to, most } = limits;
    let cap = most.max(MIN_LISTINGS);
    let mut out = Descent {
        units: None,
        ..Descent::default()
    };
    let mut found = BTreeSet::new();
    // The groups still to list, a stack: a changed group's own groups are
    // listed before the rest of the level above it, so the way down to a
    // change goes on while its neighbours are still being listed (at most
    // CONCURRENCY listings in flight), instead of level after level.
    let mut pending = Vec::new();
    if !expand(root, prefix, &items, known, &mut found, &mut pending) {
        return Ok(out);
    }
    let mut descended = 0;
    let mut running = JoinSet::new();
    loop {
        // Listings made, in flight and still to make.
        if out.probes as usize + running.len() + pending.len() > cap {
            return Ok(out);
        }
        while running.len() < CONCURRENCY {
            let Some(group) = pending.pop() else { break };
            let probe = prober.clone().probe(group.prefix.clone(), group.small);
            running.spawn(async move { (group, probe.await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        // A probe panicking is a bug; let it show.
        let (group, probed) = done.expect("a listing task panicked");
        let probed = probed?;
        out.probes += 1;
        out.bytes += probed.bytes;
        if probed.index <= since {
            continue;
        }
        if group.unit {
            found.insert(group.prefix);
        } else {
            let cands = candidates(root, &group.prefix, &probed.items, known);
            if cands.len() <= whole_up_to && !cands.iter().any(|c| is_upper_folder(root, c)) {
                found.extend(cands);
                out.whole.insert(group.prefix);
            } else {
                descended += 1;
                if !expand(
                    root,
                    &group.prefix,
                    &probed.items,
                    known,
                    &mut found,
                    &mut pending,
                ) {
                    return Ok(out);
                }
            }
        }
        if found.len() + descended > most {
            return Ok(out);
        }
    }
    out.units = Some(found);
    Ok(out)
}

/// Groups what is under `p` (its listing `items` and the `known` units)
/// onto `pending`; `p` itself, when it is a unit (a shard laid out on one
/// service folder) or a key of its own (a folder's marker key), is found.
/// False when a group's prefix cannot be addressed (a `.` or `..` path
/// segment): read the shard whole.
fn expand(
    root: &str,
    p: &str,
    items: &[String],
    known: &BTreeSet<String>,
    found: &mut BTreeSet<String>,
    pending: &mut Vec<Group>,
) -> bool {
    let mut cands = candidates(root, p, items, known);
    if cands.remove(p) {
        found.insert(p.to_string());
    }
    match groups(root, p, &cands) {
        Some(g) => {
            pending.extend(g);
            true
        }
        None => false,
    }
}

/// The candidates under `prefix`: what its listing shows (`items`) and the
/// units last read there (`known`), so that one deleted since is found.
fn candidates(
    root: &str,
    prefix: &str,
    items: &[String],
    known: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut cands: BTreeSet<String> = items.iter().filter_map(|i| candidate(root, i)).collect();
    cands.extend(
        known
            .range(prefix.to_string()..)
            .take_while(|k| k.starts_with(prefix))
            .cloned(),
    );
    cands
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const ROOT: &str = "svc/desired/";

    fn lim(whole_up_to: usize, most: usize) -> Limits {
        Limits { whole_up_to, most }
    }

    /// Consul's KV store as far as a keys-only listing with the separator
    /// `/` shows it: each key's ModifyIndex, the tombstones of deleted keys,
    /// and the raft index.
    #[derive(Default)]
    struct Model {
        keys: BTreeMap<String, u64>,
        tombstones: BTreeMap<String, u64>,
        index: u64,
        /// Writes made during the descent: after this many listings, write
        /// (or delete) these keys.
        during: Vec<(usize, String, bool)>,
        listings: usize,
    }

    impl Model {
        fn put(&mut self, key: &str) {
            self.index += 1;
            self.tombstones.remove(key);
            self.keys.insert(key.to_string(), self.index);
        }
        fn delete(&mut self, key: &str) {
            self.index += 1;
            if self.keys.remove(key).is_some() {
                self.tombstones.insert(key.to_string(), self.index);
            }
        }
        /// What Consul 1.8's KVSKeys answers: the keys cut after the
        /// separator, and the highest index of a key or tombstone under the
        /// prefix (the table's index when there is none).
        fn list(&mut self, prefix: &str) -> Probed {
            self.listings += 1;
            let due: Vec<_> = self
                .during
                .iter()
                .filter(|(at, _, _)| *at == self.listings)
                .cloned()
                .collect();
            for (_, key, put) in due {
                if put {
                    self.put(&key)
                } else {
                    self.delete(&key)
                }
            }
            let mut items: Vec<String> = Vec::new();
            let mut index = 0;
            for (k, i) in self.keys.range(prefix.to_string()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                index = index.max(*i);
                let item = match k[prefix.len()..].find('/') {
                    Some(at) => k[..prefix.len() + at + 1].to_string(),
                    None => k.clone(),
                };
                if items.last() != Some(&item) {
                    items.push(item);
                }
            }
            for (k, i) in &self.tombstones {
                if k.starts_with(prefix) {
                    index = index.max(*i);
                }
            }
            if index == 0 {
                index = self.index;
            }
            let bytes = items.iter().map(|i| i.len() as u64 + 3).sum();
            Probed {
                items,
                index,
                bytes,
            }
        }
    }

    #[derive(Clone)]
    struct Shared(Arc<Mutex<Model>>);

    impl Prober for Shared {
        type Error = std::convert::Infallible;
        async fn probe(self, prefix: String, _small: bool) -> Result<Probed, Self::Error> {
            Ok(self.0.lock().unwrap().list(&prefix))
        }
    }

    fn key(name: &str, file: &str) -> String {
        format!("{ROOT}default/default/{name}/{file}")
    }

    fn unit(name: &str) -> String {
        format!("{ROOT}default/default/{name}/")
    }

    /// The units a listing of everything under `ROOT` shows.
    fn units_now(m: &Model) -> BTreeSet<String> {
        m.keys
            .keys()
            .filter_map(|k| unit_of(ROOT, k).map(str::to_string))
            .collect()
    }

    /// A descent of `prefix` without limits, from a listing made now.
    async fn descend(m: &Shared, prefix: &str, known: &BTreeSet<String>, since: u64) -> Descent {
        descend_within(m, prefix, known, since, lim(0, usize::MAX)).await
    }

    /// The same, within `limits`.
    async fn descend_within(
        m: &Shared,
        prefix: &str,
        known: &BTreeSet<String>,
        since: u64,
        limits: Limits,
    ) -> Descent {
        let first = m.0.lock().unwrap().list(prefix);
        locate(m, ROOT, prefix, first.items, known, since, limits)
            .await
            .unwrap()
    }

    /// A store holding services `svc-0` to `svc-{n-1}`, a base.json each.
    fn services(n: usize) -> Model {
        let mut m = Model::default();
        for i in 0..n {
            m.put(&key(&format!("svc-{i}"), "base.json"));
        }
        m
    }

    #[tokio::test]
    async fn one_change_among_many_is_found_by_listing_folders_only() {
        let mut m = Model::default();
        for i in 0..2000 {
            m.put(&key(&format!("ss-{i}"), "base.json"));
            m.put(&key(&format!("ss-{i}"), "defaults.json"));
        }
        let known = units_now(&m);
        let since = m.index;
        m.put(&key("ss-1234", "base.json"));
        let m = Shared(Arc::new(Mutex::new(m)));
        let prefix = format!("{ROOT}default/default/ss-1");
        let d = descend(&m, &prefix, &known, since).await;
        assert_eq!(d.units, Some(BTreeSet::from([unit("ss-1234")])));
        // Folders only: the shard's 1,111 folder names about twice, never
        // every key of every unit.
        let folders: u64 = known
            .iter()
            .filter(|u| u.starts_with(&prefix))
            .map(|u| u.len() as u64 + 3)
            .sum();
        assert!(d.bytes < 2 * folders, "{} bytes for {folders}", d.bytes);
        assert!(d.probes < 60, "{} listings", d.probes);
    }

    /// Lists through `inner`; a listing of `slow` answers only once
    /// `until` has been listed.
    #[derive(Clone)]
    struct Gated {
        inner: Shared,
        slow: String,
        until: String,
        listed: Arc<tokio::sync::watch::Sender<bool>>,
    }

    impl Prober for Gated {
        type Error = std::convert::Infallible;
        async fn probe(self, prefix: String, small: bool) -> Result<Probed, Self::Error> {
            if prefix == self.until {
                self.listed.send_replace(true);
            }
            if prefix == self.slow {
                let mut rx = self.listed.subscribe();
                let _ = rx.wait_for(|l| *l).await;
            }
            self.inner.probe(prefix, small).await
        }
    }

    #[tokio::test]
    async fn the_way_down_to_a_change_does_not_wait_for_its_neighbours() {
        let mut m = services(1000);
        let known = units_now(&m);
        let since = m.index;
        m.put(&key("svc-523", "base.json"));
        let prefix = format!("{ROOT}default/default/svc-");
        // svc-9's listing (a neighbour of the changed svc-5, listed first)
        // answers only after svc-52's (two levels down the way to the
        // change): a descent that lists level after level never ends.
        let gated = Gated {
            inner: Shared(Arc::new(Mutex::new(m))),
            slow: format!("{prefix}9"),
            until: format!("{prefix}52"),
            listed: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let first = gated.inner.0.lock().unwrap().list(&prefix);
        let d = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            locate(
                &gated,
                ROOT,
                &prefix,
                first.items,
                &known,
                since,
                lim(12, 64),
            ),
        )
        .await
        .expect("the descent waited for a neighbour of the change")
        .unwrap();
        let units = d.units.expect("found, not given up");
        assert!(units.contains(&unit("svc-523")), "{units:?}");
    }

    #[tokio::test]
    async fn nothing_changed_reads_nothing() {
        let mut m = Model::default();
        for i in 0..50 {
            m.put(&key(&format!("web{i}"), "base.json"));
        }
        let known = units_now(&m);
        let since = m.index;
        // A write elsewhere moves the table's index, not this prefix's.
        m.put(&format!("{ROOT}other/default/x/base.json"));
        let m = Shared(Arc::new(Mutex::new(m)));
        let d = descend(&m, &format!("{ROOT}default/"), &known, since).await;
        assert_eq!(d.units, Some(BTreeSet::new()));
    }

    #[tokio::test]
    async fn new_deleted_and_changed_units_and_stray_keys_are_all_found() {
        let mut m = Model::default();
        for name in ["api", "app", "apx", "web", "web2", "db"] {
            m.put(&key(name, "base.json"));
            m.put(&key(name, "tgw.json"));
        }
        m.put(&format!("{ROOT}default/default/stray.json"));
        let known = units_now(&m);
        let since = m.index;
        m.put(&key("app", "base.json")); // changed
        m.delete(&key("web", "base.json")); // base.json gone, records stay
        m.delete(&key("db", "base.json")); // the whole unit gone
        m.delete(&key("db", "tgw.json"));
        m.put(&key("new", "base.json")); // a new unit
        m.put(&format!("{ROOT}default/default/stray.json")); // a stray key
        m.put(&format!("{ROOT}default/other/x/base.json")); // another namespace
        let m = Shared(Arc::new(Mutex::new(m)));
        let d = descend(&m, ROOT, &known, since).await;
        let want: BTreeSet<String> = [
            unit("app"),
            unit("web"),
            unit("db"),
            unit("new"),
            format!("{ROOT}default/default/stray.json"),
            format!("{ROOT}default/other/x/"),
        ]
        .into();
        assert_eq!(d.units, Some(want));
    }

    #[tokio::test]
    async fn a_prefix_that_is_a_unit_or_a_marker_key_is_read_itself() {
        let mut m = Model::default();
        m.put(&key("solo", "base.json"));
        m.put(&format!("{ROOT}default/")); // a folder's marker key
        let known = units_now(&m);
        let since = m.index;
        m.put(&key("solo", "router.json"));
        m.put(&format!("{ROOT}default/"));
        let m = Shared(Arc::new(Mutex::new(m)));
        let d = descend(&m, &unit("solo"), &known, since).await;
        assert_eq!(d.units, Some(BTreeSet::from([unit("solo")])));
        let d = descend(&m, &format!("{ROOT}default/"), &known, since).await;
        assert_eq!(
            d.units,
            Some(BTreeSet::from([format!("{ROOT}default/"), unit("solo")]))
        );
    }

    #[tokio::test]
    async fn a_dot_segment_on_the_way_down_reads_the_shard_whole() {
        let mut m = Model::default();
        m.put(&format!("{ROOT}default/default/./a"));
        m.put(&format!("{ROOT}default/default/./b"));
        let known = BTreeSet::new();
        let since = 0;
        let m = Shared(Arc::new(Mutex::new(m)));
        let d = descend(&m, &format!("{ROOT}default/default/"), &known, since).await;
        assert_eq!(d.units, None);
    }

    #[tokio::test]
    async fn many_changes_give_up_early_and_few_do_not() {
        let mut m = services(400);
        let known = units_now(&m);
        let since = m.index;
        for i in (0..400).step_by(3) {
            m.put(&key(&format!("svc-{i}"), "base.json"));
        }
        let m = Shared(Arc::new(Mutex::new(m)));
        let prefix = format!("{ROOT}default/default/");
        let all = descend(&m, &prefix, &known, since).await;
        assert_eq!(all.units.as_ref().map(BTreeSet::len), Some(134));
        let most = known.len() / 4;
        let given_up = descend_within(&m, &prefix, &known, since, lim(0, most)).await;
        assert_eq!(given_up.units, None, "read whole instead");
        assert!(
            given_up.probes * 2 < all.probes,
            "gave up after {} listings of {}",
            given_up.probes,
            all.probes
        );
        // Below the bound, the same units as without one.
        let mut m2 = services(400);
        let since = m2.index;
        m2.put(&key("svc-77", "base.json"));
        let m2 = Shared(Arc::new(Mutex::new(m2)));
        let few = descend_within(&m2, &prefix, &known, since, lim(0, most)).await;
        assert_eq!(few.units, Some(BTreeSet::from([unit("svc-77")])));
    }

    #[tokio::test]
    async fn a_small_changed_group_is_taken_whole_instead_of_descended() {
        let mut m = services(400);
        let known = units_now(&m);
        let since = m.index;
        m.put(&key("svc-123", "base.json"));
        m.delete(&key("svc-129", "base.json"));
        let m = Shared(Arc::new(Mutex::new(m)));
        let prefix = format!("{ROOT}default/default/");
        let one_by_one = descend_within(&m, &prefix, &known, since, lim(0, 100)).await;
        assert_eq!(
            one_by_one.units,
            Some(BTreeSet::from([unit("svc-123"), unit("svc-129")]))
        );
        assert!(one_by_one.whole.is_empty());
        let grouped = descend_within(&m, &prefix, &known, since, lim(16, 100)).await;
        // svc-12 and svc-120 to svc-129: eleven folders, one listing.
        let group = format!("{ROOT}default/default/svc-12");
        assert_eq!(grouped.whole, BTreeSet::from([group.clone()]));
        let units = grouped.units.unwrap();
        assert_eq!(units.len(), 11, "{units:?}");
        assert!(units.iter().all(|u| u.starts_with(&group)));
        assert!(units.contains(&unit("svc-129")), "the deleted one too");
        assert!(
            grouped.probes < one_by_one.probes,
            "{} listings against {}",
            grouped.probes,
            one_by_one.probes
        );
    }

    /// The model test: random trees, random changes before the shard's
    /// listing answers and more while the descent runs. Every unit with a
    /// key written or deleted after `since` is found.
    #[tokio::test]
    async fn no_change_after_since_is_ever_missed() {
        let mut rng = fastrand::Rng::with_seed(13);
        let files = ["base.json", "defaults.json", "tgw.json"];
        for round in 0..300 {
            let mut m = Model::default();
            let n = rng.usize(1..120);
            let name = |rng: &mut fastrand::Rng| {
                let len = rng.usize(1..6);
                let s: String = (0..len)
                    .map(|_| rng.choice(['a', 'b', '1', '-']).unwrap())
                    .collect();
                s
            };
            for _ in 0..n {
                let nm = name(&mut rng);
                m.put(&key(&nm, rng.choice(files).unwrap()));
            }
            let known = units_now(&m);
            let since = m.index;
            let mut touched = BTreeSet::new();
            let before: Vec<String> = m.keys.keys().cloned().collect();
            // Changes before the listing answers.
            for _ in 0..rng.usize(0..6) {
                if rng.bool() && !before.is_empty() {
                    let k = rng.choice(&before).unwrap().clone();
                    m.delete(&k);
                    touched.insert(unit_of(ROOT, &k).unwrap().to_string());
                } else {
                    let k = key(&name(&mut rng), rng.choice(files).unwrap());
                    m.put(&k);
                    touched.insert(unit_of(ROOT, &k).unwrap().to_string());
                }
            }
            // And during the descent (found or not; never lost: the next
            // listing of the shard is past them).
            for at in 0..rng.usize(0..4) {
                let k = key(&name(&mut rng), rng.choice(files).unwrap());
                m.during.push((at + 2, k, rng.bool()));
            }
            let m = Shared(Arc::new(Mutex::new(m)));
            let prefix = format!("{ROOT}default/default/");
            // A descent that gives up reads the shard whole; one that does
            // not must have found every change.
            let most = *rng.choice(&[0, 2, 10, usize::MAX]).unwrap();
            let whole_up_to = *rng.choice(&[0, 3, 12]).unwrap();
            let d = descend_within(&m, &prefix, &known, since, lim(whole_up_to, most)).await;
            let Some(found) = d.units else {
                assert!(most < usize::MAX, "round {round}: no dot segments here");
                continue;
            };
            // A unit made before the listing and deleted again during the
            // descent, never read, needs no read: it holds nothing, as the
            // snapshot says.
            let end = m.0.lock().unwrap();
            let missed: Vec<_> = touched
                .difference(&found)
                .filter(|u| {
                    known.contains(*u) || end.keys.keys().any(|k| k.starts_with(u.as_str()))
                })
                .collect();
            assert!(
                missed.is_empty(),
                "round {round}: missed {missed:?} (whole up to {whole_up_to}, most {most})"
            );
        }
    }

    #[test]
    fn groups_follow_the_next_character_and_share_their_prefix() {
        let c: BTreeSet<String> = [unit("ss-1"), unit("ss-10"), unit("ss-11"), unit("ss-2")].into();
        let g = groups(ROOT, &format!("{ROOT}default/default/ss-"), &c).unwrap();
        assert_eq!(
            g,
            vec![
                Group {
                    prefix: format!("{ROOT}default/default/ss-1"),
                    unit: false,
                    small: true
                },
                Group {
                    prefix: unit("ss-2"),
                    unit: true,
                    small: true
                },
            ]
        );
        let upper: BTreeSet<String> = [format!("{ROOT}p/")].into();
        let g = groups(ROOT, ROOT, &upper).unwrap();
        assert_eq!(
            g,
            vec![Group {
                prefix: format!("{ROOT}p/"),
                unit: false,
                small: false
            }]
        );
    }
}
