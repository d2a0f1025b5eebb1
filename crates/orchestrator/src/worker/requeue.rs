//! Requeueing running turns that no worker runs any more: those whose lease expired
//! (on any replica), and those this worker ran before it restarted.

use std::sync::Arc;

use chrono::Utc;
use parley_assistant::run_marker;
use parley_db::event::{self, Event, EventKind};
use parley_db::message::{self, Role};
use parley_db::turn::{self, TurnStatus};
use parley_db::{DbResult, GenericClient};
use serde_json::json;
use tracing::warn;

use crate::Orchestrator;
use crate::notify::Signal;

use super::KILL_WAIT;

/// Which running turns [`Orchestrator::requeue`] requeues.
#[derive(Debug, Clone, Copy)]
pub(super) enum Requeue {
    /// Those whose lease expired, on any replica.
    Expired,
    /// Those this worker id ran before it restarted.
    Owned,
}

impl Orchestrator {
    /// Requeues running turns that no worker runs any more (or interrupts those that
    /// ran [`crate::Config::max_attempts`] times), with a
    /// `turn_interrupted` event each (so followers drop the partial reply they saw).
    /// Processes of their runs found on this host are killed.
    pub(super) async fn requeue(&self, which: Requeue) -> DbResult<usize> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let turns = match which {
            Requeue::Expired => turn::requeue_expired(&tx, self.config().max_attempts).await?,
            Requeue::Owned => turn::requeue_owned(&tx, &self.config().worker_id).await?,
        };
        let mut events = Vec::new();
        for t in &turns {
            let requeued = t.status == TurnStatus::Queued;
            let mut data = json!({ "turn_id": t.turn_id, "requeued": requeued, "attempt": t.attempt });
            if requeued {
                warn!(turn_id = %t.turn_id, attempt = t.attempt, "lease expired; requeued the turn");
            } else {
                let text = format!(
                    "This message could not be answered: the server running it stopped {} times. Send /retry to try again.",
                    t.attempt
                );
                warn!(turn_id = %t.turn_id, attempt = t.attempt, "lease expired too often; turn interrupted");
                crate::metrics::turn_interrupted();
                let msg = message::insert(
                    &tx,
                    t.conversation_id,
                    Some(t.turn_id),
                    Role::System,
                    &text,
                    &json!({ "notice": "interrupted" }),
                )
                .await?;
                data["error"] = json!(text);
                data["message_id"] = json!(msg.message_id);
            }
            let seq = event::reserve_block(&tx).await?;
            events.push(Event {
                conversation_id: t.conversation_id,
                seq,
                turn_id: Some(t.turn_id),
                kind: EventKind::TurnInterrupted,
                data,
                created_at: Utc::now(),
            });
        }
        event::insert_batch(&tx, &events).await?;
        tx.commit().await?;
        for e in events {
            self.hub().publish(Arc::new(e.clone()), true, false);
            self.signal(Signal::Event { event: e, persisted: true });
        }
        if !turns.is_empty() {
            self.wake();
        }
        // A replica that lost its lease stops its run itself; on this host, make sure.
        for run_id in turns.iter().filter_map(|t| t.run_id) {
            let killed = run_marker::kill_run(run_id, KILL_WAIT).await;
            if killed > 0 {
                warn!(%run_id, processes = killed, "killed the processes of a run whose lease expired");
            }
        }
        Ok(turns.len())
    }
}
