//! Transactions (`/v1/txn`) of KV operations: all apply, or none does and
//! Consul says which operation failed and why. Config entries cannot be part
//! of a transaction. At most 64 operations per transaction on Consul 1.8.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::kv::RawKvPair;
use super::{Client, ConsulError, KvPair};

/// One KV operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnKvOp {
    Set {
        key: String,
        value: Vec<u8>,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Get {
        key: String,
    },
    GetTree {
        key: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckSession {
        key: String,
        session: String,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    DeleteTree {
        key: String,
    },
}

impl TxnKvOp {
    /// The key this operation writes (sets, deletes, locks or releases);
    /// `None` for reads and checks. For a tree's deletion, its prefix.
    pub fn written_key(&self) -> Option<&str> {
        match self {
            TxnKvOp::Set { key, .. }
            | TxnKvOp::Cas { key, .. }
            | TxnKvOp::Lock { key, .. }
            | TxnKvOp::Unlock { key, .. }
            | TxnKvOp::Delete { key }
            | TxnKvOp::DeleteCas { key, .. }
            | TxnKvOp::DeleteTree { key } => Some(key),
            TxnKvOp::Get { .. }
            | TxnKvOp::GetTree { .. }
            | TxnKvOp::CheckIndex { .. }
            | TxnKvOp::CheckSession { .. }
            | TxnKvOp::CheckNotExists { .. } => None,
        }
    }

    /// True for a write that Consul answers with the key's entry, and so
    /// with the transaction's raft index (a deletion answers nothing).
    pub fn reports_index(&self) -> bool {
        matches!(
            self,
            TxnKvOp::Set { .. }
                | TxnKvOp::Cas { .. }
                | TxnKvOp::Lock { .. }
                | TxnKvOp::Unlock { .. }
        )
    }

    fn to_json(&self) -> Value {
        let b64 = |v: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(v));
        let mut kv = Map::new();
        let (verb, key) = match self {
            TxnKvOp::Set { key, value } => {
                kv.insert("Value".into(), b64(value));
                ("set", key)
            }
            TxnKvOp::Cas { key, value, index } => {
                kv.insert("Value".into(), b64(value));
                kv.insert("Index".into(), json!(index));
                ("cas", key)
            }
            TxnKvOp::Lock {
                key,
                value,
                session,
            } => {
                kv.insert("Value".into(), b64(value));
                kv.insert("Session".into(), json!(session));
                ("lock", key)
            }
            TxnKvOp::Unlock {
                key,
                value,
                session,
            } => {
                kv.insert("Value".into(), b64(value));
                kv.insert("Session".into(), json!(session));
                ("unlock", key)
            }
            TxnKvOp::Get { key } => ("get", key),
            TxnKvOp::GetTree { key } => ("get-tree", key),
            TxnKvOp::CheckIndex { key, index } => {
                kv.insert("Index".into(), json!(index));
                ("check-index", key)
            }
            TxnKvOp::CheckSession { key, session } => {
                kv.insert("Session".into(), json!(session));
                ("check-session", key)
            }
            TxnKvOp::CheckNotExists { key } => ("check-not-exists", key),
            TxnKvOp::Delete { key } => ("delete", key),
            TxnKvOp::DeleteCas { key, index } => {
                kv.insert("Index".into(), json!(index));
                ("delete-cas", key)
            }
            TxnKvOp::DeleteTree { key } => ("delete-tree", key),
        };
        kv.insert("Verb".into(), json!(verb));
        kv.insert("Key".into(), json!(key));
        json!({ "KV": kv })
    }
}

/// The result of one operation of a committed transaction (writes report the
/// key and its new indexes, with an empty value).
pub type TxnKvResult = KvPair;

/// Why a transaction was rolled back: which operation, and Consul's words.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TxnError {
    #[serde(rename = "OpIndex")]
    pub op_index: usize,
    #[serde(rename = "What")]
    pub what: String,
}

/// What became of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation applied, results in order.
    Committed(Vec<TxnKvResult>),
    /// Nothing applied.
    RolledBack(Vec<TxnError>),
}

impl TxnOutcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed(_))
    }
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<RawKvPair>,
}

#[derive(Deserialize)]
struct TxnBody {
    #[serde(rename = "Results", default)]
    results: Option<Vec<TxnResult>>,
    #[serde(rename = "Errors", default)]
    errors: Option<Vec<TxnError>>,
}

impl Client {
    /// `PUT /v1/txn` with KV operations. A rolled-back transaction (HTTP 409)
    /// is `Ok(TxnOutcome::RolledBack)` with the per-operation errors; other
    /// refusals (too many operations, too large) are errors.
    pub async fn txn(&self, ops: &[TxnKvOp]) -> Result<TxnOutcome, ConsulError> {
        self.txn_as("txn", ops).await
    }

    /// [`Client::txn`], counted in the request metrics and named in errors
    /// as `op` (a lock taken with a transaction is still `kv.acquire`).
    pub async fn txn_as(
        &self,
        op: &'static str,
        ops: &[TxnKvOp],
    ) -> Result<TxnOutcome, ConsulError> {
        let body: Vec<Value> = ops.iter().map(TxnKvOp::to_json).collect();
        let body = serde_json::to_vec(&body).expect("txn body serializes");
        let url = self.url(&["v1", "txn"], true);
        let a = self.send(op, Method::PUT, url, None, Some(body)).await?;
        if a.status == StatusCode::CONFLICT {
            let parsed: TxnBody = a.json(op)?;
            return Ok(TxnOutcome::RolledBack(parsed.errors.unwrap_or_default()));
        }
        let a = a.ok(op)?;
        let parsed: TxnBody = a.json(op)?;
        let results = parsed
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(|r| r.decode(op))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxnOutcome::Committed(results))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_serialize_as_consul_expects() {
        let op = TxnKvOp::CheckSession {
            key: "l".into(),
            session: "s".into(),
        };
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "check-session", "Key": "l", "Session": "s"}})
        );
        let op = TxnKvOp::Cas {
            key: "k".into(),
            value: b"hi".to_vec(),
            index: 4,
        };
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "cas", "Key": "k", "Value": "aGk=", "Index": 4}})
        );
    }
}
