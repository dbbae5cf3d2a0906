//! The desired tree watched as shards: several blocking queries on narrower
//! key prefixes, each re-listing only its own part of the tree, so that one
//! change costs a read of its shard, not of every service.
//!
//! Consul KV prefixes are string prefixes: a shard is any string under the
//! desired prefix. The layout is a trie over the *units* present (a service's
//! folder `<root><p>/<ns>/<name>/`, or a stray key that is not in a folder):
//! a shard holding more than `per_shard` units is split by the next
//! character of its units, the biggest first, until every shard is small
//! enough or the shard budget is spent. A unit is never split across shards,
//! so a service's base.json and records are always read together.
//!
//! Splits follow the characters present, so a new key can fall outside every
//! shard (a service whose name begins differently from all others). The
//! *guard*, a paced listing of the units of the whole tree (one key per
//! service folder, read with the separator `/`), finds such units and the
//! layout is redone; until then nothing under them is missed for good,
//! only seen later. With one shard covering the whole tree there is no gap
//! and no guard.
//!
//! Each key belongs to exactly one shard, the longest shard prefix of the key
//! ([`owner`]); a shard's part of the snapshot holds only the keys it owns.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys::has_dot_segment;

/// The unit of `key` under `root`: `<root><p>/<ns>/<name>/` when the key
/// lies in a service folder, else the key itself (a stray key). `None` for a
/// key outside `root`.
pub fn unit_of<'a>(root: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(root)?;
    let mut end = 0;
    for (n, (i, _)) in rest.match_indices('/').enumerate() {
        if n == 2 {
            end = i + 1;
            break;
        }
    }
    Some(if end == 0 {
        key
    } else {
        &key[..root.len() + end]
    })
}

/// The distinct units of `keys` under `root`.
pub fn units<'a>(root: &str, keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for key in keys {
        if let Some(u) = unit_of(root, key) {
            if !out.contains(u) {
                out.insert(u.to_string());
            }
        }
    }
    out
}

/// The longest shard that is a prefix of `key`: the shard that owns it.
pub fn owner<'s>(shards: &'s BTreeSet<String>, key: &str) -> Option<&'s str> {
    shards
        .iter()
        .filter(|s| key.starts_with(s.as_str()))
        .max_by_key(|s| s.len())
        .map(String::as_str)
}

/// True when `shards` cover everything under `root`: one shard, `root`.
pub fn complete(root: &str, shards: &BTreeSet<String>) -> bool {
    shards.len() == 1 && shards.contains(root)
}

/// The limits of a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A shard with more units than this is split (when the budget allows).
    pub per_shard: usize,
    /// At most this many shards (each one is a long-poll held open).
    pub max_shards: usize,
}

/// What the daemon uses: about 16 services a shard (a read of 30–60 KiB
/// with records), and at most 32 shards: a daemon then holds at most
/// 32 + 1 guard + 1 drift probe + 1 observed.json watch = 35 long-polls.
/// Every client on a node shares the local agent's
/// `http_max_conns_per_client` (200 by default), and Consul 1.8 counts a
/// blocking query whose client went away until the query ends: a daemon
/// restarted leaves its old long-polls counted for up to a minute, so two
/// generations of one daemon must fit with room for everything else.
/// Past 32 × 16 = 512 services the shard count binds and shards grow.
pub const LIMITS: Limits = Limits {
    per_shard: 16,
    max_shards: 32,
};

/// The shards for `units` under `root` (see the module docs). Deterministic:
/// the same units always give the same layout.
pub fn layout(root: &str, units: &BTreeSet<String>, limits: Limits) -> BTreeSet<String> {
    // Shard prefix → its units; `sealed` shards cannot be split.
    let mut shards: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    shards.insert(root.to_string(), units.iter().map(String::as_str).collect());
    let mut sealed: BTreeSet<String> = BTreeSet::new();
    loop {
        let biggest = shards
            .iter()
            .filter(|(p, u)| u.len() > limits.per_shard && !sealed.contains(*p))
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
            .map(|(p, _)| p.clone());
        let Some(prefix) = biggest else { break };
        let members = shards.remove(&prefix).unwrap_or_default();
        match split(&prefix, &members) {
            Some(children) if shards.len() + children.len() <= limits.max_shards => {
                shards.extend(children);
            }
            _ => {
                sealed.insert(prefix.clone());
                shards.insert(prefix, members);
            }
        }
    }
    shards.into_keys().collect()
}

