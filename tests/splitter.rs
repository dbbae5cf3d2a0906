//! The service-splitter (weighted canary) against a real Consul agent:
//! applied between the resolver and the router, verified, recorded, visible
//! in `consul config read` and in Consul's compiled discovery chain, put back
//! after a hand edit, removed before the resolver it depends on, and refused
//! before any write when its weights are wrong.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::world::{world, ReconcileOnce};
use support::{consul_bin, shared};
use svc_handler::reconcile::{Outcome, Report};
use svc_handler::records::Status;

fn applied(r: &Report) {
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
}

fn canary(v1: f64, v2: f64) -> Value {
    json!({
        "defaults": { "Protocol": "http" },
        "resolver": {
            "DefaultSubset": "v1",
            "Subsets": {
                "v1": { "Filter": "Service.Meta.version == v1" },
                "v2": { "Filter": "Service.Meta.version == v2" }
            }
        },
        "splitter": { "Splits": [
            { "Weight": v1, "ServiceSubset": "v1" },
            { "Weight": v2, "ServiceSubset": "v2" }
        ] },
        "router": { "Routes": [ {
            "Match": { "HTTP": { "PathPrefix": "/v2" } },
            "Destination": { "ServiceSubset": "v2" }
        } ] }
    })
}

/// `consul config read -kind service-splitter -name NAME`, as an operator runs it.
fn consul_config_read(name: &str) -> Value {
    let out = Command::new(consul_bin())
        .args(["config", "read", "-kind", "service-splitter", "-name", name])
        .env("CONSUL_HTTP_ADDR", shared().url())
        .output()
        .expect("consul runs");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("consul prints JSON")
}

/// Consul's compiled discovery chain of `name`.
async fn discovery_chain(name: &str) -> Value {
    let url = format!("{}/v1/discovery-chain/{name}", shared().url());
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn weighted_canary_is_applied_verified_recorded_and_compiled() {
    let w = world("split-apply");
    let id = w.id("web");
    let generation = w.put(&id, &canary(90.0, 10.0)).await;
    applied(&w.rec.reconcile_once(&id, true).await);

    // The entry, as the operator's own CLI prints it.
    let read = consul_config_read(&id.name);
    assert_eq!(read["Kind"], "service-splitter");
    assert_eq!(
        read["Splits"],
        json!([
            { "Weight": 90, "ServiceSubset": "v1" },
            { "Weight": 10, "ServiceSubset": "v2" }
        ])
    );
    assert_eq!(read["Meta"]["managed-by"], "svc-handler");
    assert_eq!(
        read["Meta"]["svc-handler-key"],
        w.layout.base_key(&id).as_str()
    );

    // Its record and observed.json.
    let rec = w.record(&id, "splitter.json").await.expect("splitter.json");
    assert_eq!(rec.kind, "service-splitter");
    assert_eq!(rec.generation, generation);
    assert_eq!(rec.modify_index, read["ModifyIndex"].as_u64().unwrap());
    assert_eq!(
        rec.resource_id,
        format!("service-splitter/default/default/{}", id.name)
    );
    let obs = w.observed(&id).await.unwrap();
    assert_eq!(obs.status, Status::Applied);
    let r = obs.objects.splitter.expect("objects.splitter");
    assert_eq!(r.modify_index, rec.modify_index);
    assert_eq!(w.writes("service-splitter", "ok"), 1);

    // Consul compiles it: the router's catch-all goes through the splitter,
    // 90 to v1 and 10 to v2; the /v2 route goes straight to v2.
    let chain = &discovery_chain(&id.name).await["Chain"];
    assert_eq!(chain["Protocol"], "http");
    let ns = "default";
    let dc = "dc1";
    let splitter = &chain["Nodes"][format!("splitter:{}.{ns}", id.name)];
    assert_eq!(splitter["Type"], "splitter", "{chain:#}");
    let splits: Vec<(f64, String)> = splitter["Splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let next = s["NextNode"].as_str().unwrap().to_string();
            (s["Weight"].as_f64().unwrap(), next)
        })
        .collect();
    assert_eq!(
        splits,
        [
            (90.0, format!("resolver:v1.{}.{ns}.{dc}", id.name)),
            (10.0, format!("resolver:v2.{}.{ns}.{dc}", id.name)),
        ]
    );
    let router = &chain["Nodes"][format!("router:{}.{ns}", id.name)];
    let routes = router["Routes"].as_array().expect("router node");
    assert_eq!(
        routes[0]["NextNode"],
        format!("resolver:v2.{}.{ns}.{dc}", id.name)
    );
    assert_eq!(routes[1]["NextNode"], format!("splitter:{}.{ns}", id.name));

    // The same generation again writes nothing.
    let before = w.total_writes();
    let r = w.rec.reconcile_once(&id, true).await;
    assert!(
        matches!(r.outcome, Outcome::UpToDate | Outcome::Applied { .. }),
        "{r:?}"
    );
    assert_eq!(w.total_writes(), before);

    // A new weight is one splitter write.
    w.put(&id, &canary(50.0, 50.0)).await;
    applied(&w.rec.reconcile_once(&id, true).await);
    assert_eq!(consul_config_read(&id.name)["Splits"][1]["Weight"], 50);
    assert_eq!(w.writes("service-splitter", "ok"), 2);
    assert_eq!(w.total_writes(), before + 1);
}

