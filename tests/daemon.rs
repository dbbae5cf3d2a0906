//! `svc-handler run` end to end: the real binary against real Consul agents,
//! driven with the real `consul` CLI where users would use it.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::DaemonProc;
use support::{consul_bin, eventually, prefix, shared, Agent};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::daemon::FAULT_ALWAYS_DESCEND_ENV;
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

/// The simplest base.json, and a change of it.
const HTTP: &[u8] = br#"{"defaults": {"Protocol": "http"}}"#;
const GRPC: &[u8] = br#"{"defaults": {"Protocol": "grpc"}}"#;

fn consul_cli(url: &str, args: &[&str]) {
    let out = Command::new(consul_bin())
        .args(args)
        .env("CONSUL_HTTP_ADDR", url)
        .output()
        .expect("run consul");
    assert!(out.status.success(), "consul {args:?}: {out:?}");
}

struct Fixture {
    client: Client,
    layout: Layout,
    prefix: String,
    tag: String,
    url: String,
}

impl Fixture {
    fn new(test: &str, agent: &Agent) -> Fixture {
        let p = prefix(test);
        Fixture {
            client: agent.client(),
            layout: Layout::new(&p).unwrap(),
            tag: p.rsplit('/').next().unwrap().to_string(),
            prefix: p,
            url: agent.url(),
        }
    }

    fn id(&self, name: &str) -> ServiceId {
        ServiceId::new("default", "default", &format!("{name}-{}", self.tag)).unwrap()
    }

