//! Deleting old rows in small batches: events, inbound deliveries and ended sessions.
//!
//! Each function deletes at most `limit` rows older than a cutoff in one short statement
//! and returns what it deleted; the caller repeats until a batch comes back short. Rows
//! are picked with `for update skip locked`, so a batch never waits for rows that another
//! transaction (a turn finishing, another replica's batch) holds, and never holds its own
//! locks for longer than one statement.
//!
//! What is always kept, whatever its age:
//! - the events of each conversation's newest turn (the one its newest event belongs
//!   to), and of every queued or running turn: an events stream resumed after the last
//!   seq, and the conversation list's `resume_after_seq`, rely on them;
//! - each conversation's newest session, even when ended: the next session starts from
//!   its `ended_reason` and `history_from_message_id` (where a `/reset` cut the history).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::DbResult;

/// Deletes up to `limit` events stored before `cutoff`, except those of each
/// conversation's newest turn and of queued or running turns. Returns how many.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn delete_events(client: &impl GenericClient, cutoff: DateTime<Utc>, limit: i64) -> DbResult<u64> {
    let stmt = client
        .prepare_cached(
            "delete from event e using ( \
               select o.conversation_id, o.seq from event o \
               where o.created_at < $1 \
                 and o.turn_id is distinct from ( \
                   select n.turn_id from event n where n.conversation_id = o.conversation_id \
                   order by n.seq desc limit 1) \
                 and not exists (select 1 from turn t where t.turn_id = o.turn_id \
                   and t.status in ('queued', 'running')) \
               limit $2 for update of o skip locked) old \
             where e.conversation_id = old.conversation_id and e.seq = old.seq",
        )
        .await?;
    Ok(client.execute(&stmt, &[&cutoff, &limit]).await?)
}

/// Deletes up to `limit` inbound deliveries (webhook deliveries, `Idempotency-Key`s)
/// received before `cutoff`. Returns how many. A repeat of a deleted one is treated as new.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn delete_deliveries(client: &impl GenericClient, cutoff: DateTime<Utc>, limit: i64) -> DbResult<u64> {
    let stmt = client
        .prepare_cached(
            "delete from inbound_delivery d using ( \
               select platform, idempotency_key from inbound_delivery where received_at < $1 \
               limit $2 for update skip locked) old \
             where d.platform = old.platform and d.idempotency_key = old.idempotency_key",
        )
        .await?;
    Ok(client.execute(&stmt, &[&cutoff, &limit]).await?)
}

/// A session deleted by [`delete_ended_sessions`]: what a store kept outside the
/// database needs to delete its own copy (the kept transcripts in `transcript` go by
/// their foreign key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSession {
    /// The session's id.
    pub session_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The assistant that ran it.
    pub assistant: String,
    /// The assistant's own session ID, when it had one.
    pub assistant_session_id: Option<String>,
}

/// Deletes up to `limit` sessions that ended before `cutoff`, except each conversation's
/// newest session. Their turns keep their messages (`turn.session_id` becomes NULL) and
/// later sessions lose their parent link, as with `DELETE /api/sessions/{id}`. Returns
/// the deleted sessions; their kept transcripts ([`crate::transcript`]) go with them
/// (on delete cascade). Run it in a transaction together with whatever else must go
/// with them, so they go together or not at all.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn delete_ended_sessions(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> DbResult<Vec<DeletedSession>> {
    let stmt = client
        .prepare_cached(
            "delete from session s using ( \
               select o.session_id from session o \
               where not o.active and o.ended_at < $1 \
                 and exists (select 1 from session n where n.conversation_id = o.conversation_id \
                   and (n.started_at, n.session_id) > (o.started_at, o.session_id)) \
               limit $2 for update of o skip locked) old \
             where s.session_id = old.session_id \
             returning s.session_id, s.conversation_id, s.assistant, s.assistant_session_id",
        )
        .await?;
    let rows = client.query(&stmt, &[&cutoff, &limit]).await?;
    rows.iter()
        .map(|r| {
            Ok(DeletedSession {
                session_id: r.try_get(0)?,
                conversation_id: r.try_get(1)?,
                assistant: r.try_get(2)?,
                assistant_session_id: r.try_get(3)?,
            })
        })
        .collect()
}
