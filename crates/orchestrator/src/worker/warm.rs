//! Warm assistant processes seen from the worker: which turns this worker prefers, who
//! held a conversation's process before a claim, and the processes' end at shutdown
//! (`docs/architecture.md#warm-processes`).

use parley_assistant::{Prewarm, WarmKey};
use parley_db::conversation::Conversation;
use parley_db::session::Session;
use parley_db::turn::{Claimed, WarmClaim};
use tracing::{Instrument, debug, info_span};
use uuid::Uuid;

use crate::Orchestrator;
use crate::notify::Signal;

impl Orchestrator {
    /// How this worker claims: the assistants that keep warm processes here, and the
    /// window other holders get.
    pub(super) fn warm_claim(&self) -> WarmClaim {
        let mut assistants: Vec<String> =
            self.inner.assistants.values().filter(|a| a.keeps_warm()).map(|a| a.name().to_owned()).collect();
        assistants.sort();
        let window = if assistants.is_empty() { std::time::Duration::ZERO } else { self.config().warm_claim_window };
        WarmClaim { assistants, window }
    }

    /// After a claim: when another worker held the conversation's warm process, tells
    /// it to kill that process (its next reuse would be refused anyway: see
    /// [`Self::warm_key`]).
    pub(super) fn took_warm(&self, claimed: &Claimed) {
        if let Some(holder) = &claimed.warm_holder
            && *holder != self.config().worker_id
        {
            debug!(%holder, "took a turn whose conversation another worker held warm");
            self.signal(Signal::WarmTaken { conversation_id: claimed.turn.conversation_id, holder: holder.clone() });
        }
    }

    /// The warm process a run of `conversation` may use: reusable only when this worker
    /// held it before the claim (`holder`).
    pub(super) fn warm_key(&self, conversation: &Conversation, holder: Option<&str>) -> Option<WarmKey> {
        let assistant = self.inner.assistants.get(&conversation.assistant)?;
        assistant.keeps_warm().then(|| WarmKey {
            conversation_id: conversation.conversation_id,
            may_reuse: holder == Some(self.config().worker_id.as_str()),
        })
    }

    /// Kills the conversation's warm processes on this replica.
    pub(crate) fn forget_warm(&self, conversation_id: Uuid) {
        for assistant in self.inner.assistants.values() {
            assistant.forget_warm(conversation_id);
        }
    }

    /// Kills every warm process of this replica (at shutdown).
    pub(super) async fn stop_warm(&self) {
        for assistant in self.inner.assistants.values() {
            assistant.stop_warm().await;
        }
    }

    /// Starts the conversation's assistant process ahead of its next message, in the
    /// background, when its assistant keeps warm processes and has room, no turn of it
    /// is queued or running, and no other replica holds its warm process: called when
    /// its events are followed (`docs/architecture.md#warm-processes`). Never fails; a
    /// failure is logged.
    pub fn warm_up(&self, conversation_id: Uuid) {
        if !self.inner.assistants.values().any(|a| a.keeps_warm() && !a.is_warm(conversation_id)) {
            return;
        }
        let orch = self.clone();
        tokio::spawn(
            async move {
                let read = async {
                    let client = orch.pool().get().await?;
                    let (busy, holder) = parley_db::turn::warm_state(&client, conversation_id).await?;
                    if busy || holder.is_some_and(|h| h != orch.config().worker_id) {
                        return Ok(None);
                    }
                    let conversation = parley_db::conversation::get(&client, conversation_id).await?;
                    let active = parley_db::session::active(&client, conversation_id).await?;
                    Ok::<_, parley_db::DbError>(Some((conversation, active)))
                };
                match read.await {
                    Ok(Some((conversation, active))) => orch.prewarm(&conversation, active.as_ref()).await,
                    Ok(None) => {}
                    Err(e) => debug!(error = %e, "not warming the conversation's assistant up"),
                }
            }
            .in_current_span(),
        );
    }

    /// Starts the conversation's process ahead of its next message, when its assistant
    /// keeps warm processes and has room (`active`: its active session, if any).
    pub(crate) async fn prewarm(&self, conversation: &Conversation, active: Option<&Session>) {
        let Some(assistant) = self.inner.assistants.get(&conversation.assistant) else { return };
        if conversation.paused || !assistant.keeps_warm() || assistant.is_warm(conversation.conversation_id) {
            return;
        }
        let cwd = match self.working_directory(conversation).await {
            Ok(cwd) => cwd,
            Err(e) => {
                debug!(error = %e, "not warming up: the working directory is refused");
                return;
            }
        };
        let resume = active
            .filter(|s| {
                s.assistant == conversation.assistant && crate::settings::session_change(s, conversation).is_none()
            })
            .and_then(|s| s.assistant_session_id.clone());
        let span = info_span!("warm_up", conversation_id = %conversation.conversation_id);
        assistant
            .prewarm(Prewarm {
                conversation_id: conversation.conversation_id,
                resume,
                cwd,
                settings: self.run_settings(conversation),
            })
            .instrument(span)
            .await;
    }
}
