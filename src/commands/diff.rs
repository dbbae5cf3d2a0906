//! `svc-handler diff SERVICE [-f FILE]`: what a reconcile would change in
//! Consul, entry by entry, as unified diffs of canonical pretty JSON.

use serde::Serialize;
use serde_json::Value;

use super::output::{print_json, Color, Paint};
use super::{display_path, read_spec, Ctx, Exit, Failure, EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT};
use crate::cli::DiffArgs;
use crate::consul::ConsulError;
use crate::entries;
use crate::keys::ServiceId;
use crate::plan::{self, Action, Change, Current, Desired, Plan, Target};
use crate::reconcile::read_current;
use crate::spec::{self, Spec};

/// Exit code of an error in `diff` (as diff(1): 0 same, 1 different, 2 trouble).
const EXIT_TROUBLE: u8 = EXIT_TIMEOUT;

/// One entry's comparison, as `--output json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryDiff {
    /// `service-defaults`, `service-resolver`, `service-splitter`, `service-router`,
    /// `terminating-gateway`.
    pub kind: String,
    /// The entry's name (the gateway's, for a link).
    pub name: String,
    pub action: Action,
    /// The entry in Consul, canonical; `null` when absent.
    pub current: Option<Value>,
    /// The entry a reconcile would leave, canonical; `null` when it would be absent.
    pub desired: Option<Value>,
    /// Why a reconcile would not do it (ownership), or leaves an entry in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// True when the reconcile stops here with `conflict`.
    pub blocked: bool,
    /// The unified diff; empty when nothing changes.
    pub diff: String,
}

impl EntryDiff {
    /// The rendering of one planned change.
    pub fn of(change: &Change) -> EntryDiff {
        let current = change.current.as_ref().map(entries::canonical);
        let desired = change.after().map(entries::canonical);
        let what = change.what();
        let diff = if change.action.writes() {
            let from = match &current {
                None => format!("{what} (absent)"),
                Some(_) => format!("{what} (Consul)"),
            };
            let to = match &desired {
                None => format!("{what} (deleted)"),
                Some(_) => format!("{what} (desired)"),
            };
            similar::TextDiff::from_lines(&pretty(current.as_ref()), &pretty(desired.as_ref()))
                .unified_diff()
                .context_radius(3)
                .header(&from, &to)
                .to_string()
        } else {
            String::new()
        };
        EntryDiff {
            kind: change.kind.as_str().to_string(),
            name: change.name.clone(),
            action: change.action,
            current,
            desired,
            note: change
                .blocked
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| change.note.clone()),
            blocked: change.blocked.is_some(),
            diff,
        }
    }
}

fn pretty(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(v) => serde_json::to_string_pretty(v).expect("a JSON value prints") + "\n",
    }
}

/// What a reconcile of `id` toward `spec` would change, as the reconcile
/// itself decides it ([`crate::plan::plan`]), entry by entry in the order it
/// would make them. `from_file`: `spec` is not base.json as stored but a
/// document that would become a new generation once written.
pub async fn plan(
    ctx: &Ctx,
    id: &ServiceId,
    spec: &Spec,
    from_file: bool,
) -> Result<Plan, ConsulError> {
    read_and_plan(ctx, id, Some(spec), |current| {
        let stored = current.generation.unwrap_or(0);
        let generation = if from_file { stored + 1 } else { stored };
        Desired::Spec { spec, generation }
    })
    .await
}

/// The reconcile's own plan for `id`, from a fresh read of what it reads
/// (`spec`: the document to plan toward, when not base.json as stored) and
/// the desired state `desired` makes of it.
pub async fn read_and_plan<'a>(
    ctx: &Ctx,
    id: &ServiceId,
    spec: Option<&'a Spec>,
    desired: impl FnOnce(&Current) -> Desired<'a>,
) -> Result<Plan, ConsulError> {
    let (current, _) = read_current(&ctx.client, &ctx.layout, id, spec).await?;
    let base_key = ctx.layout.base_key(id);
    let t = Target {
        id,
        base_key: &base_key,
    };
    Ok(plan::plan(&t, &desired(&current), &current))
}

/// The diffs of the entries that change, coloured on a terminal.
pub fn render(diffs: &[EntryDiff], paint: Paint) -> String {
    let mut out = String::new();
    for d in diffs {
        if !d.action.writes() && !d.blocked {
            continue;
        }
        if let Some(note) = &d.note {
            out.push_str(&paint.paint(
                Some(Color::Yellow),
                &format!("# {}/{}: {note}", d.kind, d.name),
            ));
            out.push('\n');
        }
        for line in d.diff.lines() {
            let color = if line.starts_with("+++") || line.starts_with("---") {
                Some(Color::Bold)
            } else if line.starts_with('+') {
                Some(Color::Green)
            } else if line.starts_with('-') {
                Some(Color::Red)
            } else if line.starts_with("@@") {
                Some(Color::Cyan)
            } else {
                None
            };
            out.push_str(&paint.paint(color, line));
            out.push('\n');
        }
    }
    out
}

