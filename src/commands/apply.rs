//! `svc-handler apply SERVICE -f FILE` (or `-f DIR`, see [`super::apply_dir`]): validates a base.json and writes it,
//! normalized, with check-and-set so that a concurrent edit is never lost.

use serde::Serialize;

use super::{read_spec, Ctx, Exit, Failure, EXIT_OK};
use crate::cli::ApplyArgs;
use crate::keys::ServiceId;
use crate::spec;

/// What `apply` did, as `--output json` prints it.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub name: String,
    pub partition: String,
    pub namespace: String,
    pub key: String,
    /// The base.json ModifyIndex now: the generation `wait` waits for.
    pub generation: u64,
    /// False when base.json already held this document (nothing written).
    pub changed: bool,
}

pub async fn run(ctx: &Ctx, args: &ApplyArgs) -> Exit {
    if args.file.is_dir() {
        return super::apply_dir::run(ctx, args).await;
    }
    let Some(service) = &args.service else {
        return Err(Failure::failed(
            "give the SERVICE to write the file for (only a folder names services by its file names)",
        ));
    };
    let id = ctx.service(service)?;
    let spec = read_spec(&args.file)?;
    let (generation, changed) = write(ctx, &id, &spec, args).await?;
    let key = ctx.layout.base_key(&id);
    report(&id, key, generation, changed, args.output.json())?;
    if args.wait {
        return super::wait::wait_many(ctx, &[id], args.timeout, false, false).await;
    }
    Ok(EXIT_OK)
}

/// Writes `spec` as `id`'s base.json with check-and-set (unless `--force`;
/// not at all when it holds the same document). The generation now, and
/// whether it was written.
pub async fn write(
    ctx: &Ctx,
    id: &ServiceId,
    spec: &crate::spec::Spec,
    args: &ApplyArgs,
) -> Result<(u64, bool), Failure> {
    let value = spec::to_canonical_json(spec);
    let key = ctx.layout.base_key(id);

    let current = ctx.get(&key).await?;
    let read_index = current.as_ref().map_or(0, |p| p.modify_index);
    if let Some(expected) = args.expect_generation {
        if expected != read_index {
            return Err(Failure::failed(stale_message(
                &key,
                expected,
                read_index,
                "--expect-generation",
            )));
        }
    }
    let unchanged = current.as_ref().is_some_and(|p| p.value == value);
    if unchanged && !args.force {
        return Ok((read_index, false));
    }
    if args.force {
        ctx.client.kv_put(&key, &value).await?;
    } else {
        match ctx.client.kv_cas(&key, &value, read_index).await {
            Ok(()) => {}
            Err(e) if e.is_cas_conflict() => {
                let now = ctx.get(&key).await?.map_or(0, |p| p.modify_index);
                return Err(Failure::failed(stale_message(
                    &key,
                    read_index,
                    now,
                    "the generation read before writing",
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let back = ctx.get(&key).await?;
    let generation = match back {
        Some(p) if p.value == value => p.modify_index,
        Some(p) => {
            eprintln!(
                "svc-handler: warning: {key} changed again right after this write (now generation {}, another document)",
                p.modify_index
            );
            p.modify_index
        }
        None => {
            return Err(Failure::failed(format!(
                "{key}: written, but deleted again before it could be read back"
            )))
        }
    };
    Ok((generation, true))
}

fn stale_message(key: &str, expected: u64, now: u64, what: &str) -> String {
    let state = if now == 0 {
        "it does not exist now".to_string()
    } else {
        format!("it is at generation {now} now")
    };
    let expected = if expected == 0 {
        "absent".to_string()
    } else {
        format!("generation {expected}")
    };
    format!(
        "{key} was changed by someone else: expected {expected} ({what}), but {state}; \
         nothing was written. Look at it (`svc-handler status`, `svc-handler diff -f FILE`), \
         then apply again, or use --force to overwrite it"
    )
}

pub fn report(id: &ServiceId, key: String, generation: u64, changed: bool, json: bool) -> Exit {
    let applied = Applied {
        name: id.name.clone(),
        partition: id.partition.clone(),
        namespace: id.namespace.clone(),
        key,
        generation,
        changed,
    };
    if json {
        super::output::print_json(&applied);
    } else if changed {
        crate::outln!("{id}: base.json written, generation {generation}");
    } else {
        crate::outln!("{id}: base.json unchanged, generation {generation}");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_messages_say_what_happened() {
        let m = stale_message("p/desired/default/default/web/base.json", 7, 9, "x");
        assert!(m.contains("expected generation 7"), "{m}");
        assert!(m.contains("generation 9 now"), "{m}");
        assert!(m.contains("--force"), "{m}");
        let m = stale_message("k", 0, 12, "x");
        assert!(m.contains("expected absent"), "{m}");
        let m = stale_message("k", 5, 0, "x");
        assert!(m.contains("does not exist now"), "{m}");
    }
}
