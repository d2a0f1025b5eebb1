//! `/api/sessions`: the assistant sessions of conversations, with their chain.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use parley_db::session::{self, Session, StatusFilter, UsageTotals};
use parley_db::transcript::{self, Transcript};
use parley_db::turn::{self, Turn};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::access::Principal;
use crate::cursor::{PageRequest, SessionTurns};
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};
use crate::openapi::{BadRequest, Conflict, NotFound, Unauthorized, Unavailable};
use crate::routes::turns::TurnList;

/// Query of `GET /api/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `active`, `ended`, `failed` (`last_error` set) or `all` (default).
    #[param(value_type = Option<SessionStatus>, inline)]
    pub status: Option<String>,
    /// Only this conversation's sessions.
    #[param(value_type = Option<uuid::Uuid>)]
    pub conversation_id: Option<String>,
    /// The `next` of the previous page: this page continues just after it (omit it for
    /// the first page).
    pub after: Option<String>,
    /// Page size, 1–1000 (default 200; other values are clamped into range).
    pub limit: Option<i64>,
}

/// The `status` filter of `GET /api/sessions` (parsed as a [`StatusFilter`]; this
/// type describes the values in the OpenAPI document).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Only the active ones.
    Active,
    /// Only the ended ones.
    Ended,
    /// Only those whose last turn failed.
    Failed,
    /// All (the default).
    All,
}

/// A session as listed: its fields and what Parley keeps of its assistant's own session
/// file (`docs/architecture.md#transcripts`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedSession {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// The stored copy of the assistant's session file (Claude transcript, Codex
    /// rollout) with how often a replica restored it; null when none is kept.
    pub transcript: Option<Transcript>,
}

/// Body of `GET /api/sessions`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Oldest first.
    pub sessions: Vec<ListedSession>,
    /// The `after` of the next page; null on the last page. Opaque: pass it back as is.
    pub next: Option<String>,
}

/// Body of `GET /api/sessions/{id}`: the session's fields, the first page of its turns
/// and its usage totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDetail {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// The first turns that ran in it, oldest first (at most [`DETAIL_TURNS`]).
    pub turns: Vec<Turn>,
    /// When more turns follow: the `after` of `GET /api/sessions/{id}/turns` for the
    /// next page; null when `turns` holds them all.
    pub turns_next: Option<String>,
    /// Token and cost totals of its assistant messages.
    pub usage: UsageTotals,
    /// The stored copy of the assistant's session file, with its restores; null when
    /// none is kept (`docs/architecture.md#transcripts`).
    pub transcript: Option<Transcript>,
}

/// How many turns `GET /api/sessions/{id}` shows; the rest are paged by
/// `GET /api/sessions/{id}/turns`.
pub const DETAIL_TURNS: i64 = 100;

/// Query of `GET /api/sessions/{id}/turns`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TurnsQuery {
    /// The `next` of the previous page (or the session's `turns_next`): this page
    /// continues just after it (omit it for the first page).
    pub after: Option<String>,
    /// Page size, 1–200 (default 100; other values are clamped into range).
    pub limit: Option<i64>,
}

