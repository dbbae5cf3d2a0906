//! `svc-handler delete SERVICE [--wait]`: deletes base.json; the daemon then
//! removes the entries it owns (when it prunes), its records and observed.json.

use std::time::Duration;

use serde::Serialize;

use super::{
    get_blocking, human_duration, keys_blocking, retry_delays, sleep_until_before, Ctx, Exit,
    Failure, EXIT_OK, EXIT_TIMEOUT,
};
use crate::cli::DeleteArgs;
use crate::consul::{ConsulError, QueryOptions};
use crate::keys::ServiceId;
use crate::plan::{Action, Desired};
use crate::records::{Observed, Status};
use crate::watch::next_index;

/// How waiting for the daemon's clean-up ended.
#[derive(Debug, Clone, PartialEq)]
pub enum GoneEnd {
    /// observed.json and every record are gone.
    Gone,
    /// Time ran out; these keys are still there, and observed.json said
    /// this last (the daemon failing to delete says why there).
    TimedOut {
        left: Vec<String>,
        last: Option<Box<Observed>>,
    },
}

/// What is left of a service: keys under its folder (not a folder marker
/// such as the one Consul's UI writes, which carries no data), and
/// observed.json.
struct Left {
    keys: Vec<String>,
    keys_index: u64,
    observed: Option<Observed>,
    observed_present: bool,
    observed_index: u64,
}

async fn left(ctx: &Ctx, id: &ServiceId) -> Result<Left, ConsulError> {
    let opts = QueryOptions::consistent();
    let (mut keys, kmeta) = ctx
        .client
        .kv_keys(&ctx.layout.service_dir(id), None, &opts)
        .await?;
    keys.retain(|k| !k.ends_with('/'));
    let (observed, ometa) = ctx
        .client
        .kv_get(&ctx.layout.observed_key(id), &opts)
        .await?;
    Ok(Left {
        keys,
        keys_index: kmeta.index,
        observed_present: observed.is_some(),
        observed: observed.and_then(|p| serde_json::from_slice(&p.value).ok()),
        observed_index: ometa.index,
    })
}

