//! What a reconcile would change for one service, decided purely.
//!
//! [`plan`] is the only place that decides: the reconcile executes its
//! changes in order, the in-sync check asks whether it writes anything, and
//! `diff` renders it. It reads nothing and writes nothing, so every rule
//! (ownership, adopt, canonical equality, gateway moves) is a unit test on a
//! table of states. The per-step functions ([`entry_change`],
//! [`removal_change`], [`link_change`], [`unlink_change`]) are what the
//! executor calls again with a fresh read after a lost check-and-set race.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::entries::{self, Ownership};
use crate::keys::{self, ServiceId};
use crate::kind::Kind;
use crate::preflight::{self, Others, Violation};
use crate::records::{self, ObjectRef, Objects, Observed, Record, Status};
use crate::spec::{Adopt, Spec, TgwLinkSpec};

/// Everything a reconcile reads about one service before deciding.
#[derive(Clone, Debug, Default)]
pub struct Current {
    /// base.json's ModifyIndex, when it exists.
    pub generation: Option<u64>,
    /// The records found beside base.json.
    pub records: BTreeMap<Kind, Record>,
    pub observed: Option<Observed>,
    /// The service's own entries (defaults, resolver, splitter, router) in Consul.
    pub entries: BTreeMap<Kind, Value>,
    /// The terminating gateways involved, by name; an absent one is
    /// missing. Shared: concurrent reconciles that read a gateway at once
    /// hold one copy of it.
    pub gateways: BTreeMap<String, Arc<Value>>,
    /// What the preflight rules need of other entries, when read (`None`:
    /// only the rules that need nothing outside base.json are checked).
    pub others: Option<Others>,
    /// The service's partition or namespace does not exist in this edition
    /// of Consul (the open-source edition answers "... a Consul Enterprise
    /// feature"): Consul's words. Its entries cannot exist, so they are not
    /// read; base.json is `invalid` at step `preflight`, and its deletion
    /// only forgets the records.
    pub unsupported: Option<String>,
    /// pause.json, when the service is paused (`svc-handler pause`).
    pub paused: Option<records::Pause>,
}

impl Current {
    /// The gateways a reconcile reads: the one `spec` asks for, the one
    /// recorded, and the one a move was leaving.
    pub fn gateways_involved(spec: Option<&Spec>, records: &BTreeMap<Kind, Record>) -> Vec<String> {
        let rec = records.get(&Kind::TerminatingGateway);
        let mut names: Vec<String> = spec
            .and_then(|s| s.terminating_gateway.as_ref())
            .map(|l| l.gateway.clone())
            .into_iter()
            .chain(rec.map(|r| r.name.clone()))
            .chain(rec.and_then(|r| r.previous_gateway.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The service a plan is for.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub id: &'a ServiceId,
    /// Its base.json key: the ownership mark names it.
    pub base_key: &'a str,
}

/// What the service should become.
#[derive(Clone, Copy, Debug)]
pub enum Desired<'a> {
    /// base.json says this, at this generation (its ModifyIndex).
    Spec { spec: &'a Spec, generation: u64 },
    /// base.json is gone; `prune`: remove what svc-handler owns.
    Gone { prune: bool },
}

/// What a change does to Consul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing to write.
    None,
    Create,
    Update,
    Delete,
    /// Add or replace this service's link in a gateway.
    Link,
    /// Take this service's link out of a gateway.
    Unlink,
}

impl Action {
    /// The word `-o json` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Link => "link",
            Action::Unlink => "unlink",
        }
    }

    /// True when the change writes a config entry.
    pub fn writes(self) -> bool {
        self != Action::None
    }
}

