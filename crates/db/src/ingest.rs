//! Ingest of a plain user message: the hot write path, in one statement.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::{DbError, DbResult};

/// A user message to store with the turn that answers it.
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Only store it when the conversation belongs to this principal (`None`: any).
    pub owner: Option<&'a str>,
    /// The id of the turn to queue (chosen by the caller).
    pub turn_id: Uuid,
    /// The message text (no NUL).
    pub content: &'a str,
    /// The message metadata.
    pub metadata: &'a serde_json::Value,
    /// Refuse when this many turns already wait in the conversation's queue (0: no limit).
    pub max_queued: i64,
    /// An idempotency key `(namespace, key)` recorded with the response, so a repeat can
    /// return it.
    pub idempotency_key: Option<(&'a str, &'a str)>,
    /// The request's [`crate::inbound_delivery::request_hash`], recorded with the idempotency key.
    pub request_hash: Option<&'a [u8; 32]>,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored: the user message's id.
    Stored {
        /// The message id.
        message_id: i64,
    },
    /// Nothing stored: the conversation does not exist or is not the owner's.
    NotFound,
    /// Nothing stored: `queued` turns already wait.
    QueueFull {
        /// How many wait.
        queued: i64,
    },
}

/// Stores a user message and its queued turn in one statement (one round trip and one
/// commit in autocommit mode): locks the conversation row first (so one conversation's
/// message ids commit in the order assigned), checks the owner and the queue limit,
/// inserts the message and the turn, and records the idempotency key with the response
/// `{"kind":"turn","turn_id","message_id","duplicate":false}` and the request hash.
///
/// The queue count is read from the statement's snapshot, so under concurrent posts to
/// one conversation the limit is approximate by the number of concurrent posts.
///
/// # Errors
/// [`DbError::Conflict`] on [`crate::constraint::INBOUND_DELIVERY_PKEY`] when the idempotency
/// key was already recorded (nothing is stored: the statement is atomic);
/// [`DbError::Unavailable`] / [`DbError::Other`] otherwise.
pub async fn enqueue(client: &impl GenericClient, e: &Enqueue<'_>) -> DbResult<Enqueued> {
    let stmt = client
        .prepare_cached(
            "with q as (select count(*) as queued from turn where conversation_id = $1 and status = 'queued'), \
             c as ( \
                 update conversation \
                 set updated_at = case when $6::bigint = 0 or (select queued from q) < $6::bigint \
                                       then now() else updated_at end \
                 where conversation_id = $1 and ($2::text is null or owner = $2) returning conversation_id), \
             m as ( \
                 insert into message (conversation_id, turn_id, role, content, metadata) \
                 select c.conversation_id, $3, 'user', $4, $5 from c, q where $6::bigint = 0 or q.queued < $6::bigint \
                 returning message_id), \
             t as (insert into turn (turn_id, conversation_id, user_message_id) select $3, $1, message_id from m), \
             d as ( \
                 insert into inbound_delivery (platform, idempotency_key, conversation_id, response, request_hash) \
                 select $7, $8, $1, jsonb_build_object('kind', 'turn', 'turn_id', $3::uuid, \
                                                       'message_id', m.message_id, 'duplicate', false), $9 \
                 from m where $7::text is not null) \
             select (select count(*) from c) as found, (select queued from q) as queued, \
                    (select message_id from m) as message_id",
        )
        .await?;
    let (namespace, key) = e.idempotency_key.unzip();
    let hash = e.request_hash.map(<[u8; 32]>::as_slice);
    let row = client
        .query_one(
            &stmt,
            &[&e.conversation_id, &e.owner, &e.turn_id, &e.content, e.metadata, &e.max_queued, &namespace, &key, &hash],
        )
        .await?;
    let found: i64 = row.try_get("found")?;
    let message_id: Option<i64> = row.try_get("message_id")?;
    Ok(match (found, message_id) {
        (0, _) => Enqueued::NotFound,
        (_, Some(message_id)) => Enqueued::Stored { message_id },
        (_, None) => Enqueued::QueueFull { queued: row.try_get("queued")? },
    })
}

impl Enqueued {
    /// The stored message id, if stored.
    #[must_use]
    pub fn message_id(self) -> Option<i64> {
        match self {
            Self::Stored { message_id } => Some(message_id),
            _ => None,
        }
    }
}

/// True when `err` says the idempotency key was already recorded.
#[must_use]
pub fn is_duplicate(err: &DbError) -> bool {
    err.is_conflict_on(crate::constraint::INBOUND_DELIVERY_PKEY)
}
