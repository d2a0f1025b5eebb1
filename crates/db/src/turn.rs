//! The `turn` table: one assistant turn answering one user message.
//!
//! Life cycle: `queued` → `running` (claimed by a worker holding a lease) → one of
//! `completed`, `failed`, `cancelled`, `interrupted`; a queued or failed turn may be
//! `skipped`. At most one turn per conversation is `running` (partial unique index
//! `turn_one_running_per_conversation`), so any number of workers and replicas may
//! claim concurrently.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{DbError, DbResult, text_enum};

vocabulary! {
    /// A turn's status: `turn.status` (its `turn_status_check` constraint) and the `status`
    /// of a turn in the API, spelled in lowercase. `str::parse` reads it (an unknown
    /// value is an error), `as_ref`/`Display` write it and `TurnStatus::iter()` lists
    /// every status in life-cycle order.
    pub enum TurnStatus ("lowercase") {
        /// Waiting for a worker.
        Queued,
        /// A worker runs it.
        Running,
        /// Answered.
        Completed,
        /// The assistant failed; `error` says why.
        Failed,
        /// Stopped by `/cancel`.
        Cancelled,
        /// Stopped by a shutdown or crash and not re-run.
        Interrupted,
        /// Dropped by `/skip`.
        Skipped,
    }
}

/// A turn row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Turn {
    /// Primary key.
    pub turn_id: Uuid,
    /// The conversation.
    pub conversation_id: Uuid,
    /// The session it ran in, once claimed.
    pub session_id: Option<Uuid>,
    /// The user message it answers.
    pub user_message_id: i64,
    /// See [`TurnStatus`].
    pub status: TurnStatus,
    /// How many times a worker has claimed it (1 on the first run).
    pub attempt: i32,
    /// Why it failed.
    pub error: Option<String>,
    /// The worker that runs or ran it.
    pub worker_id: Option<String>,
    /// Until when the running worker's lease holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// Set when a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was last claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

from_row!(row => Turn {
    turn_id, conversation_id, session_id, user_message_id, status: text_enum(row, "status")?, attempt, error,
    worker_id, lease_until, cancel_requested, created_at, started_at, finished_at,
});

const COLUMNS: &str = "turn_id, conversation_id, session_id, user_message_id, status, attempt, error, \
                       worker_id, lease_until, cancel_requested, created_at, started_at, finished_at";

fn interval_secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A turn just claimed, with what its worker needs to run it, read in the same
/// statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The turn, now `running`.
    pub turn: Turn,
    /// The first of [`crate::event::BLOCK_SIZE`] event numbers reserved for this run.
    pub first_event_seq: i64,
    /// The turn's conversation.
    pub conversation: crate::conversation::Conversation,
    /// The user message the turn answers.
    pub user_message: crate::message::Message,
    /// The conversation's active session, if it has one.
    pub active_session: Option<crate::session::Session>,
    /// Whether the claim also took the conversation's run lock ([`crate::run_lock`]) on
    /// the claiming connection. When true, that connection holds it: keep it (as
    /// [`crate::run_lock::RunLock::claimed`]) rather than return it to a pool.
    pub run_locked: bool,
    /// The worker that held the conversation's warm assistant process before this claim
    /// (`conversation.warm_worker_id`, see [`WarmClaim`]); `None` when none did.
    pub warm_holder: Option<String>,
}

/// How a claim treats warm assistant processes (`docs/architecture.md#warm-processes`).
#[derive(Debug, Clone, Default)]
pub struct WarmClaim {
    /// The assistants that keep warm processes on this worker: claiming a turn of a
    /// conversation with one of them makes this worker the conversation's holder.
    pub assistants: Vec<String>,
    /// How long other workers leave a turn of a conversation held by another worker to
    /// the holder, counted from the turn's creation; zero: no preference.
    pub window: Duration,
}

fn from_json<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> DbResult<Option<T>> {
    let value: Option<serde_json::Value> = row.try_get(column)?;
    value.map(|v| serde_json::from_value(v).map_err(|e| DbError::Other(crate::Cause::new(column, e)))).transpose()
}

