//! The fields of the config-entry bodies svc-handler writes: one table, in the code, from
//! which base.json is checked (`spec`) and its JSON Schema is built ([`schema`]).
//!
//! Consul decodes config-entry keys case-insensitively and accepts snake_case aliases at
//! every depth, but reads entries back in CamelCase. A body written with `"mode"` is stored
//! as `"Mode"`, so the read-back check would never pass. The table therefore holds each
//! field exactly as Consul stores and prints it, its type, and the Consul version that
//! introduced it; any other spelling, any unknown field and any field newer than the
//! target Consul version is refused before anything is written.
//!
//! How the versions were determined. The field lists come from Consul's own Go structs
//! (`agent/structs/config_entry.go`, `agent/structs/config_entry_discoverychain.go`,
//! `api/config_entry*.go`), read at several commits, and from the versioned documentation
//! pages (`developer.hashicorp.com/consul/docs/v1.N.x/connect/config-entries/...`). 1.8.0 is
//! the baseline: everything Consul 1.8 (the Debian 11 package, 1.8.7, seen by hand) knows.
//! - Certain (seen in a dated source or in the docs of that version and not the one
//!   before): resolver `LoadBalancer` 1.9.0 (absent from 1.8's api, present as a 1.9
//!   development struct); failover `Targets` 1.14.0 (consul PR 14162, merged 2022-08-15,
//!   after 1.13.0 was released on 2022-08-09, so 1.14, not 1.13); service-defaults
//!   `UpstreamConfig`, `Mode` and `TransparentProxy` 1.10.0 (the v1.10.x docs are the first
//!   to show them); `RateLimits`, `MutualTLSMode` 1.16.0 (v1.16.x docs, not v1.15.x).
//! - From release notes and pull requests as remembered, not re-read here (uncertain to a
//!   minor version): `RequestHeaders`/`ResponseHeaders` 1.9.0; `Partition` fields 1.11.0;
//!   `TransparentProxy.DialedDirectly` 1.11.0; `Destination`, `MaxInboundConnections`,
//!   `LocalConnectTimeoutMs`, `LocalRequestTimeoutMs`, `BalanceInboundConnections`,
//!   upstream `BalanceOutboundConnections` 1.13.0; route `RetryOn` 1.13.0; `Peer` fields
//!   1.14.0; route `IdleTimeout`, resolver `RequestTimeout`, `EnvoyExtensions` 1.15.0;
//!   passive health check `EnforcingConsecutive5xx` 1.13.0, `MaxEjectionPercent` and
//!   `BaseEjectionTime` 1.16.0; hash-policy cookie `Path` 1.9.0.
//!
//! Fields newer than the newest source read (resolver `SamenessGroup`, failover `Policy`,
//! `PrioritizeByLocality`, ...) are not in the table: they are refused as unknown until
//! someone adds them with their version.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

/// A Consul version: major, minor, patch (pre-release and build suffixes dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = String;

    /// `1.8.7`, `v1.8.7`, `1.15.2+ent`, `1.16.0-rc1`, `1.15` (patch 0).
    fn from_str(s: &str) -> Result<Version, String> {
        let bad =
            || format!("invalid Consul version {s:?}: expected MAJOR.MINOR[.PATCH], such as 1.8.7");
        let core = s.trim().strip_prefix(['v', 'V']).unwrap_or(s.trim());
        let core = core.split(['+', '-']).next().unwrap_or_default();
        let parts: Vec<&str> = core.split('.').collect();
        let num = |p: &str| -> Result<u64, String> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        match parts.as_slice() {
            [major, minor] => Ok(Version::new(num(major)?, num(minor)?, 0)),
            [major, minor, patch] => Ok(Version::new(num(major)?, num(minor)?, num(patch)?)),
            _ => Err(bad()),
        }
    }
}

/// What Consul 1.8 (the baseline) already knows.
pub const V1_8: Version = Version::new(1, 8, 0);
const V1_9: Version = Version::new(1, 9, 0);
const V1_10: Version = Version::new(1, 10, 0);
const V1_11: Version = Version::new(1, 11, 0);
const V1_13: Version = Version::new(1, 13, 0);
const V1_14: Version = Version::new(1, 14, 0);
const V1_15: Version = Version::new(1, 15, 0);
const V1_16: Version = Version::new(1, 16, 0);

