//! The Prometheus registry: every metric of the contract, by its contract name.
//! Served over HTTP by the daemon; the other modules only count.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub gateway_batch_size: Histogram,
    pub verify_failures: IntCounterVec,
    pub drift_corrections: IntCounterVec,
    pub drift_watch_delay: Gauge,
    pub rewrites_suppressed: IntCounterVec,
    pub final_refusals: IntCounterVec,
    pub lock_acquisitions: IntCounterVec,
    pub session_renew_failures: IntCounter,
    pub queue_depth: IntGauge,
    pub queue_wait: Histogram,
    pub workers_busy: IntGauge,
    pub retries: IntCounter,
    pub watch_wakeups: IntCounter,
    pub watch_reads: IntCounterVec,
    pub watch_errors: IntCounter,
    pub watch_index: IntGauge,
    pub watch_shards: IntGauge,
    pub watch_last_success: Gauge,
    pub services: IntGaugeVec,
    pub consul_requests: IntCounterVec,
    pub consul_request_duration: HistogramVec,
    pub consul_response_bytes: IntCounterVec,
    pub consul_response_wire_bytes: IntCounterVec,
    pub build_info: GaugeVec,
    pub ready: IntGauge,
}

/// `svc_handler_services{status}`.
pub type IntGaugeVecWrapper = IntGaugeVec;

/// A metric's name and help text.
struct Def(&'static str, &'static str);

const RECONCILE_TOTAL: Def = Def("svc_handler_reconcile_total", "Reconciles by result.");
const RECONCILE_DURATION: Def = Def(
    "svc_handler_reconcile_duration_seconds",
    "Time of one reconcile, lock to unlock, by result.",
);
const APPLY_LATENCY: Def = Def(
    "svc_handler_apply_latency_seconds",
    "Time from a new base.json generation seen to its observed.json written.",
);
const OBJECT_WRITES: Def = Def(
    "svc_handler_object_writes_total",
    "Config-entry writes by kind and result (ok, error, cas_retry).",
);
const GATEWAY_BATCH_SIZE: Def = Def(
    "svc_handler_gateway_batch_size",
    "Link and unlink changes committed together in one terminating-gateway batch (at most one write).",
);
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const VERIFY_FAILURES: Def = Def(
    "svc_handler_verify_failures_total",
    "Read-backs that did not match what was written, by kind.",
);
const DRIFT_CORRECTIONS: Def = Def(
    "svc_handler_drift_corrections_total",
    "Entries rewritten because they drifted from their record, by kind.",
);
const DRIFT_WATCH_DELAY: Def = Def(
    "svc_handler_drift_watch_delay_seconds",
    "Time the drift listings' read budget held back their last round: how much later than at once drift is seen now.",
);
const REWRITES_SUPPRESSED: Def = Def(
    "svc_handler_rewrites_suppressed_total",
    "Writes not made because nothing changed (what = entry: as svc-handler left it for this generation; observed: the same outcome).",
);
const FINAL_REFUSALS: Def = Def(
    "svc_handler_final_refusals_total",
    "Entries Consul refused on validation, by step: final for their generation, not retried.",
);
const LOCK_ACQUISITIONS: Def = Def(
    "svc_handler_lock_acquisitions_total",
    "Per-service lock attempts by result (acquired, held_elsewhere, error).",
);
const SESSION_RENEW_FAILURES: Def = Def(
    "svc_handler_session_renew_failures_total",
    "Session renewals that failed.",
);
const QUEUE_DEPTH: Def = Def("svc_handler_queue_depth", "Services waiting in the queue.");
const QUEUE_WAIT: Def = Def(
    "svc_handler_queue_wait_seconds",
    "Time a service waited in the queue before a worker took it.",
);
const WORKERS_BUSY: Def = Def("svc_handler_workers_busy", "Workers reconciling now.");
const RETRIES: Def = Def("svc_handler_retries_total", "Retried Consul operations.");
const WATCH_WAKEUPS: Def = Def(
    "svc_handler_watch_wakeups_total",
    "Blocking queries of the watch that returned.",
);
const WATCH_READS: Def = Def(
    "svc_handler_watch_shard_reads_total",
    "Answers of the desired watch's shards that moved, by how what changed was read: whole (the shard's listing), descent (the listings down to the folders that changed), own_writes (only this instance's own writes moved it: the folders it wrote, no descent).",
);
const WATCH_ERRORS: Def = Def(
    "svc_handler_watch_errors_total",
    "Blocking queries of the watch that failed.",
);
const WATCH_INDEX: Def = Def(
    "svc_handler_watch_index",
    "The X-Consul-Index the watch waits past.",
);
const WATCH_SHARDS: Def = Def(
    "svc_handler_watch_shards",
    "Blocking queries the desired prefix is watched with (its shards).",
);
const WATCH_LAST_SUCCESS: Def = Def(
    "svc_handler_watch_last_success_timestamp_seconds",
    "Unix time of the watch's last successful blocking query.",
);
const SERVICES: Def = Def("svc_handler_services", "Services by observed status.");
const CONSUL_REQUESTS: Def = Def(
    "svc_handler_consul_requests_total",
    "Consul HTTP requests by operation and status code.",
);
const CONSUL_REQUEST_DURATION: Def = Def(
    "svc_handler_consul_request_duration_seconds",
    "Consul HTTP request time by operation.",
);
const CONSUL_RESPONSE_BYTES: Def = Def(
    "svc_handler_consul_response_bytes_total",
    "Bytes of Consul answers' bodies by operation, decoded (a watch's cost).",
);
const CONSUL_RESPONSE_WIRE_BYTES: Def = Def(
    "svc_handler_consul_response_wire_bytes_total",
    "Bytes of Consul answers' bodies by operation as received (gzip-compressed when Consul compressed them).",
);
const BUILD_INFO: Def = Def(
    "svc_handler_build_info",
    "Always 1; the version as a label.",
);
const READY: Def = Def(
    "svc_handler_ready",
    "1 once the first full sync is done and Consul answers.",
);

