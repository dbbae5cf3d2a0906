//! `svc-handler plan [SERVICE...]`: one line per service, from the
//! reconcile's own read and plan ([`crate::plan::plan`] toward
//! [`crate::reconcile::desired`]): in sync, would change which entries,
//! blocked and why, invalid, pending (Consul matches, the outcome is not
//! recorded yet), or paused. Exit 0 when nothing would change, 2 when
//! something would, 1 on an error (invalid, blocked, or Consul trouble),
//! like `terraform plan -detailed-exitcode`.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Ctx, Exit, Failure, EXIT_OK};
use crate::cli::PlanArgs;
use crate::consul::{ConsulError, QueryOptions};
use crate::keys::{DesiredKey, ObservedKey, ServiceId};
use crate::plan::{self, Current, Plan, Target};
use crate::reconcile::{desired, read_current};
use crate::records::{Observed, Status};
use crate::spec;

/// Exit status when a reconcile would change something.
const EXIT_CHANGES: u8 = 2;

/// Where one service stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InSync,
    Changes,
    Blocked,
    Invalid,
    Pending,
    Paused,
    /// Consul could not be read for it.
    Error,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::InSync => "in sync",
            State::Changes => "would change",
            State::Blocked => "blocked",
            State::Invalid => "invalid",
            State::Pending => "pending",
            State::Paused => "paused",
            State::Error => "error",
        }
    }
}

/// One entry a reconcile would write.
#[derive(Debug, Serialize)]
pub struct Write {
    kind: String,
    name: String,
    action: &'static str,
}