/// The newest version the table knows: the default target.
pub const NEWEST: Version = V1_16;

/// The type of a field's value.
#[derive(Debug, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bool,
    /// A whole number.
    Int,
    /// Any number (split weights).
    Num,
    /// A Go duration string: "5s", "500ms".
    Duration,
    /// A ServiceDefaults protocol, lower case.
    Protocol,
    /// An HTTP method, upper case.
    Method,
    List(&'static Ty),
    /// An object with its own fields.
    Struct(&'static [Field]),
    /// An object whose keys are data (subset names, header names), values of one type.
    FreeMap(&'static Ty),
    /// Anything (free-form extension arguments).
    Any,
}

/// One field as Consul stores it.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    /// The name exactly as `consul config read` prints it.
    pub name: &'static str,
    pub ty: Ty,
    /// The Consul version that introduced it.
    pub since: Version,
}

const fn f(name: &'static str, ty: Ty, since: Version) -> Field {
    Field { name, ty, since }
}

use Ty::{Any, Bool, Duration, FreeMap, Int, List, Method, Num, Protocol, Str, Struct};

/// The config entries whose bodies base.json holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    ServiceDefaults,
    ServiceResolver,
    ServiceRouter,
    ServiceSplitter,
}

impl Body {
    pub const ALL: [Body; 4] = [
        Body::ServiceDefaults,
        Body::ServiceResolver,
        Body::ServiceRouter,
        Body::ServiceSplitter,
    ];

