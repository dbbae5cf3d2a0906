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

impl Client {
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
