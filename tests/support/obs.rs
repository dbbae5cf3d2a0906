//! Helpers of the observability tests (tests/obs_*.rs): the daemon with JSON
//! logs, its /metrics parsed, Prometheus' binaries, the contract's keys, and
//! a scenario with one service in each outcome. Each obs_* binary includes
//! this file with `#[path = "support/obs.rs"] mod obs;` next to `mod support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use svc_handler::consul::QueryOptions;

use crate::support::daemon::DaemonProc;
use crate::support::{prefix, shared};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const BIN: &str = env!("CARGO_BIN_EXE_svc-handler");

// ---------------------------------------------------------------- helpers

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Polls `f` until it gives `Some`, or panics with `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `prometheus` and `promtool`: the env vars, else scripts/install-prometheus.
pub fn prom_bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        if let (Ok(p), Ok(t)) = (
            std::env::var("PROMETHEUS_BIN"),
            std::env::var("PROMTOOL_BIN"),
        ) {
            return (PathBuf::from(p), PathBuf::from(t));
        }
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/install-prometheus"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-prometheus");
        assert!(
            out.status.success(),
            "scripts/install-prometheus failed; set PROMETHEUS_BIN and PROMTOOL_BIN"
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 paths");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(lines.len() >= 2, "install-prometheus printed {text:?}");
        (
            PathBuf::from(lines[lines.len() - 2]),
            PathBuf::from(lines[lines.len() - 1]),
        )
    })
}

pub fn promtool() -> &'static Path {
    &prom_bins().1
}

/// Keys of the contract, under a test prefix.
pub fn base_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/desired/default/default/{name}/base.json")
}

pub fn observed_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/observed/default/default/{name}/observed.json")
}

pub fn put_base(prefix: &str, name: &str, body: &Value) {
    let key = base_key(prefix, name);
    block_on(async {
        shared()
            .client()
            .kv_put(&key, &serde_json::to_vec(body).unwrap())
            .await
            .expect("kv put base.json")
    });
}

pub fn observed(prefix: &str, name: &str) -> Option<Value> {
    let key = observed_key(prefix, name);
    block_on(async {
        let (pair, _) = shared()
            .client()
            .kv_get(&key, &QueryOptions::consistent())
            .await
            .expect("kv get observed.json");
        pair.map(|p| serde_json::from_slice(&p.value).expect("observed.json is JSON"))
    })
}

/// The last segment of a test prefix: makes service names unique (config
/// entries are global in Consul, not under the prefix).
pub fn tag(prefix: &str) -> String {
    prefix.rsplit('/').next().unwrap().to_string()
}

// ------------------------------------------------------ the daemon process

/// `svc-handler run` with JSON logs, on `metrics_port` (a free one if `None`).
pub fn start_daemon(
    consul: &str,
    prefix: &str,
    metrics_port: Option<u16>,
    env: &[(&str, &str)],
) -> DaemonProc {
    let mut b = DaemonProc::builder(consul, prefix)
        .instance("obs-test")
        .log_format("json")
        .env(env);
    if let Some(port) = metrics_port {
        b = b.metrics_port(port);
    }
    b.start()
}

/// `/metrics`, parsed; `None` while the server does not answer.
pub fn scrape(d: &DaemonProc) -> Option<Exposition> {
    match d.get("/metrics") {
        Some((200, body)) => Some(Exposition::parse(&body)),
        _ => None,
    }
}

// ------------------------------------------------- the metrics exposition

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The Prometheus text format, parsed just enough for the checks here.
#[derive(Debug, Default)]
pub struct Exposition {
    pub text: String,
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition {
            text: text.to_string(),
            ..Default::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (n, t) = (it.next().unwrap(), it.next().unwrap());
                e.types.insert(n.to_string(), t.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect("closing brace");
                    (
                        &line[..open],
                        parse_labels(&line[open + 1..close]),
                        &line[close + 1..],
                    )
                }
                None => {
                    let sp = line.find(' ').expect("a value");
                    (&line[..sp], BTreeMap::new(), &line[sp..])
                }
            };
            let value = rest.split_whitespace().next().unwrap();
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            e.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        e
    }

    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Sum of every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

pub fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} has a quoted value");
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key.trim().to_string(), val);
    }
    out
}

// ----------------------------------------------------------- the scenario

/// One service in each outcome, under a fresh prefix. The daemon talks to
/// Consul through [`Scenario::consul_url`], a proxy that makes Consul store
/// the `error` service's defaults differently from what was written (on a
/// real 1.8.7 every other failure is foreseen or final: `invalid`).
pub struct Scenario {
    pub prefix: String,
    pub applied: Vec<String>,
    pub error: String,
    pub invalid: String,
    pub conflict: String,
    proxy: crate::support::rewrite::Rewriter,
}

impl Scenario {
    pub fn new(test: &str) -> Scenario {
        let prefix = prefix(test);
        let t = tag(&prefix);
        Scenario {
            applied: vec![
                format!("web-{t}"),
                format!("api-{t}"),
                format!("routed-{t}"),
            ],
            error: format!("differs-{t}"),
            invalid: format!("bogus-{t}"),
            conflict: format!("foreign-{t}"),
            proxy: {
                let proxy = crate::support::rewrite::Rewriter::start(&shared().url());
                let name = format!("differs-{t}");
                proxy.store_differently("service-defaults", &name, "Protocol", json!("http2"));
                proxy
            },
            prefix,
        }
    }

    /// Where the daemon finds Consul.
    pub fn consul_url(&self) -> String {
        self.proxy.url()
    }

    /// An entry that exists without svc-handler's mark: a base.json for the
    /// same service is then a conflict.
    pub fn create_foreign_entry(&self) {
        let entry = json!({"Kind": "service-defaults", "Name": self.conflict, "Protocol": "http"});
        assert!(block_on(async {
            shared()
                .client()
                .config_put(&entry)
                .await
                .expect("config put")
        }));
    }

    /// Writes every base.json.
    pub fn write(&self) {
        let p = &self.prefix;
        put_base(
            p,
            &self.applied[0],
            &json!({"defaults": {"Protocol": "http"}}),
        );
        put_base(
            p,
            &self.applied[1],
            &json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": "5s"}}),
        );
        put_base(
            p,
            &self.applied[2],
            &json!({"defaults": {"Protocol": "http"},
                    "router": {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}}}]}}),
        );
        // Consul (the proxy) stores Protocol http2: an error, not rewritten.
        put_base(p, &self.error, &json!({"defaults": {"Protocol": "http"}}));
        put_base(p, &self.invalid, &json!({"bogus": 1}));
        put_base(
            p,
            &self.conflict,
            &json!({"defaults": {"Protocol": "http"}}),
        );
    }

    /// Polls `/metrics` until every service has its outcome.
    pub fn wait_outcomes(&self, daemon: &DaemonProc) -> Exposition {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = scrape(daemon) {
                let st = |s: &str| e.value("svc_handler_services", &[("status", s)]);
                if st("applied") == Some(self.applied.len() as f64)
                    && st("error") == Some(1.0)
                    && st("invalid") == Some(1.0)
                    && st("conflict") == Some(1.0)
                {
                    return e;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "outcomes not reached: services {:?}; log:\n{}",
                        e.series("svc_handler_services")
                            .map(|s| (s.labels.clone(), s.value))
                            .collect::<Vec<_>>(),
                        daemon.log_tail(30)
                    );
                }
            }
            assert!(Instant::now() < deadline, "/metrics never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
