//! The reply-sink contract between the turn pipeline and the platforms: [`ReplySink`],
//! and the [`ReplyUpdate`]s it is handed.
//!
//! The web UI follows the event log over SSE and needs no sink. A platform (Telegram,
//! Slack, …) has a [`ReplySink`] ([`crate::sink`]) that the orchestrator registers under
//! the platform's name; a running turn hands it [`ReplyUpdate`]s through a latest-wins
//! channel, so a slow platform API never slows the turn. In
//! [`ReplyMode::Stream`](parley_db::conversation::ReplyMode) mode the sink sees the reply
//! grow; in batch mode it sees only the final update.
//!
//! It lives here, not in the orchestrator, so that dependencies point one way: the
//! orchestrator uses the platforms, never the reverse.

use futures::future::BoxFuture;
use parley_db::conversation::Conversation;
use serde::Serialize;
use uuid::Uuid;

/// Where a reply stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReplyStatus {
    /// The assistant is still generating.
    Running,
    /// The reply is complete.
    Completed,
    /// The turn failed; `error` is readable by the user.
    Failed {
        /// Why.
        error: String,
    },
    /// The turn was cancelled; `text` is the partial reply.
    Cancelled,
    /// A message from Parley itself (a command's reply, a notice).
    Notice,
}

/// A snapshot of a turn's reply, as a platform should show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplyUpdate {
    /// The turn, or `None` for a notice outside any turn.
    pub turn_id: Option<Uuid>,
    /// The reply text so far (whole, not a delta).
    pub text: String,
    /// Compact lines for the tools used so far, e.g. `Bash: ls -la`.
    pub tools: Vec<String>,
    /// Where it stands.
    pub status: ReplyStatus,
}

impl ReplyUpdate {
    /// A message from Parley itself outside any turn (a chat command's reply).
    #[must_use]
    pub fn notice(text: String) -> Self {
        Self { turn_id: None, text, tools: Vec::new(), status: ReplyStatus::Notice }
    }

    /// True for the last update of a turn (or a notice).
    #[must_use]
    pub fn is_final(&self) -> bool {
        !matches!(self.status, ReplyStatus::Running)
    }
}

/// Sends replies to one platform. Implementations throttle, split long replies and
/// retry as their platform requires; an error is logged and recorded, never fatal to
/// the turn (the reply is in the database whatever the platform says).
pub trait ReplySink: Send + Sync + 'static {
    /// Shows `update` in `conversation`'s thread on the platform (its
    /// `conversation.reply_target` says where).
    ///
    /// # Errors
    /// A readable description of why the platform did not take it (no token or URL).
    fn send(&self, conversation: &Conversation, update: ReplyUpdate) -> BoxFuture<'static, Result<(), String>>;
}
