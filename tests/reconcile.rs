//! The reconcile flow of one service against a real Consul agent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::shared;
use support::world::{failure, world, ReconcileOnce};
use svc_handler::consul::{Client, QueryOptions, SessionRequest, Settings};
use svc_handler::keys::ServiceId;
use svc_handler::lock::Session;
use svc_handler::reconcile::{BoxFuture, Checked, FlowHook, Outcome};
use svc_handler::records::{Observed, Status};

fn full_spec(gateway: &str) -> Value {
    json!({
        "defaults": { "Protocol": "http" },
        "resolver": {
            "ConnectTimeout": "5s",
            "DefaultSubset": "v1",
            "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" } }
        },
        "router": { "Routes": [ {
            "Match": { "HTTP": { "PathPrefix": "/admin" } },
            "Destination": { "ServiceSubset": "v1" }
        } ] },
        "terminating_gateway": { "Gateway": gateway, "SNI": "api.example.com" }
    })
}

#[tokio::test]
async fn full_spec_gives_four_entries_records_and_applied() {
    let w = world("full");
    let id = w.id("web");
    let gw = format!("egress-{}", w.tag);
    let generation = w.put(&id, &full_spec(&gw)).await;

    let report = w.rec.reconcile_once(&id, true).await;
    assert!(
        matches!(report.outcome, Outcome::Applied { changed: true, .. }),
        "{report:?}"
    );
    assert_eq!(report.generation, Some(generation));

    let base_key = w.layout.base_key(&id);
    for kind in ["service-defaults", "service-resolver", "service-router"] {
        let e = w.entry(kind, &id.name).await.expect(kind);
        assert_eq!(e["Meta"]["managed-by"], "svc-handler", "{kind}");
        assert_eq!(e["Meta"]["svc-handler-key"], base_key.as_str(), "{kind}");
    }
    let d = w.entry("service-defaults", &id.name).await.unwrap();
    assert_eq!(d["Protocol"], "http");
    let r = w.entry("service-resolver", &id.name).await.unwrap();
    assert_eq!(r["Subsets"]["v1"]["Filter"], "Service.Meta.version == v1");
    let g = w.entry("terminating-gateway", &gw).await.unwrap();
    assert_eq!(
        g["Services"],
        json!([{"Name": id.name, "SNI": "api.example.com"}])
    );

    for (file, kind, rid) in [
        (
            "defaults.json",
            "service-defaults",
            format!("service-defaults/default/default/{}", id.name),
        ),
        (
            "resolver.json",
            "service-resolver",
            format!("service-resolver/default/default/{}", id.name),
        ),
        (
            "router.json",
            "service-router",
            format!("service-router/default/default/{}", id.name),
        ),
        (
            "tgw.json",
            "terminating-gateway",
            format!("terminating-gateway/default/default/{gw}#{}", id.name),
        ),
    ] {
        let rec = w.record(&id, file).await.expect(file);
        assert_eq!(rec.kind, kind);
        assert_eq!(rec.resource_id, rid);
        assert_eq!(rec.generation, generation, "{file}");
        assert!(rec.modify_index > 0 && rec.create_index > 0);
        assert!(rec.verified_at.ends_with('Z'));
        assert!(rec.object.is_object());
    }
    let rec = w.record(&id, "defaults.json").await.unwrap();
    assert_eq!(rec.object["Protocol"], "http");
    assert_eq!(rec.modify_index, d["ModifyIndex"].as_u64().unwrap());

    let obs = w.observed(&id).await.expect("observed.json");
    assert_eq!(obs.status, Status::Applied);
    assert_eq!(obs.generation, generation);
    assert_eq!(obs.holder, "test-holder");
    assert_eq!(obs.message, None);
    assert_eq!(
        obs.objects.defaults.as_ref().unwrap().modify_index,
        d["ModifyIndex"].as_u64().unwrap()
    );
    assert!(obs.objects.resolver.is_some() && obs.objects.router.is_some());
    assert_eq!(
        obs.objects.terminating_gateway.unwrap().resource_id,
        format!("terminating-gateway/default/default/{gw}#{}", id.name)
    );

    // What an operator sees with the consul CLI.
    let out = std::process::Command::new(support::consul_bin())
        .args([
            "config",
            "read",
            "-kind",
            "service-defaults",
            "-name",
            &id.name,
            "-http-addr",
            &shared().url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("\"managed-by\": \"svc-handler\""), "{text}");

    // The lock is released and no session is left behind.
    let (lock, _) = w
        .client
        .kv_get(&w.layout.lock_key(&id), &QueryOptions::consistent())
        .await
        .unwrap();
    assert_eq!(lock.unwrap().session, None);
    assert_eq!(
        w.metrics
            .reconcile_total
            .with_label_values(&["applied"])
            .get(),
        1
    );
}

#[tokio::test]
async fn unchanged_spec_writes_nothing_for_every_field_kind() {
    let w = world("idem");
    let gw = format!("egress-{}", w.tag);
    let variants = [
        ("plain", full_spec(&gw)),
        (
            "durations",
            json!({"resolver": {"ConnectTimeout": "5000ms"}}),
        ),
        (
            "durations-minutes",
            json!({"resolver": {"ConnectTimeout": "90s"}}),
        ),
        (
            "empty-defaults",
            json!({"defaults": {"Protocol": "http", "MeshGateway": {}, "Expose": {}}}),
        ),
        (
            "redirect-ns",
            json!({"resolver": {"Redirect": {"Service": "other", "Namespace": ""}}}),
        ),
        (
            "failover-ns",
            json!({"resolver": {"Failover": {"*": {"Service": "backup", "Namespace": "default"}}}}),
        ),
        (
            "route-destination",
            json!({"defaults": {"Protocol": "http"}, "router": {"Routes": [{
                "Match": {"HTTP": {"PathPrefix": "/x", "Methods": ["GET"]}},
                "Destination": {"Namespace": "", "NumRetries": 0, "RequestTimeout": "2000ms"}
            }]}}),
        ),
        (
            "nulls",
            json!({"defaults": null, "router": null, "resolver": {}}),
        ),
    ];
    for (name, body) in variants {
        let id = w.id(name);
        w.put(&id, &body).await;
        let first = w.rec.reconcile_once(&id, true).await;
        assert!(
            matches!(first.outcome, Outcome::Applied { changed: true, .. }),
            "{name}: {first:?}"
        );
        let before = w.indexes(&id, &gw).await;
        let writes = w.total_writes();
        let again = w.rec.reconcile_once(&id, true).await;
        assert_eq!(
            again.outcome,
            Outcome::Applied {
                changed: false,
                drifted: vec![]
            },
            "{name}: the second run must change nothing"
        );
        assert_eq!(w.total_writes(), writes, "{name}: config writes");
        assert_eq!(
            w.indexes(&id, &gw).await,
            before,
            "{name}: ModifyIndex moved"
        );
    }
    assert!(
        w.metrics
            .reconcile_total
            .with_label_values(&["unchanged"])
            .get()
            >= 8
    );
}

#[tokio::test]
async fn router_on_tcp_is_refused_before_any_write_until_the_protocol_is_fixed() {
    let w = world("tcp-router");
    let id = w.id("api");
    let mut spec = full_spec("unused");
    spec.as_object_mut().unwrap().remove("terminating_gateway");
    spec["defaults"]["Protocol"] = json!("tcp");
    let generation = w.put(&id, &spec).await;
    let r = w.rec.reconcile_once(&id, true).await;
    let (status, step, message) = failure(&r);
    // Foreseen before the first write (preflight), final for the
    // generation, in Consul's own words; nothing written at all.
    assert_eq!(status, Status::Invalid);
    assert!(matches!(r.outcome, Outcome::Failed { retry: false, .. }));
    assert_eq!(step, "preflight");
    assert!(
        message.contains("does not permit advanced routing"),
        "Consul's words: {message}"
    );
    let obs = w.observed(&id).await.unwrap();
    assert_eq!(obs.status, Status::Invalid);
    assert!(!obs.retry);
    assert_eq!(obs.step.map(|s| s.as_str()), Some("preflight"));
    assert_eq!(obs.generation, generation);
    assert!(obs.message.unwrap().contains("protocol"));
    assert_eq!(obs.objects, Default::default());
    for kind in ["service-defaults", "service-resolver", "service-router"] {
        assert!(w.entry(kind, &id.name).await.is_none(), "{kind} written");
    }
    assert!(w.record(&id, "defaults.json").await.is_none());

    spec["defaults"]["Protocol"] = json!("http");
    w.put(&id, &spec).await;
    let r = w.rec.reconcile_once(&id, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    assert_eq!(w.observed(&id).await.unwrap().status, Status::Applied);
    assert!(w.entry("service-router", &id.name).await.is_some());
}

#[tokio::test]
async fn fifty_services_share_one_gateway_from_eight_tasks() {
    let w = world("gw50");
    let gw = format!("shared-gw-{}", w.tag);
    // A gateway someone else made, with a link and Meta of its own.
    w.client
        .config_put(&json!({
            "Kind": "terminating-gateway",
            "Name": gw,
            "Meta": {"team": "network"},
            "Services": [{"Name": "legacy-db", "CAFile": "/etc/ca.pem"}]
        }))
        .await
        .unwrap();
    let ids: Vec<ServiceId> = (0..50).map(|i| w.id(&format!("s{i}"))).collect();
    for id in &ids {
        w.put(
            id,
            &json!({"terminating_gateway": {"Gateway": gw, "SNI": format!("{}.example", id.name)}}),
        )
        .await;
    }
    let queue = Arc::new(tokio::sync::Mutex::new(ids.clone()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let queue = Arc::clone(&queue);
        let rec = w.rec.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let Some(id) = queue.lock().await.pop() else {
                    break;
                };
                outcomes.push(rec.reconcile_once(&id, true).await.outcome);
            }
            outcomes
        }));
    }
    for t in tasks {
        for o in t.await.unwrap() {
            assert!(matches!(o, Outcome::Applied { .. }), "{o:?}");
        }
    }
    let g = w.entry("terminating-gateway", &gw).await.unwrap();
    let links = g["Services"].as_array().unwrap();
    let ours: Vec<&Value> = links.iter().filter(|l| l["Name"] != "legacy-db").collect();
    assert_eq!(ours.len(), 50, "exactly one link per service");
    for id in &ids {
        let l = ours.iter().find(|l| l["Name"] == id.name.as_str()).unwrap();
        assert_eq!(l["SNI"], format!("{}.example", id.name));
    }
    assert_eq!(links.len(), 51);
    assert!(links
        .iter()
        .any(|l| l["Name"] == "legacy-db" && l["CAFile"] == "/etc/ca.pem"));
    assert_eq!(
        g["Meta"],
        json!({"team": "network"}),
        "the gateway's own fields stay"
    );
    println!(
        "cas retries on the gateway: {}",
        w.writes("terminating-gateway", "cas_retry")
    );
}

