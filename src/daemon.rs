//! The daemon: wiring of watch → queue → workers, drift watches, resync,
//! readiness, systemd notifications, and a clean shutdown. Also `--once`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::consul::{Client, ConfigEntry, ConsulError, QueryOptions, Settings};
use crate::entries::EntryKind;
use crate::http::{Health, Observer};
use crate::keys::{Layout, ServiceId};
use crate::lock::{Session, SessionConfig};
use crate::metrics::{Metrics, STATUSES};
use crate::queue::{Backoff, Queue};
use crate::reconcile::{BoxFuture, FlowHook, Outcome, Reconciler, ReconcilerConfig, Report};
use crate::records::Status;
use crate::watch::{self, BlockingLoop, Snapshot};

/// Fault injection for tests, documented in the README: when set to a step
/// name (`defaults`, `resolver`, `router`, `terminating_gateway`, `observed`,
/// `delete`), every reconcile hangs just before that step's fenced write, as
/// a daemon stuck (or about to be killed) while it holds a lock would.
pub const FAULT_PAUSE_ENV: &str = "SVC_HANDLER_FAULT_PAUSE_BEFORE";

struct PauseBefore {
    step: String,
}

impl FlowHook for PauseBefore {
    fn before_fenced_write<'a>(&'a self, step: &'a str, _session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if step == self.step {
                tracing::warn!(step, "fault injection: pausing before the fenced write");
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Fault injection for tests, documented in the README: when set (to
/// anything), the watch loop freezes after its first listing, as a stuck loop
/// would; `/healthz` and the systemd watchdog must notice.
pub const FAULT_FREEZE_WATCH_ENV: &str = "SVC_HANDLER_FAULT_FREEZE_WATCH";

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
    pub prune: bool,
    pub shutdown_timeout: Duration,
}

impl DaemonConfig {
    pub fn new(layout: Layout, holder: impl Into<String>) -> Self {
        let holder = holder.into();
        DaemonConfig {
            layout,
            session: SessionConfig {
                name: format!("svc-handler {holder}"),
                ttl: Duration::from_secs(15),
                lock_delay: Duration::from_secs(1),
            },
            holder,
            workers: 4,
            resync_interval: Some(Duration::from_secs(600)),
            watch_wait: Duration::from_secs(300),
            watch_rate: 10.0,
            prune: true,
            shutdown_timeout: Duration::from_secs(10),
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

/// The instance's session, shared by every worker and replaced when lost.
struct Sessions {
    client: Client,
    cfg: SessionConfig,
    metrics: Arc<Metrics>,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl Sessions {
    async fn get(&self) -> Result<Arc<Session>, ConsulError> {
        let mut cur = self.current.lock().await;
        if let Some(s) = cur.as_ref().filter(|s| !s.is_lost()) {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(
            Session::create(&self.client, &self.cfg, Some(Arc::clone(&self.metrics))).await?,
        );
        tracing::info!(session = s.id(), "created the instance session");
        *cur = Some(Arc::clone(&s));
        Ok(s)
    }

    /// The whole flow for `id` under this instance's session.
    async fn reconcile(&self, rec: &Reconciler, id: &ServiceId, prune: bool) -> Report {
        match self.get().await {
            Ok(session) => rec.reconcile(id, prune, &session).await,
            Err(e) => rec.lock_failed(
                id,
                format!("cannot create a session: {e}"),
                Instant::now().into_std(),
            ),
        }
    }

    async fn close(&self) {
        if let Some(s) = self.current.lock().await.take() {
            match s.destroy().await {
                Ok(()) => tracing::info!(session = s.id(), "destroyed the instance session"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not destroy the session; it expires with its TTL")
                }
            }
        }
    }
}

/// What the coordinator hears.
enum Event {
    Listing(Snapshot),
    Entries(EntryKind, Vec<ConfigEntry>),
    Resync,
    Done(Report),
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
}

/// The reconciler daemon.
pub struct Daemon {
    client: Client,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cfg: DaemonConfig,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
        if let Some(step) = std::env::var(FAULT_PAUSE_ENV)
            .ok()
            .filter(|s| !s.is_empty())
        {
            tracing::warn!(step, "{FAULT_PAUSE_ENV} is set: reconciles hang before that step's fenced write (fault tests only)");
            reconciler = reconciler.with_hook(Arc::new(PauseBefore { step }));
        }
        Ok(Daemon {
            client,
            reconciler,
            metrics,
            health,
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

    fn sessions(&self) -> Arc<Sessions> {
        Arc::new(Sessions {
            client: self.client.clone(),
            cfg: self.cfg.session.clone(),
            metrics: Arc::clone(&self.metrics),
            current: tokio::sync::Mutex::new(None),
        })
    }

    /// `run --once`: reconciles every service present (and prunes services
    /// whose base.json is gone), then returns what happened.
    pub async fn run_once(&self) -> Result<OnceSummary, ConsulError> {
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
        let sessions = self.sessions();
        let ids: Vec<ServiceId> = changes
            .changed
            .iter()
            .map(|(id, _)| id.clone())
            .chain(changes.gone.iter().cloned())
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.workers.max(1)));
        let mut set = JoinSet::new();
        // A lock held by another instance is retried until it could have
        // expired: 2 x TTL + lock-delay + a margin.
        let deadline = Instant::now()
            + self.cfg.session.ttl * 2
            + self.cfg.session.lock_delay
            + Duration::from_secs(5);
        for id in ids {
            let (rec, sessions, sem) = (
                self.reconciler.clone(),
                Arc::clone(&sessions),
                Arc::clone(&sem),
            );
            let prune = self.cfg.prune;
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                if let Some(report) = rec.check(&id, prune).await {
                    return report;
                }
                loop {
                    let report = sessions.reconcile(&rec, &id, prune).await;
                    if matches!(report.outcome, Outcome::HeldElsewhere { .. })
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(250 + fastrand::u64(0..500)))
                            .await;
                        continue;
                    }
                    return report;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            let report = r.expect("a reconcile task panicked");
            match &report.outcome {
                Outcome::Applied { changed: true, .. } => summary.applied += 1,
                Outcome::Applied { changed: false, .. } | Outcome::UpToDate => {
                    summary.unchanged += 1
                }
                Outcome::Deleted { .. } | Outcome::Absent => summary.deleted += 1,
                Outcome::HeldElsewhere { .. } => summary.held_elsewhere += 1,
                Outcome::Failed { .. } | Outcome::LockLost { .. } => summary.failed += 1,
            }
        }
        sessions.close().await;
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
        let daemon = Arc::new(self);
        let cfg = daemon.cfg.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = JoinSet::new();

        if let Some(listener) = listener {
            let (m, h) = (Arc::clone(&daemon.metrics), Arc::clone(&daemon.health));
            let mut rx = stop_rx.clone();
            tasks.spawn(async move {
                crate::http::serve(listener, m, h, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            });
        }

        let queue: Arc<Queue<ServiceId>> = Queue::new(Backoff::default());
        let sessions = daemon.sessions();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();

        // The KV watch.
        {
            let d = Arc::clone(&daemon);
            let tx = ev_tx.clone();
            let rx = stop_rx.clone();
            tasks.spawn(async move { d.watch_desired(tx, rx).await });
        }
        // Drift watches, one per kind.
        for kind in EntryKind::ALL {
            let d = Arc::clone(&daemon);
            let (tx, rx) = (ev_tx.clone(), stop_rx.clone());
            tasks.spawn(async move { d.watch_entries(kind, tx, rx).await });
        }
        // Resync ticker.
        if let Some(every) = cfg.resync_interval.filter(|d| !d.is_zero()) {
            let tx = ev_tx.clone();
            let mut rx = stop_rx.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = rx.wait_for(|s| *s) => return,
                        _ = tick.tick() => { let _ = tx.send(Event::Resync); }
                    }
                }
            });
        }
        // systemd watchdog: pinged from here only while the loops are healthy.
        if let Some(period) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) {
            let h = Arc::clone(&daemon.health);
            let mut rx = stop_rx.clone();
            let every = period / 2;
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = rx.wait_for(|s| *s) => return,
                        _ = tick.tick() => {
                            match h.healthy() {
                                Ok(()) => notify(&[sd_notify::NotifyState::Watchdog]),
                                Err(e) => tracing::error!(reason = %e, "unhealthy: not pinging the systemd watchdog"),
                            }
                        }
                    }
                }
            });
        }
        // Workers.
        let mut workers = JoinSet::new();
        for _ in 0..cfg.workers.max(1) {
            let (d, q, s, tx) = (
                Arc::clone(&daemon),
                Arc::clone(&queue),
                Arc::clone(&sessions),
                ev_tx.clone(),
            );
            workers.spawn(async move { d.worker(q, s, tx).await });
        }
        drop(ev_tx);

        // The coordinator.
        let mut previous: Option<Arc<Snapshot>> = None;
        let mut initial: Option<HashSet<ServiceId>> = None;
        let mut seen: HashMap<ServiceId, (u64, Instant)> = HashMap::new();
        let mut statuses: HashMap<ServiceId, Status> = HashMap::new();
        let mut applied = watch::Applied::new();
        let enqueue = |id: ServiceId| {
            queue.add(id);
            daemon.metrics.queue_depth.set(queue.len() as i64);
        };
        tokio::pin!(shutdown);
        loop {
            let ev = tokio::select! {
                _ = &mut shutdown => break,
                ev = ev_rx.recv() => match ev { Some(ev) => ev, None => break },
            };
            match ev {
                Event::Listing(snap) => {
                    let snap = Arc::new(snap);
                    let changes = watch::diff(previous.as_deref(), &snap);
                    let first = previous.is_none();
                    for (key, reason, index) in &changes.invalid {
                        if let Err(e) = daemon
                            .reconciler
                            .report_invalid_key(key, reason, *index)
                            .await
                        {
                            tracing::warn!(key, error = %e, "could not write observed.json for an invalid key");
                        }
                    }
                    if first {
                        // Startup: re-check everything; what is in place costs reads only.
                        let ids: HashSet<ServiceId> = changes
                            .changed
                            .iter()
                            .map(|(id, _)| id.clone())
                            .chain(changes.gone.iter().cloned())
                            .collect();
                        tracing::info!(
                            services = snap.services.len(),
                            orphans = changes.gone.len(),
                            "first listing: full sync"
                        );
                        for id in &ids {
                            enqueue(id.clone());
                        }
                        initial = Some(ids);
                    } else {
                        for (id, generation) in &changes.changed {
                            seen.insert(id.clone(), (*generation, Instant::now()));
                            enqueue(id.clone());
                        }
                        for id in &changes.gone {
                            seen.remove(id);
                            enqueue(id.clone());
                        }
                    }
                    previous = Some(snap);
                }
                Event::Entries(kind, entries) => {
                    let Some(snap) = &previous else { continue };
                    let ids = watch::drifted(snap, kind, &entries, &applied);
                    for id in ids.into_iter().filter(|id| !queue.contains(id)) {
                        tracing::info!(service = %id, "an owned entry changed behind svc-handler's back; re-checking");
                        enqueue(id);
                    }
                }
                Event::Resync => {
                    if let Some(snap) = &previous {
                        tracing::info!(services = snap.services.len(), "periodic resync");
                        for id in snap.services.keys().chain(snap.orphans.iter()) {
                            enqueue(id.clone());
                        }
                    }
                }
                Event::Done(report) => {
                    let id = report.id.clone();
                    if let Some(objects) = &report.objects {
                        for (kind, r) in [
                            (EntryKind::ServiceDefaults, &objects.defaults),
                            (EntryKind::ServiceResolver, &objects.resolver),
                            (EntryKind::ServiceRouter, &objects.router),
                            (EntryKind::TerminatingGateway, &objects.terminating_gateway),
                        ] {
                            match r {
                                Some(r) => applied.insert((id.clone(), kind), r.modify_index),
                                None => applied.remove(&(id.clone(), kind)),
                            };
                        }
                    }
                    if matches!(report.outcome, Outcome::Deleted { .. } | Outcome::Absent) {
                        applied.retain(|(s, _), _| *s != id);
                    }
                    match &report.outcome {
                        Outcome::Applied { .. } | Outcome::UpToDate => {
                            statuses.insert(id.clone(), Status::Applied);
                            if let (Some((g, at)), Some(done)) = (seen.get(&id), report.generation)
                            {
                                if done >= *g {
                                    daemon
                                        .metrics
                                        .apply_latency
                                        .observe(at.elapsed().as_secs_f64());
                                    seen.remove(&id);
                                }
                            }
                        }
                        Outcome::Failed { status, .. } => {
                            statuses.insert(id.clone(), *status);
                        }
                        Outcome::LockLost { .. } => {
                            statuses.insert(id.clone(), Status::Error);
                        }
                        Outcome::Deleted { .. } | Outcome::Absent => {
                            statuses.remove(&id);
                        }
                        Outcome::HeldElsewhere { .. } => {}
                    }
                    for st in STATUSES {
                        let n = statuses.values().filter(|s| s.as_str() == *st).count();
                        daemon
                            .metrics
                            .services
                            .with_label_values(&[st])
                            .set(n as i64);
                    }
                    if let Some(pending) = initial.as_mut() {
                        pending.remove(&id);
                        if pending.is_empty() && !daemon.health.is_ready_flag() {
                            daemon.health.set_ready(true);
                            daemon.metrics.ready.set(1);
                            tracing::info!("first full sync done: ready");
                            notify(&[
                                sd_notify::NotifyState::Ready,
                                sd_notify::NotifyState::Status("ready: first full sync done"),
                            ]);
                        }
                    }
                    daemon.metrics.queue_depth.set(queue.len() as i64);
                }
            }
            // An empty desired prefix is synced as soon as it is listed.
            if initial.as_ref().is_some_and(|p| p.is_empty()) && !daemon.health.is_ready_flag() {
                daemon.health.set_ready(true);
                daemon.metrics.ready.set(1);
                tracing::info!("first full sync done (nothing to reconcile): ready");
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("ready: first full sync done"),
                ]);
            }
        }

        // Shutdown.
        tracing::info!("shutting down: letting in-flight reconciles finish");
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
        daemon.health.set_ready(false);
        daemon.metrics.ready.set(0);
        let _ = stop_tx.send(true);
        queue.shut_down();
        let drained = tokio::time::timeout(cfg.shutdown_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(timeout = ?cfg.shutdown_timeout, "reconciles still running at the shutdown timeout; abandoning them (their locks go with the session)");
            workers.abort_all();
        }
        tasks.abort_all();
        sessions.close().await;
        tracing::info!("stopped");
        Ok(())
    }

    async fn worker(
        self: Arc<Self>,
        queue: Arc<Queue<ServiceId>>,
        sessions: Arc<Sessions>,
        events: mpsc::UnboundedSender<Event>,
    ) {
        while let Some(item) = queue.get().await {
            let id = item.key;
            self.metrics.queue_wait.observe(item.waited.as_secs_f64());
            self.metrics.queue_depth.set(queue.len() as i64);
            self.metrics.workers_busy.inc();
            // What is already in place costs reads only: no session, no lock.
            let settled = self.reconciler.check(&id, self.cfg.prune).await;
            let report = match settled {
                Some(report) => report,
                None => {
                    sessions
                        .reconcile(&self.reconciler, &id, self.cfg.prune)
                        .await
                }
            };
            self.metrics.workers_busy.dec();
            match &report.outcome {
                Outcome::Failed {
                    status: Status::Error,
                    ..
                }
                | Outcome::LockLost { .. } => {
                    let delay = queue.add_rate_limited(id.clone(), fastrand::f64());
                    tracing::info!(service = %id, retry_in = ?delay, "will retry");
                }
                Outcome::HeldElsewhere { .. } => {
                    // Not a spin: come back in about a second. The holder
                    // may be applying an older generation; then this one
                    // still gets applied.
                    queue.add_after(
                        id.clone(),
                        Duration::from_millis(500 + fastrand::u64(0..1000)),
                    );
                }
                _ => queue.forget(&id),
            }
            queue.done(&id);
            let _ = events.send(Event::Done(report));
        }
    }

    /// The blocking-query loop on the desired prefix.
    async fn watch_desired(
        self: Arc<Self>,
        events: mpsc::UnboundedSender<Event>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let prefix = self.cfg.layout.desired_prefix();
        let mut lp = BlockingLoop::new(self.cfg.watch_rate, Duration::ZERO);
        let mut outage_since: Option<Instant> = None;
        loop {
            self.health.beat();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = lp.ready() => {}
            }
            let opts = lp.options(QueryOptions::consistent(), self.cfg.watch_wait);
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.client.kv_list(&prefix, &opts) => r,
            };
            self.health.beat();
            match result {
                Ok((pairs, meta)) => {
                    let previous = lp.answered(&meta);
                    self.metrics.watch_wakeups.inc();
                    self.metrics.watch_last_success.set(unix_now());
                    if let Some(since) = outage_since.take() {
                        tracing::info!(after = ?since.elapsed(), "Consul answers again; watching");
                    }
                    let index = lp.index();
                    if index == 0 {
                        tracing::info!(
                            previous,
                            returned = meta.index,
                            "the watch index went backwards; re-reading"
                        );
                    }
                    self.metrics.watch_index.set(index as i64);
                    if index != previous || previous == 0 {
                        let snap = Snapshot::from_pairs(&self.cfg.layout, &pairs);
                        if events.send(Event::Listing(snap)).is_err() {
                            return;
                        }
                    }
                    if std::env::var_os(FAULT_FREEZE_WATCH_ENV).is_some() {
                        tracing::warn!("{FAULT_FREEZE_WATCH_ENV} is set: the watch loop freezes now (fault tests only)");
                        std::future::pending::<()>().await;
                    }
                }
                Err(e) => {
                    self.metrics.watch_errors.inc();
                    let delay = lp.failed();
                    if outage_since.is_none() {
                        outage_since = Some(Instant::now());
                        tracing::error!(error = %e, retry_in = ?delay, "watch failed; Consul unreachable or erroring");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?delay, "watch still failing");
                    }
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// A blocking list of one config-entry kind; owned entries that no
    /// longer match their records are sent for a re-check.
    async fn watch_entries(
        self: Arc<Self>,
        kind: EntryKind,
        events: mpsc::UnboundedSender<Event>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // Every config write wakes this watch, which re-lists the whole
        // kind: paced by size and at most 4 listings a second, so a bulk
        // apply does not make it quadratic. Drift is not urgent.
        let mut lp = BlockingLoop::new(self.cfg.watch_rate, Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = lp.ready() => {}
            }
            let opts = lp.options(QueryOptions::default(), self.cfg.watch_wait);
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.client.config_list(kind.as_str(), &opts) => r,
            };
            match result {
                Ok((entries, meta)) => {
                    if lp.answered(&meta) == 0 {
                        continue; // the startup sync checks everything anyway
                    }
                    if events.send(Event::Entries(kind, entries)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let delay = lp.failed();
                    tracing::debug!(kind = kind.as_str(), error = %e, retry_in = ?delay, "config-entry watch failed");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
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
}
