//! What the daemon's token must be able to do, checked before the daemon
//! watches anything: on a default-deny ACL agent a token that cannot read the
//! prefix gets an empty, filtered listing (Consul answers 404), so a daemon
//! that did not check would report "nothing to reconcile", turn ready, and do
//! nothing. The check writes a key under the prefix, reads it back, deletes
//! it, and creates (and destroys) a session; each failure names the
//! permission missing.

use std::time::Duration;

use crate::consul::{ConsulError, QueryOptions, SessionRequest};
use crate::keys::Layout;

/// How the check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    /// Consul answered, and the token lacks a permission: what and why.
    Denied(String),
    /// Consul did not answer (or answered an error that says nothing about
    /// permissions): try again later.
    Unreachable(String),
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::Denied(m) | AccessError::Unreachable(m) => f.write_str(m),
        }
    }
}

/// The key the check writes and reads back: under `locks/`, which no
/// listing of services reads.
pub fn probe_key(layout: &Layout, holder: &str) -> String {
    let holder: String = holder
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    format!("{}.access-check/{holder}", layout.locks_prefix())
}

/// The permission a KV failure points at.
fn kv_denied(e: &ConsulError, what: &str, layout: &Layout) -> AccessError {
    let rule = format!(
        "key_prefix \"{}/\" {{ policy = \"write\" }}",
        layout.prefix()
    );
    if e.status() == Some(403) {
        AccessError::Denied(format!(
            "the ACL token cannot {what} keys under {}/ ({e}); its policy needs {rule}",
            layout.prefix()
        ))
    } else {
        AccessError::Unreachable(format!("cannot check the token's access: {e}"))
    }
}

impl super::Daemon {
    /// Writes, reads back and deletes a key under the prefix, then creates
    /// and destroys a session.
    pub(super) async fn check_access(&self) -> Result<(), AccessError> {
        let layout = &self.cfg.layout;
        let key = probe_key(layout, &self.cfg.holder);
        let value = format!("{{\"holder\": {:?}}}", self.cfg.holder);
        self.client
            .kv_put(&key, value.as_bytes())
            .await
            .map_err(|e| kv_denied(&e, "write", layout))?;
        let (read, _) = self
            .client
            .kv_get(&key, &QueryOptions::consistent())
            .await
            .map_err(|e| kv_denied(&e, "read", layout))?;
        if read.is_none() {
            return Err(AccessError::Denied(format!(
                "the ACL token cannot read keys under {}/ (a key it just wrote reads as missing: \
                 Consul filters what a token may not read); its policy needs key_prefix \"{}/\" \
                 {{ policy = \"write\" }}",
                layout.prefix(),
                layout.prefix()
            )));
        }
        let _ = self.client.kv_delete(&key).await;
        let session = self
            .client
            .session_create(&SessionRequest {
                name: format!("svc-handler access check {}", self.cfg.holder),
                ttl: Some(Duration::from_secs(10)),
                node_checks: Some(Vec::new()),
                ..Default::default()
            })
            .await
            .map_err(|e| match e.status() {
                Some(403) => AccessError::Denied(format!(
                    "the ACL token cannot create sessions ({e}); its policy needs \
                     session_prefix \"\" {{ policy = \"write\" }}"
                )),
                _ => AccessError::Unreachable(format!("cannot check the token's access: {e}")),
            })?;
        let _ = self.client.session_destroy(&session).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_key_is_under_locks_and_one_segment_per_holder() {
        let l = Layout::new("svc-handler").unwrap();
        assert_eq!(
            probe_key(&l, "node-1:42"),
            "svc-handler/locks/.access-check/node-1:42"
        );
        assert_eq!(
            probe_key(&l, "a/b\n"),
            "svc-handler/locks/.access-check/a_b_"
        );
    }

    #[test]
    fn a_403_names_the_rule_and_anything_else_is_retried() {
        let l = Layout::new("team/svc").unwrap();
        let denied = ConsulError::status_from_body("kv.put", 403, "Permission denied");
        match kv_denied(&denied, "write", &l) {
            AccessError::Denied(m) => {
                assert!(m.contains("cannot write keys under team/svc/"), "{m}");
                assert!(
                    m.contains(r#"key_prefix "team/svc/" { policy = "write" }"#),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        let down = ConsulError::status_from_body("kv.put", 500, "No cluster leader");
        assert!(matches!(
            kv_denied(&down, "write", &l),
            AccessError::Unreachable(_)
        ));
    }
}
