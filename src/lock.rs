//! Sessions that renew themselves, and the per-service locks held with them.
//!
//! A [`Session`] is a Consul session with a TTL, renewed every TTL/2 by a
//! background task. When a renewal answers 404 the session is gone (expired or
//! destroyed by someone else): every lock it held is lost, [`Session::is_lost`]
//! turns true, and fenced writes made with it are refused by Consul.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::consul::{Client, ConsulError, SessionBehavior, SessionRequest, TxnKvOp, TxnOutcome};
use crate::metrics::Metrics;

/// Consul's bounds on a session TTL.
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// What a session is created with.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Shown in Consul's session list (`svc-handler <holder>`).
    pub name: String,
    pub ttl: Duration,
    /// How long a lock lost by a dead holder stays blocked; short, since every
    /// write we make under a lock is fenced or check-and-set.
    pub lock_delay: Duration,
}

impl SessionConfig {
    /// The defaults for the instance `holder`: TTL 15 s, lock-delay 1 s.
    pub fn for_holder(holder: &str) -> Self {
        SessionConfig {
            name: format!("svc-handler {holder}"),
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(1),
        }
    }
}

/// A Consul session, renewed in the background until dropped or destroyed.
pub struct Session {
    client: Client,
    id: String,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Session {
    /// Creates the session and starts renewing it every TTL/2.
    pub async fn create(
        client: &Client,
        cfg: &SessionConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Session, ConsulError> {
        let ttl = cfg.ttl.clamp(MIN_TTL, MAX_TTL);
        let id = client
            .session_create(&SessionRequest {
                name: cfg.name.clone(),
                ttl: Some(ttl),
                lock_delay: Some(cfg.lock_delay),
                behavior: SessionBehavior::Release,
                node_checks: None,
                node: None,
            })
            .await?;
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_loop(
            client.clone(),
            id.clone(),
            ttl,
            Arc::clone(&lost),
            metrics,
        ));
        Ok(Session {
            client: client.clone(),
            id,
            lost,
            renewer,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// True once Consul said the session no longer exists.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Consul said the session no longer exists (an `Invalid session`
    /// answer): every lock it held is lost; stop renewing it.
    pub fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::warn!(session = %self.id, "Consul says the session is gone: its locks are lost");
        }
        self.renewer.abort();
    }

    /// Stops renewing and destroys the session (its locks are released).
    pub async fn destroy(&self) -> Result<(), ConsulError> {
        self.renewer.abort();
        self.lost.store(true, Ordering::SeqCst);
        self.client.session_destroy(&self.id).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew_loop(
    client: Client,
    id: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    metrics: Option<Arc<Metrics>>,
) {
    let period = ttl / 2;
    // After a failed renewal, try again sooner: the session survives until
    // its TTL (and Consul reaps only after 2 x TTL).
    let mut next = period;
    loop {
        tokio::time::sleep(next).await;
        match client.session_renew(&id).await {
            Ok(_) => next = period,
            Err(e) => {
                if let Some(m) = &metrics {
                    m.session_renew_failures.inc();
                }
                if e.is_not_found() {
                    tracing::warn!(session = %id, "session is gone: its locks are lost");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                tracing::warn!(session = %id, error = %e, "session renewal failed; retrying");
                next = (period / 4).max(Duration::from_millis(500));
            }
        }
    }
}

/// The result of trying to take a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockAttempt {
    /// Taken, at this raft index.
    Acquired(u64),
    /// Another session holds it, or a lost lock's lock-delay still runs.
    HeldElsewhere { holder: Option<String> },
}

/// Tries once to take `key` for `session`; the key's value says who holds it.
/// A lock another session holds is seen with a read first and not asked
/// for: a failed acquire is a Raft write (an fsync on servers with data on
/// disk), a read is not, and instances racing for the same services meet
/// held locks often.
pub async fn try_lock(
    client: &Client,
    session: &Session,
    key: &str,
    holder: &str,
) -> Result<LockAttempt, ConsulError> {
    if let Some(other) = held_by_another(client, session, key).await? {
        return Ok(LockAttempt::HeldElsewhere { holder: other });
    }
    acquire(client, session, key, holder).await
}

/// Asks for `key` for `session` without reading it first: for a caller
/// that has just read it free with [`held_by_another`]. The lock is taken
/// with a one-operation transaction (`lock`), which Consul checks like
/// `?acquire` (the session, a lock-delay still running) and which answers
/// with the raft index it was taken at ([`LockAttempt::Acquired`]).
pub async fn acquire(
    client: &Client,
    session: &Session,
    key: &str,
    holder: &str,
) -> Result<LockAttempt, ConsulError> {
    let value = serde_json::to_vec(&json!({ "holder": holder, "session": session.id() }))
        .expect("lock value serializes");
    let op = TxnKvOp::Lock {
        key: key.to_string(),
        value,
        session: session.id().to_string(),
    };
    let answer = client.txn_as("kv.acquire", &[op]).await;
    let errors = match answer {
        Ok(TxnOutcome::Committed(results)) => {
            let index = results.first().map_or(0, |r| r.modify_index);
            return Ok(LockAttempt::Acquired(index));
        }
        Ok(TxnOutcome::RolledBack(errors)) => errors,
        Err(e) => {
            if e.is_invalid_session() {
                session.mark_lost();
            }
            return Err(e);
        }
    };
    let what = errors
        .iter()
        .map(|e| e.what.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if what.to_ascii_lowercase().contains("invalid session") {
        session.mark_lost();
        return Err(ConsulError::Status {
            op: "kv.acquire",
            status: 409,
            body: what,
        });
    }
    // Held by another session, or a lost lock's lock-delay still runs.
    let holder = held_by_another(client, session, key).await.ok().flatten();
    Ok(LockAttempt::HeldElsewhere {
        holder: holder.flatten(),
    })
}

/// `Some(holder)` when a session other than `session` holds `key`: the
/// holder its value names, if it names one.
pub async fn held_by_another(
    client: &Client,
    session: &Session,
    key: &str,
) -> Result<Option<Option<String>>, ConsulError> {
    let (pair, _) = client.kv_get(key, &Default::default()).await?;
    let Some(p) = pair.filter(|p| p.session.as_deref().is_some_and(|s| s != session.id())) else {
        return Ok(None);
    };
    let holder = serde_json::from_slice::<serde_json::Value>(&p.value)
        .ok()
        .and_then(|v| v.get("holder").and_then(|h| h.as_str()).map(str::to_string));
    Ok(Some(holder))
}

/// Lets go of `key` (a one-operation transaction, `unlock`): the raft index
/// it was released at, or `None` when the session did not hold it any more.
pub async fn unlock(
    client: &Client,
    session: &Session,
    key: &str,
) -> Result<Option<u64>, ConsulError> {
    let op = TxnKvOp::Unlock {
        key: key.to_string(),
        value: Vec::new(),
        session: session.id().to_string(),
    };
    match client.txn_as("kv.release", &[op]).await? {
        TxnOutcome::Committed(results) => Ok(Some(results.first().map_or(0, |r| r.modify_index))),
        TxnOutcome::RolledBack(_) => Ok(None),
    }
}
