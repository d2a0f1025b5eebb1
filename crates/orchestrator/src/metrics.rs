//! Parley's Prometheus metrics: every name, label and help text, and one small function
//! per thing recorded, so that each call site is a single line.
//!
//! Metrics go through the `metrics` facade: when no recorder is installed (tests, the
//! CLI commands, `parley serve` without `--metrics-bind`) recording costs next to
//! nothing and keeps nothing. The binary installs the Prometheus recorder, calls
//! [`describe`] once, and serves the rendering on its own listener (see the README's
//! "Metrics"). Gauges that are cheaper to read than to track — queued turns, running
//! turns, the pools' connections — are set by [`Orchestrator::sample_metrics`] when
//! `/metrics` is scraped.
//!
//! The assistant processes' metrics are recorded in `parley_assistant::metrics`, which
//! sits below this crate; they are described here with the rest.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use parley_assistant::metrics as process;
use parley_db::Pool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Orchestrator;

/// Counter, labelled `outcome`: runs of turns by how they ended (see [`TurnOutcome`]).
pub const TURNS: &str = "parley_turns_total";
/// Histogram, labelled `outcome`, seconds: from a worker claiming a turn to the end of
/// its run.
pub const TURN_DURATION: &str = "parley_turn_duration_seconds";
/// Histogram, labelled `assistant`, seconds: from the turn's creation (its `POST`, or
/// its webhook delivery) to the assistant's first text.
pub const FIRST_TEXT: &str = "parley_turn_first_text_seconds";
/// Gauge: turns waiting to be claimed, across every replica (read from the database).
pub const TURNS_QUEUED: &str = "parley_turns_queued";
/// Gauge: turns running on this replica.
pub const TURNS_RUNNING: &str = "parley_turns_running";
/// Counter, labelled `assistant` and `path`: stale assistant sessions recovered from.
pub const STALE_RECOVERIES: &str = "parley_stale_recoveries_total";
/// Gauge: event streams (SSE) open on this replica.
pub const EVENT_STREAMS_OPEN: &str = "parley_event_streams_open";
/// Counter, labelled `platform` and `result`: webhook deliveries (see [`WebhookResult`]).
pub const WEBHOOK_DELIVERIES: &str = "parley_webhook_deliveries_total";
/// Gauge, labelled `pool`: callers waiting for a database connection.
pub const POOL_WAITING: &str = "parley_db_pool_waiting";
/// Counter, labelled `pool`: pool samples (every [`POOL_SAMPLE_INTERVAL`]) that found
/// at least one caller waiting for a connection.
pub const POOL_WAIT_SAMPLES: &str = "parley_db_pool_wait_samples_total";
/// Gauge, labelled `pool` and `state` (`idle`, `in_use`): the pool's open connections.
pub const POOL_CONNECTIONS: &str = "parley_db_pool_connections";
/// Gauge, labelled `pool`: the most connections the pool opens.
pub const POOL_MAX_CONNECTIONS: &str = "parley_db_pool_max_connections";

/// How often [`run_pool_sampler`] looks at the pools.
pub const POOL_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Label of the main pool (conversation data).
const MAIN_POOL: &str = "main";
/// Label of the coordination pool (claims, leases, run locks).
const COORDINATION_POOL: &str = "coordination";

/// How one run of a turn ended: the `outcome` label of [`TURNS`] and [`TURN_DURATION`].
///
/// A turn's runs end in exactly one of `completed`, `failed`, `cancelled` or
/// `interrupted`; `requeued` and `lost` runs are followed by another run of the same turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The assistant answered; the reply is stored.
    Completed,
    /// The assistant (or Parley, in a panic) failed; the turn is `failed`.
    Failed,
    /// `/cancel` stopped it.
    Cancelled,
    /// Stopped by a shutdown, a database error or a previous run still stopping; the
    /// turn is queued again.
    Requeued,
    /// The lease was lost (or the conversation deleted): another run, or nothing, ends it.
    Lost,
    /// The sweeper found its lease expired too often and marked it `interrupted`.
    Interrupted,
}

impl TurnOutcome {
    /// Every outcome, in the order they are registered.
    pub const ALL: [Self; 6] =
        [Self::Completed, Self::Failed, Self::Cancelled, Self::Requeued, Self::Lost, Self::Interrupted];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Requeued => "requeued",
            Self::Lost => "lost",
            Self::Interrupted => "interrupted",
        }
    }
}

