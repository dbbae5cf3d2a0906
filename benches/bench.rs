//! The benchmark of svc-handler: `cargo bench --bench bench`.
//!
//! It starts its own Consul dev agent on free loopback ports (nothing leaves
//! the machine), real `svc-handler run` processes and a real `consul watch`,
//! and measures, in one run:
//!
//! 1. the ceiling: Consul's own KV and config-entry (service-defaults) write
//!    rates from this machine, at concurrency 1 and 8;
//! 2. apply latency: single-service changes, one at a time, against an idle
//!    daemon, from `kv_put` of base.json returning to observed.json showing the
//!    new generation (and to the changed entry being visible, for a
//!    like-for-like comparison with the baseline); waits are blocking queries;
//! 3. throughput: new services put at once (half with a router, all linked
//!    into one of two terminating gateways), until every one is applied;
//!    Consul writes per service from the daemon's `/metrics`, and the write
//!    rate as a fraction of the config-entry write ceiling at concurrency 8;
//!    then the same with three daemons on one prefix (every link exactly
//!    once in the gateways; bytes read per service against one daemon's);
//! 4. steady state: a fresh daemon's startup sync of thousands of services
//!    already in sync (it re-checks every service exactly as a periodic
//!    resync does): Consul writes, CPU seconds, bytes read, peak RSS;
//! 5. watch cost: bytes of the desired-prefix watch and wake-ups per applied
//!    change with thousands of services present, and per applied service
//!    during the bulk apply (at a quarter and at the end, to show whether it
//!    grows with the number of services); 5b. drift: hand edits of owned
//!    entries with those services present, timed until put back;
//! 6. a baseline: `consul watch -type=keyprefix` running
//!    `bench/consul-watch-handler` (bash + jq + `consul config write`), with
//!    the same latency and throughput figures.
//!
//! It prints a Markdown report and writes it to `BENCHMARKS.md`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a tiny
//! configuration that still goes through every part, in well under 20 s,
//! writes no file, and exits non-zero only on a real failure (a service never
//! applied, Consul refusing a write, a daemon that does not start).
//!
//! Sizes (environment variables; the full-run default, then the test-mode one):
//!
//! | variable | meaning | full | test |
//! |---|---|---|---|
//! | `BENCH_CEILING_SECS` | seconds per ceiling measurement | 3 | 0.5 |
//! | `BENCH_LATENCY_SERVICES` | services the latency changes go round | 20 | 2 |
//! | `BENCH_LATENCY_CHANGES` | single changes timed (svc-handler) | 200 | 4 |
//! | `BENCH_BULK_SERVICES` | new services put at once (svc-handler) | 1000 | 8 |
//! | `BENCH_STEADY_SERVICES` | services in sync for the resync and watch cost | 5000 | 20 |
//! | `BENCH_WATCH_CHANGES` | single changes timed with those present | 50 | 3 |
//! | `BENCH_DRIFT_EDITS` | hand edits of owned entries timed until put back, with those present | 10 | 2 |
//! | `BENCH_BASELINE_CHANGES` | single changes timed (baseline) | = latency changes | 3 |
//! | `BENCH_BASELINE_SERVICES` | new services put at once (baseline) | = bulk services | 4 |
//! | `BENCH_PUT_CONCURRENCY` | concurrent base.json puts (at most 32) | 32 | 8 |
//! | `BENCH_GATEWAYS` | terminating gateways the links are spread over | 2 | 2 |
//! | `BENCH_IDLE_GAP_MS` | pause before each timed single change (parts 2 and 6) | 250 | 250 |
//! | `BENCH_STEADY_GAP_MS` | pause before each change with the steady-state services present | 3000 | 250 |
//! | `BENCH_CLUSTER_WORLD` | services present for the same row on a 3-server cluster (fsync on; 0: skipped) | 5000 | 0 |
//! | `BENCH_WORKERS` | the daemon's `--workers` | its default (64) | its default |
//! | `BENCH_PARTS` | parts to run, comma-separated, of bulk, three, baseline, steady, world, cluster (the ceiling always runs) | all | all |
//! | `BENCH_OUTPUT` | where the report goes | `BENCHMARKS.md` | not written |
//!
//! The daemons run with `--resync-interval 1h` (no periodic resync falls into
//! a measurement) and `RUST_LOG=info`; everything else is their default.

#[path = "bench/report.rs"]
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use report::render;
use serde_json::{json, Value};
use support::daemon::{parse_metrics, DaemonProc};
use support::{consul_bin, die_with_parent, Agent, Cluster};
use svc_handler::consul::{Client, QueryOptions};
use svc_handler::keys::{Layout, ServiceId};
use svc_handler::records::{Observed, Status};
use svc_handler::watch::next_index;

type Res<T> = Result<T, String>;

fn err(context: &str) -> impl Fn(svc_handler::consul::ConsulError) -> String + '_ {
    move |e| format!("{context}: {e}")
}

// ---------------------------------------------------------------- settings

/// The variables of the header, for the report.
const VARIABLES: [(&str, &str, &str, &str); 20] = [
    (
        "BENCH_CEILING_SECS",
        "seconds per ceiling measurement",
        "3",
        "0.5",
    ),
    (
        "BENCH_LATENCY_SERVICES",
        "services the latency changes go round",
        "20",
        "2",
    ),
    (
        "BENCH_LATENCY_CHANGES",
        "single changes timed (svc-handler)",
        "200",
        "4",
    ),
    (
        "BENCH_BULK_SERVICES",
        "new services put at once (svc-handler)",
        "1000",
        "8",
    ),
    (
        "BENCH_STEADY_SERVICES",
        "services in sync for the resync and the watch cost",
        "5000",
        "20",
    ),
    (
        "BENCH_WATCH_CHANGES",
        "single changes timed with those present",
        "50",
        "3",
    ),
    (
        "BENCH_DRIFT_EDITS",
        "hand edits of owned entries timed until put back, with those present",
        "10",
        "2",
    ),
    (
        "BENCH_BASELINE_CHANGES",
        "single changes timed (baseline)",
        "= latency changes",
        "3",
    ),
    (
        "BENCH_BASELINE_SERVICES",
        "new services put at once (baseline)",
        "= bulk services",
        "4",
    ),
    (
        "BENCH_PUT_CONCURRENCY",
        "concurrent base.json puts (at most 32)",
        "32",
        "8",
    ),
    (
        "BENCH_GATEWAYS",
        "terminating gateways the links are spread over",
        "2",
        "2",
    ),
    (
        "BENCH_IDLE_GAP_MS",
        "pause before each timed single change (parts 2 and 6)",
        "250",
        "250",
    ),
    (
        "BENCH_STEADY_GAP_MS",
        "pause before each change with the steady-state services present",
        "3000",
        "250",
    ),
    (
        "BENCH_WORLD",
        "sizes (services present) for \"Cost as the world grows\", comma-separated",
        "100,5000,20000",
        "5,20",
    ),
    (
        "BENCH_WORLD_CHANGES",
        "single changes timed at each size there",
        "150",
        "5",
    ),
    (
        "BENCH_WORLD_GAP_MS",
        "pause before each change there",
        "300",
        "50",
    ),
    (
        "BENCH_CLUSTER_WORLD",
        "services present for the same row on a 3-server cluster (fsync on; 0: skipped)",
        "5000",
        "0",
    ),
    (
        "BENCH_WORKERS",
        "the daemon's `--workers`",
        "its default (64)",
        "its default",
    ),
    (
        "BENCH_PARTS",
        "parts to run, comma-separated, of bulk, three, baseline, steady, world, cluster (the ceiling always runs)",
        "all",
        "all",
    ),
    (
        "BENCH_OUTPUT",
        "where the report is written",
        "`BENCHMARKS.md`",
        "not written",
    ),
];