/// Why a change may not be made: the entry belongs to someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The entry exists without svc-handler's mark and `adopt` is not set.
    Unmarked { what: String },
    /// Another tool's mark, or svc-handler's mark for another base.json key.
    Managed { what: String, by: String },
    /// The gateway already links the service and no record says we wrote it.
    UnrecordedLink { gateway: String, service: String },
    /// Taking over an unmarked entry with `adopt: true` would drop fields
    /// base.json does not set (paths, e.g. `Subsets.v2`).
    WouldDrop { what: String, fields: Vec<String> },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::Unmarked { what } => write!(
                f,
                "{what} exists without svc-handler's ownership mark; it is left unchanged (set \"adopt\": true in base.json to take it over)"
            ),
            Blocked::Managed { what, by } => {
                write!(f, "{what} is managed by {by}; it is left unchanged")
            }
            Blocked::WouldDrop { what, fields } => write!(
                f,
                "{what} exists without svc-handler's ownership mark and has fields base.json does not set: {}; \
                 adopting it would drop them, so it is left unchanged (put them in base.json, or set \"adopt\": \"replace\" to drop them)",
                fields.join(", ")
            ),
            Blocked::UnrecordedLink { gateway, service } => write!(
                f,
                "terminating-gateway/{gateway} already links {service} and svc-handler has no record of writing it; it is left unchanged (set \"adopt\": true to take it over)"
            ),
        }
    }
}

/// What happens to a record file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOp {
    Keep,
    Write,
    Delete,
}

/// One planned change of one config entry (or of a link in a gateway).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: Kind,
    /// The entry's name (the gateway's, for a link).
    pub name: String,
    pub action: Action,
    /// Set when the change may not be made; the reconcile stops there.
    pub blocked: Option<Blocked>,
    /// The entry in Consul (`None`: absent).
    pub current: Option<Value>,
    /// The entry to write (for a service's own entry: as it should be,
    /// written or not); `None` for a deletion, or where nothing is written
    /// and the entry stays as it is ([`Change::after`]).
    pub desired: Option<Value>,
    /// The write undoes a change made behind svc-handler's back.
    pub drift: bool,
    /// The service's record of this entry (for links see [`Plan::gateway_record`]).
    pub record: RecordOp,
    /// For a first link into a gateway: the record written before the link.
    pub intent: Option<Record>,
    /// Why an existing entry is left in place (not owned, so not deleted).
    pub note: Option<String>,
    /// The entry is as svc-handler left it after its own write for this
    /// generation, though it differs from the desired entry: not written
    /// again (the write budget) until base.json or the entry changes.
    pub suppressed: bool,
    /// Consul stored it differently from what was written: the reconcile
    /// ends with this message, without writing.
    pub stuck: Option<String>,
}

impl Change {
    fn new(kind: Kind, name: &str, current: Option<&Value>) -> Change {
        Change {
            kind,
            name: name.to_string(),
            action: Action::None,
            blocked: None,
            current: current.cloned(),
            desired: None,
            drift: false,
            record: RecordOp::Keep,
            intent: None,
            note: None,
            suppressed: false,
            stuck: None,
        }
    }

    /// Applies the write budget: an entry untouched since svc-handler's own
    /// write for this generation is not written again.
    fn budget(&mut self, mine: Option<&Record>, untouched: bool) {
        let Some(r) = mine.filter(|_| untouched && self.action.writes()) else {
            return;
        };
        self.action = Action::None;
        self.desired = self.current.clone();
        self.suppressed = true;
        self.stuck = r.differs.as_ref().map(|m| {
            format!(
                "{}: Consul stored it differently from what was written (read-back differs at {m}); it is not written again until base.json or the entry changes",
                self.what()
            )
        });
    }

    /// The entry as it stands after the change: `desired` when it writes or
    /// names one, else `current`.
    pub fn after(&self) -> Option<&Value> {
        match (&self.desired, self.action) {
            (Some(d), _) => Some(d),
            (None, Action::Delete) => None,
            (None, _) => self.current.as_ref(),
        }
    }

