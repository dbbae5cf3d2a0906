//! What the daemon writes back to KV: the per-object records (`defaults.json`,
//! `resolver.json`, `splitter.json`, `router.json`, `tgw.json`) and `observed.json`. Pure data,
//! with the contract's field names.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{self, ServiceId};
use crate::kind::{Kind, Step};

/// The outcome of a reconcile as `observed.json` and the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Applied,
    Error,
    Invalid,
    Conflict,
    /// `svc-handler pause` holds the service (pause.json beside base.json).
    Paused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Error => "error",
            Status::Invalid => "invalid",
            Status::Conflict => "conflict",
            Status::Paused => "paused",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// pause.json, beside base.json: while it is there the daemon writes none of
/// the service's entries (no apply, no drift correction, no deletion) and
/// observed.json says `paused` with the reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    /// Why, as `svc-handler pause --reason` was given it.
    #[serde(default)]
    pub reason: String,
    /// Who paused it (`$USER@host`, as the CLI saw it).
    #[serde(default)]
    pub by: String,
    /// RFC 3339.
    #[serde(default)]
    pub paused_at: String,
}

impl Pause {
    /// observed.json's message for it.
    pub fn message(&self) -> String {
        let reason = if self.reason.is_empty() {
            "no reason given".to_string()
        } else {
            self.reason.clone()
        };
        match (self.by.is_empty(), self.paused_at.is_empty()) {
            (false, false) => format!(
                "paused by {} at {}: {reason}; `svc-handler resume` to go on",
                self.by, self.paused_at
            ),
            _ => format!("paused: {reason}; `svc-handler resume` to go on"),
        }
    }
}

/// The record of one object svc-handler wrote and verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The config entry kind (`service-defaults`, ..., `terminating-gateway`).
    pub kind: String,
    /// The entry's name (for a link: the gateway's name).
    pub name: String,
    pub partition: String,
    pub namespace: String,
    /// `<kind>/<partition>/<namespace>/<name>`; for a link
    /// `terminating-gateway/<p>/<ns>/<gateway>#<service>`.
    pub resource_id: String,
    /// The entry's indexes as read back.
    pub create_index: u64,
    pub modify_index: u64,
    /// The base.json ModifyIndex this record is for.
    pub generation: u64,
    /// The entry as read back (for a link: the link inside the gateway).
    pub object: Value,
    /// RFC 3339, when the read-back was verified.
    pub verified_at: String,
    /// The base.json key the object belongs to.
    pub base_key: String,
    /// For a link: the service linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For a link being moved: the gateway it is leaving, until it is out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_gateway: Option<String>,
    /// When Consul stored the entry differently from what was written: where
    /// the read-back differs. The entry is not written again for this
    /// generation unless someone else changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs: Option<String>,
}

impl Record {
    /// The record of a service's own entry (`kind` is not a gateway) as
    /// read back: `actual` is the entry, with Consul's indexes.
    pub fn entry(
        kind: Kind,
        id: &ServiceId,
        base_key: &str,
        generation: u64,
        actual: &Value,
        verified_at: String,
    ) -> Record {
        Record {
            kind: kind.as_str().to_string(),
            name: id.name.clone(),
            partition: id.partition.clone(),
            namespace: id.namespace.clone(),
            resource_id: keys::resource_id(kind.as_str(), id),
            create_index: index(actual, "CreateIndex"),
            modify_index: index(actual, "ModifyIndex"),
            generation,
            object: actual.clone(),
            verified_at,
            base_key: base_key.to_string(),
            service: None,
            previous_gateway: None,
            differs: None,
        }
    }

    /// The record of this service's link in `gateway`: `link` is the link as
    /// found in the gateway entry read back (`gateway_entry`, whose indexes
    /// are kept). An intent (written before the link) has no indexes, no
    /// verification time, and names the gateway being left, if any.
    pub fn link(
        id: &ServiceId,
        base_key: &str,
        gateway: &str,
        generation: u64,
        link: Value,
        gateway_entry: Option<&Value>,
        verified_at: String,
    ) -> Record {
        Record {
            kind: Kind::TerminatingGateway.as_str().to_string(),
            name: gateway.to_string(),
            partition: id.partition.clone(),
            namespace: id.namespace.clone(),
            resource_id: keys::link_resource_id(&id.partition, &id.namespace, gateway, &id.name),
            create_index: gateway_entry.map_or(0, |g| index(g, "CreateIndex")),
            modify_index: gateway_entry.map_or(0, |g| index(g, "ModifyIndex")),
            generation,
            object: link,
            verified_at,
            base_key: base_key.to_string(),
            service: Some(id.name.clone()),
            previous_gateway: None,
            differs: None,
        }
    }

