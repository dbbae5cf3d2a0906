//! The worker: one service at a time, a check (reads only) and, when that
//! cannot tell it is in place, the whole reconcile under the instance
//! session; then what becomes of the service in the queue, decided purely
//! from the outcome ([`action`]). Used by the daemon's workers and by
//! `run --once`.

use crate::kind::Kind;
use crate::watch::OwnWrites;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::coordinator::Event;
use crate::consul::{Client, ConsulError};
use crate::keys::ServiceId;
use crate::lock::{Session, SessionConfig};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::reconcile::{Checked, Outcome, Prior, Reconciler, Report};

/// What becomes of a service after a reconcile, as kube-runtime's `Action`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Settled (applied, unchanged, invalid, conflict, deleted): its failures
    /// are forgotten; it comes back only when something changes.
    Done,
    /// Failed in a way that may pass: back after the queue's per-service,
    /// exponential backoff.
    RetryWithBackoff,
    /// Not ours right now (another instance holds the lock): back after this
    /// delay, without counting a failure.
    RequeueAfter(Duration),
}

/// The least wait before a service held elsewhere comes back.
const HELD_ELSEWHERE_MIN: Duration = Duration::from_millis(500);
/// The spread added to it (times a jitter in [0, 1]).
const HELD_ELSEWHERE_SPREAD: Duration = Duration::from_millis(1000);

/// The requeue policy, as kube-runtime's `error_policy`: what becomes of a
/// service after `outcome`. `jitter` in [0, 1] spreads the comeback of
/// services held elsewhere.
pub fn action(outcome: &Outcome, jitter: f64) -> Action {
    match outcome {
        Outcome::Failed { retry: true, .. } | Outcome::LockLost { .. } => Action::RetryWithBackoff,
        // Not a spin: come back in about a second. The holder may be
        // applying an older generation; then this one still gets applied.
        Outcome::HeldElsewhere { .. } => Action::RequeueAfter(
            HELD_ELSEWHERE_MIN + HELD_ELSEWHERE_SPREAD.mul_f64(jitter.clamp(0.0, 1.0)),
        ),
        Outcome::Applied { .. }
        | Outcome::UpToDate
        | Outcome::Failed { .. }
        | Outcome::Settled { .. }
        | Outcome::Deleted { .. }
        | Outcome::Absent => Action::Done,
    }
}

/// Carries `action` out on the queue for `id` (before `queue.done(id)`).
fn carry_out(queue: &Arc<Queue<ServiceId>>, id: &ServiceId, action: Action) {
    match action {
        Action::Done => queue.forget(id),
        Action::RetryWithBackoff => {
            let delay = queue.add_rate_limited(id.clone(), fastrand::f64());
            tracing::info!(service = %id, retry_in = ?delay, "will retry");
        }
        Action::RequeueAfter(delay) => queue.add_after(id.clone(), delay),
    }
}

/// The instance's session, shared by every worker and replaced when lost.
pub(super) struct Sessions {
    client: Client,
    cfg: SessionConfig,
    metrics: Arc<Metrics>,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl Sessions {
    pub(super) fn new(client: Client, cfg: SessionConfig, metrics: Arc<Metrics>) -> Self {
        Sessions {
            client,
            cfg,
            metrics,
            current: tokio::sync::Mutex::new(None),
        }
    }

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

    /// The whole flow for `id` under this instance's session. When Consul
    /// says during it that the session is gone (destroyed by someone, or
    /// Consul's data wiped), it runs once more at once with a new session,
    /// instead of waiting for the next renewal to notice.
    async fn reconcile(
        &self,
        rec: &Reconciler,
        id: &ServiceId,
        prune: bool,
        mut prior: Option<Box<Prior>>,
    ) -> Report {
        let mut again = true;
        loop {
            let session = match self.get().await {
                Ok(session) => session,
                Err(e) => {
                    let message = format!("cannot create a session: {e}");
                    return rec.lock_failed(id, message, Instant::now().into_std());
                }
            };
            let report = rec.reconcile(id, prune, &session, prior.take()).await;
            let failed = matches!(
                report.outcome,
                Outcome::Failed { .. } | Outcome::LockLost { .. }
            );
            if failed && again && session.is_lost() {
                again = false;
                tracing::info!(service = %id, "the session was lost; again with a new one");
                continue;
            }
            return report;
        }
    }

    /// Destroys the session, releasing any lock still held.
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

/// Reconciles services; cheap to clone (every clone shares the session).
#[derive(Clone)]
pub(super) struct Worker {
    pub(super) reconciler: Reconciler,
    pub(super) sessions: Arc<Sessions>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) prune: bool,
    /// The ModifyIndexes of the config entries this instance wrote or
    /// found in place, for the drift probe.
    pub(super) own_writes: Arc<std::sync::Mutex<OwnWrites>>,
}

impl Worker {
    /// One service: what is already in place costs reads only (no session,
    /// no lock); else the whole flow under the instance session.
    pub(super) async fn process(&self, id: &ServiceId) -> Report {
        // Counted in flight for the probes of the drift and observed.json
        // watches until the writes are recorded, or the reconcile dropped.
        let _in_flight = InFlight::begin([&self.own_writes, self.reconciler.kv_writes()]);
        let report = match self.reconciler.check(id, self.prune).await {
            Checked::InSync(report) => report,
            Checked::Run(prior) => {
                self.sessions
                    .reconcile(&self.reconciler, id, self.prune, prior)
                    .await
            }
        };
        let mut own = self.own_writes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(objects) = &report.objects {
            for kind in Kind::ALL {
                if let Some(r) = objects.get(kind) {
                    own.record(r.modify_index);
                }
            }
        }
        let held = matches!(report.outcome, Outcome::HeldElsewhere { .. });
        own.held_elsewhere(id, held);
        drop(own);
        report
    }

