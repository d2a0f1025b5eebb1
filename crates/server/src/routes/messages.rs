//! `/api/conversations/{id}/messages`: list (paged) and post.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use parley_db::message;
use parley_orchestrator::{Ingested, PostMessage};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};

/// Longest accepted `Idempotency-Key`, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Query of `GET …/messages`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Return messages with `message_id` greater than this (default 0: from the start).
    pub after: Option<i64>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<i64>,
}

/// `GET /api/conversations/{id}/messages` → `{"messages": [...], "next_after": N|null}`,
/// oldest first. `next_after` is the `after` of the next page, null on the last page.
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown conversation (or another principal's).
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    principal.conversation(&client, id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let messages = message::list(&client, id, q.after.unwrap_or(0), limit).await?;
    let next_after = if messages.len() as i64 == limit { messages.last().map(|m| m.message_id) } else { None };
    Ok(Json(json!({ "messages": messages, "next_after": next_after })))
}

/// Body of `POST …/messages`.
#[derive(Debug, Deserialize)]
pub struct PostBody {
    /// The message: not empty, no NUL (U+0000), at most `--max-message-chars`
    /// characters (100,000 by default). A first
    /// word like `/status` runs a chat command.
    pub text: String,
}

/// `POST /api/conversations/{id}/messages` with `{"text": "…"}`.
///
/// - A message → `202 {"turn_id", "message_id"}`: stored, and a turn queued.
/// - A chat command → `200 {"message_id", "command", "ok", "reply"}`.
///
/// An `Idempotency-Key` header (≤ 255 bytes) makes a repeat return the first answer
/// (with `"duplicate": true`) instead of storing the message again.
///
/// # Errors
/// 400 `invalid_json`/`invalid_text`, 413 over the body limit, 404 unknown conversation
/// (or another principal's), 429 `rate_limited` (the principal posts too fast) or
/// `too_many_queued` (the conversation's queue is full; nothing stored).
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<PostBody>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    state.access.check_message_rate(&principal)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| AppError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII"))?;
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(AppError::bad_request("invalid_header", "Idempotency-Key must be 1 to 255 bytes"));
            }
            Some(("web".to_owned(), format!("{id}:{key}")))
        }
    };
    let ingested = state
        .orchestrator
        .post_message(PostMessage {
            conversation_id: id,
            text: body.text,
            dedupe: key,
            metadata: json!({}),
            owner: principal.owner_filter().map(str::to_owned),
        })
        .await?;
    let status = match ingested {
        Ingested::Turn { .. } => StatusCode::ACCEPTED,
        Ingested::Command { .. } => StatusCode::OK,
    };
    let mut value = serde_json::to_value(&ingested).map_err(|e| AppError::Internal(e.to_string()))?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("kind");
    }
    Ok((status, Json(value)))
}
