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
    /// `tool_calls` for the tools the assistant used (`[{"id", "name", "input"}]`, each
    /// with `is_error` and an `output` preview once its result came; replies stored
    /// before Parley kept outcomes have neither).
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

/// The keys of a tool call's input whose string value stands for the whole input in a
/// one-line preview, first match wins (Claude Code's `Bash.command`, `Read.file_path`,
/// `Grep.pattern`, `WebFetch.url`, …; Codex's `shell_command.command`). Inputs with none
/// of them are previewed as their JSON text.
pub const TOOL_INPUT_PREVIEW_KEYS: [&str; 7] =
    ["command", "file_path", "path", "pattern", "url", "query", "description"];

/// Longest tool-call field (name, input preview, output preview) an outline carries, in
/// characters.
pub const TOOL_FIELD_CHARS: i32 = 160;

/// Most tool calls of one message an outline carries (the rest are only counted).
pub const TOOL_CALLS_PER_MESSAGE: i32 = 8;

/// One message of the history a rebuilt prompt may carry, without its text: what is
/// needed to decide how much of the text to fetch ([`history_excerpts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryOutline {
    /// The message.
    pub message_id: i64,
    /// `user` or `assistant`.
    pub role: Role,
    /// Length of the text in characters (Unicode scalar values, PostgreSQL
    /// `char_length`).
    pub chars: i64,
    /// `metadata.incomplete`: a cancelled or interrupted partial reply.
    pub incomplete: bool,
    /// The first [`TOOL_CALLS_PER_MESSAGE`] of `metadata.tool_calls`, each reduced to
    /// `{ "name", "input", "is_error", "output" }`: `input` is the string value of the
    /// first of [`TOOL_INPUT_PREVIEW_KEYS`] found, else the input's JSON text; `name`,
    /// `input` and `output` at most [`TOOL_FIELD_CHARS`] characters. `is_error` and
    /// `output` are null for calls stored before their outcome was recorded.
    pub tool_calls: Vec<serde_json::Value>,
    /// How many tool calls `metadata.tool_calls` holds in all.
    pub tool_call_count: i32,
}

impl TryFrom<&tokio_postgres::Row> for HistoryOutline {
    type Error = DbError;

    fn try_from(row: &tokio_postgres::Row) -> DbResult<Self> {
        let tool_calls: Option<serde_json::Value> = row.try_get("tool_calls")?;
        Ok(Self {
            message_id: row.try_get("message_id")?,
            role: text_enum(row, "role")?,
            chars: i64::from(row.try_get::<_, i32>("chars")?),
            incomplete: row.try_get("incomplete")?,
            tool_calls: match tool_calls {
                Some(serde_json::Value::Array(calls)) => calls,
                _ => Vec::new(),
            },
            tool_call_count: row.try_get("tool_call_count")?,
        })
    }
}

/// The newest `limit` messages in `[from_message_id, before_message_id)` that a rebuilt
/// prompt may carry — user and assistant messages, not chat commands — newest first,
/// as outlines: lengths and tool-call previews, never the text. One indexed read of at
/// most `limit` rows (`message_conversation_id_idx`); each outline is small whatever the
/// message's size.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn history_outline(
    client: &impl GenericClient,
    conversation_id: Uuid,
    from_message_id: i64,
    before_message_id: i64,
    limit: i64,
) -> DbResult<Vec<HistoryOutline>> {
    let input = TOOL_INPUT_PREVIEW_KEYS.iter().map(|k| format!("t->'input'->>'{k}'")).collect::<Vec<_>>().join(", ");
    let stmt = client
        .prepare_cached(&format!(
            "select message_id, role, char_length(content) as chars, \
                    coalesce(metadata->'incomplete' = 'true'::jsonb, false) as incomplete, \
                    case when jsonb_typeof(metadata->'tool_calls') = 'array' then ( \
                      select jsonb_agg(jsonb_build_object( \
                               'name', left(t->>'name', {n}), \
                               'input', left(coalesce({input}, (t->'input')::text), {n}), \
                               'is_error', t->'is_error', \
                               'output', left(t->>'output', {n})) order by i) \
                      from jsonb_array_elements(metadata->'tool_calls') with ordinality as calls(t, i) \
                      where i <= {max}) end as tool_calls, \
                    case when jsonb_typeof(metadata->'tool_calls') = 'array' \
                         then jsonb_array_length(metadata->'tool_calls') else 0 end as tool_call_count \
             from message where conversation_id = $1 and message_id < $2 and message_id >= $3 \
                  and role in ('user', 'assistant') and not (metadata ? 'command') \
             order by message_id desc limit $4",
            n = TOOL_FIELD_CHARS,
            max = TOOL_CALLS_PER_MESSAGE,
        ))
        .await?;
    let rows = client.query(&stmt, &[&conversation_id, &before_message_id, &from_message_id, &limit]).await?;
    rows.iter().map(HistoryOutline::try_from).collect()
}

/// What to read of one message's text for a rebuilt prompt: its first `head` and last
/// `tail` characters, or the whole text when it is no longer than `head + tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExcerptRequest {
    /// The message.
    pub message_id: i64,
    /// Characters kept from the start.
    pub head: i32,
    /// Characters kept from the end.
    pub tail: i32,
}

/// A message's text as [`history_excerpts`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// The message.
    pub message_id: i64,
    /// The whole text, or its first `head` characters when it was cut.
    pub head: String,
    /// Empty when the whole text is in `head`; else the last `tail` characters.
    pub tail: String,
}

/// Reads the parts of messages' texts that `requests` ask for, cut by PostgreSQL so that
/// no more than `head + tail` characters of a message leave the database. A request with
/// `tail` 0 reads the first `head` characters without counting the text's length. Rows are in
/// `message_id` order; a message deleted meanwhile is missing.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn history_excerpts(client: &impl GenericClient, requests: &[ExcerptRequest]) -> DbResult<Vec<Excerpt>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = requests.iter().map(|r| r.message_id).collect();
    let heads: Vec<i32> = requests.iter().map(|r| r.head.max(0)).collect();
    let tails: Vec<i32> = requests.iter().map(|r| r.tail.max(0)).collect();
    let stmt = client
        .prepare_cached(
            "select m.message_id, \
                    case when r.tail = 0 then left(m.content, r.head) \
                         when char_length(m.content) <= r.head + r.tail then m.content \
                         else left(m.content, r.head) end as head, \
                    case when r.tail = 0 then '' \
                         when char_length(m.content) <= r.head + r.tail then '' \
                         else right(m.content, r.tail) end as tail \
             from unnest($1::bigint[], $2::int[], $3::int[]) as r(message_id, head, tail) \
             join message m on m.message_id = r.message_id \
             order by m.message_id",
        )
        .await?;
    let rows = client.query(&stmt, &[&ids, &heads, &tails]).await?;
    rows.iter()
        .map(|row| {
            Ok(Excerpt {
                message_id: row.try_get("message_id")?,
                head: row.try_get("head")?,
                tail: row.try_get("tail")?,
            })
        })
        .collect()
}
