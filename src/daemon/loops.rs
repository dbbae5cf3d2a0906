//! The daemon's background loops, each turning what it sees into events for
//! the coordinator: the blocking-query watch of the desired prefix, the drift
//! probe and its listings of the config-entry kinds, the periodic resync; and the systemd
//! watchdog pings.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch as signal};
use tokio::time::Instant;

use super::coordinator::Event;
use super::{notify, Daemon};
use crate::consul::{QueryMeta, QueryOptions};

use crate::http::Health;
use crate::keys::ObservedKey;
use crate::kind::Kind;
use crate::watch::ledger::Account;
use crate::watch::{
    drift_probe, sweep_when, wake_step, BlockingLoop, DriftProbe, OWN_WRITE_GRACE, WAKE_SUFFIX,
};

/// The observed.json watch's sweeps read at most this many bytes a second
/// on average: a keys-only listing of 5,000 services (about 400 KB) at
/// most every 3 s.
const OBSERVED_BYTES_PER_SECOND: f64 = 128.0 * 1024.0;
/// The least time between two probes, or two sweeps, of the observed.json
/// watch.
const OBSERVED_MIN_GAP: Duration = Duration::from_millis(250);

/// Where the loops send their events.
pub(super) type Events = mpsc::UnboundedSender<Event>;
/// Turns `true` when the loops must stop.
pub(super) type Stop = signal::Receiver<bool>;

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Daemon {
    /// The drift probe: a blocking list of `proxy-defaults`, which Consul 1.8
    /// wakes on every config write (a few bytes each time). When a write is
    /// not this instance's own ([`drift_probe`]), every kind svc-handler
    /// writes is listed for the coordinator to find owned entries that no
    /// longer match their records; those listings read no more than
    /// `--drift-budget` bytes a second on average (a shared
    /// [`ByteBudget`](crate::watch::ByteBudget)), so drift costs a bounded
    /// read rate however busy Consul is, and nothing while only this
    /// instance writes.
    pub(super) async fn watch_entries(self: Arc<Self>, events: Events, mut stop: Stop) {
        let mut lp = BlockingLoop::new(self.cfg.watch_rate, Duration::from_millis(250));
        // After a failed probe the next one is a fresh read: what was
        // written meanwhile is unknown, so it lists.
        let mut after_failure = false;
        // A listing made due later by another instance's recorded writes
        // ([`DriftProbe::Later`]), and the last listing's bytes, which set
        // how much later.
        let (mut due, mut round_bytes): (Option<Instant>, u64) = (None, 0);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = lp.ready() => {}
            }
            // Answered by the time a listing is due at the latest.
            let wait = match due {
                Some(at) => (at.saturating_duration_since(Instant::now()))
                    .min(self.cfg.watch_wait)
                    .max(Duration::from_millis(250)),
                None => self.cfg.watch_wait,
            };
            let (last, opts) = match lp.index() {
                0 => (0, QueryOptions::default()),
                i => (i, QueryOptions::blocking(i, wait)),
            };
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.client.config_list("proxy-defaults", &opts) => r,
            };
            let meta = match result {
                Ok((_, meta)) => meta,
                Err(e) => {
                    let delay = lp.failed();
                    after_failure = true;
                    tracing::debug!(error = %e, retry_in = ?delay, "drift probe failed");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            lp.answered(&meta);
            let answered = Instant::now();
            let forced = std::mem::take(&mut after_failure);
            let step = loop {
                let step = {
                    let mut own = self.own_writes.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    let patient = now < answered + OWN_WRITE_GRACE;
                    let for_records = now < answered + own.record_grace();
                    match drift_probe(last, meta.index, &mut own, patient, for_records) {
                        DriftProbe::Skip | DriftProbe::Later if forced => DriftProbe::List,
                        step => step,
                    }
                };
                if step != DriftProbe::Wait {
                    break step;
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            };
            let moved = step == DriftProbe::Later;
            let (later_now, later) = sweep_when(moved, true, due, round_bytes, Instant::now());
            due = later;
            let list = match step {
                DriftProbe::List => {
                    tracing::debug!(
                        last,
                        index = meta.index,
                        "drift probe: a config write not svc-handler's; listing the kinds"
                    );
                    true
                }
                _ if later_now => {
                    tracing::debug!(
                        index = meta.index,
                        "drift probe: listing the kinds, due since other instances' writes"
                    );
                    true
                }
                _ => false,
            };
            if list {
                due = None;
                match self.list_for_drift(&events, &mut stop).await {
                    Some(bytes) => round_bytes = bytes,
                    None => return,
                }
            }
        }
    }

    /// Lists every kind svc-handler writes, all at once, and hands the
    /// entries to the coordinator; while the drift budget is owed (by the
    /// listings before), it first waits until it is paid back. The bytes
    /// read; `None` when the daemon stops.
    async fn list_for_drift(&self, events: &Events, stop: &mut Stop) -> Option<u64> {
        let held = self.drift_budget_wait();
        self.metrics.drift_watch_delay.set(held.as_secs_f64());
        if !held.is_zero() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                _ = tokio::time::sleep(held) => {}
            }
        }
        let now = QueryOptions::default();
        let list = |kind: Kind| self.client.config_list(kind.as_str(), &now);
        let [a, b, c, d, e] = Kind::ALL;
        let all = tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            r = async { tokio::join!(list(a), list(b), list(c), list(d), list(e)) } => r,
        };
        let (ra, rb, rc, rd, re) = all;
        let mut bytes = 0;
        for (kind, result) in [(a, ra), (b, rb), (c, rc), (d, rd), (e, re)] {
            match result {
                Ok((entries, meta)) => {
                    bytes += meta.body_bytes;
                    self.drift_budget_spend(meta.body_bytes);
                    if events.send(Event::Entries(kind, entries)).is_err() {
                        return None;
                    }
                }
                // The next foreign write lists again; the resync bounds it.
                Err(e) => tracing::debug!(kind = kind.as_str(), error = %e, "drift listing failed"),
            }
        }
        let held_ms = held.as_millis() as u64;
        tracing::debug!(
            bytes,
            held_ms,
            "drift listings read (held back by the budget first)"
        );
        Some(bytes)
    }

    /// The observed.json watch, so that an observed.json someone deleted is
    /// written again at once instead of at the next resync. A wake probe of
    /// `<prefix>/observed/` (see [`WAKE_SUFFIX`]) learns of every change
    /// under it; what it cannot tell (when the change is neither this
    /// instance's writes alone nor last) a probe tells: a blocking keys-only
    /// listing of `<prefix>/observed/` with the separator `/` (its
    /// partitions: a few bytes, but Consul walks every key to answer it).
    /// The keys of every observed.json are listed (a *sweep*,
    /// paced by its size at [`OBSERVED_BYTES_PER_SECOND`]) at once only when
    /// the change is not one of this instance's own fenced transactions
    /// (waiting first, as the drift probe does, for its reconciles in
    /// flight), and otherwise later, as [`sweep_when`] says: a deletion that
    /// lands just before one of this instance's own writes is found then.
    pub(super) async fn watch_observed(self: Arc<Self>, events: Events, mut stop: Stop) {
        let prefix = self.cfg.layout.observed_prefix();
        let own = Arc::clone(self.reconciler.kv_writes());
        let mut probe = BlockingLoop::by_cost(OBSERVED_MIN_GAP);
        let mut sweep = BlockingLoop::by_rate(OBSERVED_MIN_GAP, OBSERVED_BYTES_PER_SECOND);
        // In front of the probe, which walks every key of the tree, a wake
        // probe (see `WAKE_SUFFIX`) tells that it changed; the probe is asked
        // only when that is not enough (`exact`).
        let mut wake = BlockingLoop::by_cost(OBSERVED_MIN_GAP);
        let (mut wake_on, mut exact) = (true, false);
        let ledger = Arc::clone(self.reconciler.ledger());
        let (mut sweep_now, mut due, mut sweep_bytes): (bool, Option<Instant>, u64) =
            (true, None, 0);
        loop {
            if sweep_now {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = sweep.ready() => {}
                }
                let opts = QueryOptions::default();
                let result = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = self.client.kv_keys(&prefix, None, &opts) => r,
                };
                match result {
                    Ok((keys, meta)) => {
                        // The probe and the sweep walk every key under the
                        // prefix: paced by how many there are.
                        probe.walks(keys.len());
                        sweep.walks(keys.len());
                        sweep.answered(&meta);
                        (sweep_now, due, sweep_bytes) = (false, None, meta.body_bytes);
                        if probe.index() == 0 {
                            probe.answered(&QueryMeta {
                                body_bytes: 0,
                                ..meta
                            });
                        }
                        let have = (keys.iter())
                            .filter_map(|k| match self.cfg.layout.parse_observed_key(k) {
                                ObservedKey::Observed(id) => Some(id),
                                _ => None,
                            })
                            .collect();
                        if events.send(Event::Observed(have)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let delay = sweep.failed();
                        tracing::debug!(error = %e, retry_in = ?delay, "observed.json listing failed");
                    }
                }
                continue;
            }
            let use_wake = wake_on && !exact;
            let lp = if use_wake { &mut wake } else { &mut probe };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = lp.ready() => {}
            }
            // Answered by the time a sweep is due at the latest.
            let wait = match due {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => self.cfg.watch_wait,
            };
            // Its answer is a few bytes (`observed/`'s partitions, or
            // nothing): plain.
            let opts = lp.options(
                QueryOptions::default().plain(),
                wait.max(Duration::from_secs(1)),
            );
            let read = async {
                if use_wake {
                    self.client.kv_wake(&prefix, &opts).await
                } else {
                    self.client.kv_keys(&prefix, Some("/"), &opts).await
                }
            };
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = read => r,
            };
            let (found, meta) = match result {
                Ok(answer) => answer,
                Err(e) => {
                    let delay = lp.failed();
                    tracing::debug!(error = %e, retry_in = ?delay, use_wake, "observed.json probe failed");
                    continue;
                }
            };
            if use_wake {
                if !found.is_empty() {
                    tracing::info!(
                        prefix = %format!("{prefix}{WAKE_SUFFIX}"),
                        "keys exist under the observed.json watch's wake probe: it lists the tree instead"
                    );
                    wake_on = false;
                    continue;
                }
                let prev = wake.answered(&meta);
                let account = ledger.account(prev, meta.index, OWN_WRITE_GRACE).await;
                // The last write being this instance's own (its transaction
                // wrote an observed.json) explains the wake.
                let explained = account == Account::Last;
                let step = wake_step(prev, meta.index, account == Account::All, explained);
                match step.sweep(due, sweep_bytes, Instant::now()) {
                    Some(next) => (sweep_now, due) = next,
                    None => exact = true,
                }
                continue;
            }
            let last = probe.answered(&meta);
            let moved = probe.index() != last || last == 0;
            let patience = Instant::now() + OWN_WRITE_GRACE;
            let step = loop {
                let step = {
                    let mut own = own.lock().unwrap_or_else(|e| e.into_inner());
                    drift_probe(last, meta.index, &mut own, Instant::now() < patience, false)
                };
                if step != DriftProbe::Wait {
                    break step;
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            };
            let explained = step != DriftProbe::List;
            (sweep_now, due) = sweep_when(moved, explained, due, sweep_bytes, Instant::now());
            exact = false;
        }
    }

    fn drift_budget_wait(&self) -> Duration {
        let mut budget = self.drift_budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.wait_time(Instant::now())
    }

    fn drift_budget_spend(&self, bytes: u64) {
        let mut budget = self.drift_budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.spend(bytes, Instant::now());
    }
}

/// Sends a resync event every `every`, the first one `every` from now.
pub(super) async fn resync(every: Duration, events: Events, mut stop: Stop) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => { let _ = events.send(Event::Resync); }
        }
    }
}

/// Pings the systemd watchdog every `every`, only while the loops are
/// healthy.
pub(super) async fn watchdog(every: Duration, health: Arc<Health>, mut stop: Stop) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {
                match health.healthy() {
                    Ok(()) => notify(&[sd_notify::NotifyState::Watchdog]),
                    Err(e) => tracing::error!(reason = %e, "unhealthy: not pinging the systemd watchdog"),
                }
            }
        }
    }
}
