//! Group commit of the links into a shared terminating gateway: the link and
//! unlink changes of concurrent reconciles in one process, for one gateway,
//! become one check-and-set write. One committer task per gateway (keyed by
//! partition, namespace and name) takes whatever is queued, reads the gateway
//! once, applies every change in order with the plan's own pure functions
//! ([`plan::link_change`], [`plan::unlink_change`]) to the gateway as the
//! previous changes of the batch left it, writes once, reads back once and
//! hands each waiting reconcile its own result. The first change waits a
//! short window (`link_batch_window`) for others to join; what queues while
//! a write is in flight forms the next batch. A lost race reads again and applies the
//! whole batch again.
//!
//! Fencing is the callers' business and unchanged: each reconcile flushes
//! its intent record (under its own lock) before it submits its link, and
//! queues its link record only after the result comes back verified.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::outcome::Fail;
use super::Reconciler;
use crate::batches::Batches;
use crate::consul::{Client, ConsulError};
use crate::entries;
use crate::keys::ServiceId;
use crate::kind::{Kind, Step};
use crate::plan::{self, Change, Target};
use crate::records::{self, Record};
use crate::spec::TgwLinkSpec;

/// What one reconcile asks of a gateway: its link planned again against
/// the gateway as the batch has it.
#[derive(Clone, Debug)]
pub(crate) struct LinkRequest {
    pub id: ServiceId,
    pub base_key: String,
    /// The gateway's name.
    pub gateway: String,
    /// The link base.json asks for, and its `adopt`; `None`: an unlink.
    pub link: Option<(TgwLinkSpec, bool)>,
    /// The service's gateway record, as its fence has it (the intent
    /// included).
    pub record: Option<Record>,
    pub generation: u64,
}

impl LinkRequest {
    /// The change, decided by the plan's pure function against `gateway`.
    pub fn plan(&self, gateway: Option<&Value>) -> Change {
        let t = Target {
            id: &self.id,
            base_key: &self.base_key,
        };
        match &self.link {
            Some((link, adopt)) => plan::link_change(
                &t,
                link,
                *adopt,
                gateway,
                self.record.as_ref(),
                self.generation,
            ),
            None => plan::unlink_change(&t, &self.gateway, gateway),
        }
    }
}

/// A batch applied to one gateway value.
#[derive(Debug)]
pub(crate) struct Applied {
    /// Each request's change, in the batch's order, without the gateway
    /// values (`current` and `desired` are `None`): the batch's write and
    /// the gateway read back stand for them, and a batch of k links into a
    /// gateway of n links does not hold 2k copies of it.
    pub changes: Vec<Change>,
    /// The gateway to write; `None` when no change of the batch writes.
    pub write: Option<Value>,
}

/// True when `c` goes into the batch's write: it writes and is neither
/// blocked nor stuck.
fn goes_in(c: &Change) -> bool {
    c.blocked.is_none() && c.stuck.is_none() && c.action.writes()
}

/// Applies `requests` in order to `gateway`: each is planned against the
/// gateway as the changes before it left it; a blocked (or stuck) change
/// is left out of the write, and so is one with nothing to write.
pub(crate) fn apply_batch(requests: &[&LinkRequest], gateway: Option<&Value>) -> Applied {
    let mut state = gateway.cloned();
    let mut dirty = false;
    let changes = requests
        .iter()
        .map(|r| {
            let mut c = r.plan(state.as_ref());
            if goes_in(&c) {
                state = c.desired.take();
                dirty = true;
            }
            c.current = None;
            c.desired = None;
            c
        })
        .collect();
    Applied {
        changes,
        write: state.filter(|_| dirty),
    }
}

/// One reconcile's result: its change as made, the gateway as it then
/// stands (read back after the batch's write), and whether its change was
/// written.
#[derive(Debug)]
pub(crate) struct Made {
    pub change: Change,
    /// The gateway read back, shared by the batch's waiters.
    pub actual: Option<Arc<Value>>,
    pub written: bool,
}

/// (partition, namespace, gateway name).
type Key = (String, String, String);

/// A reconcile waiting for its batch.
struct Waiter {
    request: LinkRequest,
    step: Step,
    tx: oneshot::Sender<Result<Made, Fail>>,
}

/// The gateways with a committer task running, and what waits for each.
#[derive(Default)]
pub(crate) struct GatewayCommitter {
    slots: Batches<Key, Waiter>,
}

impl GatewayCommitter {
    /// Queues `request` for the gateway in `scoped`'s partition and
    /// namespace and waits for its batch; starts the gateway's committer
    /// task when none runs.
    pub async fn submit(
        &self,
        rec: &Reconciler,
        scoped: &Client,
        request: LinkRequest,
        step: Step,
    ) -> Result<Made, Fail> {
        let scope = scoped.scope();
        let key = (
            scope.partition.clone(),
            scope.namespace.clone(),
            request.gateway.clone(),
        );
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { request, step, tx };
        let start = self.slots.join(&key, waiter);
        if start {
            tokio::spawn(drain(rec.clone(), scoped.clone(), key));
        }
        rx.await
            .unwrap_or_else(|_| Err(Fail::error(step, "the gateway's committer stopped")))
    }
}

