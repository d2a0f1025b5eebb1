//! Chat commands, the same on every surface: `/help`, `/status`, `/reset`, `/cancel`,
//! `/retry`, `/sessions`, `/pause`, `/resume`, `/skip`, `/model`, `/settings`.
//!
//! A command runs in one transaction with the conversation's row locked, so it sees and
//! changes a consistent state. A command that does not fit the state gets an
//! explanation ([`CommandReply::ok`] false), never a silent no-op.

use std::fmt::Write as _;

use parley_db::conversation::Conversation;
use parley_db::session::{self, Transition};
use parley_db::turn::{self, TurnStatus};
use parley_db::{DbResult, GenericClient};
use serde::Serialize;
use uuid::Uuid;

use crate::OrchestratorError;
use crate::settings::{self, Policy, SettingsChange};

/// A chat command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Command {
    /// Lists the commands.
    Help,
    /// Shows the assistant, session, assistant session ID, last error and queue.
    Status,
    /// Ends the session; the next message starts a new one without old history.
    Reset,
    /// Stops the running turn now.
    Cancel,
    /// Re-runs the last failed turn.
    Retry,
    /// Shows the conversation's session chain.
    Sessions,
    /// Stores and queues new messages but starts no turn until `/resume`.
    Pause,
    /// Ends a pause.
    Resume,
    /// Drops the oldest queued turn, or marks the last failed one skipped.
    Skip,
    /// `/model NAME` sets the conversation's model (`default`: the assistant's own);
    /// `/model` alone shows it.
    Model,
    /// `/settings` shows the conversation's settings; `/settings NAME VALUE` changes one.
    Settings,
}

/// All commands with a one-line description, in `/help` order.
pub const COMMANDS: [(Command, &str); 11] = [
    (Command::Help, "list the commands"),
    (Command::Status, "assistant, session, last error and queue"),
    (Command::Reset, "end the session; the next message starts a fresh one"),
    (Command::Cancel, "stop the running turn now"),
    (Command::Retry, "run the last failed turn again"),
    (Command::Sessions, "this conversation's session chain"),
    (Command::Pause, "keep new messages queued until /resume"),
    (Command::Resume, "answer queued messages again"),
    (Command::Skip, "drop the oldest queued message, or the last failed one"),
    (Command::Model, "show the model, or /model NAME to change it (default: the assistant's own)"),
    (Command::Settings, "show the settings, or /settings NAME VALUE to change one"),
];

impl Command {
    /// The command's name without the slash.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Help => "help",
            Self::Status => "status",
            Self::Reset => "reset",
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Sessions => "sessions",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Skip => "skip",
            Self::Model => "model",
            Self::Settings => "settings",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        COMMANDS.iter().map(|(c, _)| *c).find(|c| c.name() == name)
    }
}

/// What [`parse`] found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a command: an ordinary message for the assistant.
    Message,
    /// A known command.
    Command(Command),
    /// A `/word` that is no command Parley knows.
    Unknown(String),
}

/// Parses a message: a command is a first word of the form `/name` or `/name@bot`
/// (Telegram adds the bot's name in groups) made of ASCII letters. Anything else,
/// including paths like `/etc/hosts`, is an ordinary message.
#[must_use]
pub fn parse(text: &str) -> Parsed {
    let Some(first) = text.split_whitespace().next() else { return Parsed::Message };
    let Some(rest) = first.strip_prefix('/') else { return Parsed::Message };
    let name = rest.split_once('@').map_or(rest, |(n, _)| n);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
        return Parsed::Message;
    }
    let lower = name.to_ascii_lowercase();
    Command::from_name(&lower).map_or(Parsed::Unknown(lower), Parsed::Command)
}

/// A command's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandReply {
    /// The command.
    pub command: Command,
    /// False when the conversation's state did not allow it; `text` says why.
    pub ok: bool,
    /// The reply shown to the user.
    pub text: String,
    /// The running turn to cancel now, for `/cancel`.
    #[serde(skip)]
    pub cancel_turn: Option<Uuid>,
    /// True when queued turns may now be claimed (`/resume`, `/retry`).
    #[serde(skip)]
    pub wake: bool,
}

impl CommandReply {
    fn ok(command: Command, text: impl Into<String>) -> Self {
        Self { command, ok: true, text: text.into(), cancel_turn: None, wake: false }
    }