    /// `kind/name`, as messages name an entry.
    pub fn what(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// What a reconcile would do for one service.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// base.json's generation; `None` when it is gone.
    pub generation: Option<u64>,
    /// In the order a reconcile makes them.
    pub changes: Vec<Change>,
    /// The service's `tgw.json`.
    pub gateway_record: RecordOp,
    /// base.json is gone: every record and observed.json are removed.
    pub forget: bool,
    /// Consul's rules base.json breaks (preflight): the reconcile writes
    /// nothing and ends `invalid` at step `preflight`.
    pub violations: Vec<Violation>,
    /// Some violation depends on other services' entries (a destination's
    /// protocol, another resolver's subsets), which may still change (a
    /// router applied before the service it routes to): checked again
    /// with backoff, not final.
    pub violations_depend_on_others: bool,
}

impl Plan {
    /// The first change that may not be made, if any.
    pub fn blocked(&self) -> Option<&Change> {
        self.changes.iter().find(|c| c.blocked.is_some())
    }

    /// The changes a reconcile writes to Consul's config entries: those with
    /// a write, up to the first blocked or stuck one (where it stops); none
    /// when preflight refuses or adopting would drop fields.
    pub fn config_writes(&self) -> impl Iterator<Item = &Change> {
        let refused = !self.violations.is_empty() || self.would_drop().is_some();
        self.changes
            .iter()
            .take_while(move |c| c.blocked.is_none() && c.stuck.is_none() && !refused)
            .filter(|c| c.action.writes())
    }

    /// True when a reconcile would write a config entry.
    pub fn writes_config(&self) -> bool {
        self.config_writes().next().is_some()
    }

    /// True when a reconcile would write nothing at all: no entry, no
    /// record, nothing blocked, nothing to forget.
    pub fn is_noop(&self) -> bool {
        !self.writes_config()
            && self.violations.is_empty()
            && self.blocked().is_none()
            && self.changes.iter().all(|c| c.stuck.is_none())
            && !self.forget
            && self.gateway_record == RecordOp::Keep
            && self.changes.iter().all(|c| c.record == RecordOp::Keep)
    }

    /// The objects of this service as they stand before the plan is made:
    /// its own entries that exist and are not someone else's, and its link
    /// in the gateway base.json names. The executor replaces each with the
    /// read-back of what it writes.
    pub fn objects(&self, t: &Target<'_>) -> Objects {
        let mut objects = Objects::default();
        for c in &self.changes {
            let kept = c.blocked.is_none()
                && c.note.is_none()
                && !matches!(c.action, Action::Delete | Action::Unlink);
            let Some(entry) = c.current.as_ref().filter(|_| kept) else {
                continue;
            };
            let is_link = c.kind == Kind::TerminatingGateway;
            if is_link && (entries::find_link(entry, t.id).is_none() || c.intent.is_some()) {
                continue;
            }
            *objects.slot(c.kind) = Some(object_ref(t, c.kind, &c.name, entry));
        }
        objects
    }

    /// True when the service is in place and observed.json says so: a
    /// reconcile would write nothing, not even observed.json.
    pub fn in_sync(&self, t: &Target<'_>, observed: Option<&Observed>) -> bool {
        if !self.is_noop() {
            return false;
        }
        match self.generation {
            None => observed.is_none(),
            Some(g) => observed.is_some_and(|o| {
                o.status == Status::Applied
                    && o.generation == g
                    && o.objects.same_as(&self.objects(t))
            }),
        }
    }
}

impl Plan {
    /// Where a reconcile would stop without writing a config entry first:
    /// the status and message of a blocked change (`conflict`) or of an
    /// entry Consul stored differently (`error`, not retried).
    pub fn stops_at(&self) -> Option<(Status, String)> {
        if let Some(m) = self.preflight_message() {
            return Some((Status::Invalid, m));
        }
        if let Some((_, b)) = self.would_drop() {
            return Some((Status::Conflict, b.to_string()));
        }
        for c in &self.changes {
            if let Some(b) = &c.blocked {
                return Some((Status::Conflict, b.to_string()));
            }
            if let Some(m) = &c.stuck {
                return Some((Status::Error, m.clone()));
            }
            if c.action.writes() {
                return None;
            }
        }
        None
    }

    /// The first change that would adopt an entry by dropping fields
    /// someone else wrote: the reconcile stops there before any write.
    pub fn would_drop(&self) -> Option<(&Change, &Blocked)> {
        self.changes.iter().find_map(|c| match &c.blocked {
            Some(b @ Blocked::WouldDrop { .. }) => Some((c, b)),
            _ => None,
        })
    }

