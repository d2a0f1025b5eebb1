//! Reply sinks as the orchestrator drives them: one per platform, registered on the
//! [`Builder`](crate::Builder) under the platform's name (`conversation.platform`). A
//! running turn hands its conversation's sink [`ReplyUpdate`]s (see the worker); a chat
//! command's reply reaches a platform conversation as a notice ([`Orchestrator::send_notice`]).
//!
//! The contract itself — [`ReplySink`], [`ReplyUpdate`], [`ReplyStatus`] — belongs to
//! [`parley_platforms::reply`], which implements it; it is re-exported here.

use std::sync::Arc;

use parley_db::conversation::Conversation;
pub use parley_platforms::reply::{ReplySink, ReplyStatus, ReplyUpdate};

use crate::Orchestrator;

impl Orchestrator {
    /// The reply sink registered for `platform` (`conversation.platform`), if any.
    pub(crate) fn sink(&self, platform: &str) -> Option<Arc<dyn ReplySink>> {
        self.inner.sinks.get(platform).cloned()
    }

    /// Sends `text` to `conversation` on its platform as a notice (a message from Parley
    /// outside any turn), in the background. Logged, not returned, when the platform has
    /// no reply sink (no bot token) or sending it fails: the text is stored already.
    pub fn send_notice(&self, conversation: &Conversation, text: String) {
        let platform = conversation.platform.clone();
        let Some(sink) = self.sink(&platform) else {
            tracing::warn!(%platform, "no reply sink for this platform (bot token not set); the notice is not sent");
            return;
        };
        let sent = sink.send(conversation, ReplyUpdate::notice(text));
        tokio::spawn(async move {
            if let Err(e) = sent.await {
                tracing::warn!(%platform, error = %e, "sending a notice failed");
            }
        });
    }
}
