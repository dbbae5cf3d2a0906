//! The benchmark's Markdown report (BENCHMARKS.md), one function per section.

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    command_line, source_version, Dist, Results, Sizes, SETTLED_CPU_PER_SERVER, VARIABLES,
    WORLD_CHUNKS,
};

/// The whole report of a run.
pub fn render(r: &Results, sizes: &Sizes, total: Duration, failure: Option<&str>) -> String {
    let mut o = String::new();
    header(&mut o, r, sizes, total, failure);
    ceiling(&mut o, r, sizes);
    summary(&mut o, r);
    latency(&mut o, r, sizes);
    throughput(&mut o, r, sizes);
    steady_state(&mut o, r, sizes);
    watch_cost(&mut o, r, sizes);
    world(&mut o, r, sizes);
    drift(&mut o, r, sizes);
    baseline(&mut o, r);
    sizes_and_parts(&mut o, r);
    o
}

/// The config-entry write ceiling at concurrency 8 (0 when not measured).
fn c8(r: &Results) -> f64 {
    r.ceiling.as_ref().map(|c| c.config[1]).unwrap_or(0.0)
}

/// Date, command, machine, versions, and the failure if any.
fn header(o: &mut String, r: &Results, sizes: &Sizes, total: Duration, failure: Option<&str>) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `cargo bench --bench bench` (`benches/bench.rs`); do not edit by hand.\n"
    );
    let _ = writeln!(o, "- Date (UTC): {now}");
    let _ = writeln!(o, "- Command: `{}`", command_line(sizes));
    let _ = writeln!(
        o,
        "- Machine: {} cores (`available_parallelism`), {}",
        r.cores,
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| t
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string()))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "- Consul: {} (one dev agent, in memory, on loopback; everything below shares it and the machine)",
        r.consul_version
    );
    let _ = writeln!(
        o,
        "- svc-handler {} ({}): `svc-handler run --resync-interval 1h`{}, `RUST_LOG=info`, other flags at their defaults",
        env!("CARGO_PKG_VERSION"),
        source_version(),
        sizes
            .workers
            .map(|w| format!(" --workers {w}"))
            .unwrap_or_default()
    );
    let _ = writeln!(o, "- Whole run: {:.0} s", total.as_secs_f64());
    if let Some(f) = failure {
        let _ = writeln!(o, "\n**The run failed:** {f}");
    }
}

/// 1. Consul's own write rates.
fn ceiling(o: &mut String, r: &Results, sizes: &Sizes) {
    if let Some(c) = &r.ceiling {
        let _ = writeln!(o, "\n## 1. Ceiling: Consul's own write rate\n");
        let _ = writeln!(
            o,
            "Measured first, from this process, {} s each; every ratio below divides by these.\n",
            sizes.ceiling.as_secs_f64()
        );
        let _ = writeln!(o, "| writes | concurrency 1 | concurrency 8 |");
        let _ = writeln!(o, "|---|---:|---:|");
        let _ = writeln!(
            o,
            "| KV put (`kv_put`) | {:.0}/s | {:.0}/s |",
            c.kv[0], c.kv[1]
        );
        let _ = writeln!(
            o,
            "| config entry put (`config_put`, service-defaults) | {:.0}/s | {:.0}/s |",
            c.config[0], c.config[1]
        );
    }
    if let Some((took, rate)) = r.after_ceiling {
        let _ = writeln!(
            o,
            "\nThen Consul took a Raft snapshot (`GET /v1/snapshot`) and the bench waited until it \
             settled (five 2 s windows in a row at ≤ 50 ms of CPU a second, as in part 5a) before \
             the parts below: {:.0} s, then {:.0} ms a second.",
            took.as_secs_f64(),
            rate * 1000.0
        );
    }
}

/// Every figure with a target, measured against it.
fn summary(o: &mut String, r: &Results) {
    let _ = writeln!(o, "\n## Summary against the targets\n");
    let _ = writeln!(o, "| figure | measured | target | |");
    let _ = writeln!(o, "|---|---:|---|---|");
    summary_latency_and_bulk(o, r);
    summary_three(o, r);
    summary_steady(o, r);
    summary_watch_growth(o, r);
    summary_world(o, r);
    summary_against_baseline(o, r);
}

