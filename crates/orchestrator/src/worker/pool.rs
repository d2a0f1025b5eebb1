//! The worker pool: start-up (killing what a previous run of this worker left, putting
//! back its turns), the helper tasks, the claim loop, one claimed turn's life with its
//! panics caught, and the drain at shutdown.

use backon::BackoffBuilder;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use parley_assistant::run_marker;
use parley_db::conversation::{self, Conversation};
use parley_db::event::{self, Event, EventKind};
use parley_db::run_lock::RunLock;
use parley_db::turn::{self, Claimed, Turn, TurnStatus};
use parley_db::{DbError, DbResult, GenericClient, PooledClient};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::metrics::{self, TurnOutcome};
use crate::notify::Signal;
use crate::sink::{ReplyStatus, ReplyUpdate};
use crate::{Orchestrator, RunningTurn};

use super::requeue::Requeue;
use super::{KILL_WAIT, StopReason, TurnControl};

impl Orchestrator {
    /// Runs this replica's workers until `shutdown` fires, then drains: running turns
    /// get [`crate::Config::shutdown_grace`] to finish, after which they are stopped and
    /// requeued for the next start (or another replica).
    pub async fn run_workers(&self, shutdown: CancellationToken) {
        let config = self.config().clone();
        self.kill_left_behind().await;
        match self.requeue(Requeue::Owned).await {
            Ok(0) => {}
            Ok(n) => {
                info!(turns = n, worker_id = %config.worker_id, "requeued turns this worker ran before it restarted")
            }
            Err(e) => warn!(error = %e, "could not requeue this worker's old turns; the sweeper will"),
        }
        // Helpers outlive the workers' drain: events of draining turns still go out.
        let helpers_stop = CancellationToken::new();
        let mut helpers = JoinSet::new();
        let outbox = self.inner.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(outbox) = outbox {
            let orch = self.clone();
            let stop = helpers_stop.clone();
            helpers.spawn(async move { orch.run_sender(outbox, stop).await });
        }
        if let Some(db) = self.inner.listen.clone() {
            let orch = self.clone();
            let stop = helpers_stop.clone();
            helpers.spawn(async move { orch.run_listener(db, stop).await });
        }
        {
            let orch = self.clone();
            let stop = shutdown.clone();
            helpers.spawn(async move { orch.run_sweeper(stop).await });
        }
        {
            let orch = self.clone();
            let stop = shutdown.clone();
            helpers.spawn(async move { orch.run_retention(stop).await });
        }
        let mut workers = JoinSet::new();
        for n in 0..config.workers.max(1) {
            let orch = self.clone();
            let stop = shutdown.clone();
            workers.spawn(async move { orch.worker_loop(n, stop).await });
        }
        shutdown.cancelled().await;
        info!(running = self.running_count(), grace = ?config.shutdown_grace, "draining workers");
        let drained =
            tokio::time::timeout(config.shutdown_grace, async { while workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let running: Vec<RunningTurn> = self
                .inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            warn!(turns = running.len(), "grace period over; interrupting running turns");
            for r in running {
                r.control.stop(StopReason::Interrupted);
            }
            while workers.join_next().await.is_some() {}
        }
        helpers_stop.cancel();
        while helpers.join_next().await.is_some() {}
        self.stop_warm().await;
        info!("workers stopped");
    }

    /// Every [`crate::Config::sweep_interval`], requeues turns whose lease expired
    /// (their worker crashed or lost the database): requeued, or `interrupted` after
    /// [`crate::Config::max_attempts`] claims, with an event and a message telling the user.
    async fn run_sweeper(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config().sweep_interval) => {}
            }
            match self.requeue(Requeue::Expired).await {
                Ok(0) => {}
                Ok(n) => info!(turns = n, "requeued turns whose lease expired"),
                Err(e) => debug!(error = %e, "requeueing turns whose lease expired failed"),
            }
        }
    }

    /// At start-up, before this worker requeues its old turns: kills the processes of
    /// the runs its previous incarnation left running (found by the run IDs recorded
    /// with its running turns), and those of any other Parley process on this host that
    /// is gone (a crash under another worker id).
    async fn kill_left_behind(&self) {
        let orphans = run_marker::kill_orphans(KILL_WAIT).await;
        if orphans > 0 {
            warn!(processes = orphans, "killed assistant processes left by a stopped Parley");
        }
        let runs = match self.pool().get().await {
            Ok(client) => turn::running_runs(&client, &self.config().worker_id).await,
            Err(e) => Err(DbError::from(e)),
        };
        match runs {
            Ok(runs) => {
                for run_id in runs {
                    let killed = run_marker::kill_run(run_id, KILL_WAIT).await;
                    if killed > 0 {
                        warn!(%run_id, processes = killed, "killed the processes of a run this worker left before it restarted");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not read this worker's old runs; their processes are not looked for"),
        }
    }

    async fn worker_loop(&self, n: usize, shutdown: CancellationToken) {
        // After a failed claim: 100 ms, doubling up to 5 s; back to 100 ms after a claim.
        let backoff = crate::doubling_backoff(Duration::from_millis(100), Duration::from_secs(5));
        let mut delays = backoff.build();
        let warm = self.warm_claim();
        // Woken for a new turn that the claim then left alone: it may be left to the
        // replica holding its conversation's warm process, for the claim window.
        let mut woken = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let run_id = Uuid::new_v4();
            let claimed = match self.inner.coordination.get().await {
                Ok(client) => turn::claim_warm(&client, &self.config().worker_id, self.config().lease, run_id, &warm)
                    .await
                    .map(|claimed| claimed.map(|claimed| (claimed, client))),
                Err(e) => Err(DbError::from(e)),
            };
            match claimed {
                Ok(Some((claimed, client))) => {
                    delays = backoff.build();
                    // More may be queued: let one more idle worker look (a cascade, not a herd).
                    self.wake_local();
                    self.took_warm(&claimed);
                    self.run_turn(claimed, run_id, client).await;
                }
                Ok(None) => {
                    // Look again once the window has passed rather than a poll later, so
                    // that a turn whose holder is busy or dead waits the window alone
                    // (`docs/architecture.md#warm-processes`).
                    let idle_poll = self.config().idle_poll;
                    let wait = if woken && !warm.window.is_zero() {
                        (warm.window + Duration::from_millis(20)).min(idle_poll)
                    } else {
                        idle_poll
                    };
                    woken = false;
                    tokio::select! {
                        () = &mut notified => woken = true,
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    warn!(worker = n, error = %e, "claiming a turn failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Runs a claimed turn: holds it (lease and run lock, see [`Self::keep_turn`]; the
    /// claim took the lock on `client` when it could), runs it so that a panic fails
    /// only this turn, kills whatever the run's processes left, and only then lets the
    /// run lock go.
    async fn run_turn(&self, claimed: Claimed, run_id: Uuid, client: PooledClient) {
        let t = claimed.turn.clone();
        let span = info_span!("turn", conversation_id = %t.conversation_id, turn_id = %t.turn_id, attempt = t.attempt);
        async {
            let control = TurnControl::default();
            self.inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(t.conversation_id, RunningTurn { turn_id: t.turn_id, control: control.clone() });
            let keeper_stop = CancellationToken::new();
            // However this function ends (even dropped), the keeper stops.
            let _keeper_guard = keeper_stop.clone().drop_guard();
            let (locked_tx, locked_rx) = oneshot::channel();
            let lock = RunLock::claimed(&self.inner.coordination, client, t.conversation_id, claimed.run_locked);
            let keeper = tokio::spawn(
                self.clone()
                    .keep_turn(t.clone(), lock, control.clone(), keeper_stop.clone(), locked_tx)
                    .in_current_span(),
            );
            let sink_conversation =
                self.inner.sinks.contains_key(&claimed.conversation.platform).then(|| claimed.conversation.clone());
            let started = Instant::now();
            // Taken by the claim (the common case): no need to hear it from the keeper.
            let result = if claimed.run_locked || locked_rx.await.unwrap_or(false) {
                Some(AssertUnwindSafe(self.drive(claimed, control, run_id)).catch_unwind().await)
            } else {
                None
            };
            // Nothing of this run may outlive it: the next run may start once the lock goes.
            let killed = run_marker::end_run(run_id, KILL_WAIT).await;
            if killed > 0 {
                warn!(processes = killed, "killed processes the assistant left behind");
            }
            match result {
                None => {
                    metrics::turn_finished(TurnOutcome::Requeued, started.elapsed());
                    warn!("another run of this conversation is still stopping; requeueing the turn");
                    if let Ok(client) = self.pool().get().await {
                        let _ = turn::unclaim(&client, t.turn_id).await;
                    }
                }
                Some(Ok(Ok(finished))) => {
                    let status: &'static str = finished.into();
                    metrics::turn_finished(finished.outcome(), started.elapsed());
                    info!(status, elapsed_ms = started.elapsed().as_millis() as u64, "turn finished");
                }
                Some(Ok(Err(e))) if is_conversation_gone(&e) => {
                    metrics::turn_finished(TurnOutcome::Lost, started.elapsed());
                    info!("the conversation was deleted during the turn; its result is dropped");
                }
                Some(Ok(Err(e))) => {
                    metrics::turn_finished(TurnOutcome::Requeued, started.elapsed());
                    error!(error = %e, "turn could not be finished; requeueing it");
                    if let Ok(client) = self.pool().get().await {
                        let _ = turn::requeue(&client, t.turn_id).await;
                    }
                }
                Some(Err(panic)) => {
                    metrics::turn_finished(TurnOutcome::Failed, started.elapsed());
                    let what = panic_message(panic.as_ref());
                    error!(panic = %what, "the turn panicked; failing it");
                    if let Err(e) = self.fail_panicked(&t, sink_conversation, &what).await {
                        error!(error = %e, "could not mark the panicked turn failed; the sweeper will requeue it");
                    }
                }
            }
            // The lock goes back with its connection before this worker claims again, so
            // a worker never holds more than one coordination connection.
            keeper_stop.cancel();
            let _ = keeper.await;
            self.inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&t.conversation_id);
            // This worker claims again at once, so the conversation's next queued turn
            // needs no wake-up (nor a notification to other replicas).
        }
        .instrument(span)
        .await;
    }

    /// Ends a turn whose run panicked: `failed` with an error saying so, a `turn_failed`
    /// event, and the failure sent to its platform. Nothing is written when the
    /// turn is no longer running (or its conversation is gone).
    async fn fail_panicked(&self, t: &Turn, conversation: Option<Conversation>, what: &str) -> DbResult<()> {
        let error =
            format!("internal error: Parley failed while answering this message ({what}). Send /retry to try again.");
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        if !conversation::lock_shared(&tx, t.conversation_id).await?
            || !turn::finish(&tx, t.turn_id, TurnStatus::Failed, Some(&error)).await?
        {
            tx.rollback().await?;
            return Ok(());
        }
        let seq = event::reserve_block(&tx).await?;
        let now = Utc::now();
        let event = Event {
            conversation_id: t.conversation_id,
            seq,
            turn_id: Some(t.turn_id),
            kind: EventKind::TurnFailed,
            data: json!({ "turn_id": t.turn_id, "ts": now.timestamp_micros(), "error": error, "message_id": null }),
            created_at: now,
        };
        event::insert_batch(&tx, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        self.hub().persisted(t.conversation_id, seq);
        self.hub().publish(Arc::new(event.clone()), true, false);
        self.signal(Signal::Persisted { conversation_id: t.conversation_id, seq });
        self.signal(Signal::Event { event, persisted: true });
        if let Some(conversation) = conversation
            && let Some(sink) = self.inner.sinks.get(&conversation.platform)
        {
            let update = ReplyUpdate {
                turn_id: Some(t.turn_id),
                text: String::new(),
                tools: Vec::new(),
                status: ReplyStatus::Failed { error },
            };
            if let Err(e) = sink.send(&conversation, update).await {
                warn!(error = %e, "sending the failure of the panicked turn failed");
            }
        }
        Ok(())
    }
}

/// Whether a turn's write failed because its conversation was deleted meanwhile.
fn is_conversation_gone(e: &DbError) -> bool {
    parley_db::constraint::CONVERSATION_REFERENCES.iter().any(|c| e.is_conflict_on(c))
        || matches!(e, DbError::NotFound { what: "conversation" })
}

/// A panic's message, from its payload (`panic!` with a literal or a formatted string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
