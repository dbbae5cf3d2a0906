//! Consul faults under load: a three-server cluster on 127.0.0.1-3, one daemon
//! per server (as on real nodes), a stream of changes; the leader is killed
//! and later restarted, then every server is restarted. No change is lost:
//! every service ends applied at its last acknowledged generation.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::DaemonProc;
use support::{eventually, prefix, Cluster};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};

const SERVICES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_lost_through_leader_loss_and_full_restart() {
    let mut cluster = Cluster::start();
    let p = prefix("cluster-faults");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let daemons: Vec<DaemonProc> = cluster
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            DaemonProc::start(
                &a.url(),
                &p,
                &format!("node{i}"),
                &["--session-ttl", "10s"],
                &[],
            )
        })
        .collect();
    for d in &daemons {
        d.wait_ready(Duration::from_secs(60)).await;
    }
    let ids: Vec<ServiceId> = (0..SERVICES)
        .map(|i| ServiceId::new("default", "default", &format!("cf{i}-{tag}")).unwrap())
        .collect();
    let clients: Vec<Client> = cluster.agents.iter().map(|a| a.client()).collect();

    // The writer: round after round of changes, through whichever server
    // answers; remembers the last generation Consul acknowledged.
    let acked: Arc<Mutex<HashMap<ServiceId, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ids, clients, layout, acked, stop) = (
            ids.clone(),
            clients.clone(),
            layout.clone(),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut round = 0u64;
            let mut writes = 0u64;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                for id in &ids {
                    let body = format!(
                        r#"{{"resolver": {{"ConnectTimeout": "{}s"}}}}"#,
                        round % 50 + 1
                    );
                    let key = layout.base_key(id);
                    'retry: for attempt in 0.. {
                        let c = &clients[(attempt + writes as usize) % clients.len()];
                        if c.kv_put(&key, body.as_bytes()).await.is_ok() {
                            if let Ok((Some(p), _)) =
                                c.kv_get(&key, &QueryOptions::consistent()).await
                            {
                                acked.lock().unwrap().insert(id.clone(), p.modify_index);
                            }
                            writes += 1;
                            break 'retry;
                        }
                        if stop.load(Ordering::SeqCst) {
                            return writes;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            writes
        })
    };
    let progressed = |n: usize| {
        let acked = Arc::clone(&acked);
        async move { acked.lock().unwrap().len() >= n }
    };
    assert!(eventually(Duration::from_secs(60), || progressed(SERVICES)).await);

    // Kill the leader; the cluster elects another; later it comes back.
    let leader = cluster.leader().expect("a leader");
    let t = Instant::now();
    cluster.agents[leader].kill();
    let survivor = clients[(leader + 1) % 3].clone();
    let recovered = eventually(Duration::from_secs(60), || {
        let c = survivor.clone();
        async move { c.kv_put("cluster-probe", b"x").await.is_ok() }
    })
    .await;
    assert!(recovered);
    println!(
        "writes accepted again {:?} after the leader died",
        t.elapsed()
    );
    cluster.agents[leader].start_again();

    // Then every server restarts.
    for a in &mut cluster.agents {
        a.stop();
    }
    let t = Instant::now();
    for a in &mut cluster.agents {
        a.start_again_no_wait();
    }
    for a in &mut cluster.agents {
        a.wait_ready_again(Duration::from_secs(90));
    }
    println!("cluster back {:?} after a full restart", t.elapsed());

    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    let last = acked.lock().unwrap().clone();

    let reader = clients[0].clone();
    let all = eventually(Duration::from_secs(120), || {
        let (reader, layout, last) = (reader.clone(), layout.clone(), last.clone());
        async move {
            for (id, g) in &last {
                let o = reader
                    .kv_get(&layout.observed_key(id), &QueryOptions::default())
                    .await
                    .ok()
                    .and_then(|(p, _)| p)
                    .and_then(|p| serde_json::from_slice::<Observed>(&p.value).ok());
                match o {
                    Some(o) if o.status == Status::Applied && o.generation >= *g => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    let mut logs = String::new();
    for d in &daemons {
        logs.push_str(&d.log_text());
    }
    assert!(
        all,
        "changes lost; daemons' logs:\n{}",
        &logs[logs.len().saturating_sub(20_000)..]
    );
    let mut applied = 0.0;
    for d in &daemons {
        applied += d
            .metric(r#"svc_handler_reconcile_total{result="applied"}"#)
            .await;
    }
    println!("{writes} changes written, 0 lost; {applied} applied reconciles across 3 daemons");
}