    fn refused(command: Command, text: impl Into<String>) -> Self {
        Self { command, ok: false, text: text.into(), cancel_turn: None, wake: false }
    }
}

/// The text of `/help`.
#[must_use]
pub fn help_text() -> String {
    let mut text = String::from("Commands:\n");
    for (command, what) in COMMANDS {
        let _ = writeln!(text, "/{} — {what}", command.name());
    }
    text.pop();
    text
}

/// The words after a command's name: `/model  opus ` → `opus`.
#[must_use]
pub fn arguments(text: &str) -> &str {
    let text = text.trim_start();
    text.split_once(char::is_whitespace).map_or("", |(_, rest)| rest.trim())
}

/// Runs `command` with its `args` (see [`arguments`]) on a conversation whose row the
/// caller has locked in `client`'s transaction; `policy` checks setting changes.
/// `message_id` is the id of the stored command message, if any (a `/reset` cuts
/// history there).
///
/// # Errors
/// Database errors only; state problems and invalid settings are a refused
/// [`CommandReply`].
pub async fn execute(
    client: &impl GenericClient,
    policy: &Policy,
    conversation: &Conversation,
    command: Command,
    args: &str,
    message_id: Option<i64>,
) -> DbResult<CommandReply> {
    let id = conversation.conversation_id;
    Ok(match command {
        Command::Model if args.is_empty() => CommandReply::ok(
            command,
            format!(
                "Model: {}. /model NAME changes it; /model default returns to the assistant's own.",
                conversation.model.as_deref().unwrap_or("the assistant's default")
            ),
        ),
        Command::Model => change_setting(client, policy, conversation, command, "model", args).await?,
        Command::Settings if args.is_empty() => CommandReply::ok(command, settings::describe(conversation, policy)),
        Command::Settings => {
            let (name, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
            change_setting(client, policy, conversation, command, name, value.trim()).await?
        }
        Command::Help => CommandReply::ok(command, help_text()),
        Command::Status => CommandReply::ok(command, status_text(client, conversation).await?),
        Command::Sessions => CommandReply::ok(command, sessions_text(client, id).await?),
        Command::Reset => {
            let Some(active) = session::active(client, id).await? else {
                return Ok(CommandReply::refused(
                    command,
                    "Nothing to reset: there is no session yet. The next message starts one.",
                ));
            };
            session::end(client, active.session_id, Transition::ResetRequested, None).await?;
            // The next session starts now, cut from the old history.
            let cut = match message_id {
                Some(m) => m + 1,
                None => next_message_id(client).await?,
            };
            session::start(
                client,
                &session::NewSession {
                    conversation_id: id,
                    assistant: &conversation.assistant,
                    parent_session_id: Some(active.session_id),
                    reason: Transition::ResetRequested,
                    history_from_message_id: cut,
                    settings: &session::SessionSettings::of(conversation),
                },
            )
            .await?;
            let running = turn::running(client, id).await?;
            let mut text =
                String::from("Session reset. The next message starts a fresh session without the earlier history.");
            if running.is_some() {
                text.push_str(" The running turn finishes in the old session.");
            }
            CommandReply::ok(command, text)
        }
        Command::Cancel => match turn::request_cancel(client, id).await? {
            Some(t) => CommandReply {
                cancel_turn: Some(t.turn_id),
                ..CommandReply::ok(command, "Cancelling the running turn.")
            },
            None => {
                let queued = turn::queued(client, id).await?.len();
                let mut text = String::from("Nothing to cancel: no turn is running.");
                if queued > 0 {
                    let _ = write!(text, " {queued} message(s) are queued; /skip drops the oldest.");
                }
                CommandReply::refused(command, text)
            }
        },
        Command::Retry => match turn::last_finished(client, id).await? {
            Some(t) if matches!(t.status, TurnStatus::Failed | TurnStatus::Interrupted) => {
                turn::transition(client, t.turn_id, t.status, TurnStatus::Queued).await?;
                let mut text = String::from("Retrying the last failed turn.");
                if conversation.paused {
                    text.push_str(" The conversation is paused: it runs after /resume.");
                }
                CommandReply { wake: true, ..CommandReply::ok(command, text) }
            }
            Some(t) => {
                CommandReply::refused(command, format!("Nothing to retry: the last turn was {}, not failed.", t.status))
            }
            None => CommandReply::refused(command, "Nothing to retry: no turn has finished yet."),
        },
        Command::Pause => {
            if conversation.paused {
                CommandReply::refused(command, "Already paused. /resume answers the queued messages.")
            } else {
                parley_db::conversation::set_paused(client, id, true).await?;
                CommandReply::ok(
                    command,
                    "Paused. New messages are stored and queued; none is answered until /resume. A running turn finishes.",
                )
            }
        }
        Command::Resume => {
            if conversation.paused {
                parley_db::conversation::set_paused(client, id, false).await?;
                let queued = turn::queued(client, id).await?.len();
                CommandReply {
                    wake: true,
                    ..CommandReply::ok(
                        command,
                        format!("Resumed. {queued} queued message(s) will be answered in order."),
                    )
                }
            } else {
                CommandReply::refused(command, "Not paused: there is nothing to resume.")
            }
        }
        Command::Skip => {
            if let Some(oldest) = turn::queued(client, id).await?.into_iter().next() {
                turn::transition(client, oldest.turn_id, TurnStatus::Queued, TurnStatus::Skipped).await?;
                CommandReply::ok(command, "Skipped the oldest queued message; it will not be answered.")
            } else {
                match turn::last_finished(client, id).await? {
                    Some(t) if t.status == TurnStatus::Failed => {
                        turn::transition(client, t.turn_id, TurnStatus::Failed, TurnStatus::Skipped).await?;
                        CommandReply::ok(command, "Skipped the last failed turn; /retry will not run it.")
                    }
                    _ => CommandReply::refused(
                        command,
                        "Nothing to skip: no message is queued and the last turn did not fail.",
                    ),
                }
            }
        }
    })
}

/// The settings `/settings NAME VALUE` may change, with the aliases it accepts.
const SETTING_NAMES: [(&str, &[&str]); 6] = [
    ("title", &[]),
    ("assistant", &[]),
    ("model", &[]),
    ("system_prompt", &["prompt", "system-prompt"]),
    ("permission_mode", &["mode", "permission-mode"]),
    ("cwd", &["dir", "directory"]),
];

/// Changes one setting (`value` `default` or empty: the server's default) and says what
/// happened to the session.
async fn change_setting(
    client: &impl GenericClient,
    policy: &Policy,
    conversation: &Conversation,
    command: Command,
    name: &str,
    value: &str,
) -> DbResult<CommandReply> {
    let lower = name.to_ascii_lowercase();
    let Some((name, _)) = SETTING_NAMES.iter().find(|(n, aliases)| *n == lower || aliases.contains(&lower.as_str()))
    else {
        let names: Vec<&str> = SETTING_NAMES.iter().map(|(n, _)| *n).collect();
        return Ok(CommandReply::refused(
            command,
            format!("Unknown setting {name:?}; settings: {}.", names.join(", ")),
        ));
    };
    let cleared = value.is_empty() || value.eq_ignore_ascii_case("default");
    let optional = (!cleared).then(|| value.to_owned());
    let change = match *name {
        "title" => SettingsChange { title: Some(optional.unwrap_or_default()), ..SettingsChange::default() },
        "assistant" if cleared => {
            return Ok(CommandReply::refused(
                command,
                format!("Name the assistant: {}.", policy.assistant_names().join(", ")),
            ));
        }
        "assistant" => SettingsChange { assistant: Some(value.to_owned()), ..SettingsChange::default() },
        "model" => SettingsChange { model: Some(optional), ..SettingsChange::default() },
        "system_prompt" => SettingsChange { system_prompt: Some(optional), ..SettingsChange::default() },
        "permission_mode" => SettingsChange { permission_mode: Some(optional), ..SettingsChange::default() },
        _ => SettingsChange { cwd: Some(optional), ..SettingsChange::default() },
    };
    let next = match policy.resolve(&conversation.settings(), change).await {
        Ok(next) => next,
        Err(OrchestratorError::InvalidSetting { message, .. }) => return Ok(CommandReply::refused(command, message)),
        Err(OrchestratorError::Db(e)) => return Err(e),
        Err(other) => return Ok(CommandReply::refused(command, other.to_string())),
    };
    let changed = settings::store(client, conversation, &next).await?;
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "the default".to_owned());
    let now = &changed.conversation;
    let mut text = match *name {
        "title" => format!("Title set to {:?}.", now.title),
        "assistant" => format!("Assistant set to {}.", now.assistant),
        "model" => format!("Model set to {}.", shown(&now.model)),
        "system_prompt" if now.system_prompt.is_some() => "System prompt set.".to_owned(),
        "system_prompt" => "System prompt removed.".to_owned(),
        "permission_mode" => format!("Permission mode set to {}.", shown(&now.permission_mode)),
        _ => format!("Working directory set to {}.", now.cwd.as_deref().unwrap_or("the conversation's own directory")),
    };
    if let Some(reason) = changed.session_ended {
        let _ = write!(
            text,
            " The session ended ({reason}): the next message starts a fresh one with the conversation's history."
        );
        if turn::running(client, conversation.conversation_id).await?.is_some() {
            text.push_str(" The running turn finishes with the old settings.");
        }
    }
    Ok(CommandReply::ok(command, text))
}

