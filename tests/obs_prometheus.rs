//! The dashboard and the alert rules in a real Prometheus: it scrapes the
//! real `svc-handler run` (against the shared Consul agent); every dashboard
//! expression and every alert rule parses and runs, the core panels have
//! data, and the alerts the scenario should trigger are pending. promtool
//! checks dashboards/alerts.yml.
//!
//! Prometheus and promtool come from `$PROMETHEUS_BIN` / `$PROMTOOL_BIN`, else
//! from `scripts/install-prometheus` (which CI runs first).

#[path = "support/obs.rs"]
mod obs;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use obs::{poll, prom_bins, promtool, start_daemon, Scenario, ROOT};
use serde_json::{json, Value};
use support::daemon::DaemonProc;
use support::{die_with_parent, free_local_port, http_get};

// ------------------------------------------------------------- Prometheus

/// A real Prometheus on a free loopback port, scraping `target` every second
/// and evaluating dashboards/alerts.yml every second. Killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = Path::new(ROOT).join("dashboards/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: svc-handler\n    static_configs:\n      - targets: [{targets}]\n",
                rules = rules.display(),
                targets = targets
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .unwrap();
        let port = free_local_port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(&prom_bins().0);
        cmd.current_dir(dir.path())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start prometheus");
        let p = Prometheus {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(p.addr, "/-/ready"), Some((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// `GET path` answering JSON.
    fn api(&self, path: &str) -> Value {
        let (code, body) =
            http_get(self.addr, path).unwrap_or_else(|| panic!("prometheus: no answer to {path}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {code}: not JSON ({e}): {body}"))
    }

    /// An instant query; the whole answer (status success or error).
    fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(expr)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The values of an instant-query answer (vector or scalar).
fn result_values(answer: &Value) -> Vec<f64> {
    let data = &answer["data"];
    let parse = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| parse(&r["value"][1]))
            .collect(),
        Some("scalar") => parse(&data["result"][1]).into_iter().collect(),
        _ => Vec::new(),
    }
}

// --------------------------------------------------------------- dashboard

/// Every (panel title, expr) of the dashboard, rows' nested panels included.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Grafana's variables, as a query of the last hour would see them.
fn grafana_substitute(expr: &str) -> String {
    expr.replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
}

/// Every metric selector of `expr` filters `instance=~"$instance"`.
fn check_instance_filter(title: &str, expr: &str) {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    let mut selectors = 0;
    while i < b.len() {
        if ident(b[i]) && (i == 0 || !ident(b[i - 1])) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("svc_handler_") || word.starts_with("process_") {
                selectors += 1;
                let rest = &expr[i..];
                assert!(
                    rest.starts_with('{'),
                    "{title}: {word} has no label matcher in {expr}"
                );
                let block = &rest[..rest.find('}').expect("closing brace")];
                assert!(
                    block.contains("instance=~\"$instance\""),
                    "{title}: {word} does not filter instance=~\"$instance\" in {expr}"
                );
            }
        } else {
            i += 1;
        }
    }
    assert!(selectors > 0, "{title}: no svc-handler metric in {expr}");
}

// ================================================================== tests

/// b. A real Prometheus scrapes the daemon; every dashboard expression and
/// every alert rule parses and runs; the core panels have data; the alert
/// rules evaluate cleanly and the ones the scenario should trigger are pending.
#[test]
fn dashboard_and_alert_queries_run_in_prometheus() {
    let exprs = dashboard_checked();

    let sc = Scenario::new("obs-prom");
    sc.create_foreign_entry();
    // Two instances on one prefix, as in production: each service must
    // count once on the dashboard and in the alerts, not once per instance.
    let (port, port2) = (free_local_port(), free_local_port());
    let targets = [port, port2].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let prom = Prometheus::start(&targets);
    let daemon = start_daemon(&sc.consul_url(), &sc.prefix, Some(port), &[]);
    let second = DaemonProc::builder(&sc.consul_url(), &sc.prefix)
        .instance("obs-test-2")
        .log_format("json")
        .metrics_port(port2)
        .start();
    daemon.wait_ready_blocking(Duration::from_secs(20));
    second.wait_ready_blocking(Duration::from_secs(20));
    // Reconciles happen after Prometheus has a first sample of both, so
    // rates and quantiles over the last minute see them.
    poll(Duration::from_secs(20), "a first scrape of both", || {
        let a = prom.query("svc_handler_ready == 1");
        (result_values(&a).len() == 2).then_some(())
    });
    sc.write();
    sc.wait_outcomes(&daemon);
    sc.wait_outcomes(&second);

    let inst = format!("127.0.0.1:{port}");
    check_instance_variable(&prom, &inst);
    check_panels(&prom, &exprs);
    check_alert_rules(&prom);
}

/// The dashboard's shape: current schema, the two variables, every metric
/// selector filtered by instance. Its (panel title, expr) pairs.
fn dashboard_checked() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("dashboards/svc-handler.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    // The dashboard's shape: current schema, the two variables.
    assert!(dash["schemaVersion"].as_u64() >= Some(36), "schemaVersion");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("no variable {n}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");
    assert!(var("instance")["query"]["query"]
        .as_str()
        .unwrap()
        .contains("label_values(svc_handler_build_info, instance)"));
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    for (title, e) in &exprs {
        check_instance_filter(title, e);
    }
    exprs
}

