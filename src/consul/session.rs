//! Sessions: create, renew, destroy, read. A lock in KV is held by a session.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Client, ConsulError, QueryOptions};

/// What happens to the keys a session holds when it is invalidated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The locks are released; the keys stay (Consul's default).
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRequest {
    pub name: String,
    /// Time to live: between 10 s and 24 h. Consul may reap an expired
    /// session only after twice this.
    pub ttl: Option<Duration>,
    /// How long a lock lost through this session cannot be re-acquired
    /// (Consul's default 15 s). Sent as a duration string.
    pub lock_delay: Option<Duration>,
    pub behavior: SessionBehavior,
    /// Node health checks tied to the session. `None` keeps Consul's default
    /// (`serfHealth`); `Some(vec![])` ties it to none (TTL only).
    pub node_checks: Option<Vec<String>>,
    /// The node the session belongs to (default: the agent's node).
    pub node: Option<String>,
}

/// A session as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// Go duration text, such as `15s`.
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    #[serde(default)]
    pub behavior: String,
    /// Lock delay in nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    /// Node health checks the session is tied to.
    #[serde(default)]
    pub node_checks: Option<Vec<String>>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateBody<'a> {
    name: &'a str,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_delay: Option<String>,
    behavior: SessionBehavior,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_checks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

/// A Go duration string Consul parses: whole seconds as "15s", else whole
/// milliseconds ("1500ms").
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl Client {
    /// `PUT /v1/session/create`: a new session; returns its id.
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String, ConsulError> {
        const OP: &str = "session.create";
        let body = CreateBody {
            name: &req.name,
            ttl: req.ttl.map(go_duration),
            lock_delay: req.lock_delay.map(go_duration),
            behavior: req.behavior,
            node_checks: req.node_checks.as_deref(),
            node: req.node.as_deref(),
        };
        let body = serde_json::to_vec(&body).expect("session body serializes");
        let url = self.url(&["v1", "session", "create"], true);
        let a = self
            .send(OP, Method::PUT, url, None, Some(body))
            .await?
            .ok(OP)?;
        let created: Created = a.json(OP)?;
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/<id>`: resets the TTL. A session that is gone
    /// (expired or destroyed; every lock it held is lost) is
    /// [`ConsulError::NotFound`].
    pub async fn session_renew(&self, id: &str) -> Result<SessionInfo, ConsulError> {
        const OP: &str = "session.renew";
        let url = self.url(&["v1", "session", "renew", id], true);
        let a = self.send(OP, Method::PUT, url, None, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Err(ConsulError::NotFound {
                op: OP,
                what: format!("session {id}"),
            });
        }
        let a = a.ok(OP)?;
        let list: Vec<SessionInfo> = a.json(OP)?;
        list.into_iter()
            .next()
            .ok_or_else(|| ConsulError::NotFound {
                op: OP,
                what: format!("session {id}"),
            })
    }

    /// `PUT /v1/session/destroy/<id>`: ends the session; its locks are released
    /// (or its keys deleted, per its behavior). Destroying an unknown session
    /// is not an error.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session.destroy";
        let url = self.url(&["v1", "session", "destroy", id], true);
        let a = self.send(OP, Method::PUT, url, None, None).await?.ok(OP)?;
        // Consul answers `true`; anything else is unexpected but harmless.
        let _ = a.bool(OP);
        Ok(())
    }

    /// `GET /v1/session/list`: every session in the datacenter.
    pub async fn session_list(&self) -> Result<Vec<SessionInfo>, ConsulError> {
        const OP: &str = "session.list";
        let url = self.url(&["v1", "session", "list"], true);
        let opts = QueryOptions::default();
        let a = self
            .send(OP, Method::GET, url, Some(&opts), None)
            .await?
            .ok(OP)?;
        let list: Option<Vec<SessionInfo>> = a.json(OP)?;
        Ok(list.unwrap_or_default())
    }

    /// `GET /v1/session/info/<id>`: the session, or `None` when it is gone.
    pub async fn session_info(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<Option<SessionInfo>, ConsulError> {
        const OP: &str = "session.info";
        let url = self.url(&["v1", "session", "info", id], true);
        let a = self
            .send(OP, Method::GET, url, Some(opts), None)
            .await?
            .ok(OP)?;
        // Consul 1.8 answers `null` or `[]` for an unknown session.
        let list: Option<Vec<SessionInfo>> = a.json(OP)?;
        Ok(list.and_then(|l| l.into_iter().next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_strings() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_millis(1)), "1ms");
    }
}
