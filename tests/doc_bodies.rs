//! base.json bodies as Consul's documentation writes config entries (our own
//! words, from the docs' field reference), against a real Consul 1.8.7 agent
//! and a reconciler that read the agent's version: each ends `applied` and
//! a second reconcile makes zero writes, or ends `invalid` with zero writes
//! (spelling Consul would store otherwise, fields newer than 1.8.7, Consul's
//! cross-entry rules foreseen before the first write).

#[path = "support/docs.rs"]
mod docs;
mod support;

use docs::Expect::{Applied, Invalid};
use docs::{applied_rows, invalid_rows, BACKEND};
use std::sync::Arc;

use serde_json::json;
use support::{prefix, shared};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::kind::Kind;
use svc_handler::lock::Session;
use svc_handler::metrics::Metrics;
use svc_handler::reconcile::{Outcome, Reconciler, ReconcilerConfig, Report};
use svc_handler::records::Status;

struct World {
    layout: Layout,
    rec: Reconciler,
    tag: String,
}

impl World {
    fn id(&self, name: &str) -> ServiceId {
        ServiceId::new("default", "default", &format!("{name}-{}", self.tag)).unwrap()
    }

    /// Config-entry writes so far, successful or refused.
    fn writes(&self) -> u64 {
        let m = self.rec.metrics();
        let mut n = 0;
        for k in Kind::ALL {
            for r in ["ok", "error"] {
                n += m.object_writes.with_label_values(&[k.as_str(), r]).get();
            }
        }
        n
    }

    async fn reconcile(&self, id: &ServiceId) -> Report {
        let client = self.rec.client();
        let session = Session::create(client, &self.rec.config().session, None)
            .await
            .unwrap();
        let r = self.rec.reconcile(id, true, &session, None).await;
        session.destroy().await.unwrap();
        r
    }
}

/// Services named in the bodies exist with protocol http, written by hand.
async fn backend(w: &World) -> String {
    let name = format!("{BACKEND}-{}", w.tag);
    let entry = json!({"Kind": "service-defaults", "Name": name, "Protocol": "http"});
    assert!(shared().client().config_put(&entry).await.unwrap());
    name
}

#[tokio::test]
async fn bodies_from_consul_docs_apply_once_or_are_refused_before_any_write() {
    let client = shared().client();
    let p = prefix("docs");
    let layout = Layout::new(&p).unwrap();
    let cfg = ReconcilerConfig::new(layout.clone(), "docs");
    let rec = Reconciler::new(client.clone(), cfg, Arc::new(Metrics::new()));
    let version = rec
        .detect_consul_version()
        .await
        .expect("the agent's version");
    assert_eq!(version.to_string(), "1.8.7");
    let tag = p.rsplit('/').next().unwrap().to_string();
    let w = World { layout, rec, tag };
    let backend = backend(&w).await;

    let mut rows = applied_rows();
    rows.extend(invalid_rows());
    assert!(rows.len() >= 30, "{} rows", rows.len());
    for (name, body, expect) in rows {
        let text = serde_json::to_string(&body)
            .unwrap()
            .replace(BACKEND, &backend);
        let id = w.id(name);
        client
            .kv_put(&w.layout.base_key(&id), text.as_bytes())
            .await
            .unwrap();
        let before = w.writes();
        let r = w.reconcile(&id).await;
        match expect {
            Applied => {
                assert!(
                    matches!(r.outcome, Outcome::Applied { .. }),
                    "{name}: {r:?}"
                );
                let wrote = w.writes();
                let again = w.reconcile(&id).await;
                assert!(
                    matches!(again.outcome, Outcome::Applied { changed: false, .. }),
                    "{name}: {again:?}"
                );
                assert_eq!(w.writes(), wrote, "{name}: a second reconcile wrote");
                assert!(
                    w.rec.check(&id, true).await.is_in_sync(),
                    "{name}: not in sync"
                );
            }
            Invalid(step, needle) => {
                let Outcome::Failed {
                    status,
                    step: at,
                    message,
                    retry,
                } = &r.outcome
                else {
                    panic!("{name}: {r:?}")
                };
                assert_eq!(
                    (*status, *at, *retry),
                    (Status::Invalid, step, false),
                    "{name}: {message}"
                );
                assert!(
                    message.contains(needle),
                    "{name}: {message:?} should name {needle:?}"
                );
                assert_eq!(w.writes(), before, "{name}: invalid, yet written");
            }
        }
    }
}
