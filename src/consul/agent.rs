//! `GET /v1/agent/self`: what the local agent says of itself (its version).

use reqwest::Method;
use serde::Deserialize;

use super::{Client, ConsulError};

#[derive(Deserialize)]
struct AgentSelf {
    #[serde(rename = "Config")]
    config: AgentConfig,
}

#[derive(Deserialize)]
struct AgentConfig {
    #[serde(rename = "Version")]
    version: String,
}

/// What `GET /v1/acl/token/self` says of the token in use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenSelf {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "Description", default)]
    pub description: String,
}

/// What the token in use is, where ACLs are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclToken {
    /// ACLs are off.
    Disabled,
    /// ACLs are on and Consul does not know the token (or none was given:
    /// the anonymous token cannot read itself).
    Unknown,
    /// ACLs are on; this token.
    Known(TokenSelf),
}

impl Client {
    /// `GET /v1/acl/token/self`: whether ACLs are on, and which token is in use.
    pub async fn acl_token_self(&self) -> Result<AclToken, ConsulError> {
        const OP: &str = "acl.token_self";
        let url = self.url(&["v1", "acl", "token", "self"], false);
        match self.send(OP, Method::GET, url, None, None).await?.ok(OP) {
            Ok(a) => Ok(AclToken::Known(a.json(OP)?)),
            Err(e) if e.to_string().contains("ACL support disabled") => Ok(AclToken::Disabled),
            Err(e) if e.status() == Some(403) => Ok(AclToken::Unknown),
            Err(e) => Err(e),
        }
    }

    /// The agent's Consul version as it prints it (`1.8.7`). Needs
    /// `agent:read` where ACLs are on.
    pub async fn agent_version(&self) -> Result<String, ConsulError> {
        const OP: &str = "agent.self";
        let url = self.url(&["v1", "agent", "self"], false);
        let a = self.send(OP, Method::GET, url, None, None).await?.ok(OP)?;
        let me: AgentSelf = a.json(OP)?;
        Ok(me.config.version)
    }
}
