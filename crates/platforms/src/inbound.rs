//! Parsing a verified webhook body into Parley's common [`Inbound`] shape: a message
//! (conversation external id, sender, text with the bot mention stripped, dedupe key,
//! reply target), a handshake to answer, or an event to ignore (the bot's own messages,
//! events Parley does not handle).
//!
//! Pure functions over the body bytes and header values; they run only after
//! [`crate::verify`] accepted the request. Any body — malformed, truncated, huge, not
//! UTF-8 — gives a [`ParseError`] or an [`Inbound`], never a panic, and a returned
//! [`InboundMessage`] is storable: no NUL (U+0000) outside its text (see `storable`).

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::Platform;
use crate::allow::{Association, Field, Origin};

/// A chat message from a platform, ready for ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// Where it came from.
    pub platform: Platform,
    /// The conversation's platform identifier (`conversation.external_id`): Telegram
    /// `chat_id[/message_thread_id]`, Slack `channel[/thread_ts]`, Discord `channel_id`,
    /// GitHub `owner/repo#number`, generic: the caller's `conversation_id`.
    pub external_id: String,
    /// A human title for a new conversation (chat title, issue title); may be empty.
    pub title: String,
    /// Who sent it (platform user name or id).
    pub sender: String,
    /// The text, with the bot's mention stripped.
    pub text: String,
    /// The delivery's dedupe key: Telegram `update_id`, Slack `event_id`, Discord
    /// interaction `id`, `X-GitHub-Delivery`, generic `X-Delivery-Id`.
    pub dedupe_key: String,
    /// What the reply sink needs to answer (stored as `conversation.reply_target`).
    pub reply_target: Value,
    /// Stored on the user message (`message.metadata`).
    pub metadata: Value,
    /// Who sent it and where, as the platform's allow-list checks it (empty for the
    /// generic webhook).
    pub origin: Origin,
}

/// What a verified webhook request is.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A message to ingest.
    Message(InboundMessage),
    /// A handshake: answer 200 with this JSON and do nothing else (Slack
    /// `url_verification`, Discord PING, GitHub `ping`).
    Handshake(Value),
    /// Nothing to do (the bot's own message, an unhandled event); acknowledged with 200.
    Ignored(String),
}

/// A request body (or header) that cannot be understood; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    /// A required field or header is missing or has the wrong type.
    #[error("{0}")]
    Invalid(String),
}

fn parse_json(body: &[u8]) -> Result<Value, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// A JSON id that platforms send as a number or a string.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn required<'a>(v: &'a Value, path: &str) -> Result<&'a Value, ParseError> {
    let found = path.split('.').try_fold(v, |acc, key| acc.get(key));
    found.filter(|x| !x.is_null()).ok_or_else(|| ParseError::Invalid(format!("missing field {path}")))
}

/// Removes every case-insensitive occurrence of `mention` (e.g. `@parley_bot`) and
/// tidies the spaces it leaves.
fn strip_mention(text: &str, mention: &str) -> String {
    if mention.is_empty() {
        return text.trim().to_owned();
    }
    // ASCII case folding keeps every byte offset, so positions found in `haystack` are
    // char boundaries of `text` (Unicode lowercasing can move them: `İ` grows, `ẞ` shrinks).
    // Platform bot names are ASCII; other letters of a mention match exactly.
    let haystack = text.to_ascii_lowercase();
    let needle = mention.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(i) = haystack[pos..].find(&needle) {
        out.push_str(&text[pos..pos + i]);
        pos += i + needle.len();
        // Drop one space after the mention so "hey @bot do" reads "hey do"; other
        // whitespace (code indentation) is kept.
        if text[pos..].starts_with(' ') {
            pos += 1;
        }
    }
    out.push_str(&text[pos..]);
    out.trim().to_owned()
}

/// Whether `v` holds NUL (U+0000) in a string or an object key.
fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `s` with every NUL (U+0000) replaced by U+FFFD.
fn replace_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// `v` with every NUL in its strings and keys replaced by U+FFFD.
fn replace_nul_in_json(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(replace_nul(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(replace_nul_in_json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (replace_nul(&k), replace_nul_in_json(v))).collect())
        }
        other => other,
    }
}