struct Sizes {
    quick: bool,
    ceiling: Duration,
    latency_services: usize,
    latency_changes: usize,
    bulk: usize,
    steady: usize,
    watch_changes: usize,
    drift_edits: usize,
    baseline_changes: usize,
    baseline_bulk: usize,
    put_concurrency: usize,
    gateways: usize,
    workers: Option<usize>,
    /// Pause before each timed change of parts 2 and 6, so that it meets an idle daemon.
    idle_gap: Duration,
    /// The same for the changes with the steady-state services present.
    steady_gap: Duration,
    /// Services present for each row of "Cost as the world grows", and
    /// the changes timed at each.
    world: Vec<usize>,
    world_changes: usize,
    /// Services present for the same row on a three-server cluster (0: none).
    cluster_world: usize,
    /// Pause before each change there.
    world_gap: Duration,
    output: Option<PathBuf>,
    /// The parts to run (`BENCH_PARTS`); the ceiling always runs.
    parts: Vec<String>,
}

/// Every part `BENCH_PARTS` may name, in the order they run.
const PARTS: [&str; 6] = ["bulk", "three", "baseline", "steady", "world", "cluster"];

fn parts() -> Res<Vec<String>> {
    let text = std::env::var("BENCH_PARTS").unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(PARTS.iter().map(|p| p.to_string()).collect());
    }
    text.split(',')
        .map(|p| {
            let p = p.trim();
            if PARTS.contains(&p) {
                Ok(p.to_string())
            } else {
                Err(format!(
                    "BENCH_PARTS: {p:?} is none of {}",
                    PARTS.join(", ")
                ))
            }
        })
        .collect()
}

fn world_sizes(quick: bool) -> Res<Vec<usize>> {
    let text = std::env::var("BENCH_WORLD")
        .unwrap_or_else(|_| if quick { "5,20" } else { "100,5000,20000" }.to_string());
    text.split(',')
        .map(|n| n.trim().parse::<usize>().map(|n| n.max(1)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("BENCH_WORLD={text:?}: {e}"))
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
        _ => Ok(default),
    }
}

impl Sizes {
    fn from_env(quick: bool) -> Res<Sizes> {
        let pick = |full: usize, test: usize| if quick { test } else { full };
        let latency_changes = env_num("BENCH_LATENCY_CHANGES", pick(200, 4))?;
        let bulk = env_num("BENCH_BULK_SERVICES", pick(1000, 8))?;
        let secs: f64 = env_num("BENCH_CEILING_SECS", if quick { 0.5 } else { 3.0 })?;
        let s = Sizes {
            quick,
            ceiling: Duration::from_secs_f64(secs.clamp(0.1, 60.0)),
            latency_services: env_num("BENCH_LATENCY_SERVICES", pick(20, 2))?.max(1),
            latency_changes: latency_changes.max(1),
            bulk: bulk.max(4),
            steady: env_num("BENCH_STEADY_SERVICES", pick(5000, 20))?.max(1),
            watch_changes: env_num("BENCH_WATCH_CHANGES", pick(50, 3))?.max(1),
            drift_edits: env_num("BENCH_DRIFT_EDITS", pick(10, 2))?.max(1),
            baseline_changes: env_num("BENCH_BASELINE_CHANGES", pick(latency_changes, 3))?.max(1),
            baseline_bulk: env_num("BENCH_BASELINE_SERVICES", pick(bulk, 4))?.max(2),
            put_concurrency: env_num("BENCH_PUT_CONCURRENCY", pick(32, 8))?.clamp(1, 32),
            gateways: env_num("BENCH_GATEWAYS", 2)?.max(1),
            idle_gap: Duration::from_millis(env_num("BENCH_IDLE_GAP_MS", 250)?),
            steady_gap: Duration::from_millis(env_num(
                "BENCH_STEADY_GAP_MS",
                if quick { 250 } else { 3000 },
            )?),
            world: world_sizes(quick)?,
            world_changes: env_num("BENCH_WORLD_CHANGES", pick(150, 5))?.max(1),
            cluster_world: env_num("BENCH_CLUSTER_WORLD", if quick { 0 } else { 5000 })?,
            world_gap: Duration::from_millis(env_num(
                "BENCH_WORLD_GAP_MS",
                if quick { 50 } else { 300 },
            )?),
            workers: match std::env::var("BENCH_WORKERS") {
                Ok(_) => Some(env_num("BENCH_WORKERS", 4)?.max(1)),
                Err(_) => None,
            },
            parts: parts()?,
            output: if quick {
                None
            } else {
                Some(match std::env::var("BENCH_OUTPUT") {
                    Ok(p) if !p.is_empty() => PathBuf::from(p),
                    _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"),
                })
            },
        };
        Ok(s)
    }

    /// A deadline scaled for the mode: test runs get generous fixed limits.
    fn deadline(&self, full: Duration, quick: Duration) -> Instant {
        Instant::now() + if self.quick { quick } else { full }
    }
}

// ---------------------------------------------------------------- metrics