/// Claims the oldest queued turn of a conversation that has no running turn and is not
/// paused, marks it `running` for `worker_id` with a lease of `lease` and the run
/// `run_id` (the marker its assistant's processes will carry), increments `attempt`,
/// reserves an event-number block, and reads the conversation, the user message and the
/// active session, and tries to take the conversation's run lock on this connection
/// ([`Claimed::run_locked`]). Returns `None` when there is nothing to claim. One
/// statement: one round trip, one commit.
///
/// Uses `for update skip locked`; the running-turn unique index
/// ([`crate::constraint::TURN_ONE_RUNNING`]) turns a lost race into `None` rather than a
/// double claim.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn claim(
    client: &impl GenericClient,
    worker_id: &str,
    lease: Duration,
    run_id: Uuid,
) -> DbResult<Option<Claimed>> {
    claim_warm(client, worker_id, lease, run_id, &WarmClaim::default()).await
}

/// [`claim`], for a worker whose assistants keep warm processes: a turn of a
/// conversation whose warm process another worker holds (`conversation.warm_worker_id`)
/// is left to that worker for [`WarmClaim::window`] after the turn was created, and
/// claiming a turn of one of [`WarmClaim::assistants`] makes this worker the holder.
/// [`Claimed::warm_holder`] tells who held it before.
///
/// # Errors
/// As [`claim`].
pub async fn claim_warm(
    client: &impl GenericClient,
    worker_id: &str,
    lease: Duration,
    run_id: Uuid,
    warm: &WarmClaim,
) -> DbResult<Option<Claimed>> {
    let stmt = client
        .prepare_cached(&format!(
            "with claimed as ( \
                 update turn set status = 'running', worker_id = $1, attempt = attempt + 1, run_id = $3, \
                     lease_until = now() + make_interval(secs => $2), started_at = now(), cancel_requested = false \
                 where turn_id = ( \
                     select t.turn_id from turn t join conversation c using (conversation_id) \
                     where t.status = 'queued' and not c.paused \
                       and (c.warm_worker_id is null or c.warm_worker_id = $1 or $4::float8 <= 0 \
                            or t.created_at <= now() - make_interval(secs => $4::float8)) \
                       and not exists (select 1 from turn r where r.conversation_id = t.conversation_id \
                                       and r.status = 'running') \
                       and not exists (select 1 from turn e where e.conversation_id = t.conversation_id \
                                       and e.status = 'queued' and e.user_message_id < t.user_message_id) \
                     order by t.user_message_id \
                     limit 1 \
                     for update of t skip locked) \
                 returning {COLUMNS}, nextval('event_block') * {} as first_event_seq), \
             held as ( \
                 update conversation h set warm_worker_id = $1 from claimed \
                 where h.conversation_id = claimed.conversation_id and h.assistant = any($5) \
                   and h.warm_worker_id is distinct from $1) \
             select claimed.*, \
                 (select c.warm_worker_id from conversation c where c.conversation_id = claimed.conversation_id) \
                     as warm_holder, \
                 (select to_jsonb(c) from conversation c where c.conversation_id = claimed.conversation_id) \
                     as conversation, \
                 (select to_jsonb(m) from message m where m.message_id = claimed.user_message_id) as user_message, \
                 (select to_jsonb(s) from session s where s.conversation_id = claimed.conversation_id and s.active) \
                     as active_session, \
                 pg_try_advisory_lock({key}) as run_locked \
             from claimed",
            crate::event::BLOCK_SIZE,
            key = crate::run_lock::KEY_OF_CONVERSATION.replace("conversation_id", "claimed.conversation_id"),
        ))
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&worker_id, &interval_secs(lease), &run_id, &warm.window.as_secs_f64(), &warm.assistants];
    match client.query_opt(&stmt, &params).await {
        Ok(Some(row)) => Ok(Some(Claimed {
            turn: Turn::try_from(&row)?,
            first_event_seq: row.try_get("first_event_seq")?,
            conversation: from_json(&row, "conversation")?.ok_or(DbError::not_found("conversation"))?,
            user_message: from_json(&row, "user_message")?.ok_or(DbError::not_found("message"))?,
            active_session: from_json(&row, "active_session")?,
            run_locked: row.try_get("run_locked")?,
            warm_holder: row.try_get("warm_holder")?,
        })),
        Ok(None) => Ok(None),
        Err(e) => {
            let err = DbError::from(e);
            if err.is_conflict_on(crate::constraint::TURN_ONE_RUNNING) { Ok(None) } else { Err(err) }
        }
    }
}

