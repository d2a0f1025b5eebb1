//! The `session` table: a conversation's chain of assistant sessions.
//!
//! A conversation has at most one active session (partial unique index
//! `session_one_active_per_conversation`). Each session may hold the
//! assistant session ID (a Claude session UUID, a Codex thread id, an OpenAI response
//! id) that the assistant reported; Parley clears it with compare-and-set when the
//! assistant can no longer resume it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DbError, DbResult};

vocabulary! {
    /// Why a session started (`session.transition_reason`) or ended (`session.ended_reason`),
    /// spelled in kebab case (`stale-session`) as the `session_transition_reason_check`
    /// constraint lists them; `str::parse` reads it, `as_ref`/`Display` write it.
    pub enum Transition ("kebab-case") {
        /// The conversation's first session.
        FirstMessage,
        /// The user asked for a new session (`/reset`).
        ResetRequested,
        /// The assistant could not resume the stored assistant session ID.
        StaleSession,
        /// The conversation moved to another assistant.
        AssistantChanged,
        /// The conversation moved to another working directory.
        CwdChanged,
        /// The conversation's model changed.
        ModelChanged,
        /// The conversation's appended system prompt changed.
        SystemPromptChanged,
    }
}

/// A session row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Primary key.
    pub session_id: Uuid,
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The assistant that runs it.
    pub assistant: String,
    /// The assistant's own session ID, once reported; `None` for a fresh session or
    /// after it was found stale.
    pub assistant_session_id: Option<String>,
    /// True for the conversation's current session.
    pub active: bool,
    /// The session this one replaced.
    pub parent_session_id: Option<Uuid>,
    /// Why it started (see [`Transition`]).
    pub transition_reason: String,
    /// Why it ended, once it has.
    pub ended_reason: Option<String>,
    /// The error of its last failed turn; cleared by the next successful one.
    pub last_error: Option<String>,
    /// A rebuilt prompt carries only messages with this id or later (0 = all; set by
    /// `/reset` so a reset conversation starts without its old history).
    pub history_from_message_id: i64,
    /// The conversation's settings it was started with; a session whose settings no
    /// longer match its conversation's is ended before the next turn.
    #[serde(default)]
    pub settings: SessionSettings,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// The settings of a conversation that shape an assistant session
/// (`session.settings`): a session runs with one model, one appended system prompt and in
/// one working directory. `None`: the server's default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSettings {
    /// The model (`conversation.model`).
    #[serde(default)]
    pub model: Option<String>,
    /// The appended system prompt (`conversation.system_prompt`).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The working directory as the conversation names it (`conversation.cwd`).
    #[serde(default)]
    pub cwd: Option<String>,
}

impl SessionSettings {
    /// The settings a session of `conversation` runs with.
    #[must_use]
    pub fn of(conversation: &crate::conversation::Conversation) -> Self {
        Self {
            model: conversation.model.clone(),
            system_prompt: conversation.system_prompt.clone(),
            cwd: conversation.cwd.clone(),
        }
    }
}

from_row!(row => Session {
    session_id, conversation_id, assistant, assistant_session_id, active, parent_session_id, transition_reason,
    ended_reason, last_error, history_from_message_id,
    settings: serde_json::from_value(row.try_get("settings")?)
        .map_err(|e| DbError::Other(crate::Cause::new("session.settings", e)))?,
    started_at, ended_at,
});

const COLUMNS: &str = "session_id, conversation_id, assistant, assistant_session_id, active, \
                       parent_session_id, transition_reason, ended_reason, last_error, history_from_message_id, \
                       settings, started_at, ended_at";

/// The conversation's active session, if any.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn active(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Option<Session>> {
    let stmt =
        client.prepare_cached(&format!("select {COLUMNS} from session where conversation_id = $1 and active")).await?;
    client.query_opt(&stmt, &[&conversation_id]).await?.as_ref().map(Session::try_from).transpose()
}

/// What a new session starts from.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The assistant that will run it.
    pub assistant: &'a str,
    /// The session it replaces.
    pub parent_session_id: Option<Uuid>,
    /// Why it starts.
    pub reason: Transition,
    /// See [`Session::history_from_message_id`].
    pub history_from_message_id: i64,
    /// See [`Session::settings`].
    pub settings: &'a SessionSettings,
}

