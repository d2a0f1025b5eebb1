//! `/api/sessions`: the assistant sessions of conversations, with their chain.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use parley_db::session::{self, StatusFilter};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};

/// Query of `GET /api/sessions`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// `active`, `ended`, `failed` (`last_error` set) or `all` (default).
    pub status: Option<String>,
    /// Only this conversation's sessions.
    pub conversation_id: Option<String>,
    /// Page size, 1–1000 (default 200).
    pub limit: Option<i64>,
}

/// `GET /api/sessions?status=…&conversation_id=…` → `{"sessions": [...]}`, oldest first:
/// the sessions of the caller's conversations (an admin's: everyone's).
///
/// # Errors
/// 400 for an unknown status or malformed conversation id.
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let status = match q.status.as_deref() {
        None => StatusFilter::All,
        Some(s) => StatusFilter::parse(s)
            .ok_or_else(|| AppError::bad_request("invalid_query", "status must be active, ended, failed or all"))?,
    };
    let conversation_id = q.conversation_id.as_deref().map(|c| parse_id(c, "conversation")).transpose()?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let sessions = session::list(&client, status, conversation_id, principal.owner_filter(), limit).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /api/sessions/{id}` → the session with its `turns` and `usage` totals.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or one of another principal's
/// conversations).
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "session")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    let s = visible(&client, &principal, id).await?;
    let turns = parley_db::turn::list_for_session(&client, id).await?;
    let usage = session::usage_totals(&client, id).await?;
    let mut value = serde_json::to_value(&s).map_err(|e| AppError::Internal(e.to_string()))?;
    value["turns"] = json!(turns);
    value["usage"] = json!(usage);
    Ok(Json(value))
}

/// `DELETE /api/sessions/{id}` → `204`.
///
/// # Errors
/// 404 for an unknown session (or one of another principal's conversations); 409 for
/// the conversation's active session (reset first).
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "session")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    visible(&client, &principal, id).await?;
    match session::delete(&client, id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.is_conflict_on("session_active") => Err(AppError::Conflict(
            "this is the conversation's active session; reset the conversation before deleting it".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The session, when it exists and belongs to a conversation the principal may see.
async fn visible(
    client: &impl parley_db::GenericClient,
    principal: &Principal,
    id: uuid::Uuid,
) -> Result<session::Session, AppError> {
    let s = session::get(client, id).await?;
    principal.conversation(client, s.conversation_id).await.map_err(|e| match e {
        AppError::NotFound(_) => AppError::NotFound("session"),
        other => other,
    })?;
    Ok(s)
}
