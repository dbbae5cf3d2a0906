//! The Prometheus registry: every metric of the contract, by its contract name.
//! Served over HTTP by the daemon; the other modules only count.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::consul::RequestObserver;

/// Buckets from 5 ms to 60 s: a reconcile is a few Consul round trips on a
/// healthy cluster, tens of seconds when Consul is struggling.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for single Consul requests, 1 ms to 10 min (blocking reads wait
/// up to their `wait`).
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    600.0,
];

/// Every metric svc-handler exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_total: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub apply_latency: Histogram,
    pub object_writes: IntCounterVec,
    pub verify_failures: IntCounterVec,
    pub drift_corrections: IntCounterVec,
    pub lock_acquisitions: IntCounterVec,
    pub session_renew_failures: IntCounter,
    pub queue_depth: IntGauge,
    pub queue_wait: Histogram,
    pub workers_busy: IntGauge,
    pub retries: IntCounter,
    pub watch_wakeups: IntCounter,
    pub watch_errors: IntCounter,
    pub watch_index: IntGauge,
    pub watch_last_success: Gauge,
    pub services: IntGaugeVecWrapper,
    pub consul_requests: IntCounterVec,
    pub consul_request_duration: HistogramVec,
    pub consul_response_bytes: IntCounterVec,
    pub build_info: GaugeVec,
    pub ready: IntGauge,
}