/// A parsed message made storable: PostgreSQL `text` and `jsonb` cannot hold NUL
/// (U+0000). Identifiers (external id, dedupe key, reply target) holding one are refused,
/// as are empty ones (an empty dedupe key would make every such delivery a repeat);
/// in descriptive fields (title, sender, metadata) it becomes U+FFFD. The text is kept as
/// sent: ingest refuses NUL there with a message the user is told.
fn storable(mut m: InboundMessage) -> Result<Inbound, ParseError> {
    for (field, id) in [("the conversation id", &m.external_id), ("the delivery id", &m.dedupe_key)] {
        if id.is_empty() {
            return Err(ParseError::Invalid(format!("{field} is empty")));
        }
        if id.contains('\0') {
            return Err(ParseError::Invalid(format!("{field} contains a NUL character (U+0000)")));
        }
    }
    if json_has_nul(&m.reply_target) {
        return Err(ParseError::Invalid("the reply target contains a NUL character (U+0000)".into()));
    }
    m.title = replace_nul(&m.title);
    m.sender = replace_nul(&m.sender);
    if json_has_nul(&m.metadata) {
        m.metadata = replace_nul_in_json(m.metadata);
    }
    Ok(Inbound::Message(m))
}

/// Telegram Bot API `Update` (core.telegram.org/bots/api#update): `message` updates with
/// text or a caption. `edited_message`, channel posts and other updates are ignored, as
/// are messages from bots (`from.is_bot`) and commands addressed to another bot
/// (`/cmd@other_bot`).
///
/// # Errors
/// [`ParseError`] when the body is not an update.
pub fn telegram(body: &[u8], bot_username: Option<&str>) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    let update_id = required(&v, "update_id")?
        .as_i64()
        .ok_or_else(|| ParseError::Invalid("update_id must be an integer".into()))?;
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
    let text = match bot_username {
        Some(me) => strip_mention(raw, &format!("@{me}")),
        None => raw.trim().to_owned(),
    };
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let chat_id = required(message, "chat.id")?
        .as_i64()
        .ok_or_else(|| ParseError::Invalid("chat.id must be an integer".into()))?;
    let message_id = required(message, "message_id")?
        .as_i64()
        .ok_or_else(|| ParseError::Invalid("message_id must be an integer".into()))?;
    let thread = message.get("message_thread_id").and_then(Value::as_i64);
    let topic = message.get("is_topic_message").and_then(Value::as_bool) == Some(true);
    let external_id = match thread {
        Some(t) => format!("{chat_id}/{t}"),
        None => chat_id.to_string(),
    };
    let from = message.get("from").cloned().unwrap_or(Value::Null);
    let sender = from
        .get("username")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| from.get("id").and_then(id_string))
        .unwrap_or_else(|| "unknown".into());
    let chat = &message["chat"];
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
        dedupe_key: update_id.to_string(),
        reply_target,
    })
}

