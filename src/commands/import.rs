//! `svc-handler import SERVICE... | --all`: writes base.json from the
//! entries already in Consul, with `"adopt": true`, so that taking an estate
//! over starts from what is there (nothing dropped, nothing changed).

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Ctx, Exit, Failure, EXIT_FAILED, EXIT_OK};
use crate::cli::ImportArgs;
use crate::consul::{ConsulError, QueryOptions, Scope};
use crate::entries::{self, Ownership};
use crate::keys::ServiceId;
use crate::kind::Kind;
use crate::spec;

/// Fields of a live entry that base.json does not carry: svc-handler sets
/// them (or Consul does).
const NOT_IMPORTED: [&str; 7] = [
    "Kind",
    "Name",
    "Meta",
    "Partition",
    "Namespace",
    "CreateIndex",
    "ModifyIndex",
];

/// The link fields base.json's `terminating_gateway` takes.
const LINK_FIELDS: [&str; 4] = ["CAFile", "CertFile", "KeyFile", "SNI"];

/// What became of one service.
#[derive(Debug, Serialize)]
pub struct Imported {
    pub service: String,
    pub key: String,
    /// base.json was written.
    pub written: bool,
    /// The document (written, or that would be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
    /// Something to know (a Meta that cannot be kept, a base.json there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why nothing was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// base.json for `id` from its live entries: the document and notes, or
/// why there is none.
async fn document(ctx: &Ctx, id: &ServiceId) -> Result<(Value, Vec<String>), String> {
    let scoped = ctx
        .client
        .scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
    let base_key = ctx.layout.base_key(id);
    let consistent = QueryOptions::consistent();
    let mut doc = Map::new();
    let mut notes = Vec::new();
    for (field, kind) in [
        ("defaults", Kind::ServiceDefaults),
        ("resolver", Kind::ServiceResolver),
        ("splitter", Kind::ServiceSplitter),
        ("router", Kind::ServiceRouter),
    ] {
        let (entry, _) = scoped
            .config_get(kind.as_str(), &id.name, &consistent)
            .await
            .map_err(|e| e.to_string())?;
        let Some(entry) = entry else { continue };
        match entries::ownership(Some(&entry.0), &base_key) {
            Ownership::Unmarked => {}
            Ownership::Ours | Ownership::Absent => {
                return Err(format!("{kind}/{} is already svc-handler's", id.name))
            }
            Ownership::Other { key, managed_by } => {
                let by = if managed_by.is_empty() {
                    key
                } else {
                    managed_by
                };
                return Err(format!(
                    "{kind}/{} is managed by {by}; not imported",
                    id.name
                ));
            }
        }
        let Some(object) = entry.0.as_object() else {
            continue;
        };
        if let Some(meta) = object.get("Meta").and_then(Value::as_object) {
            let keys: Vec<&str> = meta.keys().map(String::as_str).collect();
            if !keys.is_empty() {
                notes.push(format!(
                    "{kind}/{}'s Meta ({}) cannot be kept (svc-handler sets Meta itself): the daemon ends conflict naming it until base.json says \"adopt\": \"replace\"",
                    id.name,
                    keys.join(", ")
                ));
            }
        }
        let body: Map<String, Value> = object
            .iter()
            .filter(|(k, _)| !NOT_IMPORTED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        doc.insert(field.into(), Value::Object(body));
    }
    if let Some(link) = link(&scoped, id, &mut notes)
        .await
        .map_err(|e| e.to_string())?
    {
        doc.insert("terminating_gateway".into(), link);
    }
    if doc.is_empty() {
        return Err(format!(
            "no service-defaults, service-resolver, service-splitter or service-router named {} in Consul",
            id.name
        ));
    }
    doc.insert("adopt".into(), Value::Bool(true));
    Ok((Value::Object(doc), notes))
}

/// The service's link, when exactly one terminating gateway has one.
async fn link(
    scoped: &crate::consul::Client,
    id: &ServiceId,
    notes: &mut Vec<String>,
) -> Result<Option<Value>, ConsulError> {
    let kind = Kind::TerminatingGateway.as_str();
    let (gateways, _) = scoped
        .config_list(kind, &QueryOptions::consistent())
        .await?;
    let found: Vec<(&str, &Value)> = gateways
        .iter()
        .filter_map(|g| entries::find_link(&g.0, id).map(|l| (g.name(), l)))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [(gateway, l)] => {
            let mut link = Map::new();
            link.insert("Gateway".into(), Value::from(*gateway));
            for f in LINK_FIELDS {
                if let Some(v) = l
                    .get(f)
                    .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                {
                    link.insert(f.into(), v.clone());
                }
            }
            Ok(Some(Value::Object(link)))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(g, _)| *g).collect();
            notes.push(format!(
                "linked in several terminating gateways ({}); base.json names one, so none is imported",
                names.join(", ")
            ));
            Ok(None)
        }
    }
}

