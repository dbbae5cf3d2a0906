//! The metrics contract end to end: the real `svc-handler run` against the
//! shared Consul agent, one service in each outcome, then /metrics holds every
//! metric of CONTRACT.md with its labels and the right counts, and
//! `promtool check metrics` finds no problem.

#[path = "support/obs.rs"]
mod obs;
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use obs::{observed, promtool, start_daemon, Exposition, Sample, Scenario};

/// The metrics table of CONTRACT.md: name, type, label names.
const CONTRACT: &[(&str, &str, &[&str])] = &[
    ("svc_handler_reconcile_total", "counter", &["result"]),
    (
        "svc_handler_reconcile_duration_seconds",
        "histogram",
        &["result"],
    ),
    ("svc_handler_apply_latency_seconds", "histogram", &[]),
    (
        "svc_handler_object_writes_total",
        "counter",
        &["kind", "result"],
    ),
    ("svc_handler_gateway_batch_size", "histogram", &[]),
    ("svc_handler_verify_failures_total", "counter", &["kind"]),
    ("svc_handler_drift_corrections_total", "counter", &["kind"]),
    (
        "svc_handler_lock_acquisitions_total",
        "counter",
        &["result"],
    ),
    ("svc_handler_session_renew_failures_total", "counter", &[]),
    ("svc_handler_queue_depth", "gauge", &[]),
    ("svc_handler_queue_wait_seconds", "histogram", &[]),
    ("svc_handler_workers_busy", "gauge", &[]),
    ("svc_handler_retries_total", "counter", &[]),
    ("svc_handler_watch_wakeups_total", "counter", &[]),
    ("svc_handler_watch_errors_total", "counter", &[]),
    ("svc_handler_watch_index", "gauge", &[]),
    (
        "svc_handler_watch_last_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("svc_handler_services", "gauge", &["status"]),
    (
        "svc_handler_consul_requests_total",
        "counter",
        &["op", "code"],
    ),
    (
        "svc_handler_consul_request_duration_seconds",
        "histogram",
        &["op"],
    ),
    ("svc_handler_build_info", "gauge", &["version"]),
    ("svc_handler_ready", "gauge", &[]),
];

/// The label values the contract enumerates; each must be exported.
const ENUMERATED: &[(&str, &str, &[&str])] = &[
    (
        "svc_handler_reconcile_total",
        "result",
        &[
            "applied",
            "unchanged",
            "error",
            "invalid",
            "conflict",
            "deleted",
        ],
    ),
    (
        "svc_handler_object_writes_total",
        "result",
        &["ok", "error", "cas_retry"],
    ),
    (
        "svc_handler_lock_acquisitions_total",
        "result",
        &["acquired", "held_elsewhere", "error"],
    ),
    (
        "svc_handler_services",
        "status",
        &["applied", "error", "invalid", "conflict"],
    ),
];

/// Checks every contract metric: its TYPE, its series and their label names.
fn check_contract(e: &Exposition) {
    for (name, ty, labels) in CONTRACT {
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*ty),
            "{name}: TYPE"
        );
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        let parts: Vec<(String, Option<&str>)> = if *ty == "histogram" {
            vec![
                (format!("{name}_bucket"), Some("le")),
                (format!("{name}_sum"), None),
                (format!("{name}_count"), None),
            ]
        } else {
            vec![(name.to_string(), None)]
        };
        for (series, extra) in parts {
            let found: Vec<&Sample> = e.series(&series).collect();
            assert!(!found.is_empty(), "no series {series}");
            for s in found {
                let mut got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                if let Some(x) = extra {
                    assert!(got.remove(x), "{series} without {x}: {:?}", s.labels);
                }
                assert_eq!(got, want, "{series}: label names {:?}", s.labels);
            }
        }
    }
    for (name, label, values) in ENUMERATED {
        for v in *values {
            assert!(
                e.value(name, &[(label, v)]).is_some(),
                "no {name}{{{label}=\"{v}\"}}"
            );
        }
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(e.series(name).next().is_some(), "no {name}");
    }
    assert_eq!(
        e.value(
            "svc_handler_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

/// a. /metrics after applied reconciles, an error, an invalid base.json and
/// a conflict: every contract metric with its labels, the right counts, and
/// `promtool check metrics` finds no problem.
#[test]
fn metrics_cover_the_contract_and_pass_promtool() {
    let sc = Scenario::new("obs-metrics");
    sc.create_foreign_entry();
    let daemon = start_daemon(&sc.consul_url(), &sc.prefix, None, &[]);
    daemon.wait_ready_blocking(Duration::from_secs(20));
    sc.write();
    let e = sc.wait_outcomes(&daemon);

    check_contract(&e);
    check_reconcile_counts(&e, &sc);
    check_watch_and_requests(&e, &sc);
    check_observed_outcomes(&sc);
    check_with_promtool(&e);
}

/// Reconciles, writes and locks: as many as the scenario's services make.
fn check_reconcile_counts(e: &Exposition, sc: &Scenario) {
    let n = sc.applied.len() as f64;
    assert_eq!(
        e.value("svc_handler_reconcile_total", &[("result", "applied")]),
        Some(n),
        "each applied service applied once"
    );
    assert!(e.value("svc_handler_reconcile_total", &[("result", "error")]) >= Some(1.0));
    assert_eq!(
        e.value("svc_handler_reconcile_total", &[("result", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("svc_handler_reconcile_total", &[("result", "conflict")]),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "svc_handler_reconcile_duration_seconds_count",
            &[("result", "applied")]
        ),
        Some(n)
    );
    // Apply latency: one observation per new generation applied.
    assert_eq!(
        e.value("svc_handler_apply_latency_seconds_count", &[]),
        Some(n)
    );
    assert!(
        e.value(
            "svc_handler_object_writes_total",
            &[("kind", "service-defaults"), ("result", "ok")]
        ) >= Some(n + 1.0),
        "defaults of the applied services and of the one Consul stores differently"
    );
    assert!(
        e.value(
            "svc_handler_object_writes_total",
            &[("kind", "service-router"), ("result", "ok")]
        ) >= Some(1.0)
    );
    assert_eq!(
        e.value(
            "svc_handler_verify_failures_total",
            &[("kind", "service-defaults")]
        ),
        Some(1.0),
        "the defaults Consul stored differently: one write, one verify failure"
    );
    assert!(
        e.value(
            "svc_handler_lock_acquisitions_total",
            &[("result", "acquired")]
        ) >= Some(n)
    );
}

/// Readiness, the watch, Consul requests and the queue.
fn check_watch_and_requests(e: &Exposition, sc: &Scenario) {
    let n = sc.applied.len() as f64;
    assert_eq!(e.value("svc_handler_ready", &[]), Some(1.0));
    assert!(e.value("svc_handler_watch_wakeups_total", &[]) >= Some(2.0));
    assert!(e.value("svc_handler_watch_index", &[]) > Some(0.0));
    let last = e
        .value("svc_handler_watch_last_success_timestamp_seconds", &[])
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - last).abs() < 60.0,
        "last watch success {last}, now {now}"
    );
    assert!(
        e.sum("svc_handler_consul_requests_total", &[("op", "config.put")]) > 0.0
            || e.sum("svc_handler_consul_requests_total", &[("op", "config.cas")]) > 0.0
    );
    assert!(e.sum("svc_handler_consul_requests_total", &[("code", "200")]) > 0.0);
    assert!(
        e.value("svc_handler_queue_wait_seconds_count", &[]) >= Some(n + 3.0),
        "every service went through the queue"
    );
}

/// The outcomes the metrics claim are those in observed.json.
fn check_observed_outcomes(sc: &Scenario) {
    for (name, status) in sc.applied.iter().map(|n| (n, "applied")).chain([
        (&sc.error, "error"),
        (&sc.invalid, "invalid"),
        (&sc.conflict, "conflict"),
    ]) {
        let o = observed(&sc.prefix, name).unwrap_or_else(|| panic!("no observed.json for {name}"));
        assert_eq!(o["status"], status, "{name}: {o}");
    }
}

/// promtool lints the exposition as Prometheus would ingest it.
fn check_with_promtool(e: &Exposition) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(e.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}",
        out.status
    );
}
