//! Slack: an Events API request body (api.slack.com/apis/events-api) to an [`Inbound`].

use serde_json::{Value, json};

use super::fields::{parse_json, required, required_str};
use super::{Inbound, InboundMessage, ParseError, storable, without_mention};
use crate::Platform;
use crate::allow::{Field, Origin};

/// Replaces Slack's three escaped characters (api.slack.com "Formatting text").
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The bot's user id: the configured one, else the bot authorization of the event.
fn bot_user(v: &Value, configured: Option<&str>) -> Option<String> {
    configured.map(str::to_owned).or_else(|| {
        v.get("authorizations")?
            .as_array()?
            .iter()
            .find(|a| a.get("is_bot").and_then(Value::as_bool) == Some(true))
            .and_then(|a| a.get("user_id")?.as_str().map(str::to_owned))
    })
}

/// Parses a Slack Events API body: `url_verification` is a handshake; `event_callback`
/// with an `app_mention` (any channel) or a `message` in a direct message
/// (`channel_type: im`) is a message. Bot messages (`bot_id`, any `subtype` such as
/// `bot_message` or `message_changed`) and messages from the bot user are ignored.
///
/// The conversation is `channel/thread_ts` (or `channel/ts` for a mention that starts a
/// thread); a direct message outside a thread is the whole DM channel. The reply target
/// is `{"channel", "thread_ts"}`.
///
/// # Errors
/// [`ParseError`] when the body is not an Events API payload.
pub fn parse(body: &[u8], bot_user_id: Option<&str>) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    match v.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = required_str(&v, "challenge")?;
            return Ok(Inbound::Handshake(json!({ "challenge": challenge })));
        }
        Some("event_callback") => {}
        Some(other) => return Ok(Inbound::Ignored(format!("Slack payload type {other}"))),
        None => return Err(ParseError::Invalid("missing field type".into())),
    }
    let event_id = required_str(&v, "event_id")?;
    let event = required(&v, "event")?;
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "message" && kind != "app_mention" {
        return Ok(Inbound::Ignored(format!("Slack event {kind}")));
    }
    let bot_user = bot_user(&v, bot_user_id);
    let user = event.get("user").and_then(Value::as_str);
    if event.get("bot_id").is_some_and(|b| !b.is_null())
        || event.get("subtype").is_some_and(|s| !s.is_null())
        || (user.is_some() && user == bot_user.as_deref())
    {
        return Ok(Inbound::Ignored("bot or edited message".into()));
    }
    let channel_type = event.get("channel_type").and_then(Value::as_str);
    if kind == "message" && channel_type != Some("im") {
        return Ok(Inbound::Ignored("channel message without a mention (answered through app_mention)".into()));
    }
    let Some(user) = user else { return Ok(Inbound::Ignored("message without a user".into())) };
    let raw = event.get("text").and_then(Value::as_str).unwrap_or_default();
    let mut text = without_mention(raw, bot_user.as_ref().map(|id| format!("<@{id}>")));
    if kind == "app_mention" && bot_user.is_none() {
        // Without a known bot id, drop a leading mention: it is the bot's.
        if let Some(rest) = text.strip_prefix("<@").and_then(|r| r.split_once('>')).map(|(_, r)| r.trim().to_owned()) {
            text = rest;
        }
    }
    let text = unescape(&text);
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let channel = required_str(&v, "event.channel")?;
    let ts = required_str(&v, "event.ts")?;
    let thread_ts = event.get("thread_ts").and_then(Value::as_str);
    let (external_id, reply_thread) = match (thread_ts, channel_type) {
        (Some(t), _) => (format!("{channel}/{t}"), Some(t)),
        (None, Some("im")) => (channel.to_owned(), None),
        (None, _) => (format!("{channel}/{ts}"), Some(ts)),
    };
    let mut ids = vec![(Field::SlackChannel, channel.to_owned()), (Field::SlackUser, user.to_owned())];
    let teams = [v.get("team_id"), event.get("team"), event.get("user_team"), event.get("source_team")];
    for team in teams.into_iter().flatten().filter_map(Value::as_str).filter(|t| !t.is_empty()) {
        if !ids.iter().any(|(f, v)| *f == Field::SlackTeam && v == team) {
            ids.push((Field::SlackTeam, team.to_owned()));
        }
    }
    storable(InboundMessage {
        origin: Origin { ids, association: None },
        platform: Platform::Slack,
        external_id,
        title: String::new(),
        sender: user.to_owned(),
        metadata: json!({ "platform": "slack", "sender": user, "channel": channel, "ts": ts, "team": v.get("team_id") }),
        text,
        idempotency_key: event_id.to_owned(),
        reply_target: json!({ "channel": channel, "thread_ts": reply_thread }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{json_fixture, request};
    use crate::inbound::tests::{message, names};

    #[test]
    fn slack_url_verification_echoes_the_challenge() {
        let (_, body) = request("slack", "url_verification");
        assert_eq!(
            parse(&body, None).unwrap(),
            Inbound::Handshake(json!({ "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" }))
        );
    }

    #[test]
    fn slack_direct_message_is_the_dm_conversation() {
        let (_, body) = request("slack", "message_im");
        let m = message(parse(&body, None).unwrap());
        assert_eq!(names(&m), ("D0DMCHAN12", "what changed in the last deploy?", "Ev0AB1CDEF99"));
        assert_eq!(m.sender, "U0USR12345");
        assert_eq!(m.reply_target, json!({ "channel": "D0DMCHAN12", "thread_ts": null }));
    }

    #[test]
    fn slack_mention_in_a_thread_strips_the_mention_and_keeps_the_thread() {
        let (_, body) = request("slack", "app_mention_thread_reply");
        let m = message(parse(&body, None).unwrap());
        assert_eq!(names(&m), ("C0CHAN1234/1767225500.000100", "and now the staging logs please", "Ev0AB1CDEF23"));
        assert_eq!(m.reply_target, json!({ "channel": "C0CHAN1234", "thread_ts": "1767225500.000100" }));
    }

    #[test]
    fn slack_top_level_mention_starts_a_thread_on_its_ts() {
        let v = json_fixture("slack/event_callback.app_mention.doc.json");
        let m = message(parse(v.to_string().as_bytes(), Some("U0LAN0Z89")).unwrap());
        assert_eq!(m.external_id, "C123ABC456/1515449522.000016");
        assert_eq!(m.text, "is it everything a river should be?");
        assert_eq!(m.reply_target["thread_ts"], "1515449522.000016");
    }

    #[test]
    fn slack_bot_echo_and_channel_messages_are_ignored() {
        let (_, body) = request("slack", "message_bot_echo");
        assert!(matches!(parse(&body, None).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&request("slack", "message_im").1).unwrap();
        v["event"]["channel_type"] = json!("channel");
        assert!(matches!(parse(v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&request("slack", "message_im").1).unwrap();
        v["event"]["user"] = json!("U0BOT12345");
        assert!(matches!(parse(v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
    }
}
