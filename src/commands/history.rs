//! `svc-handler history SERVICE`: the service's outcome and the ones before
//! it, newest first, as observed.json keeps them (its `history`, at most
//! [`HISTORY_LEN`](crate::records::HISTORY_LEN) entries, one each time the
//! outcome changed).

use super::{Ctx, Exit, Failure, EXIT_OK};
use crate::cli::HistoryArgs;
use crate::records::{HistoryEntry, Observed};

/// One line of the history, for people.
fn line(e: &HistoryEntry) -> String {
    let step = e.step.map(|s| format!(" in step {s}")).unwrap_or_default();
    let message = e
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!(
        "{}  {} at generation {}{step} (by {}){message}",
        e.at, e.status, e.generation, e.holder
    )
}

pub async fn run(ctx: &Ctx, args: &HistoryArgs) -> Exit {
    let id = ctx.service(&args.service)?;
    let key = ctx.layout.observed_key(&id);
    let Some(pair) = ctx.get(&key).await? else {
        return Err(Failure::failed(format!(
            "{id}: there is no observed.json ({key}): no outcome recorded"
        )));
    };
    let observed: Observed = serde_json::from_slice(&pair.value)
        .map_err(|e| Failure::failed(format!("{key}: not an observed.json: {e}")))?;
    let entries: Vec<HistoryEntry> = std::iter::once(HistoryEntry::of(&observed))
        .chain(observed.history.iter().cloned())
        .collect();
    if args.output.json() {
        super::output::print_json(&entries);
    } else {
        let mut out = format!("{id}: {} outcome(s), newest first\n", entries.len());
        for e in &entries {
            out.push_str(&line(e));
            out.push('\n');
        }
        super::output::emit(&out);
    }
    Ok(EXIT_OK)
}
