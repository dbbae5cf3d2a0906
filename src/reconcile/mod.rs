//! The reconcile of one service: read what is there ([`read::read_current`]),
//! decide purely what changes ([`crate::plan`]), and, under the service's
//! lock, execute the plan's changes ([`execute`]) and commit the records,
//! observed.json and the lock's release in one fenced transaction
//! ([`fence`]). Links into a shared gateway from concurrent reconciles are
//! written together ([`commit`]). Two entry points: [`Reconciler::check`] (is it in sync?
//! reads only) and [`Reconciler::reconcile`] (the flow under a session).

mod commit;
mod execute;
mod fence;
mod outcome;
mod read;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tracing::Instrument;

use crate::consul::{Client, ConsulError, Scope, TxnKvOp};
use crate::fields::{Version, NEWEST};
use crate::keys::{self, Layout, ServiceId};
use crate::kind::{Kind, Step};
use crate::lock::{self, LockAttempt, Session, SessionConfig};
use crate::metrics::Metrics;
use crate::plan::{self, Current, Desired, Target};
use crate::records::{now_rfc3339, Objects, Observed, Pause, Record, Status};
use crate::spec::{self, ParseOptions, Spec};
use crate::watch::ledger::SharedLedger;
use crate::watch::OwnWrites;

use commit::GatewayCommitter;
use execute::Run;
use fence::Fence;
pub(crate) use outcome::Fail;
pub use outcome::{Outcome, Report};
pub use read::{read_current, read_current_parsed, read_prior, Prior};

/// What the in-sync check found. (Returned once per service and matched at
/// once: the size of a report is no cost here.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    /// In place: nothing to do; the report says so.
    InSync(Report),
    /// A reconcile has to run, from what the check read (`None`: it could
    /// not read).
    Run(Option<Box<Prior>>),
}

impl Checked {
    /// The service is in place.
    pub fn is_in_sync(&self) -> bool {
        matches!(self, Checked::InSync(_))
    }
}

/// A boxed future, for [`FlowHook`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called at fixed points of the flow; tests use it to inject faults (for
/// example destroying the session just before a fenced write).
pub trait FlowHook: Send + Sync {
    /// Before every fenced write; `step` names the step writing (an
    /// observed.json `step` value).
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
    /// How long a gateway's committer waits, once a first link change
    /// arrives, for those of concurrent reconciles to join its batch.
    pub link_batch_window: Duration,
    /// Retries of a Consul request that failed in a retryable way.
    pub request_retries: usize,
}

impl ReconcilerConfig {
    pub fn new(layout: Layout, holder: impl Into<String>) -> Self {
        let holder = holder.into();
        ReconcilerConfig {
            layout,
            session: SessionConfig::for_holder(&holder),
            holder,
            cas_attempts: 8,
            link_cas_attempts: 64,
            link_batch_window: Duration::from_millis(10),
            request_retries: 3,
        }
    }
}

/// How the flow under the lock ended.
struct Finished {
    outcome: Outcome,
    generation: Option<u64>,
    /// The lock was released in the final transaction.
    released: bool,
    /// The objects as left, when the flow applied.
    objects: Option<Objects>,
}

impl Finished {
    fn failed(f: Fail, generation: Option<u64>) -> Finished {
        Finished {
            outcome: f.into_outcome(),
            generation,
            released: false,
            objects: None,
        }
    }
}

/// Runs the flow for services.
#[derive(Clone)]
pub struct Reconciler {
    client: Client,
    cfg: Arc<ReconcilerConfig>,
    metrics: Arc<Metrics>,
    hook: Option<Arc<dyn FlowHook>>,
    /// The Consul version base.json is checked against, once known.
    consul_version: Arc<OnceLock<Version>>,
    /// One committer per shared gateway, for every clone of this reconciler.
    gateways: Arc<GatewayCommitter>,
    /// Link records the watch saw last for services whose folder was then
    /// deleted whole (`consul kv delete -recurse`): the reconcile that
    /// forgets such a service still knows which link is its own.
    remembered: Arc<std::sync::Mutex<HashMap<ServiceId, Record>>>,
    /// The raft indexes of this instance's committed fenced transactions
    /// (records and observed.json), for the observed.json watch's probe.
    kv_writes: Arc<std::sync::Mutex<OwnWrites>>,
    /// Every raft index this instance wrote at, with what it wrote, for the
    /// desired watch ([`crate::watch::ledger`]).
    ledger: Arc<SharedLedger>,
}

