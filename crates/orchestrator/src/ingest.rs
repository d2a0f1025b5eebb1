//! Ingest: one transaction that stores a user message and queues its turn (or runs a
//! chat command), deduplicated by an idempotency or delivery key. Nothing a user sent
//! is acknowledged before it is committed.

use parley_db::message::{self, Role};
use parley_db::{conversation, inbound_delivery, ingest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::command::{self, Command, CommandReply, Parsed};
use crate::{Orchestrator, OrchestratorError};

/// The default longest message accepted, in characters ([`crate::Config::max_message_chars`]).
pub const MAX_MESSAGE_CHARS: usize = 100_000;

/// A dedupe key and the request it stands for: a repeat of the key with the same request
/// returns the first answer; with another request it is
/// [`OrchestratorError::IdempotencyKeyReused`] and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedupe {
    /// The key's namespace: `web` for `Idempotency-Key`s, the platform's name for
    /// webhook deliveries.
    pub namespace: String,
    /// The key within the namespace (`<conversation>:<Idempotency-Key>`, a delivery id).
    pub key: String,
    /// [`parley_db::inbound_delivery::request_hash`] of what the request asks for.
    pub request_hash: [u8; 32],
}

impl Dedupe {
    /// A key for the request made of `request` (e.g. `[text]`, or
    /// `[conversation external id, text]` for a webhook).
    #[must_use]
    pub fn new(namespace: impl Into<String>, key: impl Into<String>, request: &[&str]) -> Self {
        Self {
            namespace: namespace.into(),
            key: key.into(),
            request_hash: parley_db::inbound_delivery::request_hash(request),
        }
    }

    /// What a recorded delivery of this key means for this request: the first answer
    /// marked as a duplicate, or an error.
    fn repeat(&self, stored: Option<inbound_delivery::Stored>) -> Result<Ingested, OrchestratorError> {
        let stored = stored.ok_or_else(|| OrchestratorError::Conflict("this delivery was already received".into()))?;
        if stored.is_for_another_request(&self.request_hash) {
            return Err(OrchestratorError::IdempotencyKeyReused);
        }
        stored
            .response
            .and_then(|v| serde_json::from_value::<Ingested>(v).ok())
            .map(Ingested::mark_duplicate)
            .ok_or_else(|| OrchestratorError::Conflict("this delivery was already received".into()))
    }
}

/// A message to post to a conversation.
#[derive(Debug, Clone)]
pub struct PostMessage {
    /// The conversation; it must exist.
    pub conversation_id: Uuid,
    /// The text: not empty, at most [`crate::Config::max_message_chars`] characters, no NUL.
    pub text: String,
    /// A dedupe key: the web API uses `("web", "<conversation>:<Idempotency-Key>")`,
    /// webhooks use `(platform, delivery id)`. A repeat returns the first result; the key
    /// reused for another request is refused ([`Dedupe`]).
    pub dedupe: Option<Dedupe>,
    /// Extra data stored on the user message (platform sender, message ids…).
    pub metadata: serde_json::Value,
    /// Only accept it when the conversation belongs to this principal (`None`: any);
    /// another principal's conversation is [`OrchestratorError::NotFound`].
    pub owner: Option<String>,
}

/// What ingest did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ingested {
    /// The message was stored and a turn queued to answer it.
    Turn {
        /// The queued turn.
        turn_id: Uuid,
        /// The stored user message.
        message_id: i64,
        /// True when this is a repeat of an earlier delivery: nothing new was stored.
        #[serde(default)]
        duplicate: bool,
    },
    /// The message was a chat command; it ran and was answered.
    Command {
        /// The stored command message.
        message_id: i64,
        /// The command, when known.
        command: Option<Command>,
        /// False when the conversation's state did not allow it.
        ok: bool,
        /// The reply.
        reply: String,
        /// True when this is a repeat of an earlier delivery.
        #[serde(default)]
        duplicate: bool,
    },
}

impl Ingested {
    fn mark_duplicate(mut self) -> Self {
        match &mut self {
            Self::Turn { duplicate, .. } | Self::Command { duplicate, .. } => *duplicate = true,
        }
        self
    }
}