/// The instance variable's values include the daemon.
fn check_instance_variable(prom: &Prometheus, inst: &str) {
    let a = prom.api(&format!(
        "/api/v1/label/instance/values?match[]={}",
        urlencode("svc_handler_build_info")
    ));
    assert!(
        a["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == &json!(inst)),
        "label_values(svc_handler_build_info, instance): {a}"
    );
}

/// Every panel expression parses and runs; the core panels show data once
/// the reconciles are scraped.
fn check_panels(prom: &Prometheus, exprs: &[(String, String)]) {
    // Every panel expression parses and runs.
    for (title, e) in exprs {
        let q = grafana_substitute(e);
        assert!(!q.contains('$'), "{title}: unknown variable in {e}");
        let a = prom.query(&q);
        assert_eq!(a["status"], "success", "{title}: {q}: {a}");
    }

    // The core panels show data once the reconciles are scraped.
    let core = [
        "Reconcile rate by result",
        "Error ratio",
        "Reconcile duration",
        "Apply latency",
        "Queue depth",
        "Queue wait p95",
        "Busy workers",
        "Watch wake-ups and errors",
        "Seconds since last watch success",
        "Services by status",
        "Consul request rate by operation",
        "Ready",
    ];
    for title in core {
        let mine: Vec<&String> = exprs
            .iter()
            .filter(|(t, _)| t == title)
            .map(|(_, e)| e)
            .collect();
        assert!(!mine.is_empty(), "no panel {title}");
        let q = grafana_substitute(mine[0]);
        let values = poll(
            Duration::from_secs(30),
            &format!("data for panel {title}: {q}"),
            || {
                let v = result_values(&prom.query(&q));
                v.iter().any(|x| x.is_finite()).then_some(v)
            },
        );
        if title.starts_with("Seconds since") {
            assert!(values.iter().all(|v| *v < 900.0), "{title}: {values:?}");
        }
    }
    let (_, services) = exprs
        .iter()
        .find(|(t, _)| t == "Services by status")
        .expect("the panel");
    let counts = |q: &str| {
        let a = prom.query(q);
        let mut out = BTreeMap::new();
        for r in a["data"]["result"].as_array().cloned().unwrap_or_default() {
            let status = r["metric"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            out.insert(
                status,
                r["value"][1].as_str().unwrap_or_default().to_string(),
            );
        }
        out
    };
    let want = |m: &BTreeMap<String, String>, applied: &str, error: &str| {
        m.get("applied").map(String::as_str) == Some(applied)
            && m.get("error").map(String::as_str) == Some(error)
    };
    // Both instances have counted the scenario: summed, each service
    // would count twice; the panel counts it once.
    let summed = r#"sum by (status) (svc_handler_services{instance=~".*"})"#;
    poll(Duration::from_secs(20), "both instances scraped", || {
        want(&counts(summed), "6", "2").then_some(())
    });
    let panel = counts(&grafana_substitute(services));
    assert!(want(&panel, "3", "1"), "Services by status: {panel:?}");
}

/// The alert rules: loaded, every one evaluates without error, each expr runs
/// as a query; the scenario's error service makes SvcHandlerServicesInError
/// pending, and a healthy daemon is neither down nor stalled.
fn check_alert_rules(prom: &Prometheus) {
    let names: BTreeSet<String> = poll(
        Duration::from_secs(20),
        "every alert rule evaluated healthy",
        || {
            let a = prom.api("/api/v1/rules");
            let rules: Vec<Value> = a["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            for r in &rules {
                assert_ne!(r["health"], "err", "rule {}: {}", r["name"], r["lastError"]);
            }
            if rules.is_empty() || rules.iter().any(|r| r["health"] != "ok") {
                return None;
            }
            for r in &rules {
                let q = r["query"].as_str().unwrap();
                let ans = prom.query(q);
                assert_eq!(ans["status"], "success", "alert {}: {q}: {ans}", r["name"]);
            }
            Some(
                rules
                    .iter()
                    .map(|r| r["name"].as_str().unwrap().to_string())
                    .collect(),
            )
        },
    );
    for want in [
        "SvcHandlerDown",
        "SvcHandlerNotReady",
        "SvcHandlerWatchStalled",
        "SvcHandlerErrorRatioHigh",
        "SvcHandlerServicesInError",
        "SvcHandlerSessionRenewFailures",
    ] {
        assert!(names.contains(want), "no alert {want}: {names:?}");
    }
    // The scenario's error service makes SvcHandlerServicesInError pending
    // (it fires after 15m); a healthy daemon is neither down nor stalled.
    let alerts = poll(
        Duration::from_secs(20),
        "SvcHandlerServicesInError pending",
        || {
            let a = prom.api("/api/v1/alerts");
            let list = a["data"]["alerts"].as_array()?.clone();
            list.iter()
                .any(|x| {
                    x["labels"]["alertname"] == "SvcHandlerServicesInError"
                        && x["state"] == "pending"
                })
                .then_some(list)
        },
    );
    let in_error: Vec<&Value> = alerts
        .iter()
        .filter(|x| x["labels"]["alertname"] == "SvcHandlerServicesInError")
        .collect();
    assert_eq!(
        in_error.len(),
        1,
        "once, not once per instance: {in_error:?}"
    );
    assert_eq!(in_error[0]["value"], json!("1e+00"), "{in_error:?}");
    for quiet in [
        "SvcHandlerDown",
        "SvcHandlerNotReady",
        "SvcHandlerWatchStalled",
    ] {
        assert!(
            !alerts.iter().any(|x| x["labels"]["alertname"] == quiet),
            "{quiet} active: {alerts:?}"
        );
    }
}

/// `promtool check rules` accepts dashboards/alerts.yml, and every alert
/// carries summary, description and runbook.
#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(ROOT).join("dashboards/alerts.yml");
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules: {text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let yaml = std::fs::read_to_string(&rules).unwrap();
    let alerts = yaml.matches("- alert:").count();
    assert!(alerts >= 6, "{alerts} alerts");
    for key in ["summary:", "description:", "runbook:"] {
        assert_eq!(yaml.matches(key).count(), alerts, "every alert has {key}");
    }
}
