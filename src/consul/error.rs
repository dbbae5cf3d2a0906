//! The one error type of the Consul client, and whether an error is worth retrying.

use std::time::Duration;

/// How much of a Consul error body is kept in an error message.
const MAX_BODY_CHARS: usize = 512;

/// What a failed request means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Consul answered 400 to a config entry (it could not decode it, or a
    /// field is wrong): the user's input is wrong.
    InvalidInput,
    /// Consul refused a config entry on validation (answered 500 without
    /// naming a transient trouble): the same request will be refused again
    /// until the input changes.
    Refused,
    /// Trying again later may succeed: transport errors, timeouts, 429, 5xx.
    Retryable,
    /// Anything else: a 4xx, a check-and-set refusal, a missing object, an
    /// unreadable answer.
    Failed,
}

/// Words in the body of a 500 that name a transient trouble of the cluster
/// or of an RPC (Consul's `structs.ErrNoLeader`, `ErrLeadershipLost`, raft and
/// RPC transport errors, rate limits), not a refusal of the entry.
const TRANSIENT: [&str; 10] = [
    "No cluster leader",
    "leadership lost",
    "Not ready to serve consistent reads",
    "rpc error",
    "raft",
    "i/o timeout",
    "connection refused",
    "EOF",
    "timed out",
    "rate limit",
];

/// A write of a config entry, whose 400 and 500 answers judge the entry.
fn is_entry_write(op: &str) -> bool {
    matches!(op, "config.put" | "config.cas")
}

fn is_transient(body: &str) -> bool {
    TRANSIENT.iter().any(|t| body.contains(t))
}

/// An error from one Consul HTTP API operation. `op` names the operation
/// (`kv.get`, `config.put`, ...). No variant ever carries the ACL token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConsulError {
    /// The settings (environment variables, flags) cannot make a client.
    #[error("Consul client configuration: {0}")]
    Config(String),

    /// The request never got an HTTP answer: connection refused, reset, TLS failure.
    #[error("{op}: cannot reach Consul at {addr}: {detail}")]
    Transport {
        op: &'static str,
        addr: String,
        detail: String,
    },

    /// No answer within the request's deadline.
    #[error("{op}: no answer from Consul at {addr} within {after:?}")]
    Timeout {
        op: &'static str,
        addr: String,
        after: Duration,
    },

    /// Consul answered with a status that is not success.
    #[error("{op}: Consul answered {status}: {body}")]
    Status {
        op: &'static str,
        status: u16,
        body: String,
    },

    /// A check-and-set write was refused because the index was stale.
    #[error("{op}: check-and-set refused for {target} at index {index} (changed concurrently)")]
    CasConflict {
        op: &'static str,
        target: String,
        index: u64,
    },

    /// The object the operation needs does not exist (for example a session
    /// that was destroyed or expired).
    #[error("{op}: {what} not found")]
    NotFound { op: &'static str, what: String },

    /// Consul answered success with a body this client cannot read.
    #[error("{op}: unexpected answer from Consul: {detail}")]
    Decode { op: &'static str, detail: String },

    /// A KV key with a `.` or `..` segment: Consul's HTTP API cannot address
    /// it (a URL drops such segments), so no request is sent.
    #[error(
        "{op}: Consul's HTTP API cannot address the key {key}: it has a \".\" or \"..\" segment"
    )]
    Unaddressable { op: &'static str, key: String },
}

impl ConsulError {
    /// What kind of failure this is, for whoever decides what happens next.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConsulError::Status { op, status, body } => match *status {
                400 if is_entry_write(op) => ErrorClass::InvalidInput,
                400 if body.contains("Request decoding failed")
                    || body.contains("invalid config key") =>
                {
                    ErrorClass::InvalidInput
                }
                // Consul answers 500 to a config entry its Validate() or the
                // discovery-chain compiler refuses; asking again gives the
                // same answer. A 500 that names a cluster or transport
                // trouble is transient.
                500 if is_entry_write(op) && !is_transient(body) => ErrorClass::Refused,
                429 => ErrorClass::Retryable,
                s if s >= 500 && s != 501 => ErrorClass::Retryable,
                _ => ErrorClass::Failed,
            },
            ConsulError::Transport { .. } | ConsulError::Timeout { .. } => ErrorClass::Retryable,
            ConsulError::Config(_)
            | ConsulError::CasConflict { .. }
            | ConsulError::NotFound { .. }
            | ConsulError::Decode { .. }
            | ConsulError::Unaddressable { .. } => ErrorClass::Failed,
        }
    }

    /// True when trying the same request again later may succeed: transport
    /// errors, timeouts, 429 and 5xx (except 501 Not Implemented and
    /// Consul's validation refusals).
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// True for a check-and-set refusal.
    pub fn is_cas_conflict(&self) -> bool {
        matches!(self, ConsulError::CasConflict { .. })
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConsulError::NotFound { .. })
    }

    /// Consul's open-source edition refused a namespace or partition
    /// parameter ("... - Namespaces are a Consul Enterprise feature").
    pub fn is_enterprise_only(&self) -> bool {
        matches!(self, ConsulError::Status { status: 400, body, .. }
            if body.contains("Consul Enterprise feature"))
    }

    /// Consul refused a lock operation because the session does not exist
    /// (destroyed, expired, or Consul's data was wiped): `Invalid session`.
    pub fn is_invalid_session(&self) -> bool {
        matches!(self, ConsulError::Status { body, .. }
            if body.to_ascii_lowercase().contains("invalid session"))
    }

    /// The HTTP status Consul answered, when it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConsulError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The operation name, when the error came from one.
    pub fn op(&self) -> Option<&'static str> {
        match self {
            ConsulError::Config(_) => None,
            ConsulError::Transport { op, .. }
            | ConsulError::Timeout { op, .. }
            | ConsulError::Status { op, .. }
            | ConsulError::CasConflict { op, .. }
            | ConsulError::NotFound { op, .. }
            | ConsulError::Decode { op, .. }
            | ConsulError::Unaddressable { op, .. } => Some(op),
        }
    }

    pub(crate) fn status_from_body(op: &'static str, status: u16, body: &str) -> Self {
        ConsulError::Status {
            op,
            status,
            body: clip(&one_line(body)),
        }
    }
}

