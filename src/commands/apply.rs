//! `svc-handler apply SERVICE -f FILE`: validates a base.json and writes it,
//! normalized, with check-and-set so that a concurrent edit is never lost.

use serde::Serialize;

use super::{read_spec, Ctx, Exit, Failure, EXIT_OK};
use crate::cli::ApplyArgs;
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
    let id = ctx.service(&args.service)?;
    let spec = read_spec(&args.file)?;
    let value = spec::to_canonical_json(&spec);
    let key = ctx.layout.base_key(&id);

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
        return report(&id, key, read_index, false, args.output.json());
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
    report(&id, key, generation, true, args.output.json())
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

fn report(
    id: &crate::keys::ServiceId,
    key: String,
    generation: u64,
    changed: bool,
    json: bool,
) -> Exit {
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