/// `prefix`'s units grouped by the character after `prefix`, each group's
/// prefix extended over what all its units share. `None` when a unit is
/// `prefix` itself (it cannot be divided) or a child would have a `.` or
/// `..` path segment (Consul's HTTP API cannot address it).
fn split<'a>(prefix: &str, members: &[&'a str]) -> Option<BTreeMap<String, Vec<&'a str>>> {
    let mut groups: BTreeMap<char, Vec<&'a str>> = BTreeMap::new();
    for u in members {
        let c = u[prefix.len()..].chars().next()?;
        groups.entry(c).or_default().push(u);
    }
    let mut out = BTreeMap::new();
    for (_, group) in groups {
        let child = common_prefix(&group);
        if has_dot_segment(child) {
            return None;
        }
        out.insert(child.to_string(), group);
    }
    Some(out)
}

/// The longest common prefix of non-empty `units`, cut at a character
/// boundary and never past the end of a unit.
pub(crate) fn common_prefix<'a>(units: &[&'a str]) -> &'a str {
    let first = units[0];
    let mut len = first.len();
    for u in &units[1..] {
        let shared = first
            .char_indices()
            .zip(u.chars())
            .find(|((_, a), b)| a != b)
            .map(|((i, _), _)| i)
            .unwrap_or_else(|| first.len().min(u.len()));
        len = len.min(shared);
    }
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    &first[..len]
}

/// True when the guard's `units` call for a new layout: a unit no shard
/// owns (a key outside every shard), a shard grown past twice its bound
/// that a new layout would divide, or a tree shrunk to half the shards.
pub fn needs_relayout(
    root: &str,
    current: &BTreeSet<String>,
    units: &BTreeSet<String>,
    limits: Limits,
) -> bool {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for u in units {
        match owner(current, u) {
            None => return true,
            Some(o) => *per.entry(o).or_default() += 1,
        }
    }
    let grown = per.values().any(|&n| n > 2 * limits.per_shard);
    if !grown && current.len() <= 1 {
        return false;
    }
    let next = layout(root, units, limits);
    if grown {
        next != *current
    } else {
        next.len() * 2 <= current.len()
    }
}

/// What to re-read when the layout goes from `old` to `new`: the shards
/// whose owned keys may change. Shards only in `old` (`dropped`) give their
/// keys to shorter shards; shards only in `new` take keys from shorter ones.
/// A kept shard is re-read when it is a prefix of an added or dropped one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Relayout {
    /// Shards no longer watched.
    pub dropped: BTreeSet<String>,
    /// Shards to read afresh (added ones, and kept ones whose keys change).
    pub read: BTreeSet<String>,
}