/// Checks a message's text against a length limit of `max_chars` characters.
///
/// # Errors
/// [`OrchestratorError::InvalidInput`] when it is empty, too long, or contains NUL
/// (PostgreSQL `text` cannot hold U+0000; rejecting it is clearer than altering it).
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), OrchestratorError> {
    if text.trim().is_empty() {
        return Err(OrchestratorError::InvalidInput("text must not be empty".into()));
    }
    if text.contains('\0') {
        return Err(OrchestratorError::InvalidInput(
            "text contains a NUL character (U+0000), which cannot be stored; remove it and send again".into(),
        ));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(OrchestratorError::InvalidInput(format!(
            "text is {chars} characters long; the limit is {max_chars}"
        )));
    }
    Ok(())
}

impl Orchestrator {
    /// Stores a user message and queues a turn for it, or runs it as a chat command.
    ///
    /// A plain message is one statement ([`parley_db::ingest::enqueue`]): conversation
    /// row lock (so messages of one conversation commit in id order), owner and queue
    /// checks, user message, queued turn and dedupe record. A chat command runs in one
    /// transaction with the conversation locked. Workers are woken after the commit.
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidInput`] for bad text (nothing stored),
    /// [`OrchestratorError::TooManyQueued`] when the conversation's queue is full
    /// (checked under the conversation's row lock; nothing stored),
    /// [`OrchestratorError::NotFound`] for an unknown conversation,
    /// [`OrchestratorError::IdempotencyKeyReused`] when the dedupe key was first used
    /// for another request (nothing stored),
    /// [`OrchestratorError::Db`] when the store fails (nothing stored).
    pub async fn post_message(&self, post: PostMessage) -> Result<Ingested, OrchestratorError> {
        validate_text(&post.text, self.config().max_message_chars)?;
        if command::parse(&post.text) == Parsed::Message {
            return self.enqueue(post).await;
        }
        let mut client = self.pool().get().await.map_err(parley_db::DbError::from)?;
        let tx = client.transaction().await.map_err(parley_db::DbError::from)?;
        if let Some(d) = &post.dedupe
            && !inbound_delivery::record(&tx, &d.namespace, &d.key, Some(post.conversation_id), Some(&d.request_hash))
                .await?
        {
            let stored = inbound_delivery::stored(&tx, &d.namespace, &d.key).await?;
            tx.rollback().await.map_err(parley_db::DbError::from)?;
            return d.repeat(stored);
        }
        let conv = conversation::lock(&tx, post.conversation_id).await?;
        if post.owner.as_deref().is_some_and(|o| o != conv.owner) {
            return Err(OrchestratorError::NotFound("conversation"));
        }
        let result = match command::parse(&post.text) {
            Parsed::Message => unreachable!("plain messages are enqueued above"),
            parsed => {
                let name = match &parsed {
                    Parsed::Command(c) => c.name().to_owned(),
                    Parsed::Unknown(n) => n.clone(),
                    Parsed::Message => unreachable!("handled above"),
                };
                let mut metadata = post.metadata.clone();
                if let Some(obj) = metadata.as_object_mut() {
                    obj.insert("command".into(), json!(name));
                } else {
                    metadata = json!({ "command": name });
                }
                let msg = message::insert(&tx, conv.conversation_id, None, Role::User, &post.text, &metadata).await?;
                let reply = match parsed {
                    Parsed::Command(c) => Some(
                        command::execute(
                            &tx,
                            self.settings_policy(),
                            &conv,
                            c,
                            command::arguments(&post.text),
                            Some(msg.message_id),
                        )
                        .await?,
                    ),
                    _ => None,
                };
                let (command, ok, text) = match &reply {
                    Some(r) => (Some(r.command), r.ok, r.text.clone()),
                    None => (None, false, format!("Unknown command /{name}. {}", command::help_text())),
                };
                message::insert(
                    &tx,
                    conv.conversation_id,
                    None,
                    Role::System,
                    &text,
                    &json!({ "command": name, "ok": ok }),
                )
                .await?;
                (Ingested::Command { message_id: msg.message_id, command, ok, reply: text, duplicate: false }, reply)
            }
        };
        if let Some(d) = &post.dedupe {
            let value = serde_json::to_value(&result.0).map_err(|e| OrchestratorError::InvalidInput(e.to_string()))?;
            inbound_delivery::set_response(&tx, &d.namespace, &d.key, &value).await?;
        }
        tx.commit().await.map_err(parley_db::DbError::from)?;
        match result.1 {
            Some(reply) => self.after_command(&reply),
            None => self.wake(),
        }
        Ok(result.0)
    }

    /// Stores a plain message and queues its turn in one statement.
    async fn enqueue(&self, post: PostMessage) -> Result<Ingested, OrchestratorError> {
        let client = self.pool().get().await.map_err(parley_db::DbError::from)?;
        let turn_id = Uuid::new_v4();
        let limit = self.config().max_queued_turns;
        let dedupe = post.dedupe.as_ref().map(|d| (d.namespace.as_str(), d.key.as_str()));
        let enqueued = ingest::enqueue(
            &client,
            &ingest::Enqueue {
                conversation_id: post.conversation_id,
                owner: post.owner.as_deref(),
                turn_id,
                content: &post.text,
                metadata: &post.metadata,
                max_queued: i64::try_from(limit).unwrap_or(i64::MAX),
                dedupe,
                request_hash: post.dedupe.as_ref().map(|d| &d.request_hash),
            },
        )
        .await;
        match enqueued {
            Ok(ingest::Enqueued::Stored { message_id }) => {
                self.wake();
                Ok(Ingested::Turn { turn_id, message_id, duplicate: false })
            }
            Ok(ingest::Enqueued::NotFound) => Err(OrchestratorError::NotFound("conversation")),
            Ok(ingest::Enqueued::QueueFull { queued }) => Err(OrchestratorError::TooManyQueued { queued, limit }),
            Err(e) if ingest::is_duplicate(&e) => match &post.dedupe {
                Some(d) => d.repeat(inbound_delivery::stored(&client, &d.namespace, &d.key).await?),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The answer to a repeat of `dedupe`, when that key was already recorded, with the
    /// conversation it went to: `Ok(None)` for a new key. Lets a surface answer a
    /// redelivery before it creates anything (a webhook's conversation).
    ///
    /// # Errors
    /// [`OrchestratorError::IdempotencyKeyReused`] when the key was first used for another
    /// request; [`OrchestratorError::Conflict`] when its first delivery is still being
    /// stored; [`OrchestratorError::Db`] when the store fails.
    pub async fn repeat_of(&self, dedupe: &Dedupe) -> Result<Option<(Ingested, Option<Uuid>)>, OrchestratorError> {
        let client = self.pool().get().await.map_err(parley_db::DbError::from)?;
        match inbound_delivery::stored(&client, &dedupe.namespace, &dedupe.key).await? {
            None => Ok(None),
            Some(stored) => {
                let conversation_id = stored.conversation_id;
                dedupe.repeat(Some(stored)).map(|ingested| Some((ingested, conversation_id)))
            }
        }
    }

    /// Runs a command on a conversation without storing a message (the web API's
    /// `/cancel`, `/reset`, `/pause`, `/resume` endpoints).
    ///
    /// # Errors
    /// [`OrchestratorError::NotFound`] for an unknown conversation,
    /// [`OrchestratorError::Db`] when the store fails. A command the state does not
    /// allow is a reply with `ok: false`, not an error.
    pub async fn run_command(
        &self,
        conversation_id: Uuid,
        command: Command,
    ) -> Result<CommandReply, OrchestratorError> {
        let mut client = self.pool().get().await.map_err(parley_db::DbError::from)?;
        let tx = client.transaction().await.map_err(parley_db::DbError::from)?;
        let conv = conversation::lock(&tx, conversation_id).await?;
        let reply = command::execute(&tx, self.settings_policy(), &conv, command, "", None).await?;
        tx.commit().await.map_err(parley_db::DbError::from)?;
        self.after_command(&reply);
        Ok(reply)
    }

    fn after_command(&self, reply: &CommandReply) {
        if let Some(turn_id) = reply.cancel_turn {
            self.cancel(turn_id);
        }
        if reply.wake {
            self.wake();
        }
    }
}