    /// The fields of the body (Kind, Name, Partition, Namespace, Meta and the indexes
    /// are not here: svc-handler and Consul set them).
    pub fn fields(self) -> &'static [Field] {
        match self {
            Body::ServiceDefaults => SERVICE_DEFAULTS,
            Body::ServiceResolver => SERVICE_RESOLVER,
            Body::ServiceRouter => SERVICE_ROUTER,
            Body::ServiceSplitter => SERVICE_SPLITTER,
        }
    }

    /// The config entry kind, as Consul names it.
    pub fn kind_name(self) -> &'static str {
        match self {
            Body::ServiceDefaults => "service-defaults",
            Body::ServiceResolver => "service-resolver",
            Body::ServiceRouter => "service-router",
            Body::ServiceSplitter => "service-splitter",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The table.

#[rustfmt::skip]
const MESH_GATEWAY: &[Field] = &[f("Mode", Str, V1_8)];

#[rustfmt::skip]
const EXPOSE: &[Field] = &[
    f("Checks", Bool, V1_8),
    f("Paths", List(&Struct(EXPOSE_PATH)), V1_8),
];

#[rustfmt::skip]
const EXPOSE_PATH: &[Field] = &[
    f("ListenerPort", Int, V1_8),
    f("Path", Str, V1_8),
    f("LocalPathPort", Int, V1_8),
    f("Protocol", Str, V1_8),
];

#[rustfmt::skip]
const TRANSPARENT_PROXY: &[Field] = &[
    f("OutboundListenerPort", Int, V1_10),
    f("DialedDirectly", Bool, V1_11),
];

#[rustfmt::skip]
const UPSTREAM_CONFIGURATION: &[Field] = &[
    f("Overrides", List(&Struct(UPSTREAM_CONFIG)), V1_10),
    f("Defaults", Struct(UPSTREAM_CONFIG), V1_10),
];

#[rustfmt::skip]
const UPSTREAM_CONFIG: &[Field] = &[
    f("Name", Str, V1_10),
    f("Namespace", Str, V1_10),
    f("Partition", Str, V1_11),
    f("Peer", Str, V1_14),
    f("EnvoyListenerJSON", Str, V1_10),
    f("EnvoyClusterJSON", Str, V1_10),
    f("Protocol", Str, V1_10),
    f("ConnectTimeoutMs", Int, V1_10),
    f("Limits", Struct(UPSTREAM_LIMITS), V1_10),
    f("PassiveHealthCheck", Struct(PASSIVE_HEALTH_CHECK), V1_10),
    f("MeshGateway", Struct(MESH_GATEWAY), V1_10),
    f("BalanceOutboundConnections", Str, V1_13),
];

#[rustfmt::skip]
const UPSTREAM_LIMITS: &[Field] = &[
    f("MaxConnections", Int, V1_10),
    f("MaxPendingRequests", Int, V1_10),
    f("MaxConcurrentRequests", Int, V1_10),
];

#[rustfmt::skip]
const PASSIVE_HEALTH_CHECK: &[Field] = &[
    f("Interval", Duration, V1_10),
    f("MaxFailures", Int, V1_10),
    f("EnforcingConsecutive5xx", Int, V1_13),
    f("MaxEjectionPercent", Int, V1_16),
    f("BaseEjectionTime", Duration, V1_16),
];

#[rustfmt::skip]
const DESTINATION_CONFIG: &[Field] = &[
    f("Addresses", List(&Str), V1_13),
    f("Port", Int, V1_13),
];

#[rustfmt::skip]
const ENVOY_EXTENSION: &[Field] = &[
    f("Name", Str, V1_15),
    f("Required", Bool, V1_15),
    f("Arguments", FreeMap(&Any), V1_15),
    f("ConsulVersion", Str, V1_15),
    f("EnvoyVersion", Str, V1_15),
];

#[rustfmt::skip]
const RATE_LIMITS: &[Field] = &[f("InstanceLevel", Struct(INSTANCE_LEVEL_RATE_LIMITS), V1_16)];

#[rustfmt::skip]
const INSTANCE_LEVEL_RATE_LIMITS: &[Field] = &[
    f("RequestsPerSecond", Int, V1_16),
    f("RequestsMaxBurst", Int, V1_16),
    f("Routes", List(&Struct(ROUTE_RATE_LIMITS)), V1_16),
];

#[rustfmt::skip]
const ROUTE_RATE_LIMITS: &[Field] = &[
    f("PathExact", Str, V1_16),
    f("PathPrefix", Str, V1_16),
    f("PathRegex", Str, V1_16),
    f("RequestsPerSecond", Int, V1_16),
    f("RequestsMaxBurst", Int, V1_16),
];

#[rustfmt::skip]
const SERVICE_DEFAULTS: &[Field] = &[
    f("Protocol", Protocol, V1_8),
    f("Mode", Str, V1_10),
    f("TransparentProxy", Struct(TRANSPARENT_PROXY), V1_10),
    f("MutualTLSMode", Str, V1_16),
    f("MeshGateway", Struct(MESH_GATEWAY), V1_8),
    f("Expose", Struct(EXPOSE), V1_8),
    f("ExternalSNI", Str, V1_8),
    f("UpstreamConfig", Struct(UPSTREAM_CONFIGURATION), V1_10),
    f("Destination", Struct(DESTINATION_CONFIG), V1_13),
    f("MaxInboundConnections", Int, V1_13),
    f("LocalConnectTimeoutMs", Int, V1_13),
    f("LocalRequestTimeoutMs", Int, V1_13),
    f("BalanceInboundConnections", Str, V1_13),
    f("RateLimits", Struct(RATE_LIMITS), V1_16),
    f("EnvoyExtensions", List(&Struct(ENVOY_EXTENSION)), V1_15),
];

#[rustfmt::skip]
const RESOLVER_SUBSET: &[Field] = &[
    f("Filter", Str, V1_8),
    f("OnlyPassing", Bool, V1_8),
];

#[rustfmt::skip]
const RESOLVER_REDIRECT: &[Field] = &[
    f("Service", Str, V1_8),
    f("ServiceSubset", Str, V1_8),
    f("Namespace", Str, V1_8),
    f("Partition", Str, V1_11),
    f("Datacenter", Str, V1_8),
    f("Peer", Str, V1_14),
];

#[rustfmt::skip]
const RESOLVER_FAILOVER: &[Field] = &[
    f("Service", Str, V1_8),
    f("ServiceSubset", Str, V1_8),
    f("Namespace", Str, V1_8),
    f("Datacenters", List(&Str), V1_8),
    f("Targets", List(&Struct(FAILOVER_TARGET)), V1_14),
];

#[rustfmt::skip]
const FAILOVER_TARGET: &[Field] = &[
    f("Service", Str, V1_14),
    f("ServiceSubset", Str, V1_14),
    f("Partition", Str, V1_14),
    f("Namespace", Str, V1_14),
    f("Datacenter", Str, V1_14),
    f("Peer", Str, V1_14),
];

#[rustfmt::skip]
const LOAD_BALANCER: &[Field] = &[
    f("Policy", Str, V1_9),
    f("RingHashConfig", Struct(RING_HASH_CONFIG), V1_9),
    f("LeastRequestConfig", Struct(LEAST_REQUEST_CONFIG), V1_9),
    f("HashPolicies", List(&Struct(HASH_POLICY)), V1_9),
];

#[rustfmt::skip]
const RING_HASH_CONFIG: &[Field] = &[
    f("MinimumRingSize", Int, V1_9),
    f("MaximumRingSize", Int, V1_9),
];

#[rustfmt::skip]
const LEAST_REQUEST_CONFIG: &[Field] = &[f("ChoiceCount", Int, V1_9)];

#[rustfmt::skip]
const HASH_POLICY: &[Field] = &[
    f("Field", Str, V1_9),
    f("FieldValue", Str, V1_9),
    f("CookieConfig", Struct(COOKIE_CONFIG), V1_9),
    f("SourceIP", Bool, V1_9),
    f("Terminal", Bool, V1_9),
];

#[rustfmt::skip]
const COOKIE_CONFIG: &[Field] = &[
    f("Session", Bool, V1_9),
    f("TTL", Duration, V1_9),
    f("Path", Str, V1_9),
];

#[rustfmt::skip]
const SERVICE_RESOLVER: &[Field] = &[
    f("DefaultSubset", Str, V1_8),
    f("Subsets", FreeMap(&Struct(RESOLVER_SUBSET)), V1_8),
    f("Redirect", Struct(RESOLVER_REDIRECT), V1_8),
    f("Failover", FreeMap(&Struct(RESOLVER_FAILOVER)), V1_8),
    f("ConnectTimeout", Duration, V1_8),
    f("RequestTimeout", Duration, V1_15),
    f("LoadBalancer", Struct(LOAD_BALANCER), V1_9),
];

#[rustfmt::skip]
const HEADER_MODIFIERS: &[Field] = &[
    f("Add", FreeMap(&Str), V1_9),
    f("Set", FreeMap(&Str), V1_9),
    f("Remove", List(&Str), V1_9),
];

#[rustfmt::skip]
const HTTP_MATCH_HEADER: &[Field] = &[
    f("Name", Str, V1_8),
    f("Present", Bool, V1_8),
    f("Exact", Str, V1_8),
    f("Prefix", Str, V1_8),
    f("Suffix", Str, V1_8),
    f("Regex", Str, V1_8),
    f("Invert", Bool, V1_8),
];

#[rustfmt::skip]
const HTTP_MATCH_QUERY_PARAM: &[Field] = &[
    f("Name", Str, V1_8),
    f("Present", Bool, V1_8),
    f("Exact", Str, V1_8),
    f("Regex", Str, V1_8),
];

#[rustfmt::skip]
const HTTP_MATCH: &[Field] = &[
    f("PathExact", Str, V1_8),
    f("PathPrefix", Str, V1_8),
    f("PathRegex", Str, V1_8),
    f("Header", List(&Struct(HTTP_MATCH_HEADER)), V1_8),
    f("QueryParam", List(&Struct(HTTP_MATCH_QUERY_PARAM)), V1_8),
    f("Methods", List(&Method), V1_8),
];

#[rustfmt::skip]
const ROUTE_MATCH: &[Field] = &[f("HTTP", Struct(HTTP_MATCH), V1_8)];

#[rustfmt::skip]
const ROUTE_DESTINATION: &[Field] = &[
    f("Service", Str, V1_8),
    f("ServiceSubset", Str, V1_8),
    f("Namespace", Str, V1_8),
    f("Partition", Str, V1_11),
    f("PrefixRewrite", Str, V1_8),
    f("RequestTimeout", Duration, V1_8),
    f("IdleTimeout", Duration, V1_15),
    f("NumRetries", Int, V1_8),
    f("RetryOnConnectFailure", Bool, V1_8),
    f("RetryOn", List(&Str), V1_13),
    f("RetryOnStatusCodes", List(&Int), V1_8),
    f("RequestHeaders", Struct(HEADER_MODIFIERS), V1_9),
    f("ResponseHeaders", Struct(HEADER_MODIFIERS), V1_9),
];

#[rustfmt::skip]
const ROUTE: &[Field] = &[
    f("Match", Struct(ROUTE_MATCH), V1_8),
    f("Destination", Struct(ROUTE_DESTINATION), V1_8),
];

#[rustfmt::skip]
const SERVICE_ROUTER: &[Field] = &[f("Routes", List(&Struct(ROUTE)), V1_8)];

#[rustfmt::skip]
const SPLIT: &[Field] = &[
    f("Weight", Num, V1_8),
    f("Service", Str, V1_8),
    f("ServiceSubset", Str, V1_8),
    f("Namespace", Str, V1_8),
    f("Partition", Str, V1_11),
    f("RequestHeaders", Struct(HEADER_MODIFIERS), V1_9),
    f("ResponseHeaders", Struct(HEADER_MODIFIERS), V1_9),
];

#[rustfmt::skip]
const SERVICE_SPLITTER: &[Field] = &[f("Splits", List(&Struct(SPLIT)), V1_8)];

// ---------------------------------------------------------------------------------------
// Looking names up.

/// A key folded the way Consul matches it: case and `_`/`-` ignored.
pub fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The field spelled exactly `key`.
pub fn lookup<'a>(fields: &'a [Field], key: &str) -> Option<&'a Field> {
    fields.iter().find(|f| f.name == key)
}

