//! Consul config entries from a spec: building them with svc-handler's ownership mark,
//! reading that mark back, comparing desired and actual entries the way Consul prints
//! them, and merging one service's link into a shared terminating gateway.

use serde_json::{json, Map, Value};

use crate::keys::{self, ServiceId, DEFAULT};
use crate::kind::Kind;
use crate::spec::{self, TgwLinkSpec};

/// Meta key naming the tool that manages an entry.
pub const META_MANAGED_BY: &str = "managed-by";
/// The value of [`META_MANAGED_BY`] on entries svc-handler writes.
pub const MANAGED_BY_VALUE: &str = "svc-handler";
/// Meta key holding the base.json key an entry was written for.
pub const META_KEY: &str = "svc-handler-key";
/// Meta key consul-k8s (and other syncing tools) mark their entries with.
pub const META_EXTERNAL_SOURCE: &str = "external-source";

/// Longest rendering of a value in a [`Mismatch`].
const SHORT_MAX_CHARS: usize = 80;

/// svc-handler's ownership mark for the service whose base.json is `base_key`.
pub fn ownership_meta(base_key: &str) -> Value {
    json!({ META_MANAGED_BY: MANAGED_BY_VALUE, META_KEY: base_key })
}

/// The entry to write: the body's fields plus `Kind`, `Name`, the ownership `Meta`, and
/// `Partition`/`Namespace` only when they are not `default` (Consul OSS refuses them).
/// For a terminating gateway, which several services share, use [`upsert_link`].
pub fn build_entry(
    kind: Kind,
    id: &ServiceId,
    body: Option<&Map<String, Value>>,
    base_key: &str,
) -> Value {
    let mut entry = body.cloned().unwrap_or_default();
    entry.insert("Kind".into(), kind.as_str().into());
    entry.insert("Name".into(), id.name.clone().into());
    entry.remove("Partition");
    entry.remove("Namespace");
    if id.partition != DEFAULT {
        entry.insert("Partition".into(), id.partition.clone().into());
    }
    if id.namespace != DEFAULT {
        entry.insert("Namespace".into(), id.namespace.clone().into());
    }
    entry.insert("Meta".into(), ownership_meta(base_key));
    Value::Object(entry)
}

/// Who owns an existing entry, as far as svc-handler is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// There is no entry.
    Absent,
    /// It carries svc-handler's mark for this base.json key.
    Ours,
    /// It carries no mark: only `adopt: true` lets svc-handler take it over.
    Unmarked,
    /// svc-handler's mark for another key, or another tool's mark: never touched.
    /// `key` is the `svc-handler-key` found (empty when none); `managed_by` the
    /// `managed-by` found (empty when none; `external-source=<v>` for a consul-k8s
    /// style mark).
    Other { key: String, managed_by: String },
}

/// A Meta value as text; `None` when absent, null or empty.
fn meta_text(meta: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    match meta?.get(key)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads the ownership mark of `entry` against the base.json key `base_key`.
pub fn ownership(entry: Option<&Value>, base_key: &str) -> Ownership {
    let Some(entry) = entry else {
        return Ownership::Absent;
    };
    let meta = entry.get("Meta").and_then(Value::as_object);
    let managed_by = meta_text(meta, META_MANAGED_BY);
    let key = meta_text(meta, META_KEY);
    let other = |key: Option<String>, managed_by: Option<String>| Ownership::Other {
        key: key.unwrap_or_default(),
        managed_by: managed_by.unwrap_or_default(),
    };
    match (managed_by, key) {
        (Some(m), Some(k)) if m == MANAGED_BY_VALUE && k == base_key => Ownership::Ours,
        (Some(m), k) => other(k, Some(m)),
        // Half a mark for this key (someone removed managed-by): not proof of ownership.
        (None, Some(k)) if k == base_key => Ownership::Unmarked,
        (None, Some(k)) => other(Some(k), None),
        (None, None) => match meta_text(meta, META_EXTERNAL_SOURCE) {
            Some(source) => other(None, Some(format!("{META_EXTERNAL_SOURCE}={source}"))),
            None => Ownership::Unmarked,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Canonical comparison.

/// Fields dropped from the top level of an entry before comparing.
const NOT_COMPARED: [&str; 4] = ["CreateIndex", "ModifyIndex", "Partition", "Namespace"];

/// The form of an entry used for comparison: Raft indexes, `Partition` and `Namespace`
/// dropped at the top level; null, `""`, `false`, `0`, `{}` and `[]` dropped everywhere
/// (Go's omitempty, and the `"MeshGateway": {}` Consul adds on read); `""` or `"default"`
/// `Namespace`/`Partition` dropped inside `Redirect`, `Destination` and each `Failover`
/// value; durations under keys ending in `Timeout` turned into nanoseconds; integral
/// floats turned into integers. Inside arrays, an empty element becomes null (positions
/// matter). Keys are compared as they are: Consul prints CamelCase.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let kept: Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !NOT_COMPARED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            canon_object(&kept, false).map_or_else(|| Value::Object(Map::new()), Value::Object)
        }
        other => canon(other, "").unwrap_or(Value::Null),
    }
}

/// `canonical(desired) == canonical(actual)`: any difference, an extra field included,
/// is drift.
pub fn entries_equal(desired: &Value, actual: &Value) -> bool {
    canonical(desired) == canonical(actual)
}

/// The canonical form of `v` found under `key`; `None` when it counts as absent.
fn canon(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::Bool(true) => Some(Value::Bool(true)),
        Value::Number(n) => canon_number(n),
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => {
            if key.ends_with("Timeout") {
                if let Some(nanos) = spec::parse_go_duration(s) {
                    let nanos = u64::try_from(nanos).ok()?;
                    return (nanos != 0).then(|| Value::from(nanos));
                }
            }
            Some(Value::String(s.clone()))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|item| match item {
                    // A split names its target like a Destination does.
                    Value::Object(t) if key == "Splits" => {
                        canon_object(t, true).map_or(Value::Null, Value::Object)
                    }
                    other => canon(other, "").unwrap_or(Value::Null),
                })
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(m) => match key {
            "Redirect" | "Destination" => canon_object(m, true).map(Value::Object),
            "Failover" => {
                let targets: Map<String, Value> = m
                    .iter()
                    .filter_map(|(k, v)| {
                        let canon = match v {
                            Value::Object(t) => canon_object(t, true).map(Value::Object),
                            other => canon(other, k),
                        };
                        canon.map(|c| (k.clone(), c))
                    })
                    .collect();
                (!targets.is_empty()).then_some(Value::Object(targets))
            }
            _ => canon_object(m, false).map(Value::Object),
        },
    }
}

