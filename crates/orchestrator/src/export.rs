//! Exporting a conversation: its settings, its session chain and every message with the
//! tool calls its replies made, as JSON or Markdown (`GET /api/conversations/{id}/export`,
//! `parley export`).
//!
//! The export is produced as a stream of text pieces ([`export`]): the head (the
//! conversation and its sessions) first, then the messages a page at a time, so a long
//! conversation is never held in memory whole. Messages are read in pages by id, without
//! a transaction held open for the download: a message stored during the export appears
//! in it when its page has not been read yet.
//!
//! JSON ([`Document`]): `{"format": "parley.conversation.v1", "exported_at",
//! "conversation", "sessions": [...], "messages": [...]}`; an assistant message's tool
//! calls are in its `metadata.tool_calls` (`[{"id", "name", "input", "is_error", "output"}]`:
//! the input as the assistant gave it, then the outcome and the first 400 characters of the
//! output once the result came — absent in older replies), with `usage`, `cost_usd` and
//! `incomplete` beside them.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use futures::Stream;
use parley_db::conversation::Conversation;
use parley_db::message::{self, Message, Role};
use parley_db::session::{self, Session, UsageTotals};
use parley_db::{DbError, DbResult, Pool};
use serde::Serialize;
use serde_json::Value;

/// Messages read per page.
const PAGE: i64 = 500;
/// The value of [`Document::format`].
pub const FORMAT_ID: &str = "parley.conversation.v1";

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Format {
    /// One JSON document ([`Document`]).
    #[default]
    Json,
    /// A readable Markdown transcript.
    Markdown,
}

impl Format {
    /// Parses `json` or `markdown` (also `md`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "markdown" | "md" => Some(Self::Markdown),
            _ => None,
        }
    }

    /// The media type of the export.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Markdown => "text/markdown; charset=utf-8",
        }
    }

    /// The file name extension, without the dot.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Markdown => "md",
        }
    }
}

/// A session of the exported chain, with its token and cost totals.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedSession {
    /// The session.
    #[serde(flatten)]
    pub session: Session,
    /// Its totals.
    pub usage: UsageTotals,
}

/// The shape of a JSON export (written piece by piece by [`export`]).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document {
    /// Always [`FORMAT_ID`].
    pub format: String,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The conversation with its settings.
    pub conversation: Conversation,
    /// Its assistant sessions, oldest first.
    pub sessions: Vec<ExportedSession>,
    /// Its messages, oldest first.
    pub messages: Vec<Message>,
}

/// The export of `conversation` in `format`, as a stream of text pieces that concatenate
/// to the whole document. The caller checks that the reader may see the conversation.
///
/// # Errors
/// The stream yields a [`DbError`] and ends when the database fails midway; what came
/// before is then an incomplete document.
pub fn export(
    pool: Pool,
    conversation: Conversation,
    format: Format,
    exported_at: DateTime<Utc>,
) -> impl Stream<Item = DbResult<String>> + Send + 'static {
    async_stream::try_stream! {
        let id = conversation.conversation_id;
        let sessions = {
            let client = pool.get().await?;
            let mut sessions = Vec::new();
            for s in session::list(&client, session::StatusFilter::All, Some(id), None, None, i64::MAX).await? {
                let usage = session::usage_totals(&client, s.session_id).await?;
                sessions.push(ExportedSession { session: s, usage });
            }
            sessions
        };
        yield match format {
            Format::Json => json_head(&conversation, &sessions, exported_at)?,
            Format::Markdown => markdown_head(&conversation, &sessions, exported_at),
        };
        let mut after = 0;
        let mut first = true;
        loop {
            let page = {
                let client = pool.get().await?;
                message::list(&client, id, after, PAGE).await?
            };
            let mut piece = String::new();
            for m in &page {
                match format {
                    Format::Json => {
                        if !first {
                            piece.push(',');
                        }
                        piece.push_str(&to_json(m)?);
                    }
                    Format::Markdown => markdown_message(&mut piece, m),
                }
                first = false;
            }
            if !piece.is_empty() {
                yield piece;
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = last.message_id,
                _ => break,
            }
        }
        yield match format {
            Format::Json => "]}\n".to_owned(),
            Format::Markdown if first => "_No messages._\n".to_owned(),
            Format::Markdown => String::new(),
        };
    }
}

fn to_json(value: &impl Serialize) -> DbResult<String> {
    serde_json::to_string(value).map_err(|e| DbError::Other(parley_db::Cause::new("cannot encode the export", e)))
}

