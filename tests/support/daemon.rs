//! The one `svc-handler run` child process of the tests (and the benchmark).
//!
//! [`DaemonProc::start`] (or [`DaemonProc::builder`] for the less common
//! settings) runs the built binary against a Consul agent under a test's
//! prefix, on its own metrics port, with its output in a log file. It dies
//! with the test however the test ends: `Drop` kills it (and prints the log
//! tail when the test panicked), and the kernel kills it when the thread that
//! started it ends ([`super::die_with_parent`]). Nothing from the test's own
//! environment that the daemon reads (`CONSUL_*`, `SVC_HANDLER_*`,
//! `RUST_LOG`, `NOTIFY_SOCKET`, `WATCHDOG_*`) leaks in; the caller's `env`
//! does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The settings of one daemon; [`DaemonBuilder::start`] starts it.
pub struct DaemonBuilder {
    consul: String,
    prefix: String,
    instance: String,
    metrics_port: Option<u16>,
    log_format: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl DaemonBuilder {
    /// `--instance` (default `test`).
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = instance.to_string();
        self
    }

    /// The metrics port (default: a free one), for a scraper that must know
    /// it before the daemon starts.
    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    /// `--log-format` (default: the daemon's own).
    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.to_string());
        self
    }

    /// More arguments of `run`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Environment variables for the daemon.
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Starts the daemon (it is not ready yet: see [`DaemonProc::wait_ready`]).
    pub fn start(self) -> DaemonProc {
        let port = self.metrics_port.unwrap_or_else(super::free_local_port);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_svc-handler"));
        cmd.args(["run", "--http-addr", &self.consul, "--prefix", &self.prefix])
            .args(["--instance", &self.instance])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--log-level", "info,svc_handler=debug"]);
        if let Some(f) = &self.log_format {
            cmd.args(["--log-format", f]);
        }
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if leaks_in(&k) {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        super::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start svc-handler");
        DaemonProc {
            child,
            metrics_port: port,
            log,
            instance: self.instance,
            _dir: dir,
        }
    }
}

/// A variable of the test's environment the daemon must not see.
fn leaks_in(name: &str) -> bool {
    name.starts_with("CONSUL_")
        || name.starts_with("SVC_HANDLER_")
        || name.starts_with("WATCHDOG_")
        || name == "RUST_LOG"
        || name == "NOTIFY_SOCKET"
}

/// A running `svc-handler run`, killed when dropped.
pub struct DaemonProc {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub instance: String,
    _dir: tempfile::TempDir,
}

impl DaemonProc {
    /// The settings for a daemon against `consul_url` under `prefix`.
    pub fn builder(consul_url: &str, prefix: &str) -> DaemonBuilder {
        DaemonBuilder {
            consul: consul_url.to_string(),
            prefix: prefix.to_string(),
            instance: "test".to_string(),
            metrics_port: None,
            log_format: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts `svc-handler run` against `consul_url` under `prefix`, with
    /// more arguments `extra` and environment `env`.
    pub fn start(
        consul_url: &str,
        prefix: &str,
        instance: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonProc {
        DaemonProc::builder(consul_url, prefix)
            .instance(instance)
            .args(extra)
            .env(env)
            .start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `127.0.0.1:<metrics port>`: /metrics, /readyz and /healthz.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET path` on the metrics port without a runtime: status and body,
    /// `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        super::http_get(self.metrics_addr(), path)
    }

    /// The text of `/metrics`, or `None` when it does not answer.
    pub async fn metrics_text(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.metrics_addr());
        let resp = reqwest::get(url).await.ok()?;
        resp.text().await.ok()
    }

    /// Samples of `/metrics` as `name{labels}` → value.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let text = self.metrics_text().await.unwrap_or_default();
        parse_metrics(&text)
    }

    /// One sample, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series).copied().unwrap_or(0.0)
    }

    pub async fn readyz(&self) -> Option<u16> {
        let url = format!("http://{}/readyz", self.metrics_addr());
        reqwest::get(url).await.ok().map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = super::eventually(timeout, || async { self.readyz().await == Some(200) }).await;
        assert!(ok, "daemon not ready in {timeout:?}:\n{}", self.log_text());
    }

    /// [`DaemonProc::wait_ready`] for a test without a runtime.
    pub fn wait_ready_blocking(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !matches!(self.get("/readyz"), Some((200, _))) {
            assert!(
                Instant::now() < deadline,
                "daemon not ready in {timeout:?}:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends `sig`; whether it was delivered.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) == 0 }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as systemd would: SIGTERM, then SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        if self.wait_exit(timeout).is_none() {
            self.kill9();
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- svc-handler log tail ---\n{}", self.log_tail(30));
        }
    }
}

/// Parses the Prometheus text format into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}