/// `GET /api/sessions?status=…&conversation_id=…&after=…&limit=…` →
/// `{"sessions": [...], "next": CURSOR|null}`, oldest first: the sessions of the caller's
/// conversations (an admin's: everyone's). Keyset paged over an index per status: every
/// page costs what the first does.
///
/// # Errors
/// 400 for an unknown status, a malformed conversation id or cursor.
#[utoipa::path(
    get,
    operation_id = "sessions_index",
    path = "/sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the sessions of the caller's conversations (an admin's: everyone's)", body = SessionList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let status = match q.status.as_deref() {
        None => StatusFilter::All,
        Some(s) => s
            .parse::<StatusFilter>()
            .map_err(|_| AppError::bad_request("invalid_query", "status must be active, ended, failed or all"))?,
    };
    let conversation_id = q.conversation_id.as_deref().map(|c| parse_id(c, "conversation")).transpose()?;
    let page = PageRequest::parse(q.after.as_deref(), q.limit, 200, 1000)?;
    let client = state.db().await?;
    let owner = principal.owner_filter();
    let rows = session::list(&client, status, conversation_id, owner, page.after, page.fetch()).await?;
    let (sessions, next) = page.finish(rows, |s| Some(session::ListKey::of(s)));
    let ids: Vec<uuid::Uuid> = sessions.iter().map(|s| s.session_id).collect();
    let mut kept: std::collections::HashMap<uuid::Uuid, Transcript> =
        transcript::of_sessions(&client, &ids).await?.into_iter().map(|t| (t.session_id, t)).collect();
    let sessions =
        sessions.into_iter().map(|s| ListedSession { transcript: kept.remove(&s.session_id), session: s }).collect();
    Ok(Json(SessionList { sessions, next }))
}

/// `GET /api/sessions/{id}` → the session with its first [`DETAIL_TURNS`] `turns`
/// (`turns_next` pages the rest), its `usage` totals and its kept `transcript`.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or one of another principal's
/// conversations).
#[utoipa::path(
    get,
    operation_id = "sessions_show",
    path = "/sessions/{id}",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session with its first turns and its usage totals", body = SessionDetail),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "session")?;
    let client = state.db().await?;
    let session = visible(&client, &principal, id).await?;
    let first = PageRequest::<SessionTurns> { after: None, limit: DETAIL_TURNS };
    let rows = turn::list_for_session(&client, id, None, first.fetch()).await?;
    let (turns, turns_next) = first.finish(rows, |t| Some(SessionTurns(turn::ListKey::of(t))));
    let usage = session::usage_totals(&client, id).await?;
    let transcript = transcript::get(&client, id).await?;
    Ok(Json(SessionDetail { session, turns, turns_next, usage, transcript }))
}

/// `GET /api/sessions/{id}/turns?after=…&limit=…` → `{"turns": [...], "next": CURSOR|null}`:
/// the turns that ran in the session, oldest first. Keyset paged: every page costs what
/// the first does.
///
/// # Errors
/// 400 for a malformed id or cursor, 404 for an unknown session (or one of another
/// principal's conversations).
#[utoipa::path(
    get,
    operation_id = "sessions_turns",
    path = "/sessions/{id}/turns",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id"), TurnsQuery),
    responses(
        (status = 200, description = "A page of the session's turns, oldest first", body = TurnList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn turns(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<TurnsQuery>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "session")?;
    let page = PageRequest::<SessionTurns>::parse(q.after.as_deref(), q.limit, DETAIL_TURNS, 200)?;
    let client = state.db().await?;
    visible(&client, &principal, id).await?;
    let rows = turn::list_for_session(&client, id, page.after.map(|k| k.0), page.fetch()).await?;
    let (turns, next) = page.finish(rows, |t| Some(SessionTurns(turn::ListKey::of(t))));
    Ok(Json(TurnList { turns, next }))
}

/// `DELETE /api/sessions/{id}` → `204`.
///
/// # Errors
/// 404 for an unknown session (or one of another principal's conversations); 409 for
/// the conversation's active session (reset first).
#[utoipa::path(
    delete,
    operation_id = "sessions_delete",
    path = "/sessions/{id}",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Deleted; its turns keep their messages"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "session")?;
    {
        let client = state.db().await?;
        visible(&client, &principal, id).await?;
    }
    state.orchestrator.delete_session(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The session, when it exists and belongs to a conversation the principal may see.
async fn visible(
    client: &impl parley_db::GenericClient,
    principal: &Principal,
    id: uuid::Uuid,
) -> Result<Session, AppError> {
    let s = session::get(client, id).await?;
    principal.conversation(client, s.conversation_id).await.map_err(|e| match e {
        AppError::NotFound(_) => AppError::NotFound("session"),
        other => other,
    })?;
    Ok(s)
}
