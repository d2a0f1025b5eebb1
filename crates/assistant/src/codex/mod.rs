//! The `codex` assistant: the Codex CLI, as one warm `codex app-server` per active
//! conversation ([`app_server`], `docs/architecture.md#warm-processes`), or once per turn
//! as `codex exec` when warm processes are off ([`CodexConfig::warm`]).
//!
//! `codex exec` command line (observed with codex-cli 0.169.0):
//! `codex exec --json --skip-git-repo-check [--model M] [--sandbox S] [-c k=v…]
//! [resume THREAD_ID] -`, the prompt on stdin (`-`), in the conversation's `cwd`, with
//! the same process care as `claude` ([`crate::process`]) and `CODEX_HOME` configurable.
//!
//! Output: one JSON event per line ([`CodexStream`]): `thread.started {thread_id}`,
//! `turn.started`, `item.started` / `item.updated` / `item.completed` with items of type
//! `agent_message`, `reasoning`, `command_execution`, `file_change`, `mcp_tool_call`,
//! `web_search`, `todo_list`, `error`; `turn.completed {usage}`, `turn.failed {error}`,
//! and `error {message}` (`Reconnecting... n/5` ones are progress, not failures).
//!
//! Stale (exactly): a resume whose stderr says "no rollout found for thread id",
//! "rollout … is empty" or "rollout … does not start with session metadata", or whose
//! `thread.started.thread_id` differs from the ID resumed (codex 0.169.0 silently starts
//! a new thread for an unknown thread *name*).
//!
//! `turn.completed.usage` is a running total for the whole thread: it is reported as is,
//! never added up across turns.
//!
//! A conversation's own settings ([`crate::RunSettings`]): the model replaces `--model`,
//! the permission mode replaces `--sandbox` (Codex's equivalent: one of
//! [`CODEX_SANDBOX_MODES`]), and the appended system prompt becomes
//! `-c developer_instructions="…"` (a TOML string; the config key of codex-cli 0.169.0
//! for instructions added to its own).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tracing::{debug, info, warn};

pub mod app_server;

use crate::process::{CliProcess, Output, ProcessLimits, ProcessSpec, cli_env};
use crate::warm::{WarmConfig, WarmPool, WarmProcesses};
use crate::{Assistant, AssistantError, Chunk, Prewarm, RunRequest, RunSettings, Secret, SessionFile, Usage, WarmKey};
use app_server::AppServer;

/// Environment name prefixes the Codex CLI inherits from Parley's environment.
pub const CODEX_ENV_PREFIXES: &[&str] = &["OPENAI_", "CODEX_"];

/// The `--sandbox` choices of codex-cli 0.169.0 (`codex exec --help`), most restrictive
/// first: the permission modes of a `codex` conversation.
pub const CODEX_SANDBOX_MODES: &[&str] = &["read-only", "workspace-write", "danger-full-access"];

/// Settings of the `codex` assistant.
#[derive(Debug, Clone)]
pub struct CodexConfig {
    /// The `codex` executable (default: `codex`, looked up on `PATH`).
    pub binary: PathBuf,
    /// `CODEX_HOME`: its config and rollouts. Keep it stable (a volume) so threads
    /// survive restarts. `None`: inherited, else `~/.codex`.
    pub home: Option<PathBuf>,
    /// `--model`.
    pub model: Option<String>,
    /// `--sandbox` (`read-only`, `workspace-write`, `danger-full-access`).
    pub sandbox: Option<String>,
    /// `-c key=value` overrides.
    pub config_overrides: Vec<String>,
    /// `OPENAI_API_KEY` for the CLI; `None`: inherited from Parley's environment.
    pub api_key: Option<Secret>,
    /// More environment variable names the CLI may inherit.
    pub pass_env: Vec<String>,
    /// Process limits.
    pub limits: ProcessLimits,
    /// Warm processes: one live `codex app-server` per active conversation
    /// (`docs/architecture.md#warm-processes`); [`WarmConfig::max_processes`] 0 runs
    /// `codex exec` per turn instead.
    pub warm: WarmConfig,
}