async fn next_message_id(client: &impl GenericClient) -> DbResult<i64> {
    // Every message inserted from now on has an id above the current maximum.
    let row = client.query_one("select coalesce(max(message_id), 0) + 1 from message", &[]).await?;
    Ok(row.try_get(0)?)
}

async fn status_text(client: &impl GenericClient, conversation: &Conversation) -> DbResult<String> {
    let id = conversation.conversation_id;
    let mut text = format!("Assistant: {}\n", conversation.assistant);
    match session::active(client, id).await? {
        Some(s) => {
            let _ = writeln!(
                text,
                "Session: {} (started {}, {})",
                s.session_id,
                s.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                s.transition_reason
            );
            let _ = writeln!(text, "Assistant session ID: {}", s.assistant_session_id.as_deref().unwrap_or("none yet"));
            let _ = writeln!(text, "Last error: {}", s.last_error.as_deref().unwrap_or("none"));
        }
        None => text.push_str("Session: none yet\n"),
    }
    match turn::running(client, id).await? {
        Some(t) => {
            let since = t.started_at.map(|s| s.format("%H:%M:%S UTC").to_string()).unwrap_or_default();
            let _ = writeln!(text, "Running: turn {} since {since} (attempt {})", t.turn_id, t.attempt);
        }
        None => text.push_str("Running: nothing\n"),
    }
    let queued = turn::queued(client, id).await?.len();
    let _ = write!(text, "Queued: {queued}");
    if conversation.paused {
        text.push_str(" (paused: /resume to continue)");
    }
    Ok(text)
}

