//! Discord: an interaction (discord.com/developers/docs/interactions/receiving-and-responding)
//! to an [`Inbound`], and the interaction responses the webhook route answers with.
//!
//! Discord shows the sender whatever the endpoint answers, so the answer is part of the
//! platform's protocol: a PONG to a PING, a deferred response while a turn runs (the
//! reply sink edits it later), a message for a chat command's reply, an ephemeral
//! (private) message for a refusal or an ignored interaction.

use serde_json::{Value, json};

use super::fields::{id_string, parse_json, required, required_i64, required_id, required_str, user_name};
use super::{Inbound, InboundMessage, ParseError, storable};
use crate::Platform;
use crate::allow::{Field, Origin};

/// The chat commands a Discord application command may be named after.
const COMMANDS: [&str; 9] = ["help", "status", "reset", "cancel", "retry", "sessions", "pause", "resume", "skip"];

/// Interaction type PING.
const PING: i64 = 1;
/// Interaction type APPLICATION_COMMAND.
const APPLICATION_COMMAND: i64 = 2;
/// Application command option type STRING.
const STRING_OPTION: i64 = 3;
/// Interaction callback type PONG: the answer to a PING.
const PONG: i64 = 1;
/// Interaction callback type CHANNEL_MESSAGE_WITH_SOURCE: a message answering the command.
const CHANNEL_MESSAGE_WITH_SOURCE: i64 = 4;
/// Interaction callback type DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…", edited later.
const DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: i64 = 5;
/// Message flag EPHEMERAL: only the sender sees the message.
const EPHEMERAL: u64 = 1 << 6;
/// The longest message content Discord accepts, in characters.
pub const MAX_CONTENT_CHARS: usize = 2000;

/// The interaction response that defers the answer (`{"type": 5}`): Discord shows that
/// the bot is thinking until the reply sink edits the original response (within the
/// interaction token's 15 minutes).
#[must_use]
pub fn deferred_response() -> Value {
    json!({ "type": DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE })
}

/// The interaction response that answers with `content` in the channel (`{"type": 4}`),
/// cut to [`MAX_CONTENT_CHARS`], mentioning nobody (`allowed_mentions.parse: []`).
#[must_use]
pub fn message_response(content: &str) -> Value {
    let content: String = content.chars().take(MAX_CONTENT_CHARS).collect();
    json!({ "type": CHANNEL_MESSAGE_WITH_SOURCE, "data": { "content": content, "allowed_mentions": { "parse": [] } } })
}

/// The interaction response that tells only the sender `content` (`{"type": 4}` with
/// the EPHEMERAL flag, 64), cut to [`MAX_CONTENT_CHARS`], mentioning nobody.
#[must_use]
pub fn private_response(content: &str) -> Value {
    let content: String = content.chars().take(MAX_CONTENT_CHARS).collect();
    json!({
        "type": CHANNEL_MESSAGE_WITH_SOURCE,
        "data": { "content": content, "flags": EPHEMERAL, "allowed_mentions": { "parse": [] } },
    })
}

/// The first string option named `wanted`.
fn string_option(options: &[Value], wanted: Option<&str>) -> Option<String> {
    options
        .iter()
        .find(|o| {
            o.get("type").and_then(Value::as_i64) == Some(STRING_OPTION)
                && wanted.is_none_or(|w| o.get("name").and_then(Value::as_str) == Some(w))
        })
        .and_then(|o| o.get("value")?.as_str().map(str::to_owned))
}

