//! `/api/conversations`: create, list, show, delete, and the state actions
//! (`cancel`, `reset`, `pause`, `resume`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use parley_db::conversation::{self, Conversation, ConversationSummary, NewConversation, ReplyMode};
use parley_orchestrator::command::{Command, CommandReply};
use parley_orchestrator::workspace::CwdError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::access::Principal;
use crate::cursor::PageRequest;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};
use crate::openapi::{BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized, Unavailable};

/// Body of `POST /api/conversations`; every field is optional.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// A title; empty by default.
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$")]
    pub title: Option<String>,
    /// Which assistant answers; the server's default when absent.
    #[serde(default)]
    pub assistant: Option<String>,
    /// The assistant's working directory: a relative path of plain names under the
    /// server's workspace root (no leading `/`, no `..`, no symbolic link out of the
    /// root); default: a directory named after the conversation's id.
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$", max_length = 1024)]
    pub cwd: Option<String>,
    /// How replies reach a chat platform: `stream` (default) or `batch`. `delivery`, its
    /// former name, is accepted as a deprecated alias.
    #[serde(default, alias = "delivery")]
    pub reply_mode: Option<ReplyMode>,
}

/// `POST /api/conversations` → `201` with the conversation, owned by the caller.
///
/// # Errors
/// 400 for an unknown assistant, a title with NUL, or a `cwd` that is not a relative
/// directory under the workspace root (`invalid_cwd`: nothing is stored); 503 when the
/// database is down.
#[utoipa::path(
    post,
    operation_id = "conversations_create",
    path = "/conversations",
    tag = "conversations",
    request_body(content = Option<CreateBody>, description = "Every field is optional; no body at all means every default"),
    responses(
        (status = 201, description = "Created, owned by the caller", body = Conversation),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, AppError> {
    let body = body.map_err(|e| AppError::from_body_rejection(&e, "invalid_body"))?;
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
    if let Some(cwd) = &body.cwd {
        let checked = match orch.workspace() {
            Some(workspace) => {
                let (workspace, cwd) = (workspace.clone(), cwd.clone());
                tokio::task::spawn_blocking(move || workspace.check_request(&cwd))
                    .await
                    .map_err(|e| AppError::Internal(e.to_string()))?
            }
            None => Err(CwdError::NoRoot),
        };
        checked.map_err(|e| AppError::bad_request("invalid_cwd", e.to_string()))?;
    }
    let created = orch
        .create_conversation(&NewConversation {
            platform: "web".into(),
            external_id: String::new(),
            owner: principal.name,
            title: title.chars().take(200).collect(),
            assistant,
            cwd: body.cwd,
            reply_mode: body.reply_mode.unwrap_or_default(),
            reply_target: json!({}),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Query of `GET /api/conversations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next` of the previous page: this page continues just after it (omit it for
    /// the first page).
    pub after: Option<String>,
    /// Page size, 1–200 (default 50; other values are clamped into range).
    pub limit: Option<i64>,
    /// Removed (a deep offset cost as much as every row before it): answered with
    /// `400 invalid_query`. Not in the document.
    #[param(ignore)]
    pub offset: Option<String>,
}

/// Body of `GET /api/conversations`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    /// Most recently active first, each with its turn state.
    #[schema(value_type = Vec<ListedConversation>)]
    pub conversations: Vec<Conversation>,
    /// The `after` of the next page; null on the last page. Opaque: pass it back as is.
    pub next: Option<String>,
}

/// A conversation as [`ConversationList`] and `GET /api/conversations/{id}` show it: the
/// conversation and its turn state (`last_activity_at`, `last_turn_status`, `running`,
/// `queued`, `resume_after_seq`) side by side. Only the document uses this type: the
/// handlers serialise [`Conversation`] with its `summary`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedConversation {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Its turn state.
    #[serde(flatten)]
    pub summary: ConversationSummary,
}

/// `GET /api/conversations?after=&limit=` → `{"conversations": [...], "next": CURSOR|null}`,
/// most recently active first: the caller's own (an admin's: everyone's). Keyset paged:
/// every page costs what the first does.
///
/// # Errors
/// 400 for a malformed query or cursor, or for the removed `offset`; 503 when the
/// database is down.
#[utoipa::path(
    get,
    operation_id = "conversations_index",
    path = "/conversations",
    tag = "conversations",
    description = "Most recently active first (`last_activity_at`: created, or a turn ended), a page at a time: \
                   follow `next` with `?after=`. The `offset` parameter was removed (a deep offset cost as much as \
                   every row before it) and is answered with 400 `invalid_query`.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's conversations (an admin's: everyone's)", body = ConversationList),
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
    if q.offset.is_some() {
        return Err(AppError::bad_request(
            "invalid_query",
            "`offset` is no longer supported: follow the `next` cursor of each page with `?after=`",
        ));
    }
    let page = PageRequest::parse(q.after.as_deref(), q.limit, 50, 200)?;
    let client = state.db().await?;
    let rows = conversation::list(&client, principal.owner_filter(), page.after, page.fetch()).await?;
    let (conversations, next) = page.finish(rows, conversation::ListKey::of);
    Ok(Json(ConversationList { conversations, next }))
}

