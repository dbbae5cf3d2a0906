//! Refusals foreseen before the first write (issue 12, item 2).
//!
//! Consul 1.8 validates each config entry on write, both alone (the entry's
//! `Validate()`) and in the graph of entries it joins (the discovery-chain
//! compiler, run for the proposed entry by the state store). A refusal comes
//! after svc-handler may already have written the service's earlier entries,
//! leaving it half applied. This module foresees those refusals from base.json
//! plus a few reads, purely (no I/O):
//!
//! 1. [`needs`] says which other entries must be read: the service-defaults of
//!    every other service the chain reaches, the service-resolver of every
//!    other service whose subset is named, and proxy-defaults `global`.
//! 2. The caller reads them into [`Others`] (see [`Others::add_defaults`],
//!    [`Others::add_resolver`], [`Others::set_proxy_defaults`]).
//! 3. [`check`] lists the [`Violation`]s; [`check_offline`] does the same with
//!    nothing read, skipping (never assuming violated) the rules that need
//!    other entries.
//!
//! The graph rules walk the service's own discovery chain the way Consul's
//! compiler does (`agent/consul/discoverychain/compile.go`): the router's
//! destinations and its catch-all, then each resolver hop with its redirect,
//! default subset and the failover of the subsets actually reached. Every
//! service reached must have the chain's protocol (exactly: `http` and `http2`
//! differ), and every subset named must exist. A failover for a subset that
//! the chain does not reach is not compiled by Consul, so it is not checked.
//!
//! Assumptions and limits:
//! - The service's own entries are those of the spec. Without
//!   `spec.defaults` the service's protocol is `Others.protocols[own name]`
//!   when the caller puts it there (an entry that stays), else the global
//!   proxy-defaults protocol, else `tcp`.
//! - Other services' resolvers are not followed: their failover, and the
//!   target of their redirect, are not checked (a redirecting resolver only
//!   turns off the subset check on that service, as Consul then resets the
//!   subset). Other services' splitters are not read.
//! - A reference naming a Namespace other than the service's own is skipped.
//! - Chains of *other* services that reach this one (Consul compiles them
//!   too) are not checked, nor the order of writes (each entry is checked
//!   against the final state, not the state between two writes).
//! - The splitter is entered where Consul enters it: a route (or the
//!   service itself) reaching this service without naming a subset. A split
//!   to another service goes to that service's resolver; its splitter, if it
//!   has one, is not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::keys::ServiceId;
use crate::spec::Spec;

/// The entries [`check`] needs besides base.json, all in the service's own
/// partition and namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Services whose service-defaults give their protocol.
    pub defaults: BTreeSet<String>,
    /// Services whose service-resolver must have a named subset.
    pub resolvers: BTreeSet<String>,
    /// Whether proxy-defaults `global` is needed (its `Config.protocol`).
    pub proxy_defaults: bool,
}

/// What was read about other services (fill it with the `add_*` methods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Others {
    /// Service → protocol of its service-defaults (`""` counts as `tcp`).
    /// A service with no service-defaults is absent: the global protocol applies.
    pub protocols: BTreeMap<String, String>,
    /// Service → subset names of its resolver (absent resolver: no subsets).
    pub subsets: BTreeMap<String, BTreeSet<String>>,
    /// Services whose resolver has a `Redirect`: Consul follows it and drops
    /// the subset, so no subset is checked on them.
    pub redirected: BTreeSet<String>,
    /// proxy-defaults `global` `Config.protocol`, when set.
    pub global_protocol: Option<String>,
}

impl Others {
    /// Records service `name`'s service-defaults as read (`None`: absent).
    /// An entry without `Protocol` means `tcp`: Consul does not fall back to
    /// the global protocol when the service-defaults entry exists.
    pub fn add_defaults(&mut self, name: &str, entry: Option<&Value>) {
        if let Some(entry) = entry {
            let p = entry.get("Protocol").and_then(Value::as_str).unwrap_or("");
            self.protocols.insert(name.to_string(), normalize(p));
        }
    }

    /// Records service `name`'s service-resolver as read (`None`: absent).
    pub fn add_resolver(&mut self, name: &str, entry: Option<&Value>) {
        let Some(entry) = entry else { return };
        let names = entry
            .get("Subsets")
            .and_then(Value::as_object)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        self.subsets.insert(name.to_string(), names);
        if entry.get("Redirect").is_some_and(|r| !r.is_null()) {
            self.redirected.insert(name.to_string());
        }
    }

    /// Records proxy-defaults `global` as read (`None`: absent). Consul reads
    /// `Config.protocol` with any letter case, and lower-cases the value.
    pub fn set_proxy_defaults(&mut self, entry: Option<&Value>) {
        self.global_protocol = entry
            .and_then(|e| e.get("Config"))
            .and_then(Value::as_object)
            .and_then(|c| c.iter().find(|(k, _)| k.eq_ignore_ascii_case("protocol")))
            .and_then(|(_, v)| v.as_str())
            .filter(|p| !p.is_empty())
            .map(|p| p.to_ascii_lowercase());
    }

    /// The protocol Consul gives service `name` (never our own service).
    fn protocol_of(&self, name: &str) -> String {
        match self.protocols.get(name) {
            Some(p) => normalize(p),
            None => self
                .global_protocol
                .as_deref()
                .map_or_else(|| "tcp".to_string(), normalize),
        }
    }
}

/// A rule of Consul's that base.json breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where in base.json, e.g. `$.router.Routes[0].Destination.ServiceSubset`.
    pub path: String,
    /// What is wrong, ending with the refusal Consul would answer.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The entries to read before [`check`] for service `id`.
pub fn needs(spec: &Spec, id: &ServiceId) -> Needs {
    let mut walk = Walk::new(spec, id, None);
    walk.run();
    let mut needs = walk.needs;
    needs.proxy_defaults = !needs.defaults.is_empty()
        || (spec.defaults.is_none()
            && (spec.router.is_some() || spec.splitter.is_some() || !needs.resolvers.is_empty()));
    needs
}

/// Every foreseen refusal, with `others` read as [`needs`] asked.
pub fn check(spec: &Spec, id: &ServiceId, others: &Others) -> Vec<Violation> {
    run_checks(spec, id, Some(others))
}

/// The foreseen refusals that need nothing outside base.json (for
/// `svc-handler validate`); rules needing other entries are skipped.
pub fn check_offline(spec: &Spec, id: &ServiceId) -> Vec<Violation> {
    run_checks(spec, id, None)
}

