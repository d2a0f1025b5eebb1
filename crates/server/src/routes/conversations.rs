//! `/api/conversations`: create, list, show, delete, and the state actions
//! (`cancel`, `reset`, `pause`, `resume`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use parley_db::conversation::{self, Conversation, Delivery, NewConversation};
use parley_orchestrator::command::{Command, CommandReply};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};

/// Body of `POST /api/conversations`; every field is optional.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// A title; empty by default.
    #[serde(default)]
    pub title: Option<String>,
    /// Which assistant answers; the server's default when absent.
    #[serde(default)]
    pub assistant: Option<String>,
    /// The assistant's working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `stream` (default) or `batch`.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

/// `POST /api/conversations` → `201` with the conversation, owned by the caller.
///
/// # Errors
/// 400 for an unknown assistant or a title with NUL; 503 when the database is down.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, AppError> {
    let body = body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge("the request body is larger than the limit".into())
        }
        _ => AppError::bad_request("invalid_body", e.body_text()),
    })?;
    // The body is optional: no body means every default.
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request("invalid_json", format!("invalid JSON body: {e}")))?
    };
    let orch = &state.orchestrator;
    let assistant = body.assistant.unwrap_or_else(|| orch.config().default_assistant.clone());
    if !orch.assistant_names().contains(&assistant) {
        return Err(AppError::bad_request(
            "invalid_assistant",
            format!("unknown assistant {assistant:?}; configured: {}", orch.assistant_names().join(", ")),
        ));
    }
    let title = body.title.unwrap_or_default();
    if title.contains('\0') || body.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(AppError::bad_request("invalid_text", "title and cwd must not contain NUL characters"));
    }
    let client = orch.pool().get().await.map_err(parley_db::DbError::from)?;
    let created = conversation::create(
        &client,
        &NewConversation {
            platform: "web".into(),
            external_id: String::new(),
            owner: principal.name,
            title: title.chars().take(200).collect(),
            assistant,
            cwd: body.cwd,
            delivery: body.delivery.unwrap_or_default(),
            reply_target: json!({}),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Query of `GET /api/conversations`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// How many to skip.
    pub offset: Option<i64>,
}

/// `GET /api/conversations` → `{"conversations": [...]}`, most recently active first:
/// the caller's own (an admin's: everyone's).
///
/// # Errors
/// 503 when the database is down.
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let offset = q.offset.unwrap_or(0).max(0);
    let list: Vec<Conversation> = conversation::list(&client, principal.owner_filter(), limit, offset).await?;
    Ok(Json(json!({ "conversations": list })))
}

/// `GET /api/conversations/{id}`.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or another principal's).
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    Ok(Json(principal.conversation(&client, id).await?))
}

/// `DELETE /api/conversations/{id}` → `204`; a running turn is cancelled first.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or another principal's).
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    let orch = &state.orchestrator;
    let client = orch.pool().get().await.map_err(parley_db::DbError::from)?;
    principal.conversation(&client, id).await?;
    if let Some(running) = parley_db::turn::running(&client, id).await? {
        orch.cancel(running.turn_id);
    }
    conversation::delete(&client, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    state: &AppState,
    principal: &Principal,
    id: &str,
    command: Command,
) -> Result<Json<CommandReply>, AppError> {
    let id = parse_id(id, "conversation")?;
    {
        let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
        principal.conversation(&client, id).await?;
    }
    let reply = state.orchestrator.run_command(id, command).await?;
    if reply.ok { Ok(Json(reply)) } else { Err(AppError::Conflict(reply.text)) }
}

/// `POST /api/conversations/{id}/cancel`: stops the running turn.
///
/// # Errors
/// 409 when nothing runs; 404 for an unknown conversation (or another principal's).
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandReply>, AppError> {
    action(&state, &principal, &id, Command::Cancel).await
}

/// `POST /api/conversations/{id}/reset`: ends the session.
///
/// # Errors
/// 409 when there is no session yet; 404 for an unknown conversation (or another principal's).
pub async fn reset(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandReply>, AppError> {
    action(&state, &principal, &id, Command::Reset).await
}

/// `POST /api/conversations/{id}/pause`.
///
/// # Errors
/// 409 when already paused; 404 for an unknown conversation (or another principal's).
pub async fn pause(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandReply>, AppError> {
    action(&state, &principal, &id, Command::Pause).await
}

/// `POST /api/conversations/{id}/resume`.
///
/// # Errors
/// 409 when not paused; 404 for an unknown conversation (or another principal's).
pub async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandReply>, AppError> {
    action(&state, &principal, &id, Command::Resume).await
}