/// Issue 13's targets: one change with more and more services present, and
/// the bulk's rate, reads and writes per service.
fn summary_world(o: &mut String, r: &Results) {
    if let Some(b) = &r.bulk {
        let n = b.services as f64;
        let rate = n / b.secs;
        let _ = writeln!(
            o,
            "| bulk of {} new services: services/s | {rate:.1} | ≥ 200 | {} |",
            b.services,
            met(rate >= 200.0)
        );
        let _ = writeln!(
            o,
            "| bulk: read from Consul per service, as received (decoded) | {} ({}) | ≤ 20 KiB | {} |",
            bytes(b.wire / n),
            bytes(b.bytes / n),
            met(b.wire / n <= 20.0 * 1024.0)
        );
        let _ = writeln!(
            o,
            "| bulk: Consul writes per service | {:.2} | ≤ 6 | {} |",
            b.writes / n,
            met(b.writes / n <= 6.0 + 1e-9)
        );
    }
    let Some(small) = r.world.first() else { return };
    for w in &r.world {
        let p50 = w.to_observed.p50 <= Duration::from_millis(20);
        let p99 = w.to_observed.p99 <= Duration::from_millis(60);
        let _ = writeln!(
            o,
            "| one change with {} services present ({}): p50 / p99 | {} / {} | ≤ 20 ms / ≤ 60 ms | {} |",
            w.services,
            w.consul,
            ms(w.to_observed.p50),
            ms(w.to_observed.p99),
            met(p50 && p99)
        );
        let _ = writeln!(
            o,
            "| one change with {} services present ({}): read from Consul, as received (decoded) | {} ({}) | ≤ 64 KiB | {} |",
            w.services,
            w.consul,
            bytes(w.wire),
            bytes(w.bytes),
            met(w.wire <= 64.0 * 1024.0)
        );
        let rss_target = match w.services {
            n if n <= 5000 => Some(64.0),
            n if n <= 20000 => Some(128.0),
            _ => None,
        };
        if let (Some(t), Some(rss)) = (rss_target, w.rss) {
            let _ = writeln!(
                o,
                "| daemon peak RSS with {} services present ({}) | {} | ≤ {t:.0} MiB | {} |",
                w.services,
                w.consul,
                bytes(rss as f64),
                met(rss as f64 <= t * 1024.0 * 1024.0)
            );
        }
    }
    if let Some(big) = r
        .world
        .iter()
        .filter(|w| w.consul == small.consul)
        .max_by_key(|w| w.services)
    {
        if big.services > small.services {
            let _ = writeln!(
                o,
                "| Consul CPU per change (median of 5 runs of changes), {} vs {} services ({}) | {:.1} ms vs {:.1} ms ({}) | ≤ 2× | {} |",
                big.services,
                small.services,
                small.consul,
                1000.0 * big.consul_cpu,
                1000.0 * small.consul_cpu,
                ratio(big.consul_cpu, small.consul_cpu),
                met(big.consul_cpu <= 2.0 * small.consul_cpu)
            );
        }
    }
}

/// Apply latency and bulk throughput against their targets.
fn summary_latency_and_bulk(o: &mut String, r: &Results) {
    let c8 = c8(r);
    if let Some(d) = &r.to_observed {
        let _ = writeln!(
            o,
            "| apply latency p50 (to observed.json) | {} | ≤ 20 ms | {} |",
            ms(d.p50),
            met(d.p50 <= Duration::from_millis(20))
        );
        let _ = writeln!(
            o,
            "| apply latency p99 (to observed.json) | {} | ≤ 60 ms | {} |",
            ms(d.p99),
            met(d.p99 <= Duration::from_millis(60))
        );
    }
    if let Some(b) = &r.bulk {
        let wps = b.writes / b.secs;
        let _ = writeln!(
            o,
            "| bulk throughput: Consul writes/s ÷ config-entry ceiling at concurrency 8 | {:.0}/s ÷ {:.0}/s = {:.0} % | ≥ 60 % | {} |",
            wps,
            c8,
            100.0 * wps / c8,
            met(wps / c8 >= 0.6)
        );
        let per = b.writes / b.services as f64;
        let _ = writeln!(
            o,
            "| Consul writes per new service | {per:.2} | ≤ 8 | {} |",
            met(per <= 8.0)
        );
    }
}