    /// The message of a preflight refusal: every violation, in order.
    pub fn preflight_message(&self) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let all: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        Some(format!(
            "Consul would refuse this base.json: {}",
            all.join("; ")
        ))
    }

    /// When observed.json already tells the final outcome this plan would
    /// reach again (nothing it depends on changed), that status: a reconcile
    /// would only repeat it. A refusal by Consul (`invalid`) is final for
    /// its generation; a `conflict` or a stored-differently `error` while
    /// the plan still stops at the same change with the same words.
    pub fn settled(&self, observed: Option<&Observed>) -> Option<Status> {
        let o = observed?;
        if Some(o.generation) != self.generation || o.retry || o.status == Status::Applied {
            return None;
        }
        if o.status == Status::Invalid {
            return (!self.is_noop()).then_some(Status::Invalid);
        }
        let (status, message) = self.stops_at()?;
        (o.status == status && o.message.as_deref() == Some(message.as_str())).then_some(status)
    }
}

/// The reference observed.json keeps for `entry` (a gateway, for a link).
pub fn object_ref(t: &Target<'_>, kind: Kind, name: &str, entry: &Value) -> ObjectRef {
    let id = t.id;
    ObjectRef {
        resource_id: match kind {
            Kind::TerminatingGateway => {
                keys::link_resource_id(&id.partition, &id.namespace, name, &id.name)
            }
            _ => keys::resource_id(kind.as_str(), id),
        },
        modify_index: records::index(entry, "ModifyIndex"),
    }
}

/// The one ownership rule: may svc-handler write (or delete) the existing
/// `entry` for this service? Its own mark, or no mark with a record saying
/// svc-handler wrote it (someone rewrote it without the mark: drift), or no
/// mark and `adopt`. Never another tool's mark or another key's.
pub fn may_touch(
    what: &str,
    entry: &Value,
    base_key: &str,
    recorded: bool,
    adopt: bool,
) -> Result<(), Blocked> {
    match entries::ownership(Some(entry), base_key) {
        Ownership::Absent | Ownership::Ours => Ok(()),
        Ownership::Unmarked if recorded || adopt => Ok(()),
        Ownership::Unmarked => Err(Blocked::Unmarked { what: what.into() }),
        Ownership::Other { key, managed_by } => {
            let by = match (managed_by.is_empty(), key.is_empty()) {
                (false, false) => format!("{managed_by} for {key}"),
                (false, true) => managed_by,
                (true, _) => format!("svc-handler for {key}"),
            };
            Err(Blocked::Managed {
                what: what.into(),
                by,
            })
        }
    }
}

/// The upsert of one of the service's own entries to `body`.
pub fn entry_change(
    t: &Target<'_>,
    kind: Kind,
    body: Option<&Map<String, Value>>,
    adopt: Adopt,
    current: Option<&Value>,
    record: Option<&Record>,
    generation: u64,
) -> Change {
    let mut c = Change::new(kind, &t.id.name, current);
    let desired = entries::build_entry(kind, t.id, body, t.base_key);
    let recorded = record.is_some();
    c.blocked = current.and_then(|e| {
        may_touch(&c.what(), e, t.base_key, recorded, adopt.is_on())
            .and_then(|()| {
                keeps_what_it_adopts(&c.what(), e, &desired, t.base_key, recorded, adopt)
            })
            .err()
    });
    c.action = match current {
        None => Action::Create,
        Some(e) if entries::entries_equal(&desired, e) => Action::None,
        Some(_) => Action::Update,
    };
    c.desired = Some(desired);
    let mine = record.filter(|r| r.generation == generation);
    let untouched = match (mine, current) {
        (Some(r), Some(e)) => unchanged_since(r, e, e),
        _ => false,
    };
    c.budget(mine, untouched);
    c.drift = c.action.writes() && record.is_some_and(|r| r.generation == generation);
    c.record = match (c.action.writes(), current) {
        (false, Some(e)) => {
            let mut fresh = Record::entry(kind, t.id, t.base_key, generation, e, String::new());
            fresh.differs = mine.filter(|_| untouched).and_then(|r| r.differs.clone());
            if record.is_some_and(|r| r.same_as(&fresh)) {
                RecordOp::Keep
            } else {
                RecordOp::Write
            }
        }
        _ => RecordOp::Write,
    };
    c
}

