//! Warm Codex processes: one live `codex app-server` per active conversation, answering
//! each of the conversation's messages as a turn of its loaded thread, without a new
//! start-up (`docs/architecture.md#warm-processes`).
//!
//! Protocol (codex-cli 0.169.0, `codex app-server generate-json-schema`; real captures in
//! `tests/fixtures/codex-app-server-*.jsonl` and their `.stdin.jsonl`): JSON-RPC 2.0
//! messages, one per line on stdin and stdout, without the `"jsonrpc"` member.
//! 1. `initialize {clientInfo}` → result; then the notification `initialized`.
//! 2. `thread/start {cwd, approvalPolicy, sandbox?, model?, developerInstructions?}` or
//!    `thread/resume {threadId, …same…, excludeTurns}` → `{thread: {id, path, …}}`, where
//!    `path` is the thread's rollout. A resume of a thread whose rollout is gone, empty
//!    or damaged fails with a JSON-RPC error ("no rollout found for thread id …", "… is
//!    empty", "… does not start with session metadata"), as does a thread ID that is not
//!    a UUID ("invalid session id"): all of them are a stale session.
//! 3. Per message, `turn/start {threadId, input: [{type: "text", text}]}` → `{turn: {id}}`,
//!    then notifications: `item/started` / `item/completed` (items `agentMessage`,
//!    `reasoning`, `commandExecution`, `fileChange`, `mcpToolCall`, `dynamicToolCall`,
//!    `webSearch`, …), `item/agentMessage/delta` (the reply as it is written),
//!    `thread/tokenUsage/updated` (`total`: for the whole thread), `error {error,
//!    willRetry}`, and last `turn/completed {turn: {id, status, error}}` with `status`
//!    `completed`, `failed` or `interrupted`.
//! 4. Cancel: `turn/interrupt {threadId, turnId}` → `turn/completed` with `interrupted`.
//!
//! The server may also send requests (approvals, user input); with `approvalPolicy:
//! "never"` it has none to send, and any that arrives is refused with a JSON-RPC error so
//! that nothing waits on Parley.
//!
//! Reuse follows the same rules as Claude's ([`AppServer::unfit`]): same arguments,
//! directory, environment and thread settings, the thread the run resumes, a live
//! process, this replica still the conversation's holder, and the rollout the same file
//! (inode) at least as long as after the previous turn. Anything else kills it and the
//! run starts a new `app-server` that resumes the thread, where a lost rollout shows as
//! a stale session as it does with `codex exec`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{CodexConfig, ToolItem, is_missing_rollout, readable, str_at};
use crate::process::{CliProcess, Output, ProcessSpec};
use crate::warm::{SessionFileSeen, Warm, WarmPool, WarmRun};
use crate::{AssistantError, Chunk, RunSettings, Usage, WarmKey, run_marker};

/// What a warm process was started with: a run whose own differs cannot use it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fingerprint {
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// The settings of `thread/start` and `thread/resume`.
    thread: Map<String, Value>,
}

impl Fingerprint {
    pub(crate) fn of(config: &CodexConfig, settings: &RunSettings, cwd: Option<&Path>) -> Self {
        let mut args: Vec<OsString> = vec!["app-server".into()];
        for c in &config.config_overrides {
            args.extend(["-c".into(), c.into()]);
        }
        let mut thread = Map::new();
        if let Some(cwd) = cwd {
            thread.insert("cwd".into(), cwd.display().to_string().into());
        }
        // What `codex exec` does without asking: it has nobody to ask.
        thread.insert("approvalPolicy".into(), "never".into());
        if let Some(model) = settings.model.as_ref().or(config.model.as_ref()) {
            thread.insert("model".into(), model.clone().into());
        }
        if let Some(sandbox) = settings.permission_mode.as_ref().or(config.sandbox.as_ref()) {
            thread.insert("sandbox".into(), sandbox.clone().into());
        }
        if let Some(prompt) = &settings.append_system_prompt {
            thread.insert("developerInstructions".into(), prompt.clone().into());
        }
        Self { args, cwd: cwd.map(Path::to_path_buf), env: config.env(std::env::vars_os()), thread }
    }
}

/// A JSON-RPC request line (codex app-server 0.169.0 writes and reads no `"jsonrpc"`).
fn request_line(id: u64, method: &str, params: &Value) -> String {
    format!("{}\n", json!({ "id": id, "method": method, "params": params }))
}