    /// True when both say the same, apart from when they were verified.
    pub fn same_as(&self, other: &Record) -> bool {
        let Record {
            kind,
            name,
            partition,
            namespace,
            resource_id,
            create_index,
            modify_index,
            generation,
            object,
            verified_at: _,
            base_key,
            service,
            previous_gateway,
            differs,
        } = self;
        (create_index, modify_index, generation)
            == (&other.create_index, &other.modify_index, &other.generation)
            && (kind, name, partition, namespace)
                == (&other.kind, &other.name, &other.partition, &other.namespace)
            && (resource_id, base_key, service)
                == (&other.resource_id, &other.base_key, &other.service)
            && (previous_gateway, differs) == (&other.previous_gateway, &other.differs)
            && object == &other.object
    }
}

/// A Raft index field of an entry as Consul returns it (0 when absent).
pub fn index(entry: &Value, field: &str) -> u64 {
    entry.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// A reference to one object in `observed.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub resource_id: String,
    pub modify_index: u64,
}

/// The objects of a service as last read back (`null` when there is none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objects {
    pub defaults: Option<ObjectRef>,
    pub resolver: Option<ObjectRef>,
    pub splitter: Option<ObjectRef>,
    pub router: Option<ObjectRef>,
    pub terminating_gateway: Option<ObjectRef>,
}

impl Objects {
    /// The same objects, a terminating gateway's index aside: a shared
    /// gateway changes whenever any service's link into it does, so its
    /// index when this service's link was last verified stands as long as
    /// the link itself is in place (which the plan checks). Otherwise every
    /// link into a gateway would make every other service linked there look
    /// out of sync, and the next resync rewrite all their observed.json.
    pub fn same_as(&self, other: &Objects) -> bool {
        let gateway = |o: &Objects| (o.terminating_gateway.as_ref()).map(|g| g.resource_id.clone());
        let Objects {
            defaults,
            resolver,
            splitter,
            router,
            terminating_gateway: _,
        } = self;
        (defaults, resolver, splitter, router)
            == (
                &other.defaults,
                &other.resolver,
                &other.splitter,
                &other.router,
            )
            && gateway(self) == gateway(other)
    }

    /// The slot of `kind`.
    pub fn slot(&mut self, kind: Kind) -> &mut Option<ObjectRef> {
        match kind {
            Kind::ServiceDefaults => &mut self.defaults,
            Kind::ServiceResolver => &mut self.resolver,
            Kind::ServiceSplitter => &mut self.splitter,
            Kind::ServiceRouter => &mut self.router,
            Kind::TerminatingGateway => &mut self.terminating_gateway,
        }
    }

    /// The reference of `kind`.
    pub fn get(&self, kind: Kind) -> Option<&ObjectRef> {
        match kind {
            Kind::ServiceDefaults => self.defaults.as_ref(),
            Kind::ServiceResolver => self.resolver.as_ref(),
            Kind::ServiceSplitter => self.splitter.as_ref(),
            Kind::ServiceRouter => self.router.as_ref(),
            Kind::TerminatingGateway => self.terminating_gateway.as_ref(),
        }
    }
}

/// `observed.json`: the outcome of the last reconcile of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub status: Status,
    /// The base.json ModifyIndex this outcome is for.
    pub generation: u64,
    /// Why, when not applied.
    pub message: Option<String>,
    /// The step that failed, when one did.
    pub step: Option<Step>,
    pub objects: Objects,
    /// RFC 3339.
    pub updated_at: String,
    pub duration_ms: u64,
    /// Which daemon instance wrote this.
    pub holder: String,
    /// The base.json key this outcome is for.
    pub base_key: String,
    /// The daemon will try this generation again by itself (a transient
    /// `error`); false for an outcome that stays until base.json or Consul
    /// changes.
    #[serde(default)]
    pub retry: bool,
    /// The outcomes before this one, newest first, at most
    /// [`HISTORY_LEN`]: one entry each time the outcome changed. Written
    /// with this outcome, in the same fenced transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// How many earlier outcomes observed.json keeps.
pub const HISTORY_LEN: usize = 20;
/// The longest message a history entry keeps (characters).
const HISTORY_MESSAGE_CHARS: usize = 400;

/// One earlier outcome, as `svc-handler history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: Status,
    pub generation: u64,
    #[serde(default)]
    pub step: Option<Step>,
    #[serde(default)]
    pub message: Option<String>,
    /// When it was written (its `updated_at`).
    pub at: String,
    pub holder: String,
}

impl HistoryEntry {
    /// `o` without its history, its message cut to a bounded length.
    pub fn of(o: &Observed) -> HistoryEntry {
        let message = o.message.as_ref().map(|m| {
            if m.chars().count() > HISTORY_MESSAGE_CHARS {
                let cut: String = m.chars().take(HISTORY_MESSAGE_CHARS).collect();
                format!("{cut}…")
            } else {
                m.clone()
            }
        });
        HistoryEntry {
            status: o.status,
            generation: o.generation,
            step: o.step,
            message,
            at: o.updated_at.clone(),
            holder: o.holder.clone(),
        }
    }
}