/// The field Consul would decode `key` into although it is spelled otherwise
/// (`mode`, `mesh_gateway`, `pathPrefix`).
pub fn respelled<'a>(fields: &'a [Field], key: &str) -> Option<&'a Field> {
    let folded = fold(key);
    fields
        .iter()
        .find(|f| f.name != key && fold(f.name) == folded)
}

/// The field `key` was probably meant to be, when one is close enough.
pub fn did_you_mean<'a>(fields: &'a [Field], key: &str) -> Option<&'a Field> {
    const CLOSE_ENOUGH: f64 = 0.85;
    let folded = fold(key);
    fields
        .iter()
        .map(|f| (f, strsim::jaro_winkler(&fold(f.name), &folded)))
        .filter(|(_, score)| *score >= CLOSE_ENOUGH)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(f, _)| f)
}

// ---------------------------------------------------------------------------------------
// The JSON Schema.

/// The JSON Schema (draft 2020-12) of base.json, built from the table. `svc-handler
/// schema` prints it; `schema/base.schema.json` is this, pretty-printed.
pub fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "svc-handler base.json",
        "description": "The desired state of one service, kept in Consul KV at <prefix>/desired/<partition>/<namespace>/<name>/base.json. Generated from svc-handler's table of Consul's fields (src/fields.rs), for the newest Consul version it knows; `svc-handler validate --consul-version` also refuses fields newer than a given Consul, and enforces the size (512 KiB) and nesting (64 levels) limits, refuses duplicate keys, and checks that durations fit Go's time.Duration.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "defaults": body_schema(Body::ServiceDefaults, "The body of the ServiceDefaults entry, in Consul's field names (as `consul config read` prints them)."),
            "resolver": body_schema(Body::ServiceResolver, "The body of the ServiceResolver entry."),
            "splitter": body_schema(Body::ServiceSplitter, "The body of the ServiceSplitter entry: weighted Splits (summing to 100) over subsets of this service or other services. Written between the resolver and the router; when absent, the splitter svc-handler owns is deleted."),
            "router": body_schema(Body::ServiceRouter, "The body of the ServiceRouter entry. When absent, the router svc-handler owns is deleted."),
            "terminating_gateway": tgw_schema(),
            "adopt": {
                "description": "true: take over entries that exist without svc-handler's ownership mark, unless that would drop fields base.json does not set (then conflict, naming them); \"replace\": take them over even so.",
                "anyOf": [{"type": ["boolean", "null"]}, {"const": "replace"}]
            }
        },
        "$defs": {
            "duration": {
                "description": "A Go duration: \"5s\", \"500ms\", \"1m30s\", \"0\".",
                "type": ["string", "null"],
                "pattern": "^([+-]?0|[+]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h))+)$"
            }
        }
    })
}

