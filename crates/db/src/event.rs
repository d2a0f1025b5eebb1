//! The `event` table: the stream log of a conversation that SSE clients replay.
//!
//! Events are numbered by `seq`: each writer reserves a block of [`BLOCK_SIZE`] numbers
//! from the `event_block` sequence ([`reserve_block`], or with the claim of a turn), so
//! numbers are unique, grow in the order written, and are never reused. Events are
//! written in batches (several events per insert).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DbError, DbResult, text_enum};

/// How many event numbers a block holds (2^20).
pub const BLOCK_SIZE: i64 = 1 << 20;

/// Reserves a fresh block of event numbers; returns its first number.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn reserve_block(client: &impl GenericClient) -> DbResult<i64> {
    let stmt = client.prepare_cached(&format!("select nextval('event_block') * {BLOCK_SIZE}")).await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

vocabulary! {
    /// What an event tells: `event.kind` and the SSE event name of the events stream,
    /// spelled in snake case (`turn_started`, `tool_use`, …). The web UI subscribes to
    /// every kind (`web/assets/conversation.js`, checked against this list by a test).
    pub enum EventKind ("snake_case") {
        /// A worker started (or restarted) the turn: `attempt`, `session_id`, `message_id`.
        TurnStarted,
        /// Reply text, in pieces: `text`.
        Text,
        /// The assistant's reasoning, in pieces: `text`.
        Thinking,
        /// The assistant called a tool: `id`, `name`, `input` (or a preview of it).
        ToolUse,
        /// A tool's output: `id`, `is_error`, `output` (truncated).
        ToolResult,
        /// The stale assistant session was replaced by a fresh one rebuilt from history.
        SessionReset,
        /// The assistant's session file was missing (or shorter, or different) on the
        /// replica that runs the turn and was written back from the stored copy before the
        /// resume: `bytes`, `reason`, `stored_by`, `stored_at`, `assistant_session_id`,
        /// `session_id`.
        SessionRestored,
        /// The turn answered: `usage`, `cost_usd`, `duration_ms`, `message_id`.
        TurnCompleted,
        /// The turn failed: `error`, `message_id` of the partial reply (or null).
        TurnFailed,
        /// The turn was cancelled: `message_id` of the partial reply (or null).
        TurnCancelled,
        /// The turn stopped before it finished: `requeued` (it runs again) or `error`.
        TurnInterrupted,
    }
}

impl EventKind {
    /// True for the kinds that end a turn (its last event).
    #[must_use]
    pub fn ends_turn(self) -> bool {
        matches!(self, Self::TurnCompleted | Self::TurnFailed | Self::TurnCancelled | Self::TurnInterrupted)
    }
}

/// An event row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Position in the conversation's stream, starting at 1.
    pub seq: i64,
    /// The turn that produced it.
    pub turn_id: Option<Uuid>,
    /// What it tells.
    pub kind: EventKind,
    /// The payload; its shape depends on `kind`.
    pub data: serde_json::Value,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

from_row!(row => Event {
    conversation_id, seq, turn_id, kind: text_enum(row, "kind")?, data, created_at,
});

/// Inserts a batch of events in one statement; events of a conversation that no longer
/// exists are dropped (the table has no foreign key: see migration V4). The statement
/// locks each conversation of the batch once (`for key share`, as a foreign key would
/// for each row), so a concurrent [`crate::conversation::delete`] either waits for it
/// and removes its events, or has committed and it stores nothing. An empty batch does
/// nothing.
///
/// # Errors
/// [`DbError::Conflict`] on `event_pkey` when a `seq` is already used.
pub async fn insert_batch(client: &impl GenericClient, events: &[Event]) -> DbResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let columns = Columns::of(events);
    let stmt = client
        .prepare_cached(
            "with c as (select conversation_id from conversation where conversation_id = any($1) for key share) \
             insert into event (conversation_id, seq, turn_id, kind, data, created_at) \
             select u.* from unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::jsonb[], $6::timestamptz[]) \
                 as u (conversation_id, seq, turn_id, kind, data, created_at) \
             where u.conversation_id in (select conversation_id from c)",
        )
        .await?;
    let Columns { conversation_ids, seqs, turn_ids, kinds, data, created } = &columns;
    client.execute(&stmt, &[conversation_ids, seqs, turn_ids, kinds, data, created]).await?;
    Ok(())
}

/// Events as one array per column, for an `unnest` of them all in one statement.
pub(crate) struct Columns<'a> {
    pub(crate) conversation_ids: Vec<Uuid>,
    pub(crate) seqs: Vec<i64>,
    pub(crate) turn_ids: Vec<Option<Uuid>>,
    pub(crate) kinds: Vec<&'a str>,
    pub(crate) data: Vec<&'a serde_json::Value>,
    pub(crate) created: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    /// The columns of `events`, in their order.
    pub(crate) fn of(events: &'a [Event]) -> Self {
        Self {
            conversation_ids: events.iter().map(|e| e.conversation_id).collect(),
            seqs: events.iter().map(|e| e.seq).collect(),
            turn_ids: events.iter().map(|e| e.turn_id).collect(),
            kinds: events.iter().map(|e| e.kind.as_ref()).collect(),
            data: events.iter().map(|e| &e.data).collect(),
            created: events.iter().map(|e| e.created_at).collect(),
        }
    }
}

/// Up to `limit` events with `seq > after`, in order.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list_after(
    client: &impl GenericClient,
    conversation_id: Uuid,
    after: i64,
    limit: i64,
) -> DbResult<Vec<Event>> {
    let stmt = client
        .prepare_cached(
            "select conversation_id, seq, turn_id, kind, data, created_at from event \
             where conversation_id = $1 and seq > $2 order by seq limit $3",
        )
        .await?;
    let rows = client.query(&stmt, &[&conversation_id, &after, &limit]).await?;
    rows.iter().map(Event::try_from).collect()
}