/// Write operations of svc-handler's Consul client, as its `op` labels name them.
fn is_write_op(op: &str) -> bool {
    matches!(
        op,
        "kv.put"
            | "kv.cas"
            | "kv.acquire"
            | "kv.release"
            | "config.cas"
            | "config.put"
            | "config.delete"
            | "txn"
            | "session.create"
            | "session.renew"
            | "session.destroy"
    ) || op.starts_with("kv.delete")
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// One scrape of a daemon's `/metrics`, with its CPU time from /proc.
#[derive(Clone, Default)]
struct Scrape(HashMap<String, f64>, Option<f64>);

impl Scrape {
    async fn of(d: &DaemonProc) -> Res<Scrape> {
        let text = d
            .metrics_text()
            .await
            .ok_or_else(|| format!("the daemon's /metrics did not answer:\n{}", tail(d)))?;
        Ok(Scrape(parse_metrics(&text), cpu_seconds(d.pid())))
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum of a metric's series whose `op` label passes `keep`.
    fn sum_ops(&self, metric: &str, keep: impl Fn(&str) -> bool) -> f64 {
        let head = format!("{metric}{{");
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(&head))
            .filter(|(s, _)| label(s, "op").is_some_and(&keep))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }

    fn writes(&self) -> f64 {
        self.sum_ops("svc_handler_consul_requests_total", is_write_op)
    }

    fn writes_by_op(&self) -> Vec<(String, f64)> {
        self.requests_by_op(is_write_op)
    }

    fn reads_by_op(&self) -> Vec<(String, f64)> {
        self.requests_by_op(|op| !is_write_op(op))
    }

    fn requests_by_op(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, f64)> {
        let mut by: HashMap<String, f64> = HashMap::new();
        for (s, v) in &self.0 {
            if s.starts_with("svc_handler_consul_requests_total{") {
                if let Some(op) = label(s, "op").filter(|op| keep(op)) {
                    *by.entry(op.to_string()).or_default() += v;
                }
            }
        }
        let mut v: Vec<_> = by.into_iter().filter(|(_, n)| *n > 0.0).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Bytes read (decoded) by operation.
    fn bytes_by_op(&self) -> Vec<(String, f64)> {
        let mut by: HashMap<String, f64> = HashMap::new();
        for (s, v) in &self.0 {
            if s.starts_with("svc_handler_consul_response_bytes_total{") {
                if let Some(op) = label(s, "op") {
                    *by.entry(op.to_string()).or_default() += v;
                }
            }
        }
        let mut v: Vec<_> = by.into_iter().filter(|(_, n)| *n > 0.0).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn bytes(&self, op: Option<&str>) -> f64 {
        self.sum_ops("svc_handler_consul_response_bytes_total", |o| {
            op.is_none_or(|want| want == o)
        })
    }

    /// Bytes as received (gzip-compressed when Consul compressed them).
    fn wire(&self) -> f64 {
        self.sum_ops("svc_handler_consul_response_wire_bytes_total", |_| true)
    }

    fn wakeups(&self) -> f64 {
        self.get("svc_handler_watch_wakeups_total")
    }

    /// CPU seconds: from /proc (clock ticks), else the metric (whole seconds).
    fn cpu(&self) -> f64 {
        self.1
            .unwrap_or_else(|| self.get("process_cpu_seconds_total"))
    }

    fn reconciles(&self, result: &str) -> f64 {
        self.get(&format!(
            "svc_handler_reconcile_total{{result=\"{result}\"}}"
        ))
    }
}

/// What a daemon did between two scrapes.
struct Delta {
    writes: f64,
    writes_by_op: Vec<(String, f64)>,
    reads_by_op: Vec<(String, f64)>,
    /// Bytes read (decoded) by operation.
    bytes_by_op: Vec<(String, f64)>,
    list_bytes: f64,
    config_list_bytes: f64,
    all_bytes: f64,
    /// All of it as received on the wire.
    all_wire: f64,
    wakeups: f64,
    cpu: f64,
}

fn delta(a: &Scrape, b: &Scrape) -> Delta {
    let by_op = |a: Vec<(String, f64)>, b: Vec<(String, f64)>| {
        let before: HashMap<String, f64> = a.into_iter().collect();
        b.into_iter()
            .map(|(op, n)| {
                let d = n - before.get(&op).copied().unwrap_or(0.0);
                (op, d)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect()
    };
    Delta {
        writes: b.writes() - a.writes(),
        writes_by_op: by_op(a.writes_by_op(), b.writes_by_op()),
        reads_by_op: by_op(a.reads_by_op(), b.reads_by_op()),
        bytes_by_op: by_op(a.bytes_by_op(), b.bytes_by_op()),
        list_bytes: b.bytes(Some("kv.list")) - a.bytes(Some("kv.list")),
        config_list_bytes: b.bytes(Some("config.list")) - a.bytes(Some("config.list")),
        all_bytes: b.bytes(None) - a.bytes(None),
        all_wire: b.wire() - a.wire(),
        wakeups: b.wakeups() - a.wakeups(),
        cpu: b.cpu() - a.cpu(),
    }
}

/// CPU seconds (user + system) a process used so far, from /proc/<pid>/stat
/// in clock ticks: finer than `process_cpu_seconds_total`, which the
/// prometheus crate keeps in whole seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| (utime + stime) / hz)
}

/// Peak resident set size of a process (VmHWM), in bytes.
fn peak_rss(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn tail(d: &DaemonProc) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------- services

/// How many terminating gateways the services' links are spread over
/// (`BENCH_GATEWAYS`, 2 by default).
static GATEWAYS: AtomicUsize = AtomicUsize::new(2);

/// A service like the ones users write: half with a router (so http), all
/// linked into one of the terminating gateways.
fn full_spec(i: usize, gateway_prefix: &str, timeout: &str) -> Value {
    let router = i % 2 == 0;
    let gateway = (i / 2) % GATEWAYS.load(Ordering::Relaxed).max(1);
    let mut v = json!({
        "defaults": {"Protocol": if router { "http" } else { "tcp" }},
        "resolver": {"ConnectTimeout": timeout},
        "terminating_gateway": {"Gateway": format!("{gateway_prefix}-{gateway}")},
    });
    if router {
        v["router"] = json!({"Routes": [{"Match": {"HTTP": {"PathPrefix": format!("/x{i}")}}}]});
    }
    v
}

/// A simple service: defaults and resolver only.
fn simple_spec(timeout: &str) -> Value {
    json!({"defaults": {"Protocol": "http"}, "resolver": {"ConnectTimeout": timeout}})
}

/// The `n`-th changed ConnectTimeout: 100ms to 899ms, which Consul prints back
/// in exactly this form.
fn timeout_for(n: usize) -> String {
    format!("{}ms", 100 + n % 800)
}

fn sid(name: &str) -> ServiceId {
    ServiceId::new("default", "default", name).expect("a valid service name")
}

/// Puts every (key, value) with at most `concurrency` requests at once.
async fn put_all(client: &Client, items: Vec<(String, Vec<u8>)>, concurrency: usize) -> Res<()> {
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, items.len().max(1)) {
        let (c, items, next) = (client.clone(), Arc::clone(&items), Arc::clone(&next));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((k, v)) = items.get(i) else {
                    return Ok::<(), String>(());
                };
                c.kv_put(k, v).await.map_err(err("put base.json"))?;
            }
        });
    }
    let mut first = Ok(());
    while let Some(r) = set.join_next().await {
        let r = r
            .map_err(|e| format!("a put task failed: {e}"))
            .and_then(|r| r);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// A read blocking past `index` until at most `deadline`; index 0 (the first
/// read, or after [`next_index`] reset it) does not block.
fn blocking(index: u64, deadline: Instant) -> QueryOptions {
    let left = deadline.saturating_duration_since(Instant::now());
    QueryOptions::blocking(
        index,
        left.clamp(Duration::from_millis(100), Duration::from_secs(10)),
    )
}

/// Waits (blocking queries on observed.json) until it shows `generation`
/// applied; the time it took from `t0`.
async fn wait_observed(
    client: &Client,
    key: &str,
    mut index: u64,
    generation: u64,
    t0: Instant,
    deadline: Instant,
) -> Res<Duration> {
    let mut last = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "{key}: generation {generation} not applied in time; last seen: {last:?}"
            ));
        }
        let (pair, meta) = client
            .kv_get(key, &blocking(index, deadline))
            .await
            .map_err(err("read observed.json"))?;
        if let Some(p) = pair {
            let o: Observed = serde_json::from_slice(&p.value)
                .map_err(|e| format!("{key}: not an observed.json: {e}"))?;
            if o.generation >= generation {
                match o.status {
                    Status::Applied => return Ok(t0.elapsed()),
                    Status::Invalid | Status::Conflict if o.generation == generation => {
                        return Err(format!("{key}: {:?}: {:?}", o.status, o.message));
                    }
                    _ => {}
                }
            }
            last = Some((o.status, o.generation, o.message));
        }
        index = next_index(index, meta.index);
    }
}

/// Waits (blocking queries) until the service's resolver shows `timeout`.
async fn wait_resolver(
    client: &Client,
    name: &str,
    mut index: u64,
    timeout: &str,
    t0: Instant,
    deadline: Instant,
) -> Res<Duration> {
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "service-resolver {name} never showed ConnectTimeout {timeout}"
            ));
        }
        let (entry, meta) = client
            .config_get("service-resolver", name, &blocking(index, deadline))
            .await
            .map_err(err("read service-resolver"))?;
        if entry.is_some_and(|e| e.0["ConnectTimeout"] == timeout) {
            return Ok(t0.elapsed());
        }
        index = next_index(index, meta.index);
    }
}

/// One timed change of a service's resolver: (to observed.json, to the entry
/// visible). `observed` is false for the baseline, which writes none.
async fn timed_change(
    client: &Client,
    layout: &Layout,
    name: &str,
    body: &Value,
    timeout: &str,
    observed: bool,
    deadline: Instant,
) -> Res<(Option<Duration>, Duration)> {
    let id = sid(name);
    let (base_key, obs_key) = (layout.base_key(&id), layout.observed_key(&id));
    // Indexes to wait past, read before the clock starts.
    let (_, ometa) = client
        .kv_get(&obs_key, &QueryOptions::default())
        .await
        .map_err(err("read observed.json"))?;
    let (_, rmeta) = client
        .config_get("service-resolver", name, &QueryOptions::default())
        .await
        .map_err(err("read service-resolver"))?;
    let value = serde_json::to_vec(body).expect("JSON");
    client
        .kv_put(&base_key, &value)
        .await
        .map_err(err("put base.json"))?;
    let t0 = Instant::now();
    let to_observed = async {
        if !observed {
            return Ok(None);
        }
        let (pair, _) = client
            .kv_get(&base_key, &QueryOptions::consistent())
            .await
            .map_err(err("read base.json back"))?;
        let generation = pair
            .ok_or_else(|| format!("{base_key} vanished"))?
            .modify_index;
        wait_observed(client, &obs_key, ometa.index, generation, t0, deadline)
            .await
            .map(Some)
    };
    let to_entry = wait_resolver(client, name, rmeta.index, timeout, t0, deadline);
    let (a, b) = tokio::join!(to_observed, to_entry);
    Ok((a?, b?))
}

/// Applied-service counting on `<prefix>/observed/` with blocking queries
/// (keys only while counting, one full listing to check the statuses), at
/// most ten reads a second so the bench does not compete with the daemon.
struct Progress {
    /// When `checkpoint` services had an observed.json: (count, scrape, at).
    checkpoint: Option<(usize, Scrape, Instant)>,
}