/// Taking over an unmarked entry (`adopt: true`, no record) never drops
/// what someone else wrote there: every field of `entry` that `desired`
/// lacks (at any depth of objects; Consul's empty defaults do not count)
/// blocks the change, unless `adopt` is `"replace"`.
fn keeps_what_it_adopts(
    what: &str,
    entry: &Value,
    desired: &Value,
    base_key: &str,
    recorded: bool,
    adopt: Adopt,
) -> Result<(), Blocked> {
    let taking_over = !recorded
        && adopt == Adopt::Keep
        && entries::ownership(Some(entry), base_key) == Ownership::Unmarked;
    if !taking_over {
        return Ok(());
    }
    let mut fields = Vec::new();
    dropped(
        &entries::canonical(entry),
        &entries::canonical(desired),
        "",
        &mut fields,
    );
    if fields.is_empty() {
        Ok(())
    } else {
        Err(Blocked::WouldDrop {
            what: what.into(),
            fields,
        })
    }
}

/// The paths of `have` that `want` lacks: keys of objects, recursively;
/// anything else counts as a whole (a changed value is an update, not a drop).
fn dropped(have: &Value, want: &Value, at: &str, out: &mut Vec<String>) {
    let (Some(have), Some(want)) = (have.as_object(), want.as_object()) else {
        return;
    };
    for (k, v) in have {
        if at.is_empty() && matches!(k.as_str(), "Kind" | "Name") {
            continue;
        }
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match want.get(k) {
            None => out.push(path),
            Some(w) => dropped(v, w, &path, out),
        }
    }
}

/// True when `entry` (whose comparable part is `object`: the whole entry,
/// or a link) is as svc-handler read it back after its own write recorded
/// in `r`: same ModifyIndex, or the same canonical form.
fn unchanged_since(r: &Record, entry: &Value, object: &Value) -> bool {
    records::index(entry, "ModifyIndex") == r.modify_index
        || entries::canonical(object) == entries::canonical(&r.object)
}

/// The removal of one of the service's own entries (a router or splitter gone from
/// base.json, or base.json gone): deleted only when svc-handler owns it.
pub fn removal_change(
    t: &Target<'_>,
    kind: Kind,
    current: Option<&Value>,
    record: Option<&Record>,
) -> Change {
    let mut c = Change::new(kind, &t.id.name, current);
    c.record = if record.is_some() {
        RecordOp::Delete
    } else {
        RecordOp::Keep
    };
    let Some(entry) = current else {
        return c;
    };
    match may_touch(&c.what(), entry, t.base_key, record.is_some(), false) {
        Ok(()) => {
            c.action = Action::Delete;
            c.desired = None;
        }
        Err(b) => c.note = Some(format!("{b}; svc-handler does not delete it")),
    }
    c
}

