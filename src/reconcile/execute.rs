//! Executes a plan's changes under the service's lock, in order: each write
//! is a check-and-set on the index read (a lost race is read again and
//! planned again with the same pure function), read back with a consistent
//! read and verified; its record is queued for the fenced transaction.
//! Links into a terminating gateway go through the gateway's committer
//! ([`super::commit`]), which writes the links of concurrent reconciles in
//! one batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::commit::LinkRequest;
use super::fence::Fence;
use super::outcome::Fail;
use super::Reconciler;
use crate::consul::{Client, ConfigEntry, QueryOptions};
use crate::entries;
use crate::keys::ServiceId;
use crate::kind::{Kind, Step};
use crate::plan::{self, Action, Change, Plan, RecordOp, Target};
use crate::records::{self, now_rfc3339, Objects, Record, Status};
use crate::spec::Spec;

/// One execution of a plan: what it has done so far.
pub(crate) struct Run<'a> {
    pub rec: &'a Reconciler,
    pub id: &'a ServiceId,
    pub base_key: String,
    /// The client in the service's partition and namespace.
    pub scoped: Client,
    pub generation: u64,
    pub fence: Fence<'a>,
    /// The objects as verified so far (for observed.json).
    pub objects: Objects,
    /// Something was written to a config entry.
    pub changed: bool,
    pub drifted: Vec<Kind>,
}

