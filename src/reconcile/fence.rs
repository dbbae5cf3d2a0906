//! The records of one reconcile and the fenced transaction that writes them:
//! KV writes that apply only while this flow's session still holds the
//! service's lock (`check-session` first), so an instance that lost its lock
//! can never write a record or an outcome.

use std::collections::BTreeMap;

use super::outcome::Fail;
use super::Reconciler;
use crate::consul::{TxnKvOp, TxnOutcome};
use crate::keys::ServiceId;
use crate::kind::{Kind, Step};
use crate::lock::Session;
use crate::records::Record;

/// Record writes queued for the next fenced transaction, and the records as
/// they will stand once it commits.
pub(crate) struct Fence<'a> {
    pub rec: &'a Reconciler,
    pub id: &'a ServiceId,
    pub session: &'a Session,
    pub lock_key: String,
    /// The records found, updated as writes are queued.
    pub records: BTreeMap<Kind, Record>,
    pending: Vec<TxnKvOp>,
}

impl<'a> Fence<'a> {
    pub fn new(
        rec: &'a Reconciler,
        id: &'a ServiceId,
        session: &'a Session,
        records: BTreeMap<Kind, Record>,
    ) -> Self {
        Fence {
            lock_key: rec.layout().lock_key(id),
            rec,
            id,
            session,
            records,
            pending: Vec::new(),
        }
    }

    /// Queues `record` for the next fenced transaction; skips it when the
    /// stored one says the same.
    pub async fn queue_record(&mut self, step: Step, record: Record) {
        let Some(kind) = Kind::from_consul(&record.kind) else {
            return;
        };
        self.rec.hook_before_fenced_write(step, self.session).await;
        if self.records.get(&kind).is_some_and(|r| r.same_as(&record)) {
            return;
        }
        let value = serde_json::to_vec(&record).expect("record serializes");
        let key = self.rec.layout().record_key(self.id, kind);
        self.pending.push(TxnKvOp::Set { key, value });
        self.records.insert(kind, record);
    }

    /// Queues the removal of the record of `kind`, when there is one.
    pub async fn delete_record(&mut self, step: Step, kind: Kind) {
        if self.records.remove(&kind).is_none() {
            return;
        }
        self.rec.hook_before_fenced_write(step, self.session).await;
        let key = self.rec.layout().record_key(self.id, kind);
        self.pending.push(TxnKvOp::Delete { key });
    }

    /// The lock's release, as a transaction operation.
    pub fn unlock_op(&self) -> TxnKvOp {
        TxnKvOp::Unlock {
            key: self.lock_key.clone(),
            value: Vec::new(),
            session: self.session.id().to_string(),
        }
    }

    /// The lock key's removal, as a transaction operation: the lock of a
    /// service that is gone is not kept (after the fenced check, deleting
    /// the key releases it too).
    pub fn delete_lock_op(&self) -> TxnKvOp {
        TxnKvOp::Delete {
            key: self.lock_key.clone(),
        }
    }

    /// Commits the queued record writes, plus `extra`, in one fenced
    /// transaction.
    pub async fn flush(&mut self, step: Step, extra: Vec<TxnKvOp>) -> Result<(), Fail> {
        let mut ops = std::mem::take(&mut self.pending);
        ops.extend(extra);
        if ops.is_empty() {
            return Ok(());
        }
        self.fenced(step, ops).await
    }

    async fn fenced(&self, step: Step, ops: Vec<TxnKvOp>) -> Result<(), Fail> {
        if self.session.is_lost() {
            let message = "the session expired or was destroyed: the lock is lost";
            return Err(Fail::lock_lost(step, message));
        }
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(TxnKvOp::CheckSession {
            key: self.lock_key.clone(),
            session: self.session.id().to_string(),
        });
        all.extend(ops);
        // Counted in flight until its index is recorded: a shard woken by
        // it waits for that (see `crate::watch::ledger`).
        let _writing = self.rec.ledger().begin();
        match self.rec.retry(|| self.rec.client().txn(&all)).await {
            Ok(TxnOutcome::Committed(results)) => {
                // Every write of a transaction carries its raft index, the
                // highest of the results (the check-session's result carries
                // the lock's, older); a deletion reports no result, so a
                // transaction of deletions only tells no index.
                let sets = all.iter().any(TxnKvOp::reports_index);
                let index = results.iter().map(|r| r.modify_index).max();
                if let Some(index) = index.filter(|_| sets) {
                    let own = self.rec.kv_writes();
                    own.lock().unwrap_or_else(|e| e.into_inner()).record(index);
                    let keys = all.iter().filter_map(TxnKvOp::written_key);
                    let keys = keys.map(str::to_string).collect();
                    self.rec.ledger().with(|l| l.keys(index, keys));
                }
                Ok(())
            }
            Ok(TxnOutcome::RolledBack(errors)) => {
                let what = errors
                    .iter()
                    .map(|e| format!("op {}: {}", e.op_index, e.what))
                    .collect::<Vec<_>>()
                    .join("; ");
                if errors.iter().any(|e| e.op_index == 0) {
                    let holder = self.session.id();
                    let message =
                        format!("write refused: {holder} no longer holds the lock ({what})");
                    Err(Fail::lock_lost(step, message))
                } else {
                    Err(Fail::error(step, format!("write rolled back: {what}")))
                }
            }
            Err(e) => Err(Fail::consul(step, &e)),
        }
    }
}