/// Everything of the JSON document up to the opening of `messages`.
fn json_head(conversation: &Conversation, sessions: &[ExportedSession], at: DateTime<Utc>) -> DbResult<String> {
    Ok(format!(
        "{{\"format\":{},\"exported_at\":{},\"conversation\":{},\"sessions\":{},\"messages\":[",
        to_json(&FORMAT_ID)?,
        to_json(&at)?,
        to_json(conversation)?,
        to_json(&sessions)?
    ))
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A Markdown table cell: no line breaks, `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The Markdown title, facts and session chain.
fn markdown_head(conversation: &Conversation, sessions: &[ExportedSession], at: DateTime<Utc>) -> String {
    let c = conversation;
    let title = if c.title.trim().is_empty() { "Untitled conversation" } else { c.title.trim() };
    let mut out = format!("# {}\n\n| | |\n|---|---|\n", cell(title));
    let default = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
    for (name, value) in [
        ("Conversation", format!("`{}`", c.conversation_id)),
        ("Platform", cell(&c.platform)),
        ("Owner", cell(&c.owner)),
        ("Assistant", cell(&c.assistant)),
        ("Model", cell(&default(&c.model, "assistant's default"))),
        ("Permission mode", cell(&default(&c.permission_mode, "server's default"))),
        ("Working directory", cell(&default(&c.cwd, "its own directory"))),
        ("Created", when(c.created_at)),
        ("Exported", when(at)),
    ] {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    if let Some(prompt) = &c.system_prompt {
        let _ = write!(out, "\n**Appended system prompt**\n\n{}", fenced(prompt, ""));
    }
    out.push_str("\n## Sessions\n\n");
    if sessions.is_empty() {
        out.push_str("_No session yet._\n");
    }
    for (n, s) in sessions.iter().enumerate() {
        let session = &s.session;
        let _ = write!(
            out,
            "{}. `{}` — {}, started {} ({})",
            n + 1,
            session.session_id,
            session.assistant,
            when(session.started_at),
            session.transition_reason
        );
        match (session.ended_at, &session.ended_reason) {
            (Some(t), reason) => {
                let _ = write!(out, ", ended {} ({})", when(t), reason.as_deref().unwrap_or("unknown"));
            }
            (None, _) => out.push_str(", active"),
        }
        if let Some(id) = &session.assistant_session_id {
            let _ = write!(out, "; assistant session `{id}`");
        }
        if let Some(model) = &session.settings.model {
            let _ = write!(out, "; model {model}");
        }
        let _ = writeln!(
            out,
            "; {} input and {} output tokens, ${:.4}",
            s.usage.input_tokens, s.usage.output_tokens, s.usage.cost_usd
        );
        if let Some(err) = &session.last_error {
            let _ = writeln!(out, "   - last error: {}", err.replace('\n', " "));
        }
    }
    out.push_str("\n## Messages\n\n");
    out
}

/// `text` in a fenced code block whose fence is longer than any run of backticks in it.
fn fenced(text: &str, language: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{language}\n{}\n{fence}\n", text.trim_end_matches('\n'))
}

/// One message in Markdown: a heading with who and when, the text, and an assistant
/// reply's tool calls.
fn markdown_message(out: &mut String, m: &Message) {
    let who = match m.role {
        Role::User => "User",
        Role::Assistant => "Assistant",
        Role::System => "Parley",
    };
    let _ = writeln!(out, "### {who} · {} · #{}\n", when(m.created_at), m.message_id);
    if m.metadata.get("command").is_some() && m.role == Role::System {
        out.push_str(&fenced(&m.content, ""));
    } else {
        let _ = writeln!(out, "{}", m.content.trim_end());
    }
    if m.metadata.get("incomplete") == Some(&Value::Bool(true)) {
        let why = if m.metadata.get("cancelled").is_some() { "cancelled" } else { "failed" };
        let _ = writeln!(out, "\n_Incomplete reply ({why})._");
    }
    if let Some(calls) = m.metadata.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "\n<details><summary>Tool calls ({})</summary>\n", calls.len());
        for call in calls {
            let name = call.get("name").and_then(Value::as_str).unwrap_or("tool");
            let input =
                call.get("input").map(|i| serde_json::to_string_pretty(i).unwrap_or_default()).unwrap_or_default();
            let _ = writeln!(out, "**{}**\n\n{}", cell(name), fenced(&input, "json"));
        }
        out.push_str("</details>\n");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_inside() {
        assert_eq!(fenced("ls", "json"), "```json\nls\n```\n");
        let tricky = "a ```` b";
        let block = fenced(tricky, "");
        assert!(block.starts_with("`````\n") && block.ends_with("\n`````\n"), "{block}");
    }

    #[test]
    fn formats_parse_and_name_their_media_type() {
        assert_eq!(Format::parse("markdown"), Some(Format::Markdown));
        assert_eq!(Format::parse("md").map(Format::extension), Some("md"));
        assert_eq!(Format::parse("json").map(Format::content_type), Some("application/json"));
        assert_eq!(Format::parse("pdf"), None);
    }
}
