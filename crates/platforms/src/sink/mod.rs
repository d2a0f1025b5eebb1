//! Outbound reply sinks: one [`ReplySink`] per platform, registered on the orchestrator.
//!
//! Chat platforms (Telegram, Slack, Discord, GitHub) share one driver: a reply is
//! rendered ([`crate::split::render`]), split at the platform's limit, and kept in sync
//! with a list of posted messages — the first update posts, later ones edit (at most one
//! edit per [`SinkSettings::edit_interval`]), a reply that outgrows a message continues
//! in a new one. The generic webhook POSTs the whole reply to a callback instead.
//!
//! A failed call is retried ([`crate::http`]), then reported to the worker, which logs
//! it; the assistant message is in the database whatever the platform says.

mod discord;
mod generic;
mod github;
mod slack;
mod telegram;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::reply::{ReplySink, ReplyStatus, ReplyUpdate};
use futures::FutureExt;
use futures::future::BoxFuture;
use parley_db::conversation::Conversation;
use serde_json::Value;
use tracing::{debug, warn};
use uuid::Uuid;

pub use discord::DiscordApi;
pub use generic::GenericSink;
pub use github::GithubApi;
pub use slack::SlackApi;
pub use telegram::TelegramApi;

pub use crate::http::SinkError;
use crate::split::{Unit, render, split_message};

/// How long a turn's reply state is kept without an update (a turn whose final
/// update never came, e.g. its worker crashed).
const REPLY_STATE_TTL: Duration = Duration::from_secs(3600);
/// How often Telegram's typing status is renewed while nothing is shown yet (it lasts
/// about 5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);

/// A platform's message API, as the driver uses it.
pub trait MessageApi: Send + Sync + 'static {
    /// What a reply needs, parsed from `conversation.reply_target`.
    type Target: Send + Sync + 'static;

    /// The platform's name, for logs.
    const NAME: &'static str;

    /// The message length limit and how it is counted.
    const LIMIT: (usize, Unit);

    /// Parses a reply target (`conversation.reply_target`, or the one of a message not
    /// stored, for a notice).
    ///
    /// # Errors
    /// [`SinkError::Target`] when it lacks what the platform needs.
    fn target(&self, reply_target: &Value) -> Result<Self::Target, SinkError>;

    /// Posts a notice only `user` sees where the platform can (Slack
    /// `chat.postEphemeral`); by default a plain [`MessageApi::post`].
    fn post_private(
        &self,
        target: &Self::Target,
        _user: &str,
        text: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async move { self.post(target, 0, text).await.map(|_| ()) }
    }

    /// Shows that a reply is being written (Telegram `sendChatAction typing`); default:
    /// nothing.
    fn typing(&self, _target: &Self::Target) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Posts piece `index` of a reply as a new message; returns its id.
    fn post(
        &self,
        target: &Self::Target,
        index: usize,
        text: &str,
    ) -> impl Future<Output = Result<String, SinkError>> + Send;

    /// Replaces the text of a posted message. "Not modified" counts as success.
    fn edit(&self, target: &Self::Target, id: &str, text: &str) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The value at `key` of a reply target, read by `get`; a [`SinkError::Target`] saying
/// that `platform`'s reply target lacks it otherwise.
fn required<'a, T>(
    reply_target: &'a Value,
    key: &str,
    get: impl FnOnce(&'a Value) -> Option<T>,
    platform: &str,
) -> Result<T, SinkError> {
    reply_target
        .get(key)
        .and_then(get)
        .ok_or_else(|| SinkError::Target(format!("the {platform} reply target has no {key}")))
}

#[derive(Debug, Clone)]
struct Posted {
    id: String,
    text: String,
}

/// What has been shown of one turn's reply.
#[derive(Debug)]
struct ReplyState {
    posted: Vec<Posted>,
    last_write: Option<Instant>,
    last_typing: Option<Instant>,
    touched: Instant,
}

impl Default for ReplyState {
    fn default() -> Self {
        Self { posted: Vec::new(), last_write: None, last_typing: None, touched: Instant::now() }
    }
}

struct DriverInner<A: MessageApi> {
    api: A,
    edit_interval: Duration,
    show_tools: bool,
    states: Mutex<HashMap<Uuid, ReplyState>>,
}

/// The [`ReplySink`] of a chat platform: posts, edits and splits through a
/// [`MessageApi`].
pub struct Driver<A: MessageApi> {
    inner: Arc<DriverInner<A>>,
}

impl<A: MessageApi> std::fmt::Debug for Driver<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("platform", &A::NAME).finish_non_exhaustive()
    }
}

impl<A: MessageApi> Driver<A> {
    /// A driver over `api`, editing at most once per `edit_interval`.
    #[must_use]
    pub fn new(api: A, edit_interval: Duration, show_tools: bool) -> Self {
        Self { inner: Arc::new(DriverInner { api, edit_interval, show_tools, states: Mutex::new(HashMap::new()) }) }
    }
}