async fn sessions_text(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<String> {
    let sessions = session::list(client, session::StatusFilter::All, Some(conversation_id), None, None, 100).await?;
    if sessions.is_empty() {
        return Ok("No sessions yet.".into());
    }
    let mut text = String::from("Sessions, oldest first:\n");
    for s in &sessions {
        let _ =
            write!(text, "{} {} — started: {}", if s.active { "*" } else { "-" }, s.session_id, s.transition_reason);
        if let Some(reason) = &s.ended_reason {
            let _ = write!(text, ", ended: {reason}");
        }
        if let Some(err) = &s.last_error {
            let _ = write!(text, ", last error: {err}");
        }
        text.push('\n');
    }
    text.pop();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_leaves_paths_alone() {
        assert_eq!(parse("/reset"), Parsed::Command(Command::Reset));
        assert_eq!(parse("  /STATUS please"), Parsed::Command(Command::Status));
        assert_eq!(parse("/help@ParleyBot"), Parsed::Command(Command::Help));
        assert_eq!(parse("/frobnicate"), Parsed::Unknown("frobnicate".into()));
        assert_eq!(parse("/etc/hosts is broken"), Parsed::Message);
        assert_eq!(parse("hello /reset"), Parsed::Message);
        assert_eq!(parse(""), Parsed::Message);
        assert_eq!(parse("/"), Parsed::Message);
    }

    #[test]
    fn arguments_follow_the_command_name() {
        assert_eq!(arguments("/model  opus "), "opus");
        assert_eq!(arguments("/model"), "");
        assert_eq!(
            arguments("/settings system_prompt Answer in French.\nAlways."),
            "system_prompt Answer in French.\nAlways."
        );
        assert_eq!(parse("/model opus"), Parsed::Command(Command::Model));
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for (c, _) in COMMANDS {
            assert!(help.contains(&format!("/{}", c.name())), "{help}");
        }
    }
}
