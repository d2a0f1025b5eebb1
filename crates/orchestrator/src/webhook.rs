//! Webhook ingest: a chat platform's message stored in one transaction — its
//! conversation found by `(platform, external_id)` or created, the message with its
//! queued turn (or the chat command with its reply), and the delivery record —
//! so a failure leaves nothing behind, not even the conversation.
//!
//! It never waits for the assistant: platforms give a webhook about three seconds
//! (`parley_platforms::ACK_DEADLINE`), so the turn is only queued, and a chat command's
//! reply is sent to the platform in the background.

use parley_db::conversation::{self, NewConversation, ReplyMode};
use parley_db::{DbError, inbound_delivery};
use parley_platforms::InboundMessage;
use uuid::Uuid;

use crate::ingest::{self, Outcome};
use crate::{IdempotencyKey, Ingested, Orchestrator, OrchestratorError, PostMessage, validate_text};

/// What [`Orchestrator::ingest_webhook`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookIngested {
    /// The conversation the message went to; `None` only for a repeat of a delivery
    /// recorded without one.
    pub conversation_id: Option<Uuid>,
    /// What ingest did (`duplicate: true` for a redelivery, which stored nothing).
    pub ingested: Ingested,
}

impl Orchestrator {
    /// Stores a message received by a chat platform's webhook, in one transaction:
    /// a delivery id seen before is answered with its first answer (marked
    /// `duplicate`) before anything is written; otherwise the conversation
    /// `(platform, external_id)` is created (owner: the platform's name, the default
    /// assistant, reply mode) or its reply target refreshed, and the message is
    /// ingested as [`Orchestrator::post_message`] does, deduplicated by
    /// `(platform, delivery id)` over the external id and text. Workers are woken after
    /// the commit. A chat command's reply is also sent through the platform's reply sink
    /// (in the background), except where the webhook's answer shows it
    /// ([`parley_platforms::Platform::replies_in_response`]).
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidInput`] for text that cannot be stored,
    /// [`OrchestratorError::TooManyQueued`] when the conversation's queue is full,
    /// [`OrchestratorError::IdempotencyKeyReused`] when the delivery id came first with
    /// another conversation or text, [`OrchestratorError::Conflict`] when a concurrent
    /// delivery of the same id has not stored its answer yet,
    /// [`OrchestratorError::Db`] when the store fails. Nothing is stored in any of these
    /// cases.
    pub async fn ingest_webhook(
        &self,
        message: InboundMessage,
        reply_mode: ReplyMode,
    ) -> Result<WebhookIngested, OrchestratorError> {
        validate_text(&message.text, self.config().max_message_chars)?;
        let platform = message.platform;
        let idempotency_key =
            IdempotencyKey::new(platform.as_str(), &message.idempotency_key, &[&message.external_id, &message.text]);
        let mut client = self.pool().get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        // A redelivery is answered before anything is written (its conversation included).
        if let Some(stored) = inbound_delivery::stored(&tx, &idempotency_key.namespace, &idempotency_key.key).await? {
            tx.rollback().await.map_err(DbError::from)?;
            let conversation_id = stored.conversation_id;
            return Ok(WebhookIngested { conversation_id, ingested: idempotency_key.repeat(Some(stored))? });
        }
        let conversation = conversation::upsert_by_external_id(
            &tx,
            &NewConversation {
                platform: platform.as_str().to_owned(),
                external_id: message.external_id,
                owner: platform.as_str().to_owned(),
                title: message.title,
                assistant: self.config().default_assistant.clone(),
                cwd: None,
                reply_mode,
                reply_target: message.reply_target,
            },
        )
        .await?;
        let post = PostMessage {
            conversation_id: conversation.conversation_id,
            text: message.text,
            idempotency_key: Some(idempotency_key.clone()),
            metadata: message.metadata,
            owner: None,
        };
        let outcome = self.store(&tx, &post).await?;
        ingest::end(tx, &outcome).await?;
        let Outcome::Stored { ingested, command } = outcome else {
            // A concurrent delivery of the same id committed first.
            let (ingested, conversation_id) = idempotency_key.first_answer(&client).await?;
            return Ok(WebhookIngested { conversation_id, ingested });
        };
        self.after_ingest(command.as_ref());
        if let Ingested::Command { reply, .. } = &ingested
            && !platform.replies_in_response()
        {
            self.send_notice(&conversation, reply.clone());
        }
        Ok(WebhookIngested { conversation_id: Some(conversation.conversation_id), ingested })
    }
}