#[tokio::test]
async fn a_hand_edit_of_the_splitter_is_put_back() {
    let w = world("split-drift");
    let id = w.id("web");
    w.put(&id, &canary(90.0, 10.0)).await;
    applied(&w.rec.reconcile_once(&id, true).await);
    let mut edited = w.entry("service-splitter", &id.name).await.unwrap();
    edited["Splits"][0]["Weight"] = json!(0);
    edited["Splits"][1]["Weight"] = json!(100);
    w.client.config_put(&edited).await.unwrap();

    let r = w.rec.reconcile_once(&id, true).await;
    match &r.outcome {
        Outcome::Applied { drifted, .. } => {
            assert!(
                drifted.contains(&svc_handler::kind::Kind::ServiceSplitter),
                "{r:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let back = w.entry("service-splitter", &id.name).await.unwrap();
    assert_eq!(back["Splits"][0]["Weight"], 90);
    assert_eq!(back["Splits"][1]["Weight"], 10);
}

#[tokio::test]
async fn removing_the_splitter_goes_before_the_resolver_and_defaults_it_needs() {
    let w = world("split-remove");
    let id = w.id("web");
    w.put(&id, &canary(90.0, 10.0)).await;
    applied(&w.rec.reconcile_once(&id, true).await);

    // One change drops the splitter and the router, the subset v2 the
    // splitter names, and goes back to tcp. Consul refuses the resolver
    // without v2 and the tcp protocol while the splitter exists, so this
    // applies only when the splitter (and the router) are deleted first.
    let spec = json!({
        "defaults": { "Protocol": "tcp" },
        "resolver": { "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" } } }
    });
    w.put(&id, &spec).await;
    applied(&w.rec.reconcile_once(&id, true).await);
    assert!(w.entry("service-splitter", &id.name).await.is_none());
    assert!(w.entry("service-router", &id.name).await.is_none());
    assert!(w.record(&id, "splitter.json").await.is_none());
    let obs = w.observed(&id).await.unwrap();
    assert!(obs.objects.splitter.is_none() && obs.objects.router.is_none());
    let resolver = w.entry("service-resolver", &id.name).await.unwrap();
    assert_eq!(
        resolver["Subsets"],
        json!({ "v1": { "Filter": "Service.Meta.version == v1" } })
    );
    assert_eq!(
        w.entry("service-defaults", &id.name).await.unwrap()["Protocol"],
        "tcp"
    );
}

#[tokio::test]
async fn deleting_base_json_removes_router_splitter_resolver_defaults() {
    let w = world("split-prune");
    let id = w.id("web");
    w.put(&id, &canary(90.0, 10.0)).await;
    applied(&w.rec.reconcile_once(&id, true).await);
    w.client.kv_delete(&w.layout.base_key(&id)).await.unwrap();
    let r = w.rec.reconcile_once(&id, true).await;
    assert_eq!(r.outcome, Outcome::Deleted { pruned: true }, "{r:?}");
    for kind in [
        "service-router",
        "service-splitter",
        "service-resolver",
        "service-defaults",
    ] {
        assert!(w.entry(kind, &id.name).await.is_none(), "{kind} left");
    }
    assert!(w.record(&id, "splitter.json").await.is_none());
}

#[tokio::test]
async fn wrong_weights_are_invalid_before_any_write() {
    let w = world("split-invalid");
    let cases: [(&str, Value, &str, &str); 4] = [
        (
            "sum",
            canary(90.0, 5.0),
            "$.splitter.Splits",
            "the sum of all split weights must be 100, not 95.000000",
        ),
        (
            "decimals",
            canary(33.333, 66.667),
            "$.splitter.Splits[0].Weight",
            "would be stored by Consul as 33.33",
        ),
        (
            "range",
            canary(110.0, -10.0),
            "$.splitter.Splits[0].Weight",
            "from 0 to 100, found 110",
        ),
        (
            "subset",
            {
                let mut s = canary(90.0, 10.0);
                s["splitter"]["Splits"][1]["ServiceSubset"] = json!("v3");
                s
            },
            "$.splitter.Splits[1].ServiceSubset",
            "does not have a subset named \"v3\"",
        ),
    ];
    for (name, spec, path, words) in cases {
        let id = w.id(name);
        w.put(&id, &spec).await;
        let r = w.rec.reconcile_once(&id, true).await;
        let Outcome::Failed {
            status,
            step,
            message,
            ..
        } = &r.outcome
        else {
            panic!("{name}: {r:?}")
        };
        assert_eq!(*status, Status::Invalid, "{name}: {message}");
        assert_eq!(step.as_str(), "preflight", "{name}: {message}");
        assert!(message.contains(path), "{name}: {message}");
        assert!(message.contains(words), "{name}: {message}");
        for kind in ["service-defaults", "service-resolver", "service-splitter"] {
            assert!(w.entry(kind, &id.name).await.is_none(), "{name}: {kind}");
        }
        let obs = w.observed(&id).await.unwrap();
        assert_eq!(obs.status, Status::Invalid);
        assert!(obs.message.unwrap_or_default().contains(path), "{name}");
    }
    assert_eq!(w.total_writes(), 0);
}
