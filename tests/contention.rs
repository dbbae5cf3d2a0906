//! Contention: three daemons, many services, all linking into two shared
//! terminating gateways. In the end every service has exactly one link, in
//! the right gateway, and the gateways' other fields and foreign links are
//! intact. `SVC_HANDLER_CONTENTION_SERVICES` sets the count (150 by default;
//! `scripts/reliability` runs 1,000).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::DaemonProc;
use support::{eventually, prefix, shared};
use svc_handler::consul::QueryOptions;
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_racing_into_two_gateways_end_with_exact_links() {
    let n: usize = std::env::var("SVC_HANDLER_CONTENTION_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let agent = shared();
    let client = agent.client();
    let p = prefix("contention");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let gateways = [format!("gw-a-{tag}"), format!("gw-b-{tag}")];
    for g in &gateways {
        client
            .config_put(&json!({
                "Kind": "terminating-gateway", "Name": g,
                "Meta": {"owner": "network-team"},
                "Services": [{"Name": "legacy", "SNI": "legacy.example"}]
            }))
            .await
            .unwrap();
    }
    let daemons: Vec<DaemonProc> = ["x", "y", "z"]
        .iter()
        .map(|i| DaemonProc::start(&agent.url(), &p, i, &[], &[]))
        .collect();
    for d in &daemons {
        d.wait_ready(Duration::from_secs(30)).await;
    }
    let ids: Vec<ServiceId> = (0..n)
        .map(|i| ServiceId::new("default", "default", &format!("c{i}-{tag}")).unwrap())
        .collect();
    let started = Instant::now();
    // At most 32 writes at once: Consul closes connections from one address
    // beyond `http_max_conns_per_client` (200 by default).
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut puts = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (c, key) = (client.clone(), layout.base_key(id));
        let body = json!({"terminating_gateway": {"Gateway": gateways[i % 2], "SNI": format!("{}.example", id.name)}});
        let permits = std::sync::Arc::clone(&permits);
        puts.spawn(async move {
            let _p = permits.acquire().await.unwrap();
            c.kv_put(&key, body.to_string().as_bytes()).await.unwrap()
        });
    }
    while puts.join_next().await.is_some() {}
    let all = eventually(Duration::from_secs(600), || async {
        let (pairs, _) = client
            .kv_list(&layout.observed_prefix(), &QueryOptions::default())
            .await
            .unwrap();
        pairs
            .iter()
            .filter(|p| {
                serde_json::from_slice::<Observed>(&p.value)
                    .map(|o| o.status == Status::Applied)
                    .unwrap_or(false)
            })
            .count()
            == n
    })
    .await;
    let took = started.elapsed();
    assert!(all, "not all applied in time");

    let mut total = 0;
    for (gi, g) in gateways.iter().enumerate() {
        let e = client
            .config_get("terminating-gateway", g, &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .unwrap()
            .0;
        assert_eq!(e["Meta"], json!({"owner": "network-team"}), "{g}: Meta");
        let links = e["Services"].as_array().unwrap();
        assert!(links
            .iter()
            .any(|l| l["Name"] == "legacy" && l["SNI"] == "legacy.example"));
        let ours: Vec<&Value> = links.iter().filter(|l| l["Name"] != "legacy").collect();
        for (i, id) in ids.iter().enumerate() {
            let count = ours
                .iter()
                .filter(|l| l["Name"] == id.name.as_str())
                .count();
            assert_eq!(count, usize::from(i % 2 == gi), "{}: links in {g}", id.name);
        }
        total += ours.len();
    }
    assert_eq!(total, n, "exactly one link per service");
    let mut retries = 0.0;
    for d in &daemons {
        retries += d
            .metric(
                r#"svc_handler_object_writes_total{kind="terminating-gateway",result="cas_retry"}"#,
            )
            .await;
    }
    println!("{n} services into 2 gateways with 3 daemons: all applied in {took:?}; {retries} CAS retries; {total} links, none lost or duplicated");
}
