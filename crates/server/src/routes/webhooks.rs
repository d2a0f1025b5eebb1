//! `POST /webhooks/{telegram,slack,discord,github,generic}`: chat platform webhooks.
//!
//! Each request is handled in this order, and acknowledged without waiting for the
//! assistant (Slack and Discord allow 3 s):
//!
//! 1. the platform must be configured (its secret variable set), else **404**;
//! 2. the signature or secret is verified on the raw body bytes, else **401** and
//!    nothing is stored ([`parley_platforms::verify`]);
//! 3. handshakes are answered (Slack `url_verification`, Discord PING, GitHub `ping`),
//!    the bot's own messages and unhandled events are acknowledged and ignored;
//! 4. the conversation is upserted by `(platform, external_id)` (owner = the platform's
//!    name, the orchestrator's default assistant, the platform's delivery mode) and the
//!    message is ingested with the dedupe key `(platform, delivery id)` — a redelivery
//!    (Slack `X-Slack-Retry-Num`, GitHub redeliver, Telegram retry) is acknowledged and
//!    never runs a second turn;
//! 5. a chat command's reply is sent through the platform's reply sink as a notice (on
//!    Discord it is the interaction response itself).
//!
//! Errors are JSON `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parley_db::DbError;
use parley_db::conversation::{self, Conversation, NewConversation};
use parley_orchestrator::{Ingested, OrchestratorError, PostMessage, ReplyStatus, ReplyUpdate};
use parley_platforms::{Inbound, Platform, Platforms, VerifyError};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::AppState;
use crate::error::AppError;

/// The webhook routes; merged into the app's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/telegram", post(telegram))
        .route("/webhooks/slack", post(slack))
        .route("/webhooks/slack/events", post(slack))
        .route("/webhooks/discord", post(discord))
        .route("/webhooks/discord/interactions", post(discord))
        .route("/webhooks/github", post(github))
        .route("/webhooks/generic", post(generic))
}

/// A webhook error, rendered like [`AppError`].
#[derive(Debug)]
enum WebhookError {
    /// 404: the platform's secret is not configured.
    NotConfigured(Platform),
    /// 401: verification failed.
    Unauthorized(VerifyError),
    /// 400: the body or a header cannot be understood.
    BadRequest(String),
    /// Anything the web API would answer.
    App(AppError),
}

impl From<AppError> for WebhookError {
    fn from(err: AppError) -> Self {
        Self::App(err)
    }
}

impl From<DbError> for WebhookError {
    fn from(err: DbError) -> Self {
        Self::App(err.into())
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::NotConfigured(p) => {
                (StatusCode::NOT_FOUND, "not_found", format!("the {p} webhook is not configured on this server"))
            }
            Self::Unauthorized(e) => (StatusCode::UNAUTHORIZED, "unauthorized", format!("verification failed: {e}")),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "invalid_payload", message),
            Self::App(e) => return e.into_response(),
        };
        (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response()
    }
}

/// `POST /webhooks/telegram`: a Telegram Bot API update, checked by
/// `X-Telegram-Bot-Api-Secret-Token`. Answers `200 {"ok": true}`.
pub async fn telegram(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Platform::Telegram, headers, body).await
}

/// `POST /webhooks/slack` (also `/webhooks/slack/events`): a Slack Events API request,
/// checked by `X-Slack-Signature` within 5 minutes. Answers `url_verification` with
/// its challenge, events with `200 {"ok": true}`.
pub async fn slack(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Some(retry) = headers.get("x-slack-retry-num").and_then(|v| v.to_str().ok()) {
        debug!(retry, reason = ?headers.get("x-slack-retry-reason"), "Slack retried a delivery");
    }
    handle(state, Platform::Slack, headers, body).await
}

/// `POST /webhooks/discord` (also `/webhooks/discord/interactions`): a Discord
/// interaction, checked by `X-Signature-Ed25519`. PING → `{"type": 1}`; an
/// application command → `{"type": 5}` (deferred; the reply edits it), or
/// `{"type": 4, …}` with a chat command's reply.
pub async fn discord(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Platform::Discord, headers, body).await
}

/// `POST /webhooks/github`: a GitHub webhook delivery, checked by
/// `X-Hub-Signature-256`, deduplicated by `X-GitHub-Delivery`.
pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Platform::Github, headers, body).await
}

/// `POST /webhooks/generic`: Parley's generic signed webhook (see docs/platforms.md),
/// checked by `X-Parley-Signature`, deduplicated by `X-Delivery-Id`. A message →
/// `202 {"conversation_id", "turn_id", "message_id", "duplicate"}`; a command →
/// `200 {"conversation_id", "reply", …}`.
pub async fn generic(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Platform::Generic, headers, body).await
}