/// How a stale assistant session was recovered from: the `path` label of
/// [`STALE_RECOVERIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryPath {
    /// A fresh assistant session, its prompt rebuilt from Parley's own history.
    Rebuilt,
    /// The assistant's session file (transcript, rollout) was missing, shorter or
    /// different on this replica and was restored from the copy Parley keeps before the
    /// resume (`docs/architecture.md#transcripts`).
    Restored,
}

impl RecoveryPath {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rebuilt => "rebuilt",
            Self::Restored => "restored",
        }
    }
}

/// What became of a webhook delivery: the `result` label of [`WEBHOOK_DELIVERIES`].
/// Handshakes, ignored events (the bot's own messages, unhandled event types) and
/// malformed requests are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Stored: a new turn, or a chat command answered.
    Accepted,
    /// A delivery id seen before: acknowledged, nothing stored or run.
    Duplicate,
    /// The signature or secret did not verify (401).
    BadSignature,
    /// The sender is not on the platform's allow-list; nothing stored.
    NotAllowed,
}

impl WebhookResult {
    /// Every result, in the order they are registered.
    pub const ALL: [Self; 4] = [Self::Accepted, Self::Duplicate, Self::BadSignature, Self::NotAllowed];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::BadSignature => "bad_signature",
            Self::NotAllowed => "not_allowed",
        }
    }
}

/// Describes every metric and registers the counters (and fixed gauges) at 0, so that
/// a scrape lists them before the first event and `rate()` sees their start. Call once,
/// after installing the recorder. `assistants` are the configured assistants' names,
/// `platforms` the configured platforms' names.
pub fn describe(assistants: &[&str], platforms: &[&'static str]) {
    describe_counter!(
        TURNS,
        Unit::Count,
        "Runs of turns by outcome: completed, failed, cancelled, interrupted (the sweeper gave up after too \
         many expired leases) end a turn; requeued (shutdown, database error, a previous run still stopping) \
         and lost (lease lost, conversation deleted) are followed by another run or by nothing."
    );
    describe_histogram!(
        TURN_DURATION,
        Unit::Seconds,
        "Seconds from a worker claiming a turn to the end of its run, by outcome."
    );
    describe_histogram!(
        FIRST_TEXT,
        Unit::Seconds,
        "Seconds from a turn's creation (its POST or webhook delivery, by the database clock) to the \
         assistant's first text, by assistant; a re-run turn counts from its first creation."
    );
    describe_gauge!(TURNS_QUEUED, Unit::Count, "Turns waiting to be claimed, across all replicas (read at scrape).");
    describe_gauge!(TURNS_RUNNING, Unit::Count, "Turns running on this replica (read at scrape).");
    describe_counter!(
        STALE_RECOVERIES,
        Unit::Count,
        "Stale assistant sessions recovered from, by assistant and path: rebuilt = a fresh session whose \
         prompt carries Parley's own history; restored = the assistant's session file (transcript, \
         rollout) was missing or behind on this replica and was restored from the copy kept in the database \
         before the resume."
    );
    describe_gauge!(
        process::PROCESSES_LIVE,
        Unit::Count,
        "Assistant CLI processes (claude, codex) started by this replica and still held by their run."
    );
    describe_counter!(
        process::PROCESSES_COLD_STARTS,
        Unit::Count,
        "Assistant CLI processes started cold: a new process for a run, or one started ahead of a \
         conversation's next message."
    );
    describe_counter!(
        process::PROCESSES_WARM_REUSES,
        Unit::Count,
        "Runs served by an already running assistant process: the conversation's warm CLI, written its \
         next message on stdin instead of a new start."
    );
    describe_gauge!(EVENT_STREAMS_OPEN, Unit::Count, "Event streams (SSE) open on this replica.");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        Unit::Count,
        "Webhook deliveries by platform and result: accepted, duplicate (a delivery id seen before), \
         bad_signature (401), not_allowed (sender not on the allow-list). Handshakes, ignored events and \
         malformed requests are not counted."
    );
    describe_gauge!(
        POOL_WAITING,
        Unit::Count,
        "Callers waiting for a database connection, by pool (deadpool's status, read at scrape)."
    );
    describe_counter!(
        POOL_WAIT_SAMPLES,
        Unit::Count,
        "Samples of the pool, one every 100 ms, that found at least one caller waiting for a connection; \
         rate() x 0.1 is about the fraction of time callers waited."
    );
    describe_gauge!(POOL_CONNECTIONS, Unit::Count, "Open database connections by pool and state (idle, in_use).");
    describe_gauge!(POOL_MAX_CONNECTIONS, Unit::Count, "The most connections each pool opens.");

    for outcome in TurnOutcome::ALL {
        counter!(TURNS, "outcome" => outcome.as_str()).absolute(0);
    }
    for assistant in assistants {
        for path in [RecoveryPath::Rebuilt, RecoveryPath::Restored] {
            counter!(STALE_RECOVERIES, "assistant" => (*assistant).to_owned(), "path" => path.as_str()).absolute(0);
        }
    }
    for assistant in process::PROCESS_ASSISTANTS.into_iter().filter(|a| assistants.contains(a)) {
        counter!(process::PROCESSES_COLD_STARTS, "assistant" => assistant).absolute(0);
        counter!(process::PROCESSES_WARM_REUSES, "assistant" => assistant).absolute(0);
        gauge!(process::PROCESSES_LIVE, "assistant" => assistant).increment(0.0);
    }
    for platform in platforms {
        for result in WebhookResult::ALL {
            counter!(WEBHOOK_DELIVERIES, "platform" => *platform, "result" => result.as_str()).absolute(0);
        }
    }
    gauge!(EVENT_STREAMS_OPEN).increment(0.0);
    for pool in [MAIN_POOL, COORDINATION_POOL] {
        counter!(POOL_WAIT_SAMPLES, "pool" => pool).absolute(0);
    }
}

