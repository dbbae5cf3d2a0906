//! The daemon: wiring of watch → coordinator → queue → workers, readiness,
//! systemd notifications and a clean shutdown; also `--once`. What to do is
//! decided by the coordinator (a state machine, no I/O); this module only
//! carries its commands out.

mod access;
mod coordinator;
mod desired;
mod faults;
mod loops;
mod worker;

use crate::watch::OwnWrites;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::consul::{Client, ConsulError, QueryOptions, Settings};
use crate::http::{Health, Observer};
use crate::keys::{Layout, ServiceId};
use crate::lock::SessionConfig;
use crate::metrics::Metrics;
use crate::queue::{Backoff, Queue};
use crate::reconcile::{Outcome, Reconciler, ReconcilerConfig};
use crate::watch::{self, ByteBudget, Snapshot};
use access::AccessError;
use coordinator::{Command, Coordinator, Event};
pub use faults::{Faults, FAULT_ALWAYS_DESCEND_ENV, FAULT_FREEZE_WATCH_ENV, FAULT_PAUSE_ENV};
use loops::{Events, Stop};
use worker::{Sessions, Worker};

/// The drift listings' default read budget: 1 MiB/s.
pub const DEFAULT_DRIFT_BUDGET: u64 = 1024 * 1024;

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub layout: Layout,
    /// This instance's name (locks, observed.json, logs).
    pub holder: String,
    pub workers: usize,
    pub session: SessionConfig,
    /// `None`: no periodic resync.
    pub resync_interval: Option<Duration>,
    pub watch_wait: Duration,
    /// Most watch requests per second after a burst of 2.
    pub watch_rate: f64,
    /// Bytes per second the drift listings may read together (0: no drift
    /// probe; the periodic resync alone finds drift).
    pub drift_budget: u64,
    pub prune: bool,
    pub shutdown_timeout: Duration,
    /// Fault injection (tests only); none by default.
    pub faults: Faults,
}

impl DaemonConfig {
    pub fn new(layout: Layout, holder: impl Into<String>) -> Self {
        let holder = holder.into();
        DaemonConfig {
            layout,
            session: SessionConfig::for_holder(&holder),
            holder,
            workers: 4,
            resync_interval: Some(Duration::from_secs(600)),
            watch_wait: Duration::from_secs(300),
            watch_rate: 10.0,
            drift_budget: DEFAULT_DRIFT_BUDGET,
            prune: true,
            shutdown_timeout: Duration::from_secs(10),
            faults: Faults::default(),
        }
    }
}

/// The default instance name: host name and process id.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// Counts of `--once` outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnceSummary {
    pub applied: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub failed: usize,
    pub held_elsewhere: usize,
    pub invalid_keys: usize,
}

impl OnceSummary {
    pub fn success(&self) -> bool {
        self.failed == 0 && self.invalid_keys == 0
    }

    /// Counts one service's outcome.
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied { changed: true, .. } => self.applied += 1,
            Outcome::Applied { changed: false, .. } | Outcome::UpToDate => self.unchanged += 1,
            Outcome::Deleted { .. } | Outcome::Absent => self.deleted += 1,
            Outcome::HeldElsewhere { .. } => self.held_elsewhere += 1,
            Outcome::Failed { .. } | Outcome::LockLost { .. } | Outcome::Settled { .. } => {
                self.failed += 1
            }
        }
    }
}