impl Reconciler {
    /// `client` is scoped where svc-handler's own keys live.
    pub fn new(client: Client, cfg: ReconcilerConfig, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            client,
            cfg: Arc::new(cfg),
            metrics,
            hook: None,
            consul_version: Arc::default(),
            gateways: Arc::default(),
            remembered: Arc::default(),
            kv_writes: Arc::default(),
            ledger: Arc::default(),
        }
    }

    /// The watch's last listing had this link record for `id`, whose folder
    /// is gone now (records included): the reconcile that forgets the
    /// service takes the link out as its own. Used only while base.json is
    /// absent and no record is found; forgotten when the service is
    /// deleted, absent or applied again.
    pub fn remember_link(&self, id: &ServiceId, gateway: &str, link: serde_json::Value) {
        let base_key = self.layout().base_key(id);
        let record = Record::link(id, &base_key, gateway, 0, link, None, String::new());
        self.memory().insert(id.clone(), record);
    }

    /// The indexes of this instance's committed fenced transactions.
    pub fn kv_writes(&self) -> &Arc<std::sync::Mutex<OwnWrites>> {
        &self.kv_writes
    }

    /// The raft indexes of this instance's writes, and what each wrote.
    pub fn ledger(&self) -> &Arc<SharedLedger> {
        &self.ledger
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceId, Record>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remembered_link(&self, id: &ServiceId) -> Option<Record> {
        self.memory().get(id).cloned()
    }

    /// Reads the agent's Consul version, so that a field newer than the
    /// running Consul is `invalid` before any write. Without it (no
    /// `agent:read`, an unreadable answer), fields are checked against the
    /// newest Consul svc-handler knows, and Consul itself refuses the rest.
    pub async fn detect_consul_version(&self) -> Option<Version> {
        let read = self.client.agent_version().await;
        match read.as_deref().map(str::parse::<Version>) {
            Ok(Ok(v)) => {
                tracing::info!(consul = %v, "base.json fields are checked against this Consul version");
                Some(*self.consul_version.get_or_init(|| v))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, newest = %NEWEST, "cannot read Consul's version; fields are checked against the newest Consul svc-handler knows");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, newest = %NEWEST, "cannot read Consul's version (agent:read needed); fields are checked against the newest Consul svc-handler knows");
                None
            }
        }
    }

    /// base.json parsed and checked against the Consul in use.
    fn parse(&self, bytes: &[u8]) -> Result<Spec, spec::SpecError> {
        let consul_version = self.consul_version.get().copied().unwrap_or(NEWEST);
        spec::parse_with(bytes, &ParseOptions { consul_version })
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

    pub(crate) fn gateways(&self) -> &Arc<GatewayCommitter> {
        &self.gateways
    }

    /// Reconciles one service under a lock held with `session` (which the
    /// caller owns and may share between flows). Releases the lock at the end.
    /// `prune`: when base.json is gone, delete the entries svc-handler owns
    /// (else only its records).
    /// `prior`: what the in-sync check read, when it ran just before (see
    /// [`read::read_under_lock`]).
    pub async fn reconcile(
        &self,
        id: &ServiceId,
        prune: bool,
        session: &Session,
        prior: Option<Box<Prior>>,
    ) -> Report {
        self.reconcile_locked(id, prune, session, prior)
            .instrument(self.span(id))
            .await
    }

    /// When the service is already in place (its plan writes nothing, and
    /// observed.json says applied for this generation), the report saying
    /// so; reads only, no session or lock. Else [`Checked::Run`]: a
    /// reconcile has to run (or the check could not tell), from what the
    /// check read when it could read.
    pub async fn check(&self, id: &ServiceId, prune: bool) -> Checked {
        let started = Instant::now();
        let span = self.span(id);
        let parse = |b: &[u8]| self.parse(b);
        let remembered = self.remembered_link(id);
        let read = read_prior(&self.client, self.layout(), id, &parse, remembered.as_ref())
            .instrument(span.clone())
            .await;
        let prior = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, "in-sync check failed; running the flow");
                return Checked::Run(None);
            }
        };
        match self.settled(id, prune, &prior, &span) {
            Some(outcome) => {
                let _enter = span.enter();
                Checked::InSync(self.finish(id, outcome, prior.current.generation, started))
            }
            None => Checked::Run(Some(Box::new(prior))),
        }
    }

    /// The check's verdict on what it read: the outcome of a service
    /// already in place, or `None`.
    fn settled(
        &self,
        id: &ServiceId,
        prune: bool,
        prior: &Prior,
        span: &tracing::Span,
    ) -> Option<Outcome> {
        let current = &prior.current;
        let base_key = self.layout().base_key(id);
        let t = Target {
            id,
            base_key: &base_key,
        };
        let observed = current.observed.as_ref();
        if let Some(pause) = &current.paused {
            let _enter = span.enter();
            return paused_settled(pause, observed, current.generation);
        }
        match &prior.parsed {
            None => {
                let plan = plan::plan(&t, &Desired::Gone { prune }, current);
                plan.in_sync(&t, observed).then_some(Outcome::Absent)
            }
            Some(Err(_)) => observed
                .filter(|o| {
                    (o.status, o.step, Some(o.generation))
                        == (Status::Invalid, Some(Step::Parse), current.generation)
                })
                .map(|_| Outcome::Settled {
                    status: Status::Invalid,
                }),
            Some(Ok(spec)) => {
                let plan = plan::plan(&t, &desired(Some(spec), current, prune), current);
                if plan.in_sync(&t, observed) {
                    Some(Outcome::UpToDate)
                } else {
                    plan.settled(observed)
                        .map(|status| Outcome::Settled { status })
                }
            }
        }
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

    async fn reconcile_locked(
        &self,
        id: &ServiceId,
        prune: bool,
        session: &Session,
        prior: Option<Box<Prior>>,
    ) -> Report {
        let started = Instant::now();
        let mut prior = prior;
        let lock_key = self.cfg.layout.lock_key(id);
        // When the service's folder moved since the check read it (another
        // instance's reconcile, most often, between this one's check and
        // now), the check runs again first: a service another instance just
        // put in place then costs reads, not a lock taken and released. The
        // lock key is read at the same time (one round trip for both): a
        // lock another session holds is not asked for.
        let mut seen = None;
        for _ in 0..2 {
            let Some(p) = &prior else { break };
            let (unmoved, held) = tokio::join!(
                read::folder_unmoved(&self.client, self.layout(), id, p),
                lock::held_by_another(&self.client, session, &lock_key),
            );
            if unmoved {
                seen = held.ok();
                break;
            }
            match self.check(id, prune).await {
                Checked::InSync(report) => return report,
                Checked::Run(fresh) => prior = fresh,
            }
        }
        let holder = &self.cfg.holder;
        let attempt = match seen {
            Some(Some(other)) => Ok(LockAttempt::HeldElsewhere { holder: other }),
            Some(None) => lock::acquire(&self.client, session, &lock_key, holder).await,
            None => lock::try_lock(&self.client, session, &lock_key, holder).await,
        };
        match attempt {
            Ok(LockAttempt::Acquired(index)) => {
                self.count_lock("acquired");
                self.ledger_lock_write(index, &lock_key);
            }
            Ok(LockAttempt::HeldElsewhere { holder }) => {
                self.count_lock("held_elsewhere");
                return self.finish(id, Outcome::HeldElsewhere { holder }, None, started);
            }
            Err(e) => {
                let message = format!("cannot take the lock {lock_key}: {e}");
                return self.lock_failed(id, message, started);
            }
        }
        let done = self.locked(id, prune, session, started, prior).await;
        if !done.released {
            match lock::unlock(&self.client, session, &lock_key).await {
                Ok(Some(index)) => self.ledger_lock_write(index, &lock_key),
                Ok(None) => {
                    tracing::warn!(service = %id, "the lock was no longer ours at release")
                }
                Err(e) => {
                    tracing::warn!(service = %id, error = %e, "could not release the lock; it frees itself with the session")
                }
            }
        }
        self.finish_with(id, done.outcome, done.generation, started, done.objects)
    }

    /// Tells the ledger that the raft index `index` wrote the lock key
    /// alone (its taking or its release).
    fn ledger_lock_write(&self, index: u64, lock_key: &str) {
        self.ledger
            .with(|l| l.keys(index, vec![lock_key.to_string()]));
    }

    /// The report of a flow that could not take its lock.
    pub(crate) fn lock_failed(&self, id: &ServiceId, message: String, started: Instant) -> Report {
        self.count_lock("error");
        let outcome = Outcome::Failed {
            status: Status::Error,
            step: Step::Lock,
            message,
            retry: true,
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
        if matches!(
            outcome,
            Outcome::Deleted { .. } | Outcome::Absent | Outcome::Applied { .. } | Outcome::UpToDate
        ) {
            self.memory().remove(id);
        }
        self.count_outcome(&outcome, duration);
        log_outcome(id, &outcome, generation, duration);
        Report {
            id: id.clone(),
            outcome,
            generation,
            duration,
            objects,
        }
    }

    fn count_outcome(&self, outcome: &Outcome, duration: Duration) {
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
        if let Outcome::Applied { drifted, .. } = outcome {
            for k in drifted {
                self.metrics
                    .drift_corrections
                    .with_label_values(&[k.as_str()])
                    .inc();
            }
        }
    }

    /// The flow under the lock: read, plan, execute, commit.
    async fn locked(
        &self,
        id: &ServiceId,
        prune: bool,
        session: &Session,
        started: Instant,
        prior: Option<Box<Prior>>,
    ) -> Finished {
        let parse = |b: &[u8]| self.parse(b);
        let remembered = self.remembered_link(id);
        let (client, layout) = (&self.client, self.layout());
        let read =
            match read::read_under_lock(client, layout, id, &parse, remembered.as_ref(), prior)
                .await
            {
                Ok(r) => Ok(r),
                Err(_) => {
                    self.retry(|| {
                        read_current_parsed(client, layout, id, &parse, remembered.as_ref())
                    })
                    .await
                }
            };
        let (current, parsed) = match read {
            Ok(r) => r,
            Err(e) => return Finished::failed(Fail::error(Step::Read, e.to_string()), None),
        };
        let mut run = Run {
            rec: self,
            id,
            base_key: self.layout().base_key(id),
            scoped: self
                .client
                .scoped(Scope::new(id.partition.clone(), id.namespace.clone())),
            generation: current.generation.unwrap_or(0),
            fence: Fence::new(self, id, session, current.records.clone()),
            objects: Objects::default(),
            changed: false,
            drifted: Vec::new(),
        };
        let previous = current.observed.as_ref();
        if let Some(pause) = &current.paused {
            // Nothing of the service is written, deleted or corrected.
            run.objects = execute::recorded_objects(&current.records);
            let fail = Fail::new(Status::Paused, Step::Pause, pause.message());
            return (self.commit(&mut run, Err(fail), current.generation, started, previous)).await;
        }
        let Some(parsed) = parsed else {
            return self.delete(&mut run, prune, &current).await;
        };
        let generation = current.generation;
        let result = match parsed {
            Err(e) => {
                run.objects = execute::recorded_objects(&current.records);
                Err(Fail::new(
                    Status::Invalid,
                    Step::Parse,
                    format!("{}: {e}", run.base_key),
                ))
            }
            Ok(spec) => self.apply(&mut run, &spec, &current).await,
        };
        self.commit(&mut run, result, generation, started, previous)
            .await
    }

    /// Plans and executes the changes toward `spec`.
    async fn apply(&self, run: &mut Run<'_>, spec: &Spec, current: &Current) -> Result<(), Fail> {
        let t = Target {
            id: run.id,
            base_key: &run.base_key,
        };
        let desired = Desired::Spec {
            spec,
            generation: run.generation,
        };
        let plan = plan::plan(&t, &desired, current);
        run.execute(&plan, Some(spec)).await
    }

    /// Writes observed.json with the records and the lock's release, in one
    /// fenced transaction.
    async fn commit(
        &self,
        run: &mut Run<'_>,
        result: Result<(), Fail>,
        generation: Option<u64>,
        started: Instant,
        previous: Option<&Observed>,
    ) -> Finished {
        let (observed, outcome, objects) = match result {
            Ok(()) => (
                self.observed(run, Status::Applied, None, None, started, false),
                Outcome::Applied {
                    changed: run.changed,
                    drifted: run.drifted.clone(),
                },
                Some(run.objects.clone()),
            ),
            Err(f) if f.lock_lost => return Finished::failed(f, generation),
            Err(f) => {
                if f.is_refusal() {
                    let step = f.step.as_str();
                    self.metrics.final_refusals.with_label_values(&[step]).inc();
                }
                let (status, message) = (f.status, Some(f.message.clone()));
                let observed = self.observed(run, status, message, Some(f.step), started, f.retry);
                (observed, f.into_outcome(), None)
            }
        };
        self.hook_before_fenced_write(Step::Observed, run.fence.session)
            .await;
        let mut extra = vec![run.fence.unlock_op()];
        if previous.is_some_and(|p| p.same_outcome(&observed)) {
            // The same outcome as observed.json tells already: not rewritten.
            self.count_suppressed("observed");
        } else {
            let observed = observed.after(previous);
            let value = serde_json::to_vec(&observed).expect("observed serializes");
            let key = self.layout().observed_key(run.id);
            extra.insert(0, TxnKvOp::Set { key, value });
        }
        match run.fence.flush(Step::Observed, extra).await {
            Ok(()) => Finished {
                outcome,
                generation,
                released: true,
                objects,
            },
            // A failed final write is an error, whatever the step said.
            Err(f) => Finished::failed(
                Fail {
                    status: Status::Error,
                    ..f
                },
                generation,
            ),
        }
    }

    /// base.json is gone: remove what svc-handler owns (when pruning), in
    /// reverse order, then the records and observed.json.
    async fn delete(&self, run: &mut Run<'_>, prune: bool, current: &Current) -> Finished {
        let t = Target {
            id: run.id,
            base_key: &run.base_key,
        };
        let plan = plan::plan(&t, &Desired::Gone { prune }, current);
        if !plan.forget {
            // Nothing of the service is left but the lock key this flow
            // just took: it goes too.
            let released = (run.fence)
                .flush(Step::Delete, vec![run.fence.delete_lock_op()])
                .await
                .is_ok();
            return Finished {
                outcome: Outcome::Absent,
                generation: None,
                released,
                objects: None,
            };
        }
        if let Err(f) = run.execute(&plan, None).await {
            return self.delete_failed(run, current, f).await;
        }
        let layout = self.layout();
        let mut ops: Vec<TxnKvOp> = Kind::ALL
            .iter()
            .map(|k| TxnKvOp::Delete {
                key: layout.record_key(run.id, *k),
            })
            .collect();
        ops.push(TxnKvOp::Delete {
            key: layout.observed_key(run.id),
        });
        ops.push(run.fence.delete_lock_op());
        self.hook_before_fenced_write(Step::Delete, run.fence.session)
            .await;
        match run.fence.flush(Step::Delete, ops).await {
            Ok(()) => Finished {
                outcome: Outcome::Deleted { pruned: prune },
                generation: None,
                released: true,
                objects: None,
            },
            Err(f) => Finished::failed(f, None),
        }
    }

    /// A deletion Consul refused part of (another service's router still
    /// needs this one's protocol, say): observed.json tells it, with the
    /// objects still there, instead of the `applied` of the last generation.
    async fn delete_failed(&self, run: &mut Run<'_>, current: &Current, f: Fail) -> Finished {
        if f.lock_lost {
            return Finished::failed(f, None);
        }
        run.generation = current.observed.as_ref().map_or(0, |o| o.generation);
        let message = format!("base.json is gone, but {}", f.message);
        let observed = self.observed(
            run,
            f.status,
            Some(message),
            Some(f.step),
            Instant::now(),
            f.retry,
        );
        let mut extra = vec![run.fence.unlock_op()];
        if !current
            .observed
            .as_ref()
            .is_some_and(|p| p.same_outcome(&observed))
        {
            let value = serde_json::to_vec(&observed).expect("observed serializes");
            let key = self.layout().observed_key(run.id);
            extra.insert(0, TxnKvOp::Set { key, value });
        }
        let released = run.fence.flush(Step::Delete, extra).await.is_ok();
        Finished {
            released,
            ..Finished::failed(f, None)
        }
    }

    fn observed(
        &self,
        run: &Run<'_>,
        status: Status,
        message: Option<String>,
        step: Option<Step>,
        started: Instant,
        retry: bool,
    ) -> Observed {
        Observed {
            retry,
            status,
            generation: run.generation,
            message,
            step,
            objects: run.objects.clone(),
            updated_at: now_rfc3339(),
            duration_ms: started.elapsed().as_millis() as u64,
            holder: self.cfg.holder.clone(),
            base_key: run.base_key.clone(),
            history: Vec::new(),
        }
    }

    pub(crate) async fn hook_before_fenced_write(&self, step: Step, session: &Session) {
        if let Some(h) = &self.hook {
            h.before_fenced_write(step.as_str(), session.id()).await;
        }
    }

    pub(crate) fn count_write(&self, kind: Kind, result: &str) {
        self.metrics
            .object_writes
            .with_label_values(&[kind.as_str(), result])
            .inc();
    }

    pub(crate) fn count_suppressed(&self, what: &str) {
        self.metrics
            .rewrites_suppressed
            .with_label_values(&[what])
            .inc();
    }

    pub(crate) fn count_verify_failure(&self, kind: Kind) {
        self.metrics
            .verify_failures
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    fn count_lock(&self, result: &str) {
        self.metrics
            .lock_acquisitions
            .with_label_values(&[result])
            .inc();
    }

    pub(crate) fn cas_delays(&self, attempts: usize) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(250))
            .with_max_times(attempts)
            .build()
    }

    /// Retries a Consul request that failed in a retryable way, with capped,
    /// jittered exponential backoff.
    pub(crate) async fn retry<T, F, Fut>(&self, f: F) -> Result<T, ConsulError>
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
        .when(ConsulError::is_retryable)
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
        // A key with a "." or ".." segment maps onto no observed.json that
        // can be written without landing on another service's: logged only.
        let Some(observed_key) = observed_key.filter(|k| !keys::has_dot_segment(k)) else {
            return Ok(None);
        };
        let observed = Observed {
            status: Status::Invalid,
            generation,
            message: Some(format!("{key}: {reason}")),
            step: Some(Step::Key),
            objects: Objects::default(),
            updated_at: now_rfc3339(),
            duration_ms: 0,
            holder: self.cfg.holder.clone(),
            base_key: key.to_string(),
            retry: false,
            history: Vec::new(),
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

/// What base.json asks for: its spec, or (when gone) the removal.
/// What a reconcile aims at: base.json's spec at its generation, or, with
/// base.json gone, the removal (`prune`) or only the forgetting of what it
/// owns. `svc-handler plan` uses the same.
pub fn desired<'a>(spec: Option<&'a Spec>, current: &Current, prune: bool) -> Desired<'a> {
    match spec {
        Some(spec) => Desired::Spec {
            spec,
            generation: current.generation.unwrap_or(0),
        },
        None => Desired::Gone { prune },
    }
}