/// Imports one service: checks the document as `validate` does, then
/// writes it only where there is no base.json yet.
async fn import_one(ctx: &Ctx, id: &ServiceId, dry_run: bool) -> Imported {
    let key = ctx.layout.base_key(id);
    let mut out = Imported {
        service: id.to_string(),
        key: key.clone(),
        written: false,
        document: None,
        notes: Vec::new(),
        error: None,
    };
    let (doc, notes) = match document(ctx, id).await {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.notes = notes;
    let bytes = serde_json::to_vec_pretty(&doc).expect("a document serializes");
    out.document = Some(doc);
    if let Err(e) = spec::parse(&bytes) {
        out.error = Some(format!(
            "the live entries do not make a valid base.json: {e}"
        ));
        return out;
    }
    if dry_run {
        return out;
    }
    match ctx.client.kv_cas(&key, &bytes, 0).await {
        Ok(()) => out.written = true,
        Err(e) if e.is_cas_conflict() => {
            out.error = Some(format!("{key} exists; it is not overwritten"));
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

/// Every service with an unmarked service-defaults, service-resolver,
/// service-splitter or service-router in the client's scope.
async fn all_services(ctx: &Ctx) -> Result<Vec<ServiceId>, ConsulError> {
    let mut names = std::collections::BTreeSet::new();
    for kind in Kind::OWN {
        let (list, _) = ctx
            .client
            .config_list(kind.as_str(), &QueryOptions::consistent())
            .await?;
        for e in list {
            if entries::ownership(Some(&e.0), "") == Ownership::Unmarked {
                names.insert(e.name().to_string());
            }
        }
    }
    Ok(names
        .into_iter()
        .filter_map(|n| ServiceId::new(&ctx.partition, &ctx.namespace, &n).ok())
        .collect())
}

pub async fn run(ctx: &Ctx, args: &ImportArgs) -> Exit {
    let ids = if args.all {
        all_services(ctx).await?
    } else {
        args.services
            .iter()
            .map(|s| ctx.service(s))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut results = Vec::new();
    for id in &ids {
        results.push(import_one(ctx, id, args.dry_run).await);
    }
    if args.output.json() {
        super::output::print_json(&results);
    } else {
        for r in &results {
            say(r, args.dry_run);
        }
    }
    match results.iter().filter(|r| r.error.is_some()).count() {
        0 => Ok(EXIT_OK),
        n => Err(Failure::new(
            EXIT_FAILED,
            format!("{n} of {} services not imported", results.len()),
        )),
    }
}

/// One service's result on standard output (errors and notes too, so that
/// the lines of several services stay together).
fn say(r: &Imported, dry_run: bool) {
    match (&r.error, &r.document) {
        (Some(e), _) => crate::outln!("{}: not imported: {e}", r.service),
        (None, Some(doc)) if dry_run => crate::outln!(
            "{}: would write {}:\n{}",
            r.service,
            r.key,
            serde_json::to_string_pretty(doc).unwrap_or_default()
        ),
        (None, _) => crate::outln!(
            "{}: {} written; the daemon adopts what is there",
            r.service,
            r.key
        ),
    }
    for n in &r.notes {
        crate::outln!("{}: note: {n}", r.service);
    }
}
