//! The reconcile flow of one service, step by step:
//! lock → read base.json → parse → defaults → resolver → router? → tgw link? →
//! snapshot → observed.json → unlock. Each object is read, compared, written
//! with check-and-set only when it differs, read back and verified, and its
//! record written in a transaction fenced by the lock (`check-session`), so
//! an instance that lost its lock can never write a record.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use serde_json::Value;
use tracing::Instrument;

use crate::consul::{
    Client, ConfigEntry, Consistency, ConsulError, QueryOptions, Scope, TxnKvOp, TxnOutcome,
};
use crate::entries::{self, EntryKind, Ownership};
use crate::keys::{self, DesiredKey, Layout, RecordKind, ServiceId};
use crate::lock::{self, LockAttempt, Session, SessionConfig};
use crate::metrics::Metrics;
use crate::records::{now_rfc3339, ObjectRef, Objects, Observed, Record, Status};
use crate::spec::{self, Spec, TgwLinkSpec};

/// Every read of the flow is consistent: the leader confirms it still leads.
const CONSISTENT: QueryOptions = QueryOptions {
    consistency: Consistency::Consistent,
    index: None,
    wait: None,
};

/// Consul 1.8 answers 500 to some config entries it refuses on validation
/// (`discovery chain ... uses inconsistent protocols`): asking again gives the
/// same answer, so such a 500 is not retried.
fn is_refusal(e: &ConsulError) -> bool {
    matches!(e, ConsulError::Status { status: 500, body, .. } if body.contains("discovery chain"))
}

/// A boxed future, for [`FlowHook`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called at fixed points of the flow; tests use it to inject faults (for
/// example destroying the session just before a fenced write).
pub trait FlowHook: Send + Sync {
    /// Before every fenced write; `step` names the step writing.
    fn before_fenced_write<'a>(&'a self, step: &'a str, session: &'a str) -> BoxFuture<'a, ()>;
}

/// How a reconcile behaves.
#[derive(Clone, Debug)]
pub struct ReconcilerConfig {
    pub layout: Layout,
    /// Who this instance is, as `observed.json` and lock values say.
    pub holder: String,
    pub session: SessionConfig,
    /// How many times an entry write is retried after a check-and-set loss.
    pub cas_attempts: usize,
    /// The same for a shared terminating gateway, where many services race.
    pub link_cas_attempts: usize,
    /// Retries of a Consul request that failed in a retryable way.
    pub request_retries: usize,
}

impl ReconcilerConfig {
    pub fn new(layout: Layout, holder: impl Into<String>) -> Self {
        let holder = holder.into();
        ReconcilerConfig {
            layout,
            session: SessionConfig {
                name: format!("svc-handler {holder}"),
                ttl: Duration::from_secs(15),
                lock_delay: Duration::from_secs(1),
            },
            holder,
            cas_attempts: 8,
            link_cas_attempts: 64,
            request_retries: 3,
        }
    }
}

/// What a reconcile ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything in base.json is in Consul; `changed` when anything was written
    /// to Consul's config entries.
    Applied {
        changed: bool,
        drifted: Vec<EntryKind>,
    },
    /// Ended with `status` at `step`; observed.json says so.
    Failed {
        status: Status,
        step: String,
        message: String,
    },
    /// Already in place (observed.json shows this generation applied, and in
    /// every entry matches): nothing written, no lock taken.
    UpToDate,
    /// Another instance holds the service's lock: nothing done.
    HeldElsewhere { holder: Option<String> },
    /// base.json is gone: what svc-handler owned is removed (pruned or not).
    Deleted { pruned: bool },
    /// No base.json and nothing of the service's left: nothing to do.
    Absent,
    /// The lock was lost during the flow; fenced writes were refused, so
    /// observed.json could not be written either.
    LockLost { step: String, message: String },
}

impl Outcome {
    /// The `result` label of `svc_handler_reconcile_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Outcome::Applied { changed: true, .. } => "applied",
            Outcome::Applied { changed: false, .. } | Outcome::UpToDate => "unchanged",
            Outcome::Failed { status, .. } => status.as_str(),
            Outcome::HeldElsewhere { .. } => "held_elsewhere",
            Outcome::Deleted { .. } | Outcome::Absent => "deleted",
            Outcome::LockLost { .. } => "error",
        }
    }

    /// True for the outcomes `--once` exits non-zero on.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::LockLost { .. })
    }
}

/// The result of one reconcile.
#[derive(Clone, Debug)]
pub struct Report {
    pub id: ServiceId,
    pub outcome: Outcome,
    /// The base.json ModifyIndex the flow worked on, when it read one.
    pub generation: Option<u64>,
    pub duration: Duration,
    /// The objects as this flow left them (when it applied).
    pub objects: Option<Objects>,
}

/// Why a step ended the flow.
#[derive(Debug)]
struct Fail {
    status: Status,
    step: &'static str,
    message: String,
    lock_lost: bool,
}

impl Fail {
    fn new(status: Status, step: &'static str, message: impl Into<String>) -> Self {
        Fail {
            status,
            step,
            message: message.into(),
            lock_lost: false,
        }
    }

    fn error(step: &'static str, message: impl Into<String>) -> Self {
        Fail::new(Status::Error, step, message)
    }