fn tgw_schema() -> Value {
    json!({
        "description": "This service's link in a terminating-gateway config entry. Gateway names the entry; the other fields form the link.",
        "type": ["object", "null"],
        "additionalProperties": false,
        "required": ["Gateway"],
        "properties": {
            "Gateway": {
                "type": "string",
                "pattern": "^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$"
            },
            "CAFile": { "type": ["string", "null"] },
            "CertFile": { "type": ["string", "null"] },
            "KeyFile": { "type": ["string", "null"] },
            "SNI": { "type": ["string", "null"] }
        }
    })
}

fn body_schema(body: Body, description: &str) -> Value {
    let mut s = struct_schema(body.fields());
    s["description"] = json!(format!(
        "{description} Kind, Name, Partition, Namespace and Meta are set by svc-handler; CreateIndex and ModifyIndex by Consul."
    ));
    s
}

fn struct_schema(fields: &[Field]) -> Value {
    let mut props = Map::new();
    for field in fields {
        let mut s = type_schema(&field.ty, true);
        if field.since > V1_8 {
            s["description"] = json!(format!("Consul {} or newer.", field.since));
        }
        props.insert(field.name.to_string(), s);
    }
    json!({
        "type": ["object", "null"],
        "additionalProperties": false,
        "properties": props
    })
}

