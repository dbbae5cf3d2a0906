//! What a reconcile ends with: the [`Outcome`] and [`Report`] callers see, and
//! the [`Fail`] a step stops the flow with.

use std::time::Duration;

use crate::consul::{ConsulError, ErrorClass};
use crate::keys::ServiceId;
use crate::kind::{Kind, Step};
use crate::plan::Blocked;
use crate::records::{Objects, Status};

/// What a reconcile ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything in base.json is in Consul; `changed` when anything was written
    /// to Consul's config entries.
    Applied { changed: bool, drifted: Vec<Kind> },
    /// Ended with `status` at `step`; observed.json says so. `retry`: the
    /// failure is transient and the daemon tries again with backoff; else it
    /// stays until base.json (or the entry, or its owner) changes.
    Failed {
        status: Status,
        step: Step,
        message: String,
        retry: bool,
    },
    /// Nothing done: observed.json already tells this generation's final
    /// outcome (`invalid`, `conflict`, or an `error` that is not retried) and
    /// nothing it depends on changed.
    Settled { status: Status },
    /// Already in place (the plan writes nothing and observed.json says
    /// applied): nothing written, no lock taken.
    UpToDate,
    /// Another instance holds the service's lock: nothing done.
    HeldElsewhere { holder: Option<String> },
    /// base.json is gone: what svc-handler owned is removed (pruned or not).
    Deleted { pruned: bool },
    /// No base.json and nothing of the service's left: nothing to do.
    Absent,
    /// The lock was lost during the flow; fenced writes were refused, so
    /// observed.json could not be written either.
    LockLost { step: Step, message: String },
}

impl Outcome {
    /// The `result` label of `svc_handler_reconcile_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Outcome::Applied { changed: true, .. } => "applied",
            Outcome::Applied { changed: false, .. }
            | Outcome::UpToDate
            | Outcome::Settled { .. } => "unchanged",
            Outcome::Failed { status, .. } => status.as_str(),
            Outcome::HeldElsewhere { .. } => "held_elsewhere",
            Outcome::Deleted { .. } | Outcome::Absent => "deleted",
            Outcome::LockLost { .. } => "error",
        }
    }

    /// True for the outcomes `--once` exits non-zero on (a paused service
    /// is not a failure).
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Failed { status, .. } | Outcome::Settled { status } => {
                *status != Status::Paused
            }
            Outcome::LockLost { .. } => true,
            _ => false,
        }
    }
}

/// The result of one reconcile.
#[derive(Clone, Debug)]
pub struct Report {
    pub id: ServiceId,
    pub outcome: Outcome,
    /// The base.json ModifyIndex the flow worked on, when it read one.
    pub generation: Option<u64>,
    pub duration: Duration,
    /// The objects as this flow left them (when it applied).
    pub objects: Option<Objects>,
}

/// Why a step ended the flow.
#[derive(Debug)]
pub(crate) struct Fail {
    pub status: Status,
    pub step: Step,
    pub message: String,
    pub lock_lost: bool,
    /// Transient: worth trying again.
    pub retry: bool,
}

impl Fail {
    pub fn new(status: Status, step: Step, message: impl Into<String>) -> Self {
        Fail {
            status,
            step,
            message: message.into(),
            lock_lost: false,
            retry: status == Status::Error,
        }
    }

    /// An error that trying again cannot mend (Consul stored an entry
    /// differently from what was written).
    pub fn final_error(step: Step, message: impl Into<String>) -> Self {
        Fail {
            retry: false,
            ..Fail::error(step, message)
        }
    }

    pub fn error(step: Step, message: impl Into<String>) -> Self {
        Fail::new(Status::Error, step, message)
    }

    /// The entry belongs to someone else.
    pub fn conflict(step: Step, blocked: &Blocked) -> Self {
        Fail::new(Status::Conflict, step, blocked.to_string())
    }

    /// A Consul error: an entry Consul refused (a 400, or a validation
    /// 500) is the user's input, `invalid` with Consul's own words, final for
    /// the generation; anything else is an `error`, retried when transient.
    pub fn consul(step: Step, e: &ConsulError) -> Self {
        match e.class() {
            ErrorClass::InvalidInput | ErrorClass::Refused => {
                Fail::new(Status::Invalid, step, e.to_string())
            }
            _ => Fail::new(Status::Error, step, e.to_string()),
        }
    }

    /// True when Consul refused what was written (final for the generation).
    pub fn is_refusal(&self) -> bool {
        self.status == Status::Invalid && !matches!(self.step, Step::Parse | Step::Preflight)
    }

    pub fn lock_lost(step: Step, message: impl Into<String>) -> Self {
        Fail {
            lock_lost: true,
            ..Fail::error(step, message)
        }
    }

    /// The outcome a flow ends with when this step stopped it.
    pub fn into_outcome(self) -> Outcome {
        if self.lock_lost {
            Outcome::LockLost {
                step: self.step,
                message: self.message,
            }
        } else {
            Outcome::Failed {
                status: self.status,
                step: self.step,
                message: self.message,
                retry: self.retry,
            }
        }
    }
}
