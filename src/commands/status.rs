//! `svc-handler status [SERVICE]`: every service's outcome in a table, or
//! the details of one.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::output::{age, one_line, print_json, short_age, status_color, table, Cell, Paint};
use super::{Ctx, Exit, Failure, EXIT_OK};
use crate::cli::StatusArgs;
use crate::consul::QueryOptions;
use crate::keys::{DesiredKey, ObservedKey, ServiceId};
use crate::records::Observed;

/// Longest message shown in the table (the details and JSON show it whole).
const TABLE_MESSAGE_CHARS: usize = 100;

/// One service as `status` shows it (and `--output json` prints it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub partition: String,
    pub namespace: String,
    /// `applied`, `error`, `invalid`, `conflict` as observed.json says for the
    /// current base.json; `pending` while observed.json is missing or older than
    /// base.json; `deleting` when base.json is gone but observed.json is left;
    /// `unknown` when observed.json cannot be read.
    pub status: String,
    /// base.json's ModifyIndex; `null` when base.json is gone.
    pub generation: Option<u64>,
    /// The generation observed.json is for; `null` when there is none.
    pub observed_generation: Option<u64>,
    /// When observed.json was written (RFC 3339).
    pub updated_at: Option<String>,
    /// Seconds since then.
    pub age_seconds: Option<u64>,
    pub message: Option<String>,
    pub step: Option<String>,
    pub base_key: String,
    pub observed_key: String,
    /// observed.json as it is.
    pub observed: Option<Observed>,
}

/// What status a service is in, from its base.json generation and observed.json.
pub fn status_of(generation: Option<u64>, observed: Option<&Result<Observed, String>>) -> String {
    match (generation, observed) {
        (_, Some(Err(_))) => "unknown".into(),
        (Some(_), None) => "pending".into(),
        (Some(g), Some(Ok(o))) if o.generation < g => "pending".into(),
        (Some(_), Some(Ok(o))) => o.status.as_str().into(),
        (None, _) => "deleting".into(),
    }
}

fn build(
    ctx: &Ctx,
    id: &ServiceId,
    generation: Option<u64>,
    observed: Option<Result<Observed, String>>,
    now: SystemTime,
) -> ServiceStatus {
    let status = status_of(generation, observed.as_ref());
    let (ok, message) = match observed {
        None => (None, None),
        Some(Ok(o)) => {
            let m = o.message.clone();
            (Some(o), m)
        }
        Some(Err(e)) => (None, Some(e)),
    };
    let age_seconds = ok
        .as_ref()
        .and_then(|o| age(&o.updated_at, now))
        .map(|d| d.as_secs());
    ServiceStatus {
        name: id.name.clone(),
        partition: id.partition.clone(),
        namespace: id.namespace.clone(),
        status,
        generation,
        observed_generation: ok.as_ref().map(|o| o.generation),
        updated_at: ok.as_ref().map(|o| o.updated_at.clone()),
        age_seconds,
        message,
        step: ok
            .as_ref()
            .and_then(|o| o.step.map(|s| s.as_str().to_string())),
        base_key: ctx.layout.base_key(id),
        observed_key: ctx.layout.observed_key(id),
        observed: ok,
    }
}

fn parse_observed(key: &str, bytes: &[u8]) -> Result<Observed, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{key}: cannot read observed.json: {e}"))
}

/// Every service under the prefix: those with a base.json and those with an
/// observed.json, sorted by partition, namespace and name.
pub async fn list(ctx: &Ctx) -> Result<Vec<ServiceStatus>, Failure> {
    let opts = QueryOptions::consistent();
    let (desired, _) = ctx
        .client
        .kv_list(&ctx.layout.desired_prefix(), &opts)
        .await?;
    let (observed, _) = ctx
        .client
        .kv_list(&ctx.layout.observed_prefix(), &opts)
        .await?;
    type Found = (Option<u64>, Option<Result<Observed, String>>);
    let mut services: BTreeMap<ServiceId, Found> = BTreeMap::new();
    for p in &desired {
        match ctx.layout.parse_desired_key(&p.key) {
            DesiredKey::Base(id) => services.entry(id).or_default().0 = Some(p.modify_index),
            DesiredKey::Invalid { key, reason } if key.ends_with("/base.json") => {
                eprintln!("svc-handler: warning: {key} is not a service's base.json: {reason}")
            }
            _ => {}
        }
    }
    for p in &observed {
        if let ObservedKey::Observed(id) = ctx.layout.parse_observed_key(&p.key) {
            services.entry(id).or_default().1 = Some(parse_observed(&p.key, &p.value));
        }
    }
    let now = SystemTime::now();
    Ok(services
        .into_iter()
        .map(|(id, (generation, observed))| build(ctx, &id, generation, observed, now))
        .collect())
}