fn canon_number(n: &serde_json::Number) -> Option<Value> {
    if n.as_f64() == Some(0.0) {
        return None;
    }
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if f.fract() == 0.0 && f.abs() <= EXACT {
            // Integral and exact: compare as an integer (Consul prints `3`, not `3.0`).
            return Some(Value::from(f as i64));
        }
    }
    Some(Value::Number(n.clone()))
}

/// `scoped`: inside a Redirect, Destination, split or Failover target, where `""` and
/// `"default"` Namespace/Partition mean the same as absent.
fn canon_object(m: &Map<String, Value>, scoped: bool) -> Option<Map<String, Value>> {
    let out: Map<String, Value> = m
        .iter()
        .filter(|(k, v)| !(scoped && is_default_scope(k, v)))
        .filter_map(|(k, v)| canon(v, k).map(|c| (k.clone(), c)))
        .collect();
    (!out.is_empty()).then_some(out)
}

fn is_default_scope(key: &str, v: &Value) -> bool {
    matches!(key, "Namespace" | "Partition") && matches!(v.as_str(), Some("" | DEFAULT))
}

// ---------------------------------------------------------------------------------------
// Verifying a read-back.

/// A field of the desired entry that the entry read back does not have as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: expected {expected}, found {actual}")]
pub struct Mismatch {
    /// Where, e.g. `Subsets.v1.Filter` or `Routes[0].Destination` (`(entry)` for the
    /// whole entry).
    pub path: String,
    /// The desired value, as JSON, shortened.
    pub expected: String,
    /// The value read back, as JSON, shortened; `absent` when missing.
    pub actual: String,
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                match (plain, out.is_empty()) {
                    (true, true) => out.push_str(k),
                    (true, false) => {
                        out.push('.');
                        out.push_str(k);
                    }
                    (false, _) => {
                        let quoted = serde_json::to_string(k).unwrap_or_else(|_| format!("{k:?}"));
                        out.push_str(&format!("[{quoted}]"));
                    }
                }
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("(entry)");
    }
    out
}

