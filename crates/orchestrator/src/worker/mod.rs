//! Workers: claim queued turns, resolve the session, run the assistant, publish and
//! persist events, send replies, finish — and recover from stale assistant sessions.
//!
//! One concern per module:
//! - [`pool`]: the worker pool — start-up, the claim loop, one claimed turn's life
//!   (panics caught), the drain at shutdown;
//! - [`lease`]: holding a claimed turn — its run lock and lease extension;
//! - [`requeue`]: requeueing the running turns no worker runs any more;
//! - [`run`]: one turn's run — session resolution, the assistant call, stale-session
//!   recovery;
//! - [`emit`]: the turn's events — numbering, live publication, batched writes;
//! - [`reply`]: what the assistant said so far and how it is sent to a platform sink;
//! - [`finish`]: storing how the turn ended;
//! - [`keep`]: the assistant's session file restored before a resume and stored after
//!   the run (`docs/architecture.md#transcripts`).
//!
//! This module holds what they share: a running turn's stop switch ([`TurnControl`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod emit;
mod finish;
mod keep;
mod lease;
mod pool;
mod reply;
mod requeue;
mod run;
mod warm;

/// How long killing a run's processes may take before Parley gives up on them (a
/// process stuck in the kernel ignores even `SIGKILL` for a while).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a running turn is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum StopReason {
    /// `/cancel`.
    Cancelled = 1,
    /// Shutdown after the grace period.
    Interrupted = 2,
    /// The lease was lost: another worker may run it now.
    LeaseLost = 3,
}

/// No [`StopReason`] yet, in [`TurnControl`]'s record.
const NOT_STOPPED: u8 = 0;

/// A running turn's stop switch: a token plus why it fired.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurnControl {
    pub(crate) token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl TurnControl {
    pub(super) fn stop(&self, reason: StopReason) {
        // The first reason wins.
        let _ = self.reason.compare_exchange(NOT_STOPPED, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub(crate) fn cancel(&self) {
        self.stop(StopReason::Cancelled);
    }

    /// Why the turn was stopped. The token is only ever cancelled through
    /// [`Self::stop`], which records the reason first; were it cancelled without one,
    /// the turn would be treated as cancelled.
    pub(super) fn reason(&self) -> StopReason {
        match self.reason.load(Ordering::SeqCst) {
            2 => StopReason::Interrupted,
            3 => StopReason::LeaseLost,
            _ => StopReason::Cancelled,
        }
    }
}
