//! A `svc-handler run` child process for end-to-end tests: started on a free
//! metrics port, killed when dropped (also when a test panics).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct DaemonProc {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub instance: String,
    _dir: tempfile::TempDir,
}

impl DaemonProc {
    /// Starts `svc-handler run` against `consul_url` under `prefix`.
    pub fn start(
        consul_url: &str,
        prefix: &str,
        instance: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonProc {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_svc-handler"));
        cmd.args([
            "run",
            "--http-addr",
            consul_url,
            "--prefix",
            prefix,
            "--instance",
            instance,
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "info,svc_handler=debug",
        ])
        .args(extra)
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start svc-handler");
        DaemonProc {
            child,
            metrics_port: port,
            log,
            instance: instance.to_string(),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of `/metrics`, or `None` when it does not answer.
    pub async fn metrics_text(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
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
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        reqwest::get(url).await.ok().map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = super::eventually(timeout, || async { self.readyz().await == Some(200) }).await;
        assert!(ok, "daemon not ready in {timeout:?}:\n{}", self.log_text());
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
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

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill9();
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