/// Replaces Slack's three escaped characters (api.slack.com "Formatting text").
fn slack_unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Slack Events API body (api.slack.com/apis/events-api): `url_verification` is a
/// handshake; `event_callback` with an `app_mention` (any channel) or a `message` in a
/// direct message (`channel_type: im`) is a message. Bot messages (`bot_id`, any
/// `subtype` such as `bot_message` or `message_changed`) and messages from the bot user
/// are ignored.
///
/// The conversation is `channel/thread_ts` (or `channel/ts` for a mention that starts a
/// thread); a direct message outside a thread is the whole DM channel.
///
/// # Errors
/// [`ParseError`] when the body is not an Events API payload.
pub fn slack(body: &[u8], bot_user_id: Option<&str>) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    match v.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = required(&v, "challenge")?
                .as_str()
                .ok_or_else(|| ParseError::Invalid("challenge must be a string".into()))?;
            return Ok(Inbound::Handshake(json!({ "challenge": challenge })));
        }
        Some("event_callback") => {}
        Some(other) => return Ok(Inbound::Ignored(format!("Slack payload type {other}"))),
        None => return Err(ParseError::Invalid("missing field type".into())),
    }
    let event_id =
        required(&v, "event_id")?.as_str().ok_or_else(|| ParseError::Invalid("event_id must be a string".into()))?;
    let event = required(&v, "event")?;
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "message" && kind != "app_mention" {
        return Ok(Inbound::Ignored(format!("Slack event {kind}")));
    }
    let bot_user = bot_user_id.map(str::to_owned).or_else(|| {
        v.get("authorizations")?
            .as_array()?
            .iter()
            .find(|a| a.get("is_bot").and_then(Value::as_bool) == Some(true))
            .and_then(|a| a.get("user_id")?.as_str().map(str::to_owned))
    });
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
    let mut text = match &bot_user {
        Some(id) => strip_mention(raw, &format!("<@{id}>")),
        None => raw.trim().to_owned(),
    };
    if kind == "app_mention" && bot_user.is_none() {
        // Without a known bot id, drop a leading mention: it is the bot's.
        if let Some(rest) = text.strip_prefix("<@").and_then(|r| r.split_once('>')).map(|(_, r)| r.trim().to_owned()) {
            text = rest;
        }
    }
    let text = slack_unescape(&text);
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let channel = required(event, "channel")?
        .as_str()
        .ok_or_else(|| ParseError::Invalid("event.channel must be a string".into()))?;
    let ts = required(event, "ts")?.as_str().ok_or_else(|| ParseError::Invalid("event.ts must be a string".into()))?;
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
        dedupe_key: event_id.to_owned(),
        reply_target: json!({ "channel": channel, "thread_ts": reply_thread }),
    })
}

/// The chat commands a Discord application command may be named after.
const DISCORD_COMMANDS: [&str; 9] =
    ["help", "status", "reset", "cancel", "retry", "sessions", "pause", "resume", "skip"];

/// Discord interaction (discord.com/developers/docs/interactions/receiving-and-responding):
/// PING (type 1) is a handshake answered `{"type":1}`; an APPLICATION_COMMAND (type 2)
/// is a message: a command named like a chat command (`/status`) becomes that command,
/// any other takes its first string option (`prompt`, `text`, `message` preferred) as
/// the text. The conversation is the channel; the reply target keeps the interaction
/// token (valid 15 minutes) and `received_at` (unix seconds, `now_unix`).
///
/// # Errors
/// [`ParseError`] when the body is not an interaction.
pub fn discord(body: &[u8], now_unix: i64) -> Result<Inbound, ParseError> {
    let v = parse_json(body)?;
    let kind = required(&v, "type")?.as_i64().ok_or_else(|| ParseError::Invalid("type must be an integer".into()))?;
    if kind == 1 {
        return Ok(Inbound::Handshake(json!({ "type": 1 })));
    }
    if kind != 2 {
        return Ok(Inbound::Ignored(format!("interaction type {kind} is not supported")));
    }
    let id = required(&v, "id").map(id_string)?.ok_or_else(|| ParseError::Invalid("id must be a string".into()))?;
    let token = required(&v, "token")?.as_str().ok_or_else(|| ParseError::Invalid("token must be a string".into()))?;
    let application_id = required(&v, "application_id")
        .map(id_string)?
        .ok_or_else(|| ParseError::Invalid("application_id must be a string".into()))?;
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
    let string_option = |wanted: &str| {
        options
            .iter()
            .find(|o| {
                o.get("type").and_then(Value::as_i64) == Some(3)
                    && o.get("name").and_then(Value::as_str) == Some(wanted)
            })
            .and_then(|o| o.get("value")?.as_str().map(str::to_owned))
    };
    let text = if DISCORD_COMMANDS.contains(&name.as_str()) {
        format!("/{name}")
    } else {
        string_option("prompt")
            .or_else(|| string_option("text"))
            .or_else(|| string_option("message"))
            .or_else(|| {
                options
                    .iter()
                    .find(|o| o.get("type").and_then(Value::as_i64) == Some(3))
                    .and_then(|o| o.get("value")?.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| format!("/{name}"))
    };
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    let sender = user
        .get("username")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| user.get("id").and_then(id_string))
        .unwrap_or_else(|| "unknown".into());
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
        dedupe_key: id.clone(),
        reply_target: json!({
            "application_id": application_id,
            "interaction_id": id,
            "token": token,
            "channel_id": channel_id,
            "received_at": now_unix,
        }),
    })
}