/// Parses a Discord interaction: PING (type 1) is a handshake answered `{"type":1}`; an
/// APPLICATION_COMMAND (type 2) is a message: a command named like a chat command
/// (`/status`) becomes that command, any other takes its first string option (`prompt`,
/// `text`, `message` preferred) as the text. The conversation is the channel; the reply
/// target `{"application_id", "interaction_id", "token", "channel_id", "received_at"}`
/// keeps the interaction token (valid 15 minutes) and when it was received (unix
/// seconds, `now_unix`).
///
/// # Errors
/// [`ParseError`] when the body is not an interaction.
pub fn parse(body: &[u8], now_unix: i64) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    let kind = required_i64(&v, "type")?;
    if kind == PING {
        return Ok(Inbound::Handshake(json!({ "type": PONG })));
    }
    if kind != APPLICATION_COMMAND {
        return Ok(Inbound::Ignored(format!("interaction type {kind} is not supported")));
    }
    let id = required_id(&v, "id")?;
    let token = required_str(&v, "token")?;
    let application_id = required_id(&v, "application_id")?;
    let channel_id = v
        .get("channel_id")
        .and_then(id_string)
        .or_else(|| v.pointer("/channel/id").and_then(id_string))
        .ok_or_else(|| ParseError::Invalid("missing field channel_id".into()))?;
    let user = v.pointer("/member/user").or_else(|| v.get("user")).cloned().unwrap_or(Value::Null);
    if user.get("bot").and_then(Value::as_bool) == Some(true) {
        return Ok(Inbound::Ignored("interaction from a bot".into()));
    }
    let name = required(&v, "data.name")?.as_str().unwrap_or_default().to_ascii_lowercase();
    let options = v.pointer("/data/options").and_then(Value::as_array).cloned().unwrap_or_default();
    let text = if COMMANDS.contains(&name.as_str()) {
        format!("/{name}")
    } else {
        ["prompt", "text", "message"]
            .into_iter()
            .find_map(|wanted| string_option(&options, Some(wanted)))
            .or_else(|| string_option(&options, None))
            .unwrap_or_else(|| format!("/{name}"))
    };
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let sender = user_name(&user);
    let title = v.pointer("/channel/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut ids = vec![(Field::DiscordChannel, channel_id.clone())];
    if let Some(guild) = v.get("guild_id").and_then(id_string) {
        ids.push((Field::DiscordGuild, guild));
    }
    if let Some(user) = user.get("id").and_then(id_string) {
        ids.push((Field::DiscordUser, user));
    }
    storable(InboundMessage {
        origin: Origin { ids, association: None },
        platform: Platform::Discord,
        external_id: channel_id.clone(),
        title,
        metadata: json!({ "platform": "discord", "sender": sender, "sender_id": user.get("id"), "interaction_id": id, "command": name }),
        sender,
        text,
        idempotency_key: id.clone(),
        reply_target: json!({
            "application_id": application_id,
            "interaction_id": id,
            "token": token,
            "channel_id": channel_id,
            "received_at": now_unix,
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{json_fixture, request};
    use crate::inbound::tests::{message, names};

    #[test]
    fn discord_ping_is_answered_with_type_1() {
        let (_, body) = request("discord", "ping");
        assert_eq!(parse(&body, 0).unwrap(), Inbound::Handshake(json!({ "type": 1 })));
    }

    #[test]
    fn discord_ask_command_takes_its_prompt_option() {
        let (_, body) = request("discord", "application_command_ask");
        let m = message(parse(&body, 1_767_225_620).unwrap());
        assert_eq!(names(&m), ("645027906669510667", "why did the nightly build fail?", "1455000000000000200"));
        assert_eq!(m.sender, "mason");
        assert_eq!(m.reply_target["application_id"], "1234567890123456789");
        assert_eq!(m.reply_target["token"], "aW50ZXJhY3Rpb246MTQ1NTAwMDAwMDAwMDAwMDIwMDpGSVhUVVJFX1RPS0VO");
        assert_eq!(m.reply_target["received_at"], 1_767_225_620);
    }

    #[test]
    fn discord_commands_named_like_chat_commands_become_them() {
        let mut v: Value = serde_json::from_slice(&request("discord", "application_command_ask").1).unwrap();
        v["data"] = json!({ "id": "1", "name": "status", "type": 1 });
        assert_eq!(message(parse(v.to_string().as_bytes(), 0).unwrap()).text, "/status");
        let doc = json_fixture("discord/interaction.application_command.doc.json");
        assert!(
            matches!(parse(doc.to_string().as_bytes(), 0), Err(ParseError::Invalid(_))),
            "doc sample has no application_id"
        );
    }

    #[test]
    fn discord_options_other_than_the_prompt_are_taken_in_order() {
        let mut v: Value = serde_json::from_slice(&request("discord", "application_command_ask").1).unwrap();
        v["data"]["options"] = json!([
            { "name": "count", "type": 4, "value": 3 },
            { "name": "topic", "type": 3, "value": "the first string" },
            { "name": "message", "type": 3, "value": "the named one" },
        ]);
        assert_eq!(message(parse(v.to_string().as_bytes(), 0).unwrap()).text, "the named one");
        v["data"]["options"] = json!([{ "name": "topic", "type": 3, "value": "the first string" }]);
        assert_eq!(message(parse(v.to_string().as_bytes(), 0).unwrap()).text, "the first string");
        v["data"]["options"] = json!([]);
        assert_eq!(message(parse(v.to_string().as_bytes(), 0).unwrap()).text, "/ask");
    }

    #[test]
    fn responses_are_discord_interaction_callbacks() {
        assert_eq!(deferred_response(), json!({ "type": 5 }));
        let long = "x".repeat(MAX_CONTENT_CHARS + 10);
        let answer = message_response(&long);
        assert_eq!(answer["type"], 4);
        assert_eq!(answer["data"]["content"].as_str().unwrap().chars().count(), MAX_CONTENT_CHARS);
        assert_eq!(answer["data"]["allowed_mentions"], json!({ "parse": [] }));
        assert!(answer["data"].get("flags").is_none(), "visible in the channel");
        let private = private_response("not allowed");
        assert_eq!((private["type"].clone(), private["data"]["flags"].clone()), (json!(4), json!(64)));
        assert_eq!(private["data"]["content"], "not allowed");
    }
}
