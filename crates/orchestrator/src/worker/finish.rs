//! Storing how a turn ended: completed (one statement), failed or cancelled (the
//! partial reply kept, marked incomplete), requeued at shutdown, or dropped when the
//! turn is no longer this worker's.

use backon::BackoffBuilder;
use std::time::{Duration, Instant};

use parley_assistant::AssistantError;
use parley_db::conversation;
use parley_db::event::{self, EventKind};
use parley_db::message::{self, Role};
use parley_db::session::{self, Session};
use parley_db::turn::{self, TurnStatus};
use parley_db::{DbError, DbResult, GenericClient, PooledClient, Transaction};
use serde_json::{Value, json};
use tracing::warn;

use crate::sink::ReplyStatus;

use super::StopReason;
use super::run::TurnRun;

/// How an attempt ended.
pub(super) enum Outcome {
    /// The assistant answered in full.
    Completed,
    /// The assistant failed.
    Failed(AssistantError),
    /// The run was stopped before the answer was complete.
    Stopped(StopReason),
}

/// What became of a turn once its worker let go of it: the outcome as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub(super) enum Finished {
    /// `completed`: the reply is stored.
    Completed,
    /// `failed`: the partial reply (if any) is stored, marked incomplete.
    Failed,
    /// `cancelled`: the partial reply (if any) is stored, marked incomplete.
    Cancelled,
    /// Stopped by a shutdown and requeued, to be answered in full again.
    Requeued,
    /// No longer this worker's (its lease was lost, the sweeper requeued it, or its
    /// conversation was deleted): nothing of this run is stored.
    Lost,
}

impl Finished {
    /// The `outcome` label this ending counts under in `parley_turns_total`.
    pub(super) fn outcome(self) -> crate::metrics::TurnOutcome {
        use crate::metrics::TurnOutcome;
        match self {
            Self::Completed => TurnOutcome::Completed,
            Self::Failed => TurnOutcome::Failed,
            Self::Cancelled => TurnOutcome::Cancelled,
            Self::Requeued => TurnOutcome::Requeued,
            Self::Lost => TurnOutcome::Lost,
        }
    }
}

/// A turn that ends unanswered and is not run again.
enum Unanswered {
    /// The assistant failed with this error.
    Failed(String),
    /// Stopped by `/cancel`.
    Cancelled,
}