/// Builds metrics and registers each one in its registry.
struct Builder(Registry);

impl Builder {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    fn counter(&self, d: Def) -> IntCounter {
        self.register(IntCounter::new(d.0, d.1).expect("valid metric"))
    }

    fn counter_vec(&self, d: Def, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(d.0, d.1), labels).expect("valid metric"))
    }

    fn int_gauge(&self, d: Def) -> IntGauge {
        self.register(IntGauge::new(d.0, d.1).expect("valid metric"))
    }

    fn int_gauge_vec(&self, d: Def, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(d.0, d.1), labels).expect("valid metric"))
    }

    fn gauge(&self, d: Def) -> Gauge {
        self.register(Gauge::new(d.0, d.1).expect("valid metric"))
    }

    fn gauge_vec(&self, d: Def, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(Opts::new(d.0, d.1), labels).expect("valid metric"))
    }

    fn histogram(&self, d: Def, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(d.0, d.1).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn histogram_vec(&self, d: Def, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(d.0, d.1).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }
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
pub const STATUSES: &[&str] = &["applied", "error", "invalid", "conflict", "paused"];
/// Object kinds, as in the `kind` label.
pub const KINDS: &[&str] = &[
    "service-defaults",
    "service-resolver",
    "service-splitter",
    "service-router",
    "terminating-gateway",
];

impl Metrics {
    pub fn new() -> Self {
        let b = Builder(Registry::new());
        let m = Metrics {
            reconcile_total: b.counter_vec(RECONCILE_TOTAL, &["result"]),
            reconcile_duration: b.histogram_vec(RECONCILE_DURATION, &["result"], DURATION_BUCKETS),
            apply_latency: b.histogram(APPLY_LATENCY, DURATION_BUCKETS),
            object_writes: b.counter_vec(OBJECT_WRITES, &["kind", "result"]),
            gateway_batch_size: b.histogram(GATEWAY_BATCH_SIZE, BATCH_BUCKETS),
            verify_failures: b.counter_vec(VERIFY_FAILURES, &["kind"]),
            drift_corrections: b.counter_vec(DRIFT_CORRECTIONS, &["kind"]),
            drift_watch_delay: b.gauge(DRIFT_WATCH_DELAY),
            rewrites_suppressed: b.counter_vec(REWRITES_SUPPRESSED, &["what"]),
            final_refusals: b.counter_vec(FINAL_REFUSALS, &["step"]),
            lock_acquisitions: b.counter_vec(LOCK_ACQUISITIONS, &["result"]),
            session_renew_failures: b.counter(SESSION_RENEW_FAILURES),
            queue_depth: b.int_gauge(QUEUE_DEPTH),
            queue_wait: b.histogram(QUEUE_WAIT, DURATION_BUCKETS),
            workers_busy: b.int_gauge(WORKERS_BUSY),
            retries: b.counter(RETRIES),
            watch_wakeups: b.counter(WATCH_WAKEUPS),
            watch_reads: b.counter_vec(WATCH_READS, &["how"]),
            watch_errors: b.counter(WATCH_ERRORS),
            watch_index: b.int_gauge(WATCH_INDEX),
            watch_shards: b.int_gauge(WATCH_SHARDS),
            watch_last_success: b.gauge(WATCH_LAST_SUCCESS),
            services: b.int_gauge_vec(SERVICES, &["status"]),
            consul_requests: b.counter_vec(CONSUL_REQUESTS, &["op", "code"]),
            consul_request_duration: b.histogram_vec(
                CONSUL_REQUEST_DURATION,
                &["op"],
                REQUEST_BUCKETS,
            ),
            consul_response_bytes: b.counter_vec(CONSUL_RESPONSE_BYTES, &["op"]),
            consul_response_wire_bytes: b.counter_vec(CONSUL_RESPONSE_WIRE_BYTES, &["op"]),
            build_info: b.gauge_vec(BUILD_INFO, &["version"]),
            ready: b.int_gauge(READY),
            registry: b.0,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        m.zero_series();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// Makes every labelled series exist at 0, so dashboards and `rate()`
    /// see them before the first event.
    fn zero_series(&self) {
        for res in RESULTS {
            self.reconcile_total.with_label_values(&[res]);
            self.reconcile_duration.with_label_values(&[res]);
        }
        for kind in KINDS {
            for res in ["ok", "error", "cas_retry"] {
                self.object_writes.with_label_values(&[kind, res]);
            }
            self.verify_failures.with_label_values(&[kind]);
            self.drift_corrections.with_label_values(&[kind]);
        }
        for res in ["acquired", "held_elsewhere", "error"] {
            self.lock_acquisitions.with_label_values(&[res]);
        }
        for how in ["whole", "descent", "own_writes"] {
            self.watch_reads.with_label_values(&[how]);
        }
        for what in ["entry", "observed"] {
            self.rewrites_suppressed.with_label_values(&[what]);
        }
        for st in STATUSES {
            self.services.with_label_values(&[st]);
        }
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

    fn observe_bytes(&self, op: &'static str, body: u64, wire: u64) {
        self.consul_response_bytes
            .with_label_values(&[op])
            .inc_by(body);
        self.consul_response_wire_bytes
            .with_label_values(&[op])
            .inc_by(wire);
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
            "svc_handler_drift_watch_delay_seconds",
            "svc_handler_lock_acquisitions_total{result=\"held_elsewhere\"}",
            "svc_handler_session_renew_failures_total",
            "svc_handler_queue_depth",
            "svc_handler_queue_wait_seconds_bucket",
            "svc_handler_workers_busy",
            "svc_handler_retries_total",
            "svc_handler_watch_wakeups_total",
            "svc_handler_watch_shard_reads_total{how=\"own_writes\"}",
            "svc_handler_watch_errors_total",
            "svc_handler_watch_index",
            "svc_handler_watch_shards",
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
