//! Fault injection for the tests, read from the environment once at start:
//! a reconcile that hangs before a chosen fenced write, and a watch loop that
//! freezes after its first listing. Never set in production.

use std::ffi::OsString;
use std::sync::Arc;

use crate::reconcile::{BoxFuture, FlowHook};

/// Fault injection for tests, documented in the README: when set to a step
/// name (`defaults`, `resolver`, `splitter`, `router`, `terminating_gateway`, `observed`,
/// `delete`), every reconcile hangs just before that step's fenced write, as
/// a daemon stuck (or about to be killed) while it holds a lock would.
pub const FAULT_PAUSE_ENV: &str = "SVC_HANDLER_FAULT_PAUSE_BEFORE";

/// Fault injection for tests, documented in the README: when set (to
/// anything), the watch loop freezes after its first listing, as a stuck loop
/// would; `/healthz` and the systemd watchdog must notice.
pub const FAULT_FREEZE_WATCH_ENV: &str = "SVC_HANDLER_FAULT_FREEZE_WATCH";

/// For tests, documented in the README: when set (to anything), every shard
/// of the desired watch is watched keys-only and read by descending to what
/// changed, however few services it holds (by default a shard of at most 32
/// is read whole), so that a test of a few hundred services exercises the
/// descent against a real Consul.
pub const FAULT_ALWAYS_DESCEND_ENV: &str = "SVC_HANDLER_FAULT_ALWAYS_DESCEND";

/// The faults to inject; none by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hang every reconcile before this step's fenced write.
    pub pause_before: Option<String>,
    /// Freeze the watch loop after its first listing.
    pub freeze_watch: bool,
    /// Descend in every shard, whatever its size.
    pub always_descend: bool,
}

impl Faults {
    /// The faults the environment asks for (`SVC_HANDLER_FAULT_*`).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Self {
        Faults {
            pause_before: get(FAULT_PAUSE_ENV)
                .and_then(|v| v.into_string().ok())
                .filter(|s| !s.is_empty()),
            freeze_watch: get(FAULT_FREEZE_WATCH_ENV).is_some(),
            always_descend: get(FAULT_ALWAYS_DESCEND_ENV).is_some(),
        }
    }

    /// Logs a warning for each fault set.
    pub fn warn(&self) {
        if let Some(step) = &self.pause_before {
            tracing::warn!(step, "{FAULT_PAUSE_ENV} is set: reconciles hang before that step's fenced write (fault tests only)");
        }
        if self.freeze_watch {
            tracing::warn!("{FAULT_FREEZE_WATCH_ENV} is set: the watch loop freezes after its first listing (fault tests only)");
        }
        if self.always_descend {
            tracing::warn!("{FAULT_ALWAYS_DESCEND_ENV} is set: every shard is read by descending, however small (tests only)");
        }
    }

    /// The reconciler hook that pauses before a step, when asked for.
    pub fn hook(&self) -> Option<Arc<dyn FlowHook>> {
        let step = self.pause_before.clone()?;
        Some(Arc::new(PauseBefore { step }))
    }
}

/// Hangs forever before the fenced write of `step`.
struct PauseBefore {
    step: String,
}

impl FlowHook for PauseBefore {
    fn before_fenced_write<'a>(&'a self, step: &'a str, _session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if step == self.step {
                tracing::warn!(step, "fault injection: pausing before the fenced write");
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(vars: &[(&str, &str)]) -> Faults {
        Faults::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn none_unless_asked() {
        assert_eq!(faults(&[]), Faults::default());
        assert!(faults(&[]).hook().is_none());
    }

    #[test]
    fn an_empty_step_pauses_nothing_but_any_freeze_value_freezes() {
        let f = faults(&[(FAULT_PAUSE_ENV, ""), (FAULT_FREEZE_WATCH_ENV, "")]);
        assert_eq!(f.pause_before, None);
        assert!(f.freeze_watch);
        let f = faults(&[(FAULT_PAUSE_ENV, "resolver")]);
        assert_eq!(f.pause_before.as_deref(), Some("resolver"));
        assert!(!f.freeze_watch && !f.always_descend);
        assert!(faults(&[(FAULT_ALWAYS_DESCEND_ENV, "1")]).always_descend);
        assert!(f.hook().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_hook_pauses_only_before_its_step() {
        let hook = faults(&[(FAULT_PAUSE_ENV, "resolver")]).hook().unwrap();
        hook.before_fenced_write("defaults", "s").await;
        let paused = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            hook.before_fenced_write("resolver", "s"),
        )
        .await;
        assert!(paused.is_err(), "hangs before the resolver's write");
    }
}