/// Three daemons on one bulk: every link exactly once, and their reads
/// per service against one daemon's.
fn summary_three(o: &mut String, r: &Results) {
    if let Some(t) = &r.three {
        let _ = writeln!(
            o,
            "| 3 daemons on the bulk: links to its services in the terminating gateways | {} | exactly {} | {} |",
            t.links,
            t.services,
            met(t.links == t.services)
        );
        if let Some(b) = &r.bulk {
            let three = t.bytes / t.services as f64;
            let one = b.bytes / b.services as f64;
            let _ = writeln!(
                o,
                "| 3 daemons: reads per service ÷ one daemon's (bytes read from Consul, all operations) | {} ÷ {} = {} | ≤ 3.5× | {} |",
                bytes(three),
                bytes(one),
                ratio(three, one),
                met(one > 0.0 && three / one <= 3.5)
            );
        }
    }
}

/// The writes of the start-up access check among `by_op` (a probe key put
/// and deleted, a session created and destroyed: one each at most).
fn access_check_writes(by_op: &[(String, f64)]) -> f64 {
    by_op
        .iter()
        .filter(|(op, _)| {
            matches!(
                op.as_str(),
                "kv.put" | "kv.delete" | "session.create" | "session.destroy"
            )
        })
        .map(|(_, n)| n.min(1.0))
        .sum()
}

/// The resync's writes, CPU and memory against their targets.
fn summary_steady(o: &mut String, r: &Results) {
    if let Some(s) = &r.steady {
        let check = access_check_writes(&s.writes_by_op);
        let _ = writeln!(
            o,
            "| resync of {} in-sync services: Consul writes for the services (besides the {:.0} of the start-up access check) | {:.0} | 0 | {} |",
            s.services,
            check,
            s.writes - check,
            met(s.writes - check == 0.0)
        );
        let _ = writeln!(
            o,
            "| resync: daemon CPU seconds | {:.2} s | < 2 s | {} |",
            s.cpu,
            met(s.cpu < 2.0)
        );
        if let Some(rss) = s.peak_rss {
            let _ = writeln!(
                o,
                "| resync: peak RSS (VmHWM) | {} | < 64 MiB | {} |",
                bytes(rss as f64),
                met(rss < 64 * 1024 * 1024)
            );
        }
    }
}

/// Whether the watch's bytes per service grow with the number of services.
fn summary_watch_growth(o: &mut String, r: &Results) {
    if let Some(b) = &r.bulk {
        if let (Some(e), Some(f)) = (b.early, b.end) {
            if 2 * e.0 > f.0 {
                let _ = writeln!(
                    o,
                    "| watch bytes per applied service | too few services to compare ({} vs {}) | not quadratic | – |",
                    e.0, f.0
                );
            } else {
                let pe = e.1 / e.0.max(1) as f64;
                let pf = f.1 / f.0.max(1) as f64;
                let grow = pf / pe;
                let n = f.0 as f64 / e.0.max(1) as f64;
                let _ = writeln!(
                o,
                "| watch bytes per applied service, at {} vs {} services (growth; linear cost: about 1×, quadratic: about {:.1}×) | {} vs {} ({:.2}×) | not quadratic | {} |",
                e.0,
                f.0,
                n,
                bytes(pe),
                bytes(pf),
                grow,
                met(grow < (1.0 + n) / 2.0)
            );
                let ce = e.2 / e.0.max(1) as f64;
                let cf = f.2 / f.0.max(1) as f64;
                let _ = writeln!(
                    o,
                    "| (no target) drift listings' config.list bytes per applied service, at {} vs {} services | {} vs {} ({:.2}×) | – | – |",
                    e.0,
                    f.0,
                    bytes(ce),
                    bytes(cf),
                    cf / ce
                );
            }
        }
    }
}

/// Faster than the baseline on every figure?
fn summary_against_baseline(o: &mut String, r: &Results) {
    if let (Some(b), Some(d), Some(bulk)) = (&r.baseline, &r.to_entry, &r.bulk) {
        if let Some(be) = &b.to_entry {
            let sh_rate = bulk.services as f64 / bulk.secs;
            // Unfinished: what it did by its deadline is an upper bound of its rate.
            let (bl_rate, note) = match b.secs {
                Some(secs) => (b.services as f64 / secs, ""),
                None => (
                    b.done as f64 / b.elapsed,
                    " (the baseline did not finish its bulk apply)",
                ),
            };
            let faster = d.p50 < be.p50
                && d.p95 < be.p95
                && d.p99 < be.p99
                && d.max < be.max
                && sh_rate > bl_rate;
            let _ = writeln!(
                o,
                "| faster than the baseline: baseline ÷ svc-handler for latency p50 / p95 / p99 / max to entry visible, svc-handler ÷ baseline for services/s{note} | {} | > 1× on every figure | {} |",
                [
                    ratio(be.p50.as_secs_f64(), d.p50.as_secs_f64()),
                    ratio(be.p95.as_secs_f64(), d.p95.as_secs_f64()),
                    ratio(be.p99.as_secs_f64(), d.p99.as_secs_f64()),
                    ratio(be.max.as_secs_f64(), d.max.as_secs_f64()),
                    ratio(sh_rate, bl_rate),
                ]
                .join(" / "),
                met(faster)
            );
        }
    }
}