/// Puts every (key, value), `sizes.put_concurrency` at a time, while waiting
/// (as [`wait_all_applied`]) until every one of `names` is applied.
async fn put_and_wait(
    client: &Client,
    layout: &Layout,
    items: Vec<(String, Vec<u8>)>,
    names: &HashSet<String>,
    checkpoint: Option<(usize, &DaemonProc)>,
    sizes: &Sizes,
    deadline: Instant,
) -> Res<(Instant, Progress)> {
    let (p, w) = tokio::join!(
        put_all(client, items, sizes.put_concurrency),
        wait_all_applied(client, layout, names, checkpoint, deadline)
    );
    p?;
    w
}

async fn wait_all_applied(
    client: &Client,
    layout: &Layout,
    names: &HashSet<String>,
    checkpoint: Option<(usize, &DaemonProc)>,
    deadline: Instant,
) -> Res<(Instant, Progress)> {
    let prefix = layout.observed_prefix();
    let mut index = 0;
    let mut progress = Progress { checkpoint: None };
    let mut last_count = 0;
    loop {
        let asked = Instant::now();
        if asked > deadline {
            return Err(format!(
                "only {last_count} of {} services have an observed.json in time",
                names.len()
            ));
        }
        let opts = if index == 0 {
            QueryOptions::default()
        } else {
            blocking(index, deadline)
        };
        let (keys, meta) = client
            .kv_keys(&prefix, None, &opts)
            .await
            .map_err(err("list observed keys"))?;
        let count = keys
            .iter()
            .filter_map(|k| k.rsplit('/').nth(1))
            .filter(|n| names.contains(*n))
            .count();
        last_count = count;
        if let Some((at, d)) = checkpoint {
            if progress.checkpoint.is_none() && count >= at {
                progress.checkpoint = Some((count, Scrape::of(d).await?, Instant::now()));
            }
        }
        if count >= names.len() {
            let (pairs, _) = client
                .kv_list(&prefix, &QueryOptions::default())
                .await
                .map_err(err("list observed.json"))?;
            let mut applied = 0;
            let mut final_bad = Vec::new();
            for p in &pairs {
                let Some(name) = p.key.rsplit('/').nth(1) else {
                    continue;
                };
                if !names.contains(name) {
                    continue;
                }
                let o: Observed = serde_json::from_slice(&p.value)
                    .map_err(|e| format!("{}: not an observed.json: {e}", p.key))?;
                match o.status {
                    Status::Applied => applied += 1,
                    Status::Invalid | Status::Conflict => {
                        final_bad.push(format!("{name}: {:?}: {:?}", o.status, o.message))
                    }
                    Status::Error | Status::Paused => {}
                }
            }
            if !final_bad.is_empty() {
                return Err(format!("services refused: {}", final_bad.join("; ")));
            }
            if applied >= names.len() {
                return Ok((Instant::now(), progress));
            }
        }
        index = next_index(index, meta.index);
        let pause = Duration::from_millis(100).saturating_sub(asked.elapsed());
        tokio::time::sleep(pause).await;
    }
}

// ---------------------------------------------------------------- stats

