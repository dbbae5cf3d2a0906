//! Reads everything a plan needs about one service ([`Current`]), with
//! consistent reads: its folder under the desired prefix (base.json and the
//! records), observed.json, its own entries, and the gateways involved.

use std::collections::BTreeMap;

use crate::consul::{Client, ConsulError, QueryOptions, Scope};
use crate::entries;
use crate::keys::{DesiredKey, Layout, ServiceId};
use crate::kind::Kind;
use crate::plan::Current;
use crate::preflight::{self, Others};
use crate::records::{Observed, Pause, Record};
use crate::spec::{self, Spec, SpecError};

/// base.json as parsed by the reader: `None` when it does not exist.
pub type Parsed = Option<Result<Spec, SpecError>>;

/// Current state of `id`, plus base.json's bytes when it exists. `spec` is
/// what the caller will plan with when it is not base.json (`diff -f`); its
/// gateway is read too.
pub async fn read_current(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    spec: Option<&Spec>,
) -> Result<(Current, Option<Vec<u8>>), ConsulError> {
    let (current, base, _) = read(client, layout, id, spec, &|b| spec::parse(b), None).await?;
    Ok((current, base))
}

/// Current state of `id`, with base.json parsed once by `parse` (the reader
/// needs it to know which gateways and other entries to read).
pub async fn read_current_parsed(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    parse: &(dyn Fn(&[u8]) -> Result<Spec, SpecError> + Sync),
    remembered: Option<&Record>,
) -> Result<(Current, Parsed), ConsulError> {
    let (current, _, parsed) = read(client, layout, id, None, parse, remembered).await?;
    Ok((current, parsed))
}

async fn read(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    spec: Option<&Spec>,
    parse: &(dyn Fn(&[u8]) -> Result<Spec, SpecError> + Sync),
    remembered: Option<&Record>,
) -> Result<(Current, Option<Vec<u8>>, Parsed), ConsulError> {
    let consistent = QueryOptions::consistent();
    let dir = layout.service_dir(id);
    let (pairs, _) = client.kv_list(&dir, &consistent).await?;
    let (mut current, base) = folder(layout, pairs);
    // A folder deleted whole took the link record with it: the one the
    // watch saw last stands in for it (see `Reconciler::remember_link`).
    if base.is_none() && !current.records.contains_key(&Kind::TerminatingGateway) {
        if let Some(r) = remembered {
            current.records.insert(Kind::TerminatingGateway, r.clone());
        }
    }
    let (observed, _) = client.kv_get(&layout.observed_key(id), &consistent).await?;
    current.observed = observed.and_then(|o| serde_json::from_slice::<Observed>(&o.value).ok());

    // base.json parsed once, when the caller did not bring its spec.
    let parsed: Parsed = match (spec, &base) {
        (Some(_), _) | (_, None) => None,
        (None, Some(bytes)) => Some(parse(bytes)),
    };
    let scoped = client.scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
    for kind in Kind::OWN {
        match scoped
            .config_get(kind.as_str(), &id.name, &consistent)
            .await
        {
            Ok((Some(e), _)) => {
                current.entries.insert(kind, e.0);
            }
            Ok((None, _)) => {}
            // The open-source edition refuses a namespace or partition: no
            // entry can be there; nothing more is read in that scope.
            Err(e) if e.is_enterprise_only() => {
                current.unsupported = Some(e.to_string());
                return Ok((current, base, parsed));
            }
            Err(e) => return Err(e),
        }
    }
    let spec = spec.or(parsed.as_ref().and_then(|p| p.as_ref().ok()));
    let names = Current::gateways_involved(spec, &current.records);
    current.gateways = read_gateways(&scoped, &names).await?;
    if base.is_some() {
        adopt_remembered_link(&scoped, id, &mut current, remembered).await?;
    }
    if let Some(spec) = spec {
        current.others = Some(read_others(&scoped, spec, id).await?);
    }
    Ok((current, base, parsed))
}

