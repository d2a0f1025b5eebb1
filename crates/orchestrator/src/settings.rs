//! Per-conversation settings: the title, the assistant, the model, a text appended to the
//! assistant's system prompt, the permission mode and the working directory, changed with
//! `PATCH /api/conversations/{id}` or the `/model` and `/settings` chat commands.
//!
//! A change is checked ([`Policy::resolve`]), stored, and ends the conversation's active
//! session when the session no longer fits ([`session_change`]), all in one transaction
//! with the conversation's row locked. The next turn then starts a fresh session with the
//! conversation's history. Which changes end the session, and the reason recorded:
//!
//! | change | session | reason |
//! |---|---|---|
//! | assistant | ended | `assistant-changed` |
//! | working directory | ended (Claude keeps transcripts per directory) | `cwd-changed` |
//! | model | ended (the session's system prompt names its model) | `model-changed` |
//! | appended system prompt | ended (Claude records a session's system prompt once and reuses it on every resume) | `system-prompt-changed` |
//! | permission mode | kept: every run passes it afresh | — |
//! | title | kept | — |
//!
//! Every session records the settings it was started with (`session.settings`), and a
//! turn checks them before it resumes the session, so a change that raced with a turn
//! starting its first session still ends that session before the next turn.
//!
//! A turn already running when the settings change finishes with the settings it
//! started with; the next turn uses the new ones.
//!
//! Permission modes are the assistant's own (Claude `--permission-mode`, Codex
//! `--sandbox`; see [`parley_assistant::Assistant::permission_modes`]), and a
//! conversation may choose only those the server allows
//! ([`crate::Config::allowed_permission_modes`], `--allowed-permission-modes`; by
//! default the read-only ones, [`DEFAULT_ALLOWED_PERMISSION_MODES`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use parley_assistant::RunSettings;
use parley_db::conversation::{self, Conversation, Settings};
use parley_db::session::{self, Session, SessionSettings, Transition};
use parley_db::{DbResult, GenericClient};
use tracing::{info, warn};
use uuid::Uuid;

use crate::workspace::{CwdError, Workspace};
use crate::{Orchestrator, OrchestratorError};

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest model name, in characters.
pub const MAX_MODEL_CHARS: usize = 200;
/// Longest appended system prompt, in characters (it travels in the CLI's arguments).
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 10_000;
/// The permission modes conversations may choose unless the server says otherwise: the
/// read-only ones (Claude `plan`, Codex `read-only`), which can only make a conversation
/// safer than the server's defaults.
pub const DEFAULT_ALLOWED_PERMISSION_MODES: [&str; 2] = ["plan", "read-only"];

/// A change to a conversation's settings: `None` leaves a field as it is; for the
/// optional settings, `Some(None)` (or an empty text) returns to the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// A new title (may be empty).
    pub title: Option<String>,
    /// Another configured assistant.
    pub assistant: Option<String>,
    /// The model.
    pub model: Option<Option<String>>,
    /// The text appended to the assistant's system prompt.
    pub system_prompt: Option<Option<String>>,
    /// The permission mode.
    pub permission_mode: Option<Option<String>>,
    /// The working directory, relative to the workspace root.
    pub cwd: Option<Option<String>>,
}

/// What [`Orchestrator::change_settings`] did.
#[derive(Debug, Clone)]
pub struct SettingsChanged {
    /// The conversation with its new settings.
    pub conversation: Conversation,
    /// Why the active session ended, when the change ended one.
    pub session_ended: Option<Transition>,
}

/// An invalid setting: `code` is the web API's error code (`invalid_title`,
/// `invalid_assistant`, `invalid_model`, `invalid_system_prompt`,
/// `invalid_permission_mode`, `invalid_cwd`).
fn invalid(code: &'static str, message: impl Into<String>) -> OrchestratorError {
    OrchestratorError::InvalidSetting { code, message: message.into() }
}

