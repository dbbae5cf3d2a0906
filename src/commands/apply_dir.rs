//! `svc-handler apply -f DIR [--wait]`: every `*.json` in a folder, each
//! file's name (without `.json`) naming its service. Every file is checked
//! first; when one is invalid nothing is written. With `--wait`, a progress
//! line on a terminal (indicatif) while the daemon applies them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::apply::{report, write};
use super::wait::{wait_applied, WaitEnd};
use super::{read_spec, Ctx, Exit, Failure, EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT};
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
    wait_all(ctx, &ids, args.timeout).await
}

/// Waits for each service in turn, all within `timeout`; a progress line
/// on a terminal. Exit 0 when all are applied, 1 when one failed (named on
/// standard error), 2 when time ran out.
pub async fn wait_all(ctx: &Ctx, ids: &[ServiceId], timeout: Duration) -> Exit {
    let deadline = tokio::time::Instant::now() + timeout;
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{pos}/{len} applied {wide_bar} {msg}")
            .expect("a valid template"),
    );
    let (mut failed, mut timed_out) = (0usize, Vec::new());
    for id in ids {
        bar.set_message(id.to_string());
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match wait_applied(ctx, id, left, false).await? {
            WaitEnd::Applied { .. } => bar.inc(1),
            WaitEnd::Failed { observed, .. } => {
                failed += 1;
                bar.suspend(|| eprintln!("{id}: {}", super::wait::describe(&observed)));
            }
            WaitEnd::TimedOut { .. } => timed_out.push(id.to_string()),
        }
    }
    bar.finish_and_clear();
    let applied = ids.len() - failed - timed_out.len();
    eprintln!("{applied} of {} applied", ids.len());
    if failed > 0 {
        return Ok(EXIT_FAILED);
    }
    if !timed_out.is_empty() {
        eprintln!("timed out waiting for: {}", timed_out.join(", "));
        return Ok(EXIT_TIMEOUT);
    }
    Ok(EXIT_OK)
}
