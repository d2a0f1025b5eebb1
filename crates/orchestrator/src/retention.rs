//! Retention: deleting events, inbound deliveries and ended sessions once they are older
//! than the configured ages ([`Retention`]; `parley serve --retain-*-days`).
//!
//! Every replica runs a pass every [`Retention::interval`] beside its lease sweeper
//! (started by [`Orchestrator::run_workers`]). A pass deletes in batches of
//! [`Retention::batch_size`] rows, one short statement each, with a pause between
//! batches, so it never holds locks for long nor competes with turns for the database;
//! replicas skip rows another one is deleting (see [`parley_db::retention`]).
//!
//! What each age means:
//! - **events**: the stream log that SSE clients replay. Messages keep every reply, and
//!   replies keep their tool calls, so old events matter only for the tool results and
//!   thinking they show. The events of each conversation's newest turn, and of queued
//!   and running turns, are always kept: a stream resumes after them.
//! - **deliveries**: webhook delivery ids and `Idempotency-Key`s remembered to answer a
//!   repeat with the first answer. After this age a repeat counts as new, so keep it
//!   longer than any platform redelivers (GitHub lets a delivery be redelivered for 3
//!   days).
//! - **ended sessions**: the session chain with the assistant session files kept for
//!   them (`transcript`, deleted with their session by its foreign key, in the same
//!   statement; `docs/architecture.md#transcripts`) and, through [`RetentionHook`],
//!   anything else stored with a session. Each conversation's newest session stays: the
//!   next session starts from it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parley_db::retention::{self, DeletedSession};
use parley_db::{DbResult, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Orchestrator;

/// One day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How long old rows are kept and how they are deleted. An age of `None` keeps the rows
/// forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Age after which events are deleted (default 30 days).
    pub events: Option<Duration>,
    /// Age after which inbound deliveries are forgotten (default 7 days).
    pub deliveries: Option<Duration>,
    /// Age after which ended sessions are deleted, counted from when they ended
    /// (default 90 days).
    pub ended_sessions: Option<Duration>,
    /// Time between passes (default 10 minutes); the first pass runs one interval after
    /// the start.
    pub interval: Duration,
    /// Rows deleted by one statement (default 500).
    pub batch_size: i64,
    /// Pause between two batches of a pass (default 50 ms).
    pub pause: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            events: Some(30 * DAY),
            deliveries: Some(7 * DAY),
            ended_sessions: Some(90 * DAY),
            interval: Duration::from_secs(600),
            batch_size: 500,
            pause: Duration::from_millis(50),
        }
    }
}

impl Retention {
    /// An age in days as [`Retention`] takes it: `0` keeps forever.
    #[must_use]
    pub fn days(days: u32) -> Option<Duration> {
        (days > 0).then(|| DAY * days)
    }
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events deleted.
    pub events: u64,
    /// Inbound deliveries deleted.
    pub deliveries: u64,
    /// Ended sessions deleted.
    pub sessions: u64,
}

/// Runs whenever retention deletes ended sessions, inside the transaction that deletes
/// them: the place for anything kept per session outside the database's foreign keys
/// to be deleted with its session (kept transcripts need none: they cascade). An error rolls the
/// batch back; it is tried again at the next pass.
pub trait RetentionHook: Send + Sync + 'static {
    /// `sessions` were deleted in `tx`, which commits when this returns `Ok`.
    fn sessions_deleted<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        sessions: &'a [DeletedSession],
    ) -> BoxFuture<'a, DbResult<()>>;
}

impl Orchestrator {
    /// Every [`Retention::interval`], deletes what is older than the configured ages.
    pub(crate) async fn run_retention(&self, stop: CancellationToken) {
        let config = self.config().retention.clone();
        if config.events.is_none() && config.deliveries.is_none() && config.ended_sessions.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(config.interval) => {}
            }
            match self.apply_retention_until(Utc::now(), &stop).await {
                Ok(r) if r == RetentionReport::default() => debug!("retention: nothing to delete"),
                Ok(r) => info!(
                    events = r.events,
                    deliveries = r.deliveries,
                    sessions = r.sessions,
                    "retention deleted old rows"
                ),
                Err(e) => warn!(error = %e, "retention pass failed; trying again at the next one"),
            }
        }
    }

    /// One retention pass as if the time were `now`: deletes, in batches, the events,
    /// deliveries and ended sessions older than the configured ages at `now`.
    ///
    /// # Errors
    /// The first database error; rows deleted before it stay deleted.
    pub async fn apply_retention(&self, now: DateTime<Utc>) -> DbResult<RetentionReport> {
        self.apply_retention_until(now, &CancellationToken::new()).await
    }

    async fn apply_retention_until(&self, now: DateTime<Utc>, stop: &CancellationToken) -> DbResult<RetentionReport> {
        let config = &self.config().retention;
        let mut report = RetentionReport::default();
        for (target, age) in [
            (Target::Events, config.events),
            (Target::Deliveries, config.deliveries),
            (Target::EndedSessions, config.ended_sessions),
        ] {
            let Some(age) = age else { continue };
            let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            let deleted = self.in_batches(target, cutoff, stop).await?;
            match target {
                Target::Events => report.events = deleted,
                Target::Deliveries => report.deliveries = deleted,
                Target::EndedSessions => report.sessions = deleted,
            }
        }
        Ok(report)
    }

    /// Deletes `target` rows older than `cutoff` a batch at a time until a batch comes
    /// back short (or `stop` fires), pausing between batches; returns how many in all.
    async fn in_batches(&self, target: Target, cutoff: DateTime<Utc>, stop: &CancellationToken) -> DbResult<u64> {
        let config = &self.config().retention;
        let limit = config.batch_size.max(1);
        let mut total = 0;
        loop {
            let deleted = self.batch(target, cutoff, limit).await?;
            total += deleted;
            if deleted < limit.unsigned_abs() {
                return Ok(total);
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(total),
                () = tokio::time::sleep(config.pause) => {}
            }
        }
    }

    /// One batch: one statement (ended sessions: one transaction with the hook).
    async fn batch(&self, target: Target, cutoff: DateTime<Utc>, limit: i64) -> DbResult<u64> {
        let mut client = self.pool().get().await?;
        match target {
            Target::Events => retention::delete_events(&client, cutoff, limit).await,
            Target::Deliveries => retention::delete_deliveries(&client, cutoff, limit).await,
            Target::EndedSessions => {
                let tx = client.transaction().await?;
                let deleted = retention::delete_ended_sessions(&tx, cutoff, limit).await?;
                if let Some(hook) = &self.inner.retention_hook
                    && !deleted.is_empty()
                {
                    hook.sessions_deleted(&tx, &deleted).await?;
                }
                tx.commit().await?;
                Ok(deleted.len() as u64)
            }
        }
    }
}

/// What a batch deletes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Events,
    Deliveries,
    EndedSessions,
}