/// The error a `thread/resume` failed with, as a run error: a stale session when the
/// thread cannot be loaded (see the module docs), else a protocol error.
fn resume_error(thread_id: &str, error: &Value) -> AssistantError {
    let message = str_at(error, "message").unwrap_or("thread/resume failed").to_owned();
    if is_missing_rollout(&message) || message.starts_with("invalid session id") {
        AssistantError::StaleSession { session_id: thread_id.to_owned(), detail: message }
    } else {
        AssistantError::Protocol(format!("codex app-server: thread/resume failed: {message}"))
    }
}

/// One live `codex app-server` with one loaded thread.
#[derive(Debug)]
pub(crate) struct AppServer {
    process: CliProcess,
    stdin: ChildStdin,
    run: WarmRun,
    fingerprint: Fingerprint,
    thread_id: String,
    /// True while its thread was started ahead of a first message and has answered
    /// none: it then stands for a fresh session.
    fresh: bool,
    /// The thread's rollout (`thread.path`).
    rollout_path: Option<PathBuf>,
    rollout: Option<SessionFileSeen>,
    next_id: u64,
    last_used: Instant,
    /// When it was ready ([`Warm::ready_ticks`]): the npm package's `codex` is a node
    /// launcher that runs the native binary as its child, which must outlive a turn.
    ready_ticks: Option<u64>,
}

/// A message from the server: a response to one of ours, a notification, or a request.
#[derive(Debug)]
enum Incoming {
    Response { id: u64, result: Result<Value, Value> },
    Notification { method: String, params: Value },
    Request { id: Value, method: String },
}

impl Incoming {
    fn parse(v: Value) -> Option<Self> {
        let method = str_at(&v, "method").map(str::to_owned);
        match (v.get("id").cloned(), method) {
            (Some(id), Some(method)) => Some(Self::Request { id, method }),
            (None, Some(method)) => {
                Some(Self::Notification { method, params: v.get("params").cloned().unwrap_or(Value::Null) })
            }
            (Some(id), None) => {
                let result = match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                };
                Some(Self::Response { id: id.as_u64()?, result })
            }
            (None, None) => None,
        }
    }
}

impl AppServer {
    /// Starts `codex app-server`, initializes it, and loads the conversation's thread:
    /// `thread/resume` of `resume`, else `thread/start` of a new one.
    ///
    /// # Errors
    /// [`AssistantError::StaleSession`] when `resume` cannot be loaded;
    /// [`AssistantError::Exited`] when the CLI cannot start or exits;
    /// [`AssistantError::Protocol`] for an answer that does not follow the protocol.
    pub(crate) async fn start(
        config: &CodexConfig,
        settings: &RunSettings,
        cwd: Option<PathBuf>,
        resume: Option<String>,
    ) -> Result<Self, AssistantError> {
        let fingerprint = Fingerprint::of(config, settings, cwd.as_deref());
        if let Some(cwd) = &cwd
            && let Err(e) = tokio::fs::create_dir_all(cwd).await
        {
            warn!(cwd = %cwd.display(), error = %e, "cannot create the conversation's working directory");
        }
        let run_id = Uuid::new_v4();
        let spec = ProcessSpec {
            program: config.binary.clone(),
            args: fingerprint.args.clone(),
            cwd,
            env: fingerprint.env.clone(),
            stdin: String::new(),
            limits: config.limits.clone(),
            assistant: "codex",
            run_id,
        };
        let (process, stdin) = CliProcess::spawn_interactive(spec).await?;
        let mut server = Self {
            process,
            stdin,
            run: WarmRun(run_id),
            fingerprint,
            thread_id: String::new(),
            fresh: resume.is_none(),
            rollout_path: None,
            rollout: None,
            next_id: 0,
            last_used: Instant::now(),
            ready_ticks: None,
        };
        match server.open(resume.as_deref()).await {
            Ok(()) => {
                server.ready_ticks = run_marker::now_ticks();
                Ok(server)
            }
            Err(e) => {
                let exit = server.process.stop().await;
                Err(match e {
                    AssistantError::Exited { code, stderr } if stderr.is_empty() => {
                        AssistantError::Exited { code: code.or(exit.code), stderr: exit.stderr }
                    }
                    e => e,
                })
            }
        }
    }

