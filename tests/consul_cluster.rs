//! The three-server test cluster: forms, replicates, and elects a new leader
//! when the leader dies. (The fault tests build on it.)

mod support;

use std::time::Duration;

use support::{eventually, Cluster};
use svc_handler::consul::QueryOptions;

#[tokio::test]
async fn cluster_replicates_and_survives_losing_its_leader() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;

    // A write through one server is seen by a consistent read on another.
    let w = cluster.agents[follower].client();
    w.kv_put("cluster/k", b"v1").await.unwrap();
    let r = cluster.agents[(follower + 1) % 3].client();
    let (v, meta) = r
        .kv_get("cluster/k", &QueryOptions::consistent())
        .await
        .unwrap();
    assert_eq!(v.unwrap().value, b"v1");
    assert!(meta.known_leader);

    cluster.agents[leader].kill();
    let survivor = cluster.agents[follower].client();
    let recovered = eventually(Duration::from_secs(60), || {
        let c = survivor.clone();
        async move { c.kv_put("cluster/k", b"v2").await.is_ok() }
    })
    .await;
    assert!(recovered, "no write accepted after the leader died");
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    let (v, _) = survivor
        .kv_get("cluster/k", &QueryOptions::consistent())
        .await
        .unwrap();
    assert_eq!(v.unwrap().value, b"v2");
}