/// Whether the conversation has a queued or running turn, and which worker holds its
/// warm assistant process (`conversation.warm_worker_id`, see [`claim_warm`]): what
/// decides whether a process may be started ahead of its next message.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn warm_state(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<(bool, Option<String>)> {
    let row = client
        .query_one(
            "select exists (select 1 from turn where conversation_id = $1 and status in ('queued', 'running')), \
                    (select warm_worker_id from conversation where conversation_id = $1)",
            &[&conversation_id],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A running turn taken from its worker by [`requeue_expired`] or [`requeue_owned`]:
/// `status` is `queued` when it was requeued, `interrupted` when it was out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeuedTurn {
    /// The turn.
    pub turn_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// [`TurnStatus::Queued`] (it will run again) or [`TurnStatus::Interrupted`] (it
    /// ran `max_attempts` times).
    pub status: TurnStatus,
    /// How many times it was claimed.
    pub attempt: i32,
    /// The run of its last claim (see [`claim`]), whose processes may still be alive.
    pub run_id: Option<Uuid>,
}

impl TryFrom<&Row> for RequeuedTurn {
    type Error = DbError;

    /// From a row of `turn_id, conversation_id, status, attempt, run_id`.
    fn try_from(r: &Row) -> DbResult<Self> {
        Ok(Self {
            turn_id: r.try_get(0)?,
            conversation_id: r.try_get(1)?,
            status: text_enum(r, "status")?,
            attempt: r.try_get(3)?,
            run_id: r.try_get(4)?,
        })
    }
}

/// Requeues running turns whose lease expired (their worker died or lost the
/// database): requeued while `attempt < max_attempts`, else marked `interrupted`.
/// Their conversations are locked first (see [`crate::conversation::lock_shared`]), for
/// the message and events the caller then writes in the same transaction.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn requeue_expired(client: &impl GenericClient, max_attempts: i32) -> DbResult<Vec<RequeuedTurn>> {
    let rows = client
        .query(
            "with c as (select conversation_id from conversation where conversation_id in \
                            (select conversation_id from turn where status = 'running' and lease_until < now()) \
                        for key share) \
             update turn set \
                 status = case when attempt >= $1 then 'interrupted' else 'queued' end, \
                 error = case when attempt >= $1 then 'interrupted: its worker stopped before finishing' else error end, \
                 finished_at = case when attempt >= $1 then now() else null end, \
                 worker_id = null, lease_until = null \
             where turn_id in (select turn_id from turn where status = 'running' and lease_until < now() \
                               and conversation_id in (select conversation_id from c) \
                               for update skip locked) \
             returning turn_id, conversation_id, status, attempt, run_id",
            &[&max_attempts],
        )
        .await?;
    rows.iter().map(RequeuedTurn::try_from).collect()
}

/// What [`extend_lease`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease was extended.
    Held,
    /// The lease was extended and a cancel has been requested.
    CancelRequested,
    /// The turn is no longer running for this worker (the sweeper requeued it).
    Lost,
}

/// Extends a running turn's lease to `now() + lease`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn extend_lease(
    client: &impl GenericClient,
    turn_id: Uuid,
    worker_id: &str,
    lease: Duration,
) -> DbResult<LeaseState> {
    let stmt = client
        .prepare_cached(
            "update turn set lease_until = now() + make_interval(secs => $3) \
             where turn_id = $1 and worker_id = $2 and status = 'running' returning cancel_requested",
        )
        .await?;
    Ok(match client.query_opt(&stmt, &[&turn_id, &worker_id, &interval_secs(lease)]).await? {
        None => LeaseState::Lost,
        Some(row) if row.try_get::<_, bool>(0)? => LeaseState::CancelRequested,
        Some(_) => LeaseState::Held,
    })
}

/// Records the session a running turn uses.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn set_session(client: &impl GenericClient, turn_id: Uuid, session_id: Uuid) -> DbResult<()> {
    let stmt = client.prepare_cached("update turn set session_id = $2 where turn_id = $1").await?;
    client.execute(&stmt, &[&turn_id, &session_id]).await?;
    Ok(())
}

