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
//! 4. the sender is checked against the platform's allow-list
//!    ([`parley_platforms::Platforms::admit`]) and the text against the ingest rules;
//!    a refused message stores nothing (no conversation either) and its sender is told
//!    at most once an hour (see [`parley_platforms::allow`]);
//! 5. the orchestrator stores it in one transaction
//!    ([`parley_orchestrator::Orchestrator::ingest_webhook`]): a repeated delivery id is
//!    answered with its first answer before anything is written — a redelivery (Slack
//!    `X-Slack-Retry-Num`, GitHub redeliver, Telegram retry) is acknowledged and never
//!    runs a second turn —, otherwise the conversation is upserted by
//!    `(platform, external_id)` (owner = the platform's name, the orchestrator's default
//!    assistant, the platform's reply mode) and the message ingested with the idempotency
//!    key `(platform, delivery id)`;
//! 6. a chat command's reply is sent through the platform's reply sink as a notice (on
//!    Discord it is the interaction response itself, from
//!    [`parley_platforms::inbound::discord`]).
//!
//! This route writes nothing itself: every write goes through the orchestrator.
//! Errors are JSON `{"error": {"code", "message"}}`.

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use parley_orchestrator::metrics::{self, WebhookResult};
use parley_orchestrator::{Ingested, OrchestratorError, WebhookIngested, validate_text};
use parley_platforms::inbound::discord;
use parley_platforms::{Admission, Inbound, InboundMessage, Platform, Platforms, VerifyError};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::AppState;
use crate::error::AppError;

/// The webhook routes; merged into the app's router. What each platform answers:
///
/// - `POST /webhooks/telegram`: a Telegram Bot API update, checked by
///   `X-Telegram-Bot-Api-Secret-Token`. Answers `200 {"ok": true}`.
/// - `POST /webhooks/slack` (also `/webhooks/slack/events`): a Slack Events API request,
///   checked by `X-Slack-Signature` within 5 minutes. Answers `url_verification` with its
///   challenge, events with `200 {"ok": true}`.
/// - `POST /webhooks/discord` (also `/webhooks/discord/interactions`): a Discord
///   interaction, checked by `X-Signature-Ed25519`. PING → `{"type": 1}`; an application
///   command → `{"type": 5}` (deferred; the reply edits it), or `{"type": 4, …}` with a
///   chat command's reply.
/// - `POST /webhooks/github`: a GitHub webhook delivery, checked by
///   `X-Hub-Signature-256`, deduplicated by `X-GitHub-Delivery`.
/// - `POST /webhooks/generic`: Parley's generic signed webhook (see docs/platforms.md),
///   checked by `X-Parley-Signature`, deduplicated by `X-Delivery-Id`. A message →
///   `202 {"conversation_id", "turn_id", "message_id", "duplicate"}`; a command →
///   `200 {"conversation_id", "reply", …}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/telegram", receiver(Platform::Telegram))
        .route("/webhooks/slack", receiver(Platform::Slack))
        .route("/webhooks/slack/events", receiver(Platform::Slack))
        .route("/webhooks/discord", receiver(Platform::Discord))
        .route("/webhooks/discord/interactions", receiver(Platform::Discord))
        .route("/webhooks/github", receiver(Platform::Github))
        .route("/webhooks/generic", receiver(Platform::Generic))
}

/// The `POST` handler of `platform`'s webhook: [`handle`] with the raw body.
fn receiver(platform: Platform) -> MethodRouter<AppState> {
    post(move |State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
        handle(state, platform, headers, body)
    })
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
    /// Not an error for the platform: acknowledged like a handled delivery, with these
    /// fields.
    Acknowledged(Platform, Value),
}

impl From<AppError> for WebhookError {
    fn from(err: AppError) -> Self {
        Self::App(err)
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
            Self::Acknowledged(platform, extra) => return ack(platform, extra),
        };
        (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response()
    }
}

