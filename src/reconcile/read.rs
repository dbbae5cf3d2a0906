//! Reads everything a plan needs about one service ([`Current`]), with
//! consistent reads: its folder under the desired prefix (base.json and the
//! records), observed.json, its own entries, and the gateways involved.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    let (current, base, _, _) = read(client, layout, id, spec, &|b| spec::parse(b), None).await?;
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
    let (current, _, parsed, _) = read(client, layout, id, None, parse, remembered).await?;
    Ok((current, parsed))
}

/// What the in-sync check read, for the flow under the lock to start from
/// (see [`read_under_lock`]).
#[derive(Debug)]
pub struct Prior {
    pub current: Current,
    pub parsed: Parsed,
    /// The service folder's index when read: the highest ModifyIndex under
    /// it, deleted keys' tombstones included.
    folder_index: u64,
}

/// Everything, for the in-sync check (see [`read_current_parsed`]).
pub async fn read_prior(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    parse: &(dyn Fn(&[u8]) -> Result<Spec, SpecError> + Sync),
    remembered: Option<&Record>,
) -> Result<Prior, ConsulError> {
    let (current, _, parsed, folder_index) =
        read(client, layout, id, None, parse, remembered).await?;
    Ok(Prior {
        current,
        parsed,
        folder_index,
    })
}

/// True when the service's folder is as `prior` read it: its index (a
/// keys-only listing's: the highest ModifyIndex under it, deleted keys
/// included, as the check's listing had it) has not moved. A failed read
/// says moved.
pub async fn folder_unmoved(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    prior: &Prior,
) -> bool {
    let dir = layout.service_dir(id);
    match client
        .kv_keys(&dir, None, &QueryOptions::consistent().plain())
        .await
    {
        Ok((_, meta)) => meta.index == prior.folder_index,
        Err(_) => false,
    }
}

/// The read of the flow under the lock. With the check's read (`prior`),
/// only the service folder and observed.json are read again: when nothing
/// in the folder moved since (its index, deleted keys included, is the
/// same), base.json and the records are as the check read them, and the
/// rest of `prior` stands: the service's entries are written check-and-set
/// on the index read (a change since makes the write fail, read again and
/// plan again), and a link is planned again against the gateway its batch
/// reads. Otherwise, everything afresh.
pub async fn read_under_lock(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    parse: &(dyn Fn(&[u8]) -> Result<Spec, SpecError> + Sync),
    remembered: Option<&Record>,
    prior: Option<Box<Prior>>,
) -> Result<(Current, Parsed), ConsulError> {
    if let Some(prior) = prior {
        let consistent = QueryOptions::consistent();
        let (dir, observed_key) = (layout.service_dir(id), layout.observed_key(id));
        // One service's keys: a few KiB, asked for plain.
        let plain = consistent.plain();
        let (listed, observed) = tokio::join!(
            client.kv_list(&dir, &plain),
            client.kv_get(&observed_key, &consistent),
        );
        let (_, meta) = listed?;
        if meta.index == prior.folder_index {
            let Prior {
                mut current,
                parsed,
                ..
            } = *prior;
            current.observed =
                (observed?.0).and_then(|o| serde_json::from_slice::<Observed>(&o.value).ok());
            return Ok((current, parsed));
        }
    }
    read_current_parsed(client, layout, id, parse, remembered).await
}

async fn read(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    spec: Option<&Spec>,
    parse: &(dyn Fn(&[u8]) -> Result<Spec, SpecError> + Sync),
    remembered: Option<&Record>,
) -> Result<(Current, Option<Vec<u8>>, Parsed, u64), ConsulError> {
    let consistent = QueryOptions::consistent();
    let dir = layout.service_dir(id);
    let scoped = client.scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
    // The folder, observed.json and the four entries at once: six
    // requests in flight, one round trip instead of six.
    let entry = |kind: Kind| {
        let scoped = &scoped;
        let consistent = &consistent;
        async move { scoped.config_get(kind.as_str(), &id.name, consistent).await }
    };
    let [k0, k1, k2, k3] = Kind::OWN;
    let observed_key = layout.observed_key(id);
    let plain = consistent.plain();
    let (listed, observed, e0, e1, e2, e3) = tokio::join!(
        client.kv_list(&dir, &plain),
        client.kv_get(&observed_key, &consistent),
        entry(k0),
        entry(k1),
        entry(k2),
        entry(k3),
    );
    let (pairs, folder_meta) = listed?;
    let folder_index = folder_meta.index;
    let (mut current, base) = folder(layout, pairs);
    // A folder deleted whole took the link record with it: the one the
    // watch saw last stands in for it (see `Reconciler::remember_link`).
    if base.is_none() && !current.records.contains_key(&Kind::TerminatingGateway) {
        if let Some(r) = remembered {
            current.records.insert(Kind::TerminatingGateway, r.clone());
        }
    }
    current.observed =
        (observed?.0).and_then(|o| serde_json::from_slice::<Observed>(&o.value).ok());

    // base.json parsed once, when the caller did not bring its spec.
    let parsed: Parsed = match (spec, &base) {
        (Some(_), _) | (_, None) => None,
        (None, Some(bytes)) => Some(parse(bytes)),
    };
    for (kind, got) in [(k0, e0), (k1, e1), (k2, e2), (k3, e3)] {
        match got {
            Ok((Some(e), _)) => {
                current.entries.insert(kind, e.0);
            }
            Ok((None, _)) => {}
            // The open-source edition refuses a namespace or partition: no
            // entry can be there; nothing more is read in that scope.
            Err(e) if e.is_enterprise_only() => {
                current.entries.clear();
                current.unsupported = Some(e.to_string());
                return Ok((current, base, parsed, folder_index));
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
    Ok((current, base, parsed, folder_index))
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
) -> Result<BTreeMap<String, Arc<serde_json::Value>>, ConsulError> {
    let mut out = BTreeMap::new();
    for name in names {
        let (gw, _) = scoped
            .config_get_shared(Kind::TerminatingGateway.as_str(), name)
            .await?;
        if let Some(gw) = gw {
            out.insert(name.clone(), gw);
        }
    }
    Ok(out)
}