/// `svc_handler_services{status}`.
pub type IntGaugeVecWrapper = prometheus::IntGaugeVec;

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Reconcile results, as in `svc_handler_reconcile_total{result}`.
pub const RESULTS: &[&str] = &[
    "applied",
    "unchanged",
    "error",
    "invalid",
    "conflict",
    "deleted",
];
/// Statuses, as in observed.json and `svc_handler_services{status}`.
pub const STATUSES: &[&str] = &["applied", "error", "invalid", "conflict"];
/// Object kinds, as in the `kind` label.
pub const KINDS: &[&str] = &[
    "service-defaults",
    "service-resolver",
    "service-router",
    "terminating-gateway",
];

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Metrics {
            reconcile_total: counter_vec(
                &r,
                "svc_handler_reconcile_total",
                "Reconciles by result.",
                &["result"],
            ),
            reconcile_duration: histogram_vec(
                &r,
                "svc_handler_reconcile_duration_seconds",
                "Time of one reconcile, lock to unlock, by result.",
                &["result"],
                DURATION_BUCKETS,
            ),
            apply_latency: histogram(
                &r,
                "svc_handler_apply_latency_seconds",
                "Time from a new base.json generation seen to its observed.json written.",
                DURATION_BUCKETS,
            ),
            object_writes: counter_vec(
                &r,
                "svc_handler_object_writes_total",
                "Config-entry writes by kind and result (ok, error, cas_retry).",
                &["kind", "result"],
            ),
            verify_failures: counter_vec(
                &r,
                "svc_handler_verify_failures_total",
                "Read-backs that did not match what was written, by kind.",
                &["kind"],
            ),
            drift_corrections: counter_vec(
                &r,
                "svc_handler_drift_corrections_total",
                "Entries rewritten because they drifted from their record, by kind.",
                &["kind"],
            ),
            lock_acquisitions: counter_vec(
                &r,
                "svc_handler_lock_acquisitions_total",
                "Per-service lock attempts by result (acquired, held_elsewhere, error).",
                &["result"],
            ),
            session_renew_failures: counter(
                &r,
                "svc_handler_session_renew_failures_total",
                "Session renewals that failed.",
            ),
            queue_depth: int_gauge(
                &r,
                "svc_handler_queue_depth",
                "Services waiting in the queue.",
            ),
            queue_wait: histogram(
                &r,
                "svc_handler_queue_wait_seconds",
                "Time a service waited in the queue before a worker took it.",
                DURATION_BUCKETS,
            ),
            workers_busy: int_gauge(&r, "svc_handler_workers_busy", "Workers reconciling now."),
            retries: counter(
                &r,
                "svc_handler_retries_total",
                "Retried Consul operations.",
            ),
            watch_wakeups: counter(
                &r,
                "svc_handler_watch_wakeups_total",
                "Blocking queries of the watch that returned.",
            ),
            watch_errors: counter(
                &r,
                "svc_handler_watch_errors_total",
                "Blocking queries of the watch that failed.",
            ),
            watch_index: int_gauge(
                &r,
                "svc_handler_watch_index",
                "The X-Consul-Index the watch waits past.",
            ),
            watch_last_success: {
                let g = Gauge::new(
                    "svc_handler_watch_last_success_timestamp_seconds",
                    "Unix time of the watch's last successful blocking query.",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            services: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new("svc_handler_services", "Services by observed status."),
                    &["status"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            consul_requests: counter_vec(
                &r,
                "svc_handler_consul_requests_total",
                "Consul HTTP requests by operation and status code.",
                &["op", "code"],
            ),
            consul_request_duration: histogram_vec(
                &r,
                "svc_handler_consul_request_duration_seconds",
                "Consul HTTP request time by operation.",
                &["op"],
                REQUEST_BUCKETS,
            ),
            consul_response_bytes: counter_vec(
                &r,
                "svc_handler_consul_response_bytes_total",
                "Bytes of Consul answers' bodies by operation (a watch's cost).",
                &["op"],
            ),
            build_info: {
                let g = GaugeVec::new(
                    Opts::new(
                        "svc_handler_build_info",
                        "Always 1; the version as a label.",
                    ),
                    &["version"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            ready: int_gauge(
                &r,
                "svc_handler_ready",
                "1 once the first full sync is done and Consul answers.",
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        // Make every labelled series exist at 0, so dashboards and `rate()`
        // see them before the first event.
        for res in RESULTS {
            m.reconcile_total.with_label_values(&[res]);
            m.reconcile_duration.with_label_values(&[res]);
        }
        for kind in KINDS {
            for res in ["ok", "error", "cas_retry"] {
                m.object_writes.with_label_values(&[kind, res]);
            }
            m.verify_failures.with_label_values(&[kind]);
            m.drift_corrections.with_label_values(&[kind]);
        }
        for res in ["acquired", "held_elsewhere", "error"] {
            m.lock_acquisitions.with_label_values(&[res]);
        }
        for st in STATUSES {
            m.services.with_label_values(&[st]);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, op: &'static str, code: &str, elapsed: Duration) {
        self.consul_requests.with_label_values(&[op, code]).inc();
        self.consul_request_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    fn observe_bytes(&self, op: &'static str, bytes: u64) {
        self.consul_response_bytes
            .with_label_values(&[op])
            .inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let m = Metrics::new();
        m.consul_requests
            .with_label_values(&["kv.get", "200"])
            .inc();
        m.consul_request_duration
            .with_label_values(&["kv.get"])
            .observe(0.01);
        let text = m.render();
        for name in [
            "svc_handler_reconcile_total{result=\"applied\"}",
            "svc_handler_reconcile_duration_seconds_bucket",
            "svc_handler_apply_latency_seconds_bucket",
            "svc_handler_object_writes_total{kind=\"service-router\",result=\"cas_retry\"}",
            "svc_handler_verify_failures_total{kind=",
            "svc_handler_drift_corrections_total{kind=",
            "svc_handler_lock_acquisitions_total{result=\"held_elsewhere\"}",
            "svc_handler_session_renew_failures_total",
            "svc_handler_queue_depth",
            "svc_handler_queue_wait_seconds_bucket",
            "svc_handler_workers_busy",
            "svc_handler_retries_total",
            "svc_handler_watch_wakeups_total",
            "svc_handler_watch_errors_total",
            "svc_handler_watch_index",
            "svc_handler_watch_last_success_timestamp_seconds",
            "svc_handler_services{status=\"conflict\"}",
            "svc_handler_consul_requests_total{code=\"200\",op=\"kv.get\"}",
            "svc_handler_consul_request_duration_seconds_bucket",
            "svc_handler_build_info{version=",
            "svc_handler_ready",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