/// One service's line.
#[derive(Debug, Serialize)]
pub struct Line {
    name: String,
    partition: String,
    namespace: String,
    state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    writes: Vec<Write>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Where a service stands, from its read and its plan (pure).
pub fn classify(plan: &Plan, current: &Current, t: &Target<'_>) -> (State, Option<String>) {
    if let Some(p) = &current.paused {
        return (State::Paused, Some(p.message()));
    }
    if plan.writes_config() {
        // A reconcile writes these, then may stop at a later blocked change.
        let then = plan.stops_at().map(|(_, m)| format!("then stops: {m}"));
        return (State::Changes, then);
    }
    match plan.stops_at() {
        Some((Status::Invalid, m)) => return (State::Invalid, Some(m)),
        Some((_, m)) => return (State::Blocked, Some(m)),
        None => {}
    }
    let observed = current.observed.as_ref();
    if plan.in_sync(t, observed) {
        return (State::InSync, None);
    }
    (State::Pending, Some(pending_reason(plan, observed)))
}

/// Why a service whose entries match is still pending.
fn pending_reason(plan: &Plan, observed: Option<&Observed>) -> String {
    match (plan.generation, observed) {
        (None, _) => "base.json is gone; the daemon has not finished forgetting it".into(),
        (Some(g), None) => format!("no outcome recorded yet for generation {g}"),
        (Some(g), Some(o)) if o.generation < g => {
            format!(
                "observed.json is at generation {}, base.json at {g}",
                o.generation
            )
        }
        (Some(_), Some(o)) => format!(
            "observed.json says {}{}",
            o.status,
            o.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    }
}

async fn plan_one(ctx: &Ctx, id: &ServiceId) -> Result<Line, ConsulError> {
    let (current, base) = read_current(&ctx.client, &ctx.layout, id, None).await?;
    let base_key = ctx.layout.base_key(id);
    let t = Target {
        id,
        base_key: &base_key,
    };
    let mut line = Line {
        name: id.name.clone(),
        partition: id.partition.clone(),
        namespace: id.namespace.clone(),
        state: State::InSync,
        generation: current.generation,
        writes: Vec::new(),
        message: None,
    };
    let spec = match base.as_deref().map(spec::parse) {
        Some(Err(e)) if current.paused.is_none() => {
            line.state = State::Invalid;
            line.message = Some(format!("{base_key}: {e}"));
            return Ok(line);
        }
        parsed => parsed.and_then(Result::ok),
    };
    // The CLI cannot know the daemon's --no-prune: it plans as a pruning daemon.
    let plan = plan::plan(&t, &desired(spec.as_ref(), &current, true), &current);
    (line.state, line.message) = classify(&plan, &current, &t);
    if line.state == State::Changes {
        line.writes = (plan.config_writes())
            .map(|c| Write {
                kind: c.kind.as_str().to_string(),
                name: c.name.clone(),
                action: c.action.as_str(),
            })
            .collect();
    }
    Ok(line)
}

/// The services to plan: those named (a trailing `*` matches a name
/// prefix), else every one with a base.json or an observed.json.
async fn services(ctx: &Ctx, args: &PlanArgs) -> Result<BTreeSet<ServiceId>, Failure> {
    let opts = QueryOptions::consistent();
    let (desired, _) = (ctx.client)
        .kv_keys(&ctx.layout.desired_prefix(), None, &opts)
        .await?;
    let (observed, _) = (ctx.client)
        .kv_keys(&ctx.layout.observed_prefix(), None, &opts)
        .await?;
    let mut all = BTreeSet::new();
    for k in &desired {
        if let DesiredKey::Base(id) = ctx.layout.parse_desired_key(k) {
            all.insert(id);
        }
    }
    for k in &observed {
        if let ObservedKey::Observed(id) = ctx.layout.parse_observed_key(k) {
            all.insert(id);
        }
    }
    if args.services.is_empty() {
        return Ok(all);
    }
    let mut out = BTreeSet::new();
    for arg in &args.services {
        match arg.strip_suffix('*') {
            Some(stem) => {
                let probe = ctx.service(&format!("{stem}x"))?;
                let name = probe.name.strip_suffix('x').unwrap_or_default().to_string();
                out.extend(
                    all.iter()
                        .filter(|id| {
                            (&id.partition, &id.namespace) == (&probe.partition, &probe.namespace)
                                && id.name.starts_with(&name)
                        })
                        .cloned(),
                );
            }
            None => {
                out.insert(ctx.service(arg)?);
            }
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, args: &PlanArgs) -> Exit {
    let ids = services(ctx, args).await?;
    let mut lines = Vec::with_capacity(ids.len());
    for id in &ids {
        let line = plan_one(ctx, id).await.unwrap_or_else(|e| Line {
            name: id.name.clone(),
            partition: id.partition.clone(),
            namespace: id.namespace.clone(),
            state: State::Error,
            generation: None,
            writes: Vec::new(),
            message: Some(e.to_string()),
        });
        lines.push((id, line));
    }
    if args.output.json() {
        let all: Vec<&Line> = lines.iter().map(|(_, l)| l).collect();
        super::output::print_json(&all);
    } else {
        print_text(&lines);
    }
    let states: BTreeSet<State> = lines.iter().map(|(_, l)| l.state).collect();
    let error = [State::Error, State::Invalid, State::Blocked];
    Ok(if error.iter().any(|s| states.contains(s)) {
        super::EXIT_FAILED
    } else if states.contains(&State::Changes) {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

fn print_text(lines: &[(&ServiceId, Line)]) {
    let mut out = String::new();
    for (id, l) in lines {
        let mut text = format!("{id}: {}", l.state.word());
        if !l.writes.is_empty() {
            let w: Vec<String> = (l.writes.iter())
                .map(|w| format!("{}/{} ({})", w.kind, w.name, w.action))
                .collect();
            text.push_str(&format!(" {}", w.join(", ")));
        }
        if let Some(m) = &l.message {
            text.push_str(&format!(": {m}"));
        }
        out.push_str(&text);
        out.push('\n');
    }
    let mut counts: Vec<String> = Vec::new();
    for s in [
        State::InSync,
        State::Changes,
        State::Blocked,
        State::Invalid,
        State::Pending,
        State::Paused,
        State::Error,
    ] {
        let n = lines.iter().filter(|(_, l)| l.state == s).count();
        if n > 0 {
            counts.push(format!("{n} {}", s.word()));
        }
    }
    out.push_str(&format!(
        "{} services: {}\n",
        lines.len(),
        counts.join(", ")
    ));
    super::output::emit(&out);
}
