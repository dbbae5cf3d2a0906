//! Reads everything a plan needs about one service ([`Current`]), with
//! consistent reads: its folder under the desired prefix (base.json and the
//! records), observed.json, its own entries, and the gateways involved.

use std::collections::BTreeMap;

use crate::consul::{Client, ConsulError, QueryOptions, Scope};
use crate::keys::{DesiredKey, Layout, ServiceId};
use crate::kind::Kind;
use crate::plan::Current;
use crate::records::{Observed, Record};
use crate::spec::{self, Spec};

/// Current state of `id`, plus base.json's bytes when it exists. `spec` is
/// what the caller will plan with when it is not base.json (`diff -f`); its
/// gateway is read too.
pub async fn read_current(
    client: &Client,
    layout: &Layout,
    id: &ServiceId,
    spec: Option<&Spec>,
) -> Result<(Current, Option<Vec<u8>>), ConsulError> {
    let consistent = QueryOptions::consistent();
    let dir = format!("{}/", layout.service_dir(id));
    let (pairs, _) = client.kv_list(&dir, &consistent).await?;
    let mut current = Current::default();
    let mut base = None;
    for p in pairs {
        match layout.parse_desired_key(&p.key) {
            DesiredKey::Base(_) => {
                current.generation = Some(p.modify_index);
                base = Some(p.value);
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
    let (observed, _) = client.kv_get(&layout.observed_key(id), &consistent).await?;
    current.observed = observed.and_then(|o| serde_json::from_slice::<Observed>(&o.value).ok());

    let scoped = client.scoped(Scope::new(id.partition.clone(), id.namespace.clone()));
    for kind in Kind::OWN {
        if let (Some(e), _) = scoped
            .config_get(kind.as_str(), &id.name, &consistent)
            .await?
        {
            current.entries.insert(kind, e.0);
        }
    }
    let parsed = match (spec, &base) {
        (Some(_), _) | (_, None) => None,
        (None, Some(bytes)) => spec::parse(bytes).ok(),
    };
    let names = Current::gateways_involved(spec.or(parsed.as_ref()), &current.records);
    current.gateways = read_gateways(&scoped, &names).await?;
    Ok((current, base))
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
