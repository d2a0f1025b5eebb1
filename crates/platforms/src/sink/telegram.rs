//! Telegram Bot API replies (core.telegram.org/bots/api): `sendChatAction` (typing),
//! `sendMessage` replying to the user's message, `editMessageText` while streaming.
//! "message is not modified" is success; a `parse_mode` entity error is sent again as
//! plain text; 429 `parameters.retry_after` is honoured by [`crate::http`].

use serde_json::{Value, json};

use super::{MessageApi, SinkError};
use crate::config::{Secret, TelegramConfig};
use crate::http::{Answer, Http};
use crate::split::Unit;

/// Telegram's message length limit (`sendMessage` `text`: 1–4096 characters after
/// entity parsing, counted in UTF-16 code units).
pub const TELEGRAM_LIMIT: usize = 4096;

/// The Bot API client of the Telegram sink.
#[derive(Debug, Clone)]
pub struct TelegramApi {
    http: Http,
    api_base: String,
    token: Secret,
    parse_mode: Option<String>,
}

/// Where a Telegram reply goes.
#[derive(Debug, Clone)]
pub struct TelegramTarget {
    chat_id: i64,
    reply_to: Option<i64>,
    thread: Option<i64>,
}

impl TelegramApi {
    /// A client for `config`; `None` without a bot token (nothing can be sent).
    #[must_use]
    pub(crate) fn new(http: Http, config: &TelegramConfig) -> Option<Self> {
        Some(Self {
            http,
            api_base: config.api_base.clone(),
            token: config.bot_token.clone()?,
            parse_mode: config.parse_mode.clone(),
        })
    }

    async fn call(&self, what: &'static str, method: &str, body: &Value) -> Result<Answer, SinkError> {
        let url = format!("{}/bot{}/{method}", self.api_base, self.token.expose());
        self.http.send(what, |c| c.post(&url).json(body)).await
    }

    fn ok(answer: &Answer) -> bool {
        answer.status.is_success() && answer.body.get("ok").and_then(Value::as_bool) == Some(true)
    }

    fn is_parse_error(answer: &Answer) -> bool {
        answer.status.as_u16() == 400 && answer.detail().contains("can't parse entities")
    }

    /// Calls `method` with `parse_mode` when configured, and again without it when
    /// Telegram cannot parse the entities.
    async fn call_formatted(&self, what: &'static str, method: &str, mut body: Value) -> Result<Answer, SinkError> {
        if let Some(mode) = &self.parse_mode {
            body["parse_mode"] = json!(mode);
            let answer = self.call(what, method, &body).await?;
            if !Self::is_parse_error(&answer) {
                return Ok(answer);
            }
            tracing::info!(call = what, "Telegram could not parse the formatting; sending plain text");
            if let Some(obj) = body.as_object_mut() {
                obj.remove("parse_mode");
            }
        }
        self.call(what, method, &body).await
    }
}

impl MessageApi for TelegramApi {
    type Target = TelegramTarget;

    const NAME: &'static str = "telegram";
    const LIMIT: (usize, Unit) = (TELEGRAM_LIMIT, Unit::Utf16);

    fn target(&self, rt: &Value) -> Result<TelegramTarget, SinkError> {
        let chat_id = super::required(rt, "chat_id", Value::as_i64, "Telegram")?;
        Ok(TelegramTarget {
            chat_id,
            reply_to: rt.get("message_id").and_then(Value::as_i64),
            thread: rt.get("message_thread_id").and_then(Value::as_i64),
        })
    }

    async fn typing(&self, target: &TelegramTarget) -> Result<(), SinkError> {
        let mut body = json!({ "chat_id": target.chat_id, "action": "typing" });
        if let Some(t) = target.thread {
            body["message_thread_id"] = json!(t);
        }
        let answer = self.call("telegram sendChatAction", "sendChatAction", &body).await?;
        if Self::ok(&answer) { Ok(()) } else { Err(answer.error("telegram sendChatAction")) }
    }

    async fn post(&self, target: &TelegramTarget, index: usize, text: &str) -> Result<String, SinkError> {
        const WHAT: &str = "telegram sendMessage";
        let mut body =
            json!({ "chat_id": target.chat_id, "text": text, "link_preview_options": { "is_disabled": true } });
        if let (Some(id), 0) = (target.reply_to, index) {
            body["reply_parameters"] = json!({ "message_id": id, "allow_sending_without_reply": true });
        }
        if let Some(t) = target.thread {
            body["message_thread_id"] = json!(t);
        }
        let answer = self.call_formatted(WHAT, "sendMessage", body).await?;
        if !Self::ok(&answer) {
            return Err(answer.error(WHAT));
        }
        let id = answer.body.pointer("/result/message_id").and_then(Value::as_i64);
        id.map(|id| id.to_string()).ok_or_else(|| answer.lacks(WHAT, "result.message_id"))
    }

    async fn edit(&self, target: &TelegramTarget, id: &str, text: &str) -> Result<(), SinkError> {
        const WHAT: &str = "telegram editMessageText";
        let message_id: i64 = id.parse().map_err(|_| SinkError::Target(format!("not a Telegram message id: {id}")))?;
        let body = json!({
            "chat_id": target.chat_id,
            "message_id": message_id,
            "text": text,
            "link_preview_options": { "is_disabled": true },
        });
        let answer = self.call_formatted(WHAT, "editMessageText", body).await?;
        if Self::ok(&answer) || answer.detail().contains("message is not modified") {
            Ok(())
        } else {
            Err(answer.error(WHAT))
        }
    }
}
