//! Shared consistent reads of one config entry: the reads that concurrent
//! callers of one process ask for the same entry at the same time go out as
//! one request, and each caller gets the same answer (one parsed copy,
//! behind an [`Arc`]).
//!
//! No caller ever gets an answer older than its call: a caller joins the
//! next read only while that read has not been sent; what asks while a read
//! is in flight waits for the one after it. So each answer comes from a read
//! sent after its caller asked, and sees every write that had completed by
//! then, exactly as a read of its own would (Consul's `?consistent`).
//!
//! What it is for: a terminating gateway shared by hundreds of services is
//! read by every reconcile that links into it (its check, its batch's read
//! and read-back). During a bulk apply dozens of those run at once; one
//! gateway of a few hundred links is tens of KiB of JSON for Consul to
//! encode and for the daemon to parse, per read.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{Client, ConsulError, QueryMeta, QueryOptions};
use crate::batches::Batches;

/// An entry read once for several callers: the entry (`None` when absent)
/// and what Consul said about the read.
pub type SharedEntry = Result<(Option<Arc<Value>>, QueryMeta), ConsulError>;

/// (partition, namespace, kind, name).
type Key = (String, String, String, String);

/// The entries with a reader task running, and the callers waiting for its
/// next read.
pub(super) type SharedReads = Batches<Key, oneshot::Sender<SharedEntry>>;

impl Client {
    /// `GET /v1/config/<kind>/<name>?consistent`, shared with the callers
    /// in this process that ask for the same entry (same partition and
    /// namespace) before the read is sent (see the module docs). The answer
    /// is the one a read of the caller's own would give.
    pub async fn config_get_shared(&self, kind: &str, name: &str) -> SharedEntry {
        let key: Key = (
            self.scope.partition.clone(),
            self.scope.namespace.clone(),
            kind.to_string(),
            name.to_string(),
        );
        let (tx, rx) = oneshot::channel();
        if self.inner.shared.join(&key, tx) {
            tokio::spawn(read_for_all(self.clone(), key));
        }
        match rx.await {
            Ok(answer) => answer,
            // The reader task ended without answering (a panic, or the
            // runtime shutting down): read alone.
            Err(_) => self.read_one(kind, name).await,
        }
    }

    async fn read_one(&self, kind: &str, name: &str) -> SharedEntry {
        self.config_get(kind, name, &QueryOptions::consistent())
            .await
            .map(|(e, meta)| (e.map(|e| Arc::new(e.into_value())), meta))
    }
}

/// The reader of one entry: sends a read for whoever waits, answers them
/// all, and again for those that asked meanwhile, until nobody waits.
async fn read_for_all(client: Client, key: Key) {
    // Stopped early (a panic, the runtime shutting down), the slot goes:
    // its callers read alone and the next one starts a reader again.
    let mut serving = client.inner.shared.serve(&key);
    while let Some(waiting) = serving.next_batch() {
        let answer = client.read_one(&key.2, &key.3).await;
        for tx in waiting {
            let _ = tx.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{Scope, Settings};
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    /// Answers each read with the number of reads so far as the entry's
    /// ModifyIndex, after `delay`.
    struct Counting {
        n: std::sync::atomic::AtomicU64,
        delay: std::time::Duration,
    }

    impl Respond for Counting {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            ResponseTemplate::new(200)
                .set_delay(self.delay)
                .insert_header("X-Consul-Index", n.to_string().as_str())
                .set_body_json(serde_json::json!({
                    "Kind": "terminating-gateway", "Name": "gw", "ModifyIndex": n
                }))
        }
    }

    fn client(server: &MockServer) -> Client {
        let settings = Settings {
            address: server.uri(),
            ..Settings::default()
        };
        Client::new(settings).unwrap()
    }

    #[tokio::test]
    async fn callers_at_once_share_one_read_and_later_ones_get_a_newer_one() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/config/terminating-gateway/gw"))
            .and(query_param("consistent", ""))
            .respond_with(Counting {
                n: Default::default(),
                delay: std::time::Duration::from_millis(200),
            })
            .mount(&server)
            .await;
        let c = client(&server);
        // The first caller's read goes out at once; the nine that ask while
        // it is in flight share the next one.
        let first = {
            let c = c.clone();
            tokio::spawn(async move { c.config_get_shared("terminating-gateway", "gw").await })
        };
        while server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
        let mut later = Vec::new();
        for _ in 0..9 {
            let c = c.clone();
            later.push(tokio::spawn(async move {
                c.config_get_shared("terminating-gateway", "gw").await
            }));
        }
        let index = |a: SharedEntry| {
            let (v, meta) = a.unwrap();
            assert_eq!(v.unwrap()["ModifyIndex"], meta.index);
            meta.index
        };
        assert_eq!(index(first.await.unwrap()), 1);
        for h in later {
            assert_eq!(index(h.await.unwrap()), 2, "asked during read 1: read 2");
        }
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
        // Nothing waits now: the next caller reads afresh.
        assert_eq!(
            index(c.config_get_shared("terminating-gateway", "gw").await),
            3
        );
        // Another namespace is another entry: its own read.
        let other = c.scoped(Scope::new("default", "team-a"));
        assert_eq!(
            index(other.config_get_shared("terminating-gateway", "gw").await),
            4
        );
    }

    #[tokio::test]
    async fn an_absent_entry_and_an_error_reach_every_caller() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/config/terminating-gateway/none"))
            .respond_with(ResponseTemplate::new(404).insert_header("X-Consul-Index", "9"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/config/terminating-gateway/bad"))
            .respond_with(ResponseTemplate::new(403).set_body_string("Permission denied"))
            .mount(&server)
            .await;
        let c = client(&server);
        let (v, meta) = c
            .config_get_shared("terminating-gateway", "none")
            .await
            .unwrap();
        assert!(v.is_none());
        assert_eq!(meta.index, 9);
        let e = c
            .config_get_shared("terminating-gateway", "bad")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
    }
}