fn lookup<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(SHORT_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Checks that every field of `canonical(desired)` is in `canonical(actual)` with an
/// equal value (arrays element by element, same length). Fields Consul adds are
/// allowed; see [`entries_equal`] for the strict comparison.
pub fn verify(desired: &Value, actual: &Value) -> Result<(), Mismatch> {
    let (want, got) = (canonical(desired), canonical(actual));
    let mut steps = Vec::new();
    if !differs(&want, Some(&got), &mut steps) {
        return Ok(());
    }
    // Show the values as written (e.g. "5s"), not their canonical form.
    let expected = lookup(desired, &steps)
        .or_else(|| lookup(&want, &steps))
        .map_or_else(|| "absent".to_string(), short);
    let actual = lookup(actual, &steps)
        .filter(|v| canon(v, "").is_some())
        .map_or_else(|| "absent".to_string(), short);
    Err(Mismatch {
        path: render_path(&steps),
        expected,
        actual,
    })
}

/// Walks `want`; when `got` differs, leaves `steps` at the first difference and returns
/// true.
fn differs(want: &Value, got: Option<&Value>, steps: &mut Vec<Step>) -> bool {
    match (want, got) {
        // An empty element of an array asks for nothing.
        (Value::Null, _) => false,
        (Value::Object(w), Some(Value::Object(g))) => w.iter().any(|(k, wv)| {
            steps.push(Step::Key(k.clone()));
            let found = differs(wv, g.get(k), steps);
            if !found {
                steps.pop();
            }
            found
        }),
        (Value::Array(w), Some(Value::Array(g))) if w.len() == g.len() => {
            w.iter().zip(g).enumerate().any(|(i, (wv, gv))| {
                steps.push(Step::Index(i));
                let found = differs(wv, Some(gv), steps);
                if !found {
                    steps.pop();
                }
                found
            })
        }
        (w, Some(g)) => w != g,
        (_, None) => true,
    }
}

// ---------------------------------------------------------------------------------------
// Terminating-gateway links.

fn link_namespace(link: &Value) -> &str {
    match link.get("Namespace").and_then(Value::as_str) {
        None | Some("") => DEFAULT,
        Some(ns) => ns,
    }
}

/// True when `link` (an element of a gateway's `Services`) is the link of `id`.
fn is_link_of(link: &Value, id: &ServiceId) -> bool {
    link.get("Name").and_then(Value::as_str) == Some(id.name.as_str())
        && link_namespace(link) == id.namespace
}

/// This service's entry in a gateway's `Services`: `Name`, `Namespace` when not
/// default, and the TLS fields that are set.
pub fn link_object(service: &ServiceId, link: &TgwLinkSpec) -> Value {
    let mut out = Map::new();
    out.insert("Name".into(), service.name.clone().into());
    if service.namespace != DEFAULT {
        out.insert("Namespace".into(), service.namespace.clone().into());
    }
    let optional = [
        ("CAFile", &link.ca_file),
        ("CertFile", &link.cert_file),
        ("KeyFile", &link.key_file),
        ("SNI", &link.sni),
    ];
    for (key, value) in optional {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            out.insert(key.into(), v.into());
        }
    }
    Value::Object(out)
}

/// The comparison form of one link: canonical, with `""`/`"default"` namespace and
/// partition counted as absent.
fn link_canonical(link: &Value) -> Value {
    match link {
        Value::Object(m) => canon_object(m, true).map_or(Value::Null, Value::Object),
        other => canon(other, "").unwrap_or(Value::Null),
    }
}

/// True when two links say the same (empty strings and default namespace = absent).
pub fn links_equal(a: &Value, b: &Value) -> bool {
    link_canonical(a) == link_canonical(b)
}

fn services(gateway: &Value) -> &[Value] {
    gateway
        .get("Services")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The link of `id` in `gateway`'s `Services`, if any.
pub fn find_link<'a>(gateway: &'a Value, id: &ServiceId) -> Option<&'a Value> {
    services(gateway).iter().find(|l| is_link_of(l, id))
}

/// The whole gateway entry with this service's link set; `None` when the gateway
/// already has an equal link. Every other field and every other link is kept, in
/// order; this service's link is replaced in place (duplicates of it are dropped). An
/// existing gateway keeps its own `Meta`. An absent gateway is created with only
/// `Kind`, `Name`, `Services` and svc-handler's mark; where it lives (partition,
/// namespace) is up to the caller's request.
pub fn upsert_link(
    gateway: Option<&Value>,
    gateway_name: &str,
    id: &ServiceId,
    link: &TgwLinkSpec,
    base_key: &str,
) -> Option<Value> {
    let new_link = link_object(id, link);
    let Some(existing) = gateway.and_then(Value::as_object) else {
        return Some(json!({
            "Kind": Kind::TerminatingGateway.as_str(),
            "Name": gateway_name,
            "Services": [new_link],
            "Meta": ownership_meta(base_key),
        }));
    };
    let current = gateway.map_or(&[][..], services);
    let mut ours = current.iter().filter(|l| is_link_of(l, id));
    if let (Some(only), None) = (ours.next(), ours.next()) {
        if links_equal(only, &new_link) {
            return None;
        }
    }
    let mut updated = Vec::with_capacity(current.len() + 1);
    let mut placed = false;
    for l in current {
        if !is_link_of(l, id) {
            updated.push(l.clone());
        } else if !placed {
            updated.push(new_link.clone());
            placed = true;
        }
    }
    if !placed {
        updated.push(new_link);
    }
    let mut entry = existing.clone();
    entry.insert("Services".into(), Value::Array(updated));
    Some(Value::Object(entry))
}

/// True for a terminating gateway svc-handler created (its mark) that holds
/// nothing any more: no link, and no field but `Kind`, `Name`, the mark and
/// Consul's own (`Partition`, `Namespace`, the indexes). Such a gateway is
/// deleted when its last link goes, so that a typo in
/// `terminating_gateway.Gateway`, once fixed, leaves nothing behind.
pub fn is_empty_own_gateway(gateway: &Value) -> bool {
    let Some(fields) = gateway.as_object() else {
        return false;
    };
    let ours = gateway["Meta"][META_MANAGED_BY] == MANAGED_BY_VALUE
        && (gateway["Meta"].as_object())
            .is_some_and(|m| m.keys().all(|k| k == META_MANAGED_BY || k == META_KEY));
    const KNOWN: [&str; 8] = [
        "Kind",
        "Name",
        "Meta",
        "Services",
        "Partition",
        "Namespace",
        "CreateIndex",
        "ModifyIndex",
    ];
    ours && services(gateway).is_empty() && fields.keys().all(|k| KNOWN.contains(&k.as_str()))
}