/// A run of a turn ended with `outcome` after `elapsed` (from its claim).
pub fn turn_finished(outcome: TurnOutcome, elapsed: Duration) {
    counter!(TURNS, "outcome" => outcome.as_str()).increment(1);
    histogram!(TURN_DURATION, "outcome" => outcome.as_str()).record(elapsed.as_secs_f64());
}

/// The sweeper marked a turn `interrupted` (its lease expired too often); it had no
/// run on this replica to time.
pub fn turn_interrupted() {
    counter!(TURNS, "outcome" => TurnOutcome::Interrupted.as_str()).increment(1);
}

/// The assistant's first text of a turn created at `created_at` arrived now.
pub fn first_text(assistant: &str, created_at: DateTime<Utc>) {
    let elapsed = (Utc::now() - created_at).to_std().unwrap_or_default();
    histogram!(FIRST_TEXT, "assistant" => assistant.to_owned()).record(elapsed.as_secs_f64());
}

/// A stale session of `assistant` was recovered from by `path`.
pub fn stale_recovery(assistant: &str, path: RecoveryPath) {
    counter!(STALE_RECOVERIES, "assistant" => assistant.to_owned(), "path" => path.as_str()).increment(1);
}

/// A webhook delivery of `platform` (`Platform::as_str`) ended with `result`.
pub fn webhook_delivery(platform: &'static str, result: WebhookResult) {
    counter!(WEBHOOK_DELIVERIES, "platform" => platform, "result" => result.as_str()).increment(1);
}

/// One open event stream, counted in [`EVENT_STREAMS_OPEN`] until dropped.
#[derive(Debug)]
pub struct OpenEventStream(());

/// Counts an event stream opened now; it is counted until the guard is dropped.
#[must_use]
pub fn event_stream_opened() -> OpenEventStream {
    gauge!(EVENT_STREAMS_OPEN).increment(1.0);
    OpenEventStream(())
}

impl Drop for OpenEventStream {
    fn drop(&mut self) {
        gauge!(EVENT_STREAMS_OPEN).decrement(1.0);
    }
}