impl<'a> Run<'a> {
    fn target(&self) -> Target<'_> {
        Target {
            id: self.id,
            base_key: &self.base_key,
        }
    }

    /// Makes every change of `plan`, in order; stops at the first that fails
    /// (a blocked change fails with `conflict`). `spec` is `None` when
    /// base.json is gone.
    pub async fn execute(&mut self, plan: &Plan, spec: Option<&Spec>) -> Result<(), Fail> {
        self.objects = plan.objects(&self.target());
        if let Some(message) = plan.preflight_message() {
            let mut f = Fail::new(Status::Invalid, Step::Preflight, message);
            f.retry = plan.violations_depend_on_others;
            return Err(f);
        }
        // Adopting an entry would drop fields someone else wrote: nothing
        // is written at all, not even the entries before it.
        if let Some((change, b)) = plan.would_drop() {
            return Err(Fail::conflict(change.kind.step(), b));
        }
        let mut link_record = None;
        for change in &plan.changes {
            let step = match spec {
                Some(_) => change.kind.step(),
                None => Step::Delete,
            };
            if change.kind == Kind::TerminatingGateway {
                if let Some(r) = self.gateway(change, spec, step).await? {
                    link_record = Some(r);
                }
            } else if is_removal(change.kind, spec) {
                self.remove(change, step).await?;
            } else {
                self.upsert(change, spec, step).await?;
            }
        }
        if plan.forget {
            return Ok(());
        }
        let step = Step::TerminatingGateway;
        match (plan.gateway_record, link_record) {
            (RecordOp::Write, Some(r)) => self.fence.queue_record(step, r).await,
            (RecordOp::Delete, _) => {
                self.objects.terminating_gateway = None;
                self.fence
                    .delete_record(step, Kind::TerminatingGateway)
                    .await
            }
            _ => {}
        }
        Ok(())
    }

    /// The change of one of the service's own entries planned again from a
    /// fresh read of it.
    fn replan(&self, change: &Change, spec: Option<&Spec>, fresh: Option<&Value>) -> Change {
        let t = self.target();
        let records = &self.fence.records;
        match (change.kind, spec) {
            (k, Some(s)) => {
                let body = s.body(k);
                plan::entry_change(
                    &t,
                    k,
                    body,
                    s.adopt,
                    fresh,
                    records.get(&k),
                    self.generation,
                )
            }
            (k, None) => plan::removal_change(&t, k, fresh, records.get(&k)),
        }
    }

    /// One of the service's own entries, written to its body.
    async fn upsert(
        &mut self,
        change: &Change,
        spec: Option<&Spec>,
        step: Step,
    ) -> Result<(), Fail> {
        let (change, actual) = self.cas(change.clone(), spec, step).await?;
        let (Some(desired), Some(actual)) = (&change.desired, actual) else {
            return Err(Fail::error(
                step,
                format!("{}: absent after the write", change.what()),
            ));
        };
        let kind = change.kind;
        let t = self.target();
        *self.objects.slot(kind) = Some(plan::object_ref(&t, kind, &change.name, &actual));
        let (gen, now) = (self.generation, now_rfc3339());
        let mut record = Record::entry(kind, self.id, &self.base_key, gen, &actual, now);
        let differs = entries::verify(desired, &actual)
            .err()
            .map(|m| m.to_string());
        if differs.is_some() {
            // Recorded, so that this generation does not write it again
            // unless someone else changes it.
            self.rec.count_verify_failure(kind);
            record.differs = differs.clone();
        } else if change.suppressed {
            record.differs = self
                .fence
                .records
                .get(&kind)
                .and_then(|r| r.differs.clone());
        }
        self.fence.queue_record(step, record).await;
        match differs {
            Some(m) => Err(stored_differently(&change, &m, step)),
            None => Ok(()),
        }
    }

    /// One of the service's own entries removed (when svc-handler owns it),
    /// and its record.
    async fn remove(&mut self, change: &Change, step: Step) -> Result<(), Fail> {
        let kind = change.kind;
        if change.action == Action::Delete {
            let name = &change.name;
            match self
                .rec
                .retry(|| self.scoped.config_delete(kind.as_str(), name))
                .await
            {
                Ok(()) => {
                    self.rec.count_write(kind, "ok");
                    self.changed = true;
                }
                Err(e) => {
                    self.rec.count_write(kind, "error");
                    return Err(Fail::consul(step, &e));
                }
            }
        } else if let Some(note) = &change.note {
            tracing::info!(service = %self.id, kind = kind.as_str(), note, "not deleting an entry svc-handler does not own");
        }
        *self.objects.slot(kind) = None;
        if change.record == RecordOp::Delete {
            self.fence.delete_record(step, kind).await;
        }
        Ok(())
    }

    /// A link into the gateway base.json names (the record of it returned,
    /// to be queued once every stale link is out), or an unlink.
    async fn gateway(
        &mut self,
        change: &Change,
        spec: Option<&Spec>,
        step: Step,
    ) -> Result<Option<Record>, Fail> {
        let link = spec
            .and_then(|s| s.terminating_gateway.as_ref())
            .filter(|l| l.gateway == change.name);
        let Some(link) = link else {
            return self.unlink(change, step).await.map(|()| None);
        };
        if let Some(b) = &change.blocked {
            // Nothing of a blocked link is written, its intent included.
            return Err(Fail::conflict(step, b));
        }
        if let Some(intent) = &change.intent {
            // Recorded before the link is written, so that a crash between
            // the two leaves a link svc-handler knows is its own.
            self.fence.queue_record(step, intent.clone()).await;
            self.fence.flush(step, Vec::new()).await?;
        }
        let (change, actual) = self.commit_link(change, spec, step).await?;
        let Some(actual) = actual else {
            return Err(Fail::error(
                step,
                format!("{}: absent after the write", change.what()),
            ));
        };
        let t = self.target();
        let kind = Kind::TerminatingGateway;
        self.objects.terminating_gateway = Some(plan::object_ref(&t, kind, &change.name, &actual));
        let found = entries::find_link(&actual, self.id)
            .cloned()
            .unwrap_or(Value::Null);
        let (gen, now) = (self.generation, now_rfc3339());
        let mut record = Record::link(
            self.id,
            &self.base_key,
            &change.name,
            gen,
            found,
            Some(&actual),
            now,
        );
        if let Err(m) = entries::verify_link(&actual, self.id, link) {
            self.rec.count_verify_failure(kind);
            record.differs = Some(m.to_string());
            self.fence.queue_record(step, record).await;
            return Err(stored_differently(&change, &m.to_string(), step));
        }
        if change.suppressed {
            record.differs = self
                .fence
                .records
                .get(&kind)
                .and_then(|r| r.differs.clone());
        }
        Ok(Some(record))
    }

    /// This service's link taken out of a gateway it is leaving, checked
    /// absent in the gateway as read back.
    async fn unlink(&mut self, change: &Change, step: Step) -> Result<(), Fail> {
        let (change, actual) = self.commit_link(change, None, step).await?;
        if actual
            .as_ref()
            .and_then(|g| entries::find_link(g, self.id))
            .is_some()
        {
            let what = change.what();
            let message = format!(
                "{what}: the link of {} is still there after the write",
                self.id
            );
            return Err(Fail::error(step, message));
        }
        Ok(())
    }

    /// A link or unlink made through the gateway's committer, in one batch
    /// with those of concurrent reconciles (planned again there, against
    /// the gateway as the batch has it). A change that writes nothing is
    /// not submitted. Returns the change as made and the gateway as it then
    /// stands.
    async fn commit_link(
        &mut self,
        change: &Change,
        spec: Option<&Spec>,
        step: Step,
    ) -> Result<(Change, Option<Arc<Value>>), Fail> {
        if let Some(b) = &change.blocked {
            return Err(Fail::conflict(step, b));
        }
        if let Some(m) = &change.stuck {
            return Err(Fail::final_error(step, m.clone()));
        }
        if !change.action.writes() {
            if change.suppressed {
                self.rec.count_suppressed("entry");
            }
            return Ok((change.clone(), change.current.clone().map(Arc::new)));
        }
        let link = spec
            .and_then(|s| Some((s.terminating_gateway.clone()?, s.adopt.is_on())))
            .filter(|(l, _)| l.gateway == change.name);
        let request = LinkRequest {
            id: self.id.clone(),
            base_key: self.base_key.clone(),
            gateway: change.name.clone(),
            link,
            record: self.fence.records.get(&Kind::TerminatingGateway).cloned(),
            generation: self.generation,
        };
        let committer = self.rec.gateways();
        let made = committer
            .submit(self.rec, &self.scoped, request, step)
            .await?;
        if made.written {
            self.changed = true;
            if made.change.drift {
                self.drifted.push(Kind::TerminatingGateway);
            }
        }
        Ok((made.change, made.actual))
    }

    /// Writes `change` with check-and-set on the index of the entry it was
    /// planned from; after a lost race reads the entry again, plans the
    /// change again, and retries after a jittered delay. Returns the change
    /// as finally made and the entry as it then stands (read back after a
    /// write).
    async fn cas(
        &mut self,
        mut change: Change,
        spec: Option<&Spec>,
        step: Step,
    ) -> Result<(Change, Option<Value>), Fail> {
        let kind = change.kind;
        let attempts = self.rec.config().cas_attempts;
        let mut delays = self.rec.cas_delays(attempts);
        loop {
            if let Some(b) = &change.blocked {
                return Err(Fail::conflict(step, b));
            }
            if let Some(m) = &change.stuck {
                return Err(Fail::final_error(step, m.clone()));
            }
            if change.suppressed {
                self.rec.count_suppressed("entry");
            }
            let Some(new) = change.desired.as_ref().filter(|_| change.action.writes()) else {
                let current = change.current.clone();
                return Ok((change, current));
            };
            let index = change
                .current
                .as_ref()
                .map_or(0, |c| records::index(c, "ModifyIndex"));
            match self.rec.retry(|| self.scoped.config_cas(new, index)).await {
                Ok(()) => {
                    self.rec.count_write(kind, "ok");
                    self.changed = true;
                    if change.drift {
                        self.drifted.push(kind);
                    }
                    let actual = self.get(kind, &change.name, step).await?;
                    return Ok((change, actual));
                }
                Err(e) if e.is_cas_conflict() => {
                    self.rec.count_write(kind, "cas_retry");
                    let Some(delay) = delays.next() else {
                        let message = format!("{e}; gave up after {attempts} attempts");
                        return Err(Fail::error(step, message));
                    };
                    tokio::time::sleep(delay).await;
                    let fresh = self.get(kind, &change.name, step).await?;
                    change = self.replan(&change, spec, fresh.as_ref());
                }
                Err(e) => {
                    self.rec.count_write(kind, "error");
                    return Err(Fail::consul(step, &e));
                }
            }
        }
    }

    /// An entry, read with a consistent read.
    async fn get(&self, kind: Kind, name: &str, step: Step) -> Result<Option<Value>, Fail> {
        let opts = QueryOptions::consistent();
        let (entry, _) = self
            .rec
            .retry(|| self.scoped.config_get(kind.as_str(), name, &opts))
            .await
            .map_err(|e| Fail::consul(step, &e))?;
        if let Some(e) = &entry {
            self.rec.ledger().with(|l| l.not_kv(e.modify_index()));
        }
        Ok(entry.map(ConfigEntry::into_value))
    }
}

/// The failure of a write Consul stored differently from what was written:
/// final for the generation (the record says so, and the entry is not
/// written again unless someone else changes it).
fn stored_differently(change: &Change, mismatch: &str, step: Step) -> Fail {
    let what = change.what();
    Fail::final_error(
        step,
        format!("{what}: Consul stored it differently from what was written (read-back differs at {mismatch}); it is not written again until base.json or the entry changes"),
    )
}

/// True when `kind` is to be removed: base.json is gone, or it no longer
/// asks for a router or a splitter.
fn is_removal(kind: Kind, spec: Option<&Spec>) -> bool {
    spec.is_none_or(|s| kind.is_optional() && s.body(kind).is_none())
}

/// The objects svc-handler last verified, as its records say: what
/// observed.json shows when base.json cannot be planned (invalid).
pub(crate) fn recorded_objects(records: &BTreeMap<Kind, Record>) -> Objects {
    let mut objects = Objects::default();
    for (kind, r) in records {
        *objects.slot(*kind) = Some(records::ObjectRef {
            resource_id: r.resource_id.clone(),
            modify_index: r.modify_index,
        });
    }
    objects
}