impl Default for CodexConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("codex"),
            home: None,
            model: None,
            sandbox: None,
            config_overrides: Vec::new(),
            api_key: None,
            pass_env: Vec::new(),
            limits: ProcessLimits::default(),
            warm: WarmConfig::default(),
        }
    }
}

impl CodexConfig {
    /// The CLI arguments for a run with a conversation's `settings` that resumes
    /// `resume` (or starts fresh).
    #[must_use]
    pub fn args(&self, settings: &RunSettings, resume: Option<&str>) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["exec", "--json", "--skip-git-repo-check"].iter().map(OsString::from).collect();
        if let Some(m) = &settings.model {
            args.push(format!("--model={m}").into());
        } else if let Some(m) = &self.model {
            args.extend(["--model".into(), m.into()]);
        }
        if let Some(s) = &settings.permission_mode {
            args.push(format!("--sandbox={s}").into());
        } else if let Some(s) = &self.sandbox {
            args.extend(["--sandbox".into(), s.into()]);
        }
        for c in &self.config_overrides {
            args.extend(["-c".into(), c.into()]);
        }
        if let Some(prompt) = &settings.append_system_prompt {
            // A JSON string is a valid TOML basic string (the escapes JSON writes are TOML's too).
            let quoted = serde_json::to_string(prompt).unwrap_or_default();
            args.extend(["-c".into(), format!("developer_instructions={quoted}").into()]);
        }
        if let Some(id) = resume {
            args.extend(["resume".into(), id.into()]);
        }
        args.push("-".into());
        args
    }

    /// The CLI's complete environment, from `vars` (Parley's environment).
    #[must_use]
    pub fn env(&self, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
        let mut explicit = vec![("RUST_BACKTRACE".to_owned(), "0".to_owned())];
        if let Some(home) = &self.home {
            explicit.push(("CODEX_HOME".to_owned(), home.display().to_string()));
        }
        if let Some(key) = &self.api_key {
            explicit.push(("OPENAI_API_KEY".to_owned(), key.expose().to_owned()));
        }
        cli_env(vars, &self.pass_env, CODEX_ENV_PREFIXES, &explicit)
    }
}

/// The `codex` assistant.
#[derive(Debug, Clone, Default)]
pub struct Codex {
    config: CodexConfig,
    /// Rollouts found by [`Assistant::session_file`], by thread ID (paths under the home).
    rollouts: Arc<Mutex<HashMap<String, PathBuf>>>,
    /// Its warm processes; `None` when [`WarmConfig::max_processes`] is 0.
    warm: Option<Arc<WarmPool<AppServer>>>,
}

impl Codex {
    /// A Codex assistant with these settings.
    #[must_use]
    pub fn new(config: CodexConfig) -> Self {
        let warm = (config.warm.max_processes > 0).then(|| WarmPool::new("codex", config.warm.clone()));
        Self { config, rollouts: Arc::default(), warm }
    }

    /// A run on the conversation's warm `app-server`: the idle one when it still fits,
    /// else a new one (resuming the thread) that is kept after the turn.
    fn run_warm(
        &self,
        pool: Arc<WarmPool<AppServer>>,
        key: WarmKey,
        request: RunRequest,
    ) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        let config = self.config.clone();
        let fingerprint = app_server::Fingerprint::of(&config, &request.settings, request.cwd.as_deref());
        let resume = request.resume.clone();
        let unfit = move |p: &mut AppServer| p.unfit(&key, &fingerprint, resume.as_deref());
        let (settings, cwd, resume) = (request.settings, request.cwd, request.resume);
        let start = async move { AppServer::start(&config, &settings, cwd, resume).await };
        let (prompt, cancel, run_id) = (request.prompt, request.cancel, request.run_id);
        let turn = move |pool, server| app_server::turn(pool, key.conversation_id, server, prompt, cancel, run_id);
        crate::warm::run(pool, key, run_id, unfit, start, turn)
    }
}

