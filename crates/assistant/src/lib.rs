//! The assistant side of Parley: the [`Assistant`] trait every adapter implements, the
//! [`Chunk`]s a run produces, and [`AssistantError`], whose
//! [`AssistantError::StaleSession`] drives Parley's session recovery.
//!
//! This crate knows nothing of PostgreSQL: an adapter turns one [`RunRequest`] into a
//! stream of chunks and reports the assistant session ID it ran in.

// Unsafe code is denied; `process::die_with_parent` alone is allowed it (`pre_exec`).
#![deny(unsafe_code)]

pub mod claude;
pub mod codex;
pub mod demo;
pub mod metrics;
pub mod openai;
pub mod openai_chat;
pub mod process;
pub mod run_marker;
mod sse;
pub mod warm;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use claude::{CLAUDE_PERMISSION_MODES, Claude, ClaudeConfig, WarmConfig};
pub use codex::{CODEX_SANDBOX_MODES, Codex, CodexConfig};
pub use demo::{Demo, DemoConfig};
pub use openai::{OpenAi, OpenAiConfig};
pub use openai_chat::{OpenAiChat, OpenAiChatConfig};
pub use process::ProcessLimits;

/// One run of an assistant: answer `prompt`, optionally resuming a stored session.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The full prompt: the new message, preceded by rebuilt history when the session
    /// is fresh. Adapters send it on stdin or in a request body, never in argv.
    pub prompt: String,
    /// The new user message alone (a suffix of `prompt`).
    pub message: String,
    /// How many earlier messages `prompt` carries (0 when resuming).
    pub history_messages: usize,
    /// The assistant session ID to resume, when the conversation has one.
    pub resume: Option<String>,
    /// The working directory for CLI assistants.
    pub cwd: Option<PathBuf>,
    /// Fired when the turn is cancelled; the adapter stops and releases its resources.
    pub cancel: CancellationToken,
    /// Marks every process of this run ([`run_marker::RUN_ID_ENV`]), so that the run's
    /// owner can find and kill them wherever they went ([`run_marker::end_run`]).
    pub run_id: uuid::Uuid,
    /// The conversation's own settings, over the adapter's configured defaults.
    pub settings: RunSettings,
    /// The conversation's warm process, for adapters that keep one
    /// (`docs/architecture.md#warm-processes`); `None` runs a process for this run only.
    pub warm: Option<WarmKey>,
}

/// Which warm process a run may use: the conversation's, and whether it may be reused
/// or must be replaced (another replica answered a turn since this one kept it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmKey {
    /// The conversation the process belongs to.
    pub conversation_id: uuid::Uuid,
    /// False when this server's warm process of the conversation may have missed a turn
    /// (another replica ran the conversation since): it is killed and the run starts cold.
    pub may_reuse: bool,
}

/// A process started ahead of a conversation's next message ([`Assistant::prewarm`]).
#[derive(Debug, Clone)]
pub struct Prewarm {
    /// The conversation.
    pub conversation_id: uuid::Uuid,
    /// The assistant session ID its next run will resume (`None`: a fresh session).
    pub resume: Option<String>,
    /// Its working directory.
    pub cwd: Option<PathBuf>,
    /// Its settings, as its next run will have them.
    pub settings: RunSettings,
}

/// A conversation's own settings for one run; `None` keeps the adapter's configured
/// default. What each adapter does with them:
///
/// | setting | `claude` | `codex` | `openai` | `openai-chat` | `demo` |
/// |---|---|---|---|---|---|
/// | `model` | `--model` | `--model` | `model` | `model` | named in the reply |
/// | `append_system_prompt` | `--append-system-prompt` | `-c developer_instructions=…` | appended to `instructions` | appended to the system message | ignored |
/// | `permission_mode` | `--permission-mode` | `--sandbox` | none (no tools run) | none | none |
///
/// The permission modes an adapter accepts are [`Assistant::permission_modes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// The model to run.
    pub model: Option<String>,
    /// Text appended to the assistant's system prompt (or instructions).
    pub append_system_prompt: Option<String>,
    /// The permission mode, one of [`Assistant::permission_modes`].
    pub permission_mode: Option<String>,
}

impl RunSettings {
    /// The model: this run's, else `configured`.
    #[must_use]
    pub fn model_or<'a>(&'a self, configured: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(configured)
    }

    /// A configured system prompt with this run's text appended after a blank line
    /// (either may be absent); `None` when both are.
    #[must_use]
    pub fn system_prompt_after(&self, configured: Option<&str>) -> Option<String> {
        match (configured, self.append_system_prompt.as_deref()) {
            (Some(base), Some(extra)) => Some(format!("{base}\n\n{extra}")),
            (base, extra) => base.or(extra).map(str::to_owned),
        }
    }
}

/// Token usage reported by an assistant for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (generated) tokens.
    pub output_tokens: u64,
}