fn run_checks(spec: &Spec, id: &ServiceId, others: Option<&Others>) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(resolver) = &spec.resolver {
        resolver_rules(resolver, &id.name, &mut out);
    }
    if let Some(splitter) = &spec.splitter {
        splitter_rules(splitter, id, &mut out);
    }
    if let Some(router) = &spec.router {
        router_rules(router, &mut out);
    }
    let mut walk = Walk::new(spec, id, others);
    walk.run();
    out.extend(walk.found);
    // One violation per place: the entry's own Validate() comes first in
    // Consul, and a place is reported once however often the walk meets it.
    let mut seen = BTreeSet::new();
    out.retain(|v| seen.insert(v.path.clone()));
    out
}

// ---------------------------------------------------------------------------------------
// Small helpers.

/// Consul's reading of a protocol: lower case, `""` is `tcp`.
fn normalize(p: &str) -> String {
    if p.is_empty() {
        "tcp".into()
    } else {
        p.to_ascii_lowercase()
    }
}

/// http, http2 and grpc allow a router or splitter (Consul's `IsProtocolHTTPLike`).
fn http_like(p: &str) -> bool {
    matches!(p, "http" | "http2" | "grpc")
}

/// The string at `key`, `""` when absent, null or not a string.
fn text<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or("")
}

fn obj<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    map.get(key).and_then(Value::as_object)
}

fn array<'a>(map: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    map.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `path.key`, or `path["key"]` when the key is not a plain name (as spec.rs
/// writes paths).
fn at(path: &str, key: &str) -> String {
    let mut out = path.to_string();
    crate::spec::push_key(&mut out, key);
    out
}

fn refused(path: String, what: impl fmt::Display, consul: impl fmt::Display) -> Violation {
    Violation {
        path,
        message: format!("{what}; Consul refuses it: {consul}"),
    }
}

