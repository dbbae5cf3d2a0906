//! The daemon's coordinator: a synchronous state machine that turns what the
//! watches, the resync ticker and the workers report ([`Event`]) into what to
//! do ([`Command`]): which services to (re)check, invalid keys to report,
//! apply latencies, service counts and readiness. No I/O, no Consul: the run
//! loop carries the commands out.

use std::collections::{BTreeSet, HashMap, HashSet};

use tokio::time::Instant;

use super::worker::Action;
use crate::consul::ConfigEntry;
use crate::keys::ServiceId;
use crate::kind::Kind;
use crate::metrics::STATUSES;
use crate::reconcile::{Outcome, Report};
use crate::records::Status;
use crate::watch::{self, Snapshot};

/// What the coordinator hears.
#[derive(Debug)]
pub enum Event {
    /// A listing of the whole desired prefix (the first one, and after the
    /// watch lost track).
    Listing(Snapshot),
    /// Part of the desired prefix read again (one shard, or the shards a
    /// new layout moved): what the last reads of those keys held, and what
    /// they hold now.
    Part { old: Snapshot, new: Snapshot },
    /// A listing of every config entry of one kind (the drift probe's listings).
    Entries(Kind, Vec<ConfigEntry>),
    /// The services that have an observed.json now (a keys-only listing of
    /// `<prefix>/observed/`).
    Observed(BTreeSet<ServiceId>),
    /// The periodic resync is due.
    Resync,
    /// A worker finished one service, and what it did with it in the queue.
    Done(Report, Action),
}