/// A piece of an assistant's run, in the order produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Chunk {
    /// The assistant reports which session it runs in (Claude `system/init`, Codex
    /// `thread.started`, an OpenAI response id). Comes before any text when it comes.
    SessionStarted {
        /// The assistant session ID.
        id: String,
    },
    /// A piece of reply text, to be appended to what came before.
    Text {
        /// The text.
        text: String,
    },
    /// A piece of the assistant's visible reasoning.
    Thinking {
        /// The text.
        text: String,
    },
    /// The assistant calls a tool.
    ToolUse {
        /// The tool call's id, matching a later [`Chunk::ToolResult`].
        id: String,
        /// The tool's name.
        name: String,
        /// The tool's input, as the assistant gave it.
        input: serde_json::Value,
    },
    /// A tool call's result.
    ToolResult {
        /// The tool call's id.
        id: String,
        /// True when the tool failed.
        is_error: bool,
        /// The output, possibly truncated by the adapter.
        output: String,
    },
    /// The run ended successfully. Always the last chunk of a successful run.
    Completed {
        /// The session the run ended in, when the assistant reports it there.
        session_id: Option<String>,
        /// Tokens used.
        usage: Option<Usage>,
        /// Cost in US dollars, when reported.
        cost_usd: Option<f64>,
        /// Wall-clock time the assistant reports, in milliseconds.
        duration_ms: Option<u64>,
    },
}

/// What replaces NUL (U+0000) in assistant output made storable: U+FFFD REPLACEMENT
/// CHARACTER, the same mark invalid UTF-8 gets.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Replaces every NUL in `s` by [`NUL_REPLACEMENT`].
fn replace_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

/// Replaces every NUL in the strings and object keys of `v` by [`NUL_REPLACEMENT`]. Two
/// keys that become equal keep the value of the later one.
fn replace_nul_in_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => replace_nul(s),
        Value::Array(items) => items.iter_mut().for_each(replace_nul_in_json),
        Value::Object(map) if map.keys().any(|k| k.contains('\0')) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(mut k, mut v)| {
                    replace_nul(&mut k);
                    replace_nul_in_json(&mut v);
                    (k, v)
                })
                .collect();
        }
        Value::Object(map) => map.values_mut().for_each(replace_nul_in_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

impl Chunk {
    /// This chunk with every NUL (U+0000) in its strings — text, IDs, names, tool input
    /// keys and values, tool output — replaced by [`NUL_REPLACEMENT`].
    ///
    /// PostgreSQL `text` and `jsonb` cannot hold U+0000, and an assistant may print it
    /// (a `\u0000` escape in a JSON line, a raw byte from a tool); whatever stores a
    /// run's output applies this first, so such output cannot fail the write.
    #[must_use]
    pub fn without_nul(mut self) -> Self {
        match &mut self {
            Self::SessionStarted { id } => replace_nul(id),
            Self::Text { text } | Self::Thinking { text } => replace_nul(text),
            Self::ToolUse { id, name, input } => {
                replace_nul(id);
                replace_nul(name);
                replace_nul_in_json(input);
            }
            Self::ToolResult { id, output, .. } => {
                replace_nul(id);
                replace_nul(output);
            }
            Self::Completed { session_id, .. } => {
                if let Some(id) = session_id {
                    replace_nul(id);
                }
            }
        }
        self
    }
}

/// Why a run failed. The orchestrator branches on the variant.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum AssistantError {
    /// The assistant cannot resume the session it was asked to resume (a transcript,
    /// rollout or stored response is gone). Parley recovers by starting a fresh session
    /// with the conversation's history.
    #[error("assistant session {session_id} cannot be resumed: {detail}")]
    StaleSession {
        /// The assistant session ID that was asked for.
        session_id: String,
        /// What the assistant said.
        detail: String,
    },
    /// The model API failed (overloaded, rate-limited, bad request, not logged in…).
    #[error("assistant API error: {message}")]
    Api {
        /// A readable message for the user.
        message: String,
        /// The HTTP status, when known.
        status: Option<u16>,
    },
    /// The run exceeded a time limit.
    #[error("assistant timed out: {0}")]
    Timeout(String),
    /// The assistant process exited without a usable result.
    #[error("assistant exited with {code:?}: {stderr}")]
    Exited {
        /// The exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// The tail of its standard error.
        stderr: String,
    },
    /// The assistant's output could not be understood.
    #[error("assistant protocol error: {0}")]
    Protocol(String),
    /// The run ended because it was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The run stopped for a reason of its own (maximum turns, budget…).
    #[error("{0}")]
    Refused(String),
}

impl AssistantError {
    /// This error with every NUL (U+0000) in its text replaced by [`NUL_REPLACEMENT`]:
    /// its message is stored as the turn's and the session's error (see
    /// [`Chunk::without_nul`]).
    #[must_use]
    pub fn without_nul(mut self) -> Self {
        match &mut self {
            Self::StaleSession { session_id, detail } => {
                replace_nul(session_id);
                replace_nul(detail);
            }
            Self::Api { message, .. } => replace_nul(message),
            Self::Exited { stderr, .. } => replace_nul(stderr),
            Self::Timeout(text) | Self::Protocol(text) | Self::Refused(text) => replace_nul(text),
            Self::Cancelled => {}
        }
        self
    }
}