#[tokio::test]
async fn unowned_entry_is_a_conflict_until_adopted() {
    let w = world("adopt");
    let id = w.id("legacy");
    w.client
        .config_put(&json!({"Kind": "service-defaults", "Name": id.name, "Protocol": "grpc"}))
        .await
        .unwrap();
    let before = w.entry("service-defaults", &id.name).await.unwrap();
    w.put(&id, &json!({"defaults": {"Protocol": "http"}})).await;
    let r = w.rec.reconcile_once(&id, true).await;
    let (status, step, message) = failure(&r);
    assert_eq!((status, step), (Status::Conflict, "defaults"));
    assert!(message.contains("adopt"), "{message}");
    let after = w.entry("service-defaults", &id.name).await.unwrap();
    assert_eq!(after, before, "the unowned entry is unchanged");
    let obs = w.observed(&id).await.unwrap();
    assert_eq!(obs.status, Status::Conflict);
    assert!(obs
        .message
        .unwrap()
        .contains("without svc-handler's ownership mark"));

    // Marked for another base.json key: never touched, even with adopt.
    let other = w.id("marked");
    w.client
        .config_put(
            &json!({"Kind": "service-defaults", "Name": other.name, "Meta": {
            "managed-by": "svc-handler", "svc-handler-key": "somewhere/else/base.json"}}),
        )
        .await
        .unwrap();
    w.put(&other, &json!({"adopt": true})).await;
    let r = w.rec.reconcile_once(&other, true).await;
    assert!(
        matches!(&r.outcome, Outcome::Failed { status: Status::Conflict, message, .. } if message.contains("somewhere/else/base.json")),
        "{r:?}"
    );

    w.put(
        &id,
        &json!({"defaults": {"Protocol": "http"}, "adopt": true}),
    )
    .await;
    let r = w.rec.reconcile_once(&id, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let adopted = w.entry("service-defaults", &id.name).await.unwrap();
    assert_eq!(adopted["Protocol"], "http");
    assert_eq!(adopted["Meta"]["managed-by"], "svc-handler");
}

/// A hand-made resolver adopted with `{"defaults": ..., "adopt": true}`
/// used to become an empty resolver without a word. Now: `conflict` naming
/// the fields it would drop, the entry untouched, and no other entry
/// written; `"adopt": "replace"` is the explicit way to drop them.
#[tokio::test]
async fn adopting_never_drops_fields_it_did_not_write() {
    let w = world("adopt-keep");
    let id = w.id("handmade");
    w.client
        .config_put(&json!({"Kind": "service-resolver", "Name": id.name,
            "ConnectTimeout": "15s", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}))
        .await
        .unwrap();
    let before = w.entry("service-resolver", &id.name).await.unwrap();
    w.put(
        &id,
        &json!({"defaults": {"Protocol": "http"}, "adopt": true}),
    )
    .await;
    let r = w.rec.reconcile_once(&id, true).await;
    let (status, step, message) = failure(&r);
    assert_eq!((status, step), (Status::Conflict, "resolver"));
    for field in ["ConnectTimeout", "DefaultSubset", "Subsets"] {
        assert!(message.contains(field), "{message}");
    }
    assert!(message.contains("\"adopt\": \"replace\""), "{message}");
    let after = w.entry("service-resolver", &id.name).await.unwrap();
    assert_eq!(after, before, "the hand-made resolver is unchanged");
    assert!(
        w.entry("service-defaults", &id.name).await.is_none(),
        "nothing written before the conflict"
    );
    let obs = w.observed(&id).await.unwrap();
    assert_eq!(obs.status, Status::Conflict);

    // Asked explicitly: taken over, its fields dropped.
    w.put(
        &id,
        &json!({"defaults": {"Protocol": "http"}, "adopt": "replace"}),
    )
    .await;
    let r = w.rec.reconcile_once(&id, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let replaced = w.entry("service-resolver", &id.name).await.unwrap();
    assert_eq!(replaced["Meta"]["managed-by"], "svc-handler");
    assert!(replaced.get("Subsets").is_none(), "{replaced}");
}

struct DestroySessionBefore {
    step: &'static str,
    client: Client,
}

impl FlowHook for DestroySessionBefore {
    fn before_fenced_write<'a>(&'a self, step: &'a str, session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if step == self.step {
                self.client.session_destroy(session).await.unwrap();
            }
        })
    }
}