#[derive(Serialize)]
struct DiffReport<'a> {
    name: &'a str,
    partition: &'a str,
    namespace: &'a str,
    /// The base.json compared: the file given, or the key in Consul KV.
    source: String,
    changed: bool,
    /// Why a reconcile would stop without writing: the preflight refusal
    /// (`invalid`) or the change it may not make (`conflict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<String>,
    entries: &'a [EntryDiff],
}

async fn run_inner(ctx: &Ctx, args: &DiffArgs) -> Exit {
    let id = ctx.service(&args.service)?;
    let (spec, source) = match &args.file {
        Some(path) => (read_spec(path)?, display_path(path)),
        None => {
            let key = ctx.layout.base_key(&id);
            let Some(base) = ctx.get(&key).await? else {
                return Err(Failure::failed(format!(
                    "{id}: {key} does not exist: nothing to compare (give -f FILE to compare a file)"
                )));
            };
            let spec =
                spec::parse(&base.value).map_err(|e| Failure::failed(format!("{key}: {e}")))?;
            (spec, key)
        }
    };
    let plan = plan(ctx, &id, &spec, args.file.is_some()).await?;
    let diffs: Vec<EntryDiff> = plan.changes.iter().map(EntryDiff::of).collect();
    // Exactly when a reconcile would write a config entry (it stops at a
    // blocked change, whose note is shown).
    let changed = plan.writes_config();
    if args.output.json() {
        print_json(&DiffReport {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            source,
            changed,
            blocked: plan.preflight_message().or_else(|| {
                plan.blocked()
                    .and_then(|c| c.blocked.as_ref())
                    .map(ToString::to_string)
            }),
            entries: &diffs,
        });
    } else {
        if let Some(m) = plan.preflight_message() {
            let note = format!("# {id}: {m}: a reconcile writes nothing and reports invalid");
            crate::outln!("{}", Paint::stdout().paint(Some(Color::Yellow), &note));
        }
        crate::commands::output::emit(&render(&diffs, Paint::stdout()));
    }
    Ok(if changed { EXIT_FAILED } else { EXIT_OK })
}

/// Exit 0: no change; 1: changes; 2: trouble.
pub async fn run(ctx: &Ctx, args: &DiffArgs) -> Exit {
    run_inner(ctx, args)
        .await
        .map_err(|f| Failure::new(EXIT_TROUBLE, f.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use serde_json::json;

    const BASE_KEY: &str = "svc-handler/desired/default/default/web/base.json";

    fn web() -> ServiceId {
        ServiceId::new("default", "default", "web").unwrap()
    }

    fn change(current: Option<Value>, body: Value) -> Change {
        let id = web();
        let t = Target {
            id: &id,
            base_key: BASE_KEY,
        };
        let body = body.as_object().cloned();
        plan::entry_change(
            &t,
            Kind::ServiceDefaults,
            body.as_ref(),
            crate::spec::Adopt::No,
            current.as_ref(),
            None,
            1,
        )
    }

    #[test]
    fn actions_and_text() {
        let d = EntryDiff::of(&change(None, json!({"Protocol": "http"})));
        assert_eq!(d.action, Action::Create);
        assert!(
            d.diff.starts_with(
                "--- service-defaults/web (absent)\n+++ service-defaults/web (desired)\n"
            ),
            "{}",
            d.diff
        );
        assert!(d.diff.contains("+  \"Protocol\": \"http\""), "{}", d.diff);

        let mut read = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "Meta": entries::ownership_meta(BASE_KEY), "CreateIndex": 10, "ModifyIndex": 11,
            "MeshGateway": {}});
        let d = EntryDiff::of(&change(Some(read.clone()), json!({"Protocol": "http"})));
        assert_eq!(d.action, Action::None);
        assert_eq!(d.diff, "");

        read["Protocol"] = json!("grpc");
        let d = EntryDiff::of(&change(Some(read.clone()), json!({"Protocol": "http"})));
        assert_eq!(d.action, Action::Update);
        assert!(d.diff.contains("-  \"Protocol\": \"grpc\""), "{}", d.diff);
        assert!(d.diff.contains("+  \"Protocol\": \"http\""), "{}", d.diff);
        assert!(!d.diff.contains("ModifyIndex"), "{}", d.diff);

        let id = web();
        let t = Target {
            id: &id,
            base_key: BASE_KEY,
        };
        let removal = plan::removal_change(&t, Kind::ServiceRouter, Some(&read), None);
        let d = EntryDiff::of(&removal);
        assert_eq!(d.action, Action::Delete);
        assert!(
            d.diff.contains("+++ service-router/web (deleted)"),
            "{}",
            d.diff
        );

        let shown = render(std::slice::from_ref(&d), Paint(false));
        assert_eq!(shown, d.diff);
        let colored = render(&[d], Paint(true));
        assert!(colored.contains("\x1b[31m-"), "{colored}");
    }

    #[test]
    fn blocked_changes_show_their_note() {
        let unmarked = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"});
        let d = EntryDiff::of(&change(Some(unmarked), json!({"Protocol": "http"})));
        assert!(d.blocked);
        assert!(d.note.as_deref().unwrap().contains("adopt"), "{d:?}");
        let shown = render(&[d], Paint(false));
        assert!(shown.starts_with("# service-defaults/web: "), "{shown}");
    }
}