impl Observed {
    /// An outcome for unit tests: no message, no step, no objects.
    #[cfg(test)]
    pub fn example(status: Status, generation: u64) -> Observed {
        Observed {
            status,
            generation,
            message: None,
            step: None,
            objects: Objects::default(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1,
            holder: "h".into(),
            base_key: "k".into(),
            retry: false,
            history: Vec::new(),
        }
    }

    /// This outcome with `previous` (the observed.json it replaces) and
    /// that one's history behind it, newest first, at most
    /// [`HISTORY_LEN`] entries.
    pub fn after(mut self, previous: Option<&Observed>) -> Observed {
        self.history = match previous {
            None => Vec::new(),
            Some(p) => std::iter::once(HistoryEntry::of(p))
                .chain(p.history.iter().cloned())
                .take(HISTORY_LEN)
                .collect(),
        };
        self
    }

    /// True when both tell the same outcome: status, generation, step,
    /// message, objects and whether it is retried (not when, by whom, or how
    /// long it took).
    pub fn same_outcome(&self, other: &Observed) -> bool {
        (
            self.status,
            self.generation,
            self.step,
            &self.message,
            &self.objects,
            self.retry,
        ) == (
            other.status,
            other.generation,
            other.step,
            &other.message,
            &other.objects,
            other.retry,
        )
    }
}

/// Now, as RFC 3339 with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn outcome(generation: u64) -> Observed {
        Observed {
            message: Some("m".repeat(1000)),
            updated_at: format!("t{generation}"),
            ..Observed::example(Status::Applied, generation)
        }
    }

    #[test]
    fn history_is_newest_first_bounded_and_short() {
        let mut last: Option<Observed> = None;
        for g in 1..=30 {
            last = Some(outcome(g).after(last.as_ref()));
        }
        let o = last.unwrap();
        assert_eq!(o.history.len(), HISTORY_LEN);
        let gens: Vec<u64> = o.history.iter().map(|e| e.generation).collect();
        assert_eq!(gens, (10..=29).rev().collect::<Vec<_>>());
        let m = o.history[0].message.as_ref().unwrap();
        assert_eq!(m.chars().count(), HISTORY_MESSAGE_CHARS + 1);
        // Bounded in size: 20 entries of at most 400 characters each.
        assert!(serde_json::to_vec(&o).unwrap().len() < 12_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_the_same_whatever_a_shared_gateways_index() {
        let r = |id: &str, index: u64| {
            Some(ObjectRef {
                resource_id: id.into(),
                modify_index: index,
            })
        };
        let a = Objects {
            resolver: r("service-resolver/default/default/web", 10),
            terminating_gateway: r("terminating-gateway/default/default/gw#web", 20),
            ..Objects::default()
        };
        let moved = Objects {
            terminating_gateway: r("terminating-gateway/default/default/gw#web", 31),
            ..a.clone()
        };
        assert!(a.same_as(&moved));
        let other_gateway = Objects {
            terminating_gateway: r("terminating-gateway/default/default/gw2#web", 20),
            ..a.clone()
        };
        assert!(!a.same_as(&other_gateway));
        let unlinked = Objects {
            terminating_gateway: None,
            ..a.clone()
        };
        assert!(!a.same_as(&unlinked));
        let resolver_moved = Objects {
            resolver: r("service-resolver/default/default/web", 11),
            ..a.clone()
        };
        assert!(!a.same_as(&resolver_moved));
    }
    use serde_json::json;

    #[test]
    fn observed_has_the_contract_fields() {
        let o = Observed {
            status: Status::Conflict,
            generation: 12,
            message: Some("owned elsewhere".into()),
            step: Some(Step::Defaults),
            objects: Objects::default(),
            updated_at: now_rfc3339(),
            duration_ms: 3,
            holder: "node-1:42".into(),
            base_key: "svc-handler/desired/default/default/web/base.json".into(),
            retry: false,
            history: Vec::new(),
        };
        let v = serde_json::to_value(&o).unwrap();
        for f in [
            "status",
            "generation",
            "message",
            "step",
            "objects",
            "updated_at",
            "duration_ms",
            "holder",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert_eq!(v["status"], "conflict");
        assert_eq!(
            v["objects"],
            json!({"defaults": null, "resolver": null, "splitter": null, "router": null, "terminating_gateway": null})
        );
        assert!(v["updated_at"].as_str().unwrap().ends_with('Z'));
        let back: Observed = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn records_compare_without_their_time() {
        let r = Record {
            kind: "service-defaults".into(),
            name: "web".into(),
            partition: "default".into(),
            namespace: "default".into(),
            resource_id: "service-defaults/default/default/web".into(),
            create_index: 1,
            modify_index: 2,
            generation: 3,
            object: json!({"Protocol": "http"}),
            verified_at: "2026-01-01T00:00:00.000Z".into(),
            base_key: "k".into(),
            service: None,
            previous_gateway: None,
            differs: None,
        };
        let mut later = r.clone();
        later.verified_at = now_rfc3339();
        assert!(r.same_as(&later));
        later.modify_index = 5;
        assert!(!r.same_as(&later));
    }
}