    /// `initialize`, `initialized`, then `thread/resume` or `thread/start`.
    async fn open(&mut self, resume: Option<&str>) -> Result<(), AssistantError> {
        let version = env!("CARGO_PKG_VERSION");
        self.call("initialize", &json!({ "clientInfo": { "name": "parley", "version": version } }))
            .await?
            .map_err(|e| AssistantError::Protocol(format!("codex app-server: initialize failed: {e}")))?;
        self.write(&format!("{}\n", json!({ "method": "initialized" }))).await?;
        let mut params = self.fingerprint.thread.clone();
        let result = match resume {
            Some(thread_id) => {
                params.insert("threadId".into(), thread_id.into());
                params.insert("excludeTurns".into(), true.into());
                self.call("thread/resume", &Value::Object(params)).await?.map_err(|e| resume_error(thread_id, &e))?
            }
            None => self.call("thread/start", &Value::Object(params)).await?.map_err(|e| {
                AssistantError::Protocol(format!(
                    "codex app-server: thread/start failed: {}",
                    str_at(&e, "message").unwrap_or_default()
                ))
            })?,
        };
        let thread = result.get("thread").unwrap_or(&Value::Null);
        let Some(id) = str_at(thread, "id") else {
            return Err(AssistantError::Protocol("codex app-server: the thread has no id".into()));
        };
        if let Some(resumed) = resume
            && resumed != id
        {
            return Err(AssistantError::StaleSession {
                session_id: resumed.to_owned(),
                detail: format!("codex loaded thread {id} instead of {resumed}"),
            });
        }
        self.thread_id = id.to_owned();
        self.rollout_path = str_at(thread, "path").map(PathBuf::from);
        self.rollout = self.rollout_path.clone().and_then(SessionFileSeen::read);
        Ok(())
    }

    async fn write(&mut self, line: &str) -> Result<(), AssistantError> {
        let written = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        written
            .await
            .map_err(|e| AssistantError::Exited { code: None, stderr: format!("writing to codex failed: {e}") })
    }

    /// Sends a request and waits for its response (the JSON-RPC `error` object as
    /// `Err`); what arrives meanwhile is logged and, for requests, refused.
    async fn call(&mut self, method: &str, params: &Value) -> Result<Result<Value, Value>, AssistantError> {
        let id = self.send(method, params).await?;
        loop {
            match self.read().await? {
                Some(Incoming::Response { id: got, result }) if got == id => return Ok(result),
                Some(other) => self.ignore(other).await?,
                None => return Err(AssistantError::Exited { code: None, stderr: String::new() }),
            }
        }
    }

    /// Writes a request; returns its ID.
    async fn send(&mut self, method: &str, params: &Value) -> Result<u64, AssistantError> {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&request_line(id, method, params)).await?;
        Ok(id)
    }

    /// The next message; `None` at the end of the output (the process exited). Lines
    /// that are not JSON-RPC messages are logged and skipped.
    async fn read(&mut self) -> Result<Option<Incoming>, AssistantError> {
        static NEVER: OnceLock<CancellationToken> = OnceLock::new();
        loop {
            match self.process.next(NEVER.get_or_init(CancellationToken::new)).await? {
                Output::Line(line) => {
                    let parsed = serde_json::from_str::<Value>(&line).ok().and_then(Incoming::parse);
                    match parsed {
                        Some(message) => return Ok(Some(message)),
                        None => {
                            let shown: String = line.chars().take(200).collect();
                            warn!(line = %shown, "skipping a codex app-server line that is not a JSON-RPC message");
                        }
                    }
                }
                Output::Oversized { bytes } => warn!(bytes, "skipped an over-long codex app-server line"),
                Output::Eof => return Ok(None),
            }
        }
    }

    /// Handles a message nobody waits for: a request is refused (see the module docs).
    async fn ignore(&mut self, message: Incoming) -> Result<(), AssistantError> {
        match message {
            Incoming::Request { id, method } => {
                warn!(%method, "codex asked Parley something it cannot answer; refusing");
                let refusal = json!({
                    "id": id,
                    "error": { "code": -32601, "message": format!("Parley does not answer {method}") },
                });
                self.write(&format!("{refusal}\n")).await
            }
            Incoming::Notification { method, .. } => {
                debug!(%method, "codex app-server notification outside a turn");
                Ok(())
            }
            Incoming::Response { id, .. } => {
                debug!(id, "codex app-server response nobody waits for");
                Ok(())
            }
        }
    }

    /// Why this process cannot answer a run of `key` with `fingerprint` resuming
    /// `resume`, if it cannot.
    pub(crate) fn unfit(&mut self, key: &WarmKey, fingerprint: &Fingerprint, resume: Option<&str>) -> Option<String> {
        if !key.may_reuse && !self.fresh {
            return Some("another replica ran the conversation since".into());
        }
        if self.fingerprint != *fingerprint {
            return Some("the conversation's settings, directory or environment changed".into());
        }
        let holds = (!self.fresh).then_some(self.thread_id.as_str());
        if holds != resume {
            return Some(format!("it holds thread {holds:?}, the run resumes {resume:?}"));
        }
        if self.process.has_exited() {
            return Some("it exited".into());
        }
        match (self.fresh, &self.rollout) {
            (true, _) => None,
            (false, None) => Some("its rollout was never seen".into()),
            (false, Some(seen)) => seen.changed(),
        }
    }

    /// Asks codex to stop the turn, waits up to `wait` for it to end, then stops the
    /// process: a cancelled turn's process is not reused (the next message resumes the
    /// thread in a new one).
    async fn interrupt(mut self, turn_id: Option<String>, wait: Duration) {
        if let Some(turn_id) = turn_id {
            let params = json!({ "threadId": self.thread_id, "turnId": turn_id });
            if self.send("turn/interrupt", &params).await.is_ok() {
                let ended = tokio::time::timeout(wait, async {
                    loop {
                        match self.read().await {
                            Ok(Some(Incoming::Notification { method, .. })) if method == "turn/completed" => {
                                return true;
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return false,
                        }
                    }
                })
                .await;
                debug!(acknowledged = matches!(ended, Ok(true)), "interrupted the warm codex process's turn");
            }
        }
        let _ = self.process.stop().await;
    }

    /// After a turn that ended in the thread: remembers its rollout as it is now. False
    /// when the rollout cannot be found (the process is then not kept: a reuse could
    /// not be checked).
    fn turn_done(&mut self) -> bool {
        self.fresh = false;
        self.last_used = Instant::now();
        self.rollout = self.rollout_path.clone().and_then(SessionFileSeen::read);
        if self.rollout.is_none() {
            debug!(thread_id = %self.thread_id, "the warm codex process's rollout was not found; not keeping it");
        }
        self.rollout.is_some()
    }
}