/// One latency distribution as a table row.
fn dist_row(o: &mut String, what: &str, d: &Dist) {
    let _ = writeln!(
        o,
        "| {what} | {} | {} | {} | {} | {} |",
        d.n,
        ms(d.p50),
        ms(d.p95),
        ms(d.p99),
        ms(d.max)
    );
}

/// 2. Apply latency, one change at a time.
fn latency(o: &mut String, r: &Results, sizes: &Sizes) {
    let _ = writeln!(
        o,
        "\n## 2. Apply latency (idle daemon, one change at a time)\n"
    );
    let _ = writeln!(
        o,
        "Each change sets a new `resolver.ConnectTimeout` on one of {} services (half with a router, all \
         linked into one of {} terminating gateways). The clock starts when `kv_put` of base.json returns; \
         \"observed\" stops when a blocking query on observed.json shows base.json's new ModifyIndex applied, \
         \"entry visible\" when a blocking query on the service-resolver shows the new value. The baseline \
         writes no observed.json, so its column is entry-visible only. Each timed change follows a pause of \
         {} ms, so it meets an idle daemon (the watch's token bucket, burst 2 at 10 per second, is full again); \
         the \"back to back\" row puts each change as soon as the previous one is applied.\n",
        sizes.latency_services,
        sizes.gateways,
        sizes.idle_gap.as_millis()
    );
    let _ = writeln!(o, "| | changes | p50 | p95 | p99 | max |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    if let Some(d) = &r.to_observed {
        dist_row(o, "svc-handler, to observed.json", d);
    }
    if let Some(d) = &r.to_entry {
        dist_row(o, "svc-handler, to entry visible", d);
    }
    if let Some(d) = &r.back_to_back {
        dist_row(o, "svc-handler back to back, to observed.json", d);
    }
    if let Some(be) = r.baseline.as_ref().and_then(|b| b.to_entry.as_ref()) {
        dist_row(o, "baseline, to entry visible", be);
        if let Some(d) = &r.to_entry {
            let _ = writeln!(
                o,
                "| baseline ÷ svc-handler (entry visible) | | {} | {} | {} | {} |",
                ratio(be.p50.as_secs_f64(), d.p50.as_secs_f64()),
                ratio(be.p95.as_secs_f64(), d.p95.as_secs_f64()),
                ratio(be.p99.as_secs_f64(), d.p99.as_secs_f64()),
                ratio(be.max.as_secs_f64(), d.max.as_secs_f64()),
            );
        }
    }
    if let Some(d) = r.steady.as_ref().and_then(|s| s.to_observed.as_ref()) {
        dist_row(
            o,
            &format!(
                "svc-handler with {} services present (part 5, {} ms apart), to observed.json",
                r.steady.as_ref().map(|s| s.services).unwrap_or(0),
                sizes.steady_gap.as_millis()
            ),
            d,
        );
    }
}

