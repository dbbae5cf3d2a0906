//! Config entries: read, list (blocking), write, write with check-and-set, delete.
//! Entries are JSON objects as Consul prints them (`Kind`, `Name`, ...).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{Client, ConsulError, QueryMeta, QueryOptions};

/// One config entry as Consul returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry(pub Value);

impl ConfigEntry {
    fn u64_field(&self, name: &str) -> u64 {
        self.0.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    fn str_field(&self, name: &str) -> &str {
        self.0.get(name).and_then(Value::as_str).unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.str_field("Kind")
    }

    pub fn name(&self) -> &str {
        self.str_field("Name")
    }

    pub fn create_index(&self) -> u64 {
        self.u64_field("CreateIndex")
    }

    pub fn modify_index(&self) -> u64 {
        self.u64_field("ModifyIndex")
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

impl Client {
    /// `GET /v1/config/<kind>/<name>`: the entry, or `None` when absent.
    pub async fn config_get(
        &self,
        kind: &str,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<(Option<ConfigEntry>, QueryMeta), ConsulError> {
        const OP: &str = "config.get";
        let url = self.url(&["v1", "config", kind, name], true);
        let a = self.send(OP, Method::GET, url, Some(opts), None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok((None, a.meta));
        }
        let a = a.ok(OP)?;
        let v: Value = a.json(OP)?;
        Ok((Some(ConfigEntry(v)), a.meta))
    }

    /// `GET /v1/config/<kind>`: every entry of a kind (blocking with an index).
    pub async fn config_list(
        &self,
        kind: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<ConfigEntry>, QueryMeta), ConsulError> {
        const OP: &str = "config.list";
        let url = self.url(&["v1", "config", kind], true);
        let a = self
            .send(OP, Method::GET, url, Some(opts), None)
            .await?
            .ok(OP)?;
        let list: Option<Vec<Value>> = a.json(OP)?;
        Ok((
            list.unwrap_or_default()
                .into_iter()
                .map(ConfigEntry)
                .collect(),
            a.meta,
        ))
    }

    /// `PUT /v1/config`: creates or replaces the entry; returns Consul's bool.
    pub async fn config_put(&self, entry: &Value) -> Result<bool, ConsulError> {
        self.config_write("config.put", entry, None).await
    }

    /// `PUT /v1/config?cas=<index>`: writes only if the entry's ModifyIndex is
    /// still `index` (0: only if absent); a stale index is
    /// [`ConsulError::CasConflict`].
    pub async fn config_cas(&self, entry: &Value, index: u64) -> Result<(), ConsulError> {
        const OP: &str = "config.cas";
        if self.config_write(OP, entry, Some(index)).await? {
            Ok(())
        } else {
            let kind = entry.get("Kind").and_then(Value::as_str).unwrap_or("?");
            let name = entry.get("Name").and_then(Value::as_str).unwrap_or("?");
            Err(ConsulError::CasConflict {
                op: OP,
                target: format!("{kind}/{name}"),
                index,
            })
        }
    }

    async fn config_write(
        &self,
        op: &'static str,
        entry: &Value,
        cas: Option<u64>,
    ) -> Result<bool, ConsulError> {
        let mut url = self.url(&["v1", "config"], true);
        if let Some(index) = cas {
            url.query_pairs_mut().append_pair("cas", &index.to_string());
        }
        let body = serde_json::to_vec(entry).expect("a JSON value serializes");
        let a = self
            .send(op, Method::PUT, url, None, Some(body))
            .await?
            .ok(op)?;
        a.bool(op)
    }

    /// `DELETE /v1/config/<kind>/<name>`: deletes the entry (no error when absent).
    pub async fn config_delete(&self, kind: &str, name: &str) -> Result<(), ConsulError> {
        const OP: &str = "config.delete";
        let url = self.url(&["v1", "config", kind, name], true);
        self.send(OP, Method::DELETE, url, None, None)
            .await?
            .ok(OP)?;
        Ok(())
    }
}
