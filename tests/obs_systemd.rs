//! svc-handler under systemd: the unit passes `systemd-analyze verify` and
//! its hardening score holds, the env example names every variable the
//! daemon reads, and the real `svc-handler run` speaks the sd_notify protocol
//! (READY, WATCHDOG, STOPPING) on a real datagram socket.

#[path = "support/obs.rs"]
mod obs;
mod support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use obs::{observed, put_base, start_daemon, tag, BIN, ROOT};
use serde_json::json;
use support::{prefix, shared};

/// c. The unit passes `systemd-analyze verify` (with ExecStart pointing at
/// the built binary); `systemd-analyze security` gives its exposure; the env
/// example names every variable the daemon reads.
#[test]
fn systemd_unit_verifies() {
    let unit_src = Path::new(ROOT).join("systemd/svc-handler.service");
    let unit = std::fs::read_to_string(&unit_src).expect("the unit");
    check_unit_settings(&unit);
    check_env_example();
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIPPED: systemd-analyze is not on this machine; the unit was not verified");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = verify_unit(&analyze, &unit, dir.path());
    score_unit(&analyze, &copy);
}

/// The unit's own settings: notify, reload, restart, hardening, timeouts.
fn check_unit_settings(unit: &str) {
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/local/bin/svc-handler run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/svc-handler/env",
        "Restart=on-failure",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    let secs = |key: &str| -> u64 {
        let v = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        humantime::parse_duration(v.trim()).unwrap().as_secs()
    };
    assert!(secs("WatchdogSec=") >= 10);
    assert!(
        secs("TimeoutStopSec=") > 10,
        "above the daemon's 10s shutdown timeout"
    );
}

/// The env example documents every variable the daemon reads.
fn check_env_example() {
    let example =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/svc-handler.env.example")).unwrap();
    let mut names = BTreeSet::new();
    for (file, marker) in [
        ("src/cli.rs", "env = \""),
        ("src/consul/settings.rs", "get(\""),
    ] {
        let src = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        for part in src.split(marker).skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
                names.insert(name);
            }
        }
    }
    assert!(names.contains("CONSUL_HTTP_ADDR") && names.contains("SVC_HANDLER_WORKERS"));
    for n in &names {
        assert!(example.contains(n.as_str()), "the env example lacks {n}");
    }
}

/// systemd-analyze, when the machine has it.
fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            Command::new("sh")
                .args(["-c", "command -v systemd-analyze"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        })
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart is the
/// built binary (in `dir`); the copy's path.
fn verify_unit(analyze: &Path, unit: &str, dir: &Path) -> PathBuf {
    let bin = dir.join("svc-handler");
    std::os::unix::fs::symlink(BIN, &bin).unwrap();
    let copy = dir.join("svc-handler.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/svc-handler",
            &format!("ExecStart={}", bin.display()),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains("svc-handler.service"),
        "systemd-analyze verify warns about the unit: {text}"
    );
    copy
}

/// `systemd-analyze security` gives the unit's exposure, where it can.
fn score_unit(analyze: &Path, copy: &Path) {
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(copy)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find_map(|l| {
        l.split("Overall exposure level for svc-handler.service:")
            .nth(1)
    }) {
        Some(level) => {
            eprintln!("systemd-analyze security: exposure {}", level.trim());
            let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                score <= 2.0,
                "exposure {score}: hardening regressed\n{text}"
            );
        }
        None => eprintln!(
            "systemd-analyze security --offline=true is not available here ({}): not scored",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// d. The sd_notify protocol on a real datagram socket: READY=1 after the
/// first full sync, WATCHDOG=1 every WatchdogSec/2, STOPPING=1 on SIGTERM, and
/// a clean exit 0 within the shutdown timeout.
#[test]
fn notifies_systemd_ready_watchdog_and_stopping() {
    let agent = shared();
    let p = prefix("obs-notify");
    let name = format!("notify-{}", tag(&p));
    put_base(&p, &name, &json!({"defaults": {"Protocol": "http"}}));

    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_str = sock_path.display().to_string();
    let mut daemon = start_daemon(
        &agent.url(),
        &p,
        None,
        &[
            ("NOTIFY_SOCKET", sock_str.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );

    let mut messages: Vec<String> = Vec::new();
    let has =
        |m: &[String], state: &str| m.iter().filter(|d| d.lines().any(|l| l == state)).count();

    recv_until(
        &sock,
        &mut messages,
        "READY=1",
        Duration::from_secs(20),
        &|m| has(m, "READY=1") > 0,
    );
    // READY=1 comes after the first full sync: the service is reconciled.
    let o = observed(&p, &name).expect("observed.json written before READY=1");
    assert_eq!(o["status"], "applied", "{o}");
    let ready = messages
        .iter()
        .find(|d| d.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(
        ready.contains("STATUS="),
        "READY=1 with a STATUS: {ready:?}"
    );
    assert!(matches!(daemon.get("/readyz"), Some((200, _))));

    // WatchdogSec=2s: a ping about every second, while healthy.
    recv_until(
        &sock,
        &mut messages,
        "two WATCHDOG=1",
        Duration::from_secs(10),
        &|m| has(m, "WATCHDOG=1") >= 2,
    );

    // SIGTERM: STOPPING=1, then exit 0 within the 10s shutdown timeout.
    let t0 = Instant::now();
    assert!(daemon.signal(libc::SIGTERM), "SIGTERM delivered");
    recv_until(
        &sock,
        &mut messages,
        "STOPPING=1",
        Duration::from_secs(5),
        &|m| has(m, "STOPPING=1") > 0,
    );
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running 15s after SIGTERM"));
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    let n_ready = has(&messages, "READY=1");
    assert_eq!(n_ready, 1, "READY=1 once: {messages:?}");
}

/// Reads datagrams into `messages` until `pred` holds; panics after `timeout`.
fn recv_until(
    sock: &UnixDatagram,
    messages: &mut Vec<String>,
    what: &str,
    timeout: Duration,
    pred: &dyn Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !pred(messages) {
        assert!(
            Instant::now() < deadline,
            "no {what} within {timeout:?}; got {messages:?}"
        );
        match sock.recv(&mut buf) {
            Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}
