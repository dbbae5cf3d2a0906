//! The KV key layout of svc-handler in one place: building and parsing every key
//! (`desired/…/base.json`, the records, `observed/…/observed.json`, `locks/…`), the
//! name rules for partitions, namespaces and services, and record resource ids.

use crate::kind::Kind;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest partition, namespace, service or gateway name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// File name of the user-written desired state of one service.
pub const BASE_FILE: &str = "base.json";
/// The file beside base.json that holds a service paused (`svc-handler pause`).
pub const PAUSE_FILE: &str = "pause.json";

/// File name of the daemon-written outcome of the last reconcile.
pub const OBSERVED_FILE: &str = "observed.json";

/// The partition and namespace used when none is given.
pub const DEFAULT: &str = "default";

/// Longest excerpt of a bad value quoted in an error message.
const QUOTE_MAX_CHARS: usize = 80;

/// A bad name or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A partition, namespace, service or gateway name breaks the name rules.
    #[error("invalid {what} {value}: {reason}")]
    InvalidName {
        /// What the name is, e.g. "service name".
        what: String,
        /// The bad value, quoted and escaped, at most about 80 characters.
        value: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The KV prefix cannot be used.
    #[error("invalid KV prefix {value}: {reason}")]
    InvalidPrefix {
        /// The bad value, quoted and escaped.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Quotes `s` for an error message: Rust escaping, cut after about 80 characters.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// True when `key` has a `.` or `..` path segment: a URL drops such
/// segments, so Consul's HTTP API cannot address the key (only a
/// transaction can write it).
pub fn has_dot_segment(key: &str) -> bool {
    key.split('/').any(|s| s == "." || s == "..")
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Checks a partition, namespace, service or gateway name: 1 to 63 characters, ASCII
/// letters, digits, `-` and `_`, beginning and ending with a letter or a digit.
/// `what` names the thing in the error, e.g. `"service name"`.
pub fn validate_name(what: &str, s: &str) -> Result<(), KeyError> {
    let fail = |reason: String| {
        Err(KeyError::InvalidName {
            what: what.to_string(),
            value: quote(s),
            reason,
        })
    };
    if s.is_empty() {
        return fail("it is empty".to_string());
    }
    let len = s.chars().count();
    if len > MAX_NAME_LEN {
        return fail(format!(
            "it is {len} characters long, at most {MAX_NAME_LEN} are allowed"
        ));
    }
    if let Some((pos, c)) = s.chars().enumerate().find(|&(_, c)| !is_name_char(c)) {
        return fail(format!(
            "character {c:?} at position {} is not allowed (only ASCII letters, digits, '-' and '_')",
            pos + 1
        ));
    }
    let first = s.chars().next().unwrap_or('-');
    let last = s.chars().next_back().unwrap_or('-');
    if !first.is_ascii_alphanumeric() {
        return fail(format!(
            "it must begin with a letter or a digit, not {first:?}"
        ));
    }
    if !last.is_ascii_alphanumeric() {
        return fail(format!(
            "it must end with a letter or a digit, not {last:?}"
        ));
    }
    Ok(())
}

/// One service: the partition, namespace and name from its key path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd, Serialize, Deserialize)]
pub struct ServiceId {
    pub partition: String,
    pub namespace: String,
    pub name: String,
}

impl ServiceId {
    /// A service id whose three parts have been checked with [`validate_name`].
    pub fn new(partition: &str, namespace: &str, name: &str) -> Result<ServiceId, KeyError> {
        validate_name("partition", partition)?;
        validate_name("namespace", namespace)?;
        validate_name("service name", name)?;
        Ok(ServiceId {
            partition: partition.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// True when the partition is `default` (Consul OSS knows no other).
    pub fn in_default_partition(&self) -> bool {
        self.partition == DEFAULT
    }

    /// True when the namespace is `default` (Consul OSS knows no other).
    pub fn in_default_namespace(&self) -> bool {
        self.namespace == DEFAULT
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.partition, self.namespace, self.name)
    }
}

/// What a key under the desired prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredKey {
    /// `<prefix>/desired/<p>/<ns>/<name>/base.json`.
    Base(ServiceId),
    /// `<prefix>/desired/<p>/<ns>/<name>/<record file>`.
    Record(ServiceId, Kind),
    /// `<prefix>/desired/<p>/<ns>/<name>/pause.json`.
    Pause(ServiceId),
    /// Under the desired prefix, but not a key of the layout.
    Invalid { key: String, reason: String },
    /// Not under the desired prefix, or a folder marker (a key ending in `/`, as the
    /// Consul UI creates) of a valid partition, namespace or service folder.
    Other,
}

/// What a key under the observed prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedKey {
    /// `<prefix>/observed/<p>/<ns>/<name>/observed.json`.
    Observed(ServiceId),
    /// Under the observed prefix, but not a key of the layout.
    Invalid { key: String, reason: String },
    /// Not under the observed prefix, or a folder marker of a valid folder.
    Other,
}

/// Where a key under one of the prefixes stands, before its file name is looked at.
enum Split<'a> {
    Other,
    Invalid(String),
    Service(ServiceId, &'a str),
}

/// The key layout under one prefix (`svc-handler` unless `--prefix` says otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// A layout under `prefix`; leading and trailing `/` are dropped. An empty prefix, one
    /// with an empty segment (`//`) or with a control character is refused.
    pub fn new(prefix: &str) -> Result<Layout, KeyError> {
        let fail = |reason: &str| {
            Err(KeyError::InvalidPrefix {
                value: quote(prefix),
                reason: reason.to_string(),
            })
        };
        let trimmed = prefix.trim_matches('/');
        if trimmed.is_empty() {
            return fail("it is empty");
        }
        if trimmed.contains("//") {
            return fail("it contains an empty segment (\"//\")");
        }
        if trimmed.chars().any(char::is_control) {
            return fail("it contains a control character");
        }
        Ok(Layout {
            prefix: trimmed.to_string(),
        })
    }

    /// The prefix, without leading or trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/desired/`
    pub fn desired_prefix(&self) -> String {
        format!("{}/desired/", self.prefix)
    }

    /// `<prefix>/observed/`
    pub fn observed_prefix(&self) -> String {
        format!("{}/observed/", self.prefix)
    }

    /// `<prefix>/locks/`
    pub fn locks_prefix(&self) -> String {
        format!("{}/locks/", self.prefix)
    }

    /// `<prefix>/desired/<p>/<ns>/<name>/` (with the trailing `/`): the folder holding
    /// base.json and the records, for get-tree and delete-tree.
    pub fn service_dir(&self, id: &ServiceId) -> String {
        format!("{}{}/", self.desired_prefix(), id)
    }

    /// `<prefix>/desired/<p>/<ns>/<name>/base.json`
    pub fn base_key(&self, id: &ServiceId) -> String {
        format!("{}{}", self.service_dir(id), BASE_FILE)
    }

    /// `<prefix>/desired/<p>/<ns>/<name>/pause.json`
    pub fn pause_key(&self, id: &ServiceId) -> String {
        format!("{}{}", self.service_dir(id), PAUSE_FILE)
    }

    /// `<prefix>/desired/<p>/<ns>/<name>/<record file>`
    pub fn record_key(&self, id: &ServiceId, kind: Kind) -> String {
        format!("{}{}", self.service_dir(id), kind.file_name())
    }

    /// `<prefix>/observed/<p>/<ns>/<name>/observed.json`
    pub fn observed_key(&self, id: &ServiceId) -> String {
        format!("{}{}/{}", self.observed_prefix(), id, OBSERVED_FILE)
    }

    /// `<prefix>/locks/<p>/<ns>/<name>`
    pub fn lock_key(&self, id: &ServiceId) -> String {
        format!("{}{}", self.locks_prefix(), id)
    }

    /// Classifies a key seen under (or near) the desired prefix.
    pub fn parse_desired_key(&self, key: &str) -> DesiredKey {
        let invalid = |reason: String| DesiredKey::Invalid {
            key: key.to_string(),
            reason,
        };
        match split_service_key(&self.desired_prefix(), key) {
            Split::Other => DesiredKey::Other,
            Split::Invalid(reason) => invalid(reason),
            Split::Service(id, BASE_FILE) => DesiredKey::Base(id),
            Split::Service(id, PAUSE_FILE) => DesiredKey::Pause(id),
            Split::Service(id, file) => match Kind::from_file_name(file) {
                Some(kind) => DesiredKey::Record(id, kind),
                None => invalid(format!(
                    "unknown file name {}: expected {BASE_FILE}, {PAUSE_FILE}, {}",
                    quote(file),
                    Kind::ALL.map(Kind::file_name).join(", ")
                )),
            },
        }
    }

    /// Classifies a key seen under (or near) the observed prefix.
    pub fn parse_observed_key(&self, key: &str) -> ObservedKey {
        let invalid = |reason: String| ObservedKey::Invalid {
            key: key.to_string(),
            reason,
        };
        match split_service_key(&self.observed_prefix(), key) {
            Split::Other => ObservedKey::Other,
            Split::Invalid(reason) => invalid(reason),
            Split::Service(id, OBSERVED_FILE) => ObservedKey::Observed(id),
            Split::Service(_, file) => invalid(format!(
                "unknown file name {}: expected {OBSERVED_FILE}",
                quote(file)
            )),
        }
    }
}

/// Splits `<under><p>/<ns>/<name>/<file>` into a checked service id and the file name.
fn split_service_key<'a>(under: &str, key: &'a str) -> Split<'a> {
    const WHAT: [&str; 3] = ["partition", "namespace", "service name"];
    let Some(rest) = key.strip_prefix(under) else {
        return Split::Other;
    };
    // A folder marker such as `svc-handler/desired/default/` carries no data.
    let (rest, folder) = match rest.strip_suffix('/') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return if folder {
            Split::Invalid(format!("empty path segment after {under:?}"))
        } else {
            Split::Other
        };
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if let Some(pos) = segments.iter().position(|s| *s == "." || *s == "..") {
        return Split::Invalid(format!(
            "a {:?} path segment at position {} after {under:?}: Consul's HTTP API cannot address such a key",
            segments[pos],
            pos + 1
        ));
    }
    if let Some(pos) = segments.iter().position(|s| s.is_empty()) {
        return Split::Invalid(format!(
            "empty path segment (\"//\") at position {} after {under:?}",
            pos + 1
        ));
    }
    let layout = "<partition>/<namespace>/<service>/<file>";
    if folder {
        if segments.len() > 3 {
            return Split::Invalid(format!(
                "folder is {} levels deep after {under:?}; the layout is {layout}",
                segments.len()
            ));
        }
        for (what, seg) in WHAT.iter().zip(&segments) {
            if let Err(e) = validate_name(what, seg) {
                return Split::Invalid(e.to_string());
            }
        }
        return Split::Other;
    }
    if segments.len() != 4 {
        return Split::Invalid(format!(
            "expected 4 path segments after {under:?} ({layout}), found {}",
            segments.len()
        ));
    }
    for (what, seg) in WHAT.iter().zip(&segments) {
        if let Err(e) = validate_name(what, seg) {
            return Split::Invalid(e.to_string());
        }
    }
    let id = ServiceId {
        partition: segments[0].to_string(),
        namespace: segments[1].to_string(),
        name: segments[2].to_string(),
    };
    Split::Service(id, segments[3])
}