/// Why `session` no longer fits `conversation`: the first of assistant, working
/// directory, model and system prompt that differs from what the session was started
/// with; `None` when it fits.
#[must_use]
pub fn session_change(session: &Session, conversation: &Conversation) -> Option<Transition> {
    let now = SessionSettings::of(conversation);
    if session.assistant != conversation.assistant {
        Some(Transition::AssistantChanged)
    } else if session.settings.cwd != now.cwd {
        Some(Transition::CwdChanged)
    } else if session.settings.model != now.model {
        Some(Transition::ModelChanged)
    } else if session.settings.system_prompt != now.system_prompt {
        Some(Transition::SystemPromptChanged)
    } else {
        None
    }
}

/// What settings a conversation may have on this server: the configured assistants with
/// their permission modes, the permission modes the server allows, and the workspace.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    assistants: BTreeMap<String, &'static [&'static str]>,
    allowed_permission_modes: Vec<String>,
    workspace: Option<Workspace>,
}

impl Policy {
    /// A policy over `assistants` (name → its permission modes).
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidInput`] when an allowed permission mode is none of
    /// Parley's assistants' (a typo in the server's configuration).
    pub fn new(
        assistants: BTreeMap<String, &'static [&'static str]>,
        allowed_permission_modes: &[String],
        workspace: Option<Workspace>,
    ) -> Result<Self, OrchestratorError> {
        let known = |mode: &str| {
            [parley_assistant::CLAUDE_PERMISSION_MODES, parley_assistant::CODEX_SANDBOX_MODES]
                .into_iter()
                .chain(assistants.values().copied())
                .any(|modes| modes.contains(&mode))
        };
        if let Some(mode) = allowed_permission_modes.iter().find(|m| !known(m)) {
            return Err(OrchestratorError::InvalidInput(format!(
                "the allowed permission mode {mode:?} is no assistant's (claude: {}; codex: {})",
                parley_assistant::CLAUDE_PERMISSION_MODES.join(", "),
                parley_assistant::CODEX_SANDBOX_MODES.join(", ")
            )));
        }
        Ok(Self { assistants, allowed_permission_modes: allowed_permission_modes.to_vec(), workspace })
    }

    /// The permission modes a conversation with `assistant` may choose: the assistant's
    /// own that the server allows, most restrictive first.
    #[must_use]
    pub fn permission_modes(&self, assistant: &str) -> Vec<&'static str> {
        self.assistants
            .get(assistant)
            .map(|modes| {
                modes.iter().copied().filter(|m| self.allowed_permission_modes.iter().any(|a| a == m)).collect()
            })
            .unwrap_or_default()
    }

    /// The configured assistants' names, sorted.
    #[must_use]
    pub fn assistant_names(&self) -> Vec<&str> {
        self.assistants.keys().map(String::as_str).collect()
    }

    /// The settings `current` becomes with `change`, each checked.
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidSetting`] naming the first invalid field: a title over
    /// [`MAX_TITLE_CHARS`] or with NUL; an assistant that is not configured; a model name
    /// that is not 1–[`MAX_MODEL_CHARS`] of letters, digits and `._:/@+-[]` (not starting
    /// with `-`); a system prompt over [`MAX_SYSTEM_PROMPT_CHARS`] or with NUL; a
    /// permission mode not allowed for the (new) assistant, including a stored one the
    /// new assistant does not know; a working directory outside the workspace rules.
    pub async fn resolve(&self, current: &Settings, change: SettingsChange) -> Result<Settings, OrchestratorError> {
        let mut next = current.clone();
        if let Some(title) = change.title {
            if title.contains('\0') || title.chars().count() > MAX_TITLE_CHARS {
                return Err(invalid(
                    "invalid_title",
                    format!("a title is at most {MAX_TITLE_CHARS} characters, without NUL"),
                ));
            }
            next.title = title;
        }
        if let Some(assistant) = change.assistant {
            if !self.assistants.contains_key(&assistant) {
                return Err(invalid(
                    "invalid_assistant",
                    format!("unknown assistant {assistant:?}; configured: {}", self.assistant_names().join(", ")),
                ));
            }
            next.assistant = assistant;
        }
        if let Some(model) = change.model {
            next.model = check_model(blank_is_none(model))?;
        }
        if let Some(prompt) = change.system_prompt {
            next.system_prompt = check_system_prompt(blank_is_none(prompt))?;
        }
        if let Some(mode) = change.permission_mode {
            next.permission_mode = blank_is_none(mode);
        }
        if next.permission_mode != current.permission_mode || next.assistant != current.assistant {
            self.check_permission_mode(&next)?;
        }
        if let Some(cwd) = change.cwd {
            next.cwd = blank_is_none(cwd);
            if let Some(cwd) = next.cwd.clone().filter(|_| next.cwd != current.cwd) {
                self.check_cwd(cwd).await.map_err(|e| invalid("invalid_cwd", e.to_string()))?;
            }
        }
        Ok(next)
    }

    fn check_permission_mode(&self, settings: &Settings) -> Result<(), OrchestratorError> {
        let Some(mode) = &settings.permission_mode else { return Ok(()) };
        let allowed = self.permission_modes(&settings.assistant);
        if allowed.contains(&mode.as_str()) {
            return Ok(());
        }
        let choices = if allowed.is_empty() {
            "none: leave it unset (null)".to_owned()
        } else {
            format!("{} (or null for the server's default)", allowed.join(", "))
        };
        Err(invalid(
            "invalid_permission_mode",
            format!(
                "the permission mode {mode:?} is not allowed for {} on this server; choose {choices}",
                settings.assistant
            ),
        ))
    }

    async fn check_cwd(&self, cwd: String) -> Result<(), CwdError> {
        let Some(workspace) = self.workspace.clone() else { return Err(CwdError::NoRoot) };
        tokio::task::spawn_blocking(move || workspace.check_request(&cwd)).await.unwrap_or_else(|e| {
            Err(CwdError::Io { path: PathBuf::new(), source: std::io::Error::other(e.to_string()) })
        })
    }

    /// What a run of `conversation` passes to its assistant. A stored permission mode the
    /// server no longer allows (its flags changed) is dropped with a warning: the run
    /// uses the server's default.
    #[must_use]
    pub fn run_settings(&self, conversation: &Conversation) -> RunSettings {
        let permission_mode = conversation.permission_mode.clone().filter(|mode| {
            let allowed = self.permission_modes(&conversation.assistant).contains(&mode.as_str());
            if !allowed {
                warn!(permission_mode = %mode, assistant = %conversation.assistant,
                      "the conversation's permission mode is no longer allowed; using the server's default");
            }
            allowed
        });
        RunSettings {
            model: conversation.model.clone(),
            append_system_prompt: conversation.system_prompt.clone(),
            permission_mode,
        }
    }
}