/// Starts a new active session (owned, like its conversation, by the conversation's
/// owner). The conversation must have none active.
///
/// # Errors
/// [`DbError::Conflict`] on [`crate::constraint::SESSION_ONE_ACTIVE`] when it has one;
/// [`DbError::NotFound`] when the conversation does not exist.
pub async fn start(client: &impl GenericClient, new: &NewSession<'_>) -> DbResult<Session> {
    let stmt = client
        .prepare_cached(&format!(
            "insert into session (session_id, conversation_id, assistant, parent_session_id, transition_reason, \
             history_from_message_id, settings, owner) \
             select $1, $2, $3, $4, $5, $6, $7, c.owner from conversation c where c.conversation_id = $2 \
             returning {COLUMNS}"
        ))
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &Uuid::new_v4(),
                &new.conversation_id,
                &new.assistant,
                &new.parent_session_id,
                &new.reason.as_ref(),
                &new.history_from_message_id,
                &serde_json::to_value(new.settings).map_err(|e| DbError::Other(crate::Cause::of(e)))?,
            ],
        )
        .await?
        .ok_or(DbError::not_found("conversation"))?;
    Session::try_from(&row)
}

/// Ends an active session with a reason, keeping `last_error` when one is given.
/// Returns false when it was not active.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn end(
    client: &impl GenericClient,
    session_id: Uuid,
    reason: Transition,
    last_error: Option<&str>,
) -> DbResult<bool> {
    let n = client
        .execute(
            "update session set active = false, ended_at = now(), ended_reason = $2, \
             last_error = coalesce($3, last_error) where session_id = $1 and active",
            &[&session_id, &reason.as_ref(), &last_error],
        )
        .await?;
    Ok(n == 1)
}

/// The most recently ended session of a conversation: its `ended_reason` becomes the
/// next session's `transition_reason`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn last_ended(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Option<Session>> {
    let stmt = client
        .prepare_cached(&format!(
            "select {COLUMNS} from session where conversation_id = $1 and not active \
             order by ended_at desc limit 1"
        ))
        .await?;
    client.query_opt(&stmt, &[&conversation_id]).await?.as_ref().map(Session::try_from).transpose()
}

/// Stores the assistant session ID the assistant reported.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn set_assistant_session_id(client: &impl GenericClient, session_id: Uuid, id: &str) -> DbResult<()> {
    let stmt = client.prepare_cached("update session set assistant_session_id = $2 where session_id = $1").await?;
    client.execute(&stmt, &[&session_id, &id]).await?;
    Ok(())
}

/// Compare-and-set: writes NULL over the assistant session ID only when it still is
/// `expected`. Returns true when this call cleared it.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn clear_assistant_session_id(
    client: &impl GenericClient,
    session_id: Uuid,
    expected: &str,
) -> DbResult<bool> {
    let n = client
        .execute(
            "update session set assistant_session_id = null \
             where session_id = $1 and assistant_session_id = $2",
            &[&session_id, &expected],
        )
        .await?;
    Ok(n == 1)
}

/// Sets or clears `last_error`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn set_last_error(client: &impl GenericClient, session_id: Uuid, error: Option<&str>) -> DbResult<()> {
    let stmt = client
        .prepare_cached("update session set last_error = $2 where session_id = $1 and last_error is distinct from $2")
        .await?;
    client.execute(&stmt, &[&session_id, &error]).await?;
    Ok(())
}

/// Fetches one session.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn get(client: &impl GenericClient, session_id: Uuid) -> DbResult<Session> {
    let row = client
        .query_opt(&format!("select {COLUMNS} from session where session_id = $1"), &[&session_id])
        .await?
        .ok_or(DbError::not_found("session"))?;
    Session::try_from(&row)
}

/// Which sessions [`list`] returns: `all`, `active`, `ended` or `failed` (parsed with
/// `str::parse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::EnumString, strum::AsRefStr)]
#[strum(serialize_all = "lowercase")]
pub enum StatusFilter {
    /// All sessions.
    #[default]
    All,
    /// Only active ones.
    Active,
    /// Only ended ones.
    Ended,
    /// Only those whose last turn failed (`last_error` set), active or ended.
    Failed,
}

/// Where a page of [`list`] starts: just after this session in the list's order (the
/// last row of the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKey {
    /// Its [`Session::started_at`].
    pub started_at: DateTime<Utc>,
    /// Its id (the tie-breaker).
    pub session_id: Uuid,
}

impl ListKey {
    /// The key of a listed session.
    #[must_use]
    pub fn of(s: &Session) -> Self {
        Self { started_at: s.started_at, session_id: s.session_id }
    }
}