/// Finds the rollout of `thread_id` under `home`: `sessions/YYYY/MM/DD/rollout-<local
/// time>-<thread ID>.jsonl` (codex-cli 0.169.0), newest day first. Returns its path
/// relative to `home`.
#[must_use]
pub fn find_rollout(home: &Path, thread_id: &str) -> Option<PathBuf> {
    let suffix = format!("-{thread_id}.jsonl");
    let sorted_dirs = |dir: &Path| -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        dirs.sort_unstable_by(|a, b| b.cmp(a));
        dirs
    };
    let sessions = home.join("sessions");
    for year in sorted_dirs(&sessions) {
        for month in sorted_dirs(&year) {
            for day in sorted_dirs(&month) {
                let Ok(entries) = std::fs::read_dir(&day) else { continue };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with("rollout-") && name.ends_with(&suffix) {
                        return entry.path().strip_prefix(home).ok().map(Path::to_path_buf);
                    }
                }
            }
        }
    }
    None
}

impl Assistant for Codex {
    fn name(&self) -> &str {
        "codex"
    }

    fn permission_modes(&self) -> &'static [&'static str] {
        CODEX_SANDBOX_MODES
    }

    /// `CODEX_HOME` as the CLI gets it ([`CodexConfig::home`], else Parley's
    /// environment), else `$HOME/.codex` (codex-cli 0.169.0).
    fn session_home(&self) -> Option<PathBuf> {
        crate::cli_home(self.config.home.as_deref(), "CODEX_HOME", ".codex")
    }

    /// The thread's rollout ([`find_rollout`]); a path found once is remembered while
    /// the file exists, so a turn's lookup costs one `stat`.
    fn session_file(&self, assistant_session_id: &str, _cwd: Option<&Path>) -> Option<SessionFile> {
        if assistant_session_id.is_empty()
            || !assistant_session_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let home = self.session_home()?;
        let mut known = self.rollouts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(relative) = known.get(assistant_session_id)
            && home.join(relative).is_file()
        {
            return Some(SessionFile { home, relative: relative.clone() });
        }
        let relative = find_rollout(&home, assistant_session_id)?;
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(assistant_session_id.to_owned(), relative.clone());
        Some(SessionFile { home, relative })
    }

    fn warm(&self) -> Option<Arc<dyn WarmProcesses>> {
        self.warm.clone().map(|pool| pool as Arc<dyn WarmProcesses>)
    }

    fn prewarm(&self, prewarm: Prewarm) -> futures::future::BoxFuture<'static, ()> {
        let Some(pool) = self.warm.clone() else { return Box::pin(std::future::ready(())) };
        let config = self.config.clone();
        let conversation_id = prewarm.conversation_id;
        let start = async move { AppServer::start(&config, &prewarm.settings, prewarm.cwd, prewarm.resume).await };
        Box::pin(pool.prewarm(conversation_id, start))
    }

    fn run(&self, mut request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        if let (Some(pool), Some(key)) = (self.warm.clone(), request.warm.take()) {
            return self.run_warm(pool, key, request);
        }
        let spec = ProcessSpec {
            program: self.config.binary.clone(),
            args: self.config.args(&request.settings, request.resume.as_deref()),
            cwd: request.cwd.clone(),
            env: self.config.env(std::env::vars_os()),
            stdin: request.prompt,
            limits: self.config.limits.clone(),
            assistant: "codex",
            run_id: request.run_id,
        };
        let resume = request.resume;
        let cancel = request.cancel;
        async_stream::stream! {
            if let Some(cwd) = &spec.cwd
                && let Err(e) = tokio::fs::create_dir_all(cwd).await {
                    warn!(cwd = %cwd.display(), error = %e, "cannot create the conversation's working directory");
                }
            let mut process = match CliProcess::spawn(spec).await {
                Ok(p) => p,
                Err(e) => { yield Err(e); return; }
            };
            let mut parser = CodexStream::new(resume);
            loop {
                match process.next(&cancel).await {
                    Ok(Output::Line(line)) => {
                        match parser.line(&line) {
                            Ok(chunks) => for chunk in chunks { yield Ok(chunk); },
                            Err(e) => {
                                // A new thread instead of the one resumed: stop it at once.
                                let _ = process.stop().await;
                                yield Err(e);
                                return;
                            }
                        }
                        if parser.is_done() {
                            break;
                        }
                    }
                    Ok(Output::Oversized { bytes }) => warn!(bytes, "skipped an over-long codex output line"),
                    Ok(Output::Eof) => break,
                    Err(e) => { yield Err(e); return; }
                }
            }
            let exit = process.finish().await;
            yield parser.finish(exit.code, &exit.stderr);
        }
        .boxed()
    }
}