#[derive(Clone, Copy, Default)]
struct Dist {
    n: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

fn dist(samples: &[Duration]) -> Dist {
    let mut v = samples.to_vec();
    v.sort();
    let at = |q: f64| {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Dist {
        n: v.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: v.last().copied().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- results

#[derive(Default)]
struct Ceiling {
    kv: [f64; 2],
    config: [f64; 2],
}

#[derive(Default)]
struct Bulk {
    services: usize,
    secs: f64,
    writes: f64,
    writes_by_op: Vec<(String, f64)>,
    reads_by_op: Vec<(String, f64)>,
    bytes_by_op: Vec<(String, f64)>,
    cpu: f64,
    bytes: f64,
    /// `bytes` as received on the wire.
    wire: f64,
    peak_rss: Option<u64>,
    /// (applied services, kv.list bytes, config.list bytes, wake-ups, CPU
    /// seconds) at the checkpoint and the end.
    early: Option<(usize, f64, f64, f64, f64)>,
    end: Option<(usize, f64, f64, f64, f64)>,
}

/// Three daemons on one prefix, the same kind of bulk of new services.
struct Three {
    services: usize,
    secs: f64,
    /// Links to the bulk's services in its terminating gateways (one each wanted).
    links: usize,
    /// The three daemons' deltas, summed.
    writes: f64,
    writes_by_op: Vec<(String, f64)>,
    bytes_by_op: Vec<(String, f64)>,
    bytes: f64,
    wire: f64,
    cpu: f64,
}

#[derive(Default)]
struct Baseline {
    skipped: Option<String>,
    to_entry: Option<Dist>,
    services: usize,
    /// None when it did not finish before its deadline.
    secs: Option<f64>,
    done: usize,
    elapsed: f64,
    writes: f64,
}

#[derive(Default)]
struct Steady {
    services: usize,
    setup_secs: f64,
    sync_secs: f64,
    writes: f64,
    writes_by_op: Vec<(String, f64)>,
    cpu: f64,
    bytes: f64,
    peak_rss: Option<u64>,
    unchanged: f64,
    applied: f64,
    changes: usize,
    list_bytes: f64,
    config_list_bytes: f64,
    wakeups: f64,
    change_cpu: f64,
    to_observed: Option<Dist>,
    /// Hand edit of an owned resolver to the entry put back.
    drift_fix: Option<Dist>,
    /// The drift listings' config.list bytes per hand edit.
    drift_list_bytes: f64,
}

/// One row of "Cost as the world grows": single changes with `services`
/// present, per change.
struct WorldRow {
    /// Which Consul (`Under::label`).
    consul: &'static str,
    services: usize,
    changes: usize,
    to_observed: Dist,
    /// Every byte the daemon read from Consul, decoded.
    bytes: f64,
    /// The same as received (gzip-compressed).
    wire: f64,
    /// What the desired watch read (shards and guard).
    watch_bytes: f64,
    daemon_cpu: f64,
    /// Consul's CPU per change: the median of the runs of changes, their
    /// mean over all changes, and each run's.
    consul_cpu: f64,
    consul_cpu_mean: f64,
    consul_chunks: Vec<f64>,
    /// How long Consul took to settle after the setup, and its CPU a
    /// second then (see [`Under::settle`]).
    settled: Duration,
    idle_cpu: f64,
    rss: Option<u64>,
    shards: f64,
    /// Requests per change by operation.
    requests_by_op: Vec<(String, f64)>,
}

#[derive(Default)]
struct Results {
    cores: usize,
    consul_version: String,
    ceiling: Option<Ceiling>,
    /// After the ceiling: how long Consul took to settle, and its CPU a
    /// second then.
    after_ceiling: Option<(Duration, f64)>,
    to_observed: Option<Dist>,
    to_entry: Option<Dist>,
    back_to_back: Option<Dist>,
    bulk: Option<Bulk>,
    three: Option<Three>,
    steady: Option<Steady>,
    world: Vec<WorldRow>,
    baseline: Option<Baseline>,
    parts: Vec<(String, Duration)>,
}

// ---------------------------------------------------------------- parts

async fn ceiling(client: &Client, sizes: &Sizes) -> Res<Ceiling> {
    let mut c = Ceiling::default();
    let value = serde_json::to_vec(&full_spec(0, "gw", "5s")).expect("JSON");
    for (slot, conc) in [(0, 1usize), (1, 8)] {
        for config in [false, true] {
            let count = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let end = start + sizes.ceiling;
            let mut set = tokio::task::JoinSet::new();
            for w in 0..conc {
                let (cl, count, value) = (client.clone(), Arc::clone(&count), value.clone());
                set.spawn(async move {
                    let mut i = 0usize;
                    while Instant::now() < end {
                        let n = w * 1000 + i % 100;
                        i += 1;
                        if config {
                            let e = json!({"Kind": "service-defaults", "Name": format!("ceiling-{n}"), "Protocol": "http"});
                            if !cl.config_put(&e).await.map_err(err("config put"))? {
                                return Err("Consul answered false to a config put".to_string());
                            }
                        } else {
                            cl.kv_put(&format!("bench/ceiling/{n}"), &value)
                                .await
                                .map_err(err("kv put"))?;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| format!("a ceiling task failed: {e}"))??;
            }
            let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            if config {
                c.config[slot] = rate;
            } else {
                c.kv[slot] = rate;
            }
        }
    }
    // Leave nothing behind that the daemons' drift watches would list.
    let (entries, _) = client
        .config_list("service-defaults", &QueryOptions::default())
        .await
        .map_err(err("list service-defaults"))?;
    for e in entries.iter().filter(|e| e.name().starts_with("ceiling-")) {
        client
            .config_delete("service-defaults", e.name())
            .await
            .map_err(err("delete a ceiling entry"))?;
    }
    client
        .kv_delete_tree("bench/ceiling/")
        .await
        .map_err(err("delete the ceiling keys"))?;
    Ok(c)
}

fn start_daemon(url: &str, prefix: &str, instance: &str, sizes: &Sizes) -> DaemonProc {
    let workers = sizes.workers.map(|w| w.to_string());
    let mut extra = vec!["--resync-interval", "1h"];
    if let Some(w) = &workers {
        extra.extend(["--workers", w.as_str()]);
    }
    DaemonProc::start(url, prefix, instance, &extra, &[("RUST_LOG", "info")])
}

async fn wait_ready(d: &DaemonProc, deadline: Instant) -> Res<Instant> {
    loop {
        if d.readyz().await == Some(200) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("the daemon was not ready in time:\n{}", tail(d)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop_daemon(mut d: DaemonProc) {
    d.stop(Duration::from_secs(15));
}

/// Parts 2 and 3 (and the bulk half of 5) against one daemon.
async fn daemon_latency_and_bulk(
    agent: &Agent,
    client: &Client,
    sizes: &Sizes,
    r: &mut Results,
) -> Res<()> {
    let prefix = "bench/svc-handler";
    let layout = Layout::new(prefix).expect("a valid prefix");
    let d = start_daemon(&agent.url(), prefix, "bench-1", sizes);
    wait_ready(
        &d,
        sizes.deadline(Duration::from_secs(60), Duration::from_secs(30)),
    )
    .await?;

    // The services the changes go round, applied first.
    let names: Vec<String> = (0..sizes.latency_services)
        .map(|i| format!("lat-{i}"))
        .collect();
    let items = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = full_spec(i, "gw", "5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    put_all(client, items, sizes.put_concurrency).await?;
    let set: HashSet<String> = names.iter().cloned().collect();
    wait_all_applied(
        client,
        &layout,
        &set,
        None,
        sizes.deadline(Duration::from_secs(120), Duration::from_secs(30)),
    )
    .await
    .map_err(|e| format!("latency services: {e}\n{}", tail(&d)))?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t = Instant::now();
    let (mut obs, mut ent) = (Vec::new(), Vec::new());
    let spaced = sizes.latency_changes;
    let back_to_back = (spaced / 4).max(1);
    let mut burst = Vec::new();
    for k in 0..spaced + back_to_back {
        // Spaced changes meet an idle daemon; the last ones follow each other
        // as soon as the previous one is applied.
        if k < spaced {
            tokio::time::sleep(sizes.idle_gap).await;
        }
        let i = k % names.len();
        let timeout = timeout_for(k);
        let body = full_spec(i, "gw", &timeout);
        let deadline = sizes.deadline(Duration::from_secs(30), Duration::from_secs(20));
        let (o, e) = timed_change(client, &layout, &names[i], &body, &timeout, true, deadline)
            .await
            .map_err(|e| format!("latency change {k}: {e}\n{}", tail(&d)))?;
        if k < spaced {
            obs.push(o.expect("measured"));
            ent.push(e);
        } else {
            burst.push(o.expect("measured"));
        }
    }
    r.to_observed = Some(dist(&obs));
    r.to_entry = Some(dist(&ent));
    r.back_to_back = Some(dist(&burst));
    r.parts.push(("apply latency".into(), t.elapsed()));

    // Throughput: new services at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let bulk_names: Vec<String> = (0..sizes.bulk).map(|i| format!("bulk-{i}")).collect();
    let items = bulk_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = full_spec(i, "gw", "5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let set: HashSet<String> = bulk_names.iter().cloned().collect();
    let before = Scrape::of(&d).await?;
    let start = Instant::now();
    let deadline = sizes.deadline(
        Duration::from_secs(120 + sizes.bulk as u64 / 2),
        Duration::from_secs(30),
    );
    let checkpoint = Some((sizes.bulk / 4, &d));
    let (done, progress) = put_and_wait(client, &layout, items, &set, checkpoint, sizes, deadline)
        .await
        .map_err(|e| format!("bulk apply: {e}\n{}", tail(&d)))?;
    let after = Scrape::of(&d).await?;
    let secs = done.duration_since(start).as_secs_f64();
    let all = delta(&before, &after);
    let point = |n: usize, s: &Scrape| {
        let x = delta(&before, s);
        (n, x.list_bytes, x.config_list_bytes, x.wakeups, x.cpu)
    };
    r.bulk = Some(Bulk {
        services: sizes.bulk,
        secs,
        writes: all.writes,
        writes_by_op: all.writes_by_op,
        reads_by_op: all.reads_by_op,
        bytes_by_op: all.bytes_by_op,
        cpu: all.cpu,
        bytes: all.all_bytes,
        wire: all.all_wire,
        peak_rss: peak_rss(d.pid()),
        early: progress.checkpoint.as_ref().map(|(n, s, _)| point(*n, s)),
        end: Some(point(sizes.bulk, &after)),
    });
    r.parts.push(("throughput".into(), t.elapsed()));
    stop_daemon(d).await;
    Ok(())
}

/// Part 3 with three daemons on one fresh prefix: the same kind of bulk of
/// new services (their own names and gateways), every link exactly once in
/// the gateways, and what the three read and wrote together.
async fn three_daemons(agent: &Agent, client: &Client, sizes: &Sizes, r: &mut Results) -> Res<()> {
    let t = Instant::now();
    let prefix = "bench/three";
    let layout = Layout::new(prefix).expect("a valid prefix");
    let ds: Vec<DaemonProc> = ["bench-3a", "bench-3b", "bench-3c"]
        .into_iter()
        .map(|instance| start_daemon(&agent.url(), prefix, instance, sizes))
        .collect();
    for d in &ds {
        wait_ready(
            d,
            sizes.deadline(Duration::from_secs(60), Duration::from_secs(30)),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tails = |ds: &[DaemonProc]| ds.iter().map(tail).collect::<Vec<_>>().join("\n---\n");

    let names: Vec<String> = (0..sizes.bulk).map(|i| format!("three-{i}")).collect();
    let items = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = full_spec(i, "gw3", "5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let set: HashSet<String> = names.iter().cloned().collect();
    let mut before = Vec::new();
    for d in &ds {
        before.push(Scrape::of(d).await?);
    }
    let start = Instant::now();
    let deadline = sizes.deadline(
        Duration::from_secs(120 + sizes.bulk as u64 / 2),
        Duration::from_secs(30),
    );
    let (done, _) = put_and_wait(client, &layout, items, &set, None, sizes, deadline)
        .await
        .map_err(|e| format!("bulk apply, 3 daemons: {e}\n{}", tails(&ds)))?;
    let secs = done.duration_since(start).as_secs_f64();
    let mut after = Vec::new();
    for d in &ds {
        after.push(Scrape::of(d).await?);
    }
    let deltas: Vec<Delta> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| delta(a, b))
        .collect();

    // Every service linked exactly once, over all the gateways.
    let mut links = 0;
    for g in 0..sizes.gateways {
        let name = format!("gw3-{g}");
        let (entry, _) = client
            .config_get("terminating-gateway", &name, &QueryOptions::consistent())
            .await
            .map_err(err("read a terminating gateway"))?;
        links += entry
            .and_then(|e| e.0["Services"].as_array().cloned())
            .map_or(0, |a| {
                a.iter()
                    .filter(|s| s["Name"].as_str().is_some_and(|n| set.contains(n)))
                    .count()
            });
    }
    for d in ds {
        stop_daemon(d).await;
    }
    r.three = Some(Three {
        services: sizes.bulk,
        secs,
        links,
        writes: deltas.iter().map(|x| x.writes).sum(),
        writes_by_op: {
            let mut by: std::collections::BTreeMap<String, f64> = Default::default();
            for (op, n) in deltas.iter().flat_map(|x| &x.writes_by_op) {
                *by.entry(op.clone()).or_default() += n;
            }
            by.into_iter().collect()
        },
        bytes_by_op: {
            let mut by: std::collections::BTreeMap<String, f64> = Default::default();
            for (op, n) in deltas.iter().flat_map(|x| &x.bytes_by_op) {
                *by.entry(op.clone()).or_default() += n;
            }
            by.into_iter().collect()
        },
        bytes: deltas.iter().map(|x| x.all_bytes).sum(),
        wire: deltas.iter().map(|x| x.all_wire).sum(),
        cpu: deltas.iter().map(|x| x.cpu).sum(),
    });
    r.parts.push(("throughput, 3 daemons".into(), t.elapsed()));
    if links != sizes.bulk {
        return Err(format!(
            "3 daemons on the bulk: the terminating gateways gw3-* hold {links} links to the {} \
             services, not exactly one each",
            sizes.bulk
        ));
    }
    Ok(())
}

/// Parts 4 and 5 (steady state): thousands of services applied by one daemon,
/// then a fresh daemon's startup sync of them, then single changes.
async fn steady_state(agent: &Agent, client: &Client, sizes: &Sizes, r: &mut Results) -> Res<()> {
    let t = Instant::now();
    let prefix = "bench/steady";
    let layout = Layout::new(prefix).expect("a valid prefix");
    let names: Vec<String> = (0..sizes.steady).map(|i| format!("ss-{i}")).collect();
    let set: HashSet<String> = names.iter().cloned().collect();
    let mut s = Steady {
        services: sizes.steady,
        ..Default::default()
    };

    // Setup: a daemon applies them all.
    let d = start_daemon(&agent.url(), prefix, "bench-2", sizes);
    wait_ready(
        &d,
        sizes.deadline(Duration::from_secs(60), Duration::from_secs(30)),
    )
    .await?;
    let items = names
        .iter()
        .map(|n| {
            let v = simple_spec("5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let start = Instant::now();
    let deadline = sizes.deadline(
        Duration::from_secs(120 + sizes.steady as u64 / 4),
        Duration::from_secs(30),
    );
    let (done, _) = put_and_wait(client, &layout, items, &set, None, sizes, deadline)
        .await
        .map_err(|e| format!("steady-state setup: {e}\n{}", tail(&d)))?;
    s.setup_secs = done.duration_since(start).as_secs_f64();
    stop_daemon(d).await;
    r.parts.push(("steady-state setup".into(), t.elapsed()));

    // One full re-check of every service: a fresh daemon's startup sync.
    let t = Instant::now();
    let start = Instant::now();
    let d = start_daemon(&agent.url(), prefix, "bench-3", sizes);
    let ready = wait_ready(
        &d,
        sizes.deadline(
            Duration::from_secs(120 + sizes.steady as u64 / 10),
            Duration::from_secs(30),
        ),
    )
    .await?;
    s.sync_secs = ready.duration_since(start).as_secs_f64();
    let synced = Scrape::of(&d).await?;
    s.peak_rss = peak_rss(d.pid());
    s.writes = synced.writes();
    s.writes_by_op = synced.writes_by_op();
    s.cpu = synced.cpu();
    s.bytes = synced.bytes(None);
    s.unchanged = synced.reconciles("unchanged");
    s.applied = synced.reconciles("applied");
    r.parts.push(("resync".into(), t.elapsed()));

    // Watch cost with all of them present: single changes, one at a time.
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Scrape::of(&d).await?;
    let mut obs = Vec::new();
    for k in 0..sizes.watch_changes {
        tokio::time::sleep(sizes.steady_gap).await;
        let i = (k * 7919) % names.len();
        let timeout = timeout_for(k);
        let deadline = sizes.deadline(Duration::from_secs(60), Duration::from_secs(20));
        let (o, _) = timed_change(
            client,
            &layout,
            &names[i],
            &simple_spec(&timeout),
            &timeout,
            true,
            deadline,
        )
        .await
        .map_err(|e| format!("steady-state change {k}: {e}\n{}", tail(&d)))?;
        obs.push(o.expect("measured"));
    }
    let after = Scrape::of(&d).await?;
    let x = delta(&before, &after);
    s.changes = sizes.watch_changes;
    s.list_bytes = x.list_bytes;
    s.config_list_bytes = x.config_list_bytes;
    s.wakeups = x.wakeups;
    s.change_cpu = x.cpu;
    s.to_observed = Some(dist(&obs));
    r.parts.push(("watch cost".into(), t.elapsed()));

    let t = Instant::now();
    let before = Scrape::of(&d).await?;
    let mut fixes = Vec::new();
    for k in 0..sizes.drift_edits {
        tokio::time::sleep(sizes.steady_gap).await;
        let name = &names[(k * 104_729 + 13) % names.len()];
        let deadline = sizes.deadline(Duration::from_secs(60), Duration::from_secs(20));
        let fixed = hand_edit(client, name, deadline)
            .await
            .map_err(|e| format!("drift edit {k}: {e}\n{}", tail(&d)))?;
        fixes.push(fixed);
    }
    let after = Scrape::of(&d).await?;
    s.drift_list_bytes = delta(&before, &after).config_list_bytes / sizes.drift_edits as f64;
    s.drift_fix = Some(dist(&fixes));
    r.parts.push(("drift".into(), t.elapsed()));
    r.steady = Some(s);
    stop_daemon(d).await;
    Ok(())
}

/// Changes an owned resolver's ConnectTimeout by hand, as an operator with
/// `consul config write` would (Meta kept); the time until the daemon has
/// put the recorded value back.
async fn hand_edit(client: &Client, name: &str, deadline: Instant) -> Res<Duration> {
    let (entry, _) = client
        .config_get("service-resolver", name, &QueryOptions::consistent())
        .await
        .map_err(err("read service-resolver"))?;
    let mut body = entry
        .ok_or_else(|| format!("service-resolver {name} is missing"))?
        .0;
    let want = body["ConnectTimeout"]
        .as_str()
        .ok_or_else(|| format!("service-resolver {name} has no ConnectTimeout"))?
        .to_string();
    let obj = body.as_object_mut().expect("an entry is an object");
    obj.remove("CreateIndex");
    obj.remove("ModifyIndex");
    obj.insert("ConnectTimeout".into(), Value::from("99s"));
    client
        .config_put(&body)
        .await
        .map_err(err("hand edit of service-resolver"))?;
    let t0 = Instant::now();
    wait_resolver(client, name, 0, &want, t0, deadline).await
}

/// `consul watch` running the handler script, killed (with its handler) when dropped.
struct ConsulWatch {
    child: Child,
}

impl ConsulWatch {
    fn start(url: &str, prefix: &str, dir: &Path) -> Res<ConsulWatch> {
        let handler = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/consul-watch-handler");
        let log = std::fs::File::create(dir.join("watch.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(consul_bin());
        cmd.args(["watch", "-type=keyprefix", "-prefix"])
            .arg(format!("{prefix}/desired/"))
            .arg(format!("bash {}", handler.display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CONSUL_HTTP_ADDR", url)
            .env("CONSUL_BIN", consul_bin())
            .env("HANDLER_STATE_FILE", dir.join("state"))
            .env("HANDLER_WRITE_LOG", dir.join("writes"))
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("start consul watch: {e}"))?;
        Ok(ConsulWatch { child })
    }
}

impl Drop for ConsulWatch {
    fn drop(&mut self) {
        // The watch and any handler it is running: the group it leads.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn write_count(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("writes"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn watch_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("watch.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Counts, with blocking reads of the terminating gateways, the services
/// whose link the baseline wrote (its last write of a service), then checks
/// their other entries. `Ok(None)` when the deadline passed first.
async fn wait_baseline(
    client: &Client,
    names: &HashSet<String>,
    routers: usize,
    deadline: Instant,
) -> Res<(Option<Instant>, usize)> {
    let mut index = 0;
    let mut linked = 0;
    loop {
        let asked = Instant::now();
        if asked > deadline {
            return Ok((None, linked));
        }
        let opts = if index == 0 {
            QueryOptions::default()
        } else {
            blocking(index, deadline)
        };
        let (gws, meta) = client
            .config_list("terminating-gateway", &opts)
            .await
            .map_err(err("list terminating gateways"))?;
        linked = gws
            .iter()
            .filter(|g| g.name().starts_with("bl-gw-"))
            .flat_map(|g| g.0["Services"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["Name"].as_str().is_some_and(|n| names.contains(n)))
            .count();
        if linked >= names.len() {
            let done = Instant::now();
            for (kind, want) in [
                ("service-defaults", names.len()),
                ("service-resolver", names.len()),
                ("service-router", routers),
            ] {
                let (list, _) = client
                    .config_list(kind, &QueryOptions::default())
                    .await
                    .map_err(err("list entries"))?;
                let n = list.iter().filter(|e| names.contains(e.name())).count();
                if n < want {
                    return Err(format!("baseline: {n} of {want} {kind} entries"));
                }
            }
            return Ok((Some(done), linked));
        }
        index = next_index(index, meta.index);
        let pause = Duration::from_millis(100).saturating_sub(asked.elapsed());
        tokio::time::sleep(pause).await;
    }
}

/// Part 6: the same latency and throughput figures for `consul watch` + handler.
async fn baseline(agent: &Agent, client: &Client, sizes: &Sizes, r: &mut Results) -> Res<()> {
    let mut b = Baseline {
        services: sizes.baseline_bulk,
        ..Default::default()
    };
    if !Path::new("/usr/bin/jq").exists()
        && !Command::new("jq")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        b.skipped = Some("jq is not installed (`apt-get install jq`)".into());
        r.baseline = Some(b);
        return Ok(());
    }
    let t = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let prefix = "bench/baseline";
    let layout = Layout::new(prefix).expect("a valid prefix");
    let watch = ConsulWatch::start(&agent.url(), prefix, dir.path())?;

    let names: Vec<String> = (0..sizes.latency_services)
        .map(|i| format!("bl-lat-{i}"))
        .collect();
    let items = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = full_spec(i, "bl-gw", "5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    put_all(client, items, sizes.put_concurrency).await?;
    let set: HashSet<String> = names.iter().cloned().collect();
    let routers = names.len().div_ceil(2);
    let (done, linked) = wait_baseline(
        client,
        &set,
        routers,
        sizes.deadline(Duration::from_secs(120), Duration::from_secs(30)),
    )
    .await?;
    if done.is_none() {
        return Err(format!(
            "baseline: only {linked} of {} latency services applied:\n{}",
            names.len(),
            watch_log(dir.path())
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ent = Vec::new();
    for k in 0..sizes.baseline_changes {
        tokio::time::sleep(sizes.idle_gap).await;
        let i = k % names.len();
        let timeout = timeout_for(k);
        let body = full_spec(i, "bl-gw", &timeout);
        let deadline = sizes.deadline(Duration::from_secs(60), Duration::from_secs(20));
        let (_, e) = timed_change(client, &layout, &names[i], &body, &timeout, false, deadline)
            .await
            .map_err(|e| format!("baseline change {k}: {e}\n{}", watch_log(dir.path())))?;
        ent.push(e);
    }
    b.to_entry = Some(dist(&ent));
    r.parts.push(("baseline latency".into(), t.elapsed()));

    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bulk: Vec<String> = (0..sizes.baseline_bulk)
        .map(|i| format!("bl-bulk-{i}"))
        .collect();
    let items = bulk
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = full_spec(i, "bl-gw", "5s");
            (layout.base_key(&sid(n)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let set: HashSet<String> = bulk.iter().cloned().collect();
    let writes_before = write_count(dir.path());
    let start = Instant::now();
    let puts = put_all(client, items, sizes.put_concurrency);
    let waiting = wait_baseline(
        client,
        &set,
        bulk.len().div_ceil(2),
        sizes.deadline(
            Duration::from_secs(300).max(Duration::from_millis(900 * bulk.len() as u64)),
            Duration::from_secs(30),
        ),
    );
    let (p, w) = tokio::join!(puts, waiting);
    p?;
    let (done, linked) = w?;
    b.elapsed = start.elapsed().as_secs_f64();
    b.done = linked;
    b.secs = done.map(|d| d.duration_since(start).as_secs_f64());
    b.writes = (write_count(dir.path()) - writes_before) as f64;
    drop(watch);
    r.parts.push(("baseline throughput".into(), t.elapsed()));
    if b.secs.is_none() && sizes.quick {
        return Err(format!(
            "baseline: only {linked} of {} services applied in time:\n{}",
            bulk.len(),
            watch_log(dir.path())
        ));
    }
    r.baseline = Some(b);
    Ok(())
}

// ---------------------------------------------------------------- report

fn command_line(sizes: &Sizes) -> String {
    let mut set: Vec<String> = VARIABLES
        .iter()
        .filter_map(|(v, ..)| std::env::var(v).ok().map(|x| format!("{v}={x}")))
        .collect();
    set.push(if sizes.quick {
        "cargo test --all-targets  # test mode".into()
    } else {
        "cargo bench --bench bench".into()
    });
    set.join(" ")
}

// ---------------------------------------------------------------- main

async fn run(agent: &Agent, sizes: &Sizes, r: &mut Results) -> Res<()> {
    let client = agent.client();
    let t = Instant::now();
    r.ceiling = Some(ceiling(&client, sizes).await?);
    // The ceiling's tens of thousands of writes leave Consul a Raft
    // snapshot to take and its heap to collect, seconds of CPU at a moment
    // of its choosing, which can fall in the timed parts that follow.
    // Consul takes the snapshot now and settles before anything is timed,
    // as before each "cost as the world grows" row; the wait is reported.
    let main = Under {
        url: agent.url(),
        pids: vec![agent.pid()],
        label: "dev agent",
    };
    main.snapshot().await?;
    r.after_ceiling = Some(
        main.settle(sizes.deadline(Duration::from_secs(120), Duration::from_secs(4)))
            .await,
    );
    r.parts.push(("ceiling".into(), t.elapsed()));
    let part = |name: &str| sizes.parts.iter().any(|p| p == name);
    if part("bulk") {
        daemon_latency_and_bulk(agent, &client, sizes, r).await?;
    }
    if part("three") {
        three_daemons(agent, &client, sizes, r).await?;
    }
    if part("baseline") {
        baseline(agent, &client, sizes, r).await?;
    }
    if part("steady") {
        steady_state(agent, &client, sizes, r).await?;
    }
    if part("world") {
        // Dev agents of their own, started now: after tens of thousands of
        // writes (the ceiling's, the bulk's, part 4's) Consul keeps working
        // on its own for minutes, in bursts (measured: about 250 ms of CPU
        // a second for 10 s at a time with nothing asking it anything),
        // which would land in the first rows' timed changes.
        // And one per row, so that a row's Consul holds that many services
        // and no more (Consul's own work grows with what it holds).
        for &n in &sizes.world {
            let agent = bench_agent();
            let dev = Under {
                url: agent.url(),
                pids: vec![agent.pid()],
                label: "dev agent",
            };
            world(&dev, &agent.client(), sizes, n, r).await?;
        }
    }
    if sizes.cluster_world > 0 && part("cluster") {
        let cluster = Cluster::start();
        let first = &cluster.agents[0];
        let servers = Under {
            url: first.url(),
            pids: cluster.agents.iter().map(Agent::pid).collect(),
            label: "3 servers, fsync",
        };
        world(&servers, &first.client(), sizes, sizes.cluster_world, r).await?;
    }
    Ok(())
}

/// The Consul a "cost as the world grows" row runs against: the daemon's
/// address, the processes whose CPU counts as Consul's, a name for the row.
struct Under {
    url: String,
    pids: Vec<i32>,
    label: &'static str,
}

impl Under {
    fn cpu_seconds(&self) -> f64 {
        self.pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
    }

    /// Has Consul take a Raft snapshot now (`GET /v1/snapshot`, the body
    /// thrown away), which also trims its Raft log. Consul snapshots on its
    /// own once 16,384 entries have piled up, checking every 30 to 60 s: left
    /// alone, the setup's writes (and the ceiling's, before the first row)
    /// bring that snapshot, seconds of Consul CPU, into the timed changes,
    /// at a moment of Consul's choosing. A change adds about five entries,
    /// so in use it comes once every 3,000 changes or so.
    async fn snapshot(&self) -> Res<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("snapshot client: {e}"))?;
        let resp = (http.get(format!("{}/v1/snapshot", self.url)).send())
            .await
            .map_err(|e| format!("snapshot: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("snapshot: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "snapshot: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }

    /// Waits until Consul's CPU stays at [`SETTLED_CPU_PER_SERVER`] a
    /// server or less for [`SETTLED_WINDOWS`] 2 s windows in a row, or until
    /// `deadline`.
    /// After a bulk write Consul keeps busy on its own for a while (about
    /// 30 s at 100–200 ms of CPU a second after 20,000 services, with no
    /// client asking anything: its snapshot, memory and housekeeping); what
    /// a change costs is measured after that. Returns how long it took and
    /// the CPU a second of the last window.
    async fn settle(&self, deadline: Instant) -> (Duration, f64) {
        let t = Instant::now();
        let limit = SETTLED_CPU_PER_SERVER * self.pids.len() as f64;
        let mut quiet = 0;
        loop {
            let c0 = self.cpu_seconds();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rate = (self.cpu_seconds() - c0) / 2.0;
            quiet = if rate <= limit { quiet + 1 } else { 0 };
            if quiet >= SETTLED_WINDOWS || Instant::now() >= deadline {
                return (t.elapsed(), rate);
            }
        }
    }
}

/// Quiet 2 s windows in a row that make Consul settled: one lull is not
/// enough (after the ceiling's tens of thousands of writes Consul's
/// snapshots and collections come in bursts with quiet seconds between).
const SETTLED_WINDOWS: u32 = 5;

/// The runs of changes a world row's Consul CPU is taken over.
const WORLD_CHUNKS: usize = 5;

/// The median of `xs` (0 when empty).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Consul counts as settled when it uses at most this much CPU a second (a
/// dev agent idles at 10–20 ms a second here).
const SETTLED_CPU_PER_SERVER: f64 = 0.05;

/// "Cost as the world grows": `n` services applied by one daemon, then
/// single changes to random ones, `world_gap` apart, each timed from the
/// put to observed.json; Consul's and the daemon's CPU from /proc.
async fn world(
    consul: &Under,
    client: &Client,
    sizes: &Sizes,
    n: usize,
    r: &mut Results,
) -> Res<()> {
    let t = Instant::now();
    let prefix = format!("bench/world-{n}");
    let layout = Layout::new(&prefix).expect("a valid prefix");
    let names: Vec<String> = (0..n).map(|i| format!("w{n}-{i}")).collect();
    let d = start_daemon(&consul.url, &prefix, &format!("bench-w{n}"), sizes);
    wait_ready(
        &d,
        sizes.deadline(Duration::from_secs(60), Duration::from_secs(30)),
    )
    .await?;
    let items = (names.iter())
        .map(|name| {
            let v = simple_spec("5s");
            (layout.base_key(&sid(name)), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let set: HashSet<String> = names.iter().cloned().collect();
    let deadline = sizes.deadline(
        Duration::from_secs(120 + n as u64 / 4),
        Duration::from_secs(30),
    );
    put_and_wait(client, &layout, items, &set, None, sizes, deadline)
        .await
        .map_err(|e| format!("world {n} setup: {e}\n{}", tail(&d)))?;
    consul.snapshot().await?;
    let (settled, idle_cpu) = consul
        .settle(sizes.deadline(Duration::from_secs(120), Duration::from_secs(4)))
        .await;
    let (before, consul0) = (Scrape::of(&d).await?, consul.cpu_seconds());
    let mut obs = Vec::new();
    // Consul's CPU per change in WORLD_CHUNKS runs of changes: the median
    // run is the figure, so that one burst of Consul's own housekeeping
    // (a snapshot, a collection of its heap) cannot decide it alone.
    let chunk = (sizes.world_changes / WORLD_CHUNKS).max(1);
    let (mut chunks, mut mark) = (Vec::new(), (0usize, consul0));
    for k in 0..sizes.world_changes {
        tokio::time::sleep(sizes.world_gap).await;
        let name = &names[(k * 7919 + 1) % names.len()];
        let timeout = timeout_for(k);
        let deadline = sizes.deadline(Duration::from_secs(60), Duration::from_secs(20));
        let spec = simple_spec(&timeout);
        let (o, _) = timed_change(client, &layout, name, &spec, &timeout, true, deadline)
            .await
            .map_err(|e| format!("world {n} change {k}: {e}\n{}", tail(&d)))?;
        obs.push(o.expect("measured"));
        if (k + 1) % chunk == 0 || k + 1 == sizes.world_changes {
            let now = consul.cpu_seconds();
            chunks.push((now - mark.1) / (k + 1 - mark.0) as f64);
            mark = (k + 1, now);
        }
    }
    let (after, consul1) = (Scrape::of(&d).await?, consul.cpu_seconds());
    let x = delta(&before, &after);
    let c = sizes.world_changes as f64;
    let watch = |s: &Scrape| s.bytes(Some("kv.list")) + s.bytes(Some("kv.keys"));
    r.world.push(WorldRow {
        consul: consul.label,
        services: n,
        changes: sizes.world_changes,
        to_observed: dist(&obs),
        bytes: x.all_bytes / c,
        wire: x.all_wire / c,
        watch_bytes: (watch(&after) - watch(&before)) / c,
        daemon_cpu: x.cpu / c,
        consul_cpu: median(&chunks),
        consul_cpu_mean: (consul1 - consul0) / c,
        consul_chunks: chunks,
        settled,
        idle_cpu,
        rss: peak_rss(d.pid()),
        shards: after
            .0
            .get("svc_handler_watch_shards")
            .copied()
            .unwrap_or(0.0),
        requests_by_op: (x.reads_by_op.iter())
            .chain(&x.writes_by_op)
            .map(|(op, n)| (op.clone(), n / c))
            .collect(),
    });
    stop_daemon(d).await;
    r.parts
        .push((format!("world {n} ({})", consul.label), t.elapsed()));
    Ok(())
}

/// The commit the daemon was built from, and whether the tree had changes.
fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            // `git diff --quiet` exits 1 when src/ differs from HEAD (and writes nothing).
            let dirty = Command::new("git")
                .args(["diff", "--quiet", "HEAD", "--", "src"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .is_ok_and(|s| s.code() == Some(1));
            if dirty {
                format!("commit {head} with uncommitted changes in src/")
            } else {
                format!("commit {head}")
            }
        }
        None => "unknown commit".into(),
    }
}

fn consul_version() -> String {
    Command::new(consul_bin())
        .arg("version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A Consul dev agent for the bench. Every daemon of the run talks to it
/// from 127.0.0.1, three at once in part 3b, and a stopped daemon's
/// blocking queries stay counted for up to a minute: it allows 1,000
/// connections per client, as the tests' shared agent does (in production
/// each node's daemon has its agent).
fn bench_agent() -> Agent {
    Agent::dev_with(|_| {
        vec![
            "-hcl".into(),
            "limits { http_max_conns_per_client = 1000 }".into(),
        ]
    })
}

fn main() -> ExitCode {
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes = match Sizes::from_env(quick) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    GATEWAYS.store(sizes.gateways, Ordering::Relaxed);
    let started = Instant::now();
    eprintln!(
        "bench: {} run; starting a Consul dev agent",
        if quick { "test-mode" } else { "full" }
    );
    let mut r = Results {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        consul_version: consul_version(),
        ..Default::default()
    };
    // Started from the main thread, which lives as long as the run: the
    // agent dies with it (PR_SET_PDEATHSIG) however the run ends.
    let agent = bench_agent();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = rt.block_on(run(&agent, &sizes, &mut r));
    drop(rt);
    drop(agent);
    let failure = outcome.err();
    let report = render(&r, &sizes, started.elapsed(), failure.as_deref());
    println!("{report}");
    if let (Some(path), None) = (&sizes.output, &failure) {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("bench: wrote {}", path.display());
    }
    match failure {
        None => {
            eprintln!("bench: done in {:.1} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Some(e) => {
            eprintln!("bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