/// One service; an error when it has neither base.json nor observed.json.
pub async fn one(ctx: &Ctx, id: &ServiceId) -> Result<ServiceStatus, Failure> {
    let base_key = ctx.layout.base_key(id);
    let observed_key = ctx.layout.observed_key(id);
    let base = ctx.get(&base_key).await?;
    let observed = ctx.get(&observed_key).await?;
    if base.is_none() && observed.is_none() {
        return Err(Failure::failed(format!(
            "{id}: no such service under the prefix {:?} ({base_key} does not exist)",
            ctx.layout.prefix()
        )));
    }
    let observed = observed.map(|p| parse_observed(&observed_key, &p.value));
    Ok(build(
        ctx,
        id,
        base.map(|p| p.modify_index),
        observed,
        SystemTime::now(),
    ))
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The table of every service.
pub fn render_table(services: &[ServiceStatus], paint: Paint) -> String {
    let headers = [
        "NAME",
        "PARTITION",
        "NAMESPACE",
        "STATUS",
        "GENERATION",
        "OBSERVED",
        "AGE",
        "MESSAGE",
    ];
    let rows: Vec<Vec<Cell>> = services
        .iter()
        .map(|s| {
            vec![
                Cell::plain(&s.name),
                Cell::plain(&s.partition),
                Cell::plain(&s.namespace),
                Cell::colored(&s.status, status_color(&s.status)),
                Cell::plain(dash(s.generation)),
                Cell::plain(dash(s.observed_generation)),
                Cell::plain(dash(
                    s.age_seconds
                        .map(|a| short_age(std::time::Duration::from_secs(a))),
                )),
                Cell::plain(
                    s.message
                        .as_deref()
                        .map(|m| one_line(m, TABLE_MESSAGE_CHARS))
                        .unwrap_or_default(),
                ),
            ]
        })
        .collect();
    table(&headers, &rows, paint)
}

/// The details of one service.
pub fn render_details(s: &ServiceStatus, paint: Paint) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("Name", s.name.clone()),
        ("Partition", s.partition.clone()),
        ("Namespace", s.namespace.clone()),
        ("Status", paint.paint(status_color(&s.status), &s.status)),
        ("Generation", dash(s.generation)),
        ("Observed", dash(s.observed_generation)),
        (
            "Updated",
            match (&s.updated_at, s.age_seconds) {
                (Some(at), Some(a)) => {
                    format!(
                        "{at} ({} ago)",
                        short_age(std::time::Duration::from_secs(a))
                    )
                }
                (Some(at), None) => at.clone(),
                _ => "-".into(),
            },
        ),
    ];
    if let Some(o) = &s.observed {
        lines.push(("Holder", o.holder.clone()));
        lines.push(("Duration", format!("{}ms", o.duration_ms)));
    }
    lines.push(("Step", dash(s.step.as_deref())));
    lines.push(("Message", dash(s.message.as_deref())));
    lines.push(("Base key", s.base_key.clone()));
    lines.push(("Observed key", s.observed_key.clone()));
    let mut out = String::new();
    for (label, value) in &lines {
        out.push_str(&format!("{:<14}{value}\n", format!("{label}:")));
    }
    if let Some(o) = &s.observed {
        out.push_str("Objects:\n");
        let objects = [
            ("defaults", &o.objects.defaults),
            ("resolver", &o.objects.resolver),
            ("splitter", &o.objects.splitter),
            ("router", &o.objects.router),
            ("terminating_gateway", &o.objects.terminating_gateway),
        ];
        for (name, obj) in objects {
            let text = match obj {
                Some(r) => format!("{} (modify index {})", r.resource_id, r.modify_index),
                None => "-".into(),
            };
            out.push_str(&format!("  {name:<21}{text}\n"));
        }
    }
    out
}

pub async fn run(ctx: &Ctx, args: &StatusArgs) -> Exit {
    let paint = Paint::stdout();
    match &args.service {
        Some(arg) => {
            let id = ctx.service(arg)?;
            let s = one(ctx, &id).await?;
            if args.output.json() {
                print_json(&s);
            } else {
                crate::commands::output::emit(&render_details(&s, paint));
            }
        }
        None => {
            let all = list(ctx).await?;
            if args.output.json() {
                print_json(&all);
            } else if all.is_empty() {
                eprintln!(
                    "no services under {} (nor {})",
                    ctx.layout.desired_prefix(),
                    ctx.layout.observed_prefix()
                );
                if let Some(warning) = acl_warning(ctx).await {
                    eprintln!("warning: {warning}");
                }
            } else {
                crate::commands::output::emit(&render_table(&all, paint));
            }
        }
    }
    Ok(EXIT_OK)
}

/// Where ACLs are on, an empty listing may be a filtered one: Consul hides
/// the keys a token may not read and answers as if there were none.
async fn acl_warning(ctx: &Ctx) -> Option<String> {
    use crate::consul::AclToken;
    let rule = format!(
        "key_prefix \"{}/\" {{ policy = \"read\" }}",
        ctx.layout.prefix()
    );
    match ctx.client.acl_token_self().await.ok()? {
        AclToken::Disabled => None,
        AclToken::Unknown => Some(format!(
            "ACLs are on and no token was given (CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE), \
             or Consul does not know it: Consul hides the keys a token may not read, so \
             services may be there; a token needs {rule}"
        )),
        AclToken::Known(token) => Some(format!(
            "ACLs are on: Consul hides the keys token {} may not read, so services may be \
             there; it needs {rule}",
            token.accessor_id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Status;

    fn observed(status: Status, generation: u64) -> Observed {
        Observed::example(status, generation)
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(Some(5), None), "pending");
        assert_eq!(
            status_of(Some(5), Some(&Ok(observed(Status::Applied, 4)))),
            "pending"
        );
        assert_eq!(
            status_of(Some(5), Some(&Ok(observed(Status::Applied, 5)))),
            "applied"
        );
        assert_eq!(
            status_of(Some(5), Some(&Ok(observed(Status::Conflict, 5)))),
            "conflict"
        );
        assert_eq!(
            status_of(None, Some(&Ok(observed(Status::Applied, 5)))),
            "deleting"
        );
        assert_eq!(status_of(Some(5), Some(&Err("x".into()))), "unknown");
    }
}
