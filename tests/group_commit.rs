//! Group commit of gateway links against a real Consul agent: the links of
//! concurrent reconciles in one process into one terminating gateway are
//! written in batches, one check-and-set write per batch.
mod support;

use std::sync::Arc;

use serde_json::{json, Value};
use support::{prefix, shared};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::lock::Session;
use svc_handler::metrics::Metrics;
use svc_handler::reconcile::{Outcome, Reconciler, ReconcilerConfig};
use svc_handler::records::{Observed, Record, Status};

/// One "daemon": a reconciler with metrics of its own.
struct Daemon {
    rec: Reconciler,
    metrics: Arc<Metrics>,
}

impl Daemon {
    fn new(client: &Client, layout: &Layout, holder: &str) -> Daemon {
        let metrics = Arc::new(Metrics::new());
        let cfg = ReconcilerConfig::new(layout.clone(), holder);
        let rec = Reconciler::new(client.clone(), cfg, Arc::clone(&metrics));
        Daemon { rec, metrics }
    }

    fn gateway_writes(&self, result: &str) -> u64 {
        self.metrics
            .object_writes
            .with_label_values(&["terminating-gateway", result])
            .get()
    }

    /// (batches committed, changes in them).
    fn batches(&self) -> (u64, f64) {
        let h = &self.metrics.gateway_batch_size;
        (h.get_sample_count(), h.get_sample_sum())
    }
}

async fn kv_json<T: serde::de::DeserializeOwned>(client: &Client, key: &str) -> Option<T> {
    let (p, _) = client
        .kv_get(key, &QueryOptions::consistent())
        .await
        .unwrap();
    p.map(|p| serde_json::from_slice(&p.value).unwrap())
}

async fn gateway(client: &Client, name: &str) -> Value {
    let (e, _) = client
        .config_get("terminating-gateway", name, &QueryOptions::consistent())
        .await
        .unwrap();
    e.unwrap().0
}

/// Reconciles every service of `ids` once, `tasks` tasks per daemon pulling
/// from one shared queue; every outcome must be `applied`.
async fn reconcile_all(daemons: &[Daemon], ids: &[ServiceId], tasks: usize) {
    let queue = Arc::new(tokio::sync::Mutex::new(ids.to_vec()));
    let mut handles = Vec::new();
    for d in daemons {
        for _ in 0..tasks {
            let (queue, rec) = (Arc::clone(&queue), d.rec.clone());
            handles.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    // Not `while let`: the queue's guard would live through the body.
                    let Some(id) = queue.lock().await.pop() else {
                        break;
                    };
                    let session = Session::create(rec.client(), &rec.config().session, None)
                        .await
                        .expect("a session");
                    outcomes.push(rec.reconcile(&id, true, &session, None).await.outcome);
                    session.destroy().await.expect("the session is destroyed");
                }
                outcomes
            }));
        }
    }
    for h in handles {
        for o in h.await.unwrap() {
            assert!(matches!(o, Outcome::Applied { changed: true, .. }), "{o:?}");
        }
    }
}

/// Checks the gateway: exactly one link per service of `ids` with its SNI,
/// plus someone else's link and Meta, untouched.
fn check_gateway(g: &Value, ids: &[ServiceId]) {
    let links = g["Services"].as_array().unwrap();
    assert_eq!(links.len(), ids.len() + 1, "exactly one link per service");
    assert_eq!(
        links[0],
        json!({"Name": "legacy-db", "CAFile": "/etc/ca.pem"})
    );
    for id in ids {
        let mine: Vec<&Value> = links.iter().filter(|l| l["Name"] == *id.name).collect();
        assert_eq!(mine.len(), 1, "{id}");
        assert_eq!(mine[0]["SNI"], format!("{}.example", id.name));
    }
    assert_eq!(
        g["Meta"],
        json!({"team": "network"}),
        "the gateway's own fields stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_links_from_three_reconcilers_in_batches() {
    let client = shared().client();
    let p = prefix("group200");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let gw = format!("group-gw-{tag}");
    client
        .config_put(&json!({
            "Kind": "terminating-gateway",
            "Name": gw,
            "Meta": {"team": "network"},
            "Services": [{"Name": "legacy-db", "CAFile": "/etc/ca.pem"}]
        }))
        .await
        .unwrap();
    let ids: Vec<ServiceId> = (0..200)
        .map(|i| ServiceId::new("default", "default", &format!("s{i}-{tag}")).unwrap())
        .collect();
    for id in &ids {
        let body =
            json!({"terminating_gateway": {"Gateway": gw, "SNI": format!("{}.example", id.name)}});
        client
            .kv_put(&layout.base_key(id), &serde_json::to_vec(&body).unwrap())
            .await
            .unwrap();
    }
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::new(&client, &layout, &format!("daemon-{i}")))
        .collect();
    reconcile_all(&daemons, &ids, 16).await;

    check_gateway(&gateway(&client, &gw).await, &ids);
    for id in &ids {
        let o: Observed = kv_json(&client, &layout.observed_key(id)).await.unwrap();
        assert_eq!(o.status, Status::Applied, "{id}");
        let key = format!("{}tgw.json", layout.service_dir(id));
        let r: Record = kv_json(&client, &key).await.expect("tgw.json");
        assert_eq!(r.name, gw, "{id}");
        assert!(r.differs.is_none(), "{id}: {r:?}");
    }
    let writes: u64 = daemons.iter().map(|d| d.gateway_writes("ok")).sum();
    let retries: u64 = daemons.iter().map(|d| d.gateway_writes("cas_retry")).sum();
    let errors: u64 = daemons.iter().map(|d| d.gateway_writes("error")).sum();
    let (batches, changes) = daemons
        .iter()
        .map(Daemon::batches)
        .fold((0, 0.0), |(b, c), (b1, c1)| (b + b1, c + c1));
    println!(
        "200 links from 3 reconcilers x 16 tasks: {writes} gateway writes (ok), \
         {retries} cas retries, {batches} batches carrying {changes} changes \
         (mean {:.1}/batch); per daemon writes: {:?}",
        changes / batches as f64,
        daemons
            .iter()
            .map(|d| d.gateway_writes("ok"))
            .collect::<Vec<_>>()
    );
    assert_eq!(errors, 0);
    assert_eq!(changes as u64, 200, "every link went through a batch once");
    assert!(writes <= batches, "at most one write per batch");
    assert!(writes <= 100, "{writes} writes for 200 links");
}
