//! Telegram: a Bot API `Update` (core.telegram.org/bots/api#update) to an [`Inbound`].

use serde_json::{Value, json};

use super::fields::{id_string, parse_json, required, required_i64, user_name};
use super::{Inbound, InboundMessage, ParseError, storable, without_mention};
use crate::Platform;
use crate::allow::{Field, Origin};

/// Parses a Telegram Bot API `Update`: `message` updates with text or a caption.
/// `edited_message`, channel posts and other updates are ignored, as are messages from
/// bots (`from.is_bot`) and commands addressed to another bot (`/cmd@other_bot`).
///
/// The conversation is the chat, or `chat_id/message_thread_id` in a thread; the reply
/// target is `{"chat_id", "message_id", "message_thread_id"?}` (the thread only in a
/// forum topic). `bot_username` (without `@`) is stripped from the text.
///
/// # Errors
/// [`ParseError`] when the body is not an update.
pub fn parse(body: &[u8], bot_username: Option<&str>) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    let update_id = required_i64(&v, "update_id")?;
    let Some(message) = v.get("message").filter(|m| m.is_object()) else {
        return Ok(Inbound::Ignored("not a new message".into()));
    };
    if message.pointer("/from/is_bot").and_then(Value::as_bool) == Some(true) {
        return Ok(Inbound::Ignored("message from a bot".into()));
    }
    let Some(raw) = message.get("text").or_else(|| message.get("caption")).and_then(Value::as_str) else {
        return Ok(Inbound::Ignored("message without text".into()));
    };
    let first = raw.split_whitespace().next().filter(|w| w.starts_with('/'));
    if let (Some((_, to)), Some(me)) = (first.and_then(|w| w.split_once('@')), bot_username)
        && !to.eq_ignore_ascii_case(me)
    {
        return Ok(Inbound::Ignored("command for another bot".into()));
    }
    let text = without_mention(raw, bot_username.map(|me| format!("@{me}")));
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let chat_id = required_i64(message, "chat.id")?;
    let message_id = required_i64(message, "message_id")?;
    let thread = message.get("message_thread_id").and_then(Value::as_i64);
    let topic = message.get("is_topic_message").and_then(Value::as_bool) == Some(true);
    let external_id = match thread {
        Some(t) => format!("{chat_id}/{t}"),
        None => chat_id.to_string(),
    };
    let from = message.get("from").cloned().unwrap_or(Value::Null);
    let sender = user_name(&from);
    let chat = required(message, "chat")?;
    let title = chat
        .get("title")
        .or_else(|| chat.get("username"))
        .or_else(|| chat.get("first_name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut reply_target = json!({ "chat_id": chat_id, "message_id": message_id });
    if let (Some(t), true) = (thread, topic) {
        reply_target["message_thread_id"] = json!(t);
    }
    let mut ids = vec![(Field::TelegramChat, chat_id.to_string())];
    if let Some(user) = from.get("id").and_then(id_string) {
        ids.push((Field::TelegramUser, user));
    }
    storable(InboundMessage {
        origin: Origin { ids, association: None },
        platform: Platform::Telegram,
        external_id,
        title,
        metadata: json!({ "platform": "telegram", "sender": sender, "sender_id": from.get("id"), "chat_id": chat_id, "message_id": message_id }),
        sender,
        text,
        idempotency_key: update_id.to_string(),
        reply_target,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::request;
    use crate::inbound::tests::{message, names};

    #[test]
    fn telegram_private_text_becomes_a_message_on_the_chat() {
        let (_, body) = request("telegram", "update_private_text");
        let m = message(parse(&body, Some("fixture_bot")).unwrap());
        assert_eq!(names(&m), ("218485655", "hello there", "892252934"));
        assert_eq!(m.sender, "WaffleLapkin");
        assert_eq!(m.reply_target, json!({ "chat_id": 218_485_655, "message_id": 6557 }));
    }

    #[test]
    fn telegram_supergroup_thread_is_its_own_conversation() {
        let (_, body) = request("telegram", "update_supergroup_command_reply");
        let m = message(parse(&body, None).unwrap());
        assert_eq!(names(&m), ("-1001293752024/134545", "/report", "439432600"));
        // Not a forum topic: replies do not name the thread.
        assert_eq!(m.reply_target, json!({ "chat_id": -1_001_293_752_024_i64, "message_id": 134_546 }));
    }

    #[test]
    fn telegram_strips_the_bot_mention_and_ignores_bots_and_other_bots_commands() {
        let update = |text: &str, is_bot: bool| {
            json!({"update_id": 1, "message": {"message_id": 2, "from": {"id": 3, "is_bot": is_bot}, "chat": {"id": 4, "type": "group"}, "text": text}})
                .to_string()
        };
        let m = message(parse(update("@Parley_Bot explain this", false).as_bytes(), Some("parley_bot")).unwrap());
        assert_eq!(m.text, "explain this");
        let m = message(parse(update("/status@parley_bot", false).as_bytes(), Some("parley_bot")).unwrap());
        assert_eq!(m.text, "/status");
        assert!(matches!(
            parse(update("/status@other_bot", false).as_bytes(), Some("parley_bot")).unwrap(),
            Inbound::Ignored(_)
        ));
        assert!(matches!(parse(update("hi", true).as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        assert!(matches!(parse(br#"{"update_id":5,"edited_message":{}}"#, None).unwrap(), Inbound::Ignored(_)));
        assert!(matches!(parse(b"not json", None), Err(ParseError::Json(_))));
        assert!(matches!(parse(br#"{"message":{}}"#, None), Err(ParseError::Invalid(_))));
    }
}