/// The whole gateway entry without this service's link; `None` when it has none.
/// Everything else is kept, even when no link is left.
pub fn remove_link(gateway: &Value, id: &ServiceId) -> Option<Value> {
    let existing = gateway.as_object()?;
    let current = services(gateway);
    if !current.iter().any(|l| is_link_of(l, id)) {
        return None;
    }
    let kept: Vec<Value> = current
        .iter()
        .filter(|l| !is_link_of(l, id))
        .cloned()
        .collect();
    let mut entry = existing.clone();
    entry.insert("Services".into(), Value::Array(kept));
    Some(Value::Object(entry))
}

/// Checks a gateway read back after [`upsert_link`]: it has this service's link, with
/// every field of `link` as written. The path names the link's place in `Services`.
pub fn verify_link(gateway: &Value, id: &ServiceId, link: &TgwLinkSpec) -> Result<(), Mismatch> {
    let want = link_object(id, link);
    let found = services(gateway)
        .iter()
        .enumerate()
        .find(|(_, l)| is_link_of(l, id));
    let Some((index, got)) = found else {
        return Err(Mismatch {
            path: format!("Services[Name={}]", keys::quote(&id.name)),
            expected: short(&want),
            actual: "absent".into(),
        });
    };
    let (want_c, got_c) = (link_canonical(&want), link_canonical(got));
    let mut steps = vec![Step::Key("Services".into()), Step::Index(index)];
    if !differs(&want_c, Some(&got_c), &mut steps) {
        return Ok(());
    }
    let inner = &steps[2..];
    Err(Mismatch {
        path: render_path(&steps),
        expected: lookup(&want, inner).map_or_else(|| "absent".into(), short),
        actual: lookup(got, inner)
            .filter(|v| canon(v, "").is_some())
            .map_or_else(|| "absent".into(), short),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_KEY: &str = "svc-handler/desired/default/default/web/base.json";

    fn id(p: &str, ns: &str, name: &str) -> ServiceId {
        ServiceId {
            partition: p.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn web() -> ServiceId {
        id("default", "default", "web")
    }

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn link(gateway: &str, sni: Option<&str>) -> TgwLinkSpec {
        TgwLinkSpec {
            gateway: gateway.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            sni: sni.map(Into::into),
        }
    }

    #[test]
    fn kinds() {
        let names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "service-defaults",
                "service-resolver",
                "service-splitter",
                "service-router",
                "terminating-gateway"
            ]
        );
        for k in Kind::ALL {
            assert_eq!(k.to_string(), k.as_str());
        }
    }

    #[test]
    fn build_entry_default_scope() {
        let b = body(json!({"Protocol": "http"}));
        let e = build_entry(Kind::ServiceDefaults, &web(), Some(&b), BASE_KEY);
        assert_eq!(
            e,
            json!({
                "Kind": "service-defaults",
                "Name": "web",
                "Protocol": "http",
                "Meta": {"managed-by": "svc-handler", "svc-handler-key": BASE_KEY},
            })
        );
        let e = build_entry(Kind::ServiceResolver, &web(), None, BASE_KEY);
        assert_eq!(
            e,
            json!({"Kind": "service-resolver", "Name": "web", "Meta": ownership_meta(BASE_KEY)})
        );
    }

    #[test]
    fn build_entry_other_scope() {
        let e = build_entry(Kind::ServiceRouter, &id("p1", "team", "api"), None, "k");
        assert_eq!(e["Partition"], "p1");
        assert_eq!(e["Namespace"], "team");
        let e = build_entry(
            Kind::ServiceRouter,
            &id("default", "team", "api"),
            None,
            "k",
        );
        assert!(e.get("Partition").is_none());
        assert_eq!(e["Namespace"], "team");
    }

    #[test]
    fn ownership_cases() {
        let with_meta =
            |meta: Value| json!({"Kind": "service-defaults", "Name": "web", "Meta": meta});
        assert_eq!(ownership(None, BASE_KEY), Ownership::Absent);
        let built = build_entry(Kind::ServiceDefaults, &web(), None, BASE_KEY);
        assert_eq!(ownership(Some(&built), BASE_KEY), Ownership::Ours);
        assert_eq!(
            ownership(
                Some(&built),
                "svc-handler/desired/default/default/api/base.json"
            ),
            Ownership::Other {
                key: BASE_KEY.into(),
                managed_by: "svc-handler".into()
            }
        );
        let bare = json!({"Kind": "service-defaults", "Name": "web"});
        assert_eq!(ownership(Some(&bare), BASE_KEY), Ownership::Unmarked);
        assert_eq!(
            ownership(Some(&with_meta(json!({"team": "x"}))), BASE_KEY),
            Ownership::Unmarked
        );
        assert_eq!(
            ownership(
                Some(&with_meta(json!({"managed-by": "terraform"}))),
                BASE_KEY
            ),
            Ownership::Other {
                key: String::new(),
                managed_by: "terraform".into()
            }
        );
        assert_eq!(
            ownership(
                Some(&with_meta(
                    json!({"managed-by": "terraform", "svc-handler-key": BASE_KEY})
                )),
                BASE_KEY
            ),
            Ownership::Other {
                key: BASE_KEY.into(),
                managed_by: "terraform".into()
            }
        );
        assert_eq!(
            ownership(
                Some(&with_meta(json!({"external-source": "kubernetes"}))),
                BASE_KEY
            ),
            Ownership::Other {
                key: String::new(),
                managed_by: "external-source=kubernetes".into()
            }
        );
        assert_eq!(
            ownership(
                Some(&with_meta(json!({"svc-handler-key": BASE_KEY}))),
                BASE_KEY
            ),
            Ownership::Unmarked
        );
        assert_eq!(
            ownership(
                Some(&with_meta(json!({"svc-handler-key": "other"}))),
                BASE_KEY
            ),
            Ownership::Other {
                key: "other".into(),
                managed_by: String::new()
            }
        );
        assert_eq!(
            ownership(
                Some(&with_meta(json!({"managed-by": "", "svc-handler-key": ""}))),
                BASE_KEY
            ),
            Ownership::Unmarked
        );
    }

    #[test]
    fn consul_187_defaults_read_back_equals_built() {
        let b = body(json!({"Protocol": "http"}));
        let built = build_entry(Kind::ServiceDefaults, &web(), Some(&b), BASE_KEY);
        let read = json!({
            "Kind": "service-defaults",
            "Name": "web",
            "Protocol": "http",
            "MeshGateway": {},
            "Expose": {},
            "Meta": {"managed-by": "svc-handler", "svc-handler-key": BASE_KEY},
            "CreateIndex": 10,
            "ModifyIndex": 10
        });
        assert!(entries_equal(&built, &read));
        assert_eq!(verify(&built, &read), Ok(()));
    }

    #[test]
    fn durations_compare_by_value() {
        let b = body(json!({"ConnectTimeout": "5000ms"}));
        let built = build_entry(Kind::ServiceResolver, &web(), Some(&b), BASE_KEY);
        let read = json!({
            "Kind": "service-resolver", "Name": "web", "ConnectTimeout": "5s",
            "Meta": ownership_meta(BASE_KEY), "CreateIndex": 11, "ModifyIndex": 12
        });
        assert!(entries_equal(&built, &read));
        assert_eq!(verify(&built, &read), Ok(()));
        let slower = json!({"ConnectTimeout": "1m30s"});
        assert!(entries_equal(&slower, &json!({"ConnectTimeout": "90s"})));
        assert!(!entries_equal(&slower, &json!({"ConnectTimeout": "91s"})));
        assert!(entries_equal(&json!({"ConnectTimeout": "0s"}), &json!({})));
        let route = |t: &str| json!({"Routes": [{"Destination": {"RequestTimeout": t}}]});
        assert!(entries_equal(&route("1500ms"), &route("1.5s")));
        // Not a duration: compared as text.
        assert!(!entries_equal(
            &json!({"IdleTimeout": "x"}),
            &json!({"IdleTimeout": "y"})
        ));
    }

    #[test]
    fn failover_and_redirect_default_namespace() {
        let desired = json!({
            "Kind": "service-resolver", "Name": "web",
            "Redirect": {"Service": "web2", "Namespace": ""},
            "Failover": {"*": {"Service": "web", "Namespace": "default", "Datacenters": ["dc2"]},
                          "v1": {"ServiceSubset": "v2", "Partition": ""}}
        });
        let read = json!({
            "Kind": "service-resolver", "Name": "web",
            "Redirect": {"Service": "web2", "Namespace": "default"},
            "Failover": {"*": {"Service": "web", "Datacenters": ["dc2"]},
                          "v1": {"ServiceSubset": "v2"}}
        });
        assert!(entries_equal(&desired, &read));
        let elsewhere = json!({
            "Kind": "service-resolver", "Name": "web",
            "Redirect": {"Service": "web2", "Namespace": "team"},
            "Failover": {"*": {"Service": "web", "Datacenters": ["dc2"]},
                          "v1": {"ServiceSubset": "v2"}}
        });
        assert!(!entries_equal(&desired, &elsewhere));
        let e = verify(&desired, &elsewhere).err();
        assert_eq!(e, None, "desired asks nothing of the namespace");
        let e = verify(&elsewhere, &read).unwrap_err();
        assert_eq!(e.path, "Redirect.Namespace");
        assert_eq!(e.expected, "\"team\"");
        assert_eq!(e.actual, "\"default\"");
    }

    #[test]
    fn router_destination_default_namespace() {
        let desired =
            json!({"Routes": [{"Destination": {"Service": "admin", "Namespace": "default"}}]});
        let read = json!({"Routes": [{"Match": null, "Destination": {"Service": "admin", "Namespace": ""}}]});
        assert!(entries_equal(&desired, &read));
        // Elsewhere, a "default" namespace is a value like any other.
        assert!(!entries_equal(
            &json!({"X": {"Namespace": "default"}}),
            &json!({})
        ));
    }

    #[test]
    fn top_level_scope_and_indexes_ignored() {
        let a = json!({"Kind": "service-defaults", "Name": "web", "Namespace": "default", "Partition": "default", "CreateIndex": 1, "ModifyIndex": 9});
        let b = json!({"Kind": "service-defaults", "Name": "web"});
        assert!(entries_equal(&a, &b));
    }

    #[test]
    fn empties_are_absent() {
        let a = json!({"A": null, "B": "", "C": false, "D": 0, "E": {}, "F": [], "G": {"H": {"I": ""}}, "J": 0.0, "K": "x"});
        assert_eq!(canonical(&a), json!({"K": "x"}));
        // Array positions are kept.
        assert_eq!(
            canonical(&json!({"L": [{}, "", 1]})),
            json!({"L": [null, null, 1]})
        );
        assert!(entries_equal(&json!({"N": 3}), &json!({"N": 3.0})));
        assert!(!entries_equal(&json!({"N": 3}), &json!({"N": 3.5})));
        assert!(!entries_equal(&json!({"B": true}), &json!({})));
    }

    #[test]
    fn extra_field_is_drift() {
        let built = build_entry(Kind::ServiceDefaults, &web(), None, BASE_KEY);
        let mut read = built.clone();
        read["Protocol"] = json!("grpc");
        assert!(!entries_equal(&built, &read));
        assert_eq!(verify(&built, &read), Ok(()), "verify allows added fields");
        let mut other_meta = built.clone();
        other_meta["Meta"]["owner"] = json!("ops");
        assert!(!entries_equal(&built, &other_meta));
    }

    #[test]
    fn keys_are_not_case_folded() {
        assert!(!entries_equal(
            &json!({"Protocol": "http"}),
            &json!({"protocol": "http"})
        ));
    }

    #[test]
    fn verify_names_the_path() {
        let desired = json!({"Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}, "ConnectTimeout": "5s"});
        let actual = json!({"Subsets": {"v1": {"Filter": "Service.Meta.version == v2"}}, "ConnectTimeout": "5000ms"});
        let e = verify(&desired, &actual).unwrap_err();
        assert_eq!(e.path, "Subsets.v1.Filter");
        assert_eq!(e.expected, "\"Service.Meta.version == v1\"");
        assert_eq!(e.actual, "\"Service.Meta.version == v2\"");
        assert_eq!(
            e.to_string(),
            "Subsets.v1.Filter: expected \"Service.Meta.version == v1\", found \"Service.Meta.version == v2\""
        );

        let e = verify(
            &json!({"ConnectTimeout": "5s"}),
            &json!({"ConnectTimeout": "6s"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.expected.as_str(), e.actual.as_str()),
            ("\"5s\"", "\"6s\"")
        );

        let e = verify(&json!({"Subsets": {"v1": {"Filter": "x"}}}), &json!({})).unwrap_err();
        assert_eq!(e.path, "Subsets");
        assert_eq!(e.actual, "absent");

        let routes =
            |n: usize| json!({"Routes": vec![json!({"Destination": {"Service": "a"}}); n]});
        let e = verify(&routes(2), &routes(1)).unwrap_err();
        assert_eq!(e.path, "Routes");
        let mut changed = routes(2);
        changed["Routes"][1]["Destination"]["Service"] = json!("b");
        let e = verify(&routes(2), &changed).unwrap_err();
        assert_eq!(e.path, "Routes[1].Destination.Service");

        let e = verify(
            &json!({"Subsets": {"a b": {"Filter": "x"}}}),
            &json!({"Subsets": {"a b": {"Filter": "y"}}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "Subsets[\"a b\"].Filter");

        let e = verify(&json!({"X": "y".repeat(500)}), &json!({})).unwrap_err();
        assert!(
            e.expected.chars().count() <= SHORT_MAX_CHARS + 1,
            "{}",
            e.expected
        );

        let e = verify(&json!({"A": 1}), &json!("x")).unwrap_err();
        assert_eq!(e.path, "(entry)");
    }

    #[test]
    fn link_object_fields() {
        let full = TgwLinkSpec {
            gateway: "egress".into(),
            ca_file: Some("/ca".into()),
            cert_file: Some("".into()),
            key_file: Some("/key".into()),
            sni: Some("api.example.com".into()),
        };
        assert_eq!(
            link_object(&web(), &full),
            json!({"Name": "web", "CAFile": "/ca", "KeyFile": "/key", "SNI": "api.example.com"})
        );
        assert_eq!(
            link_object(&id("default", "team", "api"), &link("egress", None)),
            json!({"Name": "api", "Namespace": "team"})
        );
    }

    #[test]
    fn only_an_empty_gateway_svc_handler_created_counts_as_empty_and_own() {
        let made = upsert_link(None, "egress", &web(), &link("egress", None), BASE_KEY).unwrap();
        assert!(!is_empty_own_gateway(&made), "it still has a link");
        let empty = remove_link(&made, &web()).unwrap();
        assert!(is_empty_own_gateway(&empty));
        let mut indexed = empty.clone();
        indexed["CreateIndex"] = json!(5);
        indexed["ModifyIndex"] = json!(9);
        assert!(is_empty_own_gateway(&indexed));
        let mut foreign_field = empty.clone();
        foreign_field["SomethingElse"] = json!("x");
        assert!(!is_empty_own_gateway(&foreign_field));
        let mut foreign_meta = empty.clone();
        foreign_meta["Meta"]["team"] = json!("payments");
        assert!(!is_empty_own_gateway(&foreign_meta));
        let mut someone_elses = empty.clone();
        someone_elses["Meta"] = json!({"managed-by": "terraform"});
        assert!(!is_empty_own_gateway(&someone_elses));
    }

    #[test]
    fn upsert_creates_an_absent_gateway() {
        let gw = upsert_link(None, "egress", &web(), &link("egress", Some("s")), BASE_KEY).unwrap();
        assert_eq!(
            gw,
            json!({
                "Kind": "terminating-gateway",
                "Name": "egress",
                "Services": [{"Name": "web", "SNI": "s"}],
                "Meta": {"managed-by": "svc-handler", "svc-handler-key": BASE_KEY},
            })
        );
        assert_eq!(ownership(Some(&gw), BASE_KEY), Ownership::Ours);
    }

    fn shared_gateway() -> Value {
        json!({
            "Kind": "terminating-gateway",
            "Name": "egress",
            "Services": [
                {"Name": "billing", "CAFile": "/b", "CertFile": "", "KeyFile": "", "SNI": ""},
                {"Name": "web", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": "old"},
                {"Name": "web", "Namespace": "team", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": ""},
                {"Name": "search", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": "s"}
            ],
            "Meta": {"owner": "netops"},
            "CreateIndex": 5,
            "ModifyIndex": 7
        })
    }

    #[test]
    fn upsert_replaces_in_place_and_keeps_the_rest() {
        let gw = shared_gateway();
        let new = upsert_link(
            Some(&gw),
            "egress",
            &web(),
            &link("egress", Some("new")),
            BASE_KEY,
        )
        .unwrap();
        let services = new["Services"].as_array().unwrap();
        assert_eq!(services.len(), 4);
        assert_eq!(services[0], gw["Services"][0]);
        assert_eq!(services[1], json!({"Name": "web", "SNI": "new"}));
        assert_eq!(services[2], gw["Services"][2]);
        assert_eq!(services[3], gw["Services"][3]);
        assert_eq!(new["Meta"], json!({"owner": "netops"}));
        assert_eq!(new["ModifyIndex"], 7);
        let mut rest = new.as_object().unwrap().clone();
        rest.remove("Services");
        let mut old_rest = gw.as_object().unwrap().clone();
        old_rest.remove("Services");
        assert_eq!(rest, old_rest);
    }

    #[test]
    fn upsert_appends_a_new_link() {
        let gw = shared_gateway();
        let api = id("default", "default", "api");
        let new = upsert_link(Some(&gw), "egress", &api, &link("egress", None), BASE_KEY).unwrap();
        let services = new["Services"].as_array().unwrap();
        assert_eq!(services.len(), 5);
        assert_eq!(services[4], json!({"Name": "api"}));
        assert_eq!(
            &services[..4],
            gw["Services"].as_array().unwrap().as_slice()
        );
        let bare = json!({"Kind": "terminating-gateway", "Name": "egress"});
        let new =
            upsert_link(Some(&bare), "egress", &api, &link("egress", None), BASE_KEY).unwrap();
        assert_eq!(new["Services"], json!([{"Name": "api"}]));
        assert!(
            new.get("Meta").is_none(),
            "an existing gateway keeps its own Meta"
        );
    }

    #[test]
    fn upsert_is_none_when_equal() {
        let gw = shared_gateway();
        assert_eq!(
            upsert_link(
                Some(&gw),
                "egress",
                &web(),
                &link("egress", Some("old")),
                BASE_KEY
            ),
            None
        );
        let team = id("default", "team", "web");
        assert_eq!(
            upsert_link(Some(&gw), "egress", &team, &link("egress", None), BASE_KEY),
            None
        );
        let written = upsert_link(None, "egress", &team, &link("egress", None), BASE_KEY).unwrap();
        assert_eq!(
            upsert_link(
                Some(&written),
                "egress",
                &team,
                &link("egress", None),
                BASE_KEY
            ),
            None
        );
    }

    #[test]
    fn upsert_drops_duplicates_of_our_link() {
        let gw = json!({"Kind": "terminating-gateway", "Name": "egress", "Services": [
            {"Name": "web", "SNI": "a"}, {"Name": "x"}, {"Name": "web", "Namespace": "default", "SNI": "a"}
        ]});
        let new = upsert_link(
            Some(&gw),
            "egress",
            &web(),
            &link("egress", Some("a")),
            BASE_KEY,
        )
        .unwrap();
        assert_eq!(
            new["Services"],
            json!([{"Name": "web", "SNI": "a"}, {"Name": "x"}])
        );
    }

    #[test]
    fn find_and_remove() {
        let gw = shared_gateway();
        assert_eq!(find_link(&gw, &web()), Some(&gw["Services"][1]));
        assert_eq!(
            find_link(&gw, &id("default", "team", "web")),
            Some(&gw["Services"][2])
        );
        assert_eq!(find_link(&gw, &id("default", "default", "api")), None);
        let removed = remove_link(&gw, &web()).unwrap();
        let names: Vec<_> = removed["Services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["Name"].as_str().unwrap(), link_namespace(s)))
            .collect();
        assert_eq!(
            names,
            [
                ("billing", "default"),
                ("web", "team"),
                ("search", "default")
            ]
        );
        assert_eq!(removed["Meta"], gw["Meta"]);
        assert_eq!(remove_link(&removed, &web()), None);
        let only = upsert_link(None, "egress", &web(), &link("egress", None), BASE_KEY).unwrap();
        let empty = remove_link(&only, &web()).unwrap();
        assert_eq!(empty["Services"], json!([]));
        assert_eq!(empty["Meta"], ownership_meta(BASE_KEY));
    }

    #[test]
    fn link_equality_ignores_empties() {
        assert!(links_equal(
            &json!({"Name": "web", "SNI": "", "CAFile": ""}),
            &json!({"Name": "web"})
        ));
        assert!(links_equal(
            &json!({"Name": "web", "Namespace": "default"}),
            &json!({"Name": "web", "Namespace": ""})
        ));
        assert!(!links_equal(
            &json!({"Name": "web", "Namespace": "team"}),
            &json!({"Name": "web"})
        ));
        assert!(!links_equal(
            &json!({"Name": "web", "SNI": "a"}),
            &json!({"Name": "web"})
        ));
    }

    #[test]
    fn entries_from_a_parsed_spec_match_their_read_back() {
        let text = br#"{"resolver": {"ConnectTimeout": "5000ms", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": false}}},
            "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                                   "Destination": {"Service": "admin", "Namespace": "default"}}]},
            "terminating_gateway": {"Gateway": "egress", "SNI": "api.example.com"}}"#;
        let parsed = spec::parse(text).unwrap();
        let resolver = build_entry(
            Kind::ServiceResolver,
            &web(),
            parsed.resolver.as_ref(),
            BASE_KEY,
        );
        let read = json!({
            "Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}},
            "ConnectTimeout": "5s", "Meta": ownership_meta(BASE_KEY),
            "CreateIndex": 20, "ModifyIndex": 21
        });
        assert!(entries_equal(&resolver, &read));
        let router = build_entry(
            Kind::ServiceRouter,
            &web(),
            parsed.router.as_ref(),
            BASE_KEY,
        );
        let read = json!({
            "Kind": "service-router", "Name": "web",
            "Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                        "Destination": {"Service": "admin", "RequestTimeout": "0s"}}],
            "Meta": ownership_meta(BASE_KEY), "CreateIndex": 22, "ModifyIndex": 22
        });
        assert!(entries_equal(&router, &read));
        let tgw = parsed.terminating_gateway.unwrap();
        let gw = upsert_link(None, &tgw.gateway, &web(), &tgw, BASE_KEY).unwrap();
        let read = json!({
            "Kind": "terminating-gateway", "Name": "egress",
            "Services": [{"Name": "web", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": "api.example.com"}],
            "Meta": ownership_meta(BASE_KEY), "CreateIndex": 23, "ModifyIndex": 23
        });
        assert!(entries_equal(&gw, &read));
        assert_eq!(verify_link(&read, &web(), &tgw), Ok(()));
        assert_eq!(
            upsert_link(Some(&read), "egress", &web(), &tgw, BASE_KEY),
            None
        );
    }

    #[test]
    fn verify_link_read_back() {
        let gw = shared_gateway();
        assert_eq!(
            verify_link(&gw, &web(), &link("egress", Some("old"))),
            Ok(())
        );
        let e = verify_link(&gw, &web(), &link("egress", Some("new"))).unwrap_err();
        assert_eq!(e.path, "Services[1].SNI");
        assert_eq!(
            (e.expected.as_str(), e.actual.as_str()),
            ("\"new\"", "\"old\"")
        );
        let e =
            verify_link(&gw, &id("default", "default", "api"), &link("egress", None)).unwrap_err();
        assert_eq!(e.path, "Services[Name=\"api\"]");
        assert_eq!(e.actual, "absent");
    }
}