impl Warm for AppServer {
    fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    fn run_id(&self) -> Uuid {
        self.run.0
    }

    fn last_used(&self) -> Instant {
        self.last_used
    }

    fn ready_ticks(&self) -> Option<u64> {
        self.ready_ticks
    }

    fn stop(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.process.stop().await;
        })
    }
}

/// Parser state for one turn of `codex app-server` 0.169.0 (see the module docs): turns
/// its notifications into [`Chunk`]s.
#[derive(Debug, Default)]
pub struct AppServerTurn {
    thread_id: String,
    turn_id: Option<String>,
    usage: Option<Usage>,
    /// `turn/completed`'s status and error message.
    ended: Option<(String, Option<String>)>,
    duration_ms: Option<u64>,
    last_error: Option<String>,
    /// Agent messages seen (separated by a blank line in the reply).
    messages: usize,
    /// Agent messages whose text came as deltas (not repeated at their completion).
    streamed: HashSet<String>,
    started_tools: Vec<String>,
}

impl AppServerTurn {
    /// A parser for a turn of thread `thread_id`.
    #[must_use]
    pub fn new(thread_id: String) -> Self {
        Self { thread_id, ..Self::default() }
    }

    /// Takes the turn's ID from `turn/start`'s answer; false when it has none.
    fn started(&mut self, result: &Value) -> bool {
        self.turn_id = result.get("turn").and_then(|t| str_at(t, "id")).map(str::to_owned);
        self.turn_id.is_some()
    }