/// 3. Throughput of new services put at once.
fn throughput(o: &mut String, r: &Results, sizes: &Sizes) {
    let c8 = c8(r);
    let _ = writeln!(o, "\n## 3. Throughput (new services put at once)\n");
    let _ = writeln!(
        o,
        "Half of the services have a router, all a terminating-gateway link ({} gateways). base.json \
         puts run {} at a time; the clock runs from the first put until every service is applied (svc-handler: \
         a blocking listing of `<prefix>/observed/`, at most ten reads a second; baseline: every link present in \
         the gateways, its last write for a service). Consul writes are svc-handler's own count \
         (`svc_handler_consul_requests_total` over the write operations: kv.put, kv.cas, kv.acquire, kv.release, \
         kv.delete*, config.cas, config.put, config.delete, txn, session.create/renew/destroy); the baseline's \
         are the `consul config write` runs its handler logged. The ceiling is the config-entry put rate at \
         concurrency 8 ({c8:.0}/s).\n",
        sizes.gateways,
        sizes.put_concurrency
    );
    let _ = writeln!(
        o,
        "| | services | time | services/s | Consul writes/service | Consul writes/s | of the ceiling |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    if let Some(b) = &r.bulk {
        let _ = writeln!(
            o,
            "| svc-handler | {} | {:.1} s | {:.1} | {:.2} | {:.0} | {:.0} % |",
            b.services,
            b.secs,
            b.services as f64 / b.secs,
            b.writes / b.services as f64,
            b.writes / b.secs,
            100.0 * b.writes / b.secs / c8
        );
    }
    if let Some(t) = &r.three {
        let _ = writeln!(
            o,
            "| svc-handler, 3 daemons | {} | {:.1} s | {:.1} | {:.2} | {:.0} | {:.0} % |",
            t.services,
            t.secs,
            t.services as f64 / t.secs,
            t.writes / t.services as f64,
            t.writes / t.secs,
            100.0 * t.writes / t.secs / c8
        );
    }
    throughput_baseline(o, r);
    throughput_by_operation(o, r);
    throughput_three(o, r);
}

/// The baseline's throughput row, and svc-handler against it.
fn throughput_baseline(o: &mut String, r: &Results) {
    let c8 = c8(r);
    if let Some(b) = &r.baseline {
        match (&b.skipped, b.secs) {
            (Some(why), _) => {
                let _ = writeln!(o, "| baseline | skipped: {why} | | | | | |");
            }
            (None, Some(secs)) => {
                let _ = writeln!(
                    o,
                    "| baseline | {} | {:.1} s | {:.1} | {:.2} | {:.0} | {:.0} % |",
                    b.services,
                    secs,
                    b.services as f64 / secs,
                    b.writes / b.services as f64,
                    b.writes / secs,
                    100.0 * b.writes / secs / c8
                );
            }
            (None, None) => {
                let _ = writeln!(
                    o,
                    "| baseline (did not finish: {} of {} in {:.0} s) | {} | > {:.0} s | {:.1} | | | |",
                    b.done, b.services, b.elapsed, b.services, b.elapsed,
                    b.done as f64 / b.elapsed
                );
            }
        }
        if let (Some(bulk), Some(secs)) = (&r.bulk, b.secs) {
            let _ = writeln!(
                o,
                "| svc-handler ÷ baseline | | | {} | {} | | |",
                ratio(bulk.services as f64 / bulk.secs, b.services as f64 / secs),
                ratio(
                    bulk.writes / bulk.services as f64,
                    b.writes / b.services as f64
                ),
            );
        }
    }
}

/// svc-handler's writes per service by operation, CPU, bytes and memory.
fn throughput_by_operation(o: &mut String, r: &Results) {
    if let Some(b) = &r.bulk {
        let per = |by: &[(String, f64)]| {
            by.iter()
                .map(|(op, n)| format!("{op} {:.2}", n / b.services as f64))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "\nsvc-handler's writes per service by operation: {}; its reads: {}; bytes read per service by operation \
             (decoded): {}. During the bulk apply the daemon used {:.1} CPU \
             seconds and read {} from Consul ({} per service; {} per service as received, gzip-compressed); \
             its peak RSS so far: {}.",
            per(&b.writes_by_op),
            per(&b.reads_by_op),
            by_op_bytes(&b.bytes_by_op, b.services as f64),
            b.cpu,
            bytes(b.bytes),
            bytes(b.bytes / b.services as f64),
            bytes(b.wire / b.services as f64),
            b.peak_rss.map(|x| bytes(x as f64)).unwrap_or("–".into())
        );
    }
}