fn blank_is_none(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn check_model(model: Option<String>) -> Result<Option<String>, OrchestratorError> {
    let Some(model) = model else { return Ok(None) };
    let valid = model.chars().count() <= MAX_MODEL_CHARS
        && !model.starts_with('-')
        && model.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@+-[]".contains(c));
    if valid {
        Ok(Some(model))
    } else {
        Err(invalid(
            "invalid_model",
            format!(
                "a model name is 1 to {MAX_MODEL_CHARS} letters, digits and . _ : / @ + - [ ], not starting with -; \
                 got {model:?}"
            ),
        ))
    }
}

fn check_system_prompt(prompt: Option<String>) -> Result<Option<String>, OrchestratorError> {
    let Some(prompt) = prompt else { return Ok(None) };
    if prompt.contains('\0') || prompt.chars().count() > MAX_SYSTEM_PROMPT_CHARS {
        return Err(invalid(
            "invalid_system_prompt",
            format!("the system prompt is at most {MAX_SYSTEM_PROMPT_CHARS} characters, without NUL"),
        ));
    }
    Ok(Some(prompt))
}

/// Stores `settings` on the locked `conversation` and ends its active session when the
/// session no longer fits them. Call it in the transaction that locked the row.
///
/// # Errors
/// Database errors only.
pub async fn store(
    client: &impl GenericClient,
    conversation: &Conversation,
    settings: &Settings,
) -> DbResult<SettingsChanged> {
    if *settings == conversation.settings() {
        return Ok(SettingsChanged { conversation: conversation.clone(), session_ended: None });
    }
    let id = conversation.conversation_id;
    let updated = conversation::set_settings(client, id, settings).await?;
    let mut session_ended = None;
    if let Some(active) = session::active(client, id).await?
        && let Some(reason) = session_change(&active, &updated)
        && session::end(client, active.session_id, reason, None).await?
    {
        session_ended = Some(reason);
    }
    info!(conversation_id = %id, session_ended = session_ended.map(<&str>::from), "conversation settings changed");
    Ok(SettingsChanged { conversation: updated, session_ended })
}

/// A readable summary of a conversation's settings (`/settings`).
#[must_use]
pub fn describe(conversation: &Conversation, policy: &Policy) -> String {
    let or = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.to_owned());
    let mut text = String::from("Settings:\n");
    let _ = writeln!(text, "title: {}", if conversation.title.is_empty() { "(none)" } else { &conversation.title });
    let _ = writeln!(text, "assistant: {}", conversation.assistant);
    let _ = writeln!(text, "model: {}", or(&conversation.model, "the assistant's default"));
    let modes = policy.permission_modes(&conversation.assistant);
    let _ = writeln!(
        text,
        "permission_mode: {} (allowed here: {})",
        or(&conversation.permission_mode, "the server's default"),
        if modes.is_empty() { "none".to_owned() } else { modes.join(", ") }
    );
    let _ = writeln!(text, "cwd: {}", or(&conversation.cwd, "the conversation's own directory"));
    match &conversation.system_prompt {
        Some(p) => {
            let shown: String = p.chars().take(200).collect();
            let more = if p.chars().count() > 200 { "…" } else { "" };
            let _ = writeln!(text, "system_prompt: {shown}{more}");
        }
        None => text.push_str("system_prompt: none\n"),
    }
    text.push_str(
        "Change one with /settings NAME VALUE (VALUE `default` returns to the server's default), or /model NAME. \
         A new assistant, model, system prompt or cwd starts a fresh session with the conversation's history.",
    );
    text
}