/// `GET /api/conversations/{id}` → the conversation with its turn state, as a list shows
/// it.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or another principal's).
#[utoipa::path(
    get,
    operation_id = "conversations_show",
    path = "/conversations/{id}",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "The conversation with its turn state", body = ListedConversation),
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
    let id = parse_id(&id, "conversation")?;
    let client = state.db().await?;
    let mut conversation = principal.conversation(&client, id).await?;
    conversation.summary = Some(conversation::summary(&client, id).await?);
    Ok(Json(conversation))
}

/// `DELETE /api/conversations/{id}` → `204`; a running turn is cancelled first.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or another principal's).
#[utoipa::path(
    delete,
    operation_id = "conversations_delete",
    path = "/conversations/{id}",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 204, description = "Deleted with its messages, turns, sessions and events"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    {
        let client = state.db().await?;
        principal.conversation(&client, id).await?;
    }
    state.orchestrator.delete_conversation(id).await?;
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
        let client = state.db().await?;
        principal.conversation(&client, id).await?;
    }
    let reply = state.orchestrator.run_command(id, command).await?;
    if reply.ok { Ok(Json(reply)) } else { Err(AppError::Conflict(reply.text)) }
}

/// `POST /api/conversations/{id}/cancel`: stops the running turn.
///
/// # Errors
/// 409 when nothing runs; 404 for an unknown conversation (or another principal's).
#[utoipa::path(
    post,
    operation_id = "conversations_cancel",
    path = "/conversations/{id}/cancel",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "Cancelled: the running turn stops", body = CommandReply),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
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
#[utoipa::path(
    post,
    operation_id = "conversations_reset",
    path = "/conversations/{id}/reset",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "Reset: the session ended; the next message starts a new one", body = CommandReply),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
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
#[utoipa::path(
    post,
    operation_id = "conversations_pause",
    path = "/conversations/{id}/pause",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "Paused", body = CommandReply),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
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
#[utoipa::path(
    post,
    operation_id = "conversations_resume",
    path = "/conversations/{id}/resume",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "Resumed", body = CommandReply),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandReply>, AppError> {
    action(&state, &principal, &id, Command::Resume).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_body_takes_the_deprecated_delivery_field_as_its_reply_mode() {
        let body: CreateBody = serde_json::from_str(r#"{"delivery": "batch"}"#).expect("the deprecated name");
        assert_eq!(body.reply_mode, Some(ReplyMode::Batch));
        let body: CreateBody = serde_json::from_str(r#"{"reply_mode": "batch"}"#).expect("the name");
        assert_eq!(body.reply_mode, Some(ReplyMode::Batch));
        assert!(serde_json::from_str::<CreateBody>(r#"{"reply_mode": "often"}"#).is_err());
    }
}