/// An AI assistant that can answer a prompt, streaming [`Chunk`]s.
///
/// Implementations must be cheap to share (`Arc<dyn Assistant>`), must honour
/// [`RunRequest::cancel`], and must end a successful run with [`Chunk::Completed`].
pub trait Assistant: Send + Sync + 'static {
    /// The assistant's name as stored in `conversation.assistant` (`demo`, `claude`, …).
    fn name(&self) -> &str;

    /// Starts a run. The stream yields chunks until `Completed`, or one error and ends.
    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>>;

    /// The permission modes [`RunSettings::permission_mode`] may name for this assistant,
    /// most restrictive first; empty when it has none (it runs no tools on the host).
    fn permission_modes(&self) -> &'static [&'static str] {
        &[]
    }

    /// The directory this assistant keeps its own session files under (Claude's config
    /// directory, `CODEX_HOME`); `None` for an assistant without session files. A stored
    /// [`SessionFile::relative`] is restored under it (see `docs/architecture.md#transcripts`).
    fn session_home(&self) -> Option<PathBuf> {
        None
    }

    /// Where the session file of `assistant_session_id` is (Claude's transcript, Codex's
    /// rollout) when the CLI runs in `cwd` (`None`: Parley's own working directory).
    /// `None` when this assistant keeps no such file, or (Codex, which names the file by
    /// its creation time) when it cannot be found on this machine. The file may not exist
    /// yet (Claude's path is computed). Cheap enough to call once per turn.
    fn session_file(&self, _assistant_session_id: &str, _cwd: Option<&Path>) -> Option<SessionFile> {
        None
    }

    /// This adapter's warm processes, when it keeps them between runs
    /// (`docs/architecture.md#warm-processes`).
    fn warm(&self) -> Option<Arc<dyn warm::WarmProcesses>> {
        None
    }

    /// True when this adapter keeps warm processes between runs.
    fn keeps_warm(&self) -> bool {
        self.warm().is_some()
    }

    /// Starts a conversation's process before its next message arrives, when the adapter
    /// keeps warm processes, has room, and neither holds one for the conversation nor
    /// runs one of its turns; the future ends once the process was started and kept
    /// (never fails: a failure is logged).
    fn prewarm(&self, prewarm: Prewarm) -> futures::future::BoxFuture<'static, ()> {
        let _ = prewarm;
        Box::pin(std::future::ready(()))
    }

    /// True when the conversation has an idle warm process here.
    fn is_warm(&self, conversation_id: uuid::Uuid) -> bool {
        self.warm().is_some_and(|w| w.holds(conversation_id))
    }

    /// Kills the conversation's warm process, if any (another replica took its turn).
    fn forget_warm(&self, conversation_id: uuid::Uuid) {
        if let Some(w) = self.warm() {
            w.forget(conversation_id);
        }
    }

    /// Kills every warm process and waits for them to be gone (at shutdown).
    fn stop_warm(&self) -> futures::future::BoxFuture<'static, ()> {
        match self.warm() {
            Some(w) => Box::pin(async move { w.stop_all().await }),
            None => Box::pin(std::future::ready(())),
        }
    }
}

/// A CLI's home as the CLI gets it: `configured`, else the environment variable `var`
/// of Parley's environment, else `$HOME/<dot_dir>`.
fn cli_home(configured: Option<&Path>, var: &str, dot_dir: &str) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(dot_dir)))
}

/// An assistant's own file of one session: its transcript (Claude Code) or rollout
/// (Codex), append-only JSON lines that the CLI resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFile {
    /// The assistant's home: [`Assistant::session_home`].
    pub home: PathBuf,
    /// The file's path under `home`: plain names only (see [`is_plain_relative`]).
    pub relative: PathBuf,
}

impl SessionFile {
    /// The file's absolute path.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.home.join(&self.relative)
    }
}

/// True when `path` is relative and made of plain names only (no `..`, `.` or root), so
/// that joined to a directory it stays inside it.
#[must_use]
pub fn is_plain_relative(path: &Path) -> bool {
    path.components().next().is_some() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A secret string (an API key, a platform token), held in a [`secrecy::SecretString`]
/// so it is zeroed in memory when dropped and read only through [`Secret::expose`]. Its
/// `Debug` and `Display` print `[redacted]`, so it never reaches a log line by accident.
/// It has no `PartialEq`: compare secrets in constant time where they are checked
/// (webhook verification does).
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into())
    }

    /// The secret value, for the one place that sends it (a header, a child's environment).
    #[must_use]
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A short human form of a duration, e.g. `1.5s`, used in error messages.
#[must_use]
pub fn human_duration(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
