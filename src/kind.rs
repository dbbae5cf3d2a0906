//! The names svc-handler's users see: the config-entry kinds it writes (one
//! enum for the entry, its record file and its step) and the steps of a
//! reconcile, whose names are the `step` values of `observed.json`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A config-entry kind svc-handler writes, with the record that tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub enum Kind {
    ServiceDefaults,
    ServiceResolver,
    ServiceSplitter,
    ServiceRouter,
    /// A link in a shared terminating gateway (the entry is not ours alone).
    TerminatingGateway,
}

impl Kind {
    /// Every kind, in the order they are written.
    pub const ALL: [Kind; 5] = [
        Kind::ServiceDefaults,
        Kind::ServiceResolver,
        Kind::ServiceSplitter,
        Kind::ServiceRouter,
        Kind::TerminatingGateway,
    ];

    /// The kinds that are a service's own entry (named after the service).
    pub const OWN: [Kind; 4] = [
        Kind::ServiceDefaults,
        Kind::ServiceResolver,
        Kind::ServiceSplitter,
        Kind::ServiceRouter,
    ];

    /// The own kinds written only when base.json has their body (a router,
    /// a splitter), in the order they are removed when it no longer does.
    pub const OPTIONAL: [Kind; 2] = [Kind::ServiceRouter, Kind::ServiceSplitter];

    /// Whether this kind is written only when base.json asks for it.
    pub fn is_optional(self) -> bool {
        Kind::OPTIONAL.contains(&self)
    }

    /// The `Kind` as Consul names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceDefaults => "service-defaults",
            Kind::ServiceResolver => "service-resolver",
            Kind::ServiceSplitter => "service-splitter",
            Kind::ServiceRouter => "service-router",
            Kind::TerminatingGateway => "terminating-gateway",
        }
    }

    /// The kind Consul names `s`, if svc-handler writes it.
    pub fn from_consul(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The record's file name in the service's desired folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::ServiceDefaults => "defaults.json",
            Kind::ServiceResolver => "resolver.json",
            Kind::ServiceSplitter => "splitter.json",
            Kind::ServiceRouter => "router.json",
            Kind::TerminatingGateway => "tgw.json",
        }
    }

    /// The record kind stored under `file_name`, if any.
    pub fn from_file_name(file_name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.file_name() == file_name)
    }

    /// The reconcile step that writes this kind.
    pub fn step(self) -> Step {
        match self {
            Kind::ServiceDefaults => Step::Defaults,
            Kind::ServiceResolver => Step::Resolver,
            Kind::ServiceSplitter => Step::Splitter,
            Kind::ServiceRouter => Step::Router,
            Kind::TerminatingGateway => Step::TerminatingGateway,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step of a reconcile; the name is the `step` of `observed.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Creating the session or taking the service's lock.
    Lock,
    /// Reading base.json, the records and the entries.
    Read,
    /// Parsing and validating base.json.
    Parse,
    /// Consul's cross-entry rules checked before the first write.
    Preflight,
    /// The key of base.json does not fit the layout.
    Key,
    Defaults,
    Resolver,
    Splitter,
    Router,
    TerminatingGateway,
    /// The fenced transaction with observed.json and the lock's release.
    Observed,
    /// base.json is gone: removing what svc-handler owned.
    Delete,
    /// `svc-handler pause` holds the service: nothing is written.
    Pause,
}

impl Step {
    /// Every step, in the order a reconcile meets them.
    pub const ALL: [Step; 13] = [
        Step::Lock,
        Step::Read,
        Step::Parse,
        Step::Preflight,
        Step::Key,
        Step::Defaults,
        Step::Resolver,
        Step::Splitter,
        Step::Router,
        Step::TerminatingGateway,
        Step::Observed,
        Step::Delete,
        Step::Pause,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Lock => "lock",
            Step::Read => "read",
            Step::Parse => "parse",
            Step::Preflight => "preflight",
            Step::Key => "key",
            Step::Defaults => "defaults",
            Step::Resolver => "resolver",
            Step::Splitter => "splitter",
            Step::Router => "router",
            Step::TerminatingGateway => "terminating_gateway",
            Step::Observed => "observed",
            Step::Delete => "delete",
            Step::Pause => "pause",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_consul(k.as_str()), Some(k));
            assert_eq!(Kind::from_file_name(k.file_name()), Some(k));
        }
        assert_eq!(Kind::from_consul("ingress-gateway"), None);
        for s in Step::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), s);
        }
    }
}