/// Longest the scrape-time database read may take before its gauge is left as it was.
const SAMPLE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Orchestrator {
    /// Sets the gauges read at scrape time: queued turns (one count over the queued
    /// turns' partial index, skipped when the database does not answer within 2 s),
    /// running turns, and both pools' connections and waiters.
    pub async fn sample_metrics(&self) {
        let started = Instant::now();
        let queued = tokio::time::timeout(SAMPLE_QUERY_TIMEOUT, async {
            let client = self.pool().get().await.map_err(parley_db::DbError::from)?;
            parley_db::turn::count_queued(&client).await
        })
        .await;
        match queued {
            Ok(Ok(n)) => gauge!(TURNS_QUEUED).set(n as f64),
            Ok(Err(e)) => debug!(error = %e, "counting queued turns for the metrics failed"),
            Err(_) => debug!(elapsed = ?started.elapsed(), "counting queued turns for the metrics timed out"),
        }
        gauge!(TURNS_RUNNING).set(self.running_count() as f64);
        for (name, pool) in self.pools() {
            let status = pool.status();
            let idle = status.available;
            gauge!(POOL_WAITING, "pool" => name).set(status.waiting as f64);
            gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "idle").set(idle as f64);
            gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "in_use").set(status.size.saturating_sub(idle) as f64);
            gauge!(POOL_MAX_CONNECTIONS, "pool" => name).set(status.max_size as f64);
        }
    }

    /// The main and coordination pools with their labels (the same pool twice when no
    /// coordination pool was configured).
    fn pools(&self) -> [(&'static str, &Pool); 2] {
        [(MAIN_POOL, self.pool()), (COORDINATION_POOL, &self.inner.coordination)]
    }
}

/// Every [`POOL_SAMPLE_INTERVAL`] until `stop`, counts in [`POOL_WAIT_SAMPLES`] each pool
/// that has a caller waiting for a connection.
pub async fn run_pool_sampler(orchestrator: Orchestrator, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POOL_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        count_pool_waits(&orchestrator);
    }
}

/// One sample of [`run_pool_sampler`].
fn count_pool_waits(orchestrator: &Orchestrator) {
    for (name, pool) in orchestrator.pools() {
        if pool.status().waiting > 0 {
            counter!(POOL_WAIT_SAMPLES, "pool" => name).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use parley_test_support::TestDb;

    use super::*;

    /// A caller waiting for the only connection of the pool shows in the waiting gauge
    /// and in the wait samples (a recorder local to this thread).
    #[test]
    fn a_caller_waiting_for_a_connection_is_sampled() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let sample = |key: &str| {
            let key = format!("{key} ");
            handle.render().lines().find_map(|l| l.strip_prefix(&key).map(str::to_owned))
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let db = TestDb::new().await;
                let config = parley_db::DbConfig { pool_size: 1, ..parley_db::DbConfig::new(db.url()) };
                let pool = parley_db::connect(&config).await.expect("pool");
                let demo = parley_assistant::Demo::new(parley_assistant::DemoConfig::default());
                let orchestrator = Orchestrator::builder(pool.clone(), crate::Config::default())
                    .assistant(std::sync::Arc::new(demo))
                    .build()
                    .expect("orchestrator");
                count_pool_waits(&orchestrator);
                assert_eq!(sample("parley_db_pool_wait_samples_total{pool=\"main\"}"), None, "nobody waited");

                let held = pool.get().await.expect("the only connection");
                let waiter = tokio::spawn({
                    let pool = pool.clone();
                    async move { pool.get().await.is_ok() }
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                count_pool_waits(&orchestrator);
                assert_eq!(sample("parley_db_pool_wait_samples_total{pool=\"main\"}").as_deref(), Some("1"));
                orchestrator.sample_metrics().await;
                assert_eq!(sample("parley_db_pool_waiting{pool=\"main\"}").as_deref(), Some("1"));
                assert_eq!(sample("parley_db_pool_connections{pool=\"main\",state=\"in_use\"}").as_deref(), Some("1"));
                assert_eq!(sample("parley_db_pool_max_connections{pool=\"main\"}").as_deref(), Some("1"));

                drop(held);
                assert!(waiter.await.expect("waiter"), "the waiter got the connection once it was back");
                count_pool_waits(&orchestrator);
                assert_eq!(sample("parley_db_pool_wait_samples_total{pool=\"main\"}").as_deref(), Some("1"));
            });
        });
    }

    #[test]
    fn outcome_labels_are_distinct() {
        let labels: std::collections::HashSet<_> = TurnOutcome::ALL.map(TurnOutcome::as_str).into();
        assert_eq!(labels.len(), TurnOutcome::ALL.len(), "distinct labels");
    }
}