    /// `run --once`: processes `id`, and while another instance holds its
    /// lock and `deadline` is ahead, waits as [`action`] says and tries again.
    pub(super) async fn settle(&self, id: &ServiceId, deadline: Instant) -> Report {
        loop {
            let report = self.process(id).await;
            match action(&report.outcome, fastrand::f64()) {
                Action::RequeueAfter(delay) if Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                }
                _ => return report,
            }
        }
    }

    /// Takes services from `queue` until it shuts down; reports each one
    /// done, with what became of it, to the coordinator.
    pub(super) async fn run(
        self,
        queue: Arc<Queue<ServiceId>>,
        events: mpsc::UnboundedSender<Event>,
    ) {
        while let Some(item) = queue.get().await {
            let id = item.key;
            self.metrics.queue_wait.observe(item.waited.as_secs_f64());
            self.metrics.queue_depth.set(queue.len() as i64);
            self.metrics.workers_busy.inc();
            let report = self.process(&id).await;
            self.metrics.workers_busy.dec();
            let action = action(&report.outcome, fastrand::f64());
            carry_out(&queue, &id, action);
            queue.done(&id);
            let _ = events.send(Event::Done(report, action));
        }
    }

    /// Destroys the instance session (releasing any lock still held).
    pub(super) async fn close(&self) {
        self.sessions.close().await;
    }
}

/// Reconciles in flight, as the probes of the drift and observed.json
/// watches count them: begun on creation, ended on drop (also when the
/// reconcile's future is dropped half-way, at shutdown).
struct InFlight(Vec<Arc<std::sync::Mutex<OwnWrites>>>);

impl InFlight {
    fn begin<'a>(all: impl IntoIterator<Item = &'a Arc<std::sync::Mutex<OwnWrites>>>) -> Self {
        let all: Vec<_> = all.into_iter().map(Arc::clone).collect();
        for own in &all {
            own.lock().unwrap_or_else(|e| e.into_inner()).begin();
        }
        InFlight(all)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for own in &self.0 {
            own.lock().unwrap_or_else(|e| e.into_inner()).end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Status;
    use crate::watch::{drift_probe, DriftProbe};

    #[tokio::test]
    async fn a_reconcile_dropped_half_way_is_no_longer_counted_in_flight() {
        let own = Arc::new(std::sync::Mutex::new(OwnWrites::default()));
        let probe = |own: &Arc<std::sync::Mutex<OwnWrites>>| {
            drift_probe(1, 5, &mut own.lock().unwrap(), true, false)
        };
        let held = Arc::clone(&own);
        let task = tokio::spawn(async move {
            let _in_flight = InFlight::begin([&held]);
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        // In flight: an unknown index waits for its writes to be recorded.
        assert_eq!(probe(&own), DriftProbe::Wait);
        task.abort();
        let _ = task.await;
        assert_eq!(probe(&own), DriftProbe::List);
    }

    fn failed(status: Status) -> Outcome {
        Outcome::Failed {
            status,
            step: crate::kind::Step::Defaults,
            message: "m".into(),
            retry: status == Status::Error,
        }
    }

    #[test]
    fn settled_outcomes_are_done() {
        for outcome in [
            Outcome::Applied {
                changed: true,
                drifted: vec![],
            },
            Outcome::Applied {
                changed: false,
                drifted: vec![],
            },
            Outcome::UpToDate,
            Outcome::Deleted { pruned: true },
            Outcome::Absent,
            failed(Status::Invalid),
            failed(Status::Conflict),
            Outcome::Settled {
                status: Status::Invalid,
            },
            Outcome::Failed {
                status: Status::Error,
                step: crate::kind::Step::Resolver,
                message: "Consul stored it differently".into(),
                retry: false,
            },
        ] {
            assert_eq!(action(&outcome, 0.5), Action::Done, "{outcome:?}");
        }
    }

    #[test]
    fn errors_and_lost_locks_retry_with_backoff() {
        assert_eq!(
            action(&failed(Status::Error), 0.5),
            Action::RetryWithBackoff
        );
        let lost = Outcome::LockLost {
            step: crate::kind::Step::Router,
            message: "m".into(),
        };
        assert_eq!(action(&lost, 0.0), Action::RetryWithBackoff);
    }

    #[test]
    fn held_elsewhere_comes_back_in_half_a_second_to_a_second_and_a_half() {
        let held = Outcome::HeldElsewhere {
            holder: Some("b".into()),
        };
        let after = |jitter| match action(&held, jitter) {
            Action::RequeueAfter(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(0.0), Duration::from_millis(500));
        assert_eq!(after(0.5), Duration::from_millis(1000));
        assert_eq!(after(1.0), Duration::from_millis(1500));
        assert_eq!(after(7.0), Duration::from_millis(1500), "clamped");
    }

    #[tokio::test(start_paused = true)]
    async fn carrying_out_requeues_as_the_action_says() {
        let q: Arc<Queue<ServiceId>> = Queue::new(crate::queue::Backoff::default());
        let (web, api) = (
            ServiceId::new("default", "default", "web").unwrap(),
            ServiceId::new("default", "default", "api").unwrap(),
        );
        carry_out(&q, &web, Action::RetryWithBackoff);
        assert_eq!(q.failures(&web), 1);
        carry_out(&q, &web, Action::Done);
        assert_eq!(q.failures(&web), 0, "a success forgets the failures");
        carry_out(&q, &api, Action::RequeueAfter(Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert!(!q.contains(&api));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(q.contains(&api), "back after the delay");
        assert_eq!(q.failures(&api), 0, "held elsewhere is not a failure");
    }
}