/// Parser state for one `codex exec --json` run.
#[derive(Debug, Default)]
pub struct CodexStream {
    resumed: Option<String>,
    thread_id: Option<String>,
    usage: Option<Usage>,
    completed: bool,
    failed: Option<String>,
    last_error: Option<String>,
    started_tools: Vec<String>,
    messages: usize,
}

impl CodexStream {
    /// A parser for a run that resumed `resumed` (or started fresh when `None`).
    #[must_use]
    pub fn new(resumed: Option<String>) -> Self {
        Self { resumed, ..Self::default() }
    }

    /// True once `turn.completed` or `turn.failed` was read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.completed || self.failed.is_some()
    }

    /// Parses one stdout line into the chunks it carries.
    ///
    /// # Errors
    /// [`AssistantError::StaleSession`] when `thread.started` names another thread than
    /// the one resumed.
    pub fn line(&mut self, line: &str) -> Result<Vec<Chunk>, AssistantError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let shown: String = line.chars().take(200).collect();
                warn!(line = %shown, "skipping a codex output line that is not a JSON object");
                return Ok(Vec::new());
            }
        };
        let chunks = match str_at(&v, "type") {
            Some("thread.started") => {
                let Some(id) = str_at(&v, "thread_id").map(str::to_owned) else { return Ok(Vec::new()) };
                if let Some(resumed) = &self.resumed
                    && *resumed != id
                {
                    return Err(AssistantError::StaleSession {
                        session_id: resumed.clone(),
                        detail: format!("codex started a new thread {id} instead of resuming {resumed}"),
                    });
                }
                self.thread_id = Some(id.clone());
                vec![Chunk::SessionStarted { id }]
            }
            Some("item.started" | "item.updated") => self.item(v.get("item").unwrap_or(&Value::Null), false),
            Some("item.completed") => self.item(v.get("item").unwrap_or(&Value::Null), true),
            Some("turn.completed") => {
                self.usage = v.get("usage").map(|u| {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    Usage { input_tokens: n("input_tokens"), output_tokens: n("output_tokens") }
                });
                self.completed = true;
                Vec::new()
            }
            Some("turn.failed") => {
                let message = v.get("error").and_then(|e| str_at(e, "message")).unwrap_or("the turn failed");
                self.failed = Some(readable(message));
                Vec::new()
            }
            Some("error") => {
                let message = str_at(&v, "message").unwrap_or_default();
                if message.starts_with("Reconnecting") {
                    info!(%message, "codex is reconnecting to the model API");
                } else {
                    self.last_error = Some(readable(message));
                }
                Vec::new()
            }
            other => {
                debug!(r#type = ?other, "ignoring a codex event");
                Vec::new()
            }
        };
        Ok(chunks)
    }

    fn item(&mut self, item: &Value, completed: bool) -> Vec<Chunk> {
        let id = str_at(item, "id").unwrap_or_default().to_owned();
        let failed = str_at(item, "status") == Some("failed");
        match str_at(item, "type") {
            Some("agent_message") if completed => {
                let Some(text) = str_at(item, "text").filter(|t| !t.is_empty()) else { return Vec::new() };
                self.messages += 1;
                let text = if self.messages > 1 { format!("\n\n{text}") } else { text.to_owned() };
                vec![Chunk::Text { text }]
            }
            Some("reasoning") if completed => str_at(item, "text")
                .filter(|t| !t.is_empty())
                .map(|t| vec![Chunk::Thinking { text: t.to_owned() }])
                .unwrap_or_default(),
            Some("command_execution") => ToolItem {
                name: "command_execution".into(),
                input: serde_json::json!({ "command": str_at(item, "command").unwrap_or_default() }),
                result: completed.then(|| {
                    let code = item.get("exit_code").and_then(Value::as_i64);
                    (
                        failed || code.is_some_and(|c| c != 0),
                        str_at(item, "aggregated_output").unwrap_or_default().to_owned(),
                    )
                }),
            }
            .chunks(&id, &mut self.started_tools),
            Some("file_change") => {
                let changes = item.get("changes").cloned().unwrap_or(Value::Null);
                let summary = changes_summary(&changes, |c| str_at(c, "kind"));
                ToolItem {
                    name: "file_change".into(),
                    input: serde_json::json!({ "changes": changes }),
                    result: completed.then_some((failed, summary)),
                }
                .chunks(&id, &mut self.started_tools)
            }
            Some("mcp_tool_call") => mcp_tool_call(item, completed, failed).chunks(&id, &mut self.started_tools),
            Some("web_search") => ToolItem {
                name: "web_search".into(),
                input: serde_json::json!({ "query": str_at(item, "query").unwrap_or_default() }),
                result: None,
            }
            .chunks(&id, &mut self.started_tools),
            Some("error") => {
                warn!(message = ?str_at(item, "message"), "codex reported an error item");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Decides the run's outcome once the process exited.
    ///
    /// # Errors
    /// [`AssistantError::StaleSession`] for a missing or empty rollout on resume,
    /// [`AssistantError::Api`] for `turn.failed` / `error` events,
    /// [`AssistantError::Exited`] or [`AssistantError::Protocol`] otherwise.
    pub fn finish(&self, exit_code: Option<i32>, stderr: &str) -> Result<Chunk, AssistantError> {
        if let Some(resumed) = &self.resumed
            && self.thread_id.is_none()
            && is_missing_rollout(stderr)
        {
            let detail = stderr.lines().find(|l| l.contains("rollout")).unwrap_or(stderr).trim().to_owned();
            return Err(AssistantError::StaleSession { session_id: resumed.clone(), detail });
        }
        if let Some(message) = &self.failed {
            return Err(AssistantError::Api { message: message.clone(), status: None });
        }
        if self.completed {
            return Ok(Chunk::Completed {
                session_id: self.thread_id.clone(),
                usage: self.usage,
                cost_usd: None,
                duration_ms: None,
            });
        }
        if let Some(message) = &self.last_error {
            return Err(AssistantError::Api { message: message.clone(), status: None });
        }
        let stderr: String = stderr
            .lines()
            .filter(|l| !l.starts_with("Reading additional input from stdin"))
            .collect::<Vec<_>>()
            .join("\n");
        Err(if exit_code == Some(0) {
            AssistantError::Protocol("codex exited without turn.completed".into())
        } else {
            AssistantError::Exited {
                code: exit_code,
                stderr: if stderr.is_empty() { "no output".into() } else { stderr },
            }
        })
    }
}

/// An MCP tool call item; its fields are named alike in both of codex's output formats
/// (`server`, `tool`, `arguments`, `result.content`, `error.message`).
fn mcp_tool_call(item: &Value, completed: bool, failed: bool) -> ToolItem {
    let error = item.get("error").filter(|e| !e.is_null());
    ToolItem {
        name: format!("{}.{}", str_at(item, "server").unwrap_or("mcp"), str_at(item, "tool").unwrap_or("tool")),
        input: item.get("arguments").cloned().unwrap_or(Value::Null),
        result: completed.then(|| match error {
            Some(e) => (true, str_at(e, "message").map_or_else(|| e.to_string(), str::to_owned)),
            None => (failed, mcp_output(item.get("result").unwrap_or(&Value::Null))),
        }),
    }
}

/// One line `kind path` per changed file of a file change item, `kind` read from each
/// change by `kind_of`.
fn changes_summary(changes: &Value, kind_of: impl Fn(&Value) -> Option<&str>) -> String {
    let Some(changes) = changes.as_array() else { return String::new() };
    let lines: Vec<String> =
        changes.iter().map(|c| format!("{} {}", kind_of(c).unwrap_or("?"), str_at(c, "path").unwrap_or("?"))).collect();
    lines.join("\n")
}

/// A tool call as both of codex's output formats describe it (`codex exec --json` items
/// and app-server thread items): its name and input, and once it completed, whether it
/// failed and its output.
#[derive(Debug)]
struct ToolItem {
    name: String,
    input: Value,
    result: Option<(bool, String)>,
}

impl ToolItem {
    /// A `ToolUse` chunk the first time item `id` is seen (`started` remembers them),
    /// and its `ToolResult` once it completed.
    fn chunks(self, id: &str, started: &mut Vec<String>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        if !started.iter().any(|t| t == id) {
            started.push(id.to_owned());
            chunks.push(Chunk::ToolUse { id: id.to_owned(), name: self.name, input: self.input });
        }
        if let Some((is_error, output)) = self.result {
            chunks.push(Chunk::ToolResult { id: id.to_owned(), is_error, output });
        }
        chunks
    }
}

/// Codex 0.169.0 stderr for a thread whose rollout is gone or unreadable: "no rollout
/// found for thread id", "rollout at … is empty", "rollout at … does not start with
/// session metadata" (a damaged first line).
fn is_missing_rollout(stderr: &str) -> bool {
    stderr.contains("no rollout found for thread id")
        || (stderr.contains("rollout")
            && (stderr.contains("is empty") || stderr.contains("does not start with session metadata")))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Codex passes an upstream error body through as a string
/// (`{"error": {"message": …}}`); keep only its message.
fn readable(message: &str) -> String {
    serde_json::from_str::<Value>(message)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| str_at(e, "message")).map(str::to_owned))
        .unwrap_or_else(|| message.to_owned())
}

/// An MCP call result: its text content parts.
fn mcp_output(result: &Value) -> String {
    result
        .get("content")
        .and_then(Value::as_array)
        .map(|parts| parts.iter().filter_map(|p| str_at(p, "text")).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|| if result.is_null() { String::new() } else { result.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_rollout_is_found_by_its_id_and_remembered_while_it_exists() {
        let home = std::env::temp_dir().join(format!("parley-codex-home-{}", uuid::Uuid::new_v4().simple()));
        let thread = "01a22cf9-741d-7630-8257-d2f317fb0c32";
        let day = home.join("sessions/2026/11/30");
        std::fs::create_dir_all(&day).expect("dirs");
        std::fs::write(day.join("rollout-2026-11-30T15-01-15-01a1fb60-8858-75e2-b443-e704c8a41807.jsonl"), "{}\n")
            .expect("other thread");
        let file = format!("rollout-2026-11-30T15-01-15-{thread}.jsonl");
        std::fs::write(day.join(&file), "{}\n").expect("rollout");
        assert_eq!(find_rollout(&home, thread), Some(PathBuf::from("sessions/2026/11/30").join(&file)));
        assert_eq!(find_rollout(&home, "00000000-0000-0000-0000-000000000000"), None);

        let codex = Codex::new(CodexConfig { home: Some(home.clone()), ..CodexConfig::default() });
        let found = codex.session_file(thread, None).expect("found");
        assert_eq!(found.path(), day.join(&file));
        assert_eq!(codex.session_file("../etc", None), None, "not a thread ID");
        std::fs::remove_file(day.join(&file)).expect("remove");
        assert_eq!(codex.session_file(thread, None), None, "gone, and not remembered");
        std::fs::remove_dir_all(&home).expect("cleanup");
    }
}