/// GitHub webhook delivery (docs.github.com "Webhook events and payloads"), by
/// `X-GitHub-Event`: `ping` is a handshake; `issue_comment` (created), `issues`
/// (opened) and `pull_request_review_comment` (created) are messages on
/// `owner/repo#number`. Senders of type `Bot` and the configured bot login are ignored.
///
/// # Errors
/// [`ParseError`] when `X-GitHub-Event` / `X-GitHub-Delivery` are missing or the body
/// is not a webhook payload.
pub fn github(headers: &HeaderMap, body: &[u8], bot_login: Option<&str>) -> Result<Inbound, ParseError> {
    let event =
        header(headers, "x-github-event").ok_or_else(|| ParseError::Invalid("missing header X-GitHub-Event".into()))?;
    let delivery = header(headers, "x-github-delivery")
        .ok_or_else(|| ParseError::Invalid("missing header X-GitHub-Delivery".into()))?;
    let v = parse_json(body)?;
    if event == "ping" {
        return Ok(Inbound::Handshake(json!({ "ok": true, "zen": v.get("zen") })));
    }
    let action = v.get("action").and_then(Value::as_str).unwrap_or_default();
    let sender_login = v.pointer("/sender/login").and_then(Value::as_str).unwrap_or("unknown");
    let sender_is_bot = v.pointer("/sender/type").and_then(Value::as_str) == Some("Bot");
    let is_me = bot_login.is_some_and(|me| me.eq_ignore_ascii_case(sender_login));
    let (number, raw, title, kind, comment_id) = match (event, action) {
        ("issue_comment", "created") => (
            required(&v, "issue.number")?.as_i64(),
            v.pointer("/comment/body").and_then(Value::as_str).unwrap_or_default().to_owned(),
            v.pointer("/issue/title").and_then(Value::as_str).unwrap_or_default(),
            "issue",
            None,
        ),
        ("issues", "opened") => {
            let title = v.pointer("/issue/title").and_then(Value::as_str).unwrap_or_default();
            let body = v.pointer("/issue/body").and_then(Value::as_str).unwrap_or_default();
            (required(&v, "issue.number")?.as_i64(), format!("{title}\n\n{body}"), title, "issue", None)
        }
        ("pull_request_review_comment", "created") => {
            // Replies go to the thread's top-level comment (the replies endpoint does not
            // take a reply's id).
            let top = v
                .pointer("/comment/in_reply_to_id")
                .and_then(Value::as_i64)
                .or_else(|| v.pointer("/comment/id").and_then(Value::as_i64));
            (
                required(&v, "pull_request.number")?.as_i64(),
                v.pointer("/comment/body").and_then(Value::as_str).unwrap_or_default().to_owned(),
                v.pointer("/pull_request/title").and_then(Value::as_str).unwrap_or_default(),
                "review_comment",
                top,
            )
        }
        _ => return Ok(Inbound::Ignored(format!("GitHub event {event}.{action}"))),
    };
    if sender_is_bot || is_me {
        return Ok(Inbound::Ignored("event from a bot".into()));
    }
    let number = number.ok_or_else(|| ParseError::Invalid("the issue number must be an integer".into()))?;
    let repo = required(&v, "repository.full_name")?
        .as_str()
        .ok_or_else(|| ParseError::Invalid("repository.full_name must be a string".into()))?;
    let text = match bot_login {
        Some(me) => strip_mention(&raw, &format!("@{me}")),
        None => raw.trim().to_owned(),
    };
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    // The association of whoever wrote the text: the comment's, or the issue's when it
    // was opened.
    let author = if event == "issues" {
        v.pointer("/issue/author_association")
    } else {
        v.pointer("/comment/author_association")
    };
    let association = author.and_then(Value::as_str).map(|a| Association::parse(a).unwrap_or(Association::None));
    let ids = vec![(Field::GithubRepository, repo.to_owned()), (Field::GithubSender, sender_login.to_owned())];
    storable(InboundMessage {
        origin: Origin { ids, association },
        platform: Platform::Github,
        external_id: format!("{repo}#{number}"),
        title: title.to_owned(),
        sender: sender_login.to_owned(),
        text,
        dedupe_key: delivery.to_owned(),
        reply_target: json!({ "repo": repo, "number": number, "kind": kind, "comment_id": comment_id }),
        metadata: json!({ "platform": "github", "sender": sender_login, "event": event, "delivery": delivery }),
    })
}