/// The schema of one value; `nullable`: null is accepted too (a field's value; not an
/// item of a list or a value of a free map).
fn type_schema(ty: &Ty, nullable: bool) -> Value {
    let t = |name: &str| {
        if nullable {
            json!([name, "null"])
        } else {
            json!(name)
        }
    };
    let mut s = match ty {
        Str => json!({ "type": t("string") }),
        Bool => json!({ "type": t("boolean") }),
        Int => json!({ "type": t("integer") }),
        Num => json!({ "type": t("number") }),
        Duration => json!({ "$ref": "#/$defs/duration" }),
        Protocol => json!({
            "description": "Consul's protocols, in lower case as Consul stores them.",
            "enum": ["tcp", "http", "http2", "grpc", ""]
        }),
        Method => json!({
            "description": "Upper case, as Consul stores them.",
            "type": t("string"),
            "pattern": "^[^a-z]*$"
        }),
        List(item) => json!({ "type": t("array"), "items": type_schema(item, false) }),
        Struct(fields) => struct_schema(fields),
        FreeMap(value) => json!({
            "type": t("object"),
            "additionalProperties": type_schema(value, false)
        }),
        Any => json!({}),
    };
    if nullable && matches!(ty, Protocol) {
        s["enum"].as_array_mut().expect("an enum").push(Value::Null);
    }
    if !nullable && matches!(ty, Struct(_)) {
        s["type"] = json!("object");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of the table, with its JSON path from the body.
    fn walk(fields: &'static [Field], path: String, out: &mut Vec<(String, &'static Field)>) {
        for field in fields {
            let p = format!("{path}.{}", field.name);
            out.push((p.clone(), field));
            let mut ty = &field.ty;
            while let List(inner) | FreeMap(inner) = ty {
                ty = inner;
            }
            if let Struct(inner) = ty {
                walk(inner, p, out);
            }
        }
    }

    fn all() -> Vec<(String, &'static Field)> {
        let mut out = Vec::new();
        for body in Body::ALL {
            walk(body.fields(), body.kind_name().to_string(), &mut out);
        }
        out
    }

    #[test]
    fn names_are_camel_case_and_unique_per_struct() {
        for (path, field) in all() {
            assert!(
                field.name.starts_with(|c: char| c.is_ascii_uppercase()),
                "{path}"
            );
            assert!(!field.name.contains('_'), "{path}");
        }
        fn unique(fields: &[Field]) {
            let mut folded: Vec<String> = fields.iter().map(|f| fold(f.name)).collect();
            folded.sort();
            let n = folded.len();
            folded.dedup();
            assert_eq!(folded.len(), n, "two fields fold alike: {fields:?}");
        }
        for body in Body::ALL {
            unique(body.fields());
        }
    }

    #[test]
    fn forbidden_fields_are_not_in_the_table() {
        for body in Body::ALL {
            for name in [
                "Kind",
                "Name",
                "Partition",
                "Namespace",
                "Meta",
                "CreateIndex",
            ] {
                assert!(lookup(body.fields(), name).is_none(), "{name}");
            }
        }
    }

    #[test]
    fn newest_is_the_newest_in_the_table() {
        let max = all().iter().map(|(_, f)| f.since).max().unwrap();
        assert_eq!(max, NEWEST);
    }

    #[test]
    fn lookups() {
        let defaults = Body::ServiceDefaults.fields();
        assert_eq!(lookup(defaults, "Protocol").unwrap().ty, Protocol);
        assert!(lookup(defaults, "protocol").is_none());
        assert_eq!(respelled(defaults, "protocol").unwrap().name, "Protocol");
        assert_eq!(
            respelled(defaults, "mesh_gateway").unwrap().name,
            "MeshGateway"
        );
        assert_eq!(
            respelled(defaults, "EXTERNAL-SNI").unwrap().name,
            "ExternalSNI"
        );
        assert!(respelled(defaults, "Protocol").is_none());
        assert_eq!(did_you_mean(defaults, "Protocl").unwrap().name, "Protocol");
        assert_eq!(
            did_you_mean(defaults, "MeshGatway").unwrap().name,
            "MeshGateway"
        );
        assert!(did_you_mean(defaults, "Bogus").is_none());
        let resolver = Body::ServiceResolver.fields();
        assert_eq!(lookup(resolver, "LoadBalancer").unwrap().since, V1_9);
        assert_eq!(
            respelled(resolver, "connect_timeout").unwrap().name,
            "ConnectTimeout"
        );
        let paths: Vec<String> = all().into_iter().map(|(p, _)| p).collect();
        for p in [
            "service-router.Routes.Destination.RetryOn",
            "service-router.Routes.Match.HTTP.PathPrefix",
            "service-resolver.Failover.Targets.Peer",
            "service-resolver.Subsets.Filter",
            "service-splitter.Splits.RequestHeaders.Add",
            "service-defaults.UpstreamConfig.Overrides.Limits.MaxConnections",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p}");
        }
    }

    #[test]
    fn versions_parse() {
        let v = |s: &str| s.parse::<Version>();
        assert_eq!(v("1.8.7"), Ok(Version::new(1, 8, 7)));
        assert_eq!(v("v1.8.7"), Ok(Version::new(1, 8, 7)));
        assert_eq!(v("1.15.2+ent"), Ok(Version::new(1, 15, 2)));
        assert_eq!(v("1.16.0-rc1"), Ok(Version::new(1, 16, 0)));
        assert_eq!(v("1.15"), Ok(Version::new(1, 15, 0)));
        for bad in ["", "1", "x.y.z", "1.8.7.1", "1..7", "-1.8.7", "1.8.x"] {
            assert!(v(bad).is_err(), "{bad}");
        }
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 9));
        assert_eq!(Version::new(1, 8, 7).to_string(), "1.8.7");
    }

    #[test]
    fn the_schema_follows_the_table() {
        let s = schema();
        let defaults = &s["properties"]["defaults"];
        assert_eq!(defaults["additionalProperties"], false);
        assert_eq!(
            defaults["properties"]["MeshGateway"]["properties"]["Mode"]["type"],
            json!(["string", "null"])
        );
        let subsets = &s["properties"]["resolver"]["properties"]["Subsets"];
        assert_eq!(subsets["additionalProperties"]["type"], "object");
        assert_eq!(
            subsets["additionalProperties"]["additionalProperties"],
            false
        );
        let splits = &s["properties"]["splitter"]["properties"]["Splits"];
        assert_eq!(
            splits["items"]["properties"]["Weight"]["type"],
            json!(["number", "null"])
        );
    }
}
