//! A turn's two touches of the assistant's own session file
//! (`docs/architecture.md#transcripts`): restored before the resume when this replica
//! lacks it, stored after the run — before the turn finishes, so the next turn, on
//! whichever replica claims it, finds the latest copy.

use std::sync::Arc;

use parley_assistant::Assistant;
use parley_db::event::EventKind;
use parley_db::session::Session;
use serde_json::json;

use crate::metrics::{self, RecoveryPath};
use crate::transcript;

use super::finish::Outcome;
use super::run::TurnRun;

impl TurnRun<'_> {
    /// Before a resume: writes the stored copy of the session's file back when this
    /// machine lacks it (or has a shorter or different one), and tells so with a
    /// `session_restored` event. Returns the stored copy as read, for
    /// [`Self::snapshot_transcript`].
    pub(super) async fn restore_transcript(
        &mut self,
        assistant: &Arc<dyn Assistant>,
        session: &Session,
    ) -> Option<transcript::Kept> {
        let config = self.orch.config();
        let (kept, restored) =
            transcript::restore(self.orch.pool(), assistant.as_ref(), session, self.cwd.as_deref(), &config.worker_id)
                .await;
        let Some(restored) = restored else { return kept };
        metrics::stale_recovery(assistant.name(), RecoveryPath::Restored);
        self.emit(
            EventKind::SessionRestored,
            json!({
                "session_id": session.session_id,
                "assistant_session_id": session.assistant_session_id,
                "bytes": restored.bytes,
                "reason": restored.reason.as_ref(),
                "stored_by": restored.stored_by,
                "stored_at": restored.stored_at,
            }),
        )
        .await;
        kept
    }

    /// After the run (completed or failed): stores what the assistant appended to the
    /// session's file. A stopped run is left alone (its CLI was killed mid-write).
    pub(super) async fn snapshot_transcript(
        &mut self,
        assistant: &Arc<dyn Assistant>,
        session: &Session,
        outcome: &Outcome,
        kept: Option<transcript::Kept>,
    ) {
        if matches!(outcome, Outcome::Stopped(_)) || session.assistant_session_id.is_none() {
            return;
        }
        // The ID the run ended in names the file when the assistant reported another one.
        let mut ran_in = session.clone();
        if let Some(id) = &self.reply.completed_session_id {
            ran_in.assistant_session_id = Some(id.clone());
        }
        let config = self.orch.config();
        transcript::snapshot(
            self.orch.pool(),
            assistant.as_ref(),
            &ran_in,
            self.cwd.as_deref(),
            &config.worker_id,
            config.transcript_max_bytes,
            kept,
        )
        .await;
    }
}