impl Orchestrator {
    /// What settings conversations may have on this server.
    #[must_use]
    pub fn settings_policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Changes a conversation's settings: checks `change`, stores it and ends the active
    /// session when it no longer fits, in one transaction with the conversation's row
    /// locked. A turn running meanwhile finishes with the settings it started with.
    ///
    /// # Errors
    /// [`OrchestratorError::NotFound`] for an unknown conversation;
    /// [`OrchestratorError::InvalidSetting`] for an invalid value (see
    /// [`Policy::resolve`]; nothing is stored); [`OrchestratorError::Db`] when the store
    /// fails.
    pub async fn change_settings(
        &self,
        conversation_id: Uuid,
        change: SettingsChange,
    ) -> Result<SettingsChanged, OrchestratorError> {
        let mut client = self.pool().get().await.map_err(parley_db::DbError::from)?;
        let tx = client.transaction().await.map_err(parley_db::DbError::from)?;
        let current = conversation::lock(&tx, conversation_id).await?;
        let settings = self.settings_policy().resolve(&current.settings(), change).await?;
        let changed = store(&tx, &current, &settings).await?;
        tx.commit().await.map_err(parley_db::DbError::from)?;
        Ok(changed)
    }

    /// What a run of `conversation` passes to its assistant (see [`Policy::run_settings`]).
    #[must_use]
    pub fn run_settings(&self, conversation: &Conversation) -> RunSettings {
        self.settings_policy().run_settings(conversation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> Policy {
        let assistants = BTreeMap::from([
            ("claude".to_owned(), parley_assistant::CLAUDE_PERMISSION_MODES),
            ("codex".to_owned(), parley_assistant::CODEX_SANDBOX_MODES),
            ("demo".to_owned(), &[][..]),
        ]);
        Policy::new(assistants, &allowed.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), None).unwrap_or_default()
    }

    fn claude() -> Settings {
        Settings { assistant: "claude".into(), ..Settings::default() }
    }

    fn code(result: Result<Settings, OrchestratorError>) -> &'static str {
        match result {
            Err(OrchestratorError::InvalidSetting { code, .. }) => code,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn permission_modes_come_from_the_allowed_set_and_the_assistant() {
        let p = policy(&["plan", "read-only", "acceptEdits"]);
        assert_eq!(p.permission_modes("claude"), ["plan", "acceptEdits"]);
        assert_eq!(p.permission_modes("codex"), ["read-only"]);
        assert!(p.permission_modes("demo").is_empty());
        let set = |m: &str| SettingsChange { permission_mode: Some(Some(m.to_owned())), ..SettingsChange::default() };
        assert_eq!(
            p.resolve(&claude(), set("plan")).await.ok().and_then(|s| s.permission_mode).as_deref(),
            Some("plan")
        );
        assert_eq!(code(p.resolve(&claude(), set("bypassPermissions")).await), "invalid_permission_mode");
        assert_eq!(code(p.resolve(&claude(), set("read-only")).await), "invalid_permission_mode");
        // A stored mode the new assistant does not know must be changed with it.
        let planned = Settings { permission_mode: Some("plan".into()), ..claude() };
        let to_codex = SettingsChange { assistant: Some("codex".into()), ..SettingsChange::default() };
        assert_eq!(code(p.resolve(&planned, to_codex.clone()).await), "invalid_permission_mode");
        let both = SettingsChange { permission_mode: Some(None), ..to_codex };
        let moved = p.resolve(&planned, both).await.expect("assistant and mode change together");
        assert_eq!((moved.assistant.as_str(), moved.permission_mode), ("codex", None));
    }

    #[test]
    fn an_allowed_mode_no_assistant_knows_is_refused_at_start() {
        let assistants = BTreeMap::from([("claude".to_owned(), parley_assistant::CLAUDE_PERMISSION_MODES)]);
        let err = Policy::new(assistants, &["yolo".to_owned()], None).expect_err("unknown mode");
        assert!(err.to_string().contains("yolo"), "{err}");
    }

    #[tokio::test]
    async fn values_are_checked_and_blank_means_default() {
        let p = policy(&[]);
        let current = Settings { model: Some("opus".into()), ..claude() };
        let model = |m: &str| SettingsChange { model: Some(Some(m.to_owned())), ..SettingsChange::default() };
        for bad in ["--dangerously-skip-permissions", "gpt 5", "a\"b", &"m".repeat(MAX_MODEL_CHARS + 1)] {
            assert_eq!(code(p.resolve(&current, model(bad)).await), "invalid_model", "{bad:?}");
        }
        for good in ["claude-sonnet-4-5", "sonnet[1m]", "openai/gpt-4o", "llama3.2:8b", "us.anthropic.claude@v1"] {
            assert_eq!(p.resolve(&current, model(good)).await.ok().and_then(|s| s.model).as_deref(), Some(good));
        }
        assert_eq!(p.resolve(&current, model("  ")).await.ok().map(|s| s.model), Some(None));
        let prompt = |t: String| SettingsChange { system_prompt: Some(Some(t)), ..SettingsChange::default() };
        assert_eq!(
            code(p.resolve(&current, prompt("x".repeat(MAX_SYSTEM_PROMPT_CHARS + 1))).await),
            "invalid_system_prompt"
        );
        assert_eq!(code(p.resolve(&current, prompt("a\0b".into())).await), "invalid_system_prompt");
        let title = SettingsChange { title: Some("t".repeat(MAX_TITLE_CHARS + 1)), ..SettingsChange::default() };
        assert_eq!(code(p.resolve(&current, title).await), "invalid_title");
        let assistant = SettingsChange { assistant: Some("gpt".into()), ..SettingsChange::default() };
        assert_eq!(code(p.resolve(&current, assistant).await), "invalid_assistant");
        let cwd = SettingsChange { cwd: Some(Some("docs".into())), ..SettingsChange::default() };
        assert_eq!(code(p.resolve(&current, cwd).await), "invalid_cwd", "no workspace root: no named directory");
    }
}