/// The reconciler daemon.
pub struct Daemon {
    client: Client,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cfg: DaemonConfig,
    /// The ModifyIndexes of the config entries this instance wrote (or
    /// found in place): the drift probe lists nothing for them (see
    /// [`crate::watch::drift_probe`]).
    own_writes: Arc<std::sync::Mutex<OwnWrites>>,
    /// The drift listings' shared read budget.
    drift_budget: std::sync::Mutex<ByteBudget>,
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

impl Daemon {
    pub fn new(settings: Settings, cfg: DaemonConfig) -> Result<Self, ConsulError> {
        let metrics = Arc::new(Metrics::new());
        let wait = cfg.watch_wait;
        // The longest the watch loop may legitimately go without a beat: one
        // blocking read (its wait, Consul's jitter, the request timeout), plus
        // an error backoff (at most 10 s) or a size pacing (at most 5 s).
        let stale_after = wait + wait / 16 + settings.request_timeout + Duration::from_secs(15);
        let health = Health::new(stale_after);
        let observer = Arc::new(Observer {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        });
        let client = Client::with_observer(settings, Some(observer))?;
        let mut rcfg = ReconcilerConfig::new(cfg.layout.clone(), cfg.holder.clone());
        rcfg.session = cfg.session.clone();
        let mut reconciler = Reconciler::new(client.clone(), rcfg, Arc::clone(&metrics));
        cfg.faults.warn();
        if let Some(hook) = cfg.faults.hook() {
            reconciler = reconciler.with_hook(hook);
        }
        Ok(Daemon {
            client,
            reconciler,
            metrics,
            health,
            drift_budget: std::sync::Mutex::new(ByteBudget::new(cfg.drift_budget.max(1) as f64)),
            own_writes: Arc::default(),
            cfg,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A worker with a session of its own (shared by its clones).
    fn worker(&self) -> Worker {
        let sessions = Sessions::new(
            self.client.clone(),
            self.cfg.session.clone(),
            Arc::clone(&self.metrics),
        );
        Worker {
            reconciler: self.reconciler.clone(),
            sessions: Arc::new(sessions),
            metrics: Arc::clone(&self.metrics),
            prune: self.cfg.prune,
            own_writes: Arc::clone(&self.own_writes),
        }
    }

    /// `run --once`: reconciles every service present (and prunes services
    /// whose base.json is gone), then returns what happened.
    pub async fn run_once(&self) -> Result<OnceSummary, String> {
        self.reconciler.detect_consul_version().await;
        // As `run`: nothing is done with a token that cannot read and write
        // the prefix (a filtered, empty listing would read as "nothing to do").
        self.check_access().await.map_err(|e| e.to_string())?;
        self.once().await.map_err(|e| e.to_string())
    }

    /// [`Daemon::run_once`] once the token's access is known to suffice.
    async fn once(&self) -> Result<OnceSummary, ConsulError> {
        let prefix = self.cfg.layout.desired_prefix();
        let (pairs, _) = self
            .client
            .kv_list(&prefix, &QueryOptions::consistent())
            .await?;
        let snap = Snapshot::from_pairs(&self.cfg.layout, &pairs);
        let changes = watch::diff(None, &snap);
        let mut summary = OnceSummary::default();
        for (key, reason, index) in &changes.invalid {
            summary.invalid_keys += 1;
            self.reconciler
                .report_invalid_key(key, reason, *index)
                .await?;
        }
        let worker = self.worker();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.workers.max(1)));
        // A lock held by another instance is retried until it could have
        // expired: 2 x TTL + lock-delay + a margin.
        let deadline = Instant::now()
            + self.cfg.session.ttl * 2
            + self.cfg.session.lock_delay
            + Duration::from_secs(5);
        let ids = (changes.changed.into_iter().map(|(id, _)| id)).chain(changes.gone);
        let mut set = JoinSet::new();
        for id in ids {
            let (worker, sem) = (worker.clone(), Arc::clone(&sem));
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                worker.settle(&id, deadline).await
            });
        }
        while let Some(r) = set.join_next().await {
            summary.count(&r.expect("a reconcile task panicked").outcome);
        }
        worker.close().await;
        Ok(summary)
    }