/// What the service's folder holds: base.json (its bytes; its ModifyIndex
/// as the generation), the readable records, and pause.json.
fn folder(layout: &Layout, pairs: Vec<crate::consul::KvPair>) -> (Current, Option<Vec<u8>>) {
    let mut current = Current::default();
    let mut base = None;
    for p in pairs {
        match layout.parse_desired_key(&p.key) {
            DesiredKey::Base(_) => {
                current.generation = Some(p.modify_index);
                base = Some(p.value);
            }
            // An unreadable pause.json still pauses: the operator meant it.
            DesiredKey::Pause(_) => {
                current.paused = Some(serde_json::from_slice(&p.value).unwrap_or_else(|_| Pause {
                    reason: "(pause.json is not readable JSON)".into(),
                    ..Pause::default()
                }));
            }
            DesiredKey::Record(_, kind) => match serde_json::from_slice::<Record>(&p.value) {
                Ok(r) => {
                    current.records.insert(kind, r);
                }
                Err(e) => {
                    tracing::warn!(key = %p.key, error = %e, "ignoring an unreadable record")
                }
            },
            _ => {}
        }
    }
    (current, base)
}

/// tgw.json deleted on its own (base.json kept): when the gateway still
/// holds the link exactly as the watch last saw it recorded, that record
/// stands in for it, so the link is svc-handler's again instead of a
/// `conflict` over a link nobody accounts for. A link that is gone or was
/// changed since is left to the usual rules.
async fn adopt_remembered_link(
    scoped: &Client,
    id: &ServiceId,
    current: &mut Current,
    remembered: Option<&Record>,
) -> Result<(), ConsulError> {
    let Some(r) = remembered else { return Ok(()) };
    if current.records.contains_key(&Kind::TerminatingGateway) {
        return Ok(());
    }
    if !current.gateways.contains_key(&r.name) {
        let more = read_gateways(scoped, std::slice::from_ref(&r.name)).await?;
        current.gateways.extend(more);
    }
    let still = (current.gateways.get(&r.name))
        .and_then(|gw| entries::find_link(gw, id))
        .is_some_and(|link| entries::links_equal(link, &r.object));
    if still {
        current.records.insert(Kind::TerminatingGateway, r.clone());
    }
    Ok(())
}

/// The entries the preflight rules need for `spec` ([`preflight::needs`]).
/// The service's own protocol is the one svc-handler writes: base.json's, or
/// none (`tcp`), since it always writes a service-defaults entry.
async fn read_others(scoped: &Client, spec: &Spec, id: &ServiceId) -> Result<Others, ConsulError> {
    let needs = preflight::needs(spec, id);
    let consistent = QueryOptions::consistent();
    let mut others = Others::default();
    let get = |kind: &'static str, name: String| async move {
        let (e, _) = scoped.config_get(kind, &name, &consistent).await?;
        Ok::<_, ConsulError>(e.map(|e| e.0))
    };
    for name in needs.defaults.iter().filter(|n| **n != id.name) {
        others.add_defaults(name, get("service-defaults", name.clone()).await?.as_ref());
    }
    for name in needs.resolvers.iter().filter(|n| **n != id.name) {
        others.add_resolver(name, get("service-resolver", name.clone()).await?.as_ref());
    }
    if needs.proxy_defaults {
        others.set_proxy_defaults(get("proxy-defaults", "global".into()).await?.as_ref());
    }
    let own = entries::build_entry(Kind::ServiceDefaults, id, spec.defaults.as_ref(), "");
    others.add_defaults(&id.name, Some(&own));
    Ok(others)
}

async fn read_gateways(
    scoped: &Client,
    names: &[String],
) -> Result<BTreeMap<String, serde_json::Value>, ConsulError> {
    let mut out = BTreeMap::new();
    for name in names {
        let (gw, _) = scoped
            .config_get(
                Kind::TerminatingGateway.as_str(),
                name,
                &QueryOptions::consistent(),
            )
            .await?;
        if let Some(gw) = gw {
            out.insert(name.clone(), gw.0);
        }
    }
    Ok(out)
}
