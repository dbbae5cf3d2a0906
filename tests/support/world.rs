//! One test's own world for reconcile tests against the shared agent: a KV
//! prefix, a reconciler with fresh metrics, unique service names, and the
//! reads a test asserts on (entries, records, observed.json, write counts).

use std::sync::Arc;

use serde_json::Value;
use svc_handler::consul::{Client, QueryOptions, RequestObserver};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::lock::Session;
use svc_handler::metrics::Metrics;
use svc_handler::reconcile::{Outcome, Reconciler, ReconcilerConfig, Report};
use svc_handler::records::{Observed, Record, Status};

use super::{prefix, shared};

/// One reconcile under a session of its own, created for it and destroyed
/// after, as `svc-handler run --once` does for a single service.
pub trait ReconcileOnce {
    async fn reconcile_once(&self, id: &ServiceId, prune: bool) -> Report;
}

impl ReconcileOnce for Reconciler {
    async fn reconcile_once(&self, id: &ServiceId, prune: bool) -> Report {
        let session = Session::create(self.client(), &self.config().session, None)
            .await
            .expect("a session");
        let report = self.reconcile(id, prune, &session, None).await;
        session.destroy().await.expect("the session is destroyed");
        report
    }
}

/// A failed outcome's status, step and message (a panic for any other).
pub fn failure(r: &Report) -> (Status, &'static str, &str) {
    match &r.outcome {
        Outcome::Failed {
            status,
            step,
            message,
            ..
        } => (*status, step.as_str(), message),
        _ => panic!("not a failure: {r:?}"),
    }
}

/// A test's own world: a KV prefix, fresh metrics, unique service names.
pub struct World {
    pub client: Client,
    pub layout: Layout,
    pub rec: Reconciler,
    pub metrics: Arc<Metrics>,
    pub tag: String,
}

pub fn world(test: &str) -> World {
    let client = shared().client();
    let p = prefix(test);
    let layout = Layout::new(&p).unwrap();
    let metrics = Arc::new(Metrics::new());
    // The reconciler's requests are counted in its metrics; the test's own
    // (`client`) are not.
    let observer: Arc<dyn RequestObserver> = metrics.clone();
    let counted = Client::with_observer(shared().settings(), Some(observer)).expect("client");
    let rec = Reconciler::new(
        counted,
        ReconcilerConfig::new(layout.clone(), "test-holder"),
        Arc::clone(&metrics),
    );
    let tag = p.rsplit('/').next().unwrap().to_string();
    World {
        client,
        layout,
        rec,
        metrics,
        tag,
    }
}

impl World {
    pub fn id(&self, name: &str) -> ServiceId {
        ServiceId::new("default", "default", &format!("{name}-{}", self.tag)).unwrap()
    }

    pub async fn put(&self, id: &ServiceId, body: &Value) -> u64 {
        self.put_raw(id, &serde_json::to_vec(body).unwrap()).await
    }

    pub async fn put_raw(&self, id: &ServiceId, bytes: &[u8]) -> u64 {
        let key = self.layout.base_key(id);
        self.client.kv_put(&key, bytes).await.unwrap();
        let (p, _) = self
            .client
            .kv_get(&key, &QueryOptions::consistent())
            .await
            .unwrap();
        p.unwrap().modify_index
    }

    pub async fn entry(&self, kind: &str, name: &str) -> Option<Value> {
        self.client
            .config_get(kind, name, &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .map(|e| e.0)
    }

    pub async fn kv_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let (p, _) = self
            .client
            .kv_get(key, &QueryOptions::consistent())
            .await
            .unwrap();
        p.map(|p| serde_json::from_slice(&p.value).unwrap())
    }

    pub async fn observed(&self, id: &ServiceId) -> Option<Observed> {
        self.kv_json(&self.layout.observed_key(id)).await
    }

    pub async fn record(&self, id: &ServiceId, file: &str) -> Option<Record> {
        self.kv_json(&format!("{}{file}", self.layout.service_dir(id)))
            .await
    }

    pub fn writes(&self, kind: &str, result: &str) -> u64 {
        self.metrics
            .object_writes
            .with_label_values(&[kind, result])
            .get()
    }

    /// Successful config-entry writes, every kind.
    pub fn total_writes(&self) -> u64 {
        svc_handler::metrics::KINDS
            .iter()
            .map(|k| self.writes(k, "ok"))
            .sum()
    }

    /// Refused config-entry writes, every kind.
    pub fn failed_writes(&self) -> u64 {
        svc_handler::metrics::KINDS
            .iter()
            .map(|k| self.writes(k, "error"))
            .sum()
    }

    /// ModifyIndex of each of the service's entries (0 when absent).
    pub async fn indexes(&self, id: &ServiceId, gateway: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for kind in ["service-defaults", "service-resolver", "service-router"] {
            out.push(
                self.entry(kind, &id.name)
                    .await
                    .map_or(0, |e| e["ModifyIndex"].as_u64().unwrap()),
            );
        }
        out.push(
            self.entry("terminating-gateway", gateway)
                .await
                .map_or(0, |e| e["ModifyIndex"].as_u64().unwrap()),
        );
        out
    }
}
