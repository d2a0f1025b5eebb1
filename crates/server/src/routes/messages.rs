//! `/api/conversations/{id}/messages`: list (paged) and post.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use parley_db::message::{self, Message};
use parley_orchestrator::command::Command;
use parley_orchestrator::{IdempotencyKey, Ingested, PostMessage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};
use crate::openapi::{
    BadRequest, NotFound, PayloadTooLarge, RequestTimeout, TooManyRequests, Unauthorized, Unavailable,
    UnprocessableEntity, UnsupportedMediaType,
};

/// Longest accepted `Idempotency-Key`, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Query of `GET …/messages`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Return messages with `message_id` greater than this (default 0: from the start).
    pub after: Option<i64>,
    /// Page size, 1–500 (default 100; other values are clamped into range).
    pub limit: Option<i64>,
}

/// Body of `GET …/messages`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// The `after` of the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// `GET /api/conversations/{id}/messages` → `{"messages": [...], "next_after": N|null}`,
/// oldest first. `next_after` is the `after` of the next page, null on the last page.
///
/// # Errors
/// 400 for a malformed id or query, 404 for an unknown conversation (or another
/// principal's).
#[utoipa::path(
    get,
    operation_id = "messages_index",
    path = "/conversations/{id}/messages",
    tag = "messages",
    params(("id" = Uuid, Path, description = "The conversation's id"), ListQuery),
    responses(
        (status = 200, description = "A page of messages, oldest first", body = MessagePage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    let client = state.db().await?;
    principal.conversation(&client, id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let messages = message::list(&client, id, q.after.unwrap_or(0), limit).await?;
    let next_after = if messages.len() as i64 == limit { messages.last().map(|m| m.message_id) } else { None };
    Ok(Json(MessagePage { messages, next_after }))
}

/// Body of `POST …/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PostBody {
    /// The message: not empty, no NUL (U+0000), at most `--max-message-chars`
    /// characters (100,000 by default). A first
    /// word like `/status` runs a chat command.
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", min_length = 1)]
    pub text: String,
}

/// `202` answer of `POST …/messages`: the message was stored and a turn queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageQueued {
    /// The queued turn (`GET /api/turns/{id}`).
    pub turn_id: Uuid,
    /// The stored user message.
    pub message_id: i64,
    /// True when this repeats an earlier request with the same `Idempotency-Key`:
    /// nothing new was stored.
    pub duplicate: bool,
}

/// `200` answer of `POST …/messages`: the message was a chat command, and it ran.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAnswered {
    /// The stored command message.
    pub message_id: i64,
    /// The command; null for an unknown `/word`.
    pub command: Option<Command>,
    /// False when the conversation's state did not allow it (`reply` says why).
    pub ok: bool,
    /// The reply shown to the user.
    pub reply: String,
    /// True when this repeats an earlier request with the same `Idempotency-Key`.
    pub duplicate: bool,
}

/// `POST /api/conversations/{id}/messages` with `{"text": "…"}`.
///
/// - A message → `202 {"turn_id", "message_id"}`: stored, and a turn queued.
/// - A chat command → `200 {"message_id", "command", "ok", "reply"}`.
///
/// An `Idempotency-Key` header (≤ 255 bytes) makes a repeat return the first answer
/// (with `"duplicate": true`) instead of storing the message again. The key is kept with
/// a hash of the text: the same key with another text is `422 idempotency_key_reused`
/// and nothing is stored.
///
/// # Errors
/// 400 `invalid_json`/`invalid_text`, 413 over the body limit, 404 unknown conversation
/// (or another principal's), 422 `idempotency_key_reused`, 429 `rate_limited` (the
/// principal posts too fast) or `too_many_queued` (the conversation's queue is full;
/// nothing stored).
#[utoipa::path(
    post,
    operation_id = "messages_create",
    path = "/conversations/{id}/messages",
    tag = "messages",
    params(
        ("id" = Uuid, Path, description = "The conversation's id"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII bytes; a repeat with the same text returns the first answer with \
                           `duplicate: true`, with another text `422 idempotency_key_reused`"),
    ),
    request_body(content = PostBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored; a turn is queued to answer it", body = MessageQueued),
        (status = 200, description = "A chat command: it ran, and this is its reply", body = CommandAnswered),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 408, response = RequestTimeout),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
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
            Some(IdempotencyKey::new("web", format!("{id}:{key}"), &[&body.text]))
        }
    };
    let ingested = state
        .orchestrator
        .post_message(PostMessage {
            conversation_id: id,
            text: body.text,
            idempotency_key: key,
            metadata: json!({}),
            owner: principal.owner_filter().map(str::to_owned),
        })
        .await?;
    Ok(match ingested {
        Ingested::Turn { turn_id, message_id, duplicate } => {
            (StatusCode::ACCEPTED, Json(MessageQueued { turn_id, message_id, duplicate })).into_response()
        }
        Ingested::Command { message_id, command, ok, reply, duplicate } => {
            (StatusCode::OK, Json(CommandAnswered { message_id, command, ok, reply, duplicate })).into_response()
        }
    })
}
