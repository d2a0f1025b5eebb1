//! The `message` table: everything said in a conversation, in order.
//!
//! Order is `message_id`, an identity column: monotonic, never a timestamp. Messages
//! are the source from which a lost assistant session is rebuilt.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DbError, DbResult, text_enum};

vocabulary! {
    /// Who said a message: `message.role` (its `message_role_check` constraint) and the
    /// `role` of a message in the API, spelled in lowercase (`user`, `assistant`,
    /// `system`).
    pub enum Role ("lowercase") {
        /// The person.
        User,
        /// The assistant.
        Assistant,
        /// Parley itself (command replies, notices).
        System,
    }
}

/// A message row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// Monotonic id: the conversation's order.
    pub message_id: i64,
    /// The conversation.
    pub conversation_id: Uuid,
    /// The turn that the message started or answered, if any.
    pub turn_id: Option<Uuid>,
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Extra data: `command` for chat commands, `usage` and `cost_usd` from the
    /// assistant, `incomplete: true` for a cancelled or interrupted partial reply,
    /// `tool_calls` for the tools the assistant used.
    pub metadata: serde_json::Value,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

from_row!(row => Message {
    message_id, conversation_id, turn_id, role: text_enum(row, "role")?, content, metadata, created_at,
});

const COLUMNS: &str = "message_id, conversation_id, turn_id, role, content, metadata, created_at";

/// Inserts a message.
///
/// # Errors
/// [`DbError::Conflict`] on `message_conversation_id_fkey` when the conversation is gone.
pub async fn insert(
    client: &impl GenericClient,
    conversation_id: Uuid,
    turn_id: Option<Uuid>,
    role: Role,
    content: &str,
    metadata: &serde_json::Value,
) -> DbResult<Message> {
    let stmt = client
        .prepare_cached(&format!(
            "insert into message (conversation_id, turn_id, role, content, metadata) \
             values ($1, $2, $3, $4, $5) returning {COLUMNS}"
        ))
        .await?;
    let row = client.query_one(&stmt, &[&conversation_id, &turn_id, &role.as_ref(), &content, metadata]).await?;
    Message::try_from(&row)
}

/// A page of a conversation's messages, oldest first, with `message_id > after`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list(
    client: &impl GenericClient,
    conversation_id: Uuid,
    after: i64,
    limit: i64,
) -> DbResult<Vec<Message>> {
    let stmt = client
        .prepare_cached(&format!(
            "select {COLUMNS} from message where conversation_id = $1 and message_id > $2 \
             order by message_id limit $3"
        ))
        .await?;
    let rows = client.query(&stmt, &[&conversation_id, &after, &limit]).await?;
    rows.iter().map(Message::try_from).collect()
}

/// Fetches one message.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn get(client: &impl GenericClient, message_id: i64) -> DbResult<Message> {
    let stmt = client.prepare_cached(&format!("select {COLUMNS} from message where message_id = $1")).await?;
    let row = client.query_opt(&stmt, &[&message_id]).await?.ok_or(DbError::not_found("message"))?;
    Message::try_from(&row)
}

/// The conversation in `[from_message_id, before_message_id)` that a rebuilt prompt
/// carries: the newest user and assistant messages (not chat commands) whose contents
/// add up to at most `budget_chars` characters, at most `max_messages` of them, oldest
/// first.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn history_before(
    client: &impl GenericClient,
    conversation_id: Uuid,
    from_message_id: i64,
    before_message_id: i64,
    budget_chars: i64,
    max_messages: i64,
) -> DbResult<Vec<Message>> {
    let stmt = client
        .prepare_cached(&format!(
            "select {COLUMNS} from ( \
               select {COLUMNS}, sum(char_length(content)) over (order by message_id desc) as running \
               from (select {COLUMNS} from message where conversation_id = $1 and message_id < $2 and message_id >= $5 \
                     and role in ('user', 'assistant') and not (metadata ? 'command') \
                     order by message_id desc limit $4) newest \
             ) sized where running <= $3 order by message_id"
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&conversation_id, &before_message_id, &budget_chars, &max_messages, &from_message_id])
        .await?;
    rows.iter().map(Message::try_from).collect()
}
