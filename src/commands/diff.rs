//! `svc-handler diff SERVICE [-f FILE]`: what a reconcile would change in
//! Consul, entry by entry, as unified diffs of canonical pretty JSON.

use serde::Serialize;
use serde_json::Value;

use super::output::{print_json, Color, Paint};
use super::{display_path, read_spec, Ctx, Exit, Failure, EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT};
use crate::cli::DiffArgs;
use crate::consul::{Client, ConsulError, QueryOptions, Scope};
use crate::entries::{self, EntryKind, Ownership};
use crate::keys::{RecordKind, ServiceId};
use crate::records::Record;
use crate::spec::{self, Spec};

/// Exit code of an error in `diff` (as diff(1): 0 same, 1 different, 2 trouble).
const EXIT_TROUBLE: u8 = EXIT_TIMEOUT;

/// What a reconcile would do to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    None,
    Create,
    Update,
    Delete,
}

/// One entry's comparison, as `--output json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryDiff {
    /// `service-defaults`, `service-resolver`, `service-router`, `terminating-gateway`.
    pub kind: String,
    /// The entry's name (the gateway's, for a link).
    pub name: String,
    pub action: Action,
    /// The entry in Consul, canonical; `null` when absent.
    pub current: Option<Value>,
    /// The entry a reconcile would leave, canonical; `null` when it would be absent.
    pub desired: Option<Value>,
    /// Why a reconcile would not do it (ownership).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The unified diff; empty when nothing changes.
    pub diff: String,
}