impl TurnRun<'_> {
    /// Ends the turn in one transaction: the assistant message (partial ones marked
    /// incomplete), the session's assistant session ID and `last_error`, the turn's
    /// status, and the remaining events with the final one.
    ///
    /// While the database is unreachable it retries for up to half a lease, so a short
    /// outage does not throw the reply away (past that the sweeper re-runs the turn).
    pub(super) async fn finish(&mut self, session: &Session, outcome: Outcome) -> DbResult<Finished> {
        let deadline = Instant::now() + self.orch.config().lease / 2;
        // 100 ms, doubling up to 2 s. The loop stays (not `backon::Retryable`): each attempt
        // borrows `self` mutably, which backon's attempt factory cannot hand out in turn.
        let mut delays = crate::doubling_backoff(Duration::from_millis(100), Duration::from_secs(2)).build();
        loop {
            match self.finish_once(session, &outcome).await {
                Err(DbError::Unavailable(e) | DbError::Retryable(e)) if Instant::now() < deadline => {
                    warn!(error = %e, "database unavailable while finishing the turn; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                }
                other => return other,
            }
        }
    }

    /// One try of [`Self::finish`]: one path per outcome.
    async fn finish_once(&mut self, session: &Session, outcome: &Outcome) -> DbResult<Finished> {
        match outcome {
            Outcome::Completed => self.complete(session).await,
            Outcome::Failed(err) => self.store_unanswered(session, Unanswered::Failed(err.to_string())).await,
            Outcome::Stopped(StopReason::Cancelled) => self.store_unanswered(session, Unanswered::Cancelled).await,
            Outcome::Stopped(StopReason::Interrupted) => self.requeue_interrupted(session).await,
            Outcome::Stopped(StopReason::LeaseLost) => Ok(self.lost()),
        }
    }

    /// Stores a successful turn in one statement (see [`turn::complete`]).
    async fn complete(&mut self, session: &Session) -> DbResult<Finished> {
        self.reserve(1).await?;
        let conversation_id = self.conversation.conversation_id;
        let turn_id = self.turn.turn_id;
        let client = self.orch.pool().get().await?;
        let stored_id = session.assistant_session_id.as_deref();
        let final_event = self.emitter.event(
            EventKind::TurnCompleted,
            json!({
                "usage": self.reply.usage,
                "cost_usd": self.reply.cost_usd,
                "duration_ms": self.reply.duration_ms,
            }),
        );
        let changed_id = self.reply.completed_session_id.as_deref().filter(|id| Some(*id) != stored_id);
        let completed = turn::complete(
            &client,
            &turn::Completion {
                turn_id,
                worker_id: &self.orch.config().worker_id,
                conversation_id,
                session_id: session.session_id,
                assistant_session_id: changed_id,
                content: &self.reply.text,
                metadata: &self.reply.metadata(),
                events: &self.emitter.unflushed,
                final_event: &final_event,
            },
        )
        .await?;
        let Some(message_id) = completed else {
            warn!(
                "the turn was no longer running when it finished (requeued, or its conversation deleted); its result is dropped"
            );
            return Ok(self.lost());
        };
        let mut final_event = final_event;
        final_event.data["message_id"] = json!(message_id);
        self.after_commit(final_event);
        if let Some(sink) = self.sink.take() {
            sink.finish(self.reply.update(turn_id, ReplyStatus::Completed)).await;
        }
        Ok(Finished::Completed)
    }

    /// Opens the transaction that ends an unfinished turn: locks the conversation
    /// first, as everywhere (a concurrent delete waits for this transaction, or has
    /// committed and nothing is written), and records the turn's session.
    async fn begin<'c>(&self, client: &'c mut PooledClient, session: &Session) -> DbResult<Transaction<'c>> {
        let tx = client.transaction().await?;
        if !conversation::lock_shared(&tx, self.conversation.conversation_id).await? {
            return Err(DbError::not_found("conversation"));
        }
        turn::set_session(&tx, self.turn.turn_id, session.session_id).await?;
        Ok(tx)
    }

    /// Stores a failed or cancelled turn: its partial reply marked incomplete, its final
    /// status and event, and sends the end to the platform.
    async fn store_unanswered(&mut self, session: &Session, how: Unanswered) -> DbResult<Finished> {
        self.reserve(2).await?;
        let turn_id = self.turn.turn_id;
        let mut client = self.orch.pool().get().await?;
        let tx = self.begin(&mut client, session).await?;
        let (finished, status, final_event, update) = match how {
            Unanswered::Failed(text) => {
                warn!(error = %text, "turn failed");
                let partial = self.store_partial(&tx, session, json!({ "error": text })).await?;
                session::set_last_error(&tx, session.session_id, Some(&text)).await?;
                let data = json!({ "error": text, "message_id": partial });
                self.turn.error = Some(text.clone());
                let event = self.emitter.event(EventKind::TurnFailed, data);
                (Finished::Failed, TurnStatus::Failed, event, ReplyStatus::Failed { error: text })
            }
            Unanswered::Cancelled => {
                let partial = self.store_partial(&tx, session, json!({ "cancelled": true })).await?;
                let event = self.emitter.event(EventKind::TurnCancelled, json!({ "message_id": partial }));
                (Finished::Cancelled, TurnStatus::Cancelled, event, ReplyStatus::Cancelled)
            }
        };
        if !turn::finish(&tx, turn_id, status, self.turn.error.as_deref()).await? {
            tx.rollback().await?;
            warn!("the turn was no longer running when it finished; its result is dropped");
            return Ok(self.lost());
        }
        event::insert_batch(&tx, &self.emitter.unflushed).await?;
        event::insert_batch(&tx, std::slice::from_ref(&final_event)).await?;
        tx.commit().await?;
        self.after_commit(final_event);
        if let Some(sink) = self.sink.take() {
            sink.finish(self.reply.update(turn_id, update)).await;
        }
        Ok(finished)
    }

    /// Puts a turn stopped by a shutdown back in the queue for the next start. The
    /// re-run answers in full, so the partial reply is not stored (it would repeat in
    /// history).
    async fn requeue_interrupted(&mut self, session: &Session) -> DbResult<Finished> {
        self.reserve(1).await?;
        let mut client = self.orch.pool().get().await?;
        let tx = self.begin(&mut client, session).await?;
        turn::requeue(&tx, self.turn.turn_id).await?;
        event::insert_batch(&tx, &self.emitter.unflushed).await?;
        let e = self.emitter.event(EventKind::TurnInterrupted, json!({ "requeued": true }));
        event::insert_batch(&tx, std::slice::from_ref(&e)).await?;
        tx.commit().await?;
        self.after_commit(e);
        Ok(Finished::Requeued)
    }

    /// Lets go of a turn that is no longer this worker's, storing nothing: followers
    /// stop waiting for the events this run published but will never write.
    fn lost(&self) -> Finished {
        self.orch.hub().persisted(self.conversation.conversation_id, self.emitter.next_seq - 1);
        Finished::Lost
    }

    /// Stores the partial reply (if any text came) marked incomplete, adding its usage
    /// to the session's totals; returns its id.
    async fn store_partial(&self, tx: &impl GenericClient, session: &Session, extra: Value) -> DbResult<Option<i64>> {
        if self.reply.text.is_empty() {
            return Ok(None);
        }
        let mut meta = self.reply.metadata();
        meta["incomplete"] = json!(true);
        if let (Some(m), Some(e)) = (meta.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let msg = message::insert(
            tx,
            self.conversation.conversation_id,
            Some(self.turn.turn_id),
            Role::Assistant,
            &self.reply.text,
            &meta,
        )
        .await?;
        session::add_usage(tx, session.session_id, &meta).await?;
        Ok(Some(msg.message_id))
    }
}