/// A page of sessions, oldest first (by `started_at`, then id): at most `limit` of them
/// with `status`, starting just after `after` (from the start when `None`), of one
/// conversation when `conversation_id` is given, of one owner's conversations when
/// `owner` is (`None`: everyone's).
///
/// Keyset paging over an index for each status, with and without an owner (see
/// migration V7), so any page costs what the first one does. Within one conversation
/// the status is checked on that conversation's sessions.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list(
    client: &impl GenericClient,
    status: StatusFilter,
    conversation_id: Option<Uuid>,
    owner: Option<&str>,
    after: Option<ListKey>,
    limit: i64,
) -> DbResult<Vec<Session>> {
    // Literals, not parameters, pick the index; and the statement is not cached, so each
    // call is planned with its own cursor and page size (a generic plan cannot know that
    // `$3` is small).
    let status_condition = match status {
        StatusFilter::All => "true",
        StatusFilter::Active => "active = true",
        StatusFilter::Ended => "active = false",
        StatusFilter::Failed => "last_error is not null",
    };
    let scope = match (conversation_id.is_some(), owner.is_some()) {
        (true, true) => "conversation_id = $4 and owner = $5",
        (true, false) => "conversation_id = $4 and $5::text is null",
        (false, true) => "$4::uuid is null and owner = $5",
        (false, false) => "$4::uuid is null and $5::text is null",
    };
    let sql = format!(
        "select {COLUMNS} from session \
         where {scope} and {status_condition} and (started_at, session_id) > ($1, $2) \
         order by started_at, session_id limit $3"
    );
    // The first page starts after a key that sorts before every row.
    let after = after.unwrap_or(ListKey { started_at: crate::page::before_any_time(), session_id: Uuid::nil() });
    let rows = client.query(&sql, &[&after.started_at, &after.session_id, &limit, &conversation_id, &owner]).await?;
    rows.iter().map(Session::try_from).collect()
}

/// Deletes an ended session. Its turns keep their messages; their `session_id` becomes
/// NULL, and children lose their parent link.
///
/// # Errors
/// [`DbError::NotFound`] when there is none; [`DbError::ActiveSession`] when it is the
/// conversation's active session (reset it first).
pub async fn delete(client: &impl GenericClient, session_id: Uuid) -> DbResult<()> {
    let row = client
        .query_opt("select active from session where session_id = $1 for update", &[&session_id])
        .await?
        .ok_or(DbError::not_found("session"))?;
    if row.try_get::<_, bool>(0)? {
        return Err(DbError::ActiveSession);
    }
    client.execute("delete from session where session_id = $1", &[&session_id]).await?;
    Ok(())
}

/// Token and cost totals of a session: the sums of its replies' usage
/// (`usage.input_tokens`, `usage.output_tokens`, `cost_usd` in the assistant message's
/// metadata, as the assistant reported them), kept on the session row as each reply is
/// stored ([`add_usage`], and [`crate::turn::complete`] in its own statement).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageTotals {
    /// Sum of input tokens.
    pub input_tokens: i64,
    /// Sum of output tokens.
    pub output_tokens: i64,
    /// Sum of reported cost, in US dollars.
    pub cost_usd: f64,
}

/// The SQL expressions that read a reply's usage from its metadata (a `jsonb` bound as
/// `$META`), shared by [`add_usage`] and [`crate::turn::complete`] so both add the same
/// thing: input tokens, output tokens, cost in US dollars; 0 where absent.
pub(crate) fn usage_increments(meta: &str) -> String {
    format!(
        "input_tokens = input_tokens + coalesce(({meta}->'usage'->>'input_tokens')::bigint, 0), \
         output_tokens = output_tokens + coalesce(({meta}->'usage'->>'output_tokens')::bigint, 0), \
         cost_usd = cost_usd + coalesce(({meta}->>'cost_usd')::float8, 0)"
    )
}

/// Adds a stored reply's usage (its metadata, see [`UsageTotals`]) to its session's
/// totals. A reply without usage changes nothing and writes nothing.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn add_usage(client: &impl GenericClient, session_id: Uuid, metadata: &serde_json::Value) -> DbResult<()> {
    if metadata.get("usage").is_none() && metadata.get("cost_usd").is_none() {
        return Ok(());
    }
    let stmt = client
        .prepare_cached(&format!("update session set {} where session_id = $1", usage_increments("$2::jsonb")))
        .await?;
    client.execute(&stmt, &[&session_id, metadata]).await?;
    Ok(())
}

/// A session's usage totals, read from its row (constant cost, however long it is).
///
/// # Errors
/// [`DbError::NotFound`] when the session does not exist; otherwise
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn usage_totals(client: &impl GenericClient, session_id: Uuid) -> DbResult<UsageTotals> {
    let stmt = client
        .prepare_cached("select input_tokens, output_tokens, cost_usd from session where session_id = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&session_id]).await?.ok_or(DbError::not_found("session"))?;
    Ok(UsageTotals { input_tokens: row.try_get(0)?, output_tokens: row.try_get(1)?, cost_usd: row.try_get(2)? })
}
