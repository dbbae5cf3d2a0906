//! `svc-handler apply -f DIR [--wait]`: every `*.json` in a folder, each
//! file's name (without `.json`) naming its service. Every file is checked
//! first; when one is invalid nothing is written. With `--wait`, a progress
//! line on a terminal (indicatif) while the daemon applies them.

use std::path::{Path, PathBuf};

use super::apply::{report, write};
use super::{read_spec, Ctx, Exit, Failure, EXIT_OK};
use crate::cli::ApplyArgs;
use crate::keys::ServiceId;
use crate::spec::Spec;

/// The `*.json` files of `dir`, sorted by name.
fn files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let read =
        std::fs::read_dir(dir).map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Failure::failed(format!(
            "{}: no *.json file in it",
            dir.display()
        )));
    }
    Ok(out)
}

/// Every file's service and document; every error at once, naming its file.
fn read_all(ctx: &Ctx, paths: &[PathBuf]) -> Result<Vec<(ServiceId, Spec)>, Failure> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let read = ctx
            .service(stem)
            .map_err(|f| {
                Failure::failed(format!("{}: the file name: {}", path.display(), f.message))
            })
            .and_then(|id| Ok((id, read_spec(path)?)));
        match read {
            Ok(pair) => ok.push(pair),
            Err(f) => errors.push(f.message),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(Failure::failed(format!(
            "{} of {} files are not valid; nothing was written:\n{}",
            errors.len(),
            paths.len(),
            errors.join("\n")
        )))
    }
}

pub async fn run(ctx: &Ctx, args: &ApplyArgs) -> Exit {
    if args.service.is_some() {
        return Err(Failure::failed(
            "give no SERVICE with a folder: each file's name names its service",
        ));
    }
    let all = read_all(ctx, &files(&args.file)?)?;
    for (id, spec) in &all {
        let (generation, changed) = write(ctx, id, spec, args).await?;
        report(
            id,
            ctx.layout.base_key(id),
            generation,
            changed,
            args.output.json(),
        )?;
    }
    if !args.wait {
        return Ok(EXIT_OK);
    }
    let ids: Vec<ServiceId> = all.into_iter().map(|(id, _)| id).collect();
    super::wait::wait_many(ctx, &ids, args.timeout, false, false).await
}