    /// A Consul error: a body Consul could not decode is the user's input
    /// (`invalid`); anything else is an `error` with Consul's own words.
    fn consul(step: &'static str, e: &ConsulError) -> Self {
        let msg = e.to_string();
        let invalid = e.status() == Some(400)
            && (msg.contains("Request decoding failed") || msg.contains("invalid config key"));
        Fail::new(
            if invalid {
                Status::Invalid
            } else {
                Status::Error
            },
            step,
            msg,
        )
    }

    /// The outcome a flow ends with when this step stopped it.
    fn into_outcome(self) -> Outcome {
        if self.lock_lost {
            Outcome::LockLost {
                step: self.step.into(),
                message: self.message,
            }
        } else {
            Outcome::Failed {
                status: self.status,
                step: self.step.into(),
                message: self.message,
            }
        }
    }

    fn lock_lost(step: &'static str, message: impl Into<String>) -> Self {
        Fail {
            lock_lost: true,
            ..Fail::error(step, message)
        }
    }
}

/// What a check-and-set update did.
enum Cas {
    /// Nothing to write; the entry as read (if any).
    Unchanged(Option<ConfigEntry>),
    Written,
}

/// What one flow knows while it holds the lock.
struct Ctx<'s> {
    id: ServiceId,
    base_key: String,
    lock_key: String,
    session: &'s Session,
    /// The client in the service's partition and namespace (config entries).
    scoped: Client,
    generation: u64,
    /// The records found, with their KV ModifyIndex.
    records: HashMap<RecordKind, Record>,
    changed: bool,
    drifted: Vec<EntryKind>,
    /// Record writes not yet committed: they go with the next fenced
    /// transaction (at the latest the one that writes observed.json).
    pending: Vec<TxnKvOp>,
    /// The objects as verified by this flow, for observed.json.
    objects: Objects,
}

/// Runs the flow for services.
#[derive(Clone)]
pub struct Reconciler {
    client: Client,
    cfg: Arc<ReconcilerConfig>,
    metrics: Arc<Metrics>,
    hook: Option<Arc<dyn FlowHook>>,
}