#[tokio::test]
async fn record_write_after_losing_the_session_is_refused() {
    let w = world("fence");
    let id = w.id("fenced");
    w.put(&id, &json!({"defaults": {"Protocol": "http"}})).await;
    let rec = w.rec.clone().with_hook(Arc::new(DestroySessionBefore {
        step: "resolver",
        client: w.client.clone(),
    }));
    let r = rec.reconcile_once(&id, true).await;
    let Outcome::LockLost { step, message } = &r.outcome else {
        panic!("{r:?}")
    };
    // Records are committed with observed.json in one transaction fenced by
    // the lock: that transaction is refused, so none of them lands.
    assert_eq!(step.as_str(), "observed");
    assert!(message.contains("lock"), "{message}");
    for file in ["defaults.json", "resolver.json"] {
        assert!(
            w.record(&id, file).await.is_none(),
            "{file} landed unfenced"
        );
    }
    assert!(w.observed(&id).await.is_none(), "nor did observed.json");
    // What was written to Consul before the lock was lost stays, marked.
    let e = w.entry("service-defaults", &id.name).await.unwrap();
    assert_eq!(e["Meta"]["managed-by"], "svc-handler");
    assert_eq!(
        w.metrics
            .reconcile_total
            .with_label_values(&["error"])
            .get(),
        1
    );
}

