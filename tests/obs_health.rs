//! /readyz and /healthz of the real `svc-handler run` over HTTP: not ready
//! (and saying why) while Consul cannot be reached, ready after the first
//! full sync, alive throughout.

#[path = "support/obs.rs"]
mod obs;
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use obs::{observed, poll, put_base, scrape, start_daemon, tag};
use serde_json::json;
use support::{prefix, shared};

/// A TCP gate in front of the agent: while closed it accepts and drops every
/// connection (Consul unreachable); once opened it forwards.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
}

fn gate(target: SocketAddr) -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&open);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { continue };
            if !flag.load(Ordering::SeqCst) {
                drop(down);
                continue;
            }
            let Ok(up) = TcpStream::connect(target) else {
                continue;
            };
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    Gate { addr, open }
}

/// e. /readyz is 503 (with the reason) until the first full sync, while
/// /healthz is 200; then /readyz is 200 and svc_handler_ready is 1.
/// (/healthz failing when the watch loop is stuck is covered by the unit test
/// `http::tests::a_stale_beat_is_unhealthy`: the loop's staleness limit is the
/// watch wait plus 30s, too long for an end-to-end test.)
#[test]
fn readiness_follows_the_first_full_sync() {
    let agent = shared();
    let p = prefix("obs-ready");
    let t = tag(&p);
    let names = [format!("ready-a-{t}"), format!("ready-b-{t}")];
    for n in &names {
        put_base(&p, n, &json!({"defaults": {"Protocol": "http"}}));
    }
    let g = gate(agent.http);
    let daemon = start_daemon(&format!("http://{}", g.addr), &p, None, &[]);

    // Consul unreachable: alive, not ready, and it says why (the token's
    // access cannot be checked, so nothing is watched yet).
    let (code, body) = poll(Duration::from_secs(10), "/readyz says why", || {
        daemon
            .get("/readyz")
            .filter(|(_, b)| b.contains("cannot reach Consul"))
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cannot check the token's access"), "{body}");
    assert!(matches!(daemon.get("/healthz"), Some((200, _))));
    let e = poll(Duration::from_secs(10), "metrics", || scrape(&daemon));
    assert_eq!(e.value("svc_handler_ready", &[]), Some(0.0));
    assert_eq!(
        e.value("svc_handler_watch_last_success_timestamp_seconds", &[]),
        Some(0.0)
    );
    assert!(observed(&p, &names[0]).is_none());
    let (code, _) = daemon.get("/readyz").unwrap();
    assert_eq!(code, 503);

    // Consul reachable: the first full sync, then ready.
    g.open.store(true, Ordering::SeqCst);
    daemon.wait_ready_blocking(Duration::from_secs(20));
    for n in &names {
        let o = observed(&p, n).unwrap_or_else(|| panic!("ready before {n} was synced"));
        assert_eq!(o["status"], "applied", "{o}");
    }
    let e = scrape(&daemon).unwrap();
    assert_eq!(e.value("svc_handler_ready", &[]), Some(1.0));
    assert!(matches!(daemon.get("/healthz"), Some((200, _))));
    assert!(matches!(daemon.get("/nope"), Some((404, _))));
}