/// The committer task of one gateway: waits the batching window for
/// concurrent changes to join the first, then commits batch after batch
/// (what queued while a write was in flight) until nothing waits.
async fn drain(rec: Reconciler, scoped: Client, key: Key) {
    let committer = std::sync::Arc::clone(rec.gateways());
    // Stopped early (a panic), the slot goes: its waiters are told and the
    // next submit starts a committer again.
    let mut serving = committer.slots.serve(&key);
    let window = rec.config().link_batch_window;
    if !window.is_zero() {
        tokio::time::sleep(window).await;
    }
    while let Some(batch) = serving.next_batch() {
        rec.metrics().gateway_batch_size.observe(batch.len() as f64);
        commit_batch(&rec, &scoped, &key.2, batch).await;
    }
}

/// Why a batch failed as a whole.
enum BatchError {
    Consul(ConsulError),
    GaveUp(String),
}

impl BatchError {
    fn fail(&self, step: Step) -> Fail {
        match self {
            BatchError::Consul(e) => Fail::consul(step, e),
            BatchError::GaveUp(m) => Fail::error(step, m.clone()),
        }
    }
}

impl From<ConsulError> for BatchError {
    fn from(e: ConsulError) -> Self {
        BatchError::Consul(e)
    }
}

/// Writes one batch and gives each waiter its result.
async fn commit_batch(rec: &Reconciler, scoped: &Client, name: &str, batch: Vec<Waiter>) {
    let requests: Vec<&LinkRequest> = batch.iter().map(|w| &w.request).collect();
    match write_batch(rec, scoped, name, &requests).await {
        Ok((applied, actual, written)) => {
            for (w, change) in batch.into_iter().zip(applied.changes) {
                let result = waiter_result(rec, change, actual.clone(), written, w.step);
                let _ = w.tx.send(result);
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.tx.send(Err(e.fail(w.step)));
            }
        }
    }
}

/// One waiter's result from its change in a batch that went through.
fn waiter_result(
    rec: &Reconciler,
    change: Change,
    actual: Option<Arc<Value>>,
    written: bool,
    step: Step,
) -> Result<Made, Fail> {
    if let Some(b) = &change.blocked {
        return Err(Fail::conflict(step, b));
    }
    if let Some(m) = &change.stuck {
        return Err(Fail::final_error(step, m.clone()));
    }
    if change.suppressed {
        rec.count_suppressed("entry");
    }
    let written = written && change.action.writes();
    Ok(Made {
        change,
        actual,
        written,
    })
}

/// Reads the gateway, applies the batch, writes it with check-and-set on
/// the index read and reads it back; after a lost race, again from a fresh
/// read. Returns the batch as applied, the gateway as it then stands, and
/// whether it was written.
async fn write_batch(
    rec: &Reconciler,
    scoped: &Client,
    name: &str,
    requests: &[&LinkRequest],
) -> Result<(Applied, Option<Arc<Value>>, bool), BatchError> {
    let kind = Kind::TerminatingGateway;
    let attempts = rec.config().link_cas_attempts;
    let mut delays = rec.cas_delays(attempts);
    loop {
        let read = get(rec, scoped, name).await?;
        let applied = apply_batch(requests, read.as_deref());
        let Some(new) = &applied.write else {
            return Ok((applied, read, false));
        };
        let index = read
            .as_ref()
            .map_or(0, |c| records::index(c, "ModifyIndex"));
        if read.is_none() {
            tracing::warn!(
                gateway = name,
                "terminating gateway {name:?} does not exist: svc-handler creates it (check \
                 terminating_gateway.Gateway for a typo); it is deleted again when its last link goes"
            );
        }
        match rec.retry(|| scoped.config_cas(new, index)).await {
            Ok(()) => {
                rec.count_write(kind, "ok");
                let mut actual = get(rec, scoped, name).await?;
                if actual.as_deref().is_some_and(entries::is_empty_own_gateway) {
                    delete_empty(rec, scoped, name).await?;
                    actual = None;
                }
                return Ok((applied, actual, true));
            }
            Err(e) if e.is_cas_conflict() => {
                rec.count_write(kind, "cas_retry");
                let Some(delay) = delays.next() else {
                    let message = format!("{e}; gave up after {attempts} attempts");
                    return Err(BatchError::GaveUp(message));
                };
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                rec.count_write(kind, "error");
                return Err(e.into());
            }
        }
    }
}

/// Deletes a gateway svc-handler created once its last link went, right
/// after the write that emptied it (Consul before 1.11 has no
/// check-and-set delete for config entries: a link someone adds in the
/// round trip between that write and this delete would go with it).
async fn delete_empty(rec: &Reconciler, scoped: &Client, name: &str) -> Result<(), ConsulError> {
    let kind = Kind::TerminatingGateway;
    rec.retry(|| scoped.config_delete(kind.as_str(), name))
        .await?;
    rec.count_write(kind, "ok");
    tracing::info!(
        gateway = name,
        "deleted the terminating gateway svc-handler created: its last link went"
    );
    Ok(())
}

