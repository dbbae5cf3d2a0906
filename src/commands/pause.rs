//! `svc-handler pause SERVICE [--reason TEXT]` and `svc-handler resume
//! SERVICE`: pause.json beside base.json, which the daemon honours: while it
//! is there it writes none of the service's entries (no apply, no drift
//! correction, no deletion) and observed.json says `paused` with the reason;
//! once it is gone the daemon applies the latest base.json.

use serde::Serialize;

use super::{Ctx, Exit, EXIT_OK};
use crate::cli::{PauseArgs, ResumeArgs};
use crate::keys::ServiceId;
use crate::records::{now_rfc3339, Pause};

#[derive(Serialize)]
struct PauseReport<'a> {
    name: &'a str,
    partition: &'a str,
    namespace: &'a str,
    key: &'a str,
    paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pause: Option<&'a Pause>,
}

/// `-o json`: the service, its pause.json key, and the pause when paused.
fn report(id: &ServiceId, key: &str, pause: Option<&Pause>) {
    super::output::print_json(&PauseReport {
        name: &id.name,
        partition: &id.partition,
        namespace: &id.namespace,
        key,
        paused: pause.is_some(),
        pause,
    });
}

/// Who runs the command, for pause.json (`$USER@host`).
fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

pub async fn pause(ctx: &Ctx, args: &PauseArgs) -> Exit {
    let id = ctx.service(&args.service)?;
    let key = ctx.layout.pause_key(&id);
    let pause = Pause {
        reason: args.reason.clone().unwrap_or_default(),
        by: who(),
        paused_at: now_rfc3339(),
    };
    let body = serde_json::to_vec_pretty(&pause).expect("a pause serializes");
    ctx.client.kv_put(&key, &body).await?;
    if args.output.json() {
        report(&id, &key, Some(&pause));
    } else {
        crate::outln!(
            "{id}: paused; the daemon leaves its entries alone until `svc-handler resume {}`",
            args.service
        );
    }
    Ok(EXIT_OK)
}

pub async fn resume(ctx: &Ctx, args: &ResumeArgs) -> Exit {
    let id = ctx.service(&args.service)?;
    let key = ctx.layout.pause_key(&id);
    let was = ctx.get(&key).await?.is_some();
    if was {
        ctx.client.kv_delete(&key).await?;
    }
    if args.output.json() {
        report(&id, &key, None);
    } else if was {
        crate::outln!("{id}: resumed; the daemon applies the latest base.json");
    } else {
        crate::outln!("{id}: was not paused");
    }
    Ok(EXIT_OK)
}