/// Waits, with blocking queries, until observed.json and every key in the
/// service's folder are gone; fails when base.json comes back.
pub async fn wait_gone(ctx: &Ctx, id: &ServiceId, timeout: Duration) -> Result<GoneEnd, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let base_key = ctx.layout.base_key(id);
    let observed_key = ctx.layout.observed_key(id);
    let dir = ctx.layout.service_dir(id);
    let mut delays = retry_delays();
    let mut last: Vec<String> = Vec::new();
    let mut said: Option<Box<Observed>> = None;
    loop {
        let now = match tokio::time::timeout_at(deadline, left(ctx, id)).await {
            Err(_) => {
                return Ok(GoneEnd::TimedOut {
                    left: last,
                    last: said,
                })
            }
            Ok(Ok(now)) => now,
            Ok(Err(e)) if e.is_retryable() => {
                sleep_until_before(delays.next().unwrap_or_default(), deadline).await;
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        if now.keys.contains(&base_key) {
            return Err(Failure::failed(format!(
                "{id}: {base_key} was written again while waiting for the clean-up"
            )));
        }
        if now.keys.is_empty() && !now.observed_present {
            return Ok(GoneEnd::Gone);
        }
        last = now.keys.clone();
        if now.observed_present {
            last.push(observed_key.clone());
        }
        said = now.observed.clone().map(Box::new);
        let waited = if now.observed_present {
            let index = next_index(0, now.observed_index);
            get_blocking(&ctx.client, &observed_key, index, deadline)
                .await
                .map(|r| r.map(|_| ()))
        } else {
            let index = next_index(0, now.keys_index);
            keys_blocking(&ctx.client, &dir, index, deadline)
                .await
                .map(|r| r.map(|_| ()))
        };
        match waited {
            Ok(None) => {
                return Ok(GoneEnd::TimedOut {
                    left: last,
                    last: said,
                })
            }
            Ok(Some(())) => delays = retry_delays(),
            Err(e) if e.is_retryable() => {
                sleep_until_before(delays.next().unwrap_or_default(), deadline).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `delete --dry-run -o json`.
#[derive(Serialize)]
struct DryRun<'a> {
    name: &'a str,
    partition: &'a str,
    namespace: &'a str,
    key: &'a str,
    generation: Option<u64>,
    /// What the daemon (pruning) would remove.
    removes: &'a [String],
}

/// `delete --dry-run`: what would go, deleting nothing.
fn dry_run(id: &ServiceId, key: &str, generation: Option<u64>, removes: &[String], json: bool) {
    if json {
        super::output::print_json(&DryRun {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            key,
            generation,
            removes,
        });
    } else {
        crate::outln!("{id}: would delete {key} (generation {})", dash(generation));
        say_removals(id, removes, "would remove");
    }
}

fn dash(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |g| g.to_string())
}

/// One line on what the daemon removes after base.json (when it prunes).
fn say_removals(id: &ServiceId, removes: &[String], verb: &str) {
    if removes.is_empty() {
        crate::outln!("{id}: the daemon {verb} no config entry (it owns none)");
    } else {
        crate::outln!(
            "{id}: the daemon (pruning, its default) {verb}: {}",
            removes.join(", ")
        );
    }
}

#[derive(Serialize)]
struct DeleteReport<'a> {
    name: &'a str,
    partition: &'a str,
    namespace: &'a str,
    key: &'a str,
    /// False when there was no base.json to delete.
    deleted: bool,
    /// The generation deleted.
    generation: Option<u64>,
    /// With --wait: `gone` or `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    wait: Option<&'static str>,
    /// With --wait and a timeout: the keys still there.
    #[serde(skip_serializing_if = "Option::is_none")]
    left: Option<&'a [String]>,
    /// What the daemon (pruning) removes after base.json.
    removes: &'a [String],
}

/// What the daemon (pruning, its default) would remove once base.json is
/// gone, as its own plan decides: `kind/name` of each entry it deletes, and
/// `terminating-gateway/<gw>#<service>` for a link it takes out. Entries it
/// does not own are not in the list (it leaves them).
pub async fn removals(ctx: &Ctx, id: &ServiceId) -> Result<Vec<String>, ConsulError> {
    let plan = super::diff::read_and_plan(ctx, id, None, |_| Desired::Gone { prune: true }).await?;
    Ok(plan
        .changes
        .iter()
        .filter(|c| c.blocked.is_none())
        .filter_map(|c| match c.action {
            Action::Delete => Some(c.what()),
            Action::Unlink => Some(format!("{}#{}", c.what(), id.name)),
            _ => None,
        })
        .collect())
}

pub async fn run(ctx: &Ctx, args: &DeleteArgs) -> Exit {
    let id = ctx.service(&args.service)?;
    let key = ctx.layout.base_key(&id);
    let base = ctx.get(&key).await?;
    let generation = base.as_ref().map(|p| p.modify_index);
    let removes = removals(ctx, &id).await?;
    let json = args.output.json();
    if args.dry_run {
        dry_run(&id, &key, generation, &removes, json);
        return Ok(EXIT_OK);
    }
    if base.is_some() {
        ctx.client.kv_delete(&key).await?;
    }
    if !json {
        match generation {
            Some(g) => crate::outln!("{id}: base.json deleted (it was at generation {g})"),
            None => crate::outln!("{id}: there is no base.json ({key}); nothing to delete"),
        }
        say_removals(&id, &removes, "removes");
    }
    let end = if args.wait {
        Some(wait_gone(ctx, &id, args.timeout).await?)
    } else {
        None
    };
    let left = match &end {
        Some(GoneEnd::TimedOut { left, .. }) => Some(left.as_slice()),
        _ => None,
    };
    if json {
        super::output::print_json(&DeleteReport {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            key: &key,
            deleted: generation.is_some(),
            generation,
            wait: end.as_ref().map(|e| match e {
                GoneEnd::Gone => "gone",
                GoneEnd::TimedOut { .. } => "timeout",
            }),
            left,
            removes: &removes,
        });
    }
    finish(ctx, &id, args, end)
}

/// The end of `delete`: its exit, and on a timeout the keys left and why.
fn finish(ctx: &Ctx, id: &ServiceId, args: &DeleteArgs, end: Option<GoneEnd>) -> Exit {
    match end {
        None => Ok(EXIT_OK),
        Some(GoneEnd::Gone) => {
            if !args.output.json() {
                crate::outln!("{id}: the daemon removed its records and observed.json");
            }
            Ok(EXIT_OK)
        }
        Some(GoneEnd::TimedOut { left, last }) => {
            // The daemon's own words when it tried and failed; else the
            // hint that it may not run.
            let why = match last.filter(|o| o.status != Status::Applied) {
                Some(o) => format!("the daemon could not finish: {}", super::wait::describe(&o)),
                None => format!(
                    "is `svc-handler run --prefix {}` running?",
                    ctx.layout.prefix()
                ),
            };
            Err(Failure::new(
                EXIT_TIMEOUT,
                format!(
                    "{id}: timed out after {} waiting for the clean-up ({why}); still there: {}",
                    human_duration(args.timeout),
                    left.join(", ")
                ),
            ))
        }
    }
}