impl EntryDiff {
    fn new(
        kind: EntryKind,
        name: &str,
        current: Option<&Value>,
        desired: Option<&Value>,
        note: Option<String>,
    ) -> EntryDiff {
        let current = current.map(entries::canonical);
        let desired = desired.map(entries::canonical);
        let action = match (&current, &desired) {
            (None, None) => Action::None,
            (None, Some(_)) => Action::Create,
            (Some(_), None) => Action::Delete,
            (Some(c), Some(d)) if c == d => Action::None,
            (Some(_), Some(_)) => Action::Update,
        };
        let what = format!("{}/{name}", kind.as_str());
        let diff = if action == Action::None {
            String::new()
        } else {
            let old = pretty(current.as_ref());
            let new = pretty(desired.as_ref());
            let from = match action {
                Action::Create => format!("{what} (absent)"),
                _ => format!("{what} (Consul)"),
            };
            let to = match action {
                Action::Delete => format!("{what} (deleted)"),
                _ => format!("{what} (desired)"),
            };
            similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .context_radius(3)
                .header(&from, &to)
                .to_string()
        };
        EntryDiff {
            kind: kind.as_str().to_string(),
            name: name.to_string(),
            action,
            current,
            desired,
            note,
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

/// Why a reconcile would leave an existing entry alone instead of writing it.
fn blocked(entry: &Value, base_key: &str, adopt: bool, recorded: bool) -> Option<String> {
    match entries::ownership(Some(entry), base_key) {
        Ownership::Absent | Ownership::Ours => None,
        Ownership::Unmarked if adopt || recorded => None,
        Ownership::Unmarked => Some(
            "it exists without svc-handler's ownership mark: a reconcile leaves it unchanged and reports a conflict (set \"adopt\": true to take it over)".into(),
        ),
        Ownership::Other { key, managed_by } => {
            let by = match (managed_by.is_empty(), key.is_empty()) {
                (false, false) => format!("{managed_by} for {key}"),
                (false, true) => managed_by,
                (true, _) => format!("svc-handler for {key}"),
            };
            Some(format!(
                "it is managed by {by}: a reconcile leaves it unchanged and reports a conflict"
            ))
        }
    }
}

async fn entry(client: &Client, kind: &str, name: &str) -> Result<Option<Value>, ConsulError> {
    Ok(client
        .config_get(kind, name, &QueryOptions::consistent())
        .await?
        .0
        .map(|e| e.0))
}

async fn record(
    ctx: &Ctx,
    id: &ServiceId,
    kind: RecordKind,
) -> Result<Option<Record>, ConsulError> {
    Ok(ctx
        .get(&ctx.layout.record_key(id, kind))
        .await?
        .and_then(|p| serde_json::from_slice(&p.value).ok()))
}

/// Compares what `spec` asks for with what Consul holds, entry by entry, as
/// the reconcile flow would: ServiceDefaults, ServiceResolver, ServiceRouter
/// (written when present, deleted when absent and owned), and the service's
/// link in a terminating gateway (and in the gateway it leaves).
pub async fn plan(ctx: &Ctx, id: &ServiceId, spec: &Spec) -> Result<Vec<EntryDiff>, ConsulError> {
    let base_key = ctx.layout.base_key(id);
    let scoped = ctx
        .client
        .scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
    let mut out = Vec::new();
    for (kind, body) in [
        (EntryKind::ServiceDefaults, spec.defaults.as_ref()),
        (EntryKind::ServiceResolver, spec.resolver.as_ref()),
        (EntryKind::ServiceRouter, spec.router.as_ref()),
    ] {
        let current = entry(&scoped, kind.as_str(), &id.name).await?;
        let recorded = match &current {
            Some(_) => record(ctx, id, kind.record_kind()).await?.is_some(),
            None => false,
        };
        if kind == EntryKind::ServiceRouter && spec.router.is_none() {
            let owned = match entries::ownership(current.as_ref(), &base_key) {
                Ownership::Ours => true,
                Ownership::Unmarked => recorded,
                _ => false,
            };
            let desired = if owned { None } else { current.clone() };
            out.push(EntryDiff::new(
                kind,
                &id.name,
                current.as_ref(),
                desired.as_ref(),
                None,
            ));
            continue;
        }
        let desired = entries::build_entry(kind, id, body, &base_key);
        let note = current
            .as_ref()
            .and_then(|c| blocked(c, &base_key, spec.adopt, recorded));
        out.push(EntryDiff::new(
            kind,
            &id.name,
            current.as_ref(),
            Some(&desired),
            note,
        ));
    }

    const TGW: &str = "terminating-gateway";
    let recorded_gw = record(ctx, id, RecordKind::Tgw).await?.map(|r| r.name);
    if let Some(link) = &spec.terminating_gateway {
        let current = entry(&scoped, TGW, &link.gateway).await?;
        let new = entries::upsert_link(current.as_ref(), &link.gateway, id, link, &base_key);
        let note = current.as_ref().and_then(|c| {
            let linked = entries::find_link(c, id).is_some();
            (linked && recorded_gw.as_deref() != Some(link.gateway.as_str()) && !spec.adopt).then(|| {
                format!("{TGW}/{} already links {} and svc-handler has no record of writing it: a reconcile leaves it unchanged and reports a conflict (set \"adopt\": true to take it over)", link.gateway, id.name)
            })
        });
        let desired = new.as_ref().or(current.as_ref());
        out.push(EntryDiff::new(
            EntryKind::TerminatingGateway,
            &link.gateway,
            current.as_ref(),
            desired,
            note,
        ));
    }
    let leaving = recorded_gw.filter(|old| {
        spec.terminating_gateway
            .as_ref()
            .is_none_or(|l| &l.gateway != old)
    });
    if let Some(old) = leaving {
        if let Some(current) = entry(&scoped, TGW, &old).await? {
            let new = entries::remove_link(&current, id);
            out.push(EntryDiff::new(
                EntryKind::TerminatingGateway,
                &old,
                Some(&current),
                Some(new.as_ref().unwrap_or(&current)),
                None,
            ));
        }
    }
    Ok(out)
}

/// The diffs of the entries that change, coloured on a terminal.
pub fn render(diffs: &[EntryDiff], paint: Paint) -> String {
    let mut out = String::new();
    for d in diffs {
        if d.action == Action::None {
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
    let diffs = plan(ctx, &id, &spec).await?;
    let changed = diffs.iter().any(|d| d.action != Action::None);
    if args.output.json() {
        print_json(&DiffReport {
            name: &id.name,
            partition: &id.partition,
            namespace: &id.namespace,
            source,
            changed,
            entries: &diffs,
        });
    } else {
        print!("{}", render(&diffs, Paint::stdout()));
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
    use serde_json::json;

    const BASE_KEY: &str = "svc-handler/desired/default/default/web/base.json";

    #[test]
    fn actions_and_text() {
        let desired = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "Meta": entries::ownership_meta(BASE_KEY)});
        let d = EntryDiff::new(
            EntryKind::ServiceDefaults,
            "web",
            None,
            Some(&desired),
            None,
        );
        assert_eq!(d.action, Action::Create);
        assert!(
            d.diff.starts_with(
                "--- service-defaults/web (absent)\n+++ service-defaults/web (desired)\n"
            ),
            "{}",
            d.diff
        );
        assert!(d.diff.contains("+  \"Protocol\": \"http\""), "{}", d.diff);

        let mut read = desired.clone();
        read["CreateIndex"] = json!(10);
        read["ModifyIndex"] = json!(11);
        read["MeshGateway"] = json!({});
        let d = EntryDiff::new(
            EntryKind::ServiceDefaults,
            "web",
            Some(&read),
            Some(&desired),
            None,
        );
        assert_eq!(d.action, Action::None);
        assert_eq!(d.diff, "");

        read["Protocol"] = json!("grpc");
        let d = EntryDiff::new(
            EntryKind::ServiceDefaults,
            "web",
            Some(&read),
            Some(&desired),
            None,
        );
        assert_eq!(d.action, Action::Update);
        assert!(d.diff.contains("-  \"Protocol\": \"grpc\""), "{}", d.diff);
        assert!(d.diff.contains("+  \"Protocol\": \"http\""), "{}", d.diff);
        assert!(!d.diff.contains("ModifyIndex"), "{}", d.diff);

        let d = EntryDiff::new(EntryKind::ServiceRouter, "web", Some(&read), None, None);
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
    fn durations_compare_as_consul_reads_them() {
        let desired = json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "5s"});
        let read = json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "5000ms"});
        let d = EntryDiff::new(
            EntryKind::ServiceResolver,
            "web",
            Some(&read),
            Some(&desired),
            None,
        );
        assert_eq!(d.action, Action::None);
    }

    #[test]
    fn ownership_notes() {
        let unmarked = json!({"Kind": "service-defaults", "Name": "web"});
        assert!(blocked(&unmarked, BASE_KEY, false, false)
            .unwrap()
            .contains("adopt"));
        assert_eq!(blocked(&unmarked, BASE_KEY, true, false), None);
        assert_eq!(blocked(&unmarked, BASE_KEY, false, true), None);
        let other = json!({"Meta": entries::ownership_meta("other/base.json")});
        assert!(blocked(&other, BASE_KEY, true, false)
            .unwrap()
            .contains("svc-handler for other/base.json"));
    }
}