/// What [`complete`] stores when a turn succeeds.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    /// The turn, which must still be `running` for `worker_id`.
    pub turn_id: Uuid,
    /// The worker that claimed it.
    pub worker_id: &'a str,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The session it ran in.
    pub session_id: Uuid,
    /// The assistant session ID to store on the session, when it changed.
    pub assistant_session_id: Option<&'a str>,
    /// The reply.
    pub content: &'a str,
    /// The reply's metadata (usage, cost, tool calls).
    pub metadata: &'a serde_json::Value,
    /// Events not yet written, in order.
    pub events: &'a [crate::event::Event],
    /// The final event; `message_id` is added to its data.
    pub final_event: &'a crate::event::Event,
}

/// Completes a running turn in one statement (one round trip, one commit): locks its
/// conversation first (as [`crate::conversation::lock_shared`]), marks it `completed`
/// with its session, stores the assistant message, the session's assistant session ID
/// and a cleared `last_error`, the reply's usage added to the session's totals, the remaining events with the final one, and the
/// conversation's `last_activity_at`. Returns the assistant message id, or `None` —
/// with nothing written — when the turn was no longer running (the sweeper requeued it,
/// or its conversation was deleted).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn complete(client: &impl GenericClient, c: &Completion<'_>) -> DbResult<Option<i64>> {
    let stmt = client
        .prepare_cached(&format!(
            "with c as (select 1 from conversation where conversation_id = $2 for key share), \
             t as ( \
                 update turn set status = 'completed', error = null, finished_at = now(), lease_until = null, \
                     session_id = $3 \
                 where turn_id = $1 and status = 'running' and worker_id = $17 and exists (select 1 from c) \
                 returning turn_id), \
             m as ( \
                 insert into message (conversation_id, turn_id, role, content, metadata) \
                 select $2, t.turn_id, 'assistant', $5, $6 from t returning message_id), \
             s as ( \
                 update session set assistant_session_id = coalesce($4, assistant_session_id), last_error = null, \
                     {usage} \
                 where session_id = $3 and exists (select 1 from t) \
                   and (last_error is not null or ($4::text is not null and assistant_session_id is distinct from $4) \
                        or $6::jsonb ? 'usage' or $6::jsonb ? 'cost_usd')), \
             a as ( \
                 update conversation_activity set last_activity_at = now() \
                 where conversation_id = $2 and exists (select 1 from t)), \
             e as ( \
                 insert into event (conversation_id, seq, turn_id, kind, data, created_at) \
                 select u.* from unnest($7::uuid[], $8::bigint[], $9::uuid[], $10::text[], $11::jsonb[], \
                                        $12::timestamptz[]) u \
                 where exists (select 1 from t) \
                 union all \
                 select $2, $13, $1, $14, $15::jsonb || jsonb_build_object('message_id', m.message_id), $16 from m) \
             select message_id from m",
            usage = crate::session::usage_increments("$6::jsonb")
        ))
        .await?;
    let crate::event::Columns { conversation_ids, seqs, turn_ids, kinds, data, created } =
        &crate::event::Columns::of(c.events);
    let f = c.final_event;
    let row = client
        .query_opt(
            &stmt,
            &[
                &c.turn_id,
                &c.conversation_id,
                &c.session_id,
                &c.assistant_session_id,
                &c.content,
                c.metadata,
                conversation_ids,
                seqs,
                turn_ids,
                kinds,
                data,
                created,
                &f.seq,
                &f.kind.as_ref(),
                &f.data,
                &f.created_at,
                &c.worker_id,
            ],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(DbError::from)
}

/// Moves a running turn to a final status and refreshes its conversation's
/// `last_activity_at`. Returns false, changing nothing, when it was not running (for
/// example because the sweeper already requeued it).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn finish(
    client: &impl GenericClient,
    turn_id: Uuid,
    status: TurnStatus,
    error: Option<&str>,
) -> DbResult<bool> {
    let stmt = client
        .prepare_cached(
            "with t as ( \
                 update turn set status = $2, error = $3, finished_at = now(), lease_until = null \
                 where turn_id = $1 and status = 'running' returning conversation_id), \
             a as ( \
                 update conversation_activity set last_activity_at = now() \
                 where conversation_id = (select conversation_id from t)) \
             select count(*) from t",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&turn_id, &status.as_ref(), &error]).await?.try_get::<_, i64>(0)? == 1)
}