fn subset_names(resolver: &Map<String, Value>) -> BTreeSet<&str> {
    obj(resolver, "Subsets")
        .map(|s| s.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// service-resolver Validate() (agent/structs/config_entry_discoverychain.go, 1.8).

/// A subset name Consul accepts: a DNS label of lower-case letters, digits
/// and `-`, at most 63 characters.
fn valid_subset_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
        && b.iter().all(|c| inner(c) || *c == b'-')
}

/// The resolver's own rules. Not here: a negative ConnectTimeout ("Bad
/// ConnectTimeout '-5s', must be >= 0"), which spec.rs already refuses.
pub(crate) fn resolver_rules(res: &Map<String, Value>, own: &str, out: &mut Vec<Violation>) {
    let subsets = subset_names(res);
    for name in &subsets {
        let path = at("$.resolver.Subsets", name);
        if name.is_empty() {
            let what = "a subset needs a name";
            out.push(refused(path, what, "Subset defined with empty name"));
        } else if !valid_subset_name(name) {
            let consul = format!("Subset {name:?} is invalid: must be 63 characters or fewer, begin or end with lower case alphanumeric characters, and contain lower case alphanumeric characters or '-' in between");
            out.push(refused(path, "not a valid subset name", consul));
        }
    }
    let default = text(res, "DefaultSubset");
    if !default.is_empty() && !subsets.contains(default) {
        out.push(refused(
            "$.resolver.DefaultSubset".into(),
            format!("{default:?} is not one of Subsets"),
            format!("DefaultSubset {default:?} is not a valid subset"),
        ));
    }
    if let Some(redirect) = obj(res, "Redirect") {
        let failover = obj(res, "Failover").is_some_and(|f| !f.is_empty());
        redirect_rules(redirect, failover, own, &subsets, out);
    }
    if let Some(failover) = obj(res, "Failover") {
        for (key, f) in failover {
            if let Value::Object(f) = f {
                failover_rules(key, f, own, &subsets, out);
            }
        }
    }
}

fn redirect_rules(
    r: &Map<String, Value>,
    with_failover: bool,
    own: &str,
    subsets: &BTreeSet<&str>,
    out: &mut Vec<Violation>,
) {
    let path = "$.resolver.Redirect";
    let [service, subset, namespace, dc] =
        ["Service", "ServiceSubset", "Namespace", "Datacenter"].map(|k| text(r, k));
    if with_failover {
        let what = "a resolver with a Redirect cannot have a Failover";
        out.push(refused(
            path.into(),
            what,
            "Redirect and Failover cannot both be set",
        ));
    }
    if [service, subset, namespace, dc]
        .iter()
        .all(|s| s.is_empty())
    {
        let what = "a Redirect needs Service, ServiceSubset, Namespace or Datacenter";
        out.push(refused(path.into(), what, "Redirect is empty"));
    }
    if service.is_empty() {
        for (key, value) in [("ServiceSubset", subset), ("Namespace", namespace)] {
            if !value.is_empty() {
                out.push(refused(
                    at(path, key),
                    format!("Redirect.{key} needs Redirect.Service"),
                    format!("Redirect.{key} defined without Redirect.Service"),
                ));
            }
        }
    } else if service == own && !subset.is_empty() && !subsets.contains(subset) {
        out.push(refused(
            at(path, "ServiceSubset"),
            format!("{subset:?} is not one of Subsets"),
            format!("Redirect.ServiceSubset {subset:?} is not a valid subset of {service:?}"),
        ));
    }
}

fn failover_rules(
    key: &str,
    f: &Map<String, Value>,
    own: &str,
    subsets: &BTreeSet<&str>,
    out: &mut Vec<Violation>,
) {
    let path = at("$.resolver.Failover", key);
    let [service, subset, namespace] =
        ["Service", "ServiceSubset", "Namespace"].map(|k| text(f, k));
    let dcs = array(f, "Datacenters");
    if key != "*" && !subsets.contains(key) {
        out.push(refused(
            path.clone(),
            format!("the key {key:?} is neither \"*\" nor one of Subsets"),
            format!("Bad Failover[{key:?}]: not a valid subset"),
        ));
    }
    if service.is_empty() && subset.is_empty() && namespace.is_empty() && dcs.is_empty() {
        out.push(refused(
            path.clone(),
            "a Failover needs Service, ServiceSubset, Namespace or Datacenters",
            format!("Bad Failover[{key:?}] one of Service, ServiceSubset, Namespace, or Datacenters is required"),
        ));
    }
    if !subset.is_empty() && (service.is_empty() || service == own) && !subsets.contains(subset) {
        out.push(refused(
            at(&path, "ServiceSubset"),
            format!("{subset:?} is not one of Subsets"),
            format!("Bad Failover[{key:?}].ServiceSubset {subset:?} is not a valid subset of {service:?}"),
        ));
    }
    if dcs.iter().any(|d| d.as_str() == Some("")) {
        out.push(refused(
            at(&path, "Datacenters"),
            "a datacenter name is empty",
            format!("Bad Failover[{key:?}].Datacenters: found empty datacenter"),
        ));
    }
}

// ---------------------------------------------------------------------------------------
// service-splitter Validate() (1.8), plus two rules of svc-handler's own.

/// Consul keeps a weight to two decimal places (it scales by 100 and rounds).
fn scaled_weight(w: f64) -> i64 {
    (w * 100.0).round() as i64
}

/// The splitter's own rules. Consul 1.8 refuses no splits, a destination
/// named twice and weights that do not sum to 100 (to 0.01). svc-handler also
/// refuses a weight outside 0..=100 (Consul 1.8.7 accepts 110 and -10, which
/// Envoy cannot use) and one with more than two decimals (Consul would store
/// 33.333 as 33.33, and the entry could never read back as written).
pub(crate) fn splitter_rules(
    splitter: &Map<String, Value>,
    id: &ServiceId,
    out: &mut Vec<Violation>,
) {
    let splits = array(splitter, "Splits");
    if splits.is_empty() {
        let what = "a splitter needs at least one split";
        out.push(refused(
            "$.splitter.Splits".into(),
            what,
            "no splits configured",
        ));
        return;
    }
    let mut seen = BTreeSet::new();
    let mut sum = 0;
    for (i, split) in splits.iter().enumerate() {
        let Value::Object(split) = split else {
            continue;
        };
        let path = format!("$.splitter.Splits[{i}]");
        let weight = split.get("Weight").and_then(Value::as_f64).unwrap_or(0.0);
        sum += scaled_weight(weight);
        weight_rules(weight, &path, out);
        let or = |key: &str, default: &str| -> String {
            Some(text(split, key))
                .filter(|s| !s.is_empty())
                .unwrap_or(default)
                .to_string()
        };
        let service = or("Service", &id.name);
        let subset = text(split, "ServiceSubset").to_string();
        let namespace = or("Namespace", &id.namespace);
        if !seen.insert((service.clone(), subset.clone(), namespace.clone())) {
            out.push(refused(
                path,
                format!("this split repeats an earlier one's destination (service {service:?}, subset {subset:?}, namespace {namespace:?})"),
                format!("split destination occurs more than once: service={service:?}, subset={subset:?}"),
            ));
        }
    }
    if sum != 10_000 {
        let total = sum as f64 / 100.0;
        out.push(refused(
            "$.splitter.Splits".into(),
            format!("the weights sum to {total}, not 100"),
            format!("the sum of all split weights must be 100, not {total:.6}"),
        ));
    }
}

fn weight_rules(weight: f64, path: &str, out: &mut Vec<Violation>) {
    let at_weight = format!("{path}.Weight");
    if !(0.0..=100.0).contains(&weight) {
        out.push(Violation {
            path: at_weight,
            message: format!("a weight is a percentage from 0 to 100, found {weight}"),
        });
    } else if ((weight * 100.0) - scaled_weight(weight) as f64).abs() > 1e-6 {
        let stored = scaled_weight(weight) as f64 / 100.0;
        out.push(Violation {
            path: at_weight,
            message: format!("a weight has at most two decimal places ({weight} would be stored by Consul as {stored})"),
        });
    }
}

// ---------------------------------------------------------------------------------------
// service-router Validate() (1.8). Consul 1.8.7 accepts any method name (only
// a repeated one is refused) and has no RetryOn (refused as an unknown field).

/// The router's own rules, route by route.
pub(crate) fn router_rules(router: &Map<String, Value>, out: &mut Vec<Violation>) {
    for (i, route) in array(router, "Routes").iter().enumerate() {
        if let Value::Object(route) = route {
            route_rules(route, i, out);
        }
    }
}

fn route_rules(route: &Map<String, Value>, i: usize, out: &mut Vec<Violation>) {
    let path = format!("$.router.Routes[{i}]");
    let mut rewrite_ok = false;
    if let Some(http) = obj(route, "Match").and_then(|m| obj(m, "HTTP")) {
        let hpath = format!("{path}.Match.HTTP");
        let mut parts = 0;
        for key in ["PathExact", "PathPrefix", "PathRegex"] {
            let value = text(http, key);
            if value.is_empty() {
                continue;
            }
            parts += 1;
            if key == "PathRegex" {
                continue;
            }
            rewrite_ok = true;
            if !value.starts_with('/') {
                out.push(refused(
                    at(&hpath, key),
                    format!("{key} must start with \"/\""),
                    format!("Route[{i}] {key} doesn't start with '/': {value:?}"),
                ));
            }
        }
        if parts > 1 {
            out.push(refused(
                hpath.clone(),
                "at most one of PathExact, PathPrefix and PathRegex",
                format!("Route[{i}] should only contain at most one of PathExact, PathPrefix, or PathRegex"),
            ));
        }
        match_list_rules(http, &hpath, i, out);
        methods_rule(http, &hpath, i, out);
    }
    let rewrite = obj(route, "Destination").map_or("", |d| text(d, "PrefixRewrite"));
    if !rewrite.is_empty() && !rewrite_ok {
        out.push(refused(
            format!("{path}.Destination.PrefixRewrite"),
            "PrefixRewrite needs a PathExact or PathPrefix match",
            format!("Route[{i}] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix"),
        ));
    }
}

/// Header and QueryParam matches: a Name, and exactly one way to match.
fn match_list_rules(http: &Map<String, Value>, hpath: &str, i: usize, out: &mut Vec<Violation>) {
    let lists: [(&str, &[&str], &str); 2] = [
        (
            "Header",
            &["Exact", "Prefix", "Suffix", "Regex"],
            "Present, Exact, Prefix, Suffix, or Regex",
        ),
        (
            "QueryParam",
            &["Exact", "Regex"],
            "Present, Exact, or Regex",
        ),
    ];
    for (list, ways, names) in lists {
        for (j, m) in array(http, list).iter().enumerate() {
            let Value::Object(m) = m else { continue };
            let path = format!("{hpath}.{list}[{j}]");
            if text(m, "Name").is_empty() {
                out.push(refused(
                    path.clone(),
                    "a Name is needed",
                    format!("Route[{i}] {list}[{j}] missing required Name field"),
                ));
            }
            let present = m.get("Present").and_then(Value::as_bool).unwrap_or(false);
            let count =
                usize::from(present) + ways.iter().filter(|w| !text(m, w).is_empty()).count();
            if count != 1 {
                out.push(refused(
                    path,
                    format!("exactly one of {names} is needed, found {count}"),
                    format!("Route[{i}] {list}[{j}] should only contain one of {names}"),
                ));
            }
        }
    }
}

fn methods_rule(http: &Map<String, Value>, hpath: &str, i: usize, out: &mut Vec<Violation>) {
    let mut seen = BTreeSet::new();
    for (j, m) in array(http, "Methods").iter().enumerate() {
        let Some(m) = m.as_str() else { continue };
        let upper = m.to_ascii_uppercase();
        if !seen.insert(upper.clone()) {
            out.push(refused(
                format!("{hpath}.Methods[{j}]"),
                format!("{upper:?} is listed twice"),
                format!("Route[{i}] Methods contains {upper:?} more than once"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The discovery chain, walked as Consul's compiler walks it.

/// One node of the chain: a service, a subset of it, a datacenter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    service: String,
    subset: String,
    dc: String,
}

/// A target with where base.json named its service and its subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hop {
    target: Target,
    service_at: String,
    subset_at: String,
}

impl Hop {
    /// Consul's `rewriteTarget`: another service drops the subset; a named
    /// subset or datacenter replaces the current one. `from` is the path of
    /// the object holding `Service`/`ServiceSubset`.
    fn rewrite(&self, from: &str, service: &str, subset: &str, dc: &str) -> Hop {
        let mut next = self.clone();
        if !service.is_empty() && service != next.target.service {
            next.target.service = service.to_string();
            next.target.subset.clear();
            next.service_at = at(from, "Service");
            next.subset_at = at(from, "ServiceSubset");
        }
        if !subset.is_empty() {
            next.target.subset = subset.to_string();
            next.subset_at = at(from, "ServiceSubset");
        }
        if !dc.is_empty() {
            next.target.dc = dc.to_string();
        }
        next
    }
}

struct Walk<'a> {
    spec: &'a Spec,
    id: &'a ServiceId,
    others: Option<&'a Others>,
    /// The chain's protocol (the service's own), when known.
    protocol: Option<String>,
    seen: BTreeSet<Hop>,
    needs: Needs,
    found: Vec<Violation>,
}

impl<'a> Walk<'a> {
    fn new(spec: &'a Spec, id: &'a ServiceId, others: Option<&'a Others>) -> Walk<'a> {
        let protocol = match (&spec.defaults, others) {
            (Some(d), _) => Some(normalize(text(d, "Protocol"))),
            (None, Some(o)) => Some(o.protocol_of(&id.name)),
            (None, None) => None,
        };
        Walk {
            spec,
            id,
            others,
            protocol,
            seen: BTreeSet::new(),
            needs: Needs::default(),
            found: Vec::new(),
        }
    }

    /// A reference in another namespace: out of scope, skipped.
    fn elsewhere(&self, map: &Map<String, Value>) -> bool {
        let ns = text(map, "Namespace");
        !ns.is_empty() && ns != self.id.namespace
    }

    fn start(&self) -> Hop {
        Hop {
            target: Target {
                service: self.id.name.clone(),
                subset: String::new(),
                dc: String::new(),
            },
            service_at: "$".into(),
            subset_at: "$".into(),
        }
    }

    /// The router's destinations, then its catch-all (or, without a router,
    /// the service itself).
    fn run(&mut self) {
        let start = self.start();
        if self.spec.splitter.is_some() {
            self.http_needed("$.splitter", "service-splitter");
        }
        if let Some(router) = self.spec.router.as_ref() {
            self.http_needed("$.router", "service-router");
            for (i, route) in array(router, "Routes").iter().enumerate() {
                let from = format!("$.router.Routes[{i}].Destination");
                let Some(dest) = route.as_object().and_then(|r| obj(r, "Destination")) else {
                    continue;
                };
                if self.elsewhere(dest) {
                    continue;
                }
                let hop = start.rewrite(
                    &from,
                    text(dest, "Service"),
                    text(dest, "ServiceSubset"),
                    "",
                );
                self.enter(hop);
            }
        }
        self.enter(start);
    }

    /// A router or splitter (`what`, at `path`) needs an HTTP-like protocol.
    fn http_needed(&mut self, path: &str, what: &str) {
        let Some(p) = self.protocol.clone() else {
            return;
        };
        if !http_like(&p) {
            let name = &self.id.name;
            self.found.push(refused(
                path.into(),
                format!("a {what} needs protocol http, http2 or grpc; {name:?} has {p:?}"),
                format!("discovery chain {name:?} uses a protocol {p:?} that does not permit advanced routing or splitting behavior"),
            ));
        }
    }

    /// Consul's `getSplitterOrResolverNode`: this service reached without a
    /// subset goes through its splitter, when base.json has one.
    fn enter(&mut self, hop: Hop) {
        let own_whole = hop.target.service == self.id.name && hop.target.subset.is_empty();
        let Some(splitter) = self.spec.splitter.as_ref().filter(|_| own_whole) else {
            return self.visit(hop);
        };
        for (i, split) in array(splitter, "Splits").iter().enumerate() {
            let Some(split) = split.as_object() else {
                continue;
            };
            if self.elsewhere(split) {
                continue;
            }
            let from = format!("$.splitter.Splits[{i}]");
            let service = text(split, "Service");
            let next = hop.rewrite(&from, service, text(split, "ServiceSubset"), "");
            self.visit(next);
        }
    }

    fn visit(&mut self, hop: Hop) {
        if !self.seen.insert(hop.clone()) {
            return;
        }
        if hop.target.service == self.id.name {
            self.visit_own(hop);
        } else {
            self.visit_other(&hop);
        }
    }

    /// Another service: its protocol, and the subset named on it.
    fn visit_other(&mut self, hop: &Hop) {
        let service = &hop.target.service;
        self.needs.defaults.insert(service.clone());
        let others = self.others;
        if let (Some(o), Some(chain)) = (others, self.protocol.clone()) {
            let p = o.protocol_of(service);
            if p != chain {
                let name = &self.id.name;
                self.found.push(refused(
                    hop.service_at.clone(),
                    format!("{service:?} has protocol {p:?}, {name:?} has {chain:?}; a discovery chain needs one protocol"),
                    format!("discovery chain {name:?} uses inconsistent protocols; service {service:?} has {p:?} which is not {chain:?}"),
                ));
            }
        }
        let subset = &hop.target.subset;
        if subset.is_empty() {
            return;
        }
        self.needs.resolvers.insert(service.clone());
        let Some(o) = others else { return };
        let exists = o.subsets.get(service).is_some_and(|s| s.contains(subset));
        if !exists && !o.redirected.contains(service) {
            self.found.push(missing_subset(
                hop,
                "its service-resolver has no such subset",
            ));
        }
    }

    /// The service itself: its resolver's redirect, default subset, subset
    /// and the failover of the subset reached.
    fn visit_own(&mut self, mut hop: Hop) {
        let Some(res) = self.spec.resolver.as_ref() else {
            if !hop.target.subset.is_empty() {
                self.found
                    .push(missing_subset(&hop, "base.json has no resolver"));
            }
            return;
        };
        if let Some(r) = obj(res, "Redirect") {
            if self.elsewhere(r) {
                return;
            }
            let from = "$.resolver.Redirect";
            let next = hop.rewrite(
                from,
                text(r, "Service"),
                text(r, "ServiceSubset"),
                text(r, "Datacenter"),
            );
            // Consul resolves the redirected target again; a target the
            // redirect leaves as it is goes on to this resolver's subsets.
            if next.target != hop.target {
                self.visit(next);
                return;
            }
        }
        let subsets = subset_names(res);
        if hop.target.subset.is_empty() {
            let default = text(res, "DefaultSubset");
            if !default.is_empty() && !subsets.contains(default) {
                return; // refused by the resolver's own rules
            }
            hop.target.subset = default.to_string();
            hop.subset_at = "$.resolver.DefaultSubset".into();
        }
        if !hop.target.subset.is_empty() && !subsets.contains(hop.target.subset.as_str()) {
            self.found
                .push(missing_subset(&hop, "it is not one of $.resolver.Subsets"));
            return;
        }
        self.failover(res, &hop);
    }

    /// Consul fails over with the entry of the subset reached, else `*`.
    fn failover(&mut self, res: &Map<String, Value>, hop: &Hop) {
        let Some(failover) = obj(res, "Failover") else {
            return;
        };
        let key = if failover.contains_key(&hop.target.subset) {
            hop.target.subset.as_str()
        } else {
            "*"
        };
        let Some(f) = obj(failover, key) else { return };
        if self.elsewhere(f) {
            return;
        }
        let from = at("$.resolver.Failover", key);
        let dcs: Vec<&str> = array(f, "Datacenters")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let dcs = if dcs.is_empty() { vec![""] } else { dcs };
        for dc in dcs {
            let next = hop.rewrite(&from, text(f, "Service"), text(f, "ServiceSubset"), dc);
            if next.target != hop.target {
                self.visit(next);
            }
        }
    }
}

fn missing_subset(hop: &Hop, why: &str) -> Violation {
    let Target {
        service, subset, ..
    } = &hop.target;
    refused(
        hop.subset_at.clone(),
        format!("service {service:?} has no subset {subset:?} ({why})"),
        format!("service {service:?} does not have a subset named {subset:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Spec {
        crate::spec::parse(v.to_string().as_bytes()).unwrap()
    }

    fn api() -> ServiceId {
        ServiceId::new("default", "default", "api").unwrap()
    }

    fn others(protocols: &[(&str, &str)], subsets: &[(&str, &[&str])]) -> Others {
        Others {
            protocols: protocols
                .iter()
                .map(|(s, p)| (s.to_string(), p.to_string()))
                .collect(),
            subsets: subsets
                .iter()
                .map(|(s, n)| (s.to_string(), n.iter().map(|x| x.to_string()).collect()))
                .collect(),
            ..Others::default()
        }
    }

    fn paths(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.path.as_str()).collect()
    }

    /// Checks `body` with `o`, and returns the paths of the violations.
    fn at_with(body: Value, o: &Others) -> Vec<String> {
        check(&spec(body), &api(), o)
            .into_iter()
            .map(|v| v.path)
            .collect()
    }

    fn offline(body: Value) -> Vec<Violation> {
        check_offline(&spec(body), &api())
    }

    fn router_to(dest: Value) -> Value {
        json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [{"Destination": dest}]}})
    }

    fn split(splits: Value) -> Value {
        json!({
            "defaults": {"Protocol": "http"},
            "resolver": {"Subsets": {"v1": {"Filter": "x"}, "v2": {"Filter": "y"}}},
            "splitter": {"Splits": splits}
        })
    }

    #[test]
    fn splitter_weights_sum_to_100_to_a_hundredth() {
        let ok = split(
            json!([{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]),
        );
        assert!(offline(ok).is_empty());
        let thirds = split(
            json!([{"Weight": 33.33, "ServiceSubset": "v1"}, {"Weight": 66.67, "ServiceSubset": "v2"}]),
        );
        assert!(offline(thirds).is_empty());
        let v = offline(split(
            json!([{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 5, "ServiceSubset": "v2"}]),
        ));
        assert_eq!(paths(&v), ["$.splitter.Splits"]);
        assert!(
            v[0].message
                .ends_with("the sum of all split weights must be 100, not 95.000000"),
            "{}",
            v[0].message
        );
        assert!(
            v[0].message.starts_with("the weights sum to 95, not 100"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn splitter_weight_out_of_range_or_too_precise() {
        let v = offline(split(
            json!([{"Weight": 110, "ServiceSubset": "v1"}, {"Weight": -10, "ServiceSubset": "v2"}]),
        ));
        assert_eq!(
            paths(&v),
            ["$.splitter.Splits[0].Weight", "$.splitter.Splits[1].Weight"]
        );
        let v = offline(split(
            json!([{"Weight": 33.333, "ServiceSubset": "v1"}, {"Weight": 66.667, "ServiceSubset": "v2"}]),
        ));
        assert_eq!(
            paths(&v),
            ["$.splitter.Splits[0].Weight", "$.splitter.Splits[1].Weight"]
        );
        assert!(
            v[0].message.contains("would be stored by Consul as 33.33"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn splitter_needs_splits_and_distinct_destinations() {
        let v = offline(split(json!([])));
        assert_eq!(paths(&v), ["$.splitter.Splits"]);
        assert!(v[0].message.ends_with("no splits configured"), "{}", v[0]);
        // "" is the splitter's own service: these two are the same place.
        let v = offline(split(json!([
            {"Weight": 50, "ServiceSubset": "v1"},
            {"Weight": 50, "Service": "api", "ServiceSubset": "v1"}
        ])));
        assert_eq!(paths(&v), ["$.splitter.Splits[1]"]);
        assert!(
            v[0].message
                .contains("split destination occurs more than once"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn splitter_subsets_must_exist_here_and_there() {
        let v = offline(split(
            json!([{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v3"}]),
        ));
        assert_eq!(paths(&v), ["$.splitter.Splits[1].ServiceSubset"]);
        assert!(
            v[0].message.contains("does not have a subset named \"v3\""),
            "{}",
            v[0]
        );
        // Another service's subset needs its resolver, read from Consul.
        let body = split(
            json!([{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "Service": "web", "ServiceSubset": "canary"}]),
        );
        assert!(offline(body.clone()).is_empty());
        let needs = needs(&spec(body.clone()), &api());
        assert!(
            needs.resolvers.contains("web") && needs.defaults.contains("web"),
            "{needs:?}"
        );
        let has = others(&[("web", "http")], &[("web", &["canary"])]);
        assert!(at_with(body.clone(), &has).is_empty());
        let lacks = others(&[("web", "http")], &[("web", &["v1"])]);
        assert_eq!(
            at_with(body.clone(), &lacks),
            ["$.splitter.Splits[1].ServiceSubset"]
        );
        let tcp = others(&[("web", "tcp")], &[("web", &["canary"])]);
        assert_eq!(at_with(body, &tcp), ["$.splitter.Splits[1].Service"]);
    }

    #[test]
    fn splitter_needs_an_http_protocol() {
        let v = offline(
            json!({"defaults": {"Protocol": "tcp"}, "splitter": {"Splits": [{"Weight": 100}]}}),
        );
        assert_eq!(paths(&v), ["$.splitter"]);
        assert!(
            v[0].message
                .contains("a service-splitter needs protocol http, http2 or grpc"),
            "{}",
            v[0]
        );
        // Without defaults, the protocol comes from Consul.
        let body = json!({"splitter": {"Splits": [{"Weight": 100}]}});
        assert!(needs(&spec(body.clone()), &api()).proxy_defaults);
        assert_eq!(at_with(body, &Others::default()), ["$.splitter"]);
    }

    #[test]
    fn a_route_without_subset_goes_through_the_splitter() {
        let mut body = split(json!([{"Weight": 100, "ServiceSubset": "v9"}]));
        body["router"] = json!({"Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {"ServiceSubset": "v2"}}
        ]});
        // v9 is reached through the splitter (by the catch-all); the route
        // naming v2 goes to the resolver directly.
        assert_eq!(
            paths(&offline(body)),
            ["$.splitter.Splits[0].ServiceSubset"]
        );
    }

    #[test]
    fn router_on_tcp_from_defaults_refused() {
        let v = offline(json!({"defaults": {"Protocol": "tcp"}, "router": {"Routes": []}}));
        assert_eq!(paths(&v), ["$.router"]);
        assert!(v[0].message.contains(
            "discovery chain \"api\" uses a protocol \"tcp\" that does not permit advanced routing"
        ));
        assert!(offline(json!({"defaults": {"Protocol": "grpc"}, "router": {}})).is_empty());
    }

    #[test]
    fn defaults_without_protocol_is_tcp_even_with_global_http() {
        let o = Others {
            global_protocol: Some("http".into()),
            ..Others::default()
        };
        let body = json!({"defaults": {}, "router": {"Routes": []}});
        assert_eq!(at_with(body.clone(), &o), ["$.router"]);
        assert_eq!(paths(&offline(body)), ["$.router"]);
    }

    #[test]
    fn protocol_from_global_then_tcp_when_no_defaults() {
        let body = json!({"router": {"Routes": []}});
        let mut o = Others::default();
        o.set_proxy_defaults(Some(&json!({"Config": {"Protocol": "HTTP"}})));
        assert!(at_with(body.clone(), &o).is_empty());
        assert_eq!(at_with(body.clone(), &Others::default()), ["$.router"]);
        // Offline, without defaults, the protocol is unknown: skipped.
        assert!(offline(body.clone()).is_empty());
        // The caller may say that the service's own defaults stay in Consul.
        let o = others(&[("api", "http")], &[]);
        assert!(at_with(body, &o).is_empty());
    }

    #[test]
    fn destination_protocol_must_match_exactly() {
        let body = router_to(json!({"Service": "web"}));
        let v = check(
            &spec(body.clone()),
            &api(),
            &others(&[("web", "http2")], &[]),
        );
        assert_eq!(paths(&v), ["$.router.Routes[0].Destination.Service"]);
        assert!(v[0].message.ends_with(
            "discovery chain \"api\" uses inconsistent protocols; service \"web\" has \"http2\" which is not \"http\""
        ));
        assert!(at_with(body.clone(), &others(&[("web", "http")], &[])).is_empty());
        assert!(offline(body).is_empty());
    }

    #[test]
    fn destination_protocol_from_global_or_tcp() {
        let body = router_to(json!({"Service": "web"}));
        assert_eq!(
            at_with(body.clone(), &Others::default()),
            ["$.router.Routes[0].Destination.Service"]
        );
        let mut o = Others {
            global_protocol: Some("http".into()),
            ..Others::default()
        };
        assert!(at_with(body.clone(), &o).is_empty());
        // A service-defaults without Protocol: tcp, whatever the global says.
        o.add_defaults("web", Some(&json!({"Kind": "service-defaults"})));
        assert_eq!(
            at_with(body, &o),
            ["$.router.Routes[0].Destination.Service"]
        );
    }

    #[test]
    fn own_subset_from_own_resolver() {
        let mut body = router_to(json!({"ServiceSubset": "v2"}));
        let v = offline(body.clone());
        assert_eq!(paths(&v), ["$.router.Routes[0].Destination.ServiceSubset"]);
        assert!(v[0]
            .message
            .ends_with("service \"api\" does not have a subset named \"v2\""));
        body["resolver"] = json!({"Subsets": {"v1": {}}});
        assert_eq!(
            paths(&offline(body.clone())),
            ["$.router.Routes[0].Destination.ServiceSubset"]
        );
        body["resolver"] = json!({"Subsets": {"v2": {}}});
        assert!(offline(body).is_empty());
    }

    #[test]
    fn own_subset_named_with_own_service_name() {
        let body = router_to(json!({"Service": "api", "ServiceSubset": "v2"}));
        assert_eq!(
            paths(&offline(body)),
            ["$.router.Routes[0].Destination.ServiceSubset"]
        );
    }

    #[test]
    fn other_subset_from_others() {
        let body = router_to(json!({"Service": "web", "ServiceSubset": "v2"}));
        let o = others(&[("web", "http")], &[("web", &["v1"])]);
        assert_eq!(
            at_with(body.clone(), &o),
            ["$.router.Routes[0].Destination.ServiceSubset"]
        );
        let o = others(&[("web", "http")], &[]);
        assert_eq!(
            at_with(body.clone(), &o),
            ["$.router.Routes[0].Destination.ServiceSubset"]
        );
        let o = others(&[("web", "http")], &[("web", &["v1", "v2"])]);
        assert!(at_with(body.clone(), &o).is_empty());
        assert!(offline(body).is_empty());
    }

    #[test]
    fn other_resolver_with_redirect_skips_subset_check() {
        let body = router_to(json!({"Service": "web", "ServiceSubset": "v2"}));
        let mut o = others(&[("web", "http")], &[]);
        o.add_resolver("web", Some(&json!({"Redirect": {"Service": "db"}})));
        assert!(at_with(body, &o).is_empty());
    }

    #[test]
    fn default_subset_must_exist_reported_once() {
        let v = offline(json!({"resolver": {"DefaultSubset": "v1"}}));
        assert_eq!(paths(&v), ["$.resolver.DefaultSubset"]);
        assert!(v[0]
            .message
            .ends_with("DefaultSubset \"v1\" is not a valid subset"));
        assert!(
            offline(json!({"resolver": {"DefaultSubset": "v1", "Subsets": {"v1": {}}}})).is_empty()
        );
    }

    #[test]
    fn redirect_with_failover_refused_but_with_subsets_accepted() {
        let v = offline(
            json!({"resolver": {"Redirect": {"Service": "db"}, "Failover": {"*": {"Service": "x"}}}}),
        );
        assert_eq!(paths(&v), ["$.resolver.Redirect"]);
        assert!(v[0]
            .message
            .ends_with("Redirect and Failover cannot both be set"));
        // Consul 1.8.7 accepts Redirect with Subsets and DefaultSubset.
        let body = json!({"resolver": {"Redirect": {"Service": "db"}, "Subsets": {"v1": {}}, "DefaultSubset": "v1"}});
        assert!(offline(body).is_empty());
    }

    #[test]
    fn redirect_shape() {
        let v = offline(json!({"resolver": {"Redirect": {}}}));
        assert!(v[0].message.ends_with("Redirect is empty"));
        let v = offline(
            json!({"resolver": {"Redirect": {"ServiceSubset": "v1"}, "Subsets": {"v1": {}}}}),
        );
        assert_eq!(paths(&v), ["$.resolver.Redirect.ServiceSubset"]);
        assert!(v[0]
            .message
            .ends_with("Redirect.ServiceSubset defined without Redirect.Service"));
        let v = offline(json!({"resolver": {"Redirect": {"Namespace": "n"}}}));
        assert_eq!(paths(&v), ["$.resolver.Redirect.Namespace"]);
        assert!(offline(json!({"resolver": {"Redirect": {"Datacenter": "dc2"}}})).is_empty());
    }

    #[test]
    fn redirect_to_own_subset() {
        let v =
            offline(json!({"resolver": {"Redirect": {"Service": "api", "ServiceSubset": "v2"}}}));
        assert_eq!(paths(&v), ["$.resolver.Redirect.ServiceSubset"]);
        assert!(v[0]
            .message
            .ends_with("Redirect.ServiceSubset \"v2\" is not a valid subset of \"api\""));
        let ok = json!({"resolver": {"Redirect": {"Service": "api", "ServiceSubset": "v2"}, "Subsets": {"v2": {}}}});
        assert!(offline(ok).is_empty());
    }

    #[test]
    fn redirect_to_other_service() {
        let body = json!({"defaults": {"Protocol": "http"}, "resolver": {"Redirect": {"Service": "db", "ServiceSubset": "v2"}}});
        let n = needs(&spec(body.clone()), &api());
        assert_eq!(n.defaults, BTreeSet::from(["db".to_string()]));
        assert_eq!(n.resolvers, BTreeSet::from(["db".to_string()]));
        let o = others(&[("db", "http")], &[("db", &["v1"])]);
        assert_eq!(
            at_with(body.clone(), &o),
            ["$.resolver.Redirect.ServiceSubset"]
        );
        let o = others(&[("db", "tcp")], &[("db", &["v2"])]);
        assert_eq!(at_with(body.clone(), &o), ["$.resolver.Redirect.Service"]);
        let o = others(&[("db", "http")], &[("db", &["v2"])]);
        assert!(at_with(body, &o).is_empty());
    }

    #[test]
    fn failover_key_must_be_star_or_subset() {
        let v = offline(json!({"resolver": {"Failover": {"v1": {"Datacenters": ["dc2"]}}}}));
        assert_eq!(paths(&v), ["$.resolver.Failover.v1"]);
        assert!(v[0]
            .message
            .ends_with("Bad Failover[\"v1\"]: not a valid subset"));
        let ok = json!({"resolver": {"Subsets": {"v1": {}}, "Failover": {"v1": {"Datacenters": ["dc2"]}, "*": {"Datacenters": ["dc3"]}}}});
        assert!(offline(ok).is_empty());
    }

    #[test]
    fn failover_needs_a_target_and_named_datacenters() {
        let v = offline(json!({"resolver": {"Failover": {"*": {}}}}));
        assert_eq!(paths(&v), ["$.resolver.Failover[\"*\"]"]);
        assert!(v[0].message.ends_with(
            "Bad Failover[\"*\"] one of Service, ServiceSubset, Namespace, or Datacenters is required"
        ));
        let v = offline(json!({"resolver": {"Failover": {"*": {"Datacenters": ["dc2", ""]}}}}));
        assert_eq!(paths(&v), ["$.resolver.Failover[\"*\"].Datacenters"]);
    }

    #[test]
    fn failover_own_subset() {
        let v = offline(json!({"resolver": {"Failover": {"*": {"ServiceSubset": "v3"}}}}));
        assert_eq!(paths(&v), ["$.resolver.Failover[\"*\"].ServiceSubset"]);
        assert!(v[0]
            .message
            .ends_with("Bad Failover[\"*\"].ServiceSubset \"v3\" is not a valid subset of \"\""));
        let v = offline(
            json!({"resolver": {"Failover": {"*": {"Service": "api", "ServiceSubset": "v3"}}}}),
        );
        assert!(v[0].message.ends_with("is not a valid subset of \"api\""));
        let ok = json!({"resolver": {"Subsets": {"v3": {}}, "Failover": {"*": {"ServiceSubset": "v3"}}}});
        assert!(offline(ok).is_empty());
    }

    #[test]
    fn failover_other_subset_only_when_reached() {
        let reached = json!({"defaults": {"Protocol": "tcp"}, "resolver": {"Failover": {"*": {"Service": "db", "ServiceSubset": "v3"}}}});
        let o = others(&[("db", "tcp")], &[("db", &["v1"])]);
        assert_eq!(
            at_with(reached.clone(), &o),
            ["$.resolver.Failover[\"*\"].ServiceSubset"]
        );
        let o = others(&[("db", "tcp")], &[("db", &["v3"])]);
        assert!(at_with(reached, &o).is_empty());
        // Failover["v1"] is never reached: no router, no DefaultSubset.
        let unreached = json!({"defaults": {"Protocol": "tcp"}, "resolver": {"Subsets": {"v1": {}}, "Failover": {"v1": {"Service": "db", "ServiceSubset": "v3"}}}});
        let o = others(&[("db", "http")], &[]);
        assert!(at_with(unreached.clone(), &o).is_empty());
        // A DefaultSubset makes it reached.
        let mut body = unreached;
        body["resolver"]["DefaultSubset"] = json!("v1");
        let got = at_with(body, &o);
        assert_eq!(
            got,
            [
                "$.resolver.Failover.v1.Service",
                "$.resolver.Failover.v1.ServiceSubset"
            ]
        );
    }

    #[test]
    fn failover_protocol_and_datacenters() {
        let body = json!({"defaults": {"Protocol": "tcp"}, "resolver": {"Failover": {"*": {"Service": "web"}}}});
        let o = others(&[("web", "http")], &[]);
        assert_eq!(at_with(body, &o), ["$.resolver.Failover[\"*\"].Service"]);
        let dc_only = json!({"defaults": {"Protocol": "tcp"}, "resolver": {"Failover": {"*": {"Datacenters": ["dc2"]}}}});
        let n = needs(&spec(dc_only.clone()), &api());
        assert_eq!(n, Needs::default());
        assert!(at_with(dc_only, &Others::default()).is_empty());
    }

    #[test]
    fn subset_names() {
        let v = offline(json!({"resolver": {"Subsets": {"V_1": {}, "ok-1": {}, "-x": {}}}}));
        assert_eq!(
            paths(&v),
            ["$.resolver.Subsets[\"-x\"]", "$.resolver.Subsets.V_1"]
        );
        assert!(v[1]
            .message
            .contains("Subset \"V_1\" is invalid: must be 63 characters or fewer"));
        let long = "a".repeat(64);
        let v = offline(json!({"resolver": {"Subsets": {long.clone(): {}}}}));
        assert_eq!(v.len(), 1);
        assert!(valid_subset_name(&long[..63]));
    }

    #[test]
    fn paths_in_matches() {
        let route = |m: Value| json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [{"Match": {"HTTP": m}}]}});
        let v = offline(route(json!({"PathExact": "x"})));
        assert_eq!(paths(&v), ["$.router.Routes[0].Match.HTTP.PathExact"]);
        assert!(v[0]
            .message
            .ends_with("Route[0] PathExact doesn't start with '/': \"x\""));
        let v = offline(route(json!({"PathPrefix": "/a", "PathRegex": "b"})));
        assert_eq!(paths(&v), ["$.router.Routes[0].Match.HTTP"]);
        assert!(offline(route(json!({"PathPrefix": "/a"}))).is_empty());
    }

    #[test]
    fn header_and_query_matches() {
        let route = |m: Value| json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [{}, {"Match": {"HTTP": m}}]}});
        let h = "$.router.Routes[1].Match.HTTP.Header[0]";
        let v = offline(route(json!({"Header": [{"Name": "x"}]})));
        assert_eq!(paths(&v), [h]);
        assert!(v[0].message.ends_with(
            "Route[1] Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex"
        ));
        let v = offline(route(
            json!({"Header": [{"Name": "x", "Present": true, "Exact": "y"}]}),
        ));
        assert_eq!(paths(&v), [h]);
        let v = offline(route(json!({"Header": [{"Exact": "y"}]})));
        assert!(v[0]
            .message
            .ends_with("Route[1] Header[0] missing required Name field"));
        assert!(offline(route(
            json!({"Header": [{"Name": "x", "Present": true, "Invert": true}]})
        ))
        .is_empty());
        let v = offline(route(json!({"QueryParam": [{"Name": "q"}]})));
        assert!(v[0].message.ends_with(
            "Route[1] QueryParam[0] should only contain one of Present, Exact, or Regex"
        ));
        assert!(offline(route(
            json!({"QueryParam": [{"Name": "q", "Present": true}]})
        ))
        .is_empty());
    }

    #[test]
    fn methods_and_prefix_rewrite() {
        let body = |m: Value, d: Value| json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [{"Match": {"HTTP": m}, "Destination": d}]}});
        let v = offline(body(json!({"Methods": ["GET", "PUT", "GET"]}), json!({})));
        assert_eq!(paths(&v), ["$.router.Routes[0].Match.HTTP.Methods[2]"]);
        assert!(v[0]
            .message
            .ends_with("Route[0] Methods contains \"GET\" more than once"));
        // Consul 1.8.7 accepts a method it does not know.
        assert!(offline(body(json!({"Methods": ["FETCH"]}), json!({}))).is_empty());
        let v = offline(body(
            json!({"PathRegex": "/a"}),
            json!({"PrefixRewrite": "/b"}),
        ));
        assert_eq!(paths(&v), ["$.router.Routes[0].Destination.PrefixRewrite"]);
        let ok = body(json!({"PathExact": "/a"}), json!({"PrefixRewrite": "/b"}));
        assert!(offline(ok).is_empty());
    }

    #[test]
    fn needs_lists_reads() {
        let body = json!({
            "defaults": {"Protocol": "http"},
            "resolver": {"Subsets": {"v1": {}}, "DefaultSubset": "v1",
                         "Failover": {"v1": {"Service": "db", "ServiceSubset": "s"}}},
            "router": {"Routes": [
                {"Destination": {"Service": "web"}},
                {"Destination": {"Service": "web", "ServiceSubset": "v9"}},
                {"Destination": {"Service": "far", "Namespace": "other"}},
                {"Destination": {"ServiceSubset": "v1"}}
            ]}
        });
        let n = needs(&spec(body), &api());
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(n.defaults, set(&["db", "web"]));
        assert_eq!(n.resolvers, set(&["db", "web"]));
        assert!(n.proxy_defaults);
        let n = needs(
            &spec(json!({"defaults": {"Protocol": "http"}, "router": {}})),
            &api(),
        );
        assert_eq!(n, Needs::default());
        let n = needs(&spec(json!({"router": {}})), &api());
        assert!(n.proxy_defaults && n.defaults.is_empty());
        assert_eq!(needs(&spec(json!({})), &api()), Needs::default());
    }

    #[test]
    fn namespaced_references_skipped() {
        let body = router_to(json!({"Service": "web", "Namespace": "other", "ServiceSubset": "x"}));
        assert!(at_with(body.clone(), &Others::default()).is_empty());
        // Its own namespace, named: checked as usual.
        let body = router_to(json!({"Service": "web", "Namespace": "default"}));
        assert_eq!(
            at_with(body, &Others::default()),
            ["$.router.Routes[0].Destination.Service"]
        );
    }

    #[test]
    fn others_from_entries() {
        let mut o = Others::default();
        o.add_defaults("a", Some(&json!({"Protocol": "HTTP2"})));
        o.add_defaults("b", Some(&json!({})));
        o.add_defaults("c", None);
        o.add_resolver("a", Some(&json!({"Subsets": {"v1": {}, "v2": {}}})));
        o.add_resolver("c", None);
        o.set_proxy_defaults(Some(&json!({"Config": {"protocol": "grpc"}})));
        assert_eq!(o.protocol_of("a"), "http2");
        assert_eq!(o.protocol_of("b"), "tcp");
        assert_eq!(o.protocol_of("c"), "grpc");
        assert_eq!(o.subsets["a"].len(), 2);
        assert!(!o.subsets.contains_key("c") && o.redirected.is_empty());
        o.set_proxy_defaults(None);
        assert_eq!(o.protocol_of("c"), "tcp");
    }

    #[test]
    fn display_and_cycles() {
        let v = Violation {
            path: "$.router".into(),
            message: "m".into(),
        };
        assert_eq!(v.to_string(), "$.router: m");
        // A failover to a subset whose failover comes back ends.
        let body = json!({"defaults": {"Protocol": "http"}, "resolver": {
            "Subsets": {"a": {}, "b": {}}, "DefaultSubset": "a",
            "Failover": {"a": {"ServiceSubset": "b"}, "b": {"ServiceSubset": "a"}}}});
        assert!(offline(body).is_empty());
    }
}
