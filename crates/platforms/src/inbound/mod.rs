//! Parsing a verified webhook body into Parley's common [`Inbound`] shape: a message
//! (conversation external id, sender, text with the bot mention stripped, idempotency key,
//! reply target), a handshake to answer, or an event to ignore (the bot's own messages,
//! events Parley does not handle).
//!
//! One module per platform ([`telegram`], [`slack`], [`discord`], [`github`],
//! [`generic`]), each with its `parse` function; this module holds the shapes they share
//! and the JSON helpers they use ([`fields`]).
//!
//! Pure functions over the body bytes and header values; they run only after
//! [`crate::verify`] accepted the request. Any body — malformed, truncated, huge, not
//! UTF-8 — gives a [`ParseError`] or an [`Inbound`], never a panic, and a returned
//! [`InboundMessage`] is storable: no NUL (U+0000) outside its text (see `storable`).

pub mod discord;
mod fields;
pub mod generic;
pub mod github;
pub mod slack;
pub mod telegram;

use serde_json::Value;

use crate::Platform;
use crate::allow::Origin;

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
    /// The delivery's idempotency key: Telegram `update_id`, Slack `event_id`, Discord
    /// interaction `id`, `X-GitHub-Delivery`, generic `X-Delivery-Id`.
    pub idempotency_key: String,
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

/// `raw` without the bot's `mention` when the bot's name is known (`None`: trimmed only).
fn without_mention(raw: &str, mention: Option<String>) -> String {
    match mention {
        Some(m) => strip_mention(raw, &m),
        None => raw.trim().to_owned(),
    }
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
/// (U+0000). Identifiers (external id, idempotency key, reply target) holding one are refused,
/// as are empty ones (an empty idempotency key would make every such delivery a repeat);
/// in descriptive fields (title, sender, metadata) it becomes U+FFFD. The text is kept as
/// sent: ingest refuses NUL there with a message the user is told.
fn storable(mut m: InboundMessage) -> Result<Inbound, ParseError> {
    for (field, id) in [("the conversation id", &m.external_id), ("the delivery id", &m.idempotency_key)] {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The message of a parse that must give one.
    pub(crate) fn message(inbound: Inbound) -> InboundMessage {
        match inbound {
            Inbound::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// What names a message: (conversation external id, text, idempotency key).
    pub(crate) fn names(m: &InboundMessage) -> (&str, &str, &str) {
        (&m.external_id, &m.text, &m.idempotency_key)
    }

    #[test]
    fn strip_mention_keeps_lines_and_indentation() {
        assert_eq!(strip_mention("hey @Bot do\n    code @bot", "@bot"), "hey do\n    code");
        assert_eq!(strip_mention("<@U1> hi", "<@U1>"), "hi");
    }
}