/// Puts a running turn back in the queue (a shutdown before it could finish).
/// Returns false when it was not running.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn requeue(client: &impl GenericClient, turn_id: Uuid) -> DbResult<bool> {
    back_to_queue(client, turn_id, false).await
}

/// Puts a running turn back in the queue as if it had not been claimed (`attempt` goes
/// back down): its worker never started it (another run of the conversation still held
/// the run lock). Returns false when it was not running.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn unclaim(client: &impl GenericClient, turn_id: Uuid) -> DbResult<bool> {
    back_to_queue(client, turn_id, true).await
}

/// [`requeue`], and with `unclaimed` [`unclaim`]: `attempt` goes back down too.
async fn back_to_queue(client: &impl GenericClient, turn_id: Uuid, unclaimed: bool) -> DbResult<bool> {
    let sql = if unclaimed {
        "update turn set status = 'queued', worker_id = null, lease_until = null, attempt = attempt - 1 \
         where turn_id = $1 and status = 'running'"
    } else {
        "update turn set status = 'queued', worker_id = null, lease_until = null \
         where turn_id = $1 and status = 'running'"
    };
    Ok(client.execute(sql, &[&turn_id]).await? == 1)
}

/// Fetches one turn.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn get(client: &impl GenericClient, turn_id: Uuid) -> DbResult<Turn> {
    let row = client
        .query_opt(&format!("select {COLUMNS} from turn where turn_id = $1"), &[&turn_id])
        .await?
        .ok_or(DbError::not_found("turn"))?;
    Turn::try_from(&row)
}

/// The conversation's running turn, if any.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn running(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Option<Turn>> {
    let row = client
        .query_opt(
            &format!("select {COLUMNS} from turn where conversation_id = $1 and status = 'running'"),
            &[&conversation_id],
        )
        .await?;
    row.as_ref().map(Turn::try_from).transpose()
}

/// The conversation's queued turns, oldest first.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn queued(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Vec<Turn>> {
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from turn where conversation_id = $1 and status = 'queued' order by user_message_id"
            ),
            &[&conversation_id],
        )
        .await?;
    rows.iter().map(Turn::try_from).collect()
}

/// How many turns are queued, across conversations (the queue depth metric). Counted
/// over the queued turns' partial index, so its cost grows with the queue, not the table.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn count_queued(client: &impl GenericClient) -> DbResult<i64> {
    let row = client.query_one("select count(*) from turn where status = 'queued'", &[]).await?;
    Ok(row.try_get(0)?)
}

/// The conversation's most recent turn that has finished (not queued or running).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn last_finished(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Option<Turn>> {
    let row = client
        .query_opt(
            &format!(
                "select {COLUMNS} from turn where conversation_id = $1 \
                 and status not in ('queued', 'running') order by finished_at desc nulls last, user_message_id desc limit 1"
            ),
            &[&conversation_id],
        )
        .await?;
    row.as_ref().map(Turn::try_from).transpose()
}

/// Where a page of [`list_by_status`] starts: just after this turn in the list's order
/// (the last row of the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKey {
    /// Its [`Turn::user_message_id`].
    pub user_message_id: i64,
    /// Its id (the tie-breaker).
    pub turn_id: Uuid,
}

impl ListKey {
    /// The key of a listed turn.
    #[must_use]
    pub fn of(t: &Turn) -> Self {
        Self { user_message_id: t.user_message_id, turn_id: t.turn_id }
    }
}

/// The statuses [`list_by_status`] lists, each served by an index: `queued`
/// (`turn_queued_idx`), `running` (`turn_one_running_per_conversation`, at most one per
/// conversation), `failed` and `interrupted` (`turn_failed_idx`).
pub const LISTED_STATUSES: [TurnStatus; 4] =
    [TurnStatus::Queued, TurnStatus::Running, TurnStatus::Failed, TurnStatus::Interrupted];

