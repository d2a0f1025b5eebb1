//! One turn's run: the session it runs in, the prompt, the assistant call with its
//! chunks turned into events and reply, and the recovery from a stale assistant session
//! (one retry in a fresh session rebuilt from history).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parley_assistant::{Assistant, AssistantError, Chunk, RunRequest};
use parley_db::conversation::{self, Conversation};
use parley_db::event::{self, EventKind};
use parley_db::message::Message;
use parley_db::session::{self, NewSession, Session, SessionSettings, Transition};
use parley_db::turn::{self, Claimed, Turn};
use parley_db::{DbError, DbResult, GenericClient};
use serde_json::json;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::{Orchestrator, prompt, settings};

use super::TurnControl;
use super::emit::{EVENT_TEXT_CHARS, Emitter, TOOL_OUTPUT_CHARS, pieces, shown_input, truncate};
use super::finish::{Finished, Outcome};
use super::reply::{Reply, SinkHandle, tool_line};

/// How long a stopped run's stream may take to end (its CLI gets `SIGTERM`, a grace
/// period, then `SIGKILL`) before the run's processes are killed outright.
const STOP_DRAIN: Duration = Duration::from_secs(15);

/// One turn being run by a worker.
pub(super) struct TurnRun<'a> {
    pub(super) orch: &'a Orchestrator,
    pub(super) conversation: Conversation,
    pub(super) turn: Turn,
    pub(super) user_message: Message,
    /// The conversation's active session as read at claim time.
    pub(super) active_session: Option<Session>,
    pub(super) control: TurnControl,
    /// The run's marker, carried by every process its assistant starts.
    pub(super) run_id: Uuid,
    pub(super) emitter: Emitter,
    pub(super) reply: Reply,
    pub(super) sink: Option<SinkHandle>,
    /// The turn's working directory under the workspace root (resolved before the run).
    pub(super) cwd: Option<std::path::PathBuf>,
    /// The worker that held the conversation's warm process before the claim.
    pub(super) warm_holder: Option<String>,
}

impl Orchestrator {
    /// Runs a claimed turn to its end. Returns what became of it.
    pub(super) async fn drive(&self, claimed: Claimed, control: TurnControl, run_id: Uuid) -> DbResult<Finished> {
        // The claim read the conversation, the message and the active session too.
        let Claimed { turn: t, first_event_seq, conversation, user_message, active_session, warm_holder, .. } = claimed;
        let sink = self
            .inner
            .sinks
            .get(&conversation.platform)
            .map(|s| SinkHandle::start(Arc::clone(s), conversation.clone()));
        let mut run = TurnRun {
            orch: self,
            emitter: Emitter {
                conversation_id: conversation.conversation_id,
                turn_id: t.turn_id,
                next_seq: first_event_seq,
                block_end: first_event_seq + event::BLOCK_SIZE,
                unflushed: Vec::new(),
                last_flush: Instant::now(),
            },
            conversation,
            turn: t,
            user_message,
            active_session,
            control,
            run_id,
            reply: Reply::default(),
            sink,
            cwd: None,
            warm_holder,
        };
        run.execute().await
    }

    fn assistant_named(&self, name: &str) -> Option<Arc<dyn Assistant>> {
        self.inner.assistants.get(name).cloned()
    }
}