impl Reconciler {
    /// `client` is scoped where svc-handler's own keys live.
    pub fn new(client: Client, cfg: ReconcilerConfig, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            client,
            cfg: Arc::new(cfg),
            metrics,
            hook: None,
        }
    }

    pub fn with_hook(mut self, hook: Arc<dyn FlowHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn layout(&self) -> &Layout {
        &self.cfg.layout
    }

    pub fn config(&self) -> &ReconcilerConfig {
        &self.cfg
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reconciles one service under a lock held with `session` (which the
    /// caller owns and may share between flows). Releases the lock at the end.
    /// `prune`: when base.json is gone, delete the entries svc-handler owns
    /// (else only its records).
    pub async fn reconcile(&self, id: &ServiceId, prune: bool, session: &Session) -> Report {
        self.reconcile_locked(id, prune, session)
            .instrument(self.span(id))
            .await
    }

    /// When the service is already in place, the report saying so; reads
    /// only, no session or lock needed. `None` when a reconcile has to run
    /// (or the check could not tell).
    pub async fn check(&self, id: &ServiceId, _prune: bool) -> Option<Report> {
        let span = self.span(id);
        async {
            let started = Instant::now();
            match self.precheck(id).await {
                Ok(Some(generation)) => {
                    Some(self.finish(id, Outcome::UpToDate, Some(generation), started))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "pre-check failed; running the flow");
                    None
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One span per reconcile, carrying the service key and (once read) the
    /// generation.
    fn span(&self, id: &ServiceId) -> tracing::Span {
        tracing::info_span!(
            "reconcile",
            service = %id,
            key = %self.cfg.layout.base_key(id),
            generation = tracing::field::Empty,
        )
    }

    async fn reconcile_locked(&self, id: &ServiceId, prune: bool, session: &Session) -> Report {
        let started = Instant::now();
        let lock_key = self.cfg.layout.lock_key(id);
        match lock::try_lock(&self.client, session, &lock_key, &self.cfg.holder).await {
            Ok(LockAttempt::Acquired) => {
                self.metrics
                    .lock_acquisitions
                    .with_label_values(&["acquired"])
                    .inc();
            }
            Ok(LockAttempt::HeldElsewhere { holder }) => {
                self.metrics
                    .lock_acquisitions
                    .with_label_values(&["held_elsewhere"])
                    .inc();
                let outcome = Outcome::HeldElsewhere { holder };
                return self.finish(id, outcome, None, started);
            }
            Err(e) => {
                let message = format!("cannot take the lock {lock_key}: {e}");
                return self.lock_failed(id, message, started);
            }
        }

        let (outcome, generation, released, objects) =
            self.locked(id, prune, session, &lock_key, started).await;

        if !released {
            match lock::unlock(&self.client, session, &lock_key).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(service = %id, "the lock was no longer ours at release")
                }
                Err(e) => {
                    tracing::warn!(service = %id, error = %e, "could not release the lock; it frees itself with the session")
                }
            }
        }
        self.finish_with(id, outcome, generation, started, objects)
    }

    /// Reads, without the lock, whether the service is already in place;
    /// returns the generation when it is: observed.json and every entry are
    /// compared.
    async fn precheck(&self, id: &ServiceId) -> Result<Option<u64>, ConsulError> {
        let layout = &self.cfg.layout;
        let base_key = layout.base_key(id);
        let (base, _) = self.client.kv_get(&base_key, &CONSISTENT).await?;
        let Some(base) = base else {
            return Ok(None);
        };
        let (observed, _) = self
            .client
            .kv_get(&layout.observed_key(id), &CONSISTENT)
            .await?;
        let Some(observed) =
            observed.and_then(|o| serde_json::from_slice::<Observed>(&o.value).ok())
        else {
            return Ok(None);
        };
        if observed.status != Status::Applied || observed.generation != base.modify_index {
            return Ok(None);
        }
        let Ok(spec) = spec::parse(&base.value) else {
            return Ok(None);
        };
        let scoped = self
            .client
            .scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
        for (kind, body) in [
            (EntryKind::ServiceDefaults, spec.defaults.as_ref()),
            (EntryKind::ServiceResolver, spec.resolver.as_ref()),
            (EntryKind::ServiceRouter, spec.router.as_ref()),
        ] {
            let (current, _) = scoped
                .config_get(kind.as_str(), &id.name, &CONSISTENT)
                .await?;
            let wanted = kind != EntryKind::ServiceRouter || spec.router.is_some();
            let in_place = match (&current, wanted) {
                (Some(c), true) => {
                    let desired = entries::build_entry(kind, id, body, &base_key);
                    entries::entries_equal(&desired, &c.0)
                }
                (None, true) => false,
                (Some(c), false) => entries::ownership(Some(&c.0), &base_key) != Ownership::Ours,
                (None, false) => true,
            };
            if !in_place {
                return Ok(None);
            }
        }
        let (records, _) = self
            .client
            .kv_get(&layout.record_key(id, RecordKind::Tgw), &CONSISTENT)
            .await?;
        let recorded: Option<Record> = records.and_then(|r| serde_json::from_slice(&r.value).ok());
        match (&spec.terminating_gateway, recorded) {
            (None, None) => {}
            (None, Some(_)) | (Some(_), None) => return Ok(None),
            (Some(link), Some(rec)) => {
                if rec.name != link.gateway || rec.previous_gateway.is_some() {
                    return Ok(None);
                }
                let (gw, _) = scoped
                    .config_get("terminating-gateway", &link.gateway, &CONSISTENT)
                    .await?;
                let Some(gw) = gw else { return Ok(None) };
                if entries::upsert_link(Some(&gw.0), &link.gateway, id, link, &base_key).is_some() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(base.modify_index))
    }

    /// The report of a flow that could not take its lock.
    pub(crate) fn lock_failed(&self, id: &ServiceId, message: String, started: Instant) -> Report {
        self.metrics
            .lock_acquisitions
            .with_label_values(&["error"])
            .inc();
        let outcome = Outcome::Failed {
            status: Status::Error,
            step: "lock".into(),
            message,
        };
        self.finish(id, outcome, None, started)
    }

    fn finish(
        &self,
        id: &ServiceId,
        outcome: Outcome,
        generation: Option<u64>,
        started: Instant,
    ) -> Report {
        self.finish_with(id, outcome, generation, started, None)
    }

    fn finish_with(
        &self,
        id: &ServiceId,
        outcome: Outcome,
        generation: Option<u64>,
        started: Instant,
        objects: Option<Objects>,
    ) -> Report {
        let duration = started.elapsed();
        if let Some(g) = generation {
            tracing::Span::current().record("generation", g);
        }
        let label = outcome.result_label();
        if label != "held_elsewhere" {
            self.metrics
                .reconcile_total
                .with_label_values(&[label])
                .inc();
            self.metrics
                .reconcile_duration
                .with_label_values(&[label])
                .observe(duration.as_secs_f64());
        }
        if let Outcome::Applied { drifted, .. } = &outcome {
            for k in drifted {
                self.metrics
                    .drift_corrections
                    .with_label_values(&[k.as_str()])
                    .inc();
            }
        }
        match &outcome {
            Outcome::Failed {
                status,
                step,
                message,
            } => {
                tracing::warn!(service = %id, generation, %status, step, message, "reconcile failed")
            }
            Outcome::LockLost { step, message } => {
                tracing::error!(service = %id, generation, step, message, "lost the lock during reconcile")
            }
            other => {
                tracing::info!(service = %id, generation, result = label, duration_ms = duration.as_millis() as u64, outcome = ?other, "reconciled")
            }
        }
        Report {
            id: id.clone(),
            outcome,
            generation,
            duration,
            objects,
        }
    }

    /// The flow under the lock.
    async fn locked(
        &self,
        id: &ServiceId,
        prune: bool,
        session: &Session,
        lock_key: &str,
        started: Instant,
    ) -> (Outcome, Option<u64>, bool, Option<Objects>) {
        let layout = &self.cfg.layout;
        let base_key = layout.base_key(id);
        let dir = format!("{}/", layout.service_dir(id));
        let listing = self.retry(|| self.client.kv_list(&dir, &CONSISTENT)).await;
        let pairs = match listing {
            Ok((pairs, _)) => pairs,
            Err(e) => {
                return (
                    Outcome::Failed {
                        status: Status::Error,
                        step: "read".into(),
                        message: e.to_string(),
                    },
                    None,
                    false,
                    None,
                )
            }
        };
        let mut base = None;
        let mut records = HashMap::new();
        for p in pairs {
            match layout.parse_desired_key(&p.key) {
                DesiredKey::Base(_) => base = Some(p),
                DesiredKey::Record(_, kind) => match serde_json::from_slice::<Record>(&p.value) {
                    Ok(r) => {
                        records.insert(kind, r);
                    }
                    Err(e) => {
                        tracing::warn!(key = %p.key, error = %e, "ignoring an unreadable record")
                    }
                },
                _ => {}
            }
        }
        let mut ctx = Ctx {
            id: id.clone(),
            base_key: base_key.clone(),
            lock_key: lock_key.to_string(),
            session,
            scoped: self
                .client
                .scoped(Scope::new(id.partition.clone(), id.namespace.clone())),
            generation: base.as_ref().map_or(0, |b| b.modify_index),
            records,
            changed: false,
            drifted: Vec::new(),
            pending: Vec::new(),
            objects: Objects::default(),
        };

        let Some(base) = base else {
            let generation = None;
            return match self.delete_flow(&mut ctx, prune).await {
                Ok(Outcome::Absent) => (Outcome::Absent, generation, false, None),
                Ok(outcome) => (outcome, generation, true, None),
                Err(f) => (f.into_outcome(), generation, false, None),
            };
        };
        let generation = Some(base.modify_index);

        let result = match spec::parse(&base.value) {
            Err(e) => Err(Fail::new(
                Status::Invalid,
                "parse",
                format!("{base_key}: {e}"),
            )),
            Ok(spec) => self.apply_flow(&mut ctx, &spec).await,
        };
        let applied_objects = result.as_ref().ok().cloned();
        let (observed, outcome) = match result {
            Ok(objects) => (
                self.observed(&ctx, Status::Applied, None, None, objects, started),
                Outcome::Applied {
                    changed: ctx.changed,
                    drifted: ctx.drifted.clone(),
                },
            ),
            Err(f) if f.lock_lost => return (f.into_outcome(), generation, false, None),
            Err(f) => {
                let objects = self.snapshot(&ctx).await.unwrap_or_default();
                let observed = self.observed(
                    &ctx,
                    f.status,
                    Some(f.message.clone()),
                    Some(f.step),
                    objects,
                    started,
                );
                (observed, f.into_outcome())
            }
        };
        // One transaction: the records not yet written, observed.json, and
        // the lock's release, all fenced by the lock.
        let bytes = serde_json::to_vec(&observed).expect("observed serializes");
        if let Some(h) = &self.hook {
            h.before_fenced_write("observed", ctx.session.id()).await;
        }
        let extra = vec![
            TxnKvOp::Set {
                key: layout.observed_key(id),
                value: bytes,
            },
            self.unlock_op(&ctx),
        ];
        let write = self.flush(&mut ctx, "observed", extra).await;
        match write {
            Ok(()) => (outcome, generation, true, applied_objects),
            // A failed final write is an error, whatever the step said.
            Err(f) => (
                Fail {
                    status: Status::Error,
                    ..f
                }
                .into_outcome(),
                generation,
                false,
                None,
            ),
        }
    }

    fn observed(
        &self,
        ctx: &Ctx<'_>,
        status: Status,
        message: Option<String>,
        step: Option<&str>,
        objects: Objects,
        started: Instant,
    ) -> Observed {
        Observed {
            status,
            generation: ctx.generation,
            message,
            step: step.map(str::to_string),
            objects,
            updated_at: now_rfc3339(),
            duration_ms: started.elapsed().as_millis() as u64,
            holder: self.cfg.holder.clone(),
            base_key: ctx.base_key.clone(),
        }
    }

    /// The ordered upserts, then the snapshot.
    async fn apply_flow(&self, ctx: &mut Ctx<'_>, spec: &Spec) -> Result<Objects, Fail> {
        // A router that left base.json goes first: while it exists, the
        // defaults cannot go back to a protocol the router cannot use.
        if spec.router.is_none() {
            self.remove_entry(ctx, EntryKind::ServiceRouter, "router")
                .await?;
        }
        self.upsert_entry(ctx, spec, EntryKind::ServiceDefaults, "defaults")
            .await?;
        self.upsert_entry(ctx, spec, EntryKind::ServiceResolver, "resolver")
            .await?;
        if spec.router.is_some() {
            self.upsert_entry(ctx, spec, EntryKind::ServiceRouter, "router")
                .await?;
        }
        match &spec.terminating_gateway {
            Some(link) => self.link(ctx, link, spec.adopt).await?,
            None => self.unlink_recorded(ctx).await?,
        }
        Ok(ctx.objects.clone())
    }

    /// One config entry: read, ownership check, compare, CAS write, read
    /// back, verify, record.
    async fn upsert_entry(
        &self,
        ctx: &mut Ctx<'_>,
        spec: &Spec,
        kind: EntryKind,
        step: &'static str,
    ) -> Result<(), Fail> {
        let body = match kind {
            EntryKind::ServiceDefaults => spec.defaults.as_ref(),
            EntryKind::ServiceResolver => spec.resolver.as_ref(),
            EntryKind::ServiceRouter => spec.router.as_ref(),
            EntryKind::TerminatingGateway => unreachable!("links go through link()"),
        };
        let desired = entries::build_entry(kind, &ctx.id, body, &ctx.base_key);
        let kind_s = kind.as_str();
        let name = ctx.id.name.clone();
        let outcome = self
            .cas_update(
                ctx,
                kind_s,
                &name,
                step,
                self.cfg.cas_attempts,
                |ctx, current| {
                    self.check_owner(ctx, kind, current, spec.adopt, step)?;
                    Ok(match current {
                        Some(c) if entries::entries_equal(&desired, &c.0) => None,
                        _ => Some(desired.clone()),
                    })
                },
            )
            .await?;
        let actual = match outcome {
            Cas::Unchanged(current) => current.expect("an equal entry exists"),
            Cas::Written => {
                if let Some(rec) = ctx.records.get(&kind.record_kind()) {
                    // We wrote it before and it no longer matches our
                    // record: someone changed it behind our back.
                    if rec.generation == ctx.generation {
                        ctx.drifted.push(kind);
                    }
                }
                self.read_back(ctx, kind_s, &name, step).await?
            }
        };
        if let Err(m) = entries::verify(&desired, &actual.0) {
            self.metrics
                .verify_failures
                .with_label_values(&[kind_s])
                .inc();
            return Err(Fail::error(
                step,
                format!("{kind_s}/{}: read-back differs at {m}", ctx.id.name),
            ));
        }
        let object_ref = Some(ObjectRef {
            resource_id: keys::resource_id(kind_s, &ctx.id),
            modify_index: actual.modify_index(),
        });
        match kind {
            EntryKind::ServiceDefaults => ctx.objects.defaults = object_ref,
            EntryKind::ServiceResolver => ctx.objects.resolver = object_ref,
            EntryKind::ServiceRouter => ctx.objects.router = object_ref,
            EntryKind::TerminatingGateway => {}
        }
        let record = Record {
            kind: kind_s.to_string(),
            name: ctx.id.name.clone(),
            partition: ctx.id.partition.clone(),
            namespace: ctx.id.namespace.clone(),
            resource_id: keys::resource_id(kind_s, &ctx.id),
            create_index: actual.create_index(),
            modify_index: actual.modify_index(),
            generation: ctx.generation,
            object: actual.0.clone(),
            verified_at: now_rfc3339(),
            base_key: ctx.base_key.clone(),
            service: None,
            previous_gateway: None,
        };
        self.write_record(ctx, kind.record_kind(), record, step)
            .await
    }

    fn check_owner(
        &self,
        ctx: &Ctx<'_>,
        kind: EntryKind,
        current: Option<&ConfigEntry>,
        adopt: bool,
        step: &'static str,
    ) -> Result<(), Fail> {
        let what = format!("{}/{}", kind.as_str(), ctx.id.name);
        match entries::ownership(current.map(|c| &c.0), &ctx.base_key) {
            Ownership::Absent | Ownership::Ours => Ok(()),
            Ownership::Unmarked if adopt => Ok(()),
            // Rewritten without the mark (as `consul config write` of a file
            // without Meta does) after svc-handler recorded writing it: ours,
            // drifted.
            Ownership::Unmarked if ctx.records.contains_key(&kind.record_kind()) => Ok(()),
            Ownership::Unmarked => Err(Fail::new(
                Status::Conflict,
                step,
                format!(
                    "{what} exists without svc-handler's ownership mark; it is left unchanged (set \"adopt\": true in base.json to take it over)"
                ),
            )),
            Ownership::Other { key, managed_by } => {
                let by = match (managed_by.is_empty(), key.is_empty()) {
                    (false, false) => format!("{managed_by} for {key}"),
                    (false, true) => managed_by,
                    (true, _) => format!("svc-handler for {key}"),
                };
                Err(Fail::new(
                    Status::Conflict,
                    step,
                    format!("{what} is managed by {by}; it is left unchanged"),
                ))
            }
        }
    }

    /// Deletes an entry svc-handler owns (router removed from base.json, or
    /// the service deleted), and its record.
    async fn remove_entry(
        &self,
        ctx: &mut Ctx<'_>,
        kind: EntryKind,
        step: &'static str,
    ) -> Result<(), Fail> {
        let kind_s = kind.as_str();
        let current = self.get_entry(ctx, kind_s, step).await?;
        let owner = entries::ownership(current.as_ref().map(|c| &c.0), &ctx.base_key);
        let recorded = ctx.records.contains_key(&kind.record_kind());
        if owner == Ownership::Ours || (owner == Ownership::Unmarked && recorded) {
            match self
                .retry(|| ctx.scoped.config_delete(kind_s, &ctx.id.name))
                .await
            {
                Ok(()) => {
                    self.count_write(kind_s, "ok");
                    ctx.changed = true;
                }
                Err(e) => {
                    self.count_write(kind_s, "error");
                    return Err(Fail::consul(step, &e));
                }
            }
        } else if current.is_some() {
            tracing::info!(service = %ctx.id, kind = kind_s, "not deleting an entry svc-handler does not own");
        }
        self.delete_record(ctx, kind.record_kind(), step).await
    }

    /// Adds or replaces this service's link in the gateway `link.gateway`;
    /// removes it from a gateway it was linked to before.
    async fn link(&self, ctx: &mut Ctx<'_>, link: &TgwLinkSpec, adopt: bool) -> Result<(), Fail> {
        const STEP: &str = "terminating_gateway";
        const KIND: &str = "terminating-gateway";
        let gateway = link.gateway.as_str();
        let prior = ctx.records.get(&RecordKind::Tgw).cloned();
        // Gateways this service may still be linked into, besides `gateway`:
        // the one recorded, and one a crashed earlier run was moving away from.
        let mut stale: Vec<String> = prior
            .iter()
            .flat_map(|r| [Some(r.name.clone()), r.previous_gateway.clone()])
            .flatten()
            .filter(|g| g != gateway)
            .collect();
        stale.dedup();
        if prior.as_ref().map(|r| r.name.as_str()) != Some(gateway) {
            // First link into this gateway. A link already there that no
            // record of ours explains belongs to someone else.
            let current = self.get_entry_named(ctx, KIND, gateway, STEP).await?;
            if current
                .as_ref()
                .and_then(|c| entries::find_link(&c.0, &ctx.id))
                .is_some()
                && !adopt
            {
                return Err(Fail::new(
                    Status::Conflict,
                    STEP,
                    format!(
                        "terminating-gateway/{gateway} already links {} and svc-handler has no record of writing it; it is left unchanged (set \"adopt\": true to take it over)",
                        ctx.id.name
                    ),
                ));
            }
            // Record the intent before writing the link, so that a crash
            // between the two leaves a link svc-handler knows is its own.
            let intent = Record {
                kind: KIND.to_string(),
                name: gateway.to_string(),
                partition: ctx.id.partition.clone(),
                namespace: ctx.id.namespace.clone(),
                resource_id: keys::link_resource_id(
                    &ctx.id.partition,
                    &ctx.id.namespace,
                    gateway,
                    &ctx.id.name,
                ),
                create_index: 0,
                modify_index: 0,
                generation: ctx.generation,
                object: entries::link_object(&ctx.id, link),
                verified_at: String::new(),
                base_key: ctx.base_key.clone(),
                service: Some(ctx.id.name.clone()),
                previous_gateway: stale.first().cloned(),
            };
            self.queue_record(ctx, RecordKind::Tgw, intent);
            self.flush(ctx, STEP, Vec::new()).await?;
        }
        let attempts = self.cfg.link_cas_attempts;
        let outcome = self
            .cas_update(ctx, KIND, gateway, STEP, attempts, |ctx, current| {
                Ok(entries::upsert_link(
                    current.map(|c| &c.0),
                    gateway,
                    &ctx.id,
                    link,
                    &ctx.base_key,
                ))
            })
            .await?;
        let actual = match outcome {
            Cas::Unchanged(current) => current.expect("an equal link implies a gateway"),
            Cas::Written => self.read_back(ctx, KIND, gateway, STEP).await?,
        };
        if let Err(m) = entries::verify_link(&actual.0, &ctx.id, link) {
            self.metrics
                .verify_failures
                .with_label_values(&[KIND])
                .inc();
            return Err(Fail::error(
                STEP,
                format!("terminating-gateway/{gateway}: read-back of the link differs at {m}"),
            ));
        }
        // Linked to another gateway before: take that link out now.
        for old in &stale {
            self.unlink(ctx, old).await?;
        }
        let object = entries::find_link(&actual.0, &ctx.id)
            .cloned()
            .unwrap_or(Value::Null);
        ctx.objects.terminating_gateway = Some(ObjectRef {
            resource_id: keys::link_resource_id(
                &ctx.id.partition,
                &ctx.id.namespace,
                gateway,
                &ctx.id.name,
            ),
            modify_index: actual.modify_index(),
        });
        let record = Record {
            kind: KIND.to_string(),
            name: gateway.to_string(),
            partition: ctx.id.partition.clone(),
            namespace: ctx.id.namespace.clone(),
            resource_id: keys::link_resource_id(
                &ctx.id.partition,
                &ctx.id.namespace,
                gateway,
                &ctx.id.name,
            ),
            create_index: actual.create_index(),
            modify_index: actual.modify_index(),
            generation: ctx.generation,
            object,
            verified_at: now_rfc3339(),
            base_key: ctx.base_key.clone(),
            service: Some(ctx.id.name.clone()),
            previous_gateway: None,
        };
        self.write_record(ctx, RecordKind::Tgw, record, STEP).await
    }

    /// Removes the link tgw.json records, then tgw.json.
    async fn unlink_recorded(&self, ctx: &mut Ctx<'_>) -> Result<(), Fail> {
        let Some(rec) = ctx.records.get(&RecordKind::Tgw).cloned() else {
            return Ok(());
        };
        self.unlink(ctx, &rec.name).await?;
        if let Some(prev) = rec.previous_gateway.filter(|p| *p != rec.name) {
            self.unlink(ctx, &prev).await?;
        }
        ctx.objects.terminating_gateway = None;
        self.delete_record(ctx, RecordKind::Tgw, "terminating_gateway")
            .await
    }

    /// Takes this service's link out of `gateway`, keeping everything else.
    async fn unlink(&self, ctx: &mut Ctx<'_>, gateway: &str) -> Result<(), Fail> {
        const STEP: &str = "terminating_gateway";
        const KIND: &str = "terminating-gateway";
        let attempts = self.cfg.link_cas_attempts;
        self.cas_update(ctx, KIND, gateway, STEP, attempts, |ctx, current| {
            Ok(current.and_then(|c| entries::remove_link(&c.0, &ctx.id)))
        })
        .await?;
        Ok(())
    }

    /// base.json is gone: remove what svc-handler owns (when pruning), in
    /// reverse order, then the records and observed.json.
    async fn delete_flow(&self, ctx: &mut Ctx<'_>, prune: bool) -> Result<Outcome, Fail> {
        let observed_key = self.cfg.layout.observed_key(&ctx.id);
        let observed = self
            .retry(|| self.client.kv_get(&observed_key, &CONSISTENT))
            .await
            .map_err(|e| Fail::error("delete", e.to_string()))?
            .0;
        if ctx.records.is_empty() && observed.is_none() {
            return Ok(Outcome::Absent);
        }
        if prune {
            self.unlink_recorded(ctx).await?;
            for kind in [
                EntryKind::ServiceRouter,
                EntryKind::ServiceResolver,
                EntryKind::ServiceDefaults,
            ] {
                self.remove_entry(ctx, kind, "delete").await?;
            }
        }
        let mut ops: Vec<TxnKvOp> = RecordKind::ALL
            .iter()
            .map(|k| TxnKvOp::Delete {
                key: self.cfg.layout.record_key(&ctx.id, *k),
            })
            .collect();
        ops.push(TxnKvOp::Delete { key: observed_key });
        ops.push(self.unlock_op(ctx));
        if let Some(h) = &self.hook {
            h.before_fenced_write("delete", ctx.session.id()).await;
        }
        self.flush(ctx, "delete", ops).await?;
        Ok(Outcome::Deleted { pruned: prune })
    }

    /// Reads every object back (consistent) for observed.json.
    async fn snapshot(&self, ctx: &Ctx<'_>) -> Result<Objects, Fail> {
        const STEP: &str = "snapshot";
        let mut objects = Objects::default();
        for (kind, slot) in [
            (EntryKind::ServiceDefaults, &mut objects.defaults),
            (EntryKind::ServiceResolver, &mut objects.resolver),
            (EntryKind::ServiceRouter, &mut objects.router),
        ] {
            let kind_s = kind.as_str();
            if let Some(e) = self.get_entry(ctx, kind_s, STEP).await? {
                if entries::ownership(Some(&e.0), &ctx.base_key) == Ownership::Ours {
                    *slot = Some(ObjectRef {
                        resource_id: keys::resource_id(kind_s, &ctx.id),
                        modify_index: e.modify_index(),
                    });
                }
            }
        }
        if let Some(rec) = ctx.records.get(&RecordKind::Tgw) {
            let gw = self
                .get_entry_named(ctx, "terminating-gateway", &rec.name, STEP)
                .await?;
            if let Some(gw) = gw.filter(|g| entries::find_link(&g.0, &ctx.id).is_some()) {
                objects.terminating_gateway = Some(ObjectRef {
                    resource_id: rec.resource_id.clone(),
                    modify_index: gw.modify_index(),
                });
            }
        }
        Ok(objects)
    }

    /// Read-modify-write of one config entry with check-and-set: reads it
    /// (consistent), asks `next` for the entry to write (`None`: nothing to
    /// do), writes it with `cas` on the index just read, and on a lost race
    /// reads again after a jittered delay, `attempts` times at most.
    async fn cas_update(
        &self,
        ctx: &mut Ctx<'_>,
        kind: &str,
        name: &str,
        step: &'static str,
        attempts: usize,
        mut next: impl FnMut(&Ctx<'_>, Option<&ConfigEntry>) -> Result<Option<Value>, Fail>,
    ) -> Result<Cas, Fail> {
        let mut delays = self.cas_delays(attempts);
        loop {
            let current = self.get_entry_named(ctx, kind, name, step).await?;
            let Some(new) = next(ctx, current.as_ref())? else {
                return Ok(Cas::Unchanged(current));
            };
            let index = current.as_ref().map_or(0, ConfigEntry::modify_index);
            match self.retry(|| ctx.scoped.config_cas(&new, index)).await {
                Ok(()) => {
                    self.count_write(kind, "ok");
                    ctx.changed = true;
                    return Ok(Cas::Written);
                }
                Err(e) if e.is_cas_conflict() => {
                    self.count_write(kind, "cas_retry");
                    match delays.next() {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            return Err(Fail::error(
                                step,
                                format!("{e}; gave up after {attempts} attempts"),
                            ))
                        }
                    }
                }
                Err(e) => {
                    self.count_write(kind, "error");
                    return Err(Fail::consul(step, &e));
                }
            }
        }
    }

    /// The entry just written, read back with a consistent read.
    async fn read_back(
        &self,
        ctx: &Ctx<'_>,
        kind: &str,
        name: &str,
        step: &'static str,
    ) -> Result<ConfigEntry, Fail> {
        self.get_entry_named(ctx, kind, name, step)
            .await?
            .ok_or_else(|| {
                Fail::error(
                    step,
                    format!("{kind}/{name}: written, but gone on read-back"),
                )
            })
    }

    async fn get_entry(
        &self,
        ctx: &Ctx<'_>,
        kind: &str,
        step: &'static str,
    ) -> Result<Option<ConfigEntry>, Fail> {
        self.get_entry_named(ctx, kind, &ctx.id.name, step).await
    }

    async fn get_entry_named(
        &self,
        ctx: &Ctx<'_>,
        kind: &str,
        name: &str,
        step: &'static str,
    ) -> Result<Option<ConfigEntry>, Fail> {
        self.retry(|| ctx.scoped.config_get(kind, name, &CONSISTENT))
            .await
            .map(|(e, _)| e)
            .map_err(|e| Fail::consul(step, &e))
    }

    /// Queues a record for the next fenced transaction; skips it when the
    /// stored one says the same. The record of a step is committed together
    /// with observed.json (or earlier, with an intent), never without the lock.
    async fn write_record(
        &self,
        ctx: &mut Ctx<'_>,
        kind: RecordKind,
        record: Record,
        step: &'static str,
    ) -> Result<(), Fail> {
        if let Some(h) = &self.hook {
            h.before_fenced_write(step, ctx.session.id()).await;
        }
        self.queue_record(ctx, kind, record);
        Ok(())
    }

    fn queue_record(&self, ctx: &mut Ctx<'_>, kind: RecordKind, record: Record) {
        if ctx.records.get(&kind).is_some_and(|r| r.same_as(&record)) {
            return;
        }
        let bytes = serde_json::to_vec(&record).expect("record serializes");
        ctx.pending.push(TxnKvOp::Set {
            key: self.cfg.layout.record_key(&ctx.id, kind),
            value: bytes,
        });
        ctx.records.insert(kind, record);
    }

    async fn delete_record(
        &self,
        ctx: &mut Ctx<'_>,
        kind: RecordKind,
        step: &'static str,
    ) -> Result<(), Fail> {
        if ctx.records.remove(&kind).is_none() {
            return Ok(());
        }
        if let Some(h) = &self.hook {
            h.before_fenced_write(step, ctx.session.id()).await;
        }
        ctx.pending.push(TxnKvOp::Delete {
            key: self.cfg.layout.record_key(&ctx.id, kind),
        });
        Ok(())
    }

    /// Commits the queued record writes, plus `extra`, in one fenced
    /// transaction.
    async fn flush(
        &self,
        ctx: &mut Ctx<'_>,
        step: &'static str,
        extra: Vec<TxnKvOp>,
    ) -> Result<(), Fail> {
        let mut ops = std::mem::take(&mut ctx.pending);
        ops.extend(extra);
        if ops.is_empty() {
            return Ok(());
        }
        self.fenced(ctx, step, ops).await
    }

    /// Releases the lock inside a transaction.
    fn unlock_op(&self, ctx: &Ctx<'_>) -> TxnKvOp {
        TxnKvOp::Unlock {
            key: ctx.lock_key.clone(),
            value: Vec::new(),
            session: ctx.session.id().to_string(),
        }
    }

    /// KV writes in one transaction that applies only while this flow's
    /// session still holds the service's lock.
    async fn fenced(
        &self,
        ctx: &Ctx<'_>,
        step: &'static str,
        ops: Vec<TxnKvOp>,
    ) -> Result<(), Fail> {
        if ctx.session.is_lost() {
            return Err(Fail::lock_lost(
                step,
                "the session expired or was destroyed: the lock is lost",
            ));
        }
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(TxnKvOp::CheckSession {
            key: ctx.lock_key.clone(),
            session: ctx.session.id().to_string(),
        });
        all.extend(ops);
        match self.retry(|| self.client.txn(&all)).await {
            Ok(TxnOutcome::Committed(_)) => Ok(()),
            Ok(TxnOutcome::RolledBack(errors)) => {
                let what = errors
                    .iter()
                    .map(|e| format!("op {}: {}", e.op_index, e.what))
                    .collect::<Vec<_>>()
                    .join("; ");
                if errors.iter().any(|e| e.op_index == 0) {
                    Err(Fail::lock_lost(
                        step,
                        format!(
                            "write refused: {} no longer holds the lock ({what})",
                            ctx.session.id()
                        ),
                    ))
                } else {
                    Err(Fail::error(step, format!("write rolled back: {what}")))
                }
            }
            Err(e) => Err(Fail::consul(step, &e)),
        }
    }

    fn count_write(&self, kind: &str, result: &str) {
        self.metrics
            .object_writes
            .with_label_values(&[kind, result])
            .inc();
    }

    fn cas_delays(&self, attempts: usize) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(250))
            .with_max_times(attempts)
            .build()
    }

    /// Retries a Consul request that failed in a retryable way, with capped,
    /// jittered exponential backoff.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T, ConsulError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ConsulError>>,
    {
        let metrics = Arc::clone(&self.metrics);
        f.retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(self.cfg.request_retries),
        )
        .when(|e| e.is_retryable() && !is_refusal(e))
        .notify(move |e, after| {
            metrics.retries.inc();
            tracing::debug!(error = %e, ?after, "retrying a Consul request");
        })
        .await
    }

    /// For a key under the desired prefix that does not fit the layout: when
    /// it ends in `/base.json`, writes an `invalid` observed.json at the
    /// mirrored place under the observed prefix and returns that key; else
    /// only logs. Nothing else is touched.
    pub async fn report_invalid_key(
        &self,
        key: &str,
        reason: &str,
        generation: u64,
    ) -> Result<Option<String>, ConsulError> {
        let desired = self.cfg.layout.desired_prefix();
        let observed_key = key
            .strip_prefix(&desired)
            .and_then(|rest| rest.strip_suffix(keys::BASE_FILE))
            .map(|dir| {
                format!(
                    "{}{dir}{}",
                    self.cfg.layout.observed_prefix(),
                    keys::OBSERVED_FILE
                )
            });
        tracing::error!(
            key,
            reason,
            "a key under the desired prefix does not fit the layout"
        );
        let Some(observed_key) = observed_key else {
            return Ok(None);
        };
        let observed = Observed {
            status: Status::Invalid,
            generation,
            message: Some(format!("{key}: {reason}")),
            step: Some("key".into()),
            objects: Objects::default(),
            updated_at: now_rfc3339(),
            duration_ms: 0,
            holder: self.cfg.holder.clone(),
            base_key: key.to_string(),
        };
        let bytes = serde_json::to_vec(&observed).expect("observed serializes");
        self.client.kv_put(&observed_key, &bytes).await?;
        self.metrics
            .reconcile_total
            .with_label_values(&["invalid"])
            .inc();
        Ok(Some(observed_key))
    }
}