/// The gateway, read with a consistent read shared with the checks that
/// read it at the same time ([`Client::config_get_shared`]).
async fn get(
    rec: &Reconciler,
    scoped: &Client,
    name: &str,
) -> Result<Option<Arc<Value>>, ConsulError> {
    let (entry, _) = rec
        .retry(|| scoped.config_get_shared(Kind::TerminatingGateway.as_str(), name))
        .await?;
    if let Some(e) = &entry {
        let index = e.get("ModifyIndex").and_then(Value::as_u64).unwrap_or(0);
        rec.ledger().with(|l| l.not_kv(index));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::{Action, Blocked};

    const GW: &str = "shared-gw";

    fn id(name: &str) -> ServiceId {
        ServiceId::new("default", "default", name).unwrap()
    }

    fn link(name: &str) -> LinkRequest {
        LinkRequest {
            id: id(name),
            base_key: format!("p/desired/default/default/{name}/base.json"),
            gateway: GW.into(),
            link: Some((
                TgwLinkSpec {
                    gateway: GW.into(),
                    ca_file: None,
                    cert_file: None,
                    key_file: None,
                    sni: Some(format!("{name}.example")),
                },
                false,
            )),
            record: None,
            generation: 7,
        }
    }

    fn unlink(name: &str) -> LinkRequest {
        LinkRequest {
            link: None,
            ..link(name)
        }
    }

    fn names(gateway: &Value) -> Vec<&str> {
        gateway["Services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["Name"].as_str().unwrap())
            .collect()
    }

    fn someone_elses() -> Value {
        json!({
            "Kind": "terminating-gateway", "Name": GW, "ModifyIndex": 40,
            "Meta": {"team": "network"},
            "Services": [{"Name": "legacy-db", "CAFile": "/etc/ca.pem"}, {"Name": "b"}]
        })
    }

    #[test]
    fn links_into_an_absent_gateway_in_order() {
        let (a, b, c) = (link("a"), link("b"), link("c"));
        let applied = apply_batch(&[&a, &b, &c], None);
        let new = applied.write.expect("a write");
        assert_eq!(names(&new), ["a", "b", "c"]);
        assert_eq!(new["Services"][1]["SNI"], "b.example");
        assert!(applied.changes.iter().all(|c| c.action == Action::Link));
        // The batch's write stands for the gateway values (each change is
        // planned against the gateway as the ones before left it:
        // `unlinks_and_links_mix_in_order`).
        assert!(applied
            .changes
            .iter()
            .all(|c| c.current.is_none() && c.desired.is_none()));
    }

    #[test]
    fn a_blocked_link_is_left_out_and_the_rest_kept() {
        let gw = someone_elses();
        // b is linked already and no record says svc-handler wrote it.
        let (a, b, c) = (link("a"), link("b"), link("c"));
        let applied = apply_batch(&[&a, &b, &c], Some(&gw));
        let new = applied.write.expect("a write");
        assert_eq!(names(&new), ["legacy-db", "b", "a", "c"]);
        assert_eq!(
            new["Services"][1],
            json!({"Name": "b"}),
            "b's link untouched"
        );
        assert_eq!(new["Services"][0]["CAFile"], "/etc/ca.pem");
        assert_eq!(new["Meta"], json!({"team": "network"}));
        assert_eq!(new["ModifyIndex"], 40, "the index read, for check-and-set");
        assert!(matches!(
            applied.changes[1].blocked,
            Some(Blocked::UnrecordedLink { .. })
        ));
        assert!(applied.changes[0].blocked.is_none() && applied.changes[2].blocked.is_none());
    }

    #[test]
    fn unlinks_and_links_mix_in_order() {
        let gw = someone_elses();
        let (a, b, a_out) = (link("a"), unlink("b"), unlink("a"));
        let applied = apply_batch(&[&a, &b, &a_out], Some(&gw));
        assert_eq!(names(applied.write.as_ref().unwrap()), ["legacy-db"]);
        let actions: Vec<Action> = applied.changes.iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Link, Action::Unlink, Action::Unlink]);
    }

    #[test]
    fn nothing_to_write_is_no_write() {
        let gw = someone_elses();
        let (gone, blocked) = (unlink("zz"), link("b"));
        let applied = apply_batch(&[&gone, &blocked], Some(&gw));
        assert!(applied.write.is_none());
        assert_eq!(applied.changes[0].action, Action::None);
        assert!(applied.changes[1].blocked.is_some());
        let empty = apply_batch(&[&unlink("a")], None);
        assert!(empty.write.is_none());
    }

    #[test]
    fn an_adopted_link_goes_in() {
        let gw = someone_elses();
        let mut b = link("b");
        b.link.as_mut().unwrap().1 = true;
        let applied = apply_batch(&[&b], Some(&gw));
        let new = applied.write.expect("a write");
        assert_eq!(names(&new), ["legacy-db", "b"]);
        assert_eq!(new["Services"][1]["SNI"], "b.example");
    }
}