impl TurnRun<'_> {
    async fn execute(&mut self) -> DbResult<Finished> {
        let Some(assistant) = self.orch.assistant_named(&self.conversation.assistant) else {
            let err = AssistantError::Refused(format!(
                "the assistant {:?} is not configured on this server (configured: {})",
                self.conversation.assistant,
                self.orch.assistant_names().join(", ")
            ));
            let session = self.resolve_session("unknown").await?;
            return self.finish(&session, Outcome::Failed(err)).await;
        };
        let mut session = self.resolve_session(assistant.name()).await?;
        match self.orch.working_directory(&self.conversation).await {
            Ok(cwd) => self.cwd = cwd,
            Err(e) => {
                // Checked before every run: a link may have appeared since the cwd was accepted.
                warn!(error = %e, "refusing to run the turn outside the workspace root");
                let err = AssistantError::Refused(format!("{e}; the turn was not run"));
                return self.finish(&session, Outcome::Failed(err)).await;
            }
        }
        self.emit(EventKind::TurnStarted, json!({ "attempt": self.turn.attempt, "session_id": session.session_id, "message_id": self.user_message.message_id })).await;

        let (prompt, history) = self.prompt_for(&session).await?;
        let kept = self.restore_transcript(&assistant, &session).await;
        let mut outcome = self.attempt(&assistant, &mut session, prompt, history).await?;

        if let Outcome::Failed(AssistantError::StaleSession { session_id: stale, detail }) = &outcome
            && session.assistant_session_id.as_deref() == Some(stale.as_str())
        {
            let (stale, detail) = (stale.clone(), detail.clone());
            warn!(assistant_session_id = %stale, %detail, "assistant session is stale; continuing in a fresh session with history");
            let previous = session.session_id;
            session = self.recover_stale(&session, &stale).await?;
            crate::metrics::stale_recovery(assistant.name(), crate::metrics::RecoveryPath::Rebuilt);
            let (prompt, history) = self.prompt_for(&session).await?;
            self.emit(
                EventKind::SessionReset,
                json!({
                    "reason": "stale-session",
                    "old_assistant_session_id": stale,
                    "previous_session_id": previous,
                    "session_id": session.session_id,
                    "history_messages": history,
                    "detail": detail,
                }),
            )
            .await;
            outcome = self.attempt(&assistant, &mut session, prompt, history).await?;
        }
        self.snapshot_transcript(&assistant, &session, &outcome, kept).await;
        self.finish(&session, outcome).await
    }

    /// The conversation's active session for `assistant`, started when there is none
    /// (or when the conversation moved to another assistant).
    ///
    /// The common case — the active session read at claim time runs this assistant —
    /// needs no database work: the turn records its session when it finishes.
    async fn resolve_session(&mut self, assistant: &str) -> DbResult<Session> {
        if let Some(active) = self.active_session.take()
            && active.assistant == assistant
            && settings::session_change(&active, &self.conversation).is_none()
        {
            return Ok(active);
        }
        let run_settings = SessionSettings::of(&self.conversation);
        let mut client = self.orch.pool().get().await?;
        let conversation_id = self.conversation.conversation_id;
        for _ in 0..3 {
            let tx = client.transaction().await?;
            if !conversation::lock_shared(&tx, conversation_id).await? {
                return Err(DbError::not_found("conversation"));
            }
            let active = session::active(&tx, conversation_id).await?;
            let resolved = match active {
                Some(s) if s.assistant == assistant && settings::session_change(&s, &self.conversation).is_none() => {
                    Ok(s)
                }
                Some(s) => {
                    // The conversation moved to another assistant, directory, model or prompt.
                    let reason =
                        settings::session_change(&s, &self.conversation).unwrap_or(Transition::AssistantChanged);
                    session::end(&tx, s.session_id, reason, None).await?;
                    session::start(
                        &tx,
                        &NewSession {
                            conversation_id,
                            assistant,
                            parent_session_id: Some(s.session_id),
                            reason,
                            history_from_message_id: s.history_from_message_id,
                            settings: &run_settings,
                        },
                    )
                    .await
                }
                None => {
                    let last = session::last_ended(&tx, conversation_id).await?;
                    let reason = last
                        .as_ref()
                        .and_then(|s| s.ended_reason.as_deref())
                        .and_then(|reason| reason.parse().ok())
                        .unwrap_or(Transition::FirstMessage);
                    session::start(
                        &tx,
                        &NewSession {
                            conversation_id,
                            assistant,
                            parent_session_id: last.as_ref().map(|s| s.session_id),
                            reason,
                            history_from_message_id: last.map_or(0, |s| s.history_from_message_id),
                            settings: &run_settings,
                        },
                    )
                    .await
                }
            };
            match resolved {
                Ok(s) => {
                    turn::set_session(&tx, self.turn.turn_id, s.session_id).await?;
                    tx.commit().await?;
                    return Ok(s);
                }
                // Someone else started one first: read it again.
                Err(e) if e.is_conflict_on(parley_db::constraint::SESSION_ONE_ACTIVE) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DbError::Other("could not resolve the conversation's session".into()))
    }

    /// The prompt and how many history messages it carries: the message alone when the
    /// session will be resumed, else rebuilt from history.
    async fn prompt_for(&self, session: &Session) -> DbResult<(String, usize)> {
        if session.assistant_session_id.is_some() {
            return Ok((self.user_message.content.clone(), 0));
        }
        let config = self.orch.config();
        let client = self.orch.pool().get().await?;
        let limits = prompt::HistoryLimits {
            budget_tokens: config.history_budget_tokens,
            max_messages: config.history_max_messages,
        };
        let rebuilt = prompt::rebuild(
            &client,
            self.conversation.conversation_id,
            session.history_from_message_id,
            self.user_message.message_id,
            &self.user_message.content,
            limits,
        )
        .await?;
        Ok((rebuilt.prompt, rebuilt.messages))
    }

    /// Writes NULL over the stale assistant session ID (compare-and-set), ends the
    /// session as `stale-session` and starts its child.
    async fn recover_stale(&self, stale_session: &Session, stale_id: &str) -> DbResult<Session> {
        let mut client = self.orch.pool().get().await?;
        let tx = client.transaction().await?;
        if !conversation::lock_shared(&tx, self.conversation.conversation_id).await? {
            return Err(DbError::not_found("conversation"));
        }
        let cleared = session::clear_assistant_session_id(&tx, stale_session.session_id, stale_id).await?;
        debug!(cleared, "cleared the stale assistant session ID");
        let ended = session::end(&tx, stale_session.session_id, Transition::StaleSession, None).await?;
        let fresh = match session::active(&tx, self.conversation.conversation_id).await? {
            // A /reset started a new session meanwhile: use it.
            Some(active) if !ended || active.session_id != stale_session.session_id => active,
            _ => {
                session::start(
                    &tx,
                    &NewSession {
                        conversation_id: self.conversation.conversation_id,
                        assistant: &stale_session.assistant,
                        parent_session_id: Some(stale_session.session_id),
                        reason: Transition::StaleSession,
                        history_from_message_id: stale_session.history_from_message_id,
                        settings: &SessionSettings::of(&self.conversation),
                    },
                )
                .await?
            }
        };
        turn::set_session(&tx, self.turn.turn_id, fresh.session_id).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    /// Runs the assistant once, streaming its chunks into events and the reply.
    async fn attempt(
        &mut self,
        assistant: &Arc<dyn Assistant>,
        session: &mut Session,
        prompt: String,
        history: usize,
    ) -> DbResult<Outcome> {
        let request = RunRequest {
            prompt,
            message: self.user_message.content.clone(),
            history_messages: history,
            resume: session.assistant_session_id.clone(),
            cwd: self.cwd.clone(),
            cancel: self.control.token.child_token(),
            run_id: self.run_id,
            settings: self.orch.run_settings(&self.conversation),
            warm: self.orch.warm_key(&self.conversation, self.warm_holder.as_deref()),
        };
        // PostgreSQL cannot store NUL (U+0000): assistant output is made storable here, where it enters.
        let mut stream = assistant.run(request).map(|r| r.map(Chunk::without_nul).map_err(AssistantError::without_nul));
        loop {
            let next = tokio::select! {
                biased;
                () = self.control.token.cancelled() => {
                    // The adapter saw the same cancellation: let it stop its processes
                    // gracefully (its stream then ends) before they are killed outright.
                    let _ = tokio::time::timeout(STOP_DRAIN, async { while stream.next().await.is_some() {} }).await;
                    return Ok(Outcome::Stopped(self.control.reason()));
                }
                next = stream.next() => next,
            };
            let chunk = match next {
                None => {
                    return Ok(Outcome::Failed(AssistantError::Protocol(
                        "the assistant ended without a result".into(),
                    )));
                }
                Some(Err(AssistantError::Cancelled)) if self.control.token.is_cancelled() => {
                    return Ok(Outcome::Stopped(self.control.reason()));
                }
                Some(Err(e)) => return Ok(Outcome::Failed(e)),
                Some(Ok(chunk)) => chunk,
            };
            match chunk {
                Chunk::SessionStarted { id } => {
                    if session.assistant_session_id.as_deref() != Some(id.as_str()) {
                        // Stored at once, so a crash mid-turn still knows what to resume.
                        let client = self.orch.pool().get().await?;
                        session::set_assistant_session_id(&client, session.session_id, &id).await?;
                        session.assistant_session_id = Some(id);
                    }
                }
                Chunk::Text { text } => {
                    if self.reply.text.is_empty() {
                        crate::metrics::first_text(assistant.name(), self.turn.created_at);
                    }
                    self.reply.text.push_str(&text);
                    for piece in pieces(&text, EVENT_TEXT_CHARS) {
                        self.emit(EventKind::Text, json!({ "text": piece })).await;
                    }
                    self.progress();
                }
                Chunk::Thinking { text } => {
                    for piece in pieces(&text, EVENT_TEXT_CHARS) {
                        self.emit(EventKind::Thinking, json!({ "text": piece })).await;
                    }
                }
                Chunk::ToolUse { id, name, input } => {
                    self.reply.tools.push(tool_line(&name, &input));
                    let shown = shown_input(&input);
                    self.reply.tool_calls.push(json!({ "id": id, "name": name, "input": input }));
                    self.emit(EventKind::ToolUse, json!({ "id": id, "name": name, "input": shown })).await;
                    self.progress();
                }
                Chunk::ToolResult { id, is_error, output } => {
                    self.reply.tool_result(&id, is_error, &output);
                    self.emit(
                        EventKind::ToolResult,
                        json!({ "id": id, "is_error": is_error, "output": truncate(&output, TOOL_OUTPUT_CHARS) }),
                    )
                    .await;
                }
                Chunk::Completed { session_id, usage, cost_usd, duration_ms } => {
                    self.reply.usage = usage;
                    self.reply.cost_usd = cost_usd;
                    self.reply.duration_ms = duration_ms;
                    self.reply.completed_session_id = session_id;
                    return Ok(Outcome::Completed);
                }
            }
        }
    }
}