/// Consul's error text on one line, its cause kept: Go's multi-error lists
/// (`Request decoding failed: 1 error occurred:\n\t* invalid config key
/// "Protocl"\n\n`) become `Request decoding failed: invalid config key
/// "Protocl"`, several causes joined with `; `. Where only a first line is
/// shown (`status`), it is the cause, not a count of errors.
pub fn one_line(body: &str) -> String {
    let mut out = String::new();
    for line in body.lines() {
        let line = line.trim();
        let line = line.strip_prefix("* ").unwrap_or(line).trim();
        let line = without_error_count(line);
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// `Request decoding failed: 1 error occurred:` → `Request decoding failed:`;
/// `2 errors occurred:` → ``; `1 error(s) decoding:` → ``.
fn without_error_count(line: &str) -> &str {
    if !(line.ends_with("occurred:") || line.ends_with("decoding:")) {
        return line;
    }
    let words: Vec<(usize, &str)> = line
        .split(' ')
        .scan(0, |at, w| {
            let start = *at;
            *at += w.len() + 1;
            Some((start, w))
        })
        .collect();
    for pair in words.windows(2) {
        let ((start, n), (_, word)) = (pair[0], pair[1]);
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && word.starts_with("error") {
            return line[..start].trim_end();
        }
    }
    line
}

/// Shortens a body for an error message, on a char boundary.
pub(crate) fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_BODY_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_BODY_CHARS).collect();
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> ConsulError {
        ConsulError::status_from_body("kv.get", code, "x")
    }

    #[test]
    fn consul_multi_errors_are_one_line_with_the_cause() {
        let body =
            "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Protocl\"\n\n";
        assert_eq!(
            one_line(body),
            r#"Request decoding failed: invalid config key "Protocl""#
        );
        let two = "2 errors occurred:\n\t* Bad Failover[\"v2\"]: not a valid subset\n\t* Route[0] bad\n\n";
        assert_eq!(
            one_line(two),
            r#"Bad Failover["v2"]: not a valid subset; Route[0] bad"#
        );
        let mapstructure =
            "Request decoding failed: 1 error(s) decoding:\n\n* 'Protocol' expected type 'string'";
        assert_eq!(
            one_line(mapstructure),
            "Request decoding failed: 'Protocol' expected type 'string'"
        );
        assert_eq!(one_line("  Permission denied\n"), "Permission denied");
        let e = ConsulError::status_from_body("config.cas", 400, body);
        assert_eq!(
            e.to_string().lines().count(),
            1,
            "status shows the first line: {e}"
        );
        assert!(e.to_string().contains("Protocl"), "{e}");
    }

    #[test]
    fn retry_classification() {
        assert!(status(500).is_retryable());
        assert!(status(502).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(501).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(404).is_retryable());
        let t = ConsulError::Timeout {
            op: "kv.get",
            addr: "http://127.0.0.1:1".into(),
            after: Duration::from_secs(1),
        };
        assert!(t.is_retryable());
        let cas = ConsulError::CasConflict {
            op: "kv.cas",
            target: "a".into(),
            index: 3,
        };
        assert!(!cas.is_retryable());
        assert!(cas.is_cas_conflict());
    }

    #[test]
    fn classes_of_config_entry_writes() {
        let e = |op, code, body| ConsulError::status_from_body(op, code, body).class();
        let bad = r#"Request decoding failed: 1 error(s) decoding: invalid config key "Bogus""#;
        assert_eq!(e("config.put", 400, bad), ErrorClass::InvalidInput);
        assert_eq!(
            e("config.cas", 400, "Invalid protocol"),
            ErrorClass::InvalidInput
        );
        let chain = r#"discovery chain "api" uses inconsistent protocols"#;
        assert_eq!(e("config.cas", 500, chain), ErrorClass::Refused);
        let failover = r#"Bad Failover["v2"]: not a valid subset"#;
        assert_eq!(e("config.cas", 500, failover), ErrorClass::Refused);
        assert_eq!(
            e("config.cas", 500, "No cluster leader"),
            ErrorClass::Retryable
        );
        assert_eq!(
            e("config.cas", 500, "rpc error making call: EOF"),
            ErrorClass::Retryable
        );
        assert_eq!(e("config.get", 500, "anything"), ErrorClass::Retryable);
        assert_eq!(
            e(
                "config.get",
                400,
                "Namespaces are a Consul Enterprise feature"
            ),
            ErrorClass::Failed
        );
        assert_eq!(e("config.cas", 503, "x"), ErrorClass::Retryable);
        assert_eq!(e("kv.put", 500, "x"), ErrorClass::Retryable);
    }

    #[test]
    fn long_bodies_are_clipped() {
        let body = "é".repeat(2000);
        let e = ConsulError::status_from_body("config.put", 400, &body);
        let msg = e.to_string();
        assert!(msg.ends_with("..."));
        assert!(msg.chars().count() < 600);
    }
}
