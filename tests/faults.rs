//! Faults: a daemon killed (`kill -9`) while it holds a lock, at every step of
//! the flow. Another daemon takes over and the service ends applied at the
//! right generation, with records that match Consul.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::DaemonProc;
use support::{eventually, prefix, shared};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Record, Status};

const TTL: u64 = 10;
const LOCK_DELAY: u64 = 1;

async fn kv_json<T: serde::de::DeserializeOwned>(c: &Client, key: &str) -> Option<T> {
    c.kv_get(key, &QueryOptions::consistent())
        .await
        .unwrap()
        .0
        .map(|p| serde_json::from_slice(&p.value).unwrap())
}

async fn entry(c: &Client, kind: &str, name: &str) -> Option<Value> {
    c.config_get(kind, name, &QueryOptions::consistent())
        .await
        .unwrap()
        .0
        .map(|e| e.0)
}

/// Kill the holder just before `step`'s fenced write; returns how long the
/// takeover took.
async fn crash_before(step: &'static str) -> Duration {
    let agent = shared();
    let client = agent.client();
    let p = prefix(&format!("crash-{step}"));
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let id = ServiceId::new("default", "default", &format!("crash-{tag}")).unwrap();
    let gateway = format!("gw-{tag}");
    let ttl = format!("{TTL}s");
    let delay = format!("{LOCK_DELAY}s");
    let args = [
        "--session-ttl",
        ttl.as_str(),
        "--lock-delay",
        delay.as_str(),
    ];

    let mut doomed = DaemonProc::start(
        &agent.url(),
        &p,
        "doomed",
        &args,
        &[("SVC_HANDLER_FAULT_PAUSE_BEFORE", step)],
    );
    doomed.wait_ready(Duration::from_secs(30)).await;
    let spec = json!({
        "defaults": {"Protocol": "http"},
        "resolver": {"ConnectTimeout": "4s", "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"}}},
        "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/v1"}}, "Destination": {"ServiceSubset": "v1"}}]},
        "terminating_gateway": {"Gateway": gateway, "SNI": "crash.example"}
    });
    client
        .kv_put(&layout.base_key(&id), spec.to_string().as_bytes())
        .await
        .unwrap();
    let paused = eventually(Duration::from_secs(30), || async {
        doomed
            .log_text()
            .contains("pausing before the fenced write")
    })
    .await;
    assert!(
        paused,
        "{step}: never reached the pause:\n{}",
        doomed.log_text()
    );
    doomed.kill9();
    let killed = Instant::now();

    let rescuer = DaemonProc::start(&agent.url(), &p, "rescuer", &args, &[]);
    let generation = client
        .kv_get(&layout.base_key(&id), &QueryOptions::consistent())
        .await
        .unwrap()
        .0
        .unwrap()
        .modify_index;
    let applied = eventually(Duration::from_secs(60), || async {
        matches!(kv_json::<Observed>(&client, &layout.observed_key(&id)).await,
            Some(o) if o.status == Status::Applied && o.generation == generation)
    })
    .await;
    let took = killed.elapsed();
    assert!(
        applied,
        "{step}: not applied after the crash:\n{}",
        rescuer.log_text()
    );

    // Records match what Consul holds.
    let dir = layout.service_dir(&id);
    for (file, kind) in [
        ("defaults.json", "service-defaults"),
        ("resolver.json", "service-resolver"),
        ("router.json", "service-router"),
    ] {
        let rec: Record = kv_json(&client, &format!("{dir}{file}"))
            .await
            .unwrap_or_else(|| panic!("{step}: {file} missing"));
        let e = entry(&client, kind, &id.name).await.unwrap();
        assert_eq!(
            rec.modify_index,
            e["ModifyIndex"].as_u64().unwrap(),
            "{step}: {file}"
        );
        assert_eq!(rec.generation, generation, "{step}: {file}");
        assert_eq!(e["Meta"]["managed-by"], "svc-handler");
    }
    let tgw: Record = kv_json(&client, &format!("{dir}/tgw.json")).await.unwrap();
    assert_eq!(tgw.name, gateway);
    assert_eq!(tgw.generation, generation);
    assert!(tgw.previous_gateway.is_none());
    let gw = entry(&client, "terminating-gateway", &gateway)
        .await
        .unwrap();
    let links: Vec<&Value> = gw["Services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["Name"] == id.name.as_str())
        .collect();
    assert_eq!(links.len(), 1, "{step}: exactly one link");
    assert_eq!(links[0]["SNI"], "crash.example");
    let obs: Observed = kv_json(&client, &layout.observed_key(&id)).await.unwrap();
    assert_eq!(obs.holder, "rescuer", "{step}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_before_every_step_loses_nothing() {
    let steps = [
        "defaults",
        "resolver",
        "router",
        "terminating_gateway",
        "observed",
    ];
    let mut set = tokio::task::JoinSet::new();
    for step in steps {
        set.spawn(async move { (step, crash_before(step).await) });
    }
    let bound = Duration::from_secs(2 * TTL + LOCK_DELAY + 5);
    let mut seen = 0;
    while let Some(r) = set.join_next().await {
        let (step, took) = r.expect("scenario panicked");
        println!("crash before {step}: taken over in {took:?} (bound {bound:?})");
        assert!(took <= bound, "{step}: {took:?} > {bound:?}");
        seen += 1;
    }
    assert_eq!(seen, steps.len());
}

/// Consul answering badly, through a proxy: connections cut, then requests
/// never answered. Timeouts hit, retries back off (counted), nothing
/// hot-loops, and a change made meanwhile lands once Consul answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_silent_consul_backs_off_and_recovers() {
    use support::proxy::{Mode, Proxy};
    let agent = shared();
    let client = agent.client();
    let proxy = Proxy::start(agent.http).await;
    let p = prefix("proxy");
    let layout = Layout::new(&p).unwrap();
    let tag = p.rsplit('/').next().unwrap().to_string();
    let id = ServiceId::new("default", "default", &format!("flaky-{tag}")).unwrap();
    // Keep-alive connections would outlive a mode switch: the daemon only
    // talks to the proxy, and the proxy decides per connection, so cut idle
    // pooling short with a small watch wait.
    let d = DaemonProc::start(
        &proxy.url(),
        &p,
        "flaky",
        &["--consul-timeout", "1s", "--watch-wait", "2s"],
        &[],
    );
    d.wait_ready(Duration::from_secs(30)).await;
    client
        .kv_put(
            &layout.base_key(&id),
            br#"{"defaults": {"Protocol": "http"}}"#,
        )
        .await
        .unwrap();
    let applied = |g: u64| {
        let (c, key) = (client.clone(), layout.observed_key(&id));
        async move {
            matches!(kv_json::<Observed>(&c, &key).await, Some(o) if o.status == Status::Applied && o.generation >= g)
        }
    };
    assert!(eventually(Duration::from_secs(30), || applied(1)).await);

    // Every connection cut at once, for 6 seconds.
    proxy.set(Mode::Reset);
    let errors_before = d.metric("svc_handler_watch_errors_total").await;
    let conns_before = proxy.connections();
    let gen = {
        client
            .kv_put(
                &layout.base_key(&id),
                br#"{"defaults": {"Protocol": "grpc"}}"#,
            )
            .await
            .unwrap();
        client
            .kv_get(&layout.base_key(&id), &QueryOptions::consistent())
            .await
            .unwrap()
            .0
            .unwrap()
            .modify_index
    };
    tokio::time::sleep(Duration::from_secs(6)).await; // the fault's duration
    let reset_conns = proxy.connections() - conns_before;

    // Then nobody answers at all, for 4 seconds: requests time out.
    proxy.set(Mode::Blackhole);
    tokio::time::sleep(Duration::from_secs(4)).await; // the fault's duration
    let blackhole_conns = proxy.connections() - conns_before - reset_conns;

    proxy.set(Mode::Pass);
    let recovered = eventually(Duration::from_secs(60), || applied(gen)).await;
    let log = d.log_text();
    assert!(recovered, "the change never landed:\n{log}");
    let errors = d.metric("svc_handler_watch_errors_total").await - errors_before;
    let timeouts: f64 = d
        .metrics()
        .await
        .iter()
        .filter(|(k, _)| {
            k.starts_with("svc_handler_consul_requests_total") && k.contains("code=\"timeout\"")
        })
        .map(|(_, v)| v)
        .sum();
    println!(
        "10 s of faults: {reset_conns} connections while cut, {blackhole_conns} while silent, \
         {errors} watch errors, {timeouts} timeouts; the change landed after recovery"
    );
    assert!(errors >= 2.0, "the watch saw the faults: {errors}");
    assert!(
        timeouts >= 1.0,
        "requests timed out while Consul was silent"
    );
    // Backoff, not a hot loop: the watch and the four config watches each
    // back off from 250 ms, so a few dozen connections at most in 10 s.
    assert!(
        reset_conns < 80,
        "{reset_conns} connections in 6 s: a hot loop"
    );
    assert!(errors < 40.0, "{errors} watch errors in 10 s: a hot loop");
    assert!(log.contains("watch failed"), "{log}");
}