/// Bytes per service by operation, largest first.
fn by_op_bytes(by: &[(String, f64)], services: f64) -> String {
    let mut v: Vec<_> = by.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(op, n)| format!("{op} {}", bytes(n / services)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Three daemons on one bulk: links, reads and writes against one daemon's.
fn throughput_three(o: &mut String, r: &Results) {
    if let Some(t) = &r.three {
        let n = t.services as f64;
        let three = t.bytes / n;
        let one = r.bulk.as_ref().map(|b| b.bytes / b.services as f64);
        let _ = writeln!(
            o,
            "\nThe \"3 daemons\" row: three daemons (`bench-3a`, `bench-3b`, `bench-3c`) on one fresh prefix \
             and the same Consul, {} new services of their own (own names, own gateways) put at once, timed until \
             every one is applied. Their terminating gateways then held {} links to those services ({}; exactly \
             {} wanted). Together the three read {} from Consul ({} per service{}; target ≤ 3.5×; {} per \
             service as received, gzip-compressed; by operation, decoded: {}), made {:.2} Consul writes per service ({}) and used {:.1} CPU seconds.",
            t.services,
            t.links,
            if t.links == t.services {
                "one each"
            } else {
                "**not one each**"
            },
            t.services,
            bytes(t.bytes),
            bytes(three),
            one.map(|one| format!(
                " against one daemon's {}: {}",
                bytes(one),
                ratio(three, one)
            ))
            .unwrap_or_default(),
            bytes(t.wire / n),
            by_op_bytes(&t.bytes_by_op, n),
            t.writes / n,
            (t.writes_by_op.iter())
                .map(|(op, w)| format!("{op} {:.2}", w / n))
                .collect::<Vec<_>>()
                .join(", "),
            t.cpu
        );
    }
}

/// 4. One full resync of services already in sync.
fn steady_state(o: &mut String, r: &Results, sizes: &Sizes) {
    if let Some(s) = &r.steady {
        let _ = writeln!(
            o,
            "\n## 4. Steady state: one full resync of {} services in sync\n",
            s.services
        );
        let _ = writeln!(
            o,
            "{} simple services (defaults and resolver) were written {} at a time and applied by a first daemon \
             ({:.1} s, {:.0} services/s), which was then stopped. The resync is a fresh daemon's startup sync \
             (`--resync-interval 1h`): it re-checks every service exactly as a periodic resync does (reads only \
             for a service in sync; no session, no lock), and turns `/readyz` ready when done. The figures are \
             the new process's counters from its start to ready, so they include its start-up. CPU seconds come from \
             /proc/<pid>/stat (user + system, in clock ticks), since `process_cpu_seconds_total` counts whole \
             seconds only.\n",
            s.services, sizes.put_concurrency, s.setup_secs, s.services as f64 / s.setup_secs
        );
        let _ = writeln!(o, "| figure | value | target |");
        let _ = writeln!(o, "|---|---:|---|");
        let _ = writeln!(o, "| wall time, start to ready | {:.1} s | |", s.sync_secs);
        let by: Vec<String> = s
            .writes_by_op
            .iter()
            .map(|(op, n)| format!("{op} {n:.0}"))
            .collect();
        let _ = writeln!(
            o,
            "| Consul writes | {:.0}{}; {:.0} of them the start-up access check (a probe key put and deleted, a session created and destroyed) | 0 besides the check |",
            s.writes,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            },
            access_check_writes(&s.writes_by_op)
        );
        let _ = writeln!(o, "| daemon CPU seconds | {:.2} s | < 2 s |", s.cpu);
        let _ = writeln!(
            o,
            "| bytes read from Consul (all operations) | {} ({} per service) | |",
            bytes(s.bytes),
            bytes(s.bytes / s.services as f64)
        );
        let _ = writeln!(
            o,
            "| peak RSS (VmHWM) | {} | < 64 MiB |",
            s.peak_rss.map(|x| bytes(x as f64)).unwrap_or("–".into())
        );
        let _ = writeln!(
            o,
            "| reconciles: unchanged / applied | {:.0} / {:.0} | |",
            s.unchanged, s.applied
        );
    }
}

/// 5. What the watches cost per change and per service.
fn watch_cost(o: &mut String, r: &Results, sizes: &Sizes) {
    let _ = writeln!(o, "\n## 5. Watch cost\n");
    let _ = writeln!(
        o,
        "Bytes the watch of `<prefix>/desired/` fetched (`svc_handler_consul_response_bytes_total{{op=\"kv.list\"}}`) \
         and its wake-ups (`svc_handler_watch_wakeups_total`); the drift probe's config-entry listings \
         (`op=\"config.list\"`) for comparison, and the daemon's CPU time (all of it, not only the watch's).\n"
    );
    let _ = writeln!(
        o,
        "| when | per | kv.list bytes | wake-ups | config.list bytes | daemon CPU |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    if let Some(s) = &r.steady {
        let n = s.changes as f64;
        let _ = writeln!(
            o,
            "| {} single changes, {} ms apart, {} services present | applied change | {} | {:.2} | {} | {:.0} ms |",
            s.changes,
            sizes.steady_gap.as_millis(),
            s.services,
            bytes(s.list_bytes / n),
            s.wakeups / n,
            bytes(s.config_list_bytes / n),
            1000.0 * s.change_cpu / n
        );
    }
    if let Some(b) = &r.bulk {
        for (what, p) in [("first", b.early), ("all", b.end)] {
            if let Some((n, lb, cb, w, cpu)) = p {
                let k = n.max(1) as f64;
                let _ = writeln!(
                    o,
                    "| bulk apply, {what} {n} of {} services | applied service | {} | {:.2} | {} | {:.1} ms |",
                    b.services,
                    bytes(lb / k),
                    w / k,
                    bytes(cb / k),
                    1000.0 * cpu / k
                );
            }
        }
    }
}

/// 5a. Cost as the world grows: the same single change with more and more
/// services present, against the targets of issue 13.
fn world(o: &mut String, r: &Results, sizes: &Sizes) {
    let Some(small) = r.world.first() else { return };
    let _ = writeln!(o, "\n## 5a. Cost as the world grows\n");
    let _ = writeln!(
        o,
        "For each size, one daemon applied that many simple services (written {} at a time), \
         then {} single changes to services picked across them, {} ms apart, each timed from \
         the base.json put to observed.json showing it applied. Per change: every byte the daemon \
         read from Consul, as received (`svc_handler_consul_response_wire_bytes_total`, all \
         operations: listings ask for gzip and Consul compresses them) and decoded \
         (`svc_handler_consul_response_bytes_total`), of the decoded bytes what \
         `kv.list` and `kv.keys` read (the watch's shards and guard, and each reconcile's read of \
         its service folder), the daemon's and the Consul agent's CPU from /proc. RSS is the daemon's \
         peak (VmHWM, the setup included). Ratios are against the first row, in this run. \
         The changes start once Consul has settled after the setup: the bench has it take a Raft \
         snapshot (`GET /v1/snapshot`, which also trims its log: Consul would otherwise take one on \
         its own, seconds of CPU, within a minute of the setup's and the ceiling's writes, in the \
         middle of the timed changes; a change adds about five Raft entries, so in use that comes \
         every 3,000 changes or so), and after a bulk write Consul also keeps \
         busy on its own for a while (its snapshot and housekeeping; it does so with the daemon \
         stopped too), so the bench waits, up to 120 s, until five 2 s windows in a row show at most {} ms of \
         Consul CPU a second per server; the wait and that last window's rate are in the table \
         (Consul's idle share, the rate times the {} ms between changes, is part of every row's \
         per-change figure). Consul's CPU per change is taken over {} runs of consecutive changes; \
         the figure is the median run's (one burst of Consul's own housekeeping can otherwise decide \
         a row), with the mean over all changes beside it and every run's listed below the table. \
         Each dev agent row runs on a dev agent of its own, started for it after the other \
         parts, so that it holds that many services and no more (before commit 40c1540 the rows \
         shared one agent, and the last row's also held the earlier rows' services). The last \
         row, when \
         there is one, runs on three Consul servers on 127.0.0.1, .2 and .3 (`-server \
         -bootstrap-expect 3`, data on disk, so Raft fsyncs each write), started for it and \
         empty; the daemon talks to the first; Consul CPU is the three servers' together.\n",
        sizes.put_concurrency,
        small.changes,
        sizes.world_gap.as_millis(),
        (1000.0 * SETTLED_CPU_PER_SERVER) as u64,
        sizes.world_gap.as_millis(),
        WORLD_CHUNKS
    );
    let _ = writeln!(
        o,
        "| Consul | services | shards | settled after / then CPU a second | p50 | p99 | read / change (wire) | read / change (decoded) | kv.list+keys / change (decoded) | daemon CPU / change | Consul CPU / change, median run (× first row; mean) | daemon peak RSS |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for w in &r.world {
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.0} s / {:.0} ms | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms ({}; {:.1} ms) | {} |",
            w.consul,
            w.services,
            w.shards,
            w.settled.as_secs_f64(),
            1000.0 * w.idle_cpu,
            ms(w.to_observed.p50),
            ms(w.to_observed.p99),
            bytes(w.wire),
            bytes(w.bytes),
            bytes(w.watch_bytes),
            1000.0 * w.daemon_cpu,
            1000.0 * w.consul_cpu,
            ratio(w.consul_cpu, small.consul_cpu),
            1000.0 * w.consul_cpu_mean,
            w.rss.map(|b| bytes(b as f64)).unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(o, "\nConsul CPU per change in each run of changes:\n");
    for w in &r.world {
        let runs: Vec<String> = (w.consul_chunks.iter())
            .map(|c| format!("{:.1} ms", 1000.0 * c))
            .collect();
        let _ = writeln!(o, "- {}, {}: {}", w.consul, w.services, runs.join(", "));
    }
    let _ = writeln!(o, "\nRequests per change by operation:\n");
    for w in &r.world {
        let ops: Vec<String> = (w.requests_by_op.iter())
            .map(|(op, n)| format!("{op} {n:.1}"))
            .collect();
        let _ = writeln!(o, "- {}, {}: {}", w.consul, w.services, ops.join(", "));
    }
    let _ = writeln!(
        o,
        "\nTargets (issue 13): p50 ≤ 20 ms and p99 ≤ 60 ms at every size; ≤ 64 KiB read per change; \
         Consul CPU per change at the largest size ≤ 2× the smallest's; RSS ≤ 64 MiB at 5,000 and \
         ≤ 128 MiB at 20,000."
    );
}

/// 5b. Drift correction with the steady-state services present.
fn drift(o: &mut String, r: &Results, sizes: &Sizes) {
    let Some(s) = &r.steady else { return };
    let Some(d) = &s.drift_fix else { return };
    let _ = writeln!(o, "\n## 5b. Drift correction\n");
    let _ = writeln!(
        o,
        "With the {} services of part 4 in sync, {} hand edits, {} ms apart, each change one owned \
         service-resolver's `ConnectTimeout` with a plain config-entry write (Meta kept, as `consul config write` \
         of what `consul config read` printed would); the clock runs from that write until a blocking read of the \
         entry shows the recorded value again. The drift listings read under the daemon's default \
         `--drift-budget` (1024 KiB/s for all of them together); they read {} of listings per edit.\n",
        s.services,
        d.n,
        sizes.steady_gap.as_millis(),
        bytes(s.drift_list_bytes)
    );
    let _ = writeln!(o, "| | edits | p50 | p95 | p99 | max |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    dist_row(o, "hand edit to put back", d);
}

/// 6. What the baseline is.
fn baseline(o: &mut String, r: &Results) {
    let _ = writeln!(o, "\n## 6. Baseline\n");
    let _ = writeln!(
        o,
        "`consul watch -type=keyprefix -prefix <prefix>/desired/ bench/consul-watch-handler`: the handler \
         (bash + jq 1.6 + the consul CLI) finds the base.json keys whose ModifyIndex changed since its last \
         run (a state file) and runs `consul config write` for the service-defaults, the service-resolver, the \
         service-router when present, and a plain read-modify-write of the terminating gateway. It validates \
         nothing, marks nothing, reads nothing back, never deletes, and retries nothing. jq is in this project's \
         machine image but not in a minimal Debian install (`apt-get install jq`); the bench skips the baseline \
         when jq is missing.{}\n",
        r.baseline
            .as_ref()
            .and_then(|b| b.skipped.as_ref())
            .map(|w| format!(" **Skipped in this run: {w}.**"))
            .unwrap_or_default()
    );
}

/// The sizes' variables, and the time each part took.
fn sizes_and_parts(o: &mut String, r: &Results) {
    let _ = writeln!(o, "\n## Sizes and how to change them\n");
    let _ = writeln!(
        o,
        "`cargo bench --bench bench` runs the full sizes; `cargo test --all-targets` runs the bench in test mode \
         (tiny sizes, every part, no file written). Environment variables override the sizes:\n"
    );
    let _ = writeln!(o, "| variable | meaning | full | test mode |");
    let _ = writeln!(o, "|---|---|---|---|");
    for (v, what, full, test) in VARIABLES {
        let _ = writeln!(o, "| `{v}` | {what} | {full} | {test} |");
    }
    let _ = writeln!(o, "\nTime per part in this run:\n");
    let _ = writeln!(o, "| part | seconds |");
    let _ = writeln!(o, "|---|---:|");
    for (p, d) in &r.parts {
        let _ = writeln!(o, "| {p} | {:.1} |", d.as_secs_f64());
    }
}

// ---------------------------------------------------------------- formatting

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.1} ms")
    } else if m < 10_000.0 {
        format!("{m:.0} ms")
    } else {
        format!("{:.1} s", m / 1000.0)
    }
}

fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}