async fn handle(
    state: AppState,
    platform: Platform,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let response = match receive(&state, platform, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let elapsed = started.elapsed();
    if elapsed > parley_platforms::ACK_DEADLINE / 3 {
        warn!(%platform, elapsed_ms = elapsed.as_millis() as u64, "slow webhook acknowledgement");
    }
    response
}

/// The acknowledgement of a delivery that needs nothing more.
fn ack(platform: Platform, extra: Value) -> Response {
    match platform {
        Platform::Discord => {
            // Discord needs an interaction response: say why nothing happens, privately.
            let content = extra.get("ignored").and_then(Value::as_str).unwrap_or("Nothing to do.");
            axum::Json(json!({ "type": 4, "data": { "content": content, "flags": 64 } })).into_response()
        }
        _ => {
            let mut body = json!({ "ok": true });
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            axum::Json(body).into_response()
        }
    }
}

async fn receive(
    state: &AppState,
    platform: Platform,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, WebhookError> {
    let platforms =
        state.platforms.as_ref().filter(|p| p.is_configured(platform)).ok_or(WebhookError::NotConfigured(platform))?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookError::App(AppError::PayloadTooLarge("the request body is larger than the limit".into()))
        } else {
            WebhookError::BadRequest(rejection.body_text())
        }
    })?;
    if let Err(e) = platforms.verify(platform, headers, &body) {
        warn!(%platform, error = %e, "webhook verification failed");
        return Err(WebhookError::Unauthorized(e));
    }
    let message = match platforms.parse(platform, headers, &body) {
        Err(e) => return Err(WebhookError::BadRequest(e.to_string())),
        Ok(Inbound::Handshake(answer)) => {
            info!(%platform, "webhook handshake answered");
            return Ok(axum::Json(answer).into_response());
        }
        Ok(Inbound::Ignored(reason)) => {
            debug!(%platform, %reason, "webhook event ignored");
            return Ok(ack(platform, json!({ "ignored": reason })));
        }
        Ok(Inbound::Message(m)) => m,
    };
    let orchestrator = &state.orchestrator;
    let conversation = {
        let client = orchestrator.pool().get().await.map_err(DbError::from)?;
        conversation::upsert_by_external_id(
            &client,
            &NewConversation {
                platform: platform.as_str().to_owned(),
                external_id: message.external_id.clone(),
                owner: platform.as_str().to_owned(),
                title: message.title.clone(),
                assistant: orchestrator.config().default_assistant.clone(),
                cwd: None,
                delivery: platforms.delivery(platform),
                reply_target: message.reply_target.clone(),
            },
        )
        .await?
    };
    let posted = orchestrator
        .post_message(PostMessage {
            conversation_id: conversation.conversation_id,
            text: message.text,
            dedupe: Some((platform.as_str().to_owned(), message.dedupe_key.clone())),
            metadata: message.metadata,
            owner: None,
        })
        .await;
    let ingested = match posted {
        Ok(i) => i,
        Err(OrchestratorError::Conflict(_)) => {
            // A concurrent duplicate whose first delivery stored no answer.
            return Ok(ack(platform, json!({ "duplicate": true })));
        }
        Err(OrchestratorError::InvalidInput(reason)) if platform != Platform::Generic => {
            // Refusing a chat platform's delivery makes it retry; tell the user instead.
            notify(platforms, platform, conversation, format!("Parley could not accept this message: {reason}"));
            return Ok(ack(platform, json!({ "rejected": reason })));
        }
        Err(e) => return Err(AppError::from(e).into()),
    };
    debug!(%platform, conversation_id = %conversation.conversation_id, ?ingested, "webhook ingested");
    let conversation_id = conversation.conversation_id;
    Ok(match ingested {
        Ingested::Turn { turn_id, message_id, duplicate } => match platform {
            Platform::Discord => axum::Json(json!({ "type": 5 })).into_response(),
            Platform::Generic => (
                if duplicate { StatusCode::OK } else { StatusCode::ACCEPTED },
                axum::Json(json!({
                    "conversation_id": conversation_id,
                    "turn_id": turn_id,
                    "message_id": message_id,
                    "duplicate": duplicate,
                })),
            )
                .into_response(),
            _ => ack(platform, json!({ "duplicate": duplicate })),
        },
        Ingested::Command { reply, ok, duplicate, command, .. } => match platform {
            Platform::Discord => {
                let content: String = reply.chars().take(2000).collect();
                axum::Json(json!({ "type": 4, "data": { "content": content, "allowed_mentions": { "parse": [] } } }))
                    .into_response()
            }
            Platform::Generic => {
                if !duplicate {
                    notify(platforms, platform, conversation, reply.clone());
                }
                axum::Json(json!({
                    "conversation_id": conversation_id,
                    "command": command,
                    "ok": ok,
                    "reply": reply,
                    "duplicate": duplicate,
                }))
                .into_response()
            }
            _ => {
                if !duplicate {
                    notify(platforms, platform, conversation, reply);
                }
                ack(platform, json!({ "duplicate": duplicate }))
            }
        },
    })
}

/// Sends a notice (a command's reply) through the platform's sink, in the background.
fn notify(platforms: &Arc<Platforms>, platform: Platform, conversation: Conversation, text: String) {
    let Some(sink) = platforms.sink(platform) else {
        warn!(%platform, "no reply sink for this platform (bot token not set); the notice is not sent");
        return;
    };
    let update = ReplyUpdate { turn_id: None, text, tools: Vec::new(), status: ReplyStatus::Notice };
    tokio::spawn(async move {
        if let Err(e) = sink.deliver(&conversation, update).await {
            warn!(%platform, error = %e, "delivering a notice failed");
        }
    });
}