#[tokio::test]
async fn held_lock_means_nothing_is_done() {
    let w = world("held");
    let id = w.id("busy");
    w.put(&id, &json!({})).await;
    let other = w
        .client
        .session_create(&SessionRequest {
            name: "another instance".into(),
            ttl: Some(Duration::from_secs(30)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(w
        .client
        .kv_acquire(&w.layout.lock_key(&id), br#"{"holder":"node-b"}"#, &other)
        .await
        .unwrap());
    let r = w.rec.reconcile_once(&id, true).await;
    assert_eq!(
        r.outcome,
        Outcome::HeldElsewhere {
            holder: Some("node-b".into())
        }
    );
    assert!(w.entry("service-defaults", &id.name).await.is_none());
    assert!(w.observed(&id).await.is_none());
    assert_eq!(
        w.metrics
            .lock_acquisitions
            .with_label_values(&["held_elsewhere"])
            .get(),
        1
    );
    // Seen held with a read: no acquire (a Raft write) was asked for.
    assert_eq!(w.total_writes(), 0);
    let acquires: u64 = ["200", "500"]
        .iter()
        .map(|code| {
            w.metrics
                .consul_requests
                .with_label_values(&["kv.acquire", code])
                .get()
        })
        .sum();
    assert_eq!(acquires, 0);
    assert!(
        w.metrics
            .consul_requests
            .with_label_values(&["kv.get", "200"])
            .get()
            >= 1
    );
    w.client.session_destroy(&other).await.unwrap();
}

#[tokio::test]
async fn router_and_link_removed_from_base_json_are_deleted() {
    let w = world("remove");
    let id = w.id("shrink");
    let gw_a = format!("gw-a-{}", w.tag);
    let gw_b = format!("gw-b-{}", w.tag);
    // gw-b is the operator's; gw-a does not exist (a typo, say), so
    // svc-handler creates it.
    let operators = json!({"Kind": "terminating-gateway", "Name": gw_b});
    w.client.config_put(&operators).await.unwrap();
    w.put(&id, &full_spec(&gw_a)).await;
    assert!(matches!(
        w.rec.reconcile_once(&id, true).await.outcome,
        Outcome::Applied { .. }
    ));

    // Move the link to another gateway.
    let mut spec = full_spec(&gw_b);
    w.put(&id, &spec).await;
    assert!(matches!(
        w.rec.reconcile_once(&id, true).await.outcome,
        Outcome::Applied { .. }
    ));
    // The gateway svc-handler created goes with its last link.
    assert!(
        w.entry("terminating-gateway", &gw_a).await.is_none(),
        "gw-a left behind"
    );
    let b = w.entry("terminating-gateway", &gw_b).await.unwrap();
    assert_eq!(b["Services"][0]["Name"], id.name.as_str());
    assert_eq!(w.record(&id, "tgw.json").await.unwrap().name, gw_b);

    // Drop the router and the link, and go back to tcp in the same change:
    // the router goes first, so Consul accepts the protocol change.
    let obj = spec.as_object_mut().unwrap();
    obj.remove("router");
    obj.remove("terminating_gateway");
    spec["defaults"]["Protocol"] = json!("tcp");
    w.put(&id, &spec).await;
    let r = w.rec.reconcile_once(&id, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    assert!(w.entry("service-router", &id.name).await.is_none());
    assert!(w.record(&id, "router.json").await.is_none());
    assert!(w.record(&id, "tgw.json").await.is_none());
    // The operator's gateway stays, empty.
    let b = w.entry("terminating-gateway", &gw_b).await.unwrap();
    assert_eq!(b["Services"], json!([]));
    let obs = w.observed(&id).await.unwrap();
    assert!(obs.objects.router.is_none() && obs.objects.terminating_gateway.is_none());
    assert_eq!(
        w.entry("service-defaults", &id.name).await.unwrap()["Protocol"],
        "tcp"
    );
}

#[tokio::test]
async fn deleted_base_json_prunes_or_only_forgets() {
    let w = world("delete");
    let gw = format!("gw-del-{}", w.tag);
    for (name, prune) in [("pruned", true), ("kept", false)] {
        let id = w.id(name);
        w.put(&id, &full_spec(&gw)).await;
        assert!(matches!(
            w.rec.reconcile_once(&id, prune).await.outcome,
            Outcome::Applied { .. }
        ));
        w.client.kv_delete(&w.layout.base_key(&id)).await.unwrap();
        let r = w.rec.reconcile_once(&id, prune).await;
        assert_eq!(r.outcome, Outcome::Deleted { pruned: prune }, "{name}");
        for file in ["defaults.json", "resolver.json", "router.json", "tgw.json"] {
            assert!(w.record(&id, file).await.is_none(), "{name}: {file}");
        }
        assert!(w.observed(&id).await.is_none());
        for kind in ["service-defaults", "service-resolver", "service-router"] {
            assert_eq!(
                w.entry(kind, &id.name).await.is_some(),
                !prune,
                "{name}: {kind}"
            );
        }
        // The gateway svc-handler created goes with its last link.
        let g = w.entry("terminating-gateway", &gw).await;
        let linked = g.is_some_and(|g| {
            let links = g["Services"].as_array().cloned().unwrap_or_default();
            links.iter().any(|l| l["Name"] == id.name.as_str())
        });
        assert_eq!(linked, !prune, "{name}: link");
        // Nothing left: a second run has nothing to do.
        assert_eq!(
            w.rec.reconcile_once(&id, prune).await.outcome,
            Outcome::Absent
        );
    }
}

#[tokio::test]
async fn invalid_input_table() {
    let w = world("invalid");
    let huge = format!(
        r#"{{"defaults": {{"Protocol": "http", "X": "{}"}}}}"#,
        "a".repeat(600 * 1024)
    );
    // The shared table (every body the parser refuses), plus what only a
    // reconcile shows: a field Consul 1.8.7 refuses (the reconciler here
    // targets the newest Consul), a body Consul cannot store.
    let mut cases: Vec<(&str, Vec<u8>, &str)> = support::invalid::bodies()
        .into_iter()
        .map(|i| (i.name, i.body, i.names))
        .collect();
    cases.push(("too-big", huge.into_bytes(), "512"));
    cases.push((
        "newer-field",
        br#"{"defaults": {"Mode": "transparent"}}"#.to_vec(),
        "Mode",
    ));
    assert!(cases.len() >= 20);
    for (name, body, needle) in &cases {
        let id = w.id(name);
        if body.len() > 512 * 1024 {
            // Consul itself refuses a KV value over 512 KB: the document
            // cannot even be stored, so the parser's limit is checked alone.
            let e = svc_handler::spec::parse(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
            let r = w
                .client
                .kv_put(&w.layout.base_key(&id), body)
                .await
                .unwrap_err();
            assert_eq!(r.status(), Some(413), "{name}: {r}");
            continue;
        }
        let generation = w.put_raw(&id, body).await;
        let r = w.rec.reconcile_once(&id, true).await;
        let Outcome::Failed {
            status, message, ..
        } = &r.outcome
        else {
            panic!("{name}: {r:?}")
        };
        assert_eq!(*status, Status::Invalid, "{name}: {message}");
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: {message:?} should name {needle:?}"
        );
        let obs = w.observed(&id).await.expect(name);
        assert_eq!(obs.status, Status::Invalid);
        assert_eq!(obs.generation, generation);
        assert_eq!(obs.message.as_deref(), Some(message.as_str()));
        for kind in ["service-defaults", "service-resolver", "service-router"] {
            assert!(
                w.entry(kind, &id.name).await.is_none(),
                "{name}: {kind} written"
            );
        }
    }
    assert_eq!(w.total_writes(), 0, "no config write for invalid input");
    assert_eq!(
        w.failed_writes(),
        1,
        "only the field 1.8.7 does not know (the reconciler here targets the newest Consul) reached Consul, which refused it"
    );

    // Keys outside the layout: an invalid observed.json where one can go.
    let desired = w.layout.desired_prefix();
    for (key, observed) in [
        (
            format!("{desired}default/default/Bad Name!/base.json"),
            true,
        ),
        (format!("{desired}default/web/base.json"), true),
        (format!("{desired}default/default/web/notes.txt"), false),
    ] {
        let svc_handler::keys::DesiredKey::Invalid { reason, .. } =
            w.layout.parse_desired_key(&key)
        else {
            panic!("{key} should be invalid")
        };
        let written = w.rec.report_invalid_key(&key, &reason, 7).await.unwrap();
        assert_eq!(written.is_some(), observed, "{key}");
        if let Some(okey) = written {
            let obs: Observed = w.kv_json(&okey).await.unwrap();
            assert_eq!(obs.status, Status::Invalid);
            assert!(obs.message.unwrap().contains(&reason));
        }
    }
}

#[test]
fn settings_for_the_shared_agent_are_plain_http() {
    let s: Settings = shared().settings();
    assert!(s.address.starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn a_route_to_a_service_not_there_yet_is_refused_before_any_write_and_retried() {
    let w = world("route-first");
    let front = w.id("front");
    let admin = w.id("admin");
    let spec = json!({"defaults": {"Protocol": "http"},
        "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": admin.name}}]}});
    let generation = w.put(&front, &spec).await;
    let r = w.rec.reconcile_once(&front, true).await;
    let Outcome::Failed {
        status,
        step,
        message,
        retry,
    } = &r.outcome
    else {
        panic!("{r:?}")
    };
    // admin has no service-defaults yet: tcp, which a router cannot mix
    // with http. Foreseen, nothing written; retried (admin may come).
    assert_eq!(
        (*status, step.as_str(), *retry),
        (Status::Invalid, "preflight", true)
    );
    assert!(message.contains("inconsistent protocols"), "{message}");
    assert!(message.contains(&admin.name), "{message}");
    assert_eq!(w.total_writes(), 0);
    let obs = w.observed(&front).await.unwrap();
    assert_eq!(
        (obs.status, obs.generation, obs.retry),
        (Status::Invalid, generation, true)
    );
    assert!(
        !w.rec.check(&front, true).await.is_in_sync(),
        "not settled: retried"
    );

    // admin arrives; the same generation of front now applies.
    w.put(&admin, &json!({"defaults": {"Protocol": "http"}}))
        .await;
    assert!(matches!(
        w.rec.reconcile_once(&admin, true).await.outcome,
        Outcome::Applied { .. }
    ));
    let r = w.rec.reconcile_once(&front, true).await;
    assert!(
        matches!(r.outcome, Outcome::Applied { changed: true, .. }),
        "{r:?}"
    );
    assert_eq!(w.observed(&front).await.unwrap().generation, generation);
}

/// The flow under the lock starts from what the in-sync check read: when
/// nothing moved in between it reads only the folder and observed.json
/// again; base.json changed in between is read afresh; an entry changed in
/// between makes the check-and-set write fail, read again and converge.
#[tokio::test]
async fn the_flow_starts_from_the_checks_read_and_sees_what_moved_since() {
    let w = world("prior");
    let session = Session::create(w.rec.client(), &w.rec.config().session, None)
        .await
        .unwrap();
    let reads = |w: &support::world::World| {
        ["200", "404"]
            .iter()
            .map(|code| {
                w.metrics
                    .consul_requests
                    .with_label_values(&["config.get", code])
                    .get()
            })
            .sum::<u64>()
    };

    // Nothing in between: the entries are not read again under the lock.
    let a = w.id("a");
    let g1 = w
        .put(&a, &json!({"resolver": {"ConnectTimeout": "3s"}}))
        .await;
    let Checked::Run(Some(prior)) = w.rec.check(&a, true).await else {
        panic!("a new service is not in sync")
    };
    let before = reads(&w);
    let r = w.rec.reconcile(&a, true, &session, Some(prior)).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    // Two writes (defaults and resolver), each read back: no other reads.
    assert_eq!(reads(&w) - before, 2);
    assert_eq!(w.observed(&a).await.unwrap().generation, g1);
    let resolver = w.entry("service-resolver", &a.name).await.unwrap();
    assert_eq!(resolver["ConnectTimeout"], "3s");

    // base.json changed between the check and the lock: the new one is
    // applied, not the one the check read.
    let g2 = w
        .put(&a, &json!({"resolver": {"ConnectTimeout": "4s"}}))
        .await;
    let Checked::Run(Some(prior)) = w.rec.check(&a, true).await else {
        panic!("a changed base.json is not in sync")
    };
    let g3 = w
        .put(&a, &json!({"resolver": {"ConnectTimeout": "5s"}}))
        .await;
    assert!(g3 > g2);
    let r = w.rec.reconcile(&a, true, &session, Some(prior)).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    assert_eq!(r.generation, Some(g3));
    let resolver = w.entry("service-resolver", &a.name).await.unwrap();
    assert_eq!(resolver["ConnectTimeout"], "5s");
    assert_eq!(w.observed(&a).await.unwrap().generation, g3);

    // The resolver edited by hand between the check and the lock: the
    // write planned from the check's read loses its check-and-set, reads
    // again and puts base.json's value back.
    let g4 = w
        .put(&a, &json!({"resolver": {"ConnectTimeout": "6s"}}))
        .await;
    let Checked::Run(Some(prior)) = w.rec.check(&a, true).await else {
        panic!("a changed base.json is not in sync")
    };
    let mut edited = w.entry("service-resolver", &a.name).await.unwrap();
    edited["ConnectTimeout"] = json!("9s");
    w.client.config_put(&edited).await.unwrap();
    let r = w.rec.reconcile(&a, true, &session, Some(prior)).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let resolver = w.entry("service-resolver", &a.name).await.unwrap();
    assert_eq!(resolver["ConnectTimeout"], "6s");
    assert_eq!(w.observed(&a).await.unwrap().generation, g4);
    assert!(w.writes("service-resolver", "cas_retry") >= 1);
    assert!(w.rec.check(&a, true).await.is_in_sync());

    // Another instance applied the change between this one's check and its
    // lock: the check runs again and finds it in place; no lock is taken.
    let other = svc_handler::reconcile::Reconciler::new(
        shared().client(),
        svc_handler::reconcile::ReconcilerConfig::new(w.layout.clone(), "other-instance"),
        Arc::new(svc_handler::metrics::Metrics::new()),
    );
    let g5 = w
        .put(&a, &json!({"resolver": {"ConnectTimeout": "7s"}}))
        .await;
    let Checked::Run(Some(prior)) = w.rec.check(&a, true).await else {
        panic!("a changed base.json is not in sync")
    };
    let r = other.reconcile_once(&a, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let acquires = |w: &support::world::World| {
        w.metrics
            .consul_requests
            .with_label_values(&["kv.acquire", "200"])
            .get()
    };
    let before = acquires(&w);
    let r = w.rec.reconcile(&a, true, &session, Some(prior)).await;
    assert_eq!(r.outcome, Outcome::UpToDate, "{r:?}");
    assert_eq!(acquires(&w), before, "no lock taken");
    assert_eq!(w.observed(&a).await.unwrap().generation, g5);
    session.destroy().await.unwrap();
}

/// A link into a shared gateway changes the gateway's index; the other
/// services linked there stay in sync (their check costs reads, no lock),
/// so a resync after links come and go does not rewrite their
/// observed.json. A link taken out by hand still shows.
#[tokio::test]
async fn a_neighbours_link_leaves_a_service_in_sync() {
    let w = world("neighbour");
    let gw = format!("gw-{}", w.tag);
    let (a, b) = (w.id("a"), w.id("b"));
    let spec = json!({"terminating_gateway": {"Gateway": gw}});
    w.put(&a, &spec).await;
    w.put(&b, &spec).await;
    let r = w.rec.reconcile_once(&a, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let before = w.entry("terminating-gateway", &gw).await.unwrap()["ModifyIndex"].clone();
    let r = w.rec.reconcile_once(&b, true).await;
    assert!(matches!(r.outcome, Outcome::Applied { .. }), "{r:?}");
    let after = w.entry("terminating-gateway", &gw).await.unwrap()["ModifyIndex"].clone();
    assert_ne!(before, after, "b's link moved the gateway's index");
    assert!(w.rec.check(&a, true).await.is_in_sync());
    assert!(w.rec.check(&b, true).await.is_in_sync());

    // a's link removed by hand: a is out of sync, and put back.
    let mut g = w.entry("terminating-gateway", &gw).await.unwrap();
    let services = g["Services"].as_array().unwrap().clone();
    g["Services"] = Value::Array(
        services
            .into_iter()
            .filter(|s| s["Name"] != json!(a.name))
            .collect(),
    );
    w.client.config_put(&g).await.unwrap();
    assert!(!w.rec.check(&a, true).await.is_in_sync());
    let r = w.rec.reconcile_once(&a, true).await;
    assert!(
        matches!(r.outcome, Outcome::Applied { changed: true, .. }),
        "{r:?}"
    );
    assert!(w.rec.check(&a, true).await.is_in_sync());
}
