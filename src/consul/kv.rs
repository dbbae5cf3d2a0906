//! The KV store: reads (blocking or not), writes, check-and-set, locks.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{Client, ConsulError, QueryMeta, QueryOptions};

/// One KV entry; the value as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session that holds the key's lock, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl RawKvPair {
    pub(crate) fn decode(self, op: &'static str) -> Result<KvPair, ConsulError> {
        let value = match self.value {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| ConsulError::Decode {
                    op,
                    detail: format!("value of {:?} is not base64: {e}", self.key),
                })?,
        };
        Ok(KvPair {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

impl Client {
    /// `GET /v1/kv/<key>`: the entry, or `None` when absent. The metadata is
    /// there either way (a blocking read on an absent key works).
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<(Option<KvPair>, QueryMeta), ConsulError> {
        const OP: &str = "kv.get";
        let a = self
            .send(OP, Method::GET, self.kv_url(OP, key)?, Some(opts), None)
            .await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok((None, a.meta));
        }
        let a = a.ok(OP)?;
        let raw: Vec<RawKvPair> = a.json(OP)?;
        let pair = raw.into_iter().next().map(|r| r.decode(OP)).transpose()?;
        Ok((pair, a.meta))
    }

    /// `GET /v1/kv/<prefix>?recurse`: every entry under `prefix`, sorted by key.
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), ConsulError> {
        const OP: &str = "kv.list";
        let mut url = self.kv_url(OP, prefix)?;
        url.query_pairs_mut().append_key_only("recurse");
        let a = self.send(OP, Method::GET, url, Some(opts), None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), a.meta));
        }
        let a = a.ok(OP)?;
        let raw: Vec<RawKvPair> = a.json(OP)?;
        let pairs = raw
            .into_iter()
            .map(|r| r.decode(OP))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((pairs, a.meta))
    }

    /// `GET /v1/kv/<prefix>?keys`: the keys under `prefix`; with a separator,
    /// only up to the next separator (like a directory listing).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<(Vec<String>, QueryMeta), ConsulError> {
        self.list_keys("kv.keys", prefix, separator, opts).await
    }

    async fn list_keys(
        &self,
        op: &'static str,
        prefix: &str,
        separator: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<(Vec<String>, QueryMeta), ConsulError> {
        let mut url = self.kv_url(op, prefix)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_key_only("keys");
            if let Some(sep) = separator {
                q.append_pair("separator", sep);
            }
        }
        let a = self.send(op, Method::GET, url, Some(opts), None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), a.meta));
        }
        let a = a.ok(op)?;
        Ok((a.json(op)?, a.meta))
    }

    /// A wake probe of the tree under `prefix` (see
    /// [`crate::watch::WAKE_SUFFIX`]): a keys-only listing of `prefix`
    /// followed by the suffix, blocking when `opts` says so. The keys it
    /// found (none, unless someone wrote under that very prefix), and the
    /// answer's meta, whose index is the KV store's.
    pub async fn kv_wake(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<(Vec<String>, QueryMeta), ConsulError> {
        let probe = format!("{prefix}{}", crate::watch::WAKE_SUFFIX);
        self.list_keys("kv.wake", &probe, Some("/"), opts).await
    }

    /// `PUT /v1/kv/<key>`: writes the value unconditionally.
    pub async fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), ConsulError> {
        const OP: &str = "kv.put";
        let ok = self.kv_write(OP, key, value, &[]).await?;
        if ok {
            Ok(())
        } else {
            Err(ConsulError::Decode {
                op: OP,
                detail: format!("Consul refused an unconditional write of {key:?}"),
            })
        }
    }

    /// `PUT /v1/kv/<key>?cas=<index>`: writes only if the key's ModifyIndex is
    /// still `index` (0: only if the key does not exist). A stale index is
    /// [`ConsulError::CasConflict`].
    pub async fn kv_cas(&self, key: &str, value: &[u8], index: u64) -> Result<(), ConsulError> {
        const OP: &str = "kv.cas";
        let ok = self
            .kv_write(OP, key, value, &[("cas", index.to_string())])
            .await?;
        if ok {
            Ok(())
        } else {
            Err(ConsulError::CasConflict {
                op: OP,
                target: key.to_string(),
                index,
            })
        }
    }

    /// `PUT /v1/kv/<key>?acquire=<session>`: takes the key's lock for the
    /// session and writes the value. False when another session holds it (or
    /// the lock-delay of a lost lock is still running).
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.kv_write(
            "kv.acquire",
            key,
            value,
            &[("acquire", session.to_string())],
        )
        .await
    }

    /// `PUT /v1/kv/<key>?release=<session>`: lets go of the key's lock. False
    /// when the session did not hold it.
    pub async fn kv_release(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        self.kv_write(
            "kv.release",
            key,
            value,
            &[("release", session.to_string())],
        )
        .await
    }

    async fn kv_write(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        params: &[(&str, String)],
    ) -> Result<bool, ConsulError> {
        let mut url = self.kv_url(op, key)?;
        for (k, v) in params {
            url.query_pairs_mut().append_pair(k, v);
        }
        let a = self
            .send(op, Method::PUT, url, None, Some(value.to_vec()))
            .await?
            .ok(op)?;
        a.bool(op)
    }

    /// `DELETE /v1/kv/<key>`: deletes one key (no error when absent).
    pub async fn kv_delete(&self, key: &str) -> Result<(), ConsulError> {
        const OP: &str = "kv.delete";
        self.send(OP, Method::DELETE, self.kv_url(OP, key)?, None, None)
            .await?
            .ok(OP)?;
        Ok(())
    }

    /// `DELETE /v1/kv/<key>?cas=<index>`: deletes only if the ModifyIndex is
    /// still `index`; a stale index is [`ConsulError::CasConflict`].
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<(), ConsulError> {
        const OP: &str = "kv.delete_cas";
        let mut url = self.kv_url(OP, key)?;
        url.query_pairs_mut().append_pair("cas", &index.to_string());
        let a = self
            .send(OP, Method::DELETE, url, None, None)
            .await?
            .ok(OP)?;
        if a.bool(OP)? {
            Ok(())
        } else {
            Err(ConsulError::CasConflict {
                op: OP,
                target: key.to_string(),
                index,
            })
        }
    }

    /// `DELETE /v1/kv/<prefix>?recurse`: deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), ConsulError> {
        const OP: &str = "kv.delete_tree";
        let mut url = self.kv_url(OP, prefix)?;
        url.query_pairs_mut().append_key_only("recurse");
        self.send(OP, Method::DELETE, url, None, None)
            .await?
            .ok(OP)?;
        Ok(())
    }
}
