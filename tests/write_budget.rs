//! The write budget of a running daemon, through a Consul that stores a field
//! differently from what was written and refuses another entry on
//! validation (a proxy in front of a real agent: `support/rewrite.rs`):
//! each generation gets exactly one write and one observed.json, over
//! resyncs and a restart of the daemon.

#[allow(dead_code)]
#[path = "support/docs.rs"]
mod docs;
mod support;

use std::time::Duration;

use serde_json::json;
use support::daemon::DaemonProc;
use support::rewrite::Rewriter;
use support::{eventually, prefix, shared};
use svc_handler::consul::QueryOptions;
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

const DEADLINE: Duration = Duration::from_secs(30);

async fn observed(layout: &Layout, id: &ServiceId) -> Option<Observed> {
    let key = layout.observed_key(id);
    let (p, _) = shared()
        .client()
        .kv_get(&key, &QueryOptions::consistent())
        .await
        .unwrap();
    p.and_then(|p| serde_json::from_slice(&p.value).ok())
}

/// Waits for `more` resyncs that settled both services (each resync counts
/// two `unchanged` reconciles), from `from`.
async fn resyncs(d: &DaemonProc, from: f64, more: f64) -> f64 {
    let series = r#"svc_handler_reconcile_total{result="unchanged"}"#;
    let ok = eventually(DEADLINE, || async {
        d.metric(series).await >= from + 2.0 * more
    })
    .await;
    assert!(ok, "{} resyncs: {}", more, d.log_tail(40));
    d.metric(series).await
}

#[tokio::test]
async fn one_write_and_one_outcome_per_generation_over_resyncs_and_a_restart() {
    let proxy = Rewriter::start(&shared().url());
    let p = prefix("budget");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let differs = ServiceId::new("default", "default", &format!("differs-{tag}")).unwrap();
    let refused = ServiceId::new("default", "default", &format!("refused-{tag}")).unwrap();
    proxy.store_differently(
        "service-defaults",
        &differs.name,
        "Protocol",
        json!("http2"),
    );
    let refusal = r#"Bad Failover["v2"]: not a valid subset"#;
    proxy.refuse(&refused.name, refusal);
    let client = shared().client();
    for id in [&differs, &refused] {
        let body = serde_json::to_vec(&json!({"defaults": {"Protocol": "http"}})).unwrap();
        client.kv_put(&layout.base_key(id), &body).await.unwrap();
    }

    let args = ["--resync-interval", "1s"];
    let mut d = DaemonProc::builder(&proxy.url(), &p).args(&args).start();
    d.wait_ready(DEADLINE).await;
    let o = observed(&layout, &differs)
        .await
        .expect("observed.json of the first");
    assert_eq!((o.status, o.retry), (Status::Error, false), "{o:?}");
    let message = o.message.clone().unwrap();
    assert!(
        message.contains("Consul stored it differently"),
        "{message}"
    );
    assert!(message.contains("Protocol"), "{message}");
    let o = observed(&layout, &refused)
        .await
        .expect("observed.json of the second");
    assert_eq!((o.status, o.retry), (Status::Invalid, false), "{o:?}");
    assert!(o.message.unwrap().contains(refusal));
    let refusals = d
        .metric(r#"svc_handler_final_refusals_total{step="defaults"}"#)
        .await;
    assert_eq!(refusals, 1.0);

    let after = resyncs(&d, 0.0, 3.0).await;
    assert!(after >= 6.0);
    d.stop(Duration::from_secs(10));
    let d = DaemonProc::builder(&proxy.url(), &p).args(&args).start();
    d.wait_ready(DEADLINE).await;
    resyncs(&d, 0.0, 2.0).await;

    for id in [&differs, &refused] {
        let writes = proxy.entry_writes(&id.name);
        assert_eq!(writes, 1, "{id}: config-entry writes for its generation");
        let outcomes = proxy.txn_sets(&layout.observed_key(id));
        assert_eq!(outcomes, 1, "{id}: observed.json writes for its generation");
    }
    // A new generation is tried again, once.
    let body = serde_json::to_vec(&json!({"defaults": {"Protocol": "grpc"}})).unwrap();
    client
        .kv_put(&layout.base_key(&refused), &body)
        .await
        .unwrap();
    let second = eventually(DEADLINE, || async {
        proxy.entry_writes(&refused.name) == 2
    })
    .await;
    assert!(second, "{}", d.log_tail(40));
    resyncs(
        &d,
        d.metric(r#"svc_handler_reconcile_total{result="unchanged"}"#)
            .await,
        2.0,
    )
    .await;
    assert_eq!(proxy.entry_writes(&refused.name), 2);
    assert_eq!(proxy.txn_sets(&layout.observed_key(&refused)), 2);
}

/// The figures of issue 12: 50 bodies from Consul's documentation (35 kinds,
/// cycled), a daemon with a 2 s resync left running for 60 s. Every config
/// write and every observed.json write is counted at the proxy; each must
/// equal the number the generations needed: one observed.json per service,
/// one write per entry of the bodies that apply, none for the refused ones.
/// Run by hand: `cargo test --test write_budget -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "runs for a minute; prints figures"]
async fn figures_50_bodies_60_seconds_of_2_second_resyncs() {
    let proxy = Rewriter::start(&shared().url());
    let p = prefix("figures");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let client = shared().client();
    let backend = format!("{}-{tag}", docs::BACKEND);
    let entry = json!({"Kind": "service-defaults", "Name": backend, "Protocol": "http"});
    assert!(client.config_put(&entry).await.unwrap());
    let rows: Vec<_> = docs::applied_rows()
        .into_iter()
        .chain(docs::invalid_rows())
        .collect();
    let mut services = Vec::new();
    let mut needed_writes = 0;
    for i in 0..50 {
        let (name, body, expect) = &rows[i % rows.len()];
        let id = ServiceId::new("default", "default", &format!("f{i}-{name}-{tag}")).unwrap();
        let text = serde_json::to_string(body)
            .unwrap()
            .replace(docs::BACKEND, &backend);
        if matches!(expect, docs::Expect::Applied) {
            needed_writes += 2 + u64::from(body.get("router").is_some());
        }
        client
            .kv_put(&layout.base_key(&id), text.as_bytes())
            .await
            .unwrap();
        services.push(id);
    }
    let d = DaemonProc::builder(&proxy.url(), &p)
        .args(&["--resync-interval", "2s"])
        .start();
    d.wait_ready(DEADLINE).await;
    let started = std::time::Instant::now();
    // The measurement window itself (not a synchronisation): 60 s of resyncs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let resyncs = d
        .metric(r#"svc_handler_reconcile_total{result="unchanged"}"#)
        .await
        / 50.0;
    let writes: u64 = services.iter().map(|id| proxy.entry_writes(&id.name)).sum();
    let outcomes: usize = services
        .iter()
        .map(|id| proxy.txn_sets(&layout.observed_key(id)))
        .sum();
    println!("| services | window | resyncs (checks / services) | config writes (needed) | observed.json writes (needed) |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| 50 | {:.0} s | {resyncs:.1} | {writes} ({needed_writes}) | {outcomes} (50) |",
        started.elapsed().as_secs_f64()
    );
    assert!(resyncs >= 20.0, "resyncs ran: {resyncs}");
    assert_eq!(writes, needed_writes);
    assert_eq!(outcomes, 50);
}