    /// True once the turn's `turn/completed` was read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.ended.is_some()
    }

    /// Parses one notification into the chunks it carries; notifications of other
    /// threads or turns carry none.
    pub fn notification(&mut self, method: &str, params: &Value) -> Vec<Chunk> {
        if str_at(params, "threadId").is_some_and(|t| t != self.thread_id) {
            return Vec::new();
        }
        let theirs = str_at(params, "turnId").or_else(|| params.get("turn").and_then(|t| str_at(t, "id")));
        if let (Some(ours), Some(theirs)) = (&self.turn_id, theirs)
            && ours != theirs
        {
            return Vec::new();
        }
        match method {
            "item/agentMessage/delta" => {
                let item = str_at(params, "itemId").unwrap_or_default();
                let delta = str_at(params, "delta").unwrap_or_default();
                if delta.is_empty() {
                    return Vec::new();
                }
                let text = if self.streamed.insert(item.to_owned()) {
                    self.messages += 1;
                    if self.messages > 1 { format!("\n\n{delta}") } else { delta.to_owned() }
                } else {
                    delta.to_owned()
                };
                vec![Chunk::Text { text }]
            }
            "item/started" => self.item(params.get("item").unwrap_or(&Value::Null), false),
            "item/completed" => self.item(params.get("item").unwrap_or(&Value::Null), true),
            "thread/tokenUsage/updated" => {
                let total = params.get("tokenUsage").and_then(|u| u.get("total"));
                self.usage = total.map(|t| {
                    let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
                    Usage { input_tokens: n("inputTokens"), output_tokens: n("outputTokens") }
                });
                Vec::new()
            }
            "error" => {
                let message = params.get("error").and_then(|e| str_at(e, "message")).unwrap_or_default();
                if params.get("willRetry").and_then(Value::as_bool) == Some(true) {
                    info!(%message, "codex is retrying the model API");
                } else {
                    self.last_error = Some(readable(message));
                }
                Vec::new()
            }
            "turn/completed" => {
                let turn = params.get("turn").unwrap_or(&Value::Null);
                let status = str_at(turn, "status").unwrap_or("completed").to_owned();
                let error = turn.get("error").and_then(|e| str_at(e, "message")).map(readable);
                self.duration_ms = turn.get("durationMs").and_then(Value::as_u64);
                self.ended = Some((status, error));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn item(&mut self, item: &Value, completed: bool) -> Vec<Chunk> {
        let id = str_at(item, "id").unwrap_or_default();
        let status = str_at(item, "status");
        let failed = matches!(status, Some("failed" | "declined"));
        let tool = match str_at(item, "type") {
            Some("agentMessage") if completed => {
                if self.streamed.contains(id) {
                    return Vec::new();
                }
                let Some(text) = str_at(item, "text").filter(|t| !t.is_empty()) else { return Vec::new() };
                self.messages += 1;
                let text = if self.messages > 1 { format!("\n\n{text}") } else { text.to_owned() };
                return vec![Chunk::Text { text }];
            }
            Some("reasoning") if completed => {
                let parts = |k: &str| -> Vec<String> {
                    item.get(k)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default()
                };
                let summary = parts("summary");
                let text = if summary.is_empty() { parts("content") } else { summary }.join("\n\n");
                return if text.is_empty() { Vec::new() } else { vec![Chunk::Thinking { text }] };
            }
            Some("commandExecution") => ToolItem {
                name: "command_execution".into(),
                input: json!({ "command": str_at(item, "command").unwrap_or_default() }),
                result: completed.then(|| {
                    let code = item.get("exitCode").and_then(Value::as_i64);
                    (
                        failed || code.is_some_and(|c| c != 0),
                        str_at(item, "aggregatedOutput").unwrap_or_default().to_owned(),
                    )
                }),
            },
            Some("fileChange") => {
                let changes = item.get("changes").cloned().unwrap_or(Value::Null);
                // `kind` is `{type: add | delete | update, move_path?}` here.
                let summary = super::changes_summary(&changes, |c| c.get("kind").and_then(|k| str_at(k, "type")));
                ToolItem {
                    name: "file_change".into(),
                    input: json!({ "changes": changes }),
                    result: completed.then_some((failed, summary)),
                }
            }
            Some("mcpToolCall") => super::mcp_tool_call(item, completed, failed),
            Some("dynamicToolCall") => ToolItem {
                name: str_at(item, "tool").unwrap_or("tool").to_owned(),
                input: item.get("arguments").cloned().unwrap_or(Value::Null),
                result: completed.then(|| {
                    let success = item.get("success").and_then(Value::as_bool);
                    let output =
                        super::mcp_output(&json!({ "content": item.get("contentItems").cloned().unwrap_or_default() }));
                    (failed || success == Some(false), output)
                }),
            },
            Some("webSearch") => ToolItem {
                name: "web_search".into(),
                input: json!({ "query": str_at(item, "query").unwrap_or_default() }),
                result: None,
            },
            _ => return Vec::new(),
        };
        tool.chunks(id, &mut self.started_tools)
    }

    /// The turn's outcome, once it ended (or the process exited).
    ///
    /// # Errors
    /// [`AssistantError::Api`] for a failed turn, [`AssistantError::Cancelled`] for one
    /// codex interrupted, [`AssistantError::Exited`] when the process ended first.
    pub fn finish(&self, exit_code: Option<i32>, stderr: &str) -> Result<Chunk, AssistantError> {
        match &self.ended {
            Some((status, _)) if status == "completed" => Ok(Chunk::Completed {
                session_id: Some(self.thread_id.clone()),
                usage: self.usage,
                cost_usd: None,
                duration_ms: self.duration_ms,
            }),
            Some((status, _)) if status == "interrupted" => Err(AssistantError::Cancelled),
            Some((_, error)) => Err(AssistantError::Api {
                message: error.clone().or_else(|| self.last_error.clone()).unwrap_or_else(|| "the turn failed".into()),
                status: None,
            }),
            None => Err(AssistantError::Exited {
                code: exit_code,
                stderr: if stderr.trim().is_empty() {
                    "codex app-server exited during the turn".into()
                } else {
                    stderr.to_owned()
                },
            }),
        }
    }
}

/// One turn on a warm process: `turn/start` with `prompt`, the turn's chunks until its
/// `turn/completed`, then the process back into `pool` for the conversation's next
/// message when the turn ended in its thread and the rollout is still there (before the
/// last chunk, so the turn's [`run_marker::end_run`] spares it). A cancelled turn is
/// interrupted and its process stopped; a broken one stops it too.
pub(crate) fn turn(
    pool: Arc<WarmPool<AppServer>>,
    conversation_id: Uuid,
    mut server: AppServer,
    prompt: String,
    cancel: CancellationToken,
    turn_run_id: Uuid,
) -> impl futures::Stream<Item = Result<Chunk, AssistantError>> + Send + 'static {
    async_stream::stream! {
        yield Ok(Chunk::SessionStarted { id: server.thread_id.clone() });
        let mut parser = AppServerTurn::new(server.thread_id.clone());
        server.process.rearm();
        let params = json!({ "threadId": server.thread_id, "input": [{ "type": "text", "text": prompt }] });
        let start = match server.send("turn/start", &params).await {
            Ok(id) => id,
            Err(e) => {
                debug!(error = %e, "writing the message to the warm codex process failed");
                let exit = server.process.stop().await;
                yield parser.finish(exit.code, &exit.stderr);
                return;
            }
        };
        let interrupt_wait = pool.config().interrupt_wait;
        // What arrives before `turn/start` answers is judged once the turn's ID is known:
        // a late notification of an earlier turn must not count as this one's.
        let mut early: Vec<(String, Value)> = Vec::new();
        while !parser.is_done() {
            let read = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                read = server.read() => Some(read),
            };
            let Some(read) = read else {
                server.interrupt(parser.turn_id.clone(), interrupt_wait).await;
                yield Err(AssistantError::Cancelled);
                return;
            };
            match read {
                Ok(Some(Incoming::Response { id, result })) if id == start => match result {
                    Ok(result) => {
                        if !parser.started(&result) {
                            let _ = server.process.stop().await;
                            yield Err(AssistantError::Protocol("codex app-server: turn/start answered no turn id".into()));
                            return;
                        }
                        for (method, params) in std::mem::take(&mut early) {
                            for chunk in parser.notification(&method, &params) {
                                if matches!(chunk, Chunk::ToolUse { .. }) {
                                    run_marker::warm_turn_used_tools(turn_run_id);
                                }
                                yield Ok(chunk);
                            }
                        }
                    }
                    Err(e) => {
                        let message = str_at(&e, "message").unwrap_or("turn/start failed").to_owned();
                        let _ = server.process.stop().await;
                        yield Err(AssistantError::Protocol(format!("codex app-server: turn/start failed: {message}")));
                        return;
                    }
                },
                Ok(Some(Incoming::Notification { method, params })) if parser.turn_id.is_none() => {
                    early.push((method, params));
                }
                Ok(Some(Incoming::Notification { method, params })) => {
                    for chunk in parser.notification(&method, &params) {
                        if matches!(chunk, Chunk::ToolUse { .. }) {
                            run_marker::warm_turn_used_tools(turn_run_id);
                        }
                        yield Ok(chunk);
                    }
                }
                Ok(Some(other)) => {
                    if let Err(e) = server.ignore(other).await {
                        yield Err(e);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        if parser.is_done() && server.turn_done() {
            let outcome = parser.finish(None, "");
            pool.put(conversation_id, server);
            yield outcome;
            return;
        }
        let exit = server.process.stop().await;
        yield parser.finish(exit.code, &exit.stderr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks and outcome of every turn in a captured app-server session.
    fn replay(fixture: &str) -> Vec<(Vec<Chunk>, Result<Chunk, AssistantError>)> {
        let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("fixture");
        let mut turns = Vec::new();
        let mut parser: Option<AppServerTurn> = None;
        let mut chunks = Vec::new();
        let mut thread = String::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("JSON");
            match Incoming::parse(v).expect("a JSON-RPC message") {
                Incoming::Response { result: Ok(result), .. } => {
                    if let Some(id) = result.get("thread").and_then(|t| str_at(t, "id")) {
                        thread = id.to_owned();
                    }
                    if result.get("turn").is_some() {
                        let mut p = AppServerTurn::new(thread.clone());
                        assert!(p.started(&result), "a turn id");
                        parser = Some(p);
                    }
                }
                Incoming::Notification { method, params } => {
                    if let Some(p) = parser.as_mut() {
                        chunks.extend(p.notification(&method, &params));
                        if p.is_done() {
                            turns.push((std::mem::take(&mut chunks), p.finish(None, "")));
                            parser = None;
                        }
                    }
                }
                _ => {}
            }
        }
        turns
    }

    /// The captures the tests below replay (`tests/fixtures/codex-app-server-*.jsonl`).
    const REPLAYED: &[&str] = &[
        "codex-app-server-two-turns.jsonl",
        "codex-app-server-resume-ok.jsonl",
        "codex-app-server-interrupt.jsonl",
        "codex-app-server-turn-failed.jsonl",
        "codex-app-server-resume-missing.jsonl",
        "codex-app-server-resume-corrupt-rollout.jsonl",
        "codex-app-server-resume-empty-rollout.jsonl",
        "codex-app-server-resume-not-a-uuid.jsonl",
    ];

    #[test]
    fn every_app_server_capture_is_replayed() {
        let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures") {
            let name = entry.expect("entry").file_name().into_string().expect("UTF-8");
            if name.starts_with("codex-app-server-") && !name.ends_with(".stdin.jsonl") {
                assert!(REPLAYED.contains(&name.as_str()), "{name} is replayed by no test");
                found += 1;
            }
        }
        assert_eq!(found, REPLAYED.len(), "a listed capture is missing");
    }

    #[test]
    fn a_resumed_thread_answers_in_a_new_process() {
        let turns = replay(REPLAYED[1]);
        assert_eq!(turns.len(), 1);
        assert_eq!(text(&turns[0].0), "Hello! How can I help you today?");
        let Ok(Chunk::Completed { session_id, usage, .. }) = &turns[0].1 else { panic!("{:?}", turns[0].1) };
        assert_eq!(session_id.as_deref(), Some("01a22d7e-e328-7293-bd83-e9659672c5d3"), "the thread resumed");
        assert_eq!(usage.map(|u| u.input_tokens), Some(9380), "the thread's running total, across processes");
    }

    fn text(chunks: &[Chunk]) -> String {
        chunks.iter().filter_map(|c| if let Chunk::Text { text } = c { Some(text.as_str()) } else { None }).collect()
    }

    #[test]
    fn two_turns_on_one_process_stream_text_run_a_tool_and_report_the_threads_usage() {
        let turns = replay("codex-app-server-two-turns.jsonl");
        assert_eq!(turns.len(), 2);
        let (chunks, outcome) = &turns[0];
        assert_eq!(text(chunks), "Hello! How can I help you today?");
        assert!(chunks.iter().filter(|c| matches!(c, Chunk::Text { .. })).count() > 1, "streamed as deltas");
        let Ok(Chunk::Completed { session_id, usage, .. }) = outcome else { panic!("{outcome:?}") };
        assert_eq!(session_id.as_deref(), Some("01a22d7f-0497-71d2-b146-785c9ad3cf14"));
        assert_eq!(usage.map(|u| (u.input_tokens, u.output_tokens)), Some((2345, 57)));

        let (chunks, outcome) = &turns[1];
        let Some(Chunk::ToolUse { id, name, input }) = chunks.iter().find(|c| matches!(c, Chunk::ToolUse { .. }))
        else {
            panic!("no tool use in {chunks:?}")
        };
        assert_eq!(name, "command_execution");
        assert_eq!(input["command"], "/bin/bash -lc 'echo hello-from-tool'");
        let result = chunks.iter().find_map(|c| match c {
            Chunk::ToolResult { id: rid, is_error, output } if rid == id => Some((*is_error, output.clone())),
            _ => None,
        });
        // This machine's login shell printed a pyenv warning first.
        let (is_error, output) = result.expect("the command's result");
        assert!(!is_error && output.ends_with("\nhello-from-tool\n"), "{output:?}");
        assert!(text(chunks).starts_with("The command printed"), "{}", text(chunks));
        let Ok(Chunk::Completed { usage, .. }) = outcome else { panic!("{outcome:?}") };
        assert_eq!(usage.map(|u| u.input_tokens), Some(7035), "the thread's running total");
    }

    #[test]
    fn a_file_change_is_a_tool_call_whose_output_lists_the_files() {
        // Shaped after `FileUpdateChange` / `PatchChangeKind` of `codex app-server
        // generate-json-schema` (0.169.0); no capture holds one.
        let mut turn = AppServerTurn::new("t".into());
        let item = json!({
            "type": "fileChange", "id": "call_1", "status": "completed",
            "changes": [
                { "path": "notes.txt", "kind": { "type": "add" }, "diff": "+hello\n" },
                { "path": "old.txt", "kind": { "type": "update", "move_path": "new.txt" }, "diff": "" },
            ],
        });
        let chunks = turn.notification("item/completed", &json!({ "threadId": "t", "turnId": "u", "item": item }));
        let [Chunk::ToolUse { name, .. }, Chunk::ToolResult { is_error, output, .. }] = &chunks[..] else {
            panic!("{chunks:?}")
        };
        assert_eq!(name, "file_change");
        assert!(!is_error);
        assert_eq!(output, "add notes.txt\nupdate old.txt");
        let other_thread = json!({ "threadId": "another", "turnId": "u", "item": item });
        assert!(turn.notification("item/completed", &other_thread).is_empty(), "another thread's item");
    }

    #[test]
    fn an_interrupted_turn_is_cancelled_and_the_next_one_answers() {
        let turns = replay("codex-app-server-interrupt.jsonl");
        assert_eq!(turns.len(), 2);
        assert!(matches!(turns[0].1, Err(AssistantError::Cancelled)), "{:?}", turns[0].1);
        assert_eq!(text(&turns[1].0), "Hello! How can I help you today?");
        assert!(matches!(turns[1].1, Ok(Chunk::Completed { .. })));
    }

    #[test]
    fn a_failed_turn_is_an_api_error_with_codexs_message() {
        let turns = replay("codex-app-server-turn-failed.jsonl");
        let messages: Vec<String> = turns
            .iter()
            .map(|(_, outcome)| match outcome {
                Err(AssistantError::Api { message, .. }) => message.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            messages,
            [
                "Selected model is at capacity. Please try a different model.",
                "stream disconnected before completion: The model produced invalid content.",
            ]
        );
    }

    #[test]
    fn a_resume_that_cannot_load_the_thread_is_a_stale_session() {
        for (fixture, expect) in [
            ("codex-app-server-resume-missing.jsonl", "no rollout found for thread id"),
            ("codex-app-server-resume-corrupt-rollout.jsonl", "does not start with session metadata"),
            ("codex-app-server-resume-empty-rollout.jsonl", "is empty"),
            ("codex-app-server-resume-not-a-uuid.jsonl", "invalid session id"),
        ] {
            let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("fixture");
            let error = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| v.get("error").cloned())
                .expect("an error response");
            match resume_error("t", &error) {
                AssistantError::StaleSession { session_id, detail } => {
                    assert_eq!(session_id, "t");
                    assert!(detail.contains(expect), "{fixture}: {detail}");
                }
                other => panic!("{fixture}: {other:?}"),
            }
        }
        let other = resume_error("t", &json!({ "code": -32603, "message": "database is locked" }));
        assert!(matches!(other, AssistantError::Protocol(_)), "{other:?}");
    }

    #[test]
    fn what_parley_writes_is_what_the_captured_session_wrote() {
        // The stdin of the capture: the same methods and shapes as `AppServer` writes.
        let path = format!("{}/tests/fixtures/codex-app-server-two-turns.stdin.jsonl", env!("CARGO_MANIFEST_DIR"));
        let written: Vec<Value> = std::fs::read_to_string(&path)
            .expect("fixture")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        let methods: Vec<&str> = written.iter().filter_map(|v| str_at(v, "method")).collect();
        assert_eq!(methods, ["initialize", "initialized", "thread/start", "turn/start", "turn/start"]);
        let ours: Value =
            serde_json::from_str(request_line(3, "turn/start", &written[3]["params"]).trim_end()).expect("JSON");
        assert_eq!(ours, written[3]);
        assert!(written[3]["params"]["input"][0] == json!({ "type": "text", "text": "hello" }));
    }
}
