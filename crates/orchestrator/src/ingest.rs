//! Ingest: one transaction that stores a user message and queues its turn (or runs a
//! chat command), deduplicated by an idempotency key. Nothing a user sent
//! is acknowledged before it is committed.

use parley_db::message::{self, Role};
use parley_db::{DbError, GenericClient, conversation, inbound_delivery, ingest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::command::{self, Command, CommandReply, Parsed};
use crate::settings::Policy;
use crate::{Orchestrator, OrchestratorError};

/// The default longest message accepted, in characters ([`crate::Config::max_message_chars`]).
pub const MAX_MESSAGE_CHARS: usize = 100_000;

/// An idempotency key and the request it stands for: a repeat of the key with the same request
/// returns the first answer; with another request it is
/// [`OrchestratorError::IdempotencyKeyReused`] and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key's namespace: `web` for `Idempotency-Key`s, the platform's name for
    /// webhook deliveries.
    pub namespace: String,
    /// The key within the namespace (`<conversation>:<Idempotency-Key>`, a delivery id).
    pub key: String,
    /// [`parley_db::inbound_delivery::request_hash`] of what the request asks for.
    pub request_hash: [u8; 32],
}

impl IdempotencyKey {
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
    pub(crate) fn repeat(&self, stored: Option<inbound_delivery::Stored>) -> Result<Ingested, OrchestratorError> {
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
    /// An idempotency key: the web API uses `("web", "<conversation>:<Idempotency-Key>")`,
    /// webhooks use `(platform, delivery id)`. A repeat returns the first result; the key
    /// reused for another request is refused ([`IdempotencyKey`]).
    pub idempotency_key: Option<IdempotencyKey>,
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
    /// True when this answers a repeat of an earlier delivery (nothing new was stored).
    #[must_use]
    pub fn is_duplicate(&self) -> bool {
        match self {
            Self::Turn { duplicate, .. } | Self::Command { duplicate, .. } => *duplicate,
        }
    }

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

/// What storing a message left to do once its transaction ends.
pub(crate) enum Outcome {
    /// Stored: commit, then [`Orchestrator::after_ingest`].
    Stored {
        /// The answer to give.
        ingested: Ingested,
        /// The command's reply, when the message was a known chat command.
        command: Option<CommandReply>,
    },
    /// Nothing stored: another delivery recorded the idempotency key first. End the
    /// transaction, then answer with [`IdempotencyKey::first_answer`].
    Repeat,
}

impl IdempotencyKey {
    /// The first answer given to this key, marked as a duplicate, with the conversation
    /// it went to: read after an [`Outcome::Repeat`], outside the failed transaction.
    ///
    /// # Errors
    /// [`OrchestratorError::IdempotencyKeyReused`] when the key was first used for another
    /// request; [`OrchestratorError::Conflict`] when its first delivery has not stored an
    /// answer yet; [`OrchestratorError::Db`] when the store fails.
    pub(crate) async fn first_answer(
        &self,
        client: &impl GenericClient,
    ) -> Result<(Ingested, Option<Uuid>), OrchestratorError> {
        let stored = inbound_delivery::stored(client, &self.namespace, &self.key).await?;
        let conversation_id = stored.as_ref().and_then(|s| s.conversation_id);
        self.repeat(stored).map(|ingested| (ingested, conversation_id))
    }
}

impl Orchestrator {
    /// Stores a user message and queues a turn for it, or runs it as a chat command.
    ///
    /// A plain message is one statement ([`parley_db::ingest::enqueue`]): conversation
    /// row lock (so messages of one conversation commit in id order), owner and queue
    /// checks, user message, queued turn and idempotency key record. A chat command runs in one
    /// transaction with the conversation locked. Workers are woken after the commit.
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidInput`] for bad text (nothing stored),
    /// [`OrchestratorError::TooManyQueued`] when the conversation's queue is full
    /// (checked under the conversation's row lock; nothing stored),
    /// [`OrchestratorError::NotFound`] for an unknown conversation,
    /// [`OrchestratorError::IdempotencyKeyReused`] when the idempotency key was first used
    /// for another request (nothing stored),
    /// [`OrchestratorError::Db`] when the store fails (nothing stored).
    pub async fn post_message(&self, post: PostMessage) -> Result<Ingested, OrchestratorError> {
        validate_text(&post.text, self.config().max_message_chars)?;
        let mut client = self.pool().get().await.map_err(DbError::from)?;
        let outcome = if command::parse(&post.text) == Parsed::Message {
            // One statement in autocommit mode: one round trip, one commit.
            self.store(&client, &post).await?
        } else {
            let tx = client.transaction().await.map_err(DbError::from)?;
            let outcome = self.store(&tx, &post).await?;
            end(tx, &outcome).await?;
            outcome
        };
        match (outcome, &post.idempotency_key) {
            (Outcome::Stored { ingested, command }, _) => {
                self.after_ingest(command.as_ref());
                Ok(ingested)
            }
            (Outcome::Repeat, Some(idempotency_key)) => {
                idempotency_key.first_answer(&client).await.map(|(ingested, _)| ingested)
            }
            (Outcome::Repeat, None) => Err(OrchestratorError::Conflict("this message was already received".into())),
        }
    }

    /// Stores `post` through `client`: a plain message with its queued turn in one
    /// statement, or a chat command with its reply, which needs `client` to be a
    /// transaction (the conversation stays locked until it ends). Nothing wakes the
    /// workers: the caller ends the transaction, then calls [`Orchestrator::after_ingest`].
    pub(crate) async fn store(
        &self,
        client: &impl GenericClient,
        post: &PostMessage,
    ) -> Result<Outcome, OrchestratorError> {
        match command::parse(&post.text) {
            Parsed::Message => self.store_message(client, post).await,
            parsed => store_command(client, self.settings_policy(), post, parsed).await,
        }
    }

    /// Stores a plain message and queues its turn in one statement.
    async fn store_message(
        &self,
        client: &impl GenericClient,
        post: &PostMessage,
    ) -> Result<Outcome, OrchestratorError> {
        let turn_id = Uuid::new_v4();
        let limit = self.config().max_queued_turns;
        let idempotency_key = post.idempotency_key.as_ref().map(|d| (d.namespace.as_str(), d.key.as_str()));
        let enqueued = ingest::enqueue(
            client,
            &ingest::Enqueue {
                conversation_id: post.conversation_id,
                owner: post.owner.as_deref(),
                turn_id,
                content: &post.text,
                metadata: &post.metadata,
                max_queued: i64::try_from(limit).unwrap_or(i64::MAX),
                idempotency_key,
                request_hash: post.idempotency_key.as_ref().map(|d| &d.request_hash),
            },
        )
        .await;
        match enqueued {
            Ok(ingest::Enqueued::Stored { message_id }) => Ok(Outcome::Stored {
                ingested: Ingested::Turn { turn_id, message_id, duplicate: false },
                command: None,
            }),
            Ok(ingest::Enqueued::NotFound) => Err(OrchestratorError::NotFound("conversation")),
            Ok(ingest::Enqueued::QueueFull { queued }) => Err(OrchestratorError::TooManyQueued { queued, limit }),
            Err(e) if ingest::is_duplicate(&e) && idempotency_key.is_some() => Ok(Outcome::Repeat),
            Err(e) => Err(e.into()),
        }
    }

    /// Wakes the workers after a stored message, or applies a command's effects (cancel a
    /// turn, wake the workers) once its transaction has committed.
    pub(crate) fn after_ingest(&self, command: Option<&CommandReply>) {
        match command {
            Some(reply) => self.after_command(reply),
            None => self.wake(),
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

/// Commits `tx` when `outcome` stored something, else rolls it back (it may be aborted
/// by the duplicate key that made it a repeat).
pub(crate) async fn end(tx: parley_db::Transaction<'_>, outcome: &Outcome) -> Result<(), OrchestratorError> {
    match outcome {
        Outcome::Stored { .. } => tx.commit().await,
        Outcome::Repeat => tx.rollback().await,
    }
    .map_err(|e| DbError::from(e).into())
}

/// Runs a chat command posted as a message, in the caller's transaction: records the
/// idempotency key (a repeat stops here), locks the conversation, stores the command and
/// Parley's reply as messages, runs it, and records the answer for repeats.
async fn store_command(
    client: &impl GenericClient,
    policy: &Policy,
    post: &PostMessage,
    parsed: Parsed,
) -> Result<Outcome, OrchestratorError> {
    if let Some(d) = &post.idempotency_key
        && !inbound_delivery::record(client, &d.namespace, &d.key, Some(post.conversation_id), Some(&d.request_hash))
            .await?
    {
        return Ok(Outcome::Repeat);
    }
    let conv = conversation::lock(client, post.conversation_id).await?;
    if post.owner.as_deref().is_some_and(|o| o != conv.owner) {
        return Err(OrchestratorError::NotFound("conversation"));
    }
    let name = match &parsed {
        Parsed::Command(c) => c.name().to_owned(),
        Parsed::Unknown(n) => n.clone(),
        Parsed::Message => return Err(OrchestratorError::InvalidInput("not a chat command".into())),
    };
    let mut metadata = post.metadata.clone();
    if let Some(obj) = metadata.as_object_mut() {
        obj.insert("command".into(), json!(name));
    } else {
        metadata = json!({ "command": name });
    }
    let msg = message::insert(client, conv.conversation_id, None, Role::User, &post.text, &metadata).await?;
    let reply = match parsed {
        Parsed::Command(c) => {
            let args = command::arguments(&post.text);
            Some(command::execute(client, policy, &conv, c, args, Some(msg.message_id)).await?)
        }
        _ => None,
    };
    let (command, ok, text) = match &reply {
        Some(r) => (Some(r.command), r.ok, r.text.clone()),
        None => (None, false, format!("Unknown command /{name}. {}", command::help_text())),
    };
    message::insert(client, conv.conversation_id, None, Role::System, &text, &json!({ "command": name, "ok": ok }))
        .await?;
    let ingested = Ingested::Command { message_id: msg.message_id, command, ok, reply: text, duplicate: false };
    if let Some(d) = &post.idempotency_key {
        let value = serde_json::to_value(&ingested).map_err(|e| OrchestratorError::InvalidInput(e.to_string()))?;
        inbound_delivery::set_response(client, &d.namespace, &d.key, &value).await?;
    }
    Ok(Outcome::Stored { ingested, command: reply })
}