pub fn relayout(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Relayout {
    let dropped: BTreeSet<String> = old.difference(new).cloned().collect();
    let added: BTreeSet<&String> = new.difference(old).collect();
    let mut read: BTreeSet<String> = added.iter().map(|s| (*s).clone()).collect();
    for kept in old.intersection(new) {
        let moved = (added.iter().copied())
            .chain(dropped.iter())
            .any(|s| s.len() > kept.len() && s.starts_with(kept.as_str()));
        if moved {
            read.insert(kept.clone());
        }
    }
    Relayout { dropped, read }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "svc/desired/";
    /// The algorithm's tests use fixed limits, not the daemon's.
    const L64: Limits = Limits {
        per_shard: 64,
        max_shards: 64,
    };

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn service_units(names: &[String]) -> BTreeSet<String> {
        names
            .iter()
            .map(|n| format!("{ROOT}default/default/{n}/"))
            .collect()
    }

    #[test]
    fn the_daemons_limits_keep_small_shards_and_bound_the_long_polls() {
        let count = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("svc-{i}")).collect();
            let units = service_units(&names);
            let shards = layout(ROOT, &units, LIMITS);
            let biggest = (shards.iter())
                .map(|s| {
                    units
                        .iter()
                        .filter(|u| owner(&shards, u) == Some(s.as_str()))
                        .count()
                })
                .max()
                .unwrap_or(0);
            (shards.len(), biggest)
        };
        assert_eq!(count(16), (1, 16));
        let (shards, biggest) = count(100);
        assert!(
            shards > 1 && biggest <= LIMITS.per_shard,
            "{shards} shards, {biggest}"
        );
        let (shards, _) = count(20_000);
        assert!(shards <= LIMITS.max_shards, "{shards}");
    }

    #[test]
    fn units_are_service_folders_or_stray_keys() {
        assert_eq!(
            unit_of(ROOT, "svc/desired/default/default/web/base.json"),
            Some("svc/desired/default/default/web/")
        );
        assert_eq!(
            unit_of(ROOT, "svc/desired/default/default/web/a/b"),
            Some("svc/desired/default/default/web/")
        );
        assert_eq!(
            unit_of(ROOT, "svc/desired/default/default/web/"),
            Some("svc/desired/default/default/web/")
        );
        assert_eq!(
            unit_of(ROOT, "svc/desired/default/junk"),
            Some("svc/desired/default/junk")
        );
        assert_eq!(unit_of(ROOT, "svc/observed/x"), None);
    }

    #[test]
    fn small_trees_are_one_shard_and_need_no_guard() {
        let names: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        let shards = layout(ROOT, &service_units(&names), L64);
        assert_eq!(shards, set(&[ROOT]));
        assert!(complete(ROOT, &shards));
    }

    #[test]
    fn big_trees_split_into_bounded_shards_that_own_every_unit_once() {
        let names: Vec<String> = (0..5000).map(|i| format!("service-{i:05}")).collect();
        let units = service_units(&names);
        let shards = layout(ROOT, &units, L64);
        assert!(shards.len() <= L64.max_shards, "{}", shards.len());
        assert!(shards.len() >= 30, "{shards:?}");
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for u in &units {
            let o = owner(&shards, u).expect("every unit has an owner");
            *per.entry(o).or_default() += 1;
        }
        let biggest = per.values().max().copied().unwrap_or(0);
        // 5000 over at most 64 shards: no shard holds more than twice the bound.
        assert!(biggest <= 200, "{per:?}");
        // Shards never cut into a service's folder.
        for s in &shards {
            let tail = &s[ROOT.len()..];
            assert!(tail.matches('/').count() <= 3, "{s}");
        }
    }

    #[test]
    fn small_services_stay_within_the_bound_when_the_budget_allows() {
        let names: Vec<String> = (0..500)
            .map(|i| format!("{}x{i}", (b'a' + (i % 26) as u8) as char))
            .collect();
        let units = service_units(&names);
        let shards = layout(ROOT, &units, L64);
        for s in &shards {
            let n = units
                .iter()
                .filter(|u| owner(&shards, u) == Some(s.as_str()))
                .count();
            assert!(n <= L64.per_shard, "{s}: {n}");
        }
    }

    #[test]
    fn layout_is_deterministic_and_keys_outside_present_prefixes_are_not_owned() {
        let names: Vec<String> = (0..200).map(|i| format!("web-{i}")).collect();
        let units = service_units(&names);
        let a = layout(ROOT, &units, L64);
        assert_eq!(a, layout(ROOT, &units, L64));
        assert!(!complete(ROOT, &a));
        // A name no present one shares a prefix with: the guard's business.
        assert_eq!(owner(&a, "svc/desired/default/default/zz/base.json"), None);
        assert_eq!(owner(&a, "svc/desired/other/x"), None);
    }

    #[test]
    fn a_unit_equal_to_its_prefix_or_a_dot_segment_stops_the_split() {
        let mut units = service_units(&(0..100).map(|i| format!("a{i}")).collect::<Vec<_>>());
        units.insert(format!("{ROOT}default/default/a"));
        let shards = layout(ROOT, &units, L64);
        // `.../a` (a stray key) is one unit and must keep its shard whole.
        assert!(
            shards
                .iter()
                .any(|s| s == &format!("{ROOT}default/default/a")),
            "{shards:?}"
        );
        let dots: BTreeSet<String> = (0..100).map(|i| format!("{ROOT}./x{i}/y/")).collect();
        assert_eq!(layout(ROOT, &dots, L64), set(&[ROOT]));
    }

    #[test]
    fn relayout_is_needed_for_uncovered_keys_growth_and_shrinkage_only() {
        let names: Vec<String> = (0..300).map(|i| format!("web-{i}")).collect();
        let units = service_units(&names);
        let current = layout(ROOT, &units, L64);
        assert!(!needs_relayout(ROOT, &current, &units, L64));
        // A few more services under present prefixes: no new layout.
        let mut more = units.clone();
        more.extend(service_units(&[
            "web-10x".to_string(),
            "web-20y".to_string(),
        ]));
        assert!(!needs_relayout(ROOT, &current, &more, L64));
        // A name outside every shard.
        let mut outside = units.clone();
        outside.extend(service_units(&["api".to_string()]));
        assert!(needs_relayout(ROOT, &current, &outside, L64));
        // Grown past twice the bound under one shard.
        let mut grown = units.clone();
        grown.extend(service_units(
            &(0..200).map(|i| format!("web-10{i}z")).collect::<Vec<_>>(),
        ));
        assert!(needs_relayout(ROOT, &current, &grown, L64));
        // Shrunk to a handful: one shard again.
        let few: BTreeSet<String> = units.iter().take(10).cloned().collect();
        assert!(needs_relayout(ROOT, &current, &few, L64));
        assert_eq!(layout(ROOT, &few, L64), set(&[ROOT]));
        // One shard over everything never needs another for a small tree.
        assert!(!needs_relayout(ROOT, &set(&[ROOT]), &few, L64));
    }

    #[test]
    fn the_owner_is_the_longest_prefix() {
        let shards = set(&["svc/desired/", "svc/desired/default/default/w"]);
        assert_eq!(
            owner(&shards, "svc/desired/default/default/web/base.json"),
            Some("svc/desired/default/default/w")
        );
        assert_eq!(
            owner(&shards, "svc/desired/default/default/api/base.json"),
            Some("svc/desired/")
        );
    }

    #[test]
    fn relayout_rereads_added_shards_and_kept_ones_that_gain_or_lose_keys() {
        let old = set(&["r/a", "r/b", "r/c"]);
        let new = set(&["r/a", "r/b", "r/bx", "r/d"]);
        let r = relayout(&old, &new);
        assert_eq!(r.dropped, set(&["r/c"]));
        // r/bx takes keys from r/b; r/d is new; r/a is untouched.
        assert_eq!(r.read, set(&["r/b", "r/bx", "r/d"]));
        // A dropped longer shard gives its keys back to the kept shorter one.
        let r = relayout(&set(&["r/", "r/web"]), &set(&["r/"]));
        assert_eq!(r.dropped, set(&["r/web"]));
        assert_eq!(r.read, set(&["r/"]));
        assert_eq!(relayout(&old, &old), Relayout::default());
    }

    /// A model of the daemon's watch over a model of Consul KV.
    struct Model {
        keys: crate::keys::Layout,
        kv: BTreeMap<String, u64>,
        index: u64,
        parts: BTreeMap<String, crate::watch::Snapshot>,
        merged: crate::watch::Snapshot,
    }

    impl Model {
        fn new() -> Model {
            let mut parts = BTreeMap::new();
            parts.insert(ROOT.to_string(), Default::default());
            Model {
                keys: crate::keys::Layout::new("svc").unwrap(),
                kv: BTreeMap::new(),
                index: 0,
                parts,
                merged: Default::default(),
            }
        }

        fn shards(&self) -> BTreeSet<String> {
            self.parts.keys().cloned().collect()
        }

        /// What `shard` owns under `layout`, as its read would list it.
        fn read(&self, layout: &BTreeSet<String>, shard: &str) -> crate::watch::Snapshot {
            let pairs: Vec<crate::consul::KvPair> = (self.kv.iter())
                .filter(|(k, _)| owner(layout, k) == Some(shard))
                .map(|(k, i)| crate::consul::KvPair {
                    key: k.clone(),
                    value: b"{}".to_vec(),
                    flags: 0,
                    create_index: *i,
                    modify_index: *i,
                    lock_index: 0,
                    session: None,
                })
                .collect();
            crate::watch::Snapshot::from_pairs(&self.keys, &pairs)
        }

        /// A write: a new or changed service (names under 26 leading
        /// letters), a deletion, now and then a stray key.
        fn write(&mut self, rng: &mut fastrand::Rng) {
            self.index += 1;
            let first = (b'a' + rng.u8(0..26)) as char;
            let key = if rng.u8(0..50) == 0 {
                format!("{ROOT}default/stray{}", rng.u16(0..20))
            } else {
                format!("{ROOT}default/default/{first}{}/base.json", rng.u16(0..40))
            };
            if rng.u8(0..5) == 0 {
                self.kv.remove(&key);
            } else {
                self.kv.insert(key, self.index);
            }
        }

        /// One shard reads again what it owns now.
        fn read_shard(&mut self, shard: &str) {
            let new = self.read(&self.shards(), shard);
            let old = self.parts.insert(shard.to_string(), new.clone()).unwrap();
            self.merged.remove_part(&old);
            self.merged.add_part(new);
        }

        /// The guard: a new layout when one is needed, the shards whose
        /// keys move read afresh, as the daemon does.
        fn guard(&mut self) {
            let current = self.shards();
            let units = units(ROOT, self.kv.keys().map(String::as_str));
            if !needs_relayout(ROOT, &current, &units, LIMITS) {
                return;
            }
            let next = layout(ROOT, &units, LIMITS);
            let plan = relayout(&current, &next);
            let fresh: Vec<(String, crate::watch::Snapshot)> = plan
                .read
                .iter()
                .map(|s| (s.clone(), self.read(&next, s)))
                .collect();
            let mut old = crate::watch::Snapshot::default();
            for s in plan.dropped.iter().chain(&plan.read) {
                if let Some(part) = self.parts.remove(s) {
                    old.add_part(part);
                }
            }
            let mut new = crate::watch::Snapshot::default();
            for (s, part) in fresh {
                new.add_part(part.clone());
                self.parts.insert(s, part);
            }
            assert_eq!(self.shards(), next);
            self.merged.remove_part(&old);
            self.merged.add_part(new);
        }

        /// The parts never overlap, and the merged snapshot (the
        /// coordinator's) is their union.
        fn check(&self, seed: u64) {
            let mut union = crate::watch::Snapshot::default();
            let (mut services, mut invalid) = (0, 0);
            for part in self.parts.values() {
                services += part.services.len();
                invalid += part.invalid.len();
                union.add_part(part.clone());
            }
            assert_eq!(services, union.services.len(), "seed {seed}: parts overlap");
            assert_eq!(invalid, union.invalid.len(), "seed {seed}: parts overlap");
            assert_eq!(self.merged, union, "seed {seed}");
        }
    }

    /// Random writes, shard reads in any order, and guard reads that lay
    /// the shards out again: whatever the order, once the guard and every
    /// shard have read again, the merged parts are exactly a whole listing,
    /// so no change is lost across a new layout.
    #[test]
    fn a_model_of_shard_reads_and_new_layouts_never_loses_a_change() {
        for seed in 0..8u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut m = Model::new();
            for _ in 0..1200 {
                match rng.u8(0..10) {
                    0..=5 => m.write(&mut rng),
                    6..=8 => {
                        let set = m.shards();
                        let shard = set.iter().nth(rng.usize(0..set.len())).unwrap();
                        m.read_shard(shard);
                    }
                    _ => m.guard(),
                }
                m.check(seed);
            }
            m.guard();
            let set = m.shards();
            for k in m.kv.keys() {
                assert!(owner(&set, k).is_some(), "seed {seed}: {k} has no shard");
            }
            for shard in &set {
                m.read_shard(shard);
            }
            let whole = m.read(&BTreeSet::from([ROOT.to_string()]), ROOT);
            assert_eq!(m.merged, whole, "seed {seed}");
            assert!(set.len() > 1, "seed {seed}: never split");
        }
    }
}