fn log_outcome(id: &ServiceId, outcome: &Outcome, generation: Option<u64>, duration: Duration) {
    match outcome {
        Outcome::Failed {
            status: Status::Paused,
            message,
            ..
        } => {
            tracing::info!(service = %id, generation, reason = %message, "paused: nothing written")
        }
        Outcome::Failed {
            status,
            step,
            message,
            ..
        } => {
            // `reason`, not `message`: JSON logs keep the event's own
            // `message` ("reconcile failed") beside Consul's words.
            tracing::warn!(service = %id, generation, %status, %step, reason = %message, "reconcile failed")
        }
        Outcome::LockLost { step, message } => {
            tracing::error!(service = %id, generation, %step, reason = %message, "lost the lock during reconcile")
        }
        other => {
            let result = other.result_label();
            let duration_ms = duration.as_millis() as u64;
            let drifted = match other {
                Outcome::Applied { drifted, .. } => {
                    let kinds: Vec<&str> = drifted.iter().map(|k| k.as_str()).collect();
                    kinds.join(",")
                }
                _ => String::new(),
            };
            tracing::info!(service = %id, generation, result, duration_ms, drifted, "reconciled")
        }
    }
}

/// A paused service whose observed.json already says so, with the same
/// message, for this generation: nothing to do.
fn paused_settled(
    pause: &Pause,
    observed: Option<&Observed>,
    generation: Option<u64>,
) -> Option<Outcome> {
    let o = observed?;
    let same = o.status == Status::Paused
        && o.message.as_deref() == Some(pause.message().as_str())
        && generation.is_none_or(|g| g == o.generation);
    same.then_some(Outcome::Settled {
        status: Status::Paused,
    })
}