/// `<kind>/<partition>/<namespace>/<name>`, the `resource_id` of a record.
pub fn resource_id(kind: &str, id: &ServiceId) -> String {
    format!("{kind}/{id}")
}

/// `terminating-gateway/<p>/<ns>/<gateway>#<service>`, the `resource_id` of a link.
pub fn link_resource_id(
    gateway_partition: &str,
    gateway_ns: &str,
    gateway: &str,
    service: &str,
) -> String {
    format!("terminating-gateway/{gateway_partition}/{gateway_ns}/{gateway}#{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: &str, ns: &str, name: &str) -> ServiceId {
        ServiceId {
            partition: p.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn layout() -> Layout {
        Layout::new("svc-handler").expect("valid prefix")
    }

    fn reason(k: DesiredKey) -> String {
        match k {
            DesiredKey::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn names_accepted() {
        for ok in ["a", "web", "Web-1", "a_b", "0", "x".repeat(63).as_str()] {
            assert_eq!(validate_name("service name", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn names_refused_with_reason() {
        let cases = [
            ("", "it is empty"),
            ("-web", "must begin with a letter or a digit"),
            ("web_", "must end with a letter or a digit"),
            ("we b", "character ' ' at position 3"),
            ("web.1", "character '.' at position 4"),
            ("wéb", "character 'é' at position 2"),
            ("a/b", "character '/'"),
        ];
        for (bad, why) in cases {
            let err = validate_name("service name", bad)
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("invalid service name "), "{err}");
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let long = "x".repeat(64);
        let err = validate_name("namespace", &long).unwrap_err().to_string();
        assert!(err.contains("64 characters long, at most 63"), "{err}");
    }

    #[test]
    fn long_bad_value_is_cut_and_escaped() {
        let bad = format!("\n{}", "y".repeat(500));
        let err = validate_name("service name", &bad).unwrap_err().to_string();
        assert!(err.contains("\"\\nyyy"), "{err}");
        assert!(err.contains('…'), "{err}");
        assert!(err.len() < 250, "{}", err.len());
    }

    #[test]
    fn service_id_display_and_new() {
        assert_eq!(id("default", "ns1", "web").to_string(), "default/ns1/web");
        assert_eq!(
            ServiceId::new("default", "default", "web"),
            Ok(id("default", "default", "web"))
        );
        let err = ServiceId::new("default", "bad ns", "web").unwrap_err();
        assert!(err.to_string().starts_with("invalid namespace"), "{err}");
        assert!(id("default", "default", "x").in_default_partition());
        assert!(!id("p1", "n1", "x").in_default_namespace());
    }

    #[test]
    fn record_kinds() {
        let names: Vec<_> = Kind::ALL.iter().map(|k| k.file_name()).collect();
        assert_eq!(
            names,
            [
                "defaults.json",
                "resolver.json",
                "splitter.json",
                "router.json",
                "tgw.json"
            ]
        );
        let kinds: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "service-defaults",
                "service-resolver",
                "service-splitter",
                "service-router",
                "terminating-gateway"
            ]
        );
        for k in Kind::ALL {
            assert_eq!(Kind::from_file_name(k.file_name()), Some(k));
        }
        assert_eq!(Kind::from_file_name("base.json"), None);
    }

    #[test]
    fn layout_prefix_rules() {
        assert_eq!(
            Layout::new("/svc-handler/").unwrap().prefix(),
            "svc-handler"
        );
        assert_eq!(Layout::new("a/b").unwrap().prefix(), "a/b");
        for bad in ["", "/", "///", "a//b", "a\nb"] {
            assert!(Layout::new(bad).is_err(), "{bad:?}");
        }
        let err = Layout::new("a//b").unwrap_err().to_string();
        assert!(
            err.contains("\"a//b\"") && err.contains("empty segment"),
            "{err}"
        );
    }

    #[test]
    fn keys_built() {
        let l = Layout::new("team/svc").unwrap();
        let web = id("default", "default", "web");
        assert_eq!(l.desired_prefix(), "team/svc/desired/");
        assert_eq!(l.observed_prefix(), "team/svc/observed/");
        assert_eq!(l.locks_prefix(), "team/svc/locks/");
        assert_eq!(l.service_dir(&web), "team/svc/desired/default/default/web/");
        assert_eq!(
            l.base_key(&web),
            "team/svc/desired/default/default/web/base.json"
        );
        assert_eq!(
            l.record_key(&web, Kind::TerminatingGateway),
            "team/svc/desired/default/default/web/tgw.json"
        );
        assert_eq!(
            l.observed_key(&web),
            "team/svc/observed/default/default/web/observed.json"
        );
        assert_eq!(l.lock_key(&web), "team/svc/locks/default/default/web");
    }

    #[test]
    fn built_keys_parse_back() {
        let l = layout();
        let web = id("part-1", "ns_2", "Web9");
        assert_eq!(
            l.parse_desired_key(&l.base_key(&web)),
            DesiredKey::Base(web.clone())
        );
        for k in Kind::ALL {
            assert_eq!(
                l.parse_desired_key(&l.record_key(&web, k)),
                DesiredKey::Record(web.clone(), k)
            );
        }
        assert_eq!(
            l.parse_observed_key(&l.observed_key(&web)),
            ObservedKey::Observed(web.clone())
        );
    }

    #[test]
    fn other_keys() {
        let l = layout();
        for k in [
            "svc-handler/observed/default/default/web/observed.json",
            "svc-handler/desired",
            "svc-handler/desired/",
            "svc-handler-x/desired/default/default/web/base.json",
            "elsewhere/default/default/web/base.json",
            "svc-handler/desired/default/",
            "svc-handler/desired/default/default/",
            "svc-handler/desired/default/default/web/",
        ] {
            assert_eq!(l.parse_desired_key(k), DesiredKey::Other, "{k}");
        }
        assert_eq!(
            l.parse_observed_key("svc-handler/desired/default/default/web/base.json"),
            ObservedKey::Other
        );
    }

    #[test]
    fn invalid_keys_say_why() {
        let l = layout();
        let r = reason(l.parse_desired_key("svc-handler/desired/default/default/web.json"));
        assert!(
            r.contains("expected 4 path segments") && r.contains("found 3"),
            "{r}"
        );
        let r = reason(l.parse_desired_key("svc-handler/desired/default/default/web/x/base.json"));
        assert!(r.contains("found 5"), "{r}");
        let r = reason(l.parse_desired_key("svc-handler/desired/default/default/web/base.yaml"));
        assert!(r.contains("unknown file name \"base.yaml\""), "{r}");
        assert!(r.contains("tgw.json"), "{r}");
        let r = reason(l.parse_desired_key("svc-handler/desired/default/default/we.b/base.json"));
        assert!(r.starts_with("invalid service name \"we.b\""), "{r}");
        for key in [
            "svc-handler/desired/default/default/web/./base.json",
            "svc-handler/desired/default/default/api/../base.json",
            "svc-handler/desired/default/../web/base.json",
        ] {
            let r = reason(l.parse_desired_key(key));
            assert!(
                r.contains("path segment") && r.contains("cannot address"),
                "{key}: {r}"
            );
        }
        let r = reason(l.parse_desired_key("svc-handler/desired/default/-ns/web/base.json"));
        assert!(r.starts_with("invalid namespace \"-ns\""), "{r}");
        let r = reason(l.parse_desired_key("svc-handler/desired/p p/default/web/base.json"));
        assert!(r.starts_with("invalid partition \"p p\""), "{r}");
        let r = reason(l.parse_desired_key("svc-handler/desired/default//web/base.json"));
        assert!(
            r.contains("empty path segment") && r.contains("position 2"),
            "{r}"
        );
        let r = reason(l.parse_desired_key("svc-handler/desired/a/b/c/d/"));
        assert!(r.contains("4 levels deep"), "{r}");
        let r = reason(l.parse_desired_key("svc-handler/desired/a b/"));
        assert!(r.starts_with("invalid partition"), "{r}");
        let key = "svc-handler/desired/default/default/web/observed.json";
        assert!(matches!(
            l.parse_desired_key(key),
            DesiredKey::Invalid { key: k, .. } if k == key
        ));
        match l.parse_observed_key("svc-handler/observed/default/default/web/base.json") {
            ObservedKey::Invalid { reason, .. } => {
                assert!(reason.contains("expected observed.json"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resource_ids() {
        let web = id("default", "ns1", "web");
        assert_eq!(
            resource_id("service-resolver", &web),
            "service-resolver/default/ns1/web"
        );
        assert_eq!(
            link_resource_id("default", "default", "egress", "api"),
            "terminating-gateway/default/default/egress#api"
        );
    }
}