/// This service's link into `link.gateway`.
pub fn link_change(
    t: &Target<'_>,
    link: &TgwLinkSpec,
    adopt: bool,
    gateway: Option<&Value>,
    record: Option<&Record>,
    generation: u64,
) -> Change {
    let name = link.gateway.as_str();
    let mut c = Change::new(Kind::TerminatingGateway, name, gateway);
    let recorded_here =
        record.is_some_and(|r| r.name == name || r.previous_gateway.as_deref() == Some(name));
    let present = gateway.and_then(|g| entries::find_link(g, t.id)).is_some();
    if present && !recorded_here && !adopt {
        c.blocked = Some(Blocked::UnrecordedLink {
            gateway: name.to_string(),
            service: t.id.name.clone(),
        });
    }
    if let Some(new) = entries::upsert_link(gateway, name, t.id, link, t.base_key) {
        c.action = Action::Link;
        c.desired = Some(new);
    }
    let mine = record.filter(|r| r.generation == generation && r.name == name);
    let found = gateway.and_then(|g| entries::find_link(g, t.id).map(|l| (g, l)));
    let untouched = match (mine, found) {
        (Some(r), Some((g, l))) => unchanged_since(r, g, l),
        _ => false,
    };
    c.budget(mine, untouched);
    let moving = record.is_none_or(|r| r.name != name);
    // Drift is a change to a link this generation verified; the intent
    // record written before a first link (never verified) is not one.
    c.drift = c.action.writes()
        && !moving
        && record.is_some_and(|r| r.generation == generation && !r.verified_at.is_empty());
    if c.action.writes() && moving {
        let mut intent = Record::link(
            t.id,
            t.base_key,
            name,
            generation,
            entries::link_object(t.id, link),
            None,
            String::new(),
        );
        intent.previous_gateway = stale_gateways(record, Some(name)).into_iter().next();
        c.intent = Some(intent);
    }
    c
}

/// Taking this service's link out of `gateway` (one it is leaving).
pub fn unlink_change(t: &Target<'_>, gateway_name: &str, gateway: Option<&Value>) -> Change {
    let mut c = Change::new(Kind::TerminatingGateway, gateway_name, gateway);
    if let Some(new) = gateway.and_then(|g| entries::remove_link(g, t.id)) {
        c.action = Action::Unlink;
        c.desired = Some(new);
    }
    c
}

/// Gateways the record says this service may still be linked into, other
/// than `keep`: the one recorded, and one a crashed move was leaving.
pub fn stale_gateways(record: Option<&Record>, keep: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = record
        .into_iter()
        .flat_map(|r| [Some(r.name.clone()), r.previous_gateway.clone()])
        .flatten()
        .filter(|g| Some(g.as_str()) != keep)
        .collect();
    out.dedup();
    out
}

/// Decides what a reconcile of `t` toward `desired` changes, given `current`.
pub fn plan(t: &Target<'_>, desired: &Desired<'_>, current: &Current) -> Plan {
    match *desired {
        Desired::Spec { spec, generation } => plan_apply(t, spec, generation, current),
        Desired::Gone { prune } => plan_gone(t, prune, current),
    }
}

fn plan_apply(t: &Target<'_>, spec: &Spec, generation: u64, cur: &Current) -> Plan {
    let entry = |k: Kind| cur.entries.get(&k);
    let record = |k: Kind| cur.records.get(&k);
    let mut changes = Vec::new();
    // A router or splitter that left base.json goes first (the router
    // before the splitter): while one exists, the defaults cannot go back
    // to a protocol it cannot use, nor the resolver drop a subset it names.
    for k in Kind::OPTIONAL
        .into_iter()
        .filter(|k| spec.body(*k).is_none())
    {
        changes.push(removal_change(t, k, entry(k), record(k)));
    }
    for k in Kind::OWN {
        let body = spec.body(k);
        if k.is_optional() && body.is_none() {
            continue;
        }
        changes.push(entry_change(
            t,
            k,
            body,
            spec.adopt,
            entry(k),
            record(k),
            generation,
        ));
    }
    let gateway_record = plan_gateway(t, spec, generation, cur, &mut changes);
    let (violations, violations_depend_on_others) = match (&cur.unsupported, &cur.others) {
        (Some(consul), _) => {
            let scope = if t.id.in_default_partition() {
                format!("namespace {:?}", t.id.namespace)
            } else {
                format!("partition {:?}", t.id.partition)
            };
            let v = Violation {
                path: "$ (the key's path)".into(),
                message: format!(
                    "the service's {scope} needs Consul Enterprise; this Consul refuses it: {consul}"
                ),
            };
            (vec![v], false)
        }
        (None, Some(others)) => {
            let all = preflight::check(spec, t.id, others);
            let external = !all.is_empty() && {
                let own = preflight::check(spec, t.id, &agreeing_others(spec, t.id));
                all.iter().any(|v| !own.contains(v))
            };
            (all, external)
        }
        (None, None) => (preflight::check_offline(spec, t.id), false),
    };
    Plan {
        generation: Some(generation),
        changes,
        gateway_record,
        forget: false,
        violations,
        violations_depend_on_others,
    }
}

