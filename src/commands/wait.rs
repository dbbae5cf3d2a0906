//! `svc-handler wait SERVICE...`: waits, with blocking queries on
//! observed.json, until the daemon has applied the current base.json or
//! failed on it; for several services, with a progress line.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{
    get_blocking, human_duration, retry_delays, sleep_until_before, Ctx, Exit, Failure,
    EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT,
};
use crate::cli::WaitArgs;
use crate::keys::ServiceId;
use crate::records::{Observed, Status};
use crate::watch::next_index;

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitEnd {
    /// observed.json shows `applied` at `generation` or later.
    Applied { generation: u64, observed: Observed },
    /// observed.json shows error, invalid or conflict at `generation` or later.
    Failed { generation: u64, observed: Observed },
    /// The time ran out; `observed` is what observed.json last said;
    /// `unreachable`: the last answer was a failure to reach Consul (then
    /// `generation` 0 means base.json was never read).
    TimedOut {
        generation: u64,
        observed: Option<Observed>,
        unreachable: Option<String>,
    },
}

/// What observed.json says about `generation`: `None` while it is older, or
/// (unless `fail_fast`) while the daemon will try again by itself (a
/// transient `error`, a preflight refusal that depends on other services).
pub fn judge(generation: u64, observed: &Observed, fail_fast: bool) -> Option<bool> {
    if observed.generation < generation {
        return None;
    }
    match observed.status {
        Status::Applied => Some(true),
        _ if observed.retry && !fail_fast => None,
        _ => Some(false),
    }
}