/// A page of the turns with `status` across every conversation, newest first (by the
/// user message they answer, then id): at most `limit` of them, starting just after
/// `after` (from the start when `None`). Keyset paging over an index, so any page costs
/// what the first one does.
///
/// # Errors
/// [`DbError::Other`] for a status not in [`LISTED_STATUSES`] (no index serves it);
/// [`DbError::Unavailable`] otherwise.
pub async fn list_by_status(
    client: &impl GenericClient,
    status: TurnStatus,
    after: Option<ListKey>,
    limit: i64,
) -> DbResult<Vec<Turn>> {
    if !LISTED_STATUSES.contains(&status) {
        return Err(DbError::Other(format!("turns are not listed by status {status}").into()));
    }
    // The status is a literal, which the planner matches to its partial index; and the
    // statement is not cached, so each call is planned with its own cursor and page size.
    let sql = format!(
        "select {COLUMNS} from turn where status = '{status}' and (user_message_id, turn_id) < ($1, $2) \
         order by user_message_id desc, turn_id desc limit $3"
    );
    let after = after.unwrap_or(ListKey { user_message_id: i64::MAX, turn_id: Uuid::max() });
    let rows = client.query(&sql, &[&after.user_message_id, &after.turn_id, &limit]).await?;
    rows.iter().map(Turn::try_from).collect()
}

/// Flags the running turn for cancellation; the worker sees it on its next lease
/// extension. Returns the turn when one was running.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn request_cancel(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Option<Turn>> {
    let row = client
        .query_opt(
            &format!(
                "update turn set cancel_requested = true where conversation_id = $1 and status = 'running' \
                 returning {COLUMNS}"
            ),
            &[&conversation_id],
        )
        .await?;
    row.as_ref().map(Turn::try_from).transpose()
}

/// Changes a turn's status from `from` to `to` (used by `/retry` and `/skip`).
/// Returns false when its status was not `from`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn transition(
    client: &impl GenericClient,
    turn_id: Uuid,
    from: TurnStatus,
    to: TurnStatus,
) -> DbResult<bool> {
    let n = client
        .execute(
            "update turn set status = $3, \
                 finished_at = case when $3 in ('queued', 'running') then null else coalesce(finished_at, now()) end, \
                 error = case when $3 = 'queued' then null else error end \
             where turn_id = $1 and status = $2",
            &[&turn_id, &from.as_ref(), &to.as_ref()],
        )
        .await?;
    Ok(n == 1)
}

/// A page of the turns that ran in a session, oldest first (by the user message they
/// answer, then id): at most `limit` of them, starting just after `after` (from the
/// first when `None`). Keyset paging over `turn_session_id_idx`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list_for_session(
    client: &impl GenericClient,
    session_id: Uuid,
    after: Option<ListKey>,
    limit: i64,
) -> DbResult<Vec<Turn>> {
    let after = after.unwrap_or(ListKey { user_message_id: i64::MIN, turn_id: Uuid::nil() });
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from turn where session_id = $1 and (user_message_id, turn_id) > ($2, $3) \
                 order by user_message_id, turn_id limit $4"
            ),
            &[&session_id, &after.user_message_id, &after.turn_id, &limit],
        )
        .await?;
    rows.iter().map(Turn::try_from).collect()
}

/// The runs (see [`claim`]) of the turns still marked `running` for `worker_id`: at
/// start-up, what this worker's previous incarnation may have left running.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn running_runs(client: &impl GenericClient, worker_id: &str) -> DbResult<Vec<Uuid>> {
    let rows = client
        .query(
            "select run_id from turn where status = 'running' and worker_id = $1 and run_id is not null",
            &[&worker_id],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0).map_err(DbError::from)).collect()
}

/// Requeues every turn still marked `running` for `worker_id`: used at start-up, when
/// this worker cannot be running anything (it restarted after a crash).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn requeue_owned(client: &impl GenericClient, worker_id: &str) -> DbResult<Vec<RequeuedTurn>> {
    let rows = client
        .query(
            "with c as (select conversation_id from conversation where conversation_id in \
                            (select conversation_id from turn where status = 'running' and worker_id = $1) \
                        for key share) \
             update turn set status = 'queued', worker_id = null, lease_until = null \
             where status = 'running' and worker_id = $1 and conversation_id in (select conversation_id from c) \
             returning turn_id, conversation_id, status, attempt, run_id",
            &[&worker_id],
        )
        .await?;
    rows.iter().map(RequeuedTurn::try_from).collect()
}