/// Receives one webhook request and answers it, logging an acknowledgement slower than
/// a third of the platforms' deadline.
async fn handle(
    state: AppState,
    platform: Platform,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(retry) = headers.get("x-slack-retry-num").and_then(|v| v.to_str().ok()) {
        debug!(%platform, retry, reason = ?headers.get("x-slack-retry-reason"), "Slack retried a delivery");
    }
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
            axum::Json(discord::private_response(content)).into_response()
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
    let body = body.map_err(|rejection| match AppError::from_body_rejection(&rejection, "invalid_payload") {
        AppError::BadRequest { message, .. } => WebhookError::BadRequest(message),
        other => WebhookError::App(other),
    })?;
    if let Err(e) = platforms.verify(platform, headers, &body) {
        warn!(%platform, error = %e, "webhook verification failed");
        metrics::webhook_delivery(platform.as_str(), WebhookResult::BadSignature);
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
    if let Admission::Denied { reason, notice } = platforms.admit(&message) {
        metrics::webhook_delivery(platform.as_str(), WebhookResult::NotAllowed);
        return Ok(refuse(platforms, &message, &reason.to_string(), notice));
    }
    let orchestrator = &state.orchestrator;
    if let Err(OrchestratorError::InvalidInput(reason)) =
        validate_text(&message.text, orchestrator.config().max_message_chars)
    {
        // Checked before the conversation is created: a refused message stores nothing.
        if platform == Platform::Generic {
            return Err(WebhookError::App(AppError::bad_request("invalid_text", reason)));
        }
        // Refusing a chat platform's delivery makes it retry; tell the user instead.
        let text = format!("Parley could not accept this message: {reason}");
        return Ok(refuse(platforms, &message, &reason, Some(text)));
    }
    let ingested = orchestrator
        .ingest_webhook(message, platforms.reply_mode(platform))
        .await
        .map_err(|e| repeat_error(platform, e))?;
    debug!(%platform, conversation_id = ?ingested.conversation_id, ingested = ?ingested.ingested, "webhook ingested");
    let result = if ingested.ingested.is_duplicate() { WebhookResult::Duplicate } else { WebhookResult::Accepted };
    metrics::webhook_delivery(platform.as_str(), result);
    Ok(answer(platform, ingested))
}

/// The answer to an ingested delivery (a chat command's reply was sent through the
/// platform's reply sink by the orchestrator, except on Discord, where it is the
/// interaction response).
fn answer(platform: Platform, WebhookIngested { conversation_id, ingested }: WebhookIngested) -> Response {
    match ingested {
        Ingested::Turn { turn_id, message_id, duplicate } => match platform {
            Platform::Discord => axum::Json(discord::deferred_response()).into_response(),
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
            Platform::Discord => axum::Json(discord::message_response(&reply)).into_response(),
            Platform::Generic => axum::Json(json!({
                "conversation_id": conversation_id,
                "command": command,
                "ok": ok,
                "reply": reply,
                "duplicate": duplicate,
            }))
            .into_response(),
            _ => ack(platform, json!({ "duplicate": duplicate })),
        },
    }
}

/// The answer to a message refused before anything was stored (a sender not on the
/// allow-list, a text that cannot be stored), telling the sender `notice` when given:
/// on Discord as a private (ephemeral) interaction response, elsewhere through the
/// platform's API. Chat platforms get `200` so that they do not retry; a Discord
/// interaction refused without a notice gets `403` (Discord shows the sender that the
/// interaction failed).
fn refuse(platforms: &Platforms, message: &InboundMessage, reason: &str, notice: Option<String>) -> Response {
    let platform = message.platform;
    match (platform, notice) {
        (Platform::Discord, Some(text)) => axum::Json(discord::private_response(&text)).into_response(),
        (Platform::Discord, None) => {
            (StatusCode::FORBIDDEN, axum::Json(json!({ "error": { "code": "not_allowed", "message": reason } })))
                .into_response()
        }
        (_, notice) => {
            if let Some(text) = notice {
                platforms.notice(message, text);
            }
            ack(platform, json!({ "refused": reason }))
        }
    }
}

/// The answer to a failed ingest. A reused delivery id: the generic webhook's caller
/// chose it, so `422 idempotency_key_reused`; a chat platform redelivers with the same
/// content, so a mismatch is acknowledged (and logged) without running anything. A
/// concurrent duplicate whose first delivery has not stored its answer yet is
/// acknowledged as a duplicate.
fn repeat_error(platform: Platform, err: OrchestratorError) -> WebhookError {
    match err {
        OrchestratorError::Conflict(_) => {
            metrics::webhook_delivery(platform.as_str(), WebhookResult::Duplicate);
            WebhookError::Acknowledged(platform, json!({ "duplicate": true }))
        }
        OrchestratorError::IdempotencyKeyReused if platform != Platform::Generic => {
            warn!(%platform, "a delivery id was reused with different content; acknowledged, nothing run");
            metrics::webhook_delivery(platform.as_str(), WebhookResult::Duplicate);
            WebhookError::Acknowledged(platform, json!({ "duplicate": true }))
        }
        other => WebhookError::App(AppError::from(other)),
    }
}