    async fn generation(&self, id: &ServiceId) -> Option<u64> {
        self.client
            .kv_get(&self.layout.base_key(id), &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .map(|p| p.modify_index)
    }

    async fn observed(&self, id: &ServiceId) -> Option<Observed> {
        self.client
            .kv_get(&self.layout.observed_key(id), &QueryOptions::default())
            .await
            .ok()?
            .0
            .map(|p| serde_json::from_slice(&p.value).unwrap())
    }

    /// True when observed.json shows base.json's current generation applied.
    async fn applied(&self, id: &ServiceId) -> bool {
        let Some(g) = self.generation(id).await else {
            return false;
        };
        matches!(self.observed(id).await, Some(o) if o.status == Status::Applied && o.generation == g)
    }

    async fn all_applied(&self, ids: &[ServiceId], timeout: Duration) -> bool {
        eventually(timeout, || async {
            for id in ids {
                if !self.applied(id).await {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// Writes base.json.
    async fn put(&self, id: &ServiceId, body: &[u8]) {
        self.client
            .kv_put(&self.layout.base_key(id), body)
            .await
            .unwrap();
    }

    /// A daemon started with no extra flags, once ready.
    async fn ready_daemon(&self, instance: &str) -> DaemonProc {
        let d = self.start(instance, &[], &[]);
        d.wait_ready(Duration::from_secs(30)).await;
        d
    }

    /// Writes base.json; true once observed.json shows it applied.
    async fn put_and_wait(&self, id: &ServiceId, body: &[u8], timeout: Duration) -> bool {
        self.put(id, body).await;
        self.all_applied(std::slice::from_ref(id), timeout).await
    }

    async fn entry(&self, kind: &str, name: &str) -> Option<Value> {
        self.client
            .config_get(kind, name, &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .map(|e| e.0)
    }

    /// Sets the ConnectTimeout of `id`'s resolver (applied at 3s) to 9s by
    /// hand; true once it is back at 3s, written by svc-handler.
    async fn resolver_edited_by_hand_is_put_back(&self, id: &ServiceId) -> bool {
        let edit = json!({"Kind": "service-resolver", "Name": id.name, "ConnectTimeout": "9s"});
        assert!(self.client.config_put(&edit).await.unwrap());
        eventually(Duration::from_secs(30), || async {
            let e = self.entry("service-resolver", &id.name).await.unwrap();
            e["ConnectTimeout"] == "3s" && e["Meta"]["managed-by"] == "svc-handler"
        })
        .await
    }

    fn start(&self, instance: &str, extra: &[&str], env: &[(&str, &str)]) -> DaemonProc {
        DaemonProc::start(&self.url, &self.prefix, instance, extra, env)
    }
}

#[tokio::test]
async fn twenty_services_from_the_consul_cli_update_one_delete_one() {
    let f = Fixture::new("twenty", shared());
    let d = f.start("d1", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;

    let ids: Vec<ServiceId> = (0..20).map(|i| f.id(&format!("svc{i}"))).collect();
    for id in &ids {
        let body = json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "3s"}});
        consul_cli(
            &f.url,
            &["kv", "put", &f.layout.base_key(id), &body.to_string()],
        );
    }
    assert!(
        f.all_applied(&ids, Duration::from_secs(60)).await,
        "not all applied:\n{}",
        d.log_text()
    );
    assert_eq!(
        d.metric(r#"svc_handler_reconcile_total{result="applied"}"#)
            .await,
        20.0
    );
    assert_eq!(
        d.metric(r#"svc_handler_services{status="applied"}"#).await,
        20.0
    );

    // Update one: that one is reconciled, once; the others are not touched.
    let before: Vec<String> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(f.observed(id).await.unwrap().updated_at);
        }
        v
    };
    let changed = &ids[7];
    consul_cli(
        &f.url,
        &[
            "kv",
            "put",
            &f.layout.base_key(changed),
            r#"{"defaults": {"Protocol": "grpc"}}"#,
        ],
    );
    assert!(
        f.all_applied(std::slice::from_ref(changed), Duration::from_secs(30))
            .await
    );
    assert_eq!(
        f.entry("service-defaults", &changed.name).await.unwrap()["Protocol"],
        "grpc"
    );
    assert_eq!(
        d.metric(r#"svc_handler_reconcile_total{result="applied"}"#)
            .await,
        21.0
    );
    assert_eq!(
        d.metric(r#"svc_handler_reconcile_total{result="unchanged"}"#)
            .await,
        0.0,
        "a service was reconciled again:\n{}",
        d.log_text()
    );
    for (i, id) in ids.iter().enumerate() {
        if i != 7 {
            assert_eq!(
                f.observed(id).await.unwrap().updated_at,
                before[i],
                "{id} was re-run"
            );
        }
    }

    // Delete one: its entries, records and observed.json go.
    let gone = &ids[3];
    consul_cli(&f.url, &["kv", "delete", &f.layout.base_key(gone)]);
    let pruned = eventually(Duration::from_secs(30), || async {
        f.observed(gone).await.is_none()
            && f.entry("service-defaults", &gone.name).await.is_none()
            && f.entry("service-resolver", &gone.name).await.is_none()
    })
    .await;
    assert!(pruned, "not pruned:\n{}", d.log_text());
    let (left, _) = f
        .client
        .kv_list(&f.layout.service_dir(gone), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(left.is_empty(), "records left: {left:?}");
    // Its lock key goes too (3,000 pruned services once left 3,000 keys).
    let (lock, _) = f
        .client
        .kv_get(&f.layout.lock_key(gone), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(lock.is_none(), "lock key left: {lock:?}");
    let (other, _) = f
        .client
        .kv_get(&f.layout.lock_key(&ids[4]), &QueryOptions::consistent())
        .await
        .unwrap();
    assert!(
        other.is_some_and(|p| p.session.is_none()),
        "a live service keeps its released lock key"
    );
    assert_eq!(
        d.metric(r#"svc_handler_reconcile_total{result="deleted"}"#)
            .await,
        1.0
    );
    assert_eq!(
        d.metric(r#"svc_handler_services{status="applied"}"#).await,
        19.0
    );
}

#[tokio::test]
async fn an_entry_changed_with_consul_config_write_is_put_back() {
    let f = Fixture::new("drift", shared());
    let d = f.start("d1", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = f.id("drifty");
    let body = br#"{"defaults": {"Protocol": "http"}}"#;
    assert!(f.put_and_wait(&id, body, Duration::from_secs(30)).await);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drift.json");
    std::fs::write(
        &file,
        json!({"Kind": "service-defaults", "Name": id.name, "Protocol": "grpc"}).to_string(),
    )
    .unwrap();
    consul_cli(&f.url, &["config", "write", file.to_str().unwrap()]);
    let restored = eventually(Duration::from_secs(30), || async {
        let e = f.entry("service-defaults", &id.name).await.unwrap();
        e["Protocol"] == "http" && e["Meta"]["managed-by"] == "svc-handler"
    })
    .await;
    assert!(restored, "drift not corrected:\n{}", d.log_text());
    // Counted when the reconcile ends, just after its write.
    let counted = eventually(Duration::from_secs(10), || async {
        d.metric(r#"svc_handler_drift_corrections_total{kind="service-defaults"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(
        counted,
        "drift corrected but not counted:\n{}",
        d.log_text()
    );
}

/// The drift watches read within `--drift-budget` however many config
/// writes wake them (a bulk apply, five seconds of someone else's config
/// writes, and whatever the other tests on the shared agent write), and
/// drift is still put back.
#[tokio::test]
async fn drift_watches_read_within_their_budget_and_still_correct_drift() {
    let f = Fixture::new("driftbudget", shared());
    let budget_kib = 16.0;
    let d = f.start("d1", &["--drift-budget", "16"], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let listed = || async {
        d.metric(r#"svc_handler_consul_response_bytes_total{op="config.list"}"#)
            .await
    };
    let (bytes0, t0) = (listed().await, Instant::now());

    // 30 services at once: each one's writes wake every drift watch.
    let ids: Vec<ServiceId> = (0..30).map(|i| f.id(&format!("b{i}"))).collect();
    let mut puts = tokio::task::JoinSet::new();
    for id in &ids {
        let (c, key) = (f.client.clone(), f.layout.base_key(id));
        let body = json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "3s"}});
        puts.spawn(async move { c.kv_put(&key, body.to_string().as_bytes()).await.unwrap() });
    }
    while puts.join_next().await.is_some() {}
    assert!(
        f.all_applied(&ids, Duration::from_secs(90)).await,
        "bulk not applied:\n{}",
        d.log_text()
    );
    // Five seconds of another tool's config writes, 50 a second.
    let churn = f.id("churn");
    let end = Instant::now() + Duration::from_secs(5);
    let mut n = 0u64;
    while Instant::now() < end {
        let proto = if n % 2 == 0 { "http" } else { "grpc" };
        let e = json!({"Kind": "service-defaults", "Name": churn.name, "Protocol": proto});
        f.client.config_put(&e).await.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Drift is still seen and put back.
    let id = &ids[17];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drift.json");
    let edit = json!({"Kind": "service-resolver", "Name": id.name, "ConnectTimeout": "9s"});
    std::fs::write(&file, edit.to_string()).unwrap();
    consul_cli(&f.url, &["config", "write", file.to_str().unwrap()]);
    let restored = eventually(Duration::from_secs(60), || async {
        let e = f.entry("service-resolver", &id.name).await.unwrap();
        e["ConnectTimeout"] == "3s" && e["Meta"]["managed-by"] == "svc-handler"
    })
    .await;
    assert!(restored, "drift not corrected:\n{}", d.log_text());
    let _ = f
        .client
        .config_delete("service-defaults", &churn.name)
        .await;

    // What was read, against the budget: its rate over the time, the one
    // second's worth it may save up, and the listings of the five kinds
    // that may be in flight when the budget runs out (at most twice their
    // size now, the shared agent's other tests writing meanwhile).
    let (bytes, secs) = (listed().await - bytes0, t0.elapsed().as_secs_f64());
    let mut largest = 0usize;
    for kind in [
        "service-defaults",
        "service-resolver",
        "service-splitter",
        "service-router",
        "terminating-gateway",
    ] {
        let (entries, _) = f
            .client
            .config_list(kind, &QueryOptions::default())
            .await
            .unwrap();
        let bodies: Vec<&Value> = entries.iter().map(|e| &e.0).collect();
        largest = largest.max(serde_json::to_vec(&bodies).unwrap().len());
    }
    let bound = budget_kib * 1024.0 * (secs + 1.0) + 5.0 * 2.0 * largest as f64;
    println!(
        "{n} foreign config writes; config.list read {bytes:.0} bytes in {secs:.1} s; \
         bound {bound:.0} (largest listing {largest} bytes)"
    );
    assert!(bytes > 0.0, "the drift watches read nothing");
    assert!(
        bytes <= bound,
        "read {bytes} bytes in {secs:.1} s, over the bound {bound}"
    );
}

/// The drift probe: the daemon's own config writes cost it no listing of
/// the kinds (only the probe's few bytes), and one foreign write is listed
/// for at once and put back. A private agent, so that no other test's
/// writes count as foreign.
#[tokio::test]
async fn own_writes_are_not_listed_for_and_a_foreign_one_is() {
    let agent = Agent::dev();
    let f = Fixture::new("ownprobe", &agent);
    let d = f.ready_daemon("d1").await;
    let listed = || async {
        d.metric(r#"svc_handler_consul_response_bytes_total{op="config.list"}"#)
            .await
    };
    let bytes0 = listed().await;
    let ids: Vec<ServiceId> = (0..20).map(|i| f.id(&format!("own{i}"))).collect();
    for id in &ids {
        let body = json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "3s"}});
        let applied = f
            .put_and_wait(id, body.to_string().as_bytes(), Duration::from_secs(30))
            .await;
        assert!(applied, "not applied:\n{}", d.log_text());
    }
    // 40 entries written one service at a time. One listing of the two
    // kinds now would be over 4 KB; the probe answers `[]`, 2 bytes each.
    let (entries, _) = f
        .client
        .config_list("service-defaults", &QueryOptions::default())
        .await
        .unwrap();
    let one_listing = serde_json::to_vec(&entries.iter().map(|e| &e.0).collect::<Vec<_>>())
        .unwrap()
        .len();
    assert!(one_listing > 4096, "{one_listing}");
    let own_cost = listed().await - bytes0;
    assert!(
        own_cost < 1024.0,
        "the daemon's own writes made it read {own_cost} bytes of config listings"
    );

    // Someone else's write: listed for, and the drift put back.
    let restored = f.resolver_edited_by_hand_is_put_back(&ids[7]).await;
    assert!(restored, "drift not corrected:\n{}", d.log_text());
    assert!(
        listed().await - bytes0 > one_listing as f64,
        "no listing after a foreign write"
    );
    // The entry is back before the reconcile that wrote it ends and counts.
    let series = r#"svc_handler_drift_corrections_total{kind="service-resolver"}"#;
    let counted = eventually(Duration::from_secs(10), || async {
        d.metric(series).await == 1.0
    })
    .await;
    assert!(counted, "drift corrections: {}", d.metric(series).await);
}

/// Two instances on one prefix: each one's config writes are foreign to
/// the other, which takes them as svc-handler's once it reads them in their
/// records (a listing comes later, at the sweep pace, for what such a write
/// might hide); a hand edit is still put back, and the listings stay within
/// a few rounds. (At this size the instances' own reconciles in flight keep
/// most answers waiting anyway; the bench's 3-daemon bulk shows the
/// saving.) A private agent, so that no other test's writes count as
/// foreign.
#[tokio::test]
async fn two_instances_correct_drift_and_list_within_a_few_rounds() {
    let agent = Agent::dev();
    let f = Fixture::new("peerprobe", &agent);
    let (d1, d2) = (f.ready_daemon("d1").await, f.ready_daemon("d2").await);
    let series = r#"svc_handler_consul_response_bytes_total{op="config.list"}"#;
    let listed = || async { d1.metric(series).await + d2.metric(series).await };
    let bytes0 = listed().await;
    // 60 services at once, each with two entries.
    let ids: Vec<ServiceId> = (0..60).map(|i| f.id(&format!("peer{i}"))).collect();
    let body = json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "3s"}});
    for id in &ids {
        f.put(id, body.to_string().as_bytes()).await;
    }
    let applied = f.all_applied(&ids, Duration::from_secs(60)).await;
    assert!(
        applied,
        "not applied:\n{}\n---\n{}",
        d1.log_text(),
        d2.log_text()
    );
    // One round of listings now: the 120 entries of the two kinds.
    let mut round = 0;
    for kind in ["service-defaults", "service-resolver"] {
        let (entries, _) = f
            .client
            .config_list(kind, &QueryOptions::default())
            .await
            .unwrap();
        round += serde_json::to_vec(&entries.iter().map(|e| &e.0).collect::<Vec<_>>())
            .unwrap()
            .len();
    }
    assert!(round > 3 * 8192, "{round}");
    // A hand edit: listed for, and put back.
    let restored = f.resolver_edited_by_hand_is_put_back(&ids[3]).await;
    assert!(
        restored,
        "drift not corrected:\n{}\n---\n{}",
        d1.log_text(),
        d2.log_text()
    );
    // By then each instance has listed for the hand edit (a round each),
    // after whatever it listed for the other's writes before: a round for
    // each of those would be many; a listing made due later is at most
    // one a second.
    let cost = listed().await - bytes0;
    let mut by = std::collections::BTreeMap::new();
    for id in &ids {
        if let Some(o) = f.observed(id).await {
            *by.entry(o.holder).or_insert(0) += 1;
        }
    }
    assert!(
        cost < 4.0 * round as f64,
        "the two instances read {cost} bytes of config listings (one round: {round}; \
         services applied by each: {by:?})"
    );
}

/// A weighted canary edited by hand (`consul config write`, 50/50) is put
/// back to what base.json says by the running daemon's drift watch.
#[tokio::test]
async fn a_hand_edited_splitter_is_put_back_by_the_daemon() {
    let f = Fixture::new("splitdrift", shared());
    let d = f.start("d1", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = f.id("canary");
    let body = json!({
        "defaults": {"Protocol": "http"},
        "resolver": {"Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                                 "v2": {"Filter": "Service.Meta.version == v2"}}},
        "splitter": {"Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                {"Weight": 10, "ServiceSubset": "v2"}]}
    });
    let applied = f
        .put_and_wait(&id, body.to_string().as_bytes(), Duration::from_secs(30))
        .await;
    assert!(applied, "not applied:\n{}", d.log_text());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.json");
    let edit = json!({"Kind": "service-splitter", "Name": id.name, "Splits": [
        {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]});
    std::fs::write(&file, edit.to_string()).unwrap();
    consul_cli(&f.url, &["config", "write", file.to_str().unwrap()]);
    let restored = eventually(Duration::from_secs(60), || async {
        let e = f.entry("service-splitter", &id.name).await.unwrap();
        e["Splits"][0]["Weight"] == 90 && e["Meta"]["managed-by"] == "svc-handler"
    })
    .await;
    assert!(restored, "drift not corrected:\n{}", d.log_text());
    // The entry is back before the reconcile that wrote it ends and counts.
    let series = r#"svc_handler_drift_corrections_total{kind="service-splitter"}"#;
    let counted = eventually(Duration::from_secs(10), || async {
        d.metric(series).await >= 1.0
    })
    .await;
    assert!(counted, "drift corrections: {}", d.metric(series).await);
}

/// Logs a machine keeps: JSON lines whose keys are unique (jq keeps the
/// last of two `message` keys, and the event would be lost), values as
/// plain words, and no colour codes in a file.
#[tokio::test]
async fn logs_have_unique_keys_plain_values_and_no_colour_in_a_file() {
    let f = Fixture::new("logs", shared());
    let json_d = f.start("json", &["--log-format", "json"], &[]);
    json_d.wait_ready(Duration::from_secs(30)).await;
    let bad = f.id("typo");
    f.put(&bad, br#"{"defaults": {"Protocl": "http"}}"#).await;
    let ok = f.id("fine");
    let body = br#"{"defaults": {}}"#;
    assert!(f.put_and_wait(&ok, body, Duration::from_secs(30)).await);
    let failed_logged = eventually(Duration::from_secs(30), || async {
        json_d.log_text().contains("reconcile failed")
    })
    .await;
    assert!(failed_logged, "{}", json_d.log_text());

    let g = Fixture::new("logs-text", shared());
    let text_d = g.start("text", &["--log-format", "text"], &[]);
    text_d.wait_ready(Duration::from_secs(30)).await;
    assert!(
        g.put_and_wait(&g.id("plain"), body, Duration::from_secs(30))
            .await
    );

    for line in json_d.log_text().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        if v["message"] == "reconcile failed" {
            assert!(
                v["reason"].as_str().is_some_and(|r| r.contains("Protocl")),
                "{line}"
            );
        }
        for (k, value) in v.as_object().unwrap() {
            let text = value.to_string();
            assert!(
                !text.contains(" { ") && !text.contains("Some("),
                "{k} holds a Rust Debug structure: {line}"
            );
        }
    }
    let text = text_d.log_text();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
}

/// `consul kv delete -recurse .../web/` takes base.json and the records
/// with it, tgw.json included: the daemon still takes web's link out of the
/// gateway (it saw the record in its last listing), so re-creating web
/// applies instead of ending `conflict` on a link nobody accounts for.
#[tokio::test]
async fn a_folder_deleted_whole_takes_its_gateway_link_with_it() {
    let f = Fixture::new("folder", shared());
    let d = f.start("folder", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = f.id("linked");
    let gw = format!("egress-{}", f.tag);
    let body = json!({"defaults": {"Protocol": "http"},
        "terminating_gateway": {"Gateway": gw, "SNI": "api.example.com"}})
    .to_string();
    assert!(
        f.put_and_wait(&id, body.as_bytes(), Duration::from_secs(30))
            .await
    );
    let linked = || async {
        f.entry("terminating-gateway", &gw).await.is_some_and(|g| {
            g["Services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|l| l["Name"] == id.name.as_str()))
        })
    };
    assert!(linked().await);
    // Another service's link in the same gateway stays.
    let other = f.id("neighbour");
    let other_body = json!({"terminating_gateway": {"Gateway": gw}}).to_string();
    assert!(
        f.put_and_wait(&other, other_body.as_bytes(), Duration::from_secs(30))
            .await
    );

    let folder = f.layout.service_dir(&id);
    consul_cli(&f.url, &["kv", "delete", "-recurse", &folder]);
    let cleaned = eventually(Duration::from_secs(30), || async {
        !linked().await
            && f.observed(&id).await.is_none()
            && f.entry("service-defaults", &id.name).await.is_none()
    })
    .await;
    assert!(cleaned, "the link or the entries stayed:\n{}", d.log_text());
    let g = f.entry("terminating-gateway", &gw).await.unwrap();
    assert!(
        g["Services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["Name"] == other.name.as_str()),
        "the neighbour's link went too: {g}"
    );

    // Created again: applied, not a conflict over an unrecorded link.
    assert!(
        f.put_and_wait(&id, body.as_bytes(), Duration::from_secs(30))
            .await,
        "{}",
        d.log_text()
    );
}

/// observed.json deleted by hand (to reset a status, by a tool, by a
/// partial restore) is written again at once, not at the next resync
/// (`--resync-interval` is 10 minutes by default).
#[tokio::test]
async fn a_deleted_observed_json_is_written_again_at_once() {
    let f = Fixture::new("observedgone", shared());
    let d = f.ready_daemon("observedgone").await;
    let id = f.id("web");
    assert!(f.put_and_wait(&id, HTTP, Duration::from_secs(30)).await);
    let key = f.layout.observed_key(&id);
    consul_cli(&f.url, &["kv", "delete", &key]);
    assert!(f.observed(&id).await.is_none());
    let t = Instant::now();
    assert!(
        f.all_applied(std::slice::from_ref(&id), Duration::from_secs(15))
            .await,
        "observed.json not written again:\n{}",
        d.log_tail(20)
    );
    println!(
        "observed.json written again {:?} after its delete",
        t.elapsed()
    );
}

/// The guard and the observed.json watch learn of changes from wake probes
/// of `<prefix>/desired/~` and `<prefix>/observed/~`, prefixes no key is
/// expected under. Keys written there make each go back to its listing,
/// and the watch still finds a new service outside every shard and writes
/// a deleted observed.json again.
#[tokio::test]
async fn keys_under_the_wake_probes_prefixes_leave_the_watch_working() {
    let f = Fixture::new("wakekeys", shared());
    let ids: Vec<ServiceId> = (0..40).map(|i| f.id(&format!("svc{i:02}"))).collect();
    put_all(&f, &ids, &json!({"defaults": {"Protocol": "http"}})).await;
    for tree in ["desired", "observed"] {
        let key = format!("{}/{tree}/~stray", f.prefix);
        consul_cli(&f.url, &["kv", "put", &key, "x"]);
    }
    let d = f.ready_daemon("d1").await;
    assert!(f.all_applied(&ids, Duration::from_secs(120)).await);
    assert!(d.metric("svc_handler_watch_shards").await > 1.0);
    // A name no shard covers.
    let new = f.id("zz-new");
    assert!(
        f.put_and_wait(&new, HTTP, Duration::from_secs(30)).await,
        "a service outside every shard was not found:\n{}",
        d.log_tail(30)
    );
    let gone = &ids[5];
    consul_cli(&f.url, &["kv", "delete", &f.layout.observed_key(gone)]);
    assert!(
        f.all_applied(std::slice::from_ref(gone), Duration::from_secs(30))
            .await,
        "observed.json not written again:\n{}",
        d.log_tail(30)
    );
    let log = d.log_text();
    for watch in ["the guard lists", "observed.json watch's wake probe"] {
        assert!(log.contains(watch), "no fallback logged ({watch}):\n{log}");
    }
}

/// Runs a human command of `svc-handler` against the fixture's prefix;
/// its standard output (it must succeed).
fn svc_cli(f: &Fixture, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_svc-handler"))
        .args(args)
        .args(["--http-addr", f.url.as_str(), "--prefix", f.prefix.as_str()])
        .env_remove("CONSUL_HTTP_ADDR")
        .output()
        .unwrap();
    assert!(out.status.success(), "svc-handler {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// observed.json keeps the outcomes before the current one, newest first,
/// at most 20, written with each new outcome; `svc-handler history` shows
/// them.
#[tokio::test]
async fn history_keeps_the_last_twenty_outcomes_newest_first() {
    let f = Fixture::new("history", shared());
    let d = f.ready_daemon("history").await;
    let id = f.id("web");
    let mut generations = Vec::new();
    for i in 0..24 {
        let body = if i == 5 {
            br#"{"adopt": "yes"}"#.to_vec()
        } else {
            format!(r#"{{"defaults": {{"Protocol": "http"}}, "resolver": {{"ConnectTimeout": "{}s"}}}}"#, i + 1).into_bytes()
        };
        f.put(&id, &body).await;
        let g = f.generation(&id).await.unwrap();
        let done = eventually(Duration::from_secs(20), || async {
            f.observed(&id).await.is_some_and(|o| o.generation == g)
        })
        .await;
        assert!(done, "generation {g} not recorded:\n{}", d.log_tail(10));
        generations.push(g);
    }
    let out = svc_cli(&f, &["history", &id.name, "-o", "json"]);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        entries.len(),
        21,
        "the current outcome and 20 before it: {out}"
    );
    let shown: Vec<u64> = entries
        .iter()
        .map(|e| e["generation"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = generations.iter().rev().take(21).copied().collect();
    assert_eq!(shown, want);
    // The invalid outcome in between is kept with its status; the three
    // oldest went.
    let invalid = entries.iter().find(|e| e["generation"] == generations[5]);
    assert_eq!(
        invalid.map(|e| e["status"].clone()),
        Some(json!("invalid")),
        "{out}"
    );
    assert!(!shown.contains(&generations[2]), "{out}");
    let text = svc_cli(&f, &["history", &id.name]);
    assert!(text.contains("21 outcome(s), newest first"), "{text}");
    assert!(
        text.contains(&format!("applied at generation {}", generations[23])),
        "{text}"
    );
}

/// `svc-handler pause`: while paused, a base.json change is not applied
/// and a hand edit of an entry stays; observed.json and `status` say
/// `paused` with the reason, and `svc_handler_services{status="paused"}`
/// counts it. `svc-handler resume`: the latest base.json is applied and the
/// hand edit put back.
#[tokio::test]
async fn a_paused_service_is_left_alone_until_resumed() {
    let f = Fixture::new("pause", shared());
    let d = f.ready_daemon("pause").await;
    let id = f.id("web");
    assert!(f.put_and_wait(&id, HTTP, Duration::from_secs(30)).await);
    svc_cli(&f, &["pause", &id.name, "--reason", "incident 42"]);
    let paused = |generation: u64| {
        let f = &f;
        let id = &id;
        async move {
            f.observed(id).await.is_some_and(|o| {
                o.status == Status::Paused
                    && o.generation == generation
                    && o.message
                        .as_deref()
                        .is_some_and(|m| m.contains("incident 42"))
            })
        }
    };
    let g1 = f.generation(&id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || paused(g1)).await,
        "{:?}\n{}",
        f.observed(&id).await,
        d.log_tail(20)
    );
    let counted = eventually(Duration::from_secs(10), || async {
        d.metric(r#"svc_handler_services{status="paused"}"#).await == 1.0
    })
    .await;
    assert!(counted, "not counted as paused");
    let status = svc_cli(&f, &["status", &id.name]);
    assert!(
        status.contains("paused") && status.contains("incident 42"),
        "{status}"
    );

    // A hand edit and a base.json change while paused: neither is acted on.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edit.json");
    let edit = json!({"Kind": "service-defaults", "Name": id.name, "Protocol": "grpc"});
    std::fs::write(&file, edit.to_string()).unwrap();
    consul_cli(&f.url, &["config", "write", file.to_str().unwrap()]);
    let change = br#"{"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "7s"}}"#;
    f.put(&id, change).await;
    let g2 = f.generation(&id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || paused(g2)).await,
        "{:?}",
        f.observed(&id).await
    );
    assert_eq!(
        f.entry("service-defaults", &id.name).await.unwrap()["Protocol"],
        "grpc"
    );
    let r = f.entry("service-resolver", &id.name).await.unwrap();
    assert!(
        r.get("ConnectTimeout").is_none(),
        "applied while paused: {r}"
    );

    svc_cli(&f, &["resume", &id.name]);
    assert!(
        f.all_applied(std::slice::from_ref(&id), Duration::from_secs(30))
            .await,
        "{:?}\n{}",
        f.observed(&id).await,
        d.log_tail(20)
    );
    assert_eq!(
        f.entry("service-defaults", &id.name).await.unwrap()["Protocol"],
        "http"
    );
    let r = f.entry("service-resolver", &id.name).await.unwrap();
    assert_eq!(r["ConnectTimeout"], "7s");
}

/// `consul kv delete .../web/tgw.json` alone (base.json kept): the daemon
/// saw the record in its last listing and the gateway still holds the link
/// as recorded, so the record is written again, and the next change to web
/// applies instead of ending `conflict` over a link nobody accounts for.
#[tokio::test]
async fn a_link_record_deleted_alone_is_written_again() {
    let f = Fixture::new("tgwrecord", shared());
    let d = f.start("tgwrecord", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = f.id("linked");
    let gw = format!("egress-{}", f.tag);
    let body = |sni: &str| {
        json!({"defaults": {"Protocol": "http"},
            "terminating_gateway": {"Gateway": gw, "SNI": sni}})
        .to_string()
    };
    let first = body("api.example.com");
    assert!(
        f.put_and_wait(&id, first.as_bytes(), Duration::from_secs(30))
            .await
    );
    let record_key = format!("{}tgw.json", f.layout.service_dir(&id));
    let record = || async {
        f.client
            .kv_get(&record_key, &QueryOptions::consistent())
            .await
            .unwrap()
            .0
    };
    let before = record().await.expect("tgw.json written");

    consul_cli(&f.url, &["kv", "delete", &record_key]);
    let back = eventually(Duration::from_secs(20), || async {
        record()
            .await
            .is_some_and(|r| r.modify_index > before.modify_index)
    })
    .await;
    assert!(back, "tgw.json not written again:\n{}", d.log_text());

    let second = body("web.example.com");
    assert!(
        f.put_and_wait(&id, second.as_bytes(), Duration::from_secs(30))
            .await,
        "the change after the record went did not apply: {:?}\n{}",
        f.observed(&id).await.map(|o| o.status),
        d.log_tail(20)
    );
    let g = f.entry("terminating-gateway", &gw).await.unwrap();
    let link = g["Services"]
        .as_array()
        .and_then(|s| s.iter().find(|l| l["Name"] == id.name.as_str()).cloned())
        .unwrap_or_default();
    assert_eq!(link["SNI"], "web.example.com", "{g}");
}

/// A namespace on Consul's open-source edition (`desired/default/team/...`):
/// `invalid` with Consul's words, final (not retried forever), and its
/// deletion completes (it was `deleting` forever).
#[tokio::test]
async fn a_namespace_on_the_open_source_edition_is_invalid_and_deletes() {
    let f = Fixture::new("oss-ns", shared());
    let d = f.start("oss-ns", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = ServiceId::new("default", "team", &format!("web-{}", f.tag)).unwrap();
    f.put(&id, br#"{"defaults": {"Protocol": "http"}}"#).await;
    let invalid = eventually(Duration::from_secs(30), || async {
        f.observed(&id)
            .await
            .is_some_and(|o| o.status == Status::Invalid)
    })
    .await;
    assert!(invalid, "{}", d.log_text());
    let o = f.observed(&id).await.unwrap();
    assert!(!o.retry, "final, not retried: {o:?}");
    assert_eq!(o.step.map(|s| s.as_str()), Some("preflight"), "{o:?}");
    let message = o.message.unwrap_or_default();
    assert!(message.contains("namespace \"team\""), "{message}");
    assert!(message.contains("Consul Enterprise feature"), "{message}");

    f.client.kv_delete(&f.layout.base_key(&id)).await.unwrap();
    let forgotten = eventually(Duration::from_secs(30), || async {
        f.observed(&id).await.is_none()
    })
    .await;
    assert!(forgotten, "still deleting:\n{}", d.log_text());
}

#[tokio::test]
async fn three_daemons_share_the_work_without_doubling_it() {
    let f = Fixture::new("three", shared());
    let daemons: Vec<DaemonProc> = ["a", "b", "c"]
        .iter()
        .map(|n| f.start(n, &["--log-format", "json"], &[]))
        .collect();
    for d in &daemons {
        d.wait_ready(Duration::from_secs(30)).await;
    }
    let ids: Vec<ServiceId> = (0..100).map(|i| f.id(&format!("m{i}"))).collect();
    for round in 0..2 {
        let timeout = format!("{}s", round + 2);
        let mut puts = tokio::task::JoinSet::new();
        for id in &ids {
            let (c, key) = (f.client.clone(), f.layout.base_key(id));
            let body = json!({"resolver": {"ConnectTimeout": timeout}}).to_string();
            puts.spawn(async move { c.kv_put(&key, body.as_bytes()).await.unwrap() });
        }
        while puts.join_next().await.is_some() {}
        assert!(
            f.all_applied(&ids, Duration::from_secs(90)).await,
            "round {round} not applied"
        );
    }
    let mut applied = 0.0;
    for d in &daemons {
        applied += d
            .metric(r#"svc_handler_reconcile_total{result="applied"}"#)
            .await;
    }
    println!("applied reconciles across three daemons: {applied} (minimum 200)");
    assert!(applied >= 200.0, "{applied}");
    assert!(
        applied <= 220.0,
        "{applied} reconciles: more than 10% over the minimum"
    );
    // Each generation was applied by exactly one daemon: two daemons working
    // on one service at once would both apply its generation.
    let mut applied_by: std::collections::HashMap<(String, u64), Vec<String>> = Default::default();
    for d in &daemons {
        for line in d.log_text().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] == "reconciled" && v["result"] == "applied" {
                let key = (
                    v["service"].as_str().unwrap_or_default().to_string(),
                    v["generation"].as_u64().unwrap_or_default(),
                );
                applied_by.entry(key).or_default().push(d.instance.clone());
            }
        }
    }
    assert_eq!(
        applied_by.values().map(Vec::len).sum::<usize>() as f64,
        applied,
        "every applied reconcile is in the logs"
    );
    for ((service, generation), by) in &applied_by {
        assert_eq!(
            by.len(),
            1,
            "{service} generation {generation} applied by {by:?}"
        );
    }
    for id in &ids {
        let o = f.observed(id).await.unwrap();
        assert!(["a", "b", "c"].contains(&o.holder.as_str()), "{}", o.holder);
        assert_eq!(
            f.entry("service-resolver", &id.name).await.unwrap()["ConnectTimeout"],
            "3s"
        );
    }
}

#[tokio::test]
async fn a_killed_lock_holder_is_taken_over_within_the_ttl_bound() {
    let f = Fixture::new("kill9", shared());
    let id = f.id("orphaned");
    let mut stuck = f.start(
        "stuck",
        &["--session-ttl", "10s", "--lock-delay", "1s"],
        &[("SVC_HANDLER_FAULT_PAUSE_BEFORE", "resolver")],
    );
    stuck.wait_ready(Duration::from_secs(30)).await;
    f.put(&id, br#"{"defaults": {"Protocol": "http"}}"#).await;
    let lock_key = f.layout.lock_key(&id);
    let held = eventually(Duration::from_secs(30), || async {
        let (p, _) = f
            .client
            .kv_get(&lock_key, &QueryOptions::default())
            .await
            .unwrap();
        p.and_then(|p| p.session).is_some()
    })
    .await;
    assert!(held, "the stuck daemon never took the lock");
    stuck.kill9();
    let killed_at = Instant::now();

    let rescuer = f.start("rescuer", &["--session-ttl", "10s"], &[]);
    let bound = Duration::from_secs(2 * 10 + 1 + 5);
    let done = f
        .all_applied(std::slice::from_ref(&id), bound + Duration::from_secs(15))
        .await;
    let took = killed_at.elapsed();
    assert!(
        done,
        "not applied after the holder died:\n{}",
        rescuer.log_text()
    );
    println!("taken over {took:?} after kill -9 (bound {bound:?})");
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    assert_eq!(f.observed(&id).await.unwrap().holder, "rescuer");
}

#[tokio::test]
async fn sigterm_during_a_burst_exits_cleanly() {
    let f = Fixture::new("sigterm", shared());
    let mut d = f.start("term", &["--workers", "4"], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let ids: Vec<ServiceId> = (0..60).map(|i| f.id(&format!("t{i}"))).collect();
    for id in &ids {
        f.client
            .kv_put(
                &f.layout.base_key(id),
                br#"{"defaults": {"Protocol": "http"}, "resolver": {}}"#,
            )
            .await
            .unwrap();
    }
    let busy = eventually(Duration::from_secs(30), || async {
        d.metric(r#"svc_handler_reconcile_total{result="applied"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(busy);
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10 + 5));
    let status = status.unwrap_or_else(|| panic!("did not exit:\n{}", d.log_text()));
    assert!(status.success(), "{status:?}\n{}", d.log_text());

    let (locks, _) = f
        .client
        .kv_list(
            &format!("{}/", f.layout.locks_prefix().trim_end_matches('/')),
            &QueryOptions::consistent(),
        )
        .await
        .unwrap();
    assert!(
        locks.iter().all(|l| l.session.is_none()),
        "a lock is still held: {locks:?}"
    );
    let sessions = sessions_of(&f.url, "term").await;
    assert!(sessions.is_empty(), "session left: {sessions:?}");
}

#[tokio::test]
async fn consul_outage_of_twenty_seconds_is_survived() {
    let mut agent = Agent::persistent();
    let f = Fixture::new("outage", &agent);
    let d = f.start("survivor", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let before = f.id("before");
    let body = br#"{"defaults": {"Protocol": "http"}}"#;
    assert!(f.put_and_wait(&before, body, Duration::from_secs(30)).await);

    agent.stop();
    // The outage itself: 20 seconds without Consul.
    tokio::time::sleep(Duration::from_secs(20)).await;
    agent.start_again();

    let after = f.id("after");
    let body = br#"{"defaults": {"Protocol": "grpc"}}"#;
    let ok = f.put_and_wait(&after, body, Duration::from_secs(60)).await;
    let log = d.log_text();
    assert!(ok, "not applied after the outage:\n{log}");
    assert!(
        log.contains("watch failed"),
        "the outage was not logged:\n{log}"
    );
    assert!(log.contains("Consul answers again"), "{log}");
    assert!(d.metric("svc_handler_watch_errors_total").await >= 1.0);
}

/// The sessions named for `instance`, by id.
async fn sessions_of(url: &str, instance: &str) -> Vec<String> {
    let list: Vec<Value> = reqwest::get(format!("{url}/v1/session/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = format!("svc-handler {instance}");
    list.iter()
        .filter(|s| s["Name"] == name.as_str())
        .map(|s| s["ID"].as_str().unwrap().to_string())
        .collect()
}

/// Someone destroys the daemon's session (`consul` API, an operator's
/// cleanup): the next change is applied with a new session at once, not
/// after the next renewal (a minute away with `--session-ttl 2m`).
#[tokio::test]
async fn a_destroyed_session_is_replaced_at_once() {
    let f = Fixture::new("destroyed", shared());
    let d = f.start("ds", &["--session-ttl", "2m"], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    let id = f.id("after-destroy");
    let body = br#"{"resolver": {"ConnectTimeout": "2s"}}"#;
    assert!(f.put_and_wait(&id, body, Duration::from_secs(30)).await);
    let before = sessions_of(&f.url, &d.instance).await;
    assert_eq!(before.len(), 1, "{before:?}");
    f.client.session_destroy(&before[0]).await.unwrap();

    let t = Instant::now();
    let body = br#"{"resolver": {"ConnectTimeout": "3s"}}"#;
    let ok = f.put_and_wait(&id, body, Duration::from_secs(20)).await;
    assert!(
        ok,
        "not applied after the session was destroyed:\n{}",
        d.log_text()
    );
    println!("applied {:?} after the session was destroyed", t.elapsed());
    let after = sessions_of(&f.url, &d.instance).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the destroyed session is still named");
    assert!(
        d.log_text().contains("the session is gone"),
        "{}",
        d.log_text()
    );
}

/// Consul restarts with its data wiped (a dev agent, a rebuilt cluster):
/// the daemon does not wait out `--watch-wait` on an index the new Consul
/// has not reached, and its old session is replaced at once.
#[tokio::test]
async fn a_wiped_consul_is_watched_again_at_once() {
    let mut agent = Agent::dev();
    let f = Fixture::new("wiped", &agent);
    let d = f.start("wiped", &[], &[]);
    d.wait_ready(Duration::from_secs(30)).await;
    // Raise the index well past where a fresh agent starts.
    for i in 0..60 {
        let key = format!("{}/filler/{i}", f.prefix);
        f.client.kv_put(&key, b"x").await.unwrap();
    }
    let before = f.id("before");
    let body = br#"{"defaults": {"Protocol": "http"}}"#;
    assert!(f.put_and_wait(&before, body, Duration::from_secs(30)).await);
    let (_, meta) = f
        .client
        .kv_list(&f.layout.desired_prefix(), &QueryOptions::default())
        .await
        .unwrap();

    agent.stop();
    // A dev agent: everything is gone. A new client: the fixture's pooled
    // connections went with the old agent.
    agent.start_again();
    let f = Fixture {
        client: agent.client(),
        ..f
    };
    let (_, fresh) = f
        .client
        .kv_list(&f.layout.desired_prefix(), &QueryOptions::default())
        .await
        .unwrap();
    assert!(
        fresh.index < meta.index,
        "not wiped: {} vs {}",
        fresh.index,
        meta.index
    );

    let t = Instant::now();
    let after = f.id("after");
    let body = br#"{"defaults": {"Protocol": "grpc"}}"#;
    let ok = f.put_and_wait(&after, body, Duration::from_secs(30)).await;
    assert!(ok, "not applied after Consul was wiped:\n{}", d.log_text());
    println!(
        "applied {:?} after the wiped Consul answered (index {} before, {} after)",
        t.elapsed(),
        meta.index,
        fresh.index
    );
    let e = f.entry("service-defaults", &after.name).await.unwrap();
    assert_eq!(e["Protocol"], "grpc");
}

/// Consul restored from a snapshot (`consul snapshot restore`, after a
/// lost cluster or a bad change): every blocking query is woken, indexes go
/// back to the snapshot's, and the daemon reads afresh: what the restore put
/// back is in sync again, and a change made after it is applied at once.
#[tokio::test]
async fn a_snapshot_restore_is_watched_again_at_once() {
    let agent = Agent::dev();
    let f = Fixture::new("restore", &agent);
    let d = f.ready_daemon("restore").await;
    let web = f.id("web");
    assert!(f.put_and_wait(&web, HTTP, Duration::from_secs(30)).await);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("backup.snap");
    let snap = snap.to_str().unwrap();
    consul_cli(&f.url, &["snapshot", "save", snap]);
    // A change after the backup, and filler to move the index on.
    assert!(f.put_and_wait(&web, GRPC, Duration::from_secs(30)).await);
    for i in 0..40 {
        let key = format!("{}/filler/{i}", f.prefix);
        f.client.kv_put(&key, b"x").await.unwrap();
    }

    consul_cli(&f.url, &["snapshot", "restore", snap]);
    let t = Instant::now();
    let after = f.id("after");
    let body = br#"{"defaults": {"Protocol": "grpc"}}"#;
    let ok = f.put_and_wait(&after, body, Duration::from_secs(30)).await;
    assert!(ok, "not applied after the restore:\n{}", d.log_tail(30));
    println!("applied {:?} after the snapshot restore", t.elapsed());
    // web is as the backup had it, base.json and entry alike, and applied.
    assert!(f.applied(&web).await, "{:?}", f.observed(&web).await);
    let e = f.entry("service-defaults", &web.name).await.unwrap();
    assert_eq!(e["Protocol"], "http");
}

#[tokio::test]
async fn a_stuck_watch_loop_fails_healthz() {
    let f = Fixture::new("stuck-watch", shared());
    let d = f.start(
        "stuck",
        &["--watch-wait", "1s", "--consul-timeout", "1s"],
        &[("SVC_HANDLER_FAULT_FREEZE_WATCH", "1")],
    );
    d.wait_ready(Duration::from_secs(30)).await;
    let url = format!("http://127.0.0.1:{}/healthz", d.metrics_port);
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    // The loop froze after its first listing; the bound here is
    // 1 s + 1/16 s + 1 s + 15 s.
    let t = Instant::now();
    let failed = eventually(Duration::from_secs(40), || async {
        reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) == Some(503)
    })
    .await;
    assert!(failed, "/healthz stayed 200 with a frozen watch loop");
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(body.contains("watch loop"), "{body}");
    assert_ne!(d.readyz().await, Some(200), "not ready either");
    println!(
        "/healthz failed {:?} after the freeze was checked",
        t.elapsed()
    );
}

#[tokio::test]
async fn run_once_applies_everything_and_says_when_something_failed() {
    let f = Fixture::new("once", shared());
    let good: Vec<ServiceId> = (0..3).map(|i| f.id(&format!("ok{i}"))).collect();
    for id in &good {
        f.client
            .kv_put(
                &f.layout.base_key(id),
                br#"{"defaults": {"Protocol": "http"}}"#,
            )
            .await
            .unwrap();
    }
    let bad = f.id("bad");
    f.client
        .kv_put(&f.layout.base_key(&bad), br#"{"adopt": "yes"}"#)
        .await
        .unwrap();
    let once = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--once",
            "--http-addr",
            f.url.as_str(),
            "--prefix",
            f.prefix.as_str(),
            "--instance",
            "once",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_svc-handler"))
            .args(&args)
            .env_remove("CONSUL_HTTP_ADDR")
            .output()
            .unwrap()
    };
    let out = once(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied 3") && stdout.contains("failed 1"),
        "{stdout}"
    );
    for id in &good {
        assert!(f.applied(id).await, "{id}");
    }
    assert_eq!(f.observed(&bad).await.unwrap().status, Status::Invalid);

    // Fixed: everything in place, nothing written, exit 0.
    f.client
        .kv_put(&f.layout.base_key(&bad), br#"{"adopt": true}"#)
        .await
        .unwrap();
    let out = once(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("applied 1") && stdout.contains("unchanged 3"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_empty_prefix_is_ready_at_once_and_services_are_counted_by_status() {
    let f = Fixture::new("counts", shared());
    let d = f.start("counts", &[], &[]);
    d.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(d.metric("svc_handler_ready").await, 1.0);
    assert!(d.log_text().contains("first full sync done"));

    let (good, bad) = (f.id("good"), f.id("bad"));
    assert!(
        f.put_and_wait(
            &good,
            br#"{"defaults": {"Protocol": "http"}}"#,
            Duration::from_secs(20)
        )
        .await
    );
    f.client
        .kv_put(&f.layout.base_key(&bad), br#"{"adopt": "yes"}"#)
        .await
        .unwrap();
    let series = |status: &str| format!("svc_handler_services{{status=\"{status}\"}}");
    let counted = eventually(Duration::from_secs(20), || async {
        d.metric(&series("applied")).await == 1.0 && d.metric(&series("invalid")).await == 1.0
    })
    .await;
    assert!(counted, "{:?}", d.metrics().await);

    // A deleted service is forgotten.
    f.client.kv_delete(&f.layout.base_key(&good)).await.unwrap();
    let forgotten = eventually(Duration::from_secs(20), || async {
        d.metric(&series("applied")).await == 0.0
    })
    .await;
    assert!(forgotten, "{:?}", d.metrics().await);
    assert_eq!(d.metric(&series("invalid")).await, 1.0);
    assert_eq!(d.readyz().await, Some(200), "still ready");
}

/// Writes base.json of every service in `ids` at once with `body`.
async fn put_all(f: &Fixture, ids: &[ServiceId], body: &Value) {
    let mut puts = tokio::task::JoinSet::new();
    for chunk in ids.chunks(20) {
        let (c, layout, chunk) = (f.client.clone(), f.layout.clone(), chunk.to_vec());
        let body = body.to_string();
        puts.spawn(async move {
            for id in chunk {
                c.kv_put(&layout.base_key(&id), body.as_bytes())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = puts.join_next().await {
        r.unwrap();
    }
}

/// True once every service in `ids` has neither entries nor observed.json.
async fn all_gone(f: &Fixture, ids: &[ServiceId], timeout: Duration) -> bool {
    eventually(timeout, || async {
        for id in ids {
            if f.observed(id).await.is_some()
                || f.entry("service-defaults", &id.name).await.is_some()
            {
                return false;
            }
        }
        true
    })
    .await
}

/// With more services than one shard holds, the desired prefix is watched
/// in shards. While shards are laid out again (new names outside every
/// shard, a shard grown past its bound, the tree shrunk to one shard), and
/// writes keep coming, no change is missed: every new, changed and deleted
/// service ends as its base.json says.
#[tokio::test]
async fn the_sharded_watch_misses_no_change_while_shards_split_and_merge() {
    shards_split_and_merge("shards", shared(), &[]).await;
}

/// The same with every shard read by descending to what changed (by default
/// only shards of more than 32 services are, past about 500 services). On an
/// agent of its own: a daemon holds up to 35 long-polls, and every test
/// daemon shares the agent's `http_max_conns_per_client` (200).
#[tokio::test]
async fn the_descent_misses_no_change_while_shards_split_and_merge() {
    let agent = Agent::dev();
    shards_split_and_merge("descent", &agent, &[(FAULT_ALWAYS_DESCEND_ENV, "1")]).await;
}

/// A shard woken by the daemon's own record writes alone is read without a
/// descent: every raft index between the change and the records is one of
/// the daemon's own writes (its lock, its entries, its transaction), so
/// only the folder it wrote is read. And a foreign write that lands among
/// the daemon's own is never taken for one of them: changes to two
/// services of one shard, back to back, are both applied. On an agent of
/// its own: a shared agent's other tests write all the time, and any
/// foreign write makes the shard descend.
#[tokio::test]
async fn own_record_writes_cost_no_descent_and_hide_no_foreign_write() {
    let agent = Agent::dev();
    let f = Fixture::new("own-writes", &agent);
    let ids: Vec<ServiceId> = (0..40).map(|i| f.id(&format!("svc{i:02}"))).collect();
    put_all(&f, &ids, &json!({"defaults": {"Protocol": "http"}})).await;
    let d = f.start("d1", &[], &[(FAULT_ALWAYS_DESCEND_ENV, "1")]);
    d.wait_ready(Duration::from_secs(30)).await;
    assert!(f.all_applied(&ids, Duration::from_secs(120)).await);
    let own = r#"svc_handler_watch_shard_reads_total{how="own_writes"}"#;
    let descent = r#"svc_handler_watch_shard_reads_total{how="descent"}"#;
    let (own0, descent0) = (d.metric(own).await, d.metric(descent).await);

    let grpc = json!({"defaults": {"Protocol": "grpc"}}).to_string();
    for id in &ids[..10] {
        f.put(id, grpc.as_bytes()).await;
        assert!(
            f.all_applied(std::slice::from_ref(id), Duration::from_secs(30))
                .await
        );
    }
    // Ten changes: each found by a descent, each one's records read alone
    // (the agent's own occasional writes, such as its coordinates, may
    // make one descend).
    let (owned, descended) = (
        d.metric(own).await - own0,
        d.metric(descent).await - descent0,
    );
    assert!(owned >= 6.0, "own_writes {owned}, descents {descended}");
    assert!(
        descended >= 10.0,
        "own_writes {owned}, descents {descended}"
    );

    let tcp = json!({"defaults": {"Protocol": "tcp"}}).to_string();
    let racing = &ids[10..30];
    for pair in racing.chunks(2) {
        f.put(&pair[0], tcp.as_bytes()).await;
        f.put(&pair[1], tcp.as_bytes()).await;
        // Spacing, not waiting for anything: the next pair lands while this
        // one's reconciles write.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        f.all_applied(racing, Duration::from_secs(60)).await,
        "a change was missed:\n{}",
        d.log_tail(40)
    );
    for id in racing {
        let e = f.entry("service-defaults", &id.name).await.unwrap();
        assert_eq!(e["Protocol"], "tcp", "{id}");
    }
}

async fn shards_split_and_merge(name: &str, agent: &Agent, env: &[(&str, &str)]) {
    let f = Fixture::new(name, agent);
    let http = json!({"defaults": {"Protocol": "http"}});
    let first: Vec<ServiceId> = (0..200).map(|i| f.id(&format!("web{i:03}"))).collect();
    // Started on an empty prefix: one shard, split as the services come.
    let d = f.start("d1", &[], env);
    d.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(d.metric("svc_handler_watch_shards").await, 1.0);
    put_all(&f, &first, &http).await;
    assert!(
        f.all_applied(&first, Duration::from_secs(180)).await,
        "first 200 not applied:\n{}",
        d.log_tail(40)
    );
    let split = d.metric("svc_handler_watch_shards").await;
    assert!(split > 1.0, "200 services in {split} shard(s)");

    // At the same time: 100 services under names no shard covers, 50
    // changed, 20 deleted.
    let letters = ['a', 'b', 'k', 'q', 'z'];
    let new: Vec<ServiceId> = (0..100)
        .map(|i| f.id(&format!("{}n{i}", letters[i % letters.len()])))
        .collect();
    let grpc = json!({"defaults": {"Protocol": "grpc"}});
    let (changed, deleted) = (&first[..50], &first[150..170]);
    let deletes = async {
        for id in deleted {
            f.client.kv_delete(&f.layout.base_key(id)).await.unwrap();
        }
    };
    tokio::join!(
        put_all(&f, &new, &http),
        put_all(&f, changed, &grpc),
        deletes
    );

    let kept: Vec<ServiceId> = (first.iter().chain(&new))
        .filter(|id| !deleted.contains(id))
        .cloned()
        .collect();
    assert!(
        f.all_applied(&kept, Duration::from_secs(180)).await,
        "a change was missed:\n{}",
        d.log_tail(60)
    );
    for id in changed {
        let e = f.entry("service-defaults", &id.name).await.unwrap();
        assert_eq!(e["Protocol"], "grpc", "{id}");
    }
    assert!(
        all_gone(&f, deleted, Duration::from_secs(60)).await,
        "deletions missed"
    );
    assert!(
        d.log_text().contains("laid out again"),
        "the new names did not make a new layout:\n{}",
        d.log_tail(40)
    );

    // Shrink to ten services: one shard again, and it still sees changes.
    let (rest, gone) = kept.split_at(10);
    for id in gone {
        f.client.kv_delete(&f.layout.base_key(id)).await.unwrap();
    }
    assert!(
        all_gone(&f, gone, Duration::from_secs(180)).await,
        "deletions missed"
    );
    let merged = eventually(Duration::from_secs(60), || async {
        d.metric("svc_handler_watch_shards").await == 1.0
    })
    .await;
    assert!(
        merged,
        "still {} shards",
        d.metric("svc_handler_watch_shards").await
    );
    put_all(&f, rest, &grpc).await;
    assert!(
        f.all_applied(rest, Duration::from_secs(60)).await,
        "change after the merge missed"
    );
}