/// The longest generic `conversation_id`, in bytes.
const GENERIC_MAX_ID: usize = 200;

/// Parley's generic webhook body (docs/platforms.md):
/// `{"conversation_id": "…", "text": "…", "sender": "…"?, "title": "…"?, "callback_url": "https://…"?}`
/// with the delivery id in `X-Delivery-Id`.
///
/// # Errors
/// [`ParseError`] for a missing `X-Delivery-Id`, a missing or over-long
/// `conversation_id`, a missing `text`, or a `callback_url` that is not http(s).
pub fn generic(headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
    let delivery = header(headers, crate::verify::GENERIC_DELIVERY_HEADER)
        .ok_or_else(|| ParseError::Invalid("missing header X-Delivery-Id".into()))?;
    if delivery.len() > 255 {
        return Err(ParseError::Invalid("X-Delivery-Id must be at most 255 bytes".into()));
    }
    let v = parse_json(body)?;
    let conversation = required(&v, "conversation_id")?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= GENERIC_MAX_ID)
        .ok_or_else(|| {
            ParseError::Invalid(format!("conversation_id must be a string of 1 to {GENERIC_MAX_ID} bytes"))
        })?;
    let text = required(&v, "text")?.as_str().ok_or_else(|| ParseError::Invalid("text must be a string".into()))?;
    let callback = match v.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("https://") || url.starts_with("http://") => Some(url.clone()),
        Some(_) => return Err(ParseError::Invalid("callback_url must be an http:// or https:// URL".into())),
    };
    let sender = v.get("sender").and_then(Value::as_str).unwrap_or("generic").to_owned();
    storable(InboundMessage {
        origin: Origin::default(),
        platform: Platform::Generic,
        external_id: conversation.to_owned(),
        title: v.get("title").and_then(Value::as_str).unwrap_or_default().to_owned(),
        metadata: json!({ "platform": "generic", "sender": sender, "delivery": delivery }),
        sender,
        text: text.to_owned(),
        dedupe_key: delivery.to_owned(),
        reply_target: json!({ "callback_url": callback, "conversation_id": conversation }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    fn message(inbound: Inbound) -> InboundMessage {
        match inbound {
            Inbound::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn telegram_private_text_becomes_a_message_on_the_chat() {
        let (_, body) = request("telegram", "update_private_text");
        let m = message(telegram(&body, Some("fixture_bot")).unwrap());
        assert_eq!(m.external_id, "218485655");
        assert_eq!(m.text, "hello there");
        assert_eq!(m.sender, "WaffleLapkin");
        assert_eq!(m.dedupe_key, "892252934");
        assert_eq!(m.reply_target, json!({ "chat_id": 218_485_655, "message_id": 6557 }));
    }

    #[test]
    fn telegram_supergroup_thread_is_its_own_conversation() {
        let (_, body) = request("telegram", "update_supergroup_command_reply");
        let m = message(telegram(&body, None).unwrap());
        assert_eq!(m.external_id, "-1001293752024/134545");
        assert_eq!(m.text, "/report");
        assert_eq!(m.dedupe_key, "439432600");
        // Not a forum topic: replies do not name the thread.
        assert_eq!(m.reply_target, json!({ "chat_id": -1_001_293_752_024_i64, "message_id": 134_546 }));
    }

    #[test]
    fn telegram_strips_the_bot_mention_and_ignores_bots_and_other_bots_commands() {
        let update = |text: &str, is_bot: bool| {
            json!({"update_id": 1, "message": {"message_id": 2, "from": {"id": 3, "is_bot": is_bot}, "chat": {"id": 4, "type": "group"}, "text": text}})
                .to_string()
        };
        let m = message(telegram(update("@Parley_Bot explain this", false).as_bytes(), Some("parley_bot")).unwrap());
        assert_eq!(m.text, "explain this");
        let m = message(telegram(update("/status@parley_bot", false).as_bytes(), Some("parley_bot")).unwrap());
        assert_eq!(m.text, "/status");
        assert!(matches!(
            telegram(update("/status@other_bot", false).as_bytes(), Some("parley_bot")).unwrap(),
            Inbound::Ignored(_)
        ));
        assert!(matches!(telegram(update("hi", true).as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        assert!(matches!(telegram(br#"{"update_id":5,"edited_message":{}}"#, None).unwrap(), Inbound::Ignored(_)));
        assert!(matches!(telegram(b"not json", None), Err(ParseError::Json(_))));
        assert!(matches!(telegram(br#"{"message":{}}"#, None), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn slack_url_verification_echoes_the_challenge() {
        let (_, body) = request("slack", "url_verification");
        assert_eq!(
            slack(&body, None).unwrap(),
            Inbound::Handshake(json!({ "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" }))
        );
    }

    #[test]
    fn slack_direct_message_is_the_dm_conversation() {
        let (_, body) = request("slack", "message_im");
        let m = message(slack(&body, None).unwrap());
        assert_eq!(m.external_id, "D0DMCHAN12");
        assert_eq!(m.text, "what changed in the last deploy?");
        assert_eq!(m.sender, "U0USR12345");
        assert_eq!(m.dedupe_key, "Ev0AB1CDEF99");
        assert_eq!(m.reply_target, json!({ "channel": "D0DMCHAN12", "thread_ts": null }));
    }

    #[test]
    fn slack_mention_in_a_thread_strips_the_mention_and_keeps_the_thread() {
        let (_, body) = request("slack", "app_mention_thread_reply");
        let m = message(slack(&body, None).unwrap());
        assert_eq!(m.external_id, "C0CHAN1234/1767225500.000100");
        assert_eq!(m.text, "and now the staging logs please");
        assert_eq!(m.dedupe_key, "Ev0AB1CDEF23");
        assert_eq!(m.reply_target, json!({ "channel": "C0CHAN1234", "thread_ts": "1767225500.000100" }));
    }

    #[test]
    fn slack_top_level_mention_starts_a_thread_on_its_ts() {
        let v = json_fixture("slack/event_callback.app_mention.doc.json");
        let m = message(slack(v.to_string().as_bytes(), Some("U0LAN0Z89")).unwrap());
        assert_eq!(m.external_id, "C123ABC456/1515449522.000016");
        assert_eq!(m.text, "is it everything a river should be?");
        assert_eq!(m.reply_target["thread_ts"], "1515449522.000016");
    }

    #[test]
    fn slack_bot_echo_and_channel_messages_are_ignored() {
        let (_, body) = request("slack", "message_bot_echo");
        assert!(matches!(slack(&body, None).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&request("slack", "message_im").1).unwrap();
        v["event"]["channel_type"] = json!("channel");
        assert!(matches!(slack(v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&request("slack", "message_im").1).unwrap();
        v["event"]["user"] = json!("U0BOT12345");
        assert!(matches!(slack(v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
    }

    #[test]
    fn discord_ping_is_answered_with_type_1() {
        let (_, body) = request("discord", "ping");
        assert_eq!(discord(&body, 0).unwrap(), Inbound::Handshake(json!({ "type": 1 })));
    }

    #[test]
    fn discord_ask_command_takes_its_prompt_option() {
        let (_, body) = request("discord", "application_command_ask");
        let m = message(discord(&body, 1_767_225_620).unwrap());
        assert_eq!(m.external_id, "645027906669510667");
        assert_eq!(m.text, "why did the nightly build fail?");
        assert_eq!(m.sender, "mason");
        assert_eq!(m.dedupe_key, "1455000000000000200");
        assert_eq!(m.reply_target["application_id"], "1234567890123456789");
        assert_eq!(m.reply_target["token"], "aW50ZXJhY3Rpb246MTQ1NTAwMDAwMDAwMDAwMDIwMDpGSVhUVVJFX1RPS0VO");
        assert_eq!(m.reply_target["received_at"], 1_767_225_620);
    }

    #[test]
    fn discord_commands_named_like_chat_commands_become_them() {
        let mut v: Value = serde_json::from_slice(&request("discord", "application_command_ask").1).unwrap();
        v["data"] = json!({ "id": "1", "name": "status", "type": 1 });
        assert_eq!(message(discord(v.to_string().as_bytes(), 0).unwrap()).text, "/status");
        let doc = json_fixture("discord/interaction.application_command.doc.json");
        assert!(
            matches!(discord(doc.to_string().as_bytes(), 0), Err(ParseError::Invalid(_))),
            "doc sample has no application_id"
        );
    }

    #[test]
    fn github_issue_comment_is_a_message_on_the_issue() {
        let (headers, body) = request("github", "issue_comment_created");
        let m = message(github(&headers, &body, None).unwrap());
        assert_eq!(m.external_id, "Codertocat/Hello-World#1");
        assert_eq!(m.text, "You are totally right! I'll get this fixed right away.");
        assert_eq!(m.sender, "Codertocat");
        assert_eq!(m.dedupe_key, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(m.reply_target["kind"], "issue");
        assert_eq!(m.reply_target["number"], 1);
    }

    #[test]
    fn github_issue_opened_and_review_comment() {
        let (headers, body) = request("github", "issues_opened");
        let m = message(github(&headers, &body, None).unwrap());
        assert!(m.text.starts_with("Spelling error in the README file"), "{}", m.text);
        let (headers, body) = request("github", "pull_request_review_comment_created");
        let m = message(github(&headers, &body, None).unwrap());
        assert_eq!(m.external_id, "Codertocat/Hello-World#2");
        assert_eq!(m.reply_target["kind"], "review_comment");
        assert_eq!(m.reply_target["comment_id"], 284_312_630);
    }

    #[test]
    fn github_ping_is_a_handshake_and_bots_are_ignored() {
        let (headers, body) = request("github", "ping");
        assert!(matches!(github(&headers, &body, None).unwrap(), Inbound::Handshake(_)));
        let (headers, body) = request("github", "issue_comment_created");
        assert!(matches!(github(&headers, &body, Some("codertocat")).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["sender"]["type"] = json!("Bot");
        assert!(matches!(github(&headers, v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        let mut no_event = headers.clone();
        no_event.remove("x-github-event");
        assert!(matches!(github(&no_event, &body, None), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn generic_body_and_delivery_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-delivery-id", "d-1".parse().unwrap());
        let body =
            br#"{"conversation_id":"ticket-42","text":"hi","sender":"ops","callback_url":"http://127.0.0.1:9/cb"}"#;
        let m = message(generic(&headers, body).unwrap());
        assert_eq!(m.external_id, "ticket-42");
        assert_eq!(m.dedupe_key, "d-1");
        assert_eq!(m.reply_target["callback_url"], "http://127.0.0.1:9/cb");
        assert!(matches!(
            generic(&headers, br#"{"conversation_id":"x","text":"hi","callback_url":"file:///etc"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(generic(&HeaderMap::new(), body), Err(ParseError::Invalid(_))));
        assert!(matches!(generic(&headers, br#"{"text":"hi"}"#), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn strip_mention_keeps_lines_and_indentation() {
        assert_eq!(strip_mention("hey @Bot do\n    code @bot", "@bot"), "hey do\n    code");
        assert_eq!(strip_mention("<@U1> hi", "<@U1>"), "hi");
    }
}