    /// Runs until `shutdown` completes, then stops cleanly: stops the
    /// watches, lets in-flight reconciles finish within the shutdown timeout,
    /// destroys the session (releasing any lock still held).
    pub async fn run(
        self,
        listener: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConsulError> {
        self.reconciler.detect_consul_version().await;
        let daemon = Arc::new(self);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
        let queue: Arc<Queue<ServiceId>> = Queue::new(Backoff::default());
        let mut tasks = JoinSet::new();
        if let Some(listener) = listener {
            daemon.spawn_http(&mut tasks, listener, &stop_rx);
        }
        // Nothing is watched before the token is known to be able to read
        // and write the prefix: a filtered, empty listing would look like
        // "nothing to do" (see access.rs).
        tokio::pin!(shutdown);
        let allowed = tokio::select! {
            _ = &mut shutdown => false,
            () = daemon.wait_for_access() => true,
        };
        let worker = daemon.worker();
        let mut workers = JoinSet::new();
        if allowed {
            daemon.spawn_loops(&mut tasks, &ev_tx, &stop_rx);
            for _ in 0..daemon.cfg.workers.max(1) {
                let run = worker.clone().run(Arc::clone(&queue), ev_tx.clone());
                workers.spawn(run);
            }
            drop(ev_tx);
            daemon.coordinate(&queue, ev_rx, shutdown).await;
        }
        daemon.stop(stop_tx, &queue, workers, tasks, &worker).await;
        Ok(())
    }

    /// Checks the token's access until it suffices, every 5 s (SIGHUP
    /// re-reads a token file); meanwhile `/readyz` answers 503 with the
    /// reason, and each new reason is logged once.
    async fn wait_for_access(&self) {
        let mut said: Option<String> = None;
        loop {
            self.health.beat();
            match self.check_access().await {
                Ok(()) => {
                    self.health.set_blocked(None);
                    if said.is_some() {
                        tracing::info!("the ACL token's access suffices now; starting");
                    }
                    return;
                }
                Err(e) => {
                    let reason = e.to_string();
                    if said.as_deref() != Some(reason.as_str()) {
                        match e {
                            AccessError::Denied(_) => {
                                tracing::error!(%reason, "not ready: the ACL token lacks a permission; fix its policy or the token (SIGHUP re-reads a token file)")
                            }
                            AccessError::Unreachable(_) => {
                                tracing::warn!(%reason, "not ready: cannot check the ACL token's access yet")
                            }
                        }
                    }
                    self.health.set_blocked(Some(reason.clone()));
                    said = Some(reason);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Starts the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    fn spawn_http(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        listener: tokio::net::TcpListener,
        stop: &Stop,
    ) {
        let (m, h) = (Arc::clone(&self.metrics), Arc::clone(&self.health));
        let mut rx = stop.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tasks.spawn(crate::http::serve(listener, m, h, stopped));
    }

    /// Starts the watches, the resync ticker and the systemd watchdog pings.
    fn spawn_loops(self: &Arc<Self>, tasks: &mut JoinSet<()>, events: &Events, stop: &Stop) {
        tasks.spawn(Arc::clone(self).watch_desired(events.clone(), stop.clone()));
        tasks.spawn(Arc::clone(self).watch_observed(events.clone(), stop.clone()));
        if self.cfg.drift_budget > 0 {
            tasks.spawn(Arc::clone(self).watch_entries(events.clone(), stop.clone()));
        }
        if let Some(every) = self.cfg.resync_interval.filter(|d| !d.is_zero()) {
            tasks.spawn(loops::resync(every, events.clone(), stop.clone()));
        }
        if let Some(period) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) {
            let health = Arc::clone(&self.health);
            tasks.spawn(loops::watchdog(period / 2, health, stop.clone()));
        }
    }

    /// The run loop: hands each event to the coordinator and carries out
    /// its commands, until `shutdown` completes or every sender is gone.
    async fn coordinate(
        &self,
        queue: &Arc<Queue<ServiceId>>,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let mut coordinator = Coordinator::new();
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            for command in coordinator.on(event, Instant::now()) {
                self.execute(command, queue).await;
            }
            self.metrics.queue_depth.set(queue.len() as i64);
        }
    }

    async fn execute(&self, command: Command, queue: &Queue<ServiceId>) {
        match command {
            Command::Enqueue(id) => queue.add(id),
            Command::ReportInvalidKey {
                key,
                reason,
                generation,
            } => {
                let written = self
                    .reconciler
                    .report_invalid_key(&key, &reason, generation)
                    .await;
                if let Err(e) = written {
                    tracing::warn!(key, error = %e, "could not write observed.json for an invalid key");
                }
            }
            Command::ObserveApplyLatency(secs) => self.metrics.apply_latency.observe(secs),
            Command::SetServiceCounts(counts) => {
                for (status, n) in counts {
                    self.metrics.services.with_label_values(&[status]).set(n);
                }
            }
            Command::RememberLink { id, gateway, link } => {
                tracing::info!(service = %id, gateway, "the service's folder was deleted with its link record; its link is taken out as svc-handler's own");
                self.reconciler.remember_link(&id, &gateway, link);
            }
            Command::SetReady { services } => {
                self.health.set_ready(true);
                self.metrics.ready.set(1);
                tracing::info!(services, "first full sync done: ready");
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("ready: first full sync done"),
                ]);
            }
        }
    }

    /// Shutdown: not ready, the loops stopped, in-flight reconciles given
    /// the shutdown timeout, the session destroyed.
    async fn stop(
        &self,
        stop: tokio::sync::watch::Sender<bool>,
        queue: &Queue<ServiceId>,
        mut workers: JoinSet<()>,
        mut tasks: JoinSet<()>,
        worker: &Worker,
    ) {
        tracing::info!("shutting down: letting in-flight reconciles finish");
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
        self.health.set_ready(false);
        self.metrics.ready.set(0);
        let _ = stop.send(true);
        queue.shut_down();
        let timeout = self.cfg.shutdown_timeout;
        let drained = tokio::time::timeout(timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?timeout, "reconciles still running at the shutdown timeout; abandoning them (their locks go with the session)");
            workers.abort_all();
        }
        tasks.abort_all();
        worker.close().await;
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_holder_names_host_and_pid() {
        let h = default_holder();
        assert!(h.ends_with(&format!(":{}", std::process::id())), "{h}");
    }

    #[test]
    fn once_counts_every_outcome() {
        let mut s = OnceSummary::default();
        for outcome in [
            Outcome::Applied {
                changed: true,
                drifted: vec![],
            },
            Outcome::UpToDate,
            Outcome::Absent,
            Outcome::HeldElsewhere { holder: None },
        ] {
            s.count(&outcome);
        }
        assert!(s.success());
        s.count(&Outcome::LockLost {
            step: crate::kind::Step::Router,
            message: "m".into(),
        });
        let want = OnceSummary {
            applied: 1,
            unchanged: 1,
            deleted: 1,
            failed: 1,
            held_elsewhere: 1,
            invalid_keys: 0,
        };
        assert_eq!(s, want);
        assert!(!s.success());
    }
}
