//! The small HTTP server of the daemon: `/metrics` (Prometheus text format),
//! `/healthz` (the process and its loops are alive) and `/readyz` (the first
//! full sync is done and Consul answered recently).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::consul::RequestObserver;
use crate::metrics::Metrics;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What `/healthz` and `/readyz` answer from.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    /// Last time the watch loop went round (unix ms).
    watch_beat: AtomicU64,
    /// Last time Consul answered anything (unix ms).
    consul_ok: AtomicU64,
    /// How old a beat may be before the loop counts as stuck.
    stale_after: Duration,
    /// Why the daemon may not turn ready yet (the token lacks a permission).
    blocked: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn new(stale_after: Duration) -> Arc<Self> {
        Arc::new(Health {
            ready: AtomicBool::new(false),
            watch_beat: AtomicU64::new(now_ms()),
            consul_ok: AtomicU64::new(0),
            stale_after,
            blocked: std::sync::Mutex::new(None),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready_flag(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The watch loop is alive.
    pub fn beat(&self) {
        self.watch_beat.store(now_ms(), Ordering::SeqCst);
    }

    /// Consul answered.
    pub fn consul_answered(&self) {
        self.consul_ok.store(now_ms(), Ordering::SeqCst);
    }

    fn fresh(&self, at: &AtomicU64) -> bool {
        now_ms().saturating_sub(at.load(Ordering::SeqCst)) <= self.stale_after.as_millis() as u64
    }

    /// `/healthz`: the watch loop went round recently.
    pub fn healthy(&self) -> Result<(), String> {
        if self.fresh(&self.watch_beat) {
            Ok(())
        } else {
            Err(format!(
                "the watch loop has not run for over {:?}",
                self.stale_after
            ))
        }
    }

    /// `/readyz`: the first sync is done and Consul answered recently.
    /// Holds readiness back with `reason` (`None`: nothing holds it).
    pub fn set_blocked(&self, reason: Option<String>) {
        *self.blocked.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self
            .blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(reason);
        }
        if !self.is_ready_flag() {
            return Err("the first full sync is not done".into());
        }
        if !self.fresh(&self.consul_ok) {
            return Err(format!(
                "Consul has not answered for over {:?}",
                self.stale_after
            ));
        }
        self.healthy()
    }
}

/// Counts requests into the metrics and notes that Consul answered.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl RequestObserver for Observer {
    fn observe(&self, op: &'static str, code: &str, elapsed: Duration) {
        self.metrics.observe(op, code, elapsed);
        if code.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            self.health.consul_answered();
        }
    }

    fn observe_bytes(&self, op: &'static str, body: u64, wire: u64) {
        self.metrics.observe_bytes(op, body, wire);
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn route(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => match health.healthy() {
            Ok(()) => text(StatusCode::OK, "ok\n".into(), plain),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), plain),
        },
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), plain),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), plain),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n".into(),
            plain,
        ),
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (Arc::clone(&metrics), Arc::clone(&health));
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_flag_and_a_recent_answer() {
        let h = Health::new(Duration::from_secs(60));
        assert!(h.healthy().is_ok());
        assert!(h.ready().unwrap_err().contains("first full sync"));
        h.set_ready(true);
        assert!(h.ready().unwrap_err().contains("Consul"));
        h.consul_answered();
        assert!(h.ready().is_ok());
    }

    #[test]
    fn a_stale_beat_is_unhealthy() {
        let h = Health::new(Duration::from_millis(10));
        h.watch_beat.store(now_ms() - 1_000, Ordering::SeqCst);
        assert!(h.healthy().unwrap_err().contains("watch loop"));
        h.beat();
        assert!(h.healthy().is_ok());
    }
}