impl<A: MessageApi> DriverInner<A> {
    fn take_state(&self, turn_id: Uuid) -> ReplyState {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|_, t| t.touched.elapsed() < REPLY_STATE_TTL);
        states.remove(&turn_id).unwrap_or_default()
    }

    fn put_state(&self, turn_id: Uuid, mut state: ReplyState) {
        state.touched = Instant::now();
        self.states.lock().unwrap_or_else(PoisonError::into_inner).insert(turn_id, state);
    }

    async fn send(&self, conversation: Conversation, update: ReplyUpdate) -> Result<(), SinkError> {
        let target = self.api.target(&conversation.reply_target)?;
        let (limit, unit) = A::LIMIT;
        let pieces = split_message(&render(&update, self.show_tools), limit, unit);
        let Some(turn_id) = update.turn_id.filter(|_| update.status != ReplyStatus::Notice) else {
            // A notice: post it, no state.
            for (i, piece) in pieces.iter().enumerate() {
                self.api.post(&target, i, piece).await?;
            }
            return Ok(());
        };
        let mut state = self.take_state(turn_id);
        let result = self.sync(&target, &mut state, &update, &pieces).await;
        if !update.is_final() {
            self.put_state(turn_id, state);
        }
        result
    }

    async fn sync(
        &self,
        target: &A::Target,
        state: &mut ReplyState,
        update: &ReplyUpdate,
        pieces: &[String],
    ) -> Result<(), SinkError> {
        let nothing_yet = update.text.trim().is_empty() && (update.tools.is_empty() || !self.show_tools);
        if state.posted.is_empty() && state.last_typing.is_none_or(|t| t.elapsed() >= TYPING_EVERY) {
            if let Err(e) = self.api.typing(target).await {
                debug!(platform = A::NAME, error = %e, "typing status failed");
            }
            state.last_typing = Some(Instant::now());
        }
        if !update.is_final() && nothing_yet {
            return Ok(());
        }
        if let Some(last) = state.last_write {
            let since = last.elapsed();
            if since < self.edit_interval {
                tokio::time::sleep(self.edit_interval - since).await;
            }
        }
        let mut first_error = None;
        for (i, piece) in pieces.iter().enumerate() {
            match state.posted.get(i) {
                Some(p) if p.text == *piece => {}
                Some(p) => {
                    let id = p.id.clone();
                    match self.api.edit(target, &id, piece).await {
                        Ok(()) => state.posted[i].text.clone_from(piece),
                        Err(e) if update.is_final() => {
                            // The last word must reach the user: post it anew.
                            warn!(platform = A::NAME, error = %e, "editing the reply failed; posting it as a new message");
                            let id = self.api.post(target, i, piece).await?;
                            state.posted[i] = Posted { id, text: piece.clone() };
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                None => {
                    let id = self.api.post(target, i, piece).await?;
                    state.posted.push(Posted { id, text: piece.clone() });
                }
            }
        }
        state.last_write = Some(Instant::now());
        first_error.map_or(Ok(()), Err)
    }
}

/// Posts a notice to the reply target of a message that was not stored (a message
/// refused before ingest: a sender not on the allow-list, a text that cannot be stored).
pub trait Notice: Send + Sync + 'static {
    /// Posts `text` as a reply to `reply_target` ([`crate::InboundMessage::reply_target`]),
    /// visible only to `user` where the platform allows it.
    fn notice(&self, reply_target: &Value, user: &str, text: &str) -> BoxFuture<'static, Result<(), SinkError>>;
}

/// `driver` as both the reply sink of its conversations and the notice sender of
/// refused messages.
pub(crate) fn shared<A: MessageApi>(driver: Driver<A>) -> (Arc<dyn ReplySink>, Arc<dyn Notice>) {
    let driver = Arc::new(driver);
    (Arc::clone(&driver) as Arc<dyn ReplySink>, driver)
}

impl<A: MessageApi> Notice for Driver<A> {
    fn notice(&self, reply_target: &Value, user: &str, text: &str) -> BoxFuture<'static, Result<(), SinkError>> {
        let inner = Arc::clone(&self.inner);
        let (reply_target, user, text) = (reply_target.clone(), user.to_owned(), text.to_owned());
        async move {
            let target = inner.api.target(&reply_target)?;
            inner.api.post_private(&target, &user, &text).await
        }
        .boxed()
    }
}

impl<A: MessageApi> ReplySink for Driver<A> {
    fn send(&self, conversation: &Conversation, update: ReplyUpdate) -> BoxFuture<'static, Result<(), String>> {
        let inner = Arc::clone(&self.inner);
        let conversation = conversation.clone();
        async move { inner.send(conversation, update).await.map_err(|e| e.to_string()) }.boxed()
    }
}