/// Waits until observed.json answers for the current base.json generation
/// (re-read each time observed.json changes), at most `timeout`.
pub async fn wait_applied(
    ctx: &Ctx,
    id: &ServiceId,
    timeout: Duration,
    fail_fast: bool,
) -> Result<WaitEnd, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let base_key = ctx.layout.base_key(id);
    let observed_key = ctx.layout.observed_key(id);
    let mut index = 0u64;
    let mut delays = retry_delays();
    let mut generation = 0u64;
    let mut last: Option<Observed> = None;
    // The last failure to reach Consul, until an answer comes.
    let mut trouble: Option<String> = None;
    let timed_out = |generation, last, trouble| WaitEnd::TimedOut {
        generation,
        observed: last,
        unreachable: trouble,
    };
    loop {
        let base = match tokio::time::timeout_at(deadline, ctx.get(&base_key)).await {
            Err(_) => return Ok(timed_out(generation, last, trouble)),
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.is_retryable() => {
                tracing::debug!(error = %e, "retrying");
                trouble = Some(e.to_string());
                sleep_until_before(delays.next().unwrap_or_default(), deadline).await;
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        let Some(base) = base else {
            return Err(Failure::failed(if generation == 0 {
                format!("{id}: {base_key} does not exist: nothing to wait for (apply it first)")
            } else {
                format!("{id}: {base_key} was deleted while waiting")
            }));
        };
        generation = base.modify_index;
        trouble = None;
        if let Some(end) = last.as_ref().and_then(|o| judged(generation, o, fail_fast)) {
            return Ok(end);
        }
        match get_blocking(&ctx.client, &observed_key, index, deadline).await {
            Ok(None) => return Ok(timed_out(generation, last, trouble)),
            Ok(Some((pair, meta))) => {
                index = next_index(index, meta.index);
                delays = retry_delays();
                let next = pair.and_then(|p| parse_observed(&observed_key, &p.value));
                show_retry(id, last.as_ref(), next.as_ref());
                last = next;
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "retrying");
                trouble = Some(e.to_string());
                index = 0;
                sleep_until_before(delays.next().unwrap_or_default(), deadline).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the wait ends when observed.json says `o` (see [`judge`]).
fn judged(generation: u64, o: &Observed, fail_fast: bool) -> Option<WaitEnd> {
    let observed = o.clone();
    match judge(generation, o, fail_fast)? {
        true => Some(WaitEnd::Applied {
            generation,
            observed,
        }),
        false => Some(WaitEnd::Failed {
            generation,
            observed,
        }),
    }
}

/// observed.json's value; `None` (and a warning) when it does not parse.
fn parse_observed(key: &str, value: &[u8]) -> Option<Observed> {
    serde_json::from_slice(value)
        .inspect_err(
            |e| tracing::warn!(key, error = %e, "observed.json does not parse; waiting on"),
        )
        .ok()
}

/// Says on standard error, once per new message, that the daemon is retrying.
fn show_retry(id: &ServiceId, before: Option<&Observed>, now: Option<&Observed>) {
    let Some(o) = now.filter(|o| o.status != Status::Applied && o.retry) else {
        return;
    };
    if before.is_some_and(|b| b.message == o.message && b.generation == o.generation) {
        return;
    }
    eprintln!("{id}: the daemon retries: {}", describe(o));
}

/// The result of `wait`, as `--output json` prints it.
#[derive(Debug, Serialize)]
struct WaitReport<'a> {
    name: &'a str,
    partition: &'a str,
    namespace: &'a str,
    /// `applied`, `failed` or `timeout`.
    result: &'static str,
    /// The base.json generation waited for.
    generation: u64,
    observed: Option<&'a Observed>,
}

/// One line on a failed outcome: status, generation, step and message.
pub fn describe(o: &Observed) -> String {
    let step = o.step.map(|s| format!(" in step {s}")).unwrap_or_default();
    let message = o
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!("{} at generation {}{step}{message}", o.status, o.generation)
}

/// What Consul shows of running daemons, for a wait that timed out: each
/// holds a session named `svc-handler <holder>` while it runs.
async fn daemons_seen(ctx: &Ctx) -> String {
    let prefix = ctx.layout.prefix();
    match ctx.client.session_list().await {
        Err(e) => format!("the sessions could not be listed ({e})"),
        Ok(all) => {
            let holders: Vec<&str> = (all.iter())
                .filter_map(|s| s.name.strip_prefix("svc-handler "))
                .collect();
            if holders.is_empty() {
                format!(
                    "no svc-handler daemon holds a session on this Consul: none is running \
                     (`svc-handler run --prefix {prefix}`), or its token cannot create sessions"
                )
            } else {
                format!(
                    "svc-handler sessions are held by {} but none wrote this generation's outcome: \
                     check that one runs with `--prefix {prefix}`, and its /readyz and logs \
                     (a token that cannot write the prefix keeps it not ready, naming the permission)",
                    holders.join(", ")
                )
            }
        }
    }
}

impl<'a> WaitReport<'a> {
    /// A service with no base.json: nothing to wait for.
    fn nothing(id: &'a ServiceId) -> WaitReport<'a> {
        WaitReport {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            result: "failed",
            generation: 0,
            observed: None,
        }
    }

    fn new(id: &'a ServiceId, end: &'a WaitEnd) -> WaitReport<'a> {
        let (result, generation, observed) = match end {
            WaitEnd::Applied {
                generation,
                observed,
            } => ("applied", *generation, Some(observed)),
            WaitEnd::Failed {
                generation,
                observed,
            } => ("failed", *generation, Some(observed)),
            WaitEnd::TimedOut {
                generation,
                observed,
                ..
            } => ("timeout", *generation, observed.as_ref()),
        };
        WaitReport {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            result,
            generation,
            observed,
        }
    }
}

/// Waits for each service in turn, all within `timeout`, with a progress
/// line on a terminal (indicatif; hidden when standard error is not one).
/// Exit 0 when all are applied, 1 when one failed (named on standard
/// error), 2 when time ran out. `json`: a list of reports on standard
/// output, one per service.
pub async fn wait_many(
    ctx: &Ctx,
    ids: &[ServiceId],
    timeout: Duration,
    fail_fast: bool,
    json: bool,
) -> Exit {
    let deadline = tokio::time::Instant::now() + timeout;
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{pos}/{len} applied {wide_bar} {msg}")
            .expect("a valid template"),
    );
    // `None`: nothing to wait for (no base.json), said on standard error.
    let mut ends: Vec<Option<WaitEnd>> = Vec::with_capacity(ids.len());
    for id in ids {
        bar.set_message(id.to_string());
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let end = match wait_applied(ctx, id, left, fail_fast).await {
            Ok(end) => end,
            Err(f) if f.code == EXIT_FAILED => {
                bar.suspend(|| eprintln!("{}", f.message));
                ends.push(None);
                continue;
            }
            Err(f) => return Err(f),
        };
        match &end {
            WaitEnd::Applied { .. } => bar.inc(1),
            WaitEnd::Failed { observed, .. } => {
                bar.suspend(|| eprintln!("{id}: {}", describe(observed)));
            }
            WaitEnd::TimedOut { .. } => {}
        }
        ends.push(Some(end));
    }
    bar.finish_and_clear();
    if json {
        let reports: Vec<WaitReport> = ids
            .iter()
            .zip(&ends)
            .map(|(id, e)| {
                e.as_ref()
                    .map_or_else(|| WaitReport::nothing(id), |e| WaitReport::new(id, e))
            })
            .collect();
        super::output::print_json(&reports);
    }
    let applied = (ends.iter())
        .filter(|e| matches!(e, Some(WaitEnd::Applied { .. })))
        .count();
    let timed_out: Vec<String> = (ids.iter().zip(&ends))
        .filter(|(_, e)| matches!(e, Some(WaitEnd::TimedOut { .. })))
        .map(|(id, _)| id.to_string())
        .collect();
    // The rest failed: a final outcome, or no base.json to wait for.
    let failed = ids.len() - applied - timed_out.len();
    eprintln!("{applied} of {} applied", ids.len());
    if failed > 0 {
        return Ok(EXIT_FAILED);
    }
    if !timed_out.is_empty() {
        eprintln!(
            "timed out after {} waiting for: {}",
            human_duration(timeout),
            timed_out.join(", ")
        );
        return Ok(EXIT_TIMEOUT);
    }
    Ok(EXIT_OK)
}

pub async fn run(ctx: &Ctx, args: &WaitArgs) -> Exit {
    if args.services.len() > 1 {
        let ids = args
            .services
            .iter()
            .map(|s| ctx.service(s))
            .collect::<Result<Vec<_>, _>>()?;
        let json = args.output.json();
        return wait_many(ctx, &ids, args.timeout, args.fail_fast, json).await;
    }
    let id = ctx.service(&args.services[0])?;
    let end = wait_applied(ctx, &id, args.timeout, args.fail_fast).await?;
    if args.output.json() {
        super::output::print_json(&WaitReport::new(&id, &end));
    }
    match end {
        WaitEnd::Applied { observed, .. } => {
            if !args.output.json() {
                crate::outln!("{id}: applied at generation {}", observed.generation);
            }
            Ok(EXIT_OK)
        }
        WaitEnd::Failed { observed, .. } => Err(Failure::new(
            EXIT_FAILED,
            format!("{id}: {}", describe(&observed)),
        )),
        WaitEnd::TimedOut {
            unreachable: Some(e),
            ..
        } => Err(Failure::new(
            EXIT_TIMEOUT,
            format!(
                "{id}: timed out after {}: Consul did not answer: {e}",
                human_duration(args.timeout)
            ),
        )),
        WaitEnd::TimedOut {
            generation,
            observed,
            unreachable: None,
        } => {
            let seen = match &observed {
                None => "there is no observed.json yet".to_string(),
                Some(o) => format!("observed.json still shows {}", describe(o)),
            };
            let daemons = daemons_seen(ctx).await;
            Err(Failure::new(
                EXIT_TIMEOUT,
                format!(
                    "{id}: timed out after {}: base.json is at generation {generation}, {seen}; {daemons}",
                    human_duration(args.timeout)
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(status: Status, generation: u64) -> Observed {
        Observed {
            message: (status != Status::Applied).then(|| "boom".to_string()),
            step: (status != Status::Applied).then_some(crate::kind::Step::Defaults),
            ..Observed::example(status, generation)
        }
    }

    #[test]
    fn judged_against_the_generation() {
        assert_eq!(judge(10, &observed(Status::Applied, 9), false), None);
        assert_eq!(judge(10, &observed(Status::Applied, 10), false), Some(true));
        assert_eq!(judge(10, &observed(Status::Applied, 11), false), Some(true));
        assert_eq!(judge(10, &observed(Status::Conflict, 9), false), None);
        assert_eq!(
            judge(10, &observed(Status::Invalid, 10), false),
            Some(false)
        );
        let mut retried = observed(Status::Error, 10);
        retried.retry = true;
        assert_eq!(
            judge(10, &retried, false),
            None,
            "the daemon still works on it"
        );
        assert_eq!(judge(10, &retried, true), Some(false), "--fail-fast");
        assert_eq!(
            judge(10, &observed(Status::Error, 10), false),
            Some(false),
            "final"
        );
    }

    #[test]
    fn failures_described() {
        assert_eq!(
            describe(&observed(Status::Error, 4)),
            "error at generation 4 in step defaults: boom"
        );
        assert_eq!(
            describe(&observed(Status::Applied, 4)),
            "applied at generation 4"
        );
    }
}