/// What the run loop must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Add the service to the work queue.
    Enqueue(ServiceId),
    /// Write observed.json for a key outside the layout.
    ReportInvalidKey {
        key: String,
        reason: String,
        generation: u64,
    },
    /// Observe one apply latency (`svc_handler_apply_latency_seconds`).
    ObserveApplyLatency(f64),
    /// Set `svc_handler_services{status}`: every status and its count.
    SetServiceCounts(Vec<(&'static str, i64)>),
    /// The first full sync is done (of `services` services and orphans):
    /// ready. Given once.
    SetReady { services: usize },
    /// A service's folder went whole (records included) while it had a link
    /// in `gateway`: the reconcile that forgets it must know the link is its
    /// own (before the `Enqueue` of the same service).
    RememberLink {
        id: ServiceId,
        gateway: String,
        link: serde_json::Value,
    },
}

/// The coordinator's memory.
#[derive(Debug, Default)]
pub struct Coordinator {
    /// The last listing of the desired prefix.
    previous: Option<Snapshot>,
    /// The services and orphans of the first listing not done yet; `None`
    /// before the first listing.
    initial: Option<HashSet<ServiceId>>,
    /// How many the first listing had.
    initial_count: usize,
    /// New base.json generations, and when they were first seen: where an
    /// apply latency starts.
    seen: HashMap<ServiceId, (u64, Instant)>,
    /// Each service's status, as its last reconcile left it.
    statuses: HashMap<ServiceId, Status>,
    /// How many services have each status (`statuses` counted, kept as it
    /// changes: counting it at every reconcile's end made a resync of N
    /// services cost N x N).
    counts: HashMap<&'static str, i64>,
    /// The ModifyIndex of each object this instance last applied.
    applied: watch::Applied,
    /// Services sent to the queue whose last run has not come back, or that
    /// come back by themselves (retry, held elsewhere): drift need not add
    /// them. A service added again while it runs may come back twice; then
    /// drift may add it once more, which the queue dedupes.
    pending: HashSet<ServiceId>,
    ready: bool,
}

impl Coordinator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `event` in at `now`; returns what to do, in order.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Listing(snap) => self.on_listing(snap, now, &mut out),
            Event::Part { old, new } => self.on_part(old, new, now, &mut out),
            Event::Entries(kind, entries) => self.on_entries(kind, &entries, &mut out),
            Event::Observed(have) => self.on_observed(&have, &mut out),
            Event::Resync => self.on_resync(&mut out),
            Event::Done(report, action) => self.on_done(report, action, now, &mut out),
        }
        self.check_ready(&mut out);
        out
    }

    fn enqueue(&mut self, id: ServiceId, out: &mut Vec<Command>) {
        self.pending.insert(id.clone());
        out.push(Command::Enqueue(id));
    }

    fn on_listing(&mut self, snap: Snapshot, now: Instant, out: &mut Vec<Command>) {
        let mut changes = watch::diff(self.previous.as_ref(), &snap);
        for (key, reason, generation) in std::mem::take(&mut changes.invalid) {
            out.push(Command::ReportInvalidKey {
                key,
                reason,
                generation,
            });
        }
        if self.previous.is_none() {
            // Startup: re-check everything; what is in place costs reads only.
            tracing::info!(
                services = snap.services.len(),
                orphans = changes.gone.len(),
                "first listing: full sync"
            );
            let ids: Vec<ServiceId> = (changes.changed.into_iter().map(|(id, _)| id))
                .chain(changes.gone)
                .collect();
            self.initial = Some(ids.iter().cloned().collect());
            self.initial_count = ids.len();
            for id in ids {
                self.enqueue(id, out);
            }
        } else {
            self.take_changes(changes, &snap, now, out);
            if let Some(previous) = self.previous.take() {
                self.take_lost_links(&previous, &snap, out);
            }
        }
        self.previous = Some(snap);
    }

    /// A shard read again: the same as a listing, for the keys it owns.
    fn on_part(&mut self, old: Snapshot, new: Snapshot, now: Instant, out: &mut Vec<Command>) {
        if self.previous.is_none() {
            return; // the first whole listing is always sent first
        }
        let mut changes = watch::diff(Some(&old), &new);
        for (key, reason, generation) in std::mem::take(&mut changes.invalid) {
            out.push(Command::ReportInvalidKey {
                key,
                reason,
                generation,
            });
        }
        self.take_changes(changes, &new, now, out);
        self.take_lost_links(&old, &new, out);
        if let Some(previous) = self.previous.as_mut() {
            previous.remove_part(&old);
            previous.add_part(new);
        }
    }

    /// Queues changed and gone services (`next` holds what the watch sees
    /// of them now; `self.previous` still what it saw before).
    fn take_changes(
        &mut self,
        changes: watch::Changes,
        next: &Snapshot,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        for (id, generation) in changes.changed {
            self.seen.insert(id.clone(), (generation, now));
            self.enqueue(id, out);
        }
        for id in changes.gone {
            self.seen.remove(&id);
            if let Some(cmd) = self.remembered_link(&id, next) {
                out.push(cmd);
            }
            self.enqueue(id, out);
        }
    }

    /// Services whose link record (tgw.json) went while their base.json
    /// stayed: the record the watch saw last is remembered, and the service
    /// checked again (its reconcile uses that record only if the gateway
    /// still holds the link as recorded).
    fn take_lost_links(&mut self, old: &Snapshot, new: &Snapshot, out: &mut Vec<Command>) {
        let lost: Vec<(ServiceId, &watch::Seen)> = (old.records.iter())
            .filter(|((id, kind), _)| {
                *kind == Kind::TerminatingGateway
                    && new.services.contains_key(id)
                    && !new.records.contains_key(&(id.clone(), *kind))
            })
            .map(|((id, _), seen)| (id.clone(), seen))
            .collect();
        for (id, seen) in lost {
            let Some(link) = seen.link.clone() else {
                continue;
            };
            out.push(Command::RememberLink {
                id: id.clone(),
                gateway: seen.name.clone(),
                link,
            });
            if !self.pending.contains(&id) {
                self.enqueue(id, out);
            }
        }
    }

    /// For a service gone from `next` whose link record the last listing
    /// had, and `next` no longer has (its folder went whole): that link.
    fn remembered_link(&self, id: &ServiceId, next: &Snapshot) -> Option<Command> {
        let key = (id.clone(), Kind::TerminatingGateway);
        if next.records.contains_key(&key) {
            return None;
        }
        let seen = self.previous.as_ref()?.records.get(&key)?;
        Some(Command::RememberLink {
            id: id.clone(),
            gateway: seen.name.clone(),
            link: seen.link.clone()?,
        })
    }

    fn on_entries(&mut self, kind: Kind, entries: &[ConfigEntry], out: &mut Vec<Command>) {
        let Some(snap) = &self.previous else { return };
        let drifted = watch::drifted(snap, kind, entries, &self.applied);
        for id in drifted {
            if self.pending.contains(&id) {
                continue;
            }
            tracing::info!(service = %id, "an owned entry changed behind svc-handler's back; re-checking");
            self.enqueue(id, out);
        }
    }

    /// observed.json deleted (by hand, a tool, a restore) for a service this
    /// instance has an outcome for: checked again, which writes it back.
    fn on_observed(&mut self, have: &BTreeSet<ServiceId>, out: &mut Vec<Command>) {
        let Some(snap) = &self.previous else { return };
        let missing: Vec<ServiceId> = (snap.services.keys())
            .filter(|id| !have.contains(*id) && self.statuses.contains_key(*id))
            .filter(|id| !self.pending.contains(*id))
            .cloned()
            .collect();
        for id in missing {
            tracing::info!(service = %id, "observed.json is gone; checking the service again to write it");
            self.enqueue(id, out);
        }
    }

    fn on_resync(&mut self, out: &mut Vec<Command>) {
        let Some(snap) = &self.previous else { return };
        tracing::info!(services = snap.services.len(), "periodic resync");
        let ids: Vec<ServiceId> = (snap.services.keys().chain(snap.orphans.iter()))
            .cloned()
            .collect();
        for id in ids {
            self.enqueue(id, out);
        }
    }

    fn on_done(&mut self, report: Report, action: Action, now: Instant, out: &mut Vec<Command>) {
        let id = report.id.clone();
        self.remember_objects(&report);
        match &report.outcome {
            Outcome::Applied { .. } | Outcome::UpToDate => {
                self.set_status(&id, Some(Status::Applied));
                if let (Some(&(seen, at)), Some(done)) = (self.seen.get(&id), report.generation) {
                    if done >= seen {
                        let latency = now.saturating_duration_since(at);
                        out.push(Command::ObserveApplyLatency(latency.as_secs_f64()));
                        self.seen.remove(&id);
                    }
                }
            }
            Outcome::Failed { status, .. } | Outcome::Settled { status } => {
                self.set_status(&id, Some(*status));
            }
            Outcome::LockLost { .. } => {
                self.set_status(&id, Some(Status::Error));
            }
            Outcome::Deleted { .. } | Outcome::Absent => {
                self.set_status(&id, None);
            }
            Outcome::HeldElsewhere { .. } => {}
        }
        out.push(Command::SetServiceCounts(self.service_counts()));
        if let Some(initial) = self.initial.as_mut() {
            initial.remove(&id);
        }
        if action == Action::Done {
            self.pending.remove(&id);
        }
    }

    /// What this instance applied, for the drift listings; nothing of a
    /// deleted service.
    fn remember_objects(&mut self, report: &Report) {
        let id = &report.id;
        if let Some(objects) = &report.objects {
            for kind in Kind::ALL {
                match objects.get(kind) {
                    Some(r) => self.applied.insert((id.clone(), kind), r.modify_index),
                    None => self.applied.remove(&(id.clone(), kind)),
                };
            }
        }
        if matches!(report.outcome, Outcome::Deleted { .. } | Outcome::Absent) {
            self.applied.retain(|(s, _), _| s != id);
        }
    }

    /// Sets (or, with `None`, forgets) `id`'s status, and its count.
    fn set_status(&mut self, id: &ServiceId, status: Option<Status>) {
        let old = match status {
            Some(s) => self.statuses.insert(id.clone(), s),
            None => self.statuses.remove(id),
        };
        if let Some(o) = old {
            *self.counts.entry(o.as_str()).or_default() -= 1;
        }
        if let Some(s) = status {
            *self.counts.entry(s.as_str()).or_default() += 1;
        }
    }

    fn service_counts(&self) -> Vec<(&'static str, i64)> {
        (STATUSES.iter())
            .map(|st| (*st, self.counts.get(st).copied().unwrap_or(0)))
            .collect()
    }

    /// The one place readiness is decided: once every service and orphan of
    /// the first listing is done (at once for an empty prefix).
    fn check_ready(&mut self, out: &mut Vec<Command>) {
        if !self.ready && self.initial.as_ref().is_some_and(HashSet::is_empty) {
            self.ready = true;
            out.push(Command::SetReady {
                services: self.initial_count,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::records::{ObjectRef, Objects};

    fn id(name: &str) -> ServiceId {
        ServiceId::new("default", "default", name).unwrap()
    }

    /// A listing of services (name, generation) and orphans.
    fn listing(services: &[(&str, u64)], orphans: &[&str]) -> Event {
        Event::Listing(Snapshot {
            services: services.iter().map(|(n, g)| (id(n), *g)).collect(),
            orphans: orphans.iter().map(|n| id(n)).collect(),
            ..Snapshot::default()
        })
    }

    fn report(name: &str, outcome: Outcome, generation: Option<u64>) -> Report {
        Report {
            id: id(name),
            outcome,
            generation,
            duration: Duration::from_millis(3),
            objects: None,
        }
    }

    fn applied(name: &str, generation: u64) -> Event {
        let outcome = Outcome::Applied {
            changed: true,
            drifted: vec![],
        };
        Event::Done(report(name, outcome, Some(generation)), Action::Done)
    }

    fn failed(name: &str, status: Status, action: Action) -> Event {
        let outcome = Outcome::Failed {
            status,
            step: crate::kind::Step::Defaults,
            message: "m".into(),
            retry: status == Status::Error,
        };
        Event::Done(report(name, outcome, Some(1)), action)
    }

    fn enqueued(commands: &[Command]) -> BTreeSet<String> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Enqueue(id) => Some(id.name.clone()),
                _ => None,
            })
            .collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ready(commands: &[Command]) -> bool {
        commands
            .iter()
            .any(|c| matches!(c, Command::SetReady { .. }))
    }

    fn counts(commands: &[Command]) -> BTreeMap<&'static str, i64> {
        commands
            .iter()
            .rev()
            .find_map(|c| match c {
                Command::SetServiceCounts(v) => Some(v.iter().copied().collect()),
                _ => None,
            })
            .expect("service counts")
    }

    fn latencies(commands: &[Command]) -> Vec<f64> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::ObserveApplyLatency(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// A coordinator past its first listing of `services`, every one done.
    fn synced(services: &[(&str, u64)]) -> Coordinator {
        let mut c = Coordinator::new();
        c.on(listing(services, &[]), Instant::now());
        for (name, g) in services {
            c.on(applied(name, *g), Instant::now());
        }
        assert!(c.ready);
        c
    }

    #[test]
    fn first_listing_enqueues_every_service_and_orphan_and_is_ready_when_all_are_done() {
        let mut c = Coordinator::new();
        let out = c.on(listing(&[("web", 5), ("api", 6)], &["old"]), Instant::now());
        assert_eq!(enqueued(&out), names(&["web", "api", "old"]));
        assert!(!ready(&out) && !c.ready);
        assert!(!ready(&c.on(applied("web", 5), Instant::now())));
        let held = Outcome::HeldElsewhere { holder: None };
        let out = c.on(
            Event::Done(report("old", Outcome::Absent, None), Action::Done),
            Instant::now(),
        );
        assert!(!ready(&out));
        let out = c.on(
            Event::Done(
                report("api", held, None),
                Action::RequeueAfter(Duration::from_secs(1)),
            ),
            Instant::now(),
        );
        assert_eq!(
            out.iter()
                .filter(|c| **c == Command::SetReady { services: 3 })
                .count(),
            1,
            "ready once all three came back: {out:?}"
        );
        assert!(c.ready);
        assert!(
            !ready(&c.on(applied("api", 6), Instant::now())),
            "only once"
        );
    }

    #[test]
    fn an_empty_prefix_is_ready_at_once() {
        let mut c = Coordinator::new();
        assert!(
            c.on(Event::Resync, Instant::now()).is_empty(),
            "nothing listed yet"
        );
        let out = c.on(listing(&[], &[]), Instant::now());
        assert_eq!(out, vec![Command::SetReady { services: 0 }]);
        assert!(c.on(listing(&[], &[]), Instant::now()).is_empty());
    }

    #[test]
    fn invalid_keys_are_reported_before_anything_is_enqueued() {
        let mut c = Coordinator::new();
        let mut snap = Snapshot::default();
        snap.services.insert(id("web"), 5);
        snap.invalid
            .insert("p/desired/x/base.json".into(), ("too short".into(), 9));
        let out = c.on(Event::Listing(snap.clone()), Instant::now());
        assert_eq!(
            out[0],
            Command::ReportInvalidKey {
                key: "p/desired/x/base.json".into(),
                reason: "too short".into(),
                generation: 9
            }
        );
        assert_eq!(out[1], Command::Enqueue(id("web")));
        assert!(
            c.on(Event::Listing(snap), Instant::now()).is_empty(),
            "an unchanged invalid key is reported once"
        );
    }

    #[test]
    fn a_later_listing_enqueues_only_changed_and_gone_services() {
        let mut c = synced(&[("web", 5), ("api", 6), ("db", 7)]);
        let out = c.on(
            listing(&[("web", 5), ("api", 8), ("new", 9)], &[]),
            Instant::now(),
        );
        assert_eq!(enqueued(&out), names(&["api", "new", "db"]));
        assert!(!ready(&out), "readiness is not given twice");
        let same = c.on(
            listing(&[("web", 5), ("api", 8), ("new", 9)], &[]),
            Instant::now(),
        );
        assert!(same.is_empty(), "{same:?}");
    }

    #[test]
    fn drift_enqueues_only_changed_owned_entries_not_already_queued() {
        let mut c = synced(&[("web", 5), ("api", 6)]);
        let with_defaults = |name: &str, index: u64| {
            let mut r = report(
                name,
                Outcome::Applied {
                    changed: true,
                    drifted: vec![],
                },
                Some(5),
            );
            r.objects = Some(Objects {
                defaults: Some(ObjectRef {
                    resource_id: format!("service-defaults/default/default/{name}"),
                    modify_index: index,
                }),
                ..Objects::default()
            });
            Event::Done(r, Action::Done)
        };
        c.on(with_defaults("web", 40), Instant::now());
        c.on(with_defaults("api", 41), Instant::now());
        let entry = |name: &str, index: u64| {
            ConfigEntry(json!({"Kind": "service-defaults", "Name": name, "ModifyIndex": index}))
        };
        let drift = |entries| Event::Entries(Kind::ServiceDefaults, entries);
        let out = c.on(
            drift(vec![entry("web", 40), entry("api", 41)]),
            Instant::now(),
        );
        assert!(out.is_empty(), "in sync: {out:?}");
        let out = c.on(
            drift(vec![entry("web", 44), entry("api", 41)]),
            Instant::now(),
        );
        assert_eq!(out, vec![Command::Enqueue(id("web"))]);
        let out = c.on(drift(vec![entry("web", 45)]), Instant::now());
        assert_eq!(
            out,
            vec![Command::Enqueue(id("api"))],
            "web is queued already"
        );
        // A retry comes back by itself: drift does not add it.
        c.on(
            failed("web", Status::Error, Action::RetryWithBackoff),
            Instant::now(),
        );
        assert!(c
            .on(drift(vec![entry("web", 46)]), Instant::now())
            .is_empty());
        c.on(applied("web", 5), Instant::now());
        let out = c.on(drift(vec![entry("web", 47)]), Instant::now());
        assert_eq!(
            out,
            vec![Command::Enqueue(id("web"))],
            "done: drift counts again"
        );
    }

    #[test]
    fn resync_enqueues_every_service_and_orphan() {
        let mut c = Coordinator::new();
        c.on(listing(&[("web", 5), ("api", 6)], &["old"]), Instant::now());
        let out = c.on(Event::Resync, Instant::now());
        assert_eq!(enqueued(&out), names(&["web", "api", "old"]));
    }

    #[tokio::test(start_paused = true)]
    async fn apply_latency_runs_from_a_generation_first_seen_to_its_done() {
        let mut c = synced(&[("web", 5)]);
        c.on(listing(&[("web", 8)], &[]), Instant::now());
        tokio::time::advance(Duration::from_millis(700)).await;
        // Seen again (a record write woke the watch): the clock keeps running.
        c.on(listing(&[("web", 8)], &[]), Instant::now());
        tokio::time::advance(Duration::from_millis(300)).await;
        let stale = c.on(applied("web", 5), Instant::now());
        assert!(
            latencies(&stale).is_empty(),
            "an older generation is not it"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        let out = c.on(applied("web", 8), Instant::now());
        assert_eq!(latencies(&out), vec![1.5]);
        let again = c.on(applied("web", 8), Instant::now());
        assert!(latencies(&again).is_empty(), "measured once");
        // A generation first seen at startup is not measured.
        let mut fresh = Coordinator::new();
        fresh.on(listing(&[("api", 3)], &[]), Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(latencies(&fresh.on(applied("api", 3), Instant::now())).is_empty());
    }

    #[test]
    fn statuses_are_counted_per_status() {
        let mut c = synced(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        c.on(
            failed("b", Status::Error, Action::RetryWithBackoff),
            Instant::now(),
        );
        c.on(failed("c", Status::Invalid, Action::Done), Instant::now());
        c.on(failed("d", Status::Conflict, Action::Done), Instant::now());
        let lost = Outcome::LockLost {
            step: crate::kind::Step::Router,
            message: "m".into(),
        };
        let out = c.on(
            Event::Done(report("e", lost, None), Action::RetryWithBackoff),
            Instant::now(),
        );
        let want: BTreeMap<&str, i64> = [
            ("applied", 1),
            ("error", 2),
            ("invalid", 1),
            ("conflict", 1),
            ("paused", 0),
        ]
        .into();
        assert_eq!(counts(&out), want);
        // A status that changes moves from one count to the other; a
        // deleted service leaves its count.
        c.on(
            Event::Done(report("b", Outcome::UpToDate, None), Action::Done),
            Instant::now(),
        );
        let out = c.on(
            Event::Done(
                report("c", Outcome::Deleted { pruned: true }, None),
                Action::Done,
            ),
            Instant::now(),
        );
        let want: BTreeMap<&str, i64> = [
            ("applied", 2),
            ("error", 1),
            ("invalid", 0),
            ("conflict", 1),
            ("paused", 0),
        ]
        .into();
        assert_eq!(counts(&out), want);
    }

    #[test]
    fn held_elsewhere_does_not_change_a_status() {
        let mut c = synced(&[("web", 1)]);
        c.on(
            failed("web", Status::Conflict, Action::Done),
            Instant::now(),
        );
        let held = Outcome::HeldElsewhere {
            holder: Some("b".into()),
        };
        let out = c.on(
            Event::Done(
                report("web", held, None),
                Action::RequeueAfter(Duration::ZERO),
            ),
            Instant::now(),
        );
        assert_eq!(counts(&out)["conflict"], 1);
        assert_eq!(counts(&out)["applied"], 0);
    }

    #[test]
    fn deleted_services_are_forgotten() {
        let mut c = synced(&[("web", 1), ("api", 1)]);
        let mut done = report("web", Outcome::UpToDate, Some(1));
        done.objects = Some(Objects {
            defaults: Some(ObjectRef {
                resource_id: "service-defaults/default/default/web".into(),
                modify_index: 40,
            }),
            ..Objects::default()
        });
        c.on(Event::Done(done, Action::Done), Instant::now());
        c.on(listing(&[("api", 1)], &[]), Instant::now());
        let out = c.on(
            Event::Done(
                report("web", Outcome::Deleted { pruned: true }, None),
                Action::Done,
            ),
            Instant::now(),
        );
        assert_eq!(counts(&out)["applied"], 1, "only api is left");
        assert!(c.applied.is_empty(), "nothing of web is remembered");
        assert!(!c.statuses.contains_key(&id("web")));
    }

    #[test]
    fn a_folder_deleted_whole_leaves_its_link_record_to_the_reconcile() {
        let mut c = Coordinator::new();
        let now = Instant::now();
        let link = json!({"Name": "web", "SNI": "a"});
        let mut first = Snapshot::default();
        for (name, g) in [("web", 5), ("api", 6)] {
            first.services.insert(id(name), g);
        }
        first.records.insert(
            (id("web"), Kind::TerminatingGateway),
            watch::Seen {
                name: "egress".into(),
                modify_index: 9,
                link: Some(link.clone()),
            },
        );
        c.on(Event::Listing(first), now);
        // `consul kv delete -recurse .../web/`: base.json and records gone.
        let out = c.on(listing(&[("api", 6)], &[]), now);
        let remember = out
            .iter()
            .position(|cmd| matches!(cmd, Command::RememberLink { .. }))
            .expect("the link is remembered");
        let enqueue = out
            .iter()
            .position(|cmd| *cmd == Command::Enqueue(id("web")))
            .expect("web is enqueued");
        assert!(remember < enqueue, "{out:?}");
        assert_eq!(
            out[remember],
            Command::RememberLink {
                id: id("web"),
                gateway: "egress".into(),
                link
            }
        );
        // A service that goes with no link record: nothing to remember.
        let out = c.on(listing(&[], &[]), now);
        assert!(
            !out.iter()
                .any(|cmd| matches!(cmd, Command::RememberLink { .. })),
            "{out:?}"
        );
    }
}
