//! The assistant processes' Prometheus metrics: how many CLI processes are alive, how
//! many were started cold, and how many were reused warm.
//!
//! Recorded through the `metrics` facade: nothing is kept unless the binary installed a
//! recorder (`parley serve --metrics-bind`). The orchestrator's metrics module describes
//! these names with the rest (this crate sits below it and cannot call it).
//! Only the CLI adapters (Claude, Codex) start processes; the HTTP adapters and the demo
//! assistant record nothing here.

/// Gauge, labelled `assistant`: CLI processes started by Parley whose handle is still
/// held (from a successful spawn until the run lets go of the process).
pub const PROCESSES_LIVE: &str = "parley_assistant_processes_live";
/// Counter, labelled `assistant`: CLI processes started cold (a new process for a run).
pub const PROCESSES_COLD_STARTS: &str = "parley_assistant_processes_cold_starts_total";
/// Counter, labelled `assistant`: runs served by an already running (warm) process —
/// a conversation's follow-up message written to its live CLI instead of a new start
/// (`docs/architecture.md#warm-processes`). A run that had to start its process counts
/// in [`PROCESSES_COLD_STARTS`] instead.
pub const PROCESSES_WARM_REUSES: &str = "parley_assistant_processes_warm_reuses_total";

/// The assistants that start CLI processes: the label values of the process metrics.
pub const PROCESS_ASSISTANTS: [&str; 2] = ["claude", "codex"];

/// One live CLI process, counted in [`PROCESSES_LIVE`] until dropped.
#[derive(Debug)]
pub struct LiveProcess {
    assistant: &'static str,
}

/// Counts a CLI process of `assistant` that was just started cold; the gauge of live
/// processes goes down when the returned guard is dropped.
#[must_use]
pub fn process_started(assistant: &'static str) -> LiveProcess {
    metrics::counter!(PROCESSES_COLD_STARTS, "assistant" => assistant).increment(1);
    metrics::gauge!(PROCESSES_LIVE, "assistant" => assistant).increment(1.0);
    LiveProcess { assistant }
}

impl Drop for LiveProcess {
    fn drop(&mut self) {
        metrics::gauge!(PROCESSES_LIVE, "assistant" => self.assistant).decrement(1.0);
    }
}

/// Counts a run of `assistant` served by its conversation's warm process.
pub fn warm_reused(assistant: &'static str) {
    metrics::counter!(PROCESSES_WARM_REUSES, "assistant" => assistant).increment(1);
}