/// The link into the gateway `spec` names (or none), then the links out of
/// the gateways it leaves; returns what happens to `tgw.json`.
fn plan_gateway(
    t: &Target<'_>,
    spec: &Spec,
    generation: u64,
    cur: &Current,
    changes: &mut Vec<Change>,
) -> RecordOp {
    let tgw = cur.records.get(&Kind::TerminatingGateway);
    let unlink = |g: &String| unlink_change(t, g, cur.gateways.get(g).map(|g| &**g));
    let Some(link) = &spec.terminating_gateway else {
        changes.extend(stale_gateways(tgw, None).iter().map(unlink));
        return if tgw.is_some() {
            RecordOp::Delete
        } else {
            RecordOp::Keep
        };
    };
    let gw = cur.gateways.get(&link.gateway).map(|g| &**g);
    let c = link_change(t, link, spec.adopt.is_on(), gw, tgw, generation);
    let as_found = gw.and_then(|g| {
        let found = entries::find_link(g, t.id)?.clone();
        let name = &link.gateway;
        let mut r = Record::link(
            t.id,
            t.base_key,
            name,
            generation,
            found,
            Some(g),
            String::new(),
        );
        r.differs = tgw.filter(|_| c.suppressed).and_then(|t| t.differs.clone());
        Some(r)
    });
    // The gateway's index aside: it moves whenever any service's link into
    // the gateway does, and this service's link record (as observed.json)
    // stands while the link itself is as recorded (see `Objects::same_as`).
    let same = matches!((tgw, &as_found), (Some(r), Some(f))
        if r.same_as(&Record { modify_index: r.modify_index, ..f.clone() }));
    let writes = c.action.writes();
    changes.push(c);
    let stale = stale_gateways(tgw, Some(&link.gateway));
    changes.extend(stale.iter().map(unlink));
    if writes || !same || !stale.is_empty() {
        RecordOp::Write
    } else {
        RecordOp::Keep
    }
}

/// Other services as agreeable as they could be: each named one with this
/// service's protocol and every subset asked of it. What preflight still
/// refuses then is base.json's own doing.
fn agreeing_others(spec: &Spec, id: &ServiceId) -> Others {
    let needs = preflight::needs(spec, id);
    let own = entries::build_entry(Kind::ServiceDefaults, id, spec.defaults.as_ref(), "");
    let mut others = Others::default();
    others.add_defaults(&id.name, Some(&own));
    let protocol = others.protocols.get(&id.name).cloned().unwrap_or_default();
    for name in needs.defaults.iter().filter(|n| **n != id.name) {
        others.protocols.insert(name.clone(), protocol.clone());
    }
    others
        .redirected
        .extend(needs.resolvers.iter().filter(|n| **n != id.name).cloned());
    others
}

fn plan_gone(t: &Target<'_>, prune: bool, cur: &Current) -> Plan {
    let forget = !cur.records.is_empty() || cur.observed.is_some();
    let mut changes = Vec::new();
    if prune && forget {
        let tgw = cur.records.get(&Kind::TerminatingGateway);
        for g in stale_gateways(tgw, None) {
            changes.push(unlink_change(t, &g, cur.gateways.get(&g).map(|g| &**g)));
        }
        for k in [
            Kind::ServiceRouter,
            Kind::ServiceSplitter,
            Kind::ServiceResolver,
            Kind::ServiceDefaults,
        ] {
            changes.push(removal_change(
                t,
                k,
                cur.entries.get(&k),
                cur.records.get(&k),
            ));
        }
    }
    Plan {
        generation: None,
        changes,
        gateway_record: if cur.records.contains_key(&Kind::TerminatingGateway) {
            RecordOp::Delete
        } else {
            RecordOp::Keep
        },
        forget,
        violations: Vec::new(),
        violations_depend_on_others: false,
    }
}

#[cfg(test)]
mod tests;
