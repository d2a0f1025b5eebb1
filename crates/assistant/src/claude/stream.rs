//! The Claude Code `--output-format stream-json --verbose` parser: one JSON object per
//! stdout line, turned into [`Chunk`]s, and the run's outcome (including stale-session
//! classification) decided from the `result` line, the exit code and stderr.
//!
//! Line types, observed in claude-code 2.1.329 and 2.0.77 (see
//! `tests/fixtures/claude-*.jsonl`):
//! - `system`: `init` (the session ID the run is in), `status`, `api_retry`,
//!   `thinking_tokens`, `permission_denied`;
//! - `assistant`: a message whose `content` holds `text`, `thinking` and `tool_use`
//!   blocks; API failures come as a synthetic message (`model: "<synthetic>"`,
//!   `is_api_error_message: true` or an `error` field) whose text is `API Error: …`;
//! - `user`: `tool_result` blocks;
//! - `stream_event` (with `--include-partial-messages`): raw Anthropic Messages stream
//!   events (`content_block_delta` with `text_delta` / `thinking_delta`…);
//! - `result`: `subtype` `success` | `error_during_execution` | `error_max_turns` |
//!   `error_max_budget_usd`, `is_error`, `errors[]`, `usage`, `total_cost_usd`.
//!
//! Unknown line types and fields are ignored.

use std::collections::HashSet;

use serde_json::Value;
use tracing::{debug, info, warn};

use crate::{AssistantError, Chunk, Usage};

/// The text Claude Code prints when it cannot find the session to resume.
const NO_CONVERSATION: &str = "No conversation found with session ID";

/// Parser state for one run.
#[derive(Debug, Default)]
pub struct ClaudeStream {
    resumed: Option<String>,
    /// The last session ID reported as [`Chunk::SessionStarted`] (by this parser, or by
    /// the adapter for an ID it assigned with `--session-id`).
    announced: Option<String>,
    init_session: Option<String>,
    /// API message ids whose text / thinking already came as `stream_event` deltas.
    streamed: HashSet<String>,
    /// The message id of the `stream_event` message in progress.
    current_stream_message: Option<String>,
    result: Option<Value>,
    api_error: Option<String>,
    text_blocks: usize,
}

impl ClaudeStream {
    /// A parser for a run that resumed `resumed` (or started fresh when `None`).
    #[must_use]
    pub fn new(resumed: Option<String>) -> Self {
        Self { resumed, ..Self::default() }
    }

    /// A parser for a fresh run started with `--session-id id`, whose caller already
    /// reported `id` as [`Chunk::SessionStarted`]: an init that reports `id` adds no
    /// chunk; one that reports another ID adds a `SessionStarted` with the reported one.
    #[must_use]
    pub fn with_session_id(id: String) -> Self {
        Self { announced: Some(id), ..Self::default() }
    }

    /// The session ID `system/init` reported, if it came.
    #[must_use]
    pub fn init_session(&self) -> Option<&str> {
        self.init_session.as_deref()
    }

    /// True once the `result` line was read: the run's output is complete.
    #[must_use]
    pub fn has_result(&self) -> bool {
        self.result.is_some()
    }

    /// Parses one stdout line into the chunks it carries. Lines that are not JSON
    /// objects are skipped with a warning.
    pub fn line(&mut self, line: &str) -> Vec<Chunk> {
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let shown: String = line.chars().take(200).collect();
                warn!(line = %shown, "skipping a claude output line that is not a JSON object");
                return Vec::new();
            }
        };
        match value.get("type").and_then(Value::as_str) {
            Some("system") => self.system(&value),
            Some("assistant") => self.assistant(&value),
            Some("user") => user(&value),
            Some("stream_event") => self.stream_event(&value),
            Some("result") => {
                self.result = Some(value);
                Vec::new()
            }
            other => {
                debug!(r#type = ?other, "ignoring an unknown claude output line");
                Vec::new()
            }
        }
    }

    fn system(&mut self, v: &Value) -> Vec<Chunk> {
        match str_at(v, "subtype") {
            Some("init") => {
                let Some(id) = str_at(v, "session_id").map(str::to_owned) else {
                    warn!("claude system/init without a session_id");
                    return Vec::new();
                };
                if let Some(resumed) = &self.resumed
                    && *resumed != id
                {
                    warn!(resumed = %resumed, reported = %id, "claude reports another session than the one resumed");
                }
                if self.init_session.as_deref() == Some(id.as_str()) {
                    return Vec::new();
                }
                self.init_session = Some(id.clone());
                if self.announced.as_deref() == Some(id.as_str()) {
                    return Vec::new();
                }
                if let Some(assigned) = self.announced.as_deref()
                    && self.resumed.is_none()
                {
                    warn!(%assigned, reported = %id, "claude reports another session than the one assigned; keeping the reported one");
                }
                self.announced = Some(id.clone());
                vec![Chunk::SessionStarted { id }]
            }
            Some("api_retry") => {
                info!(
                    attempt = ?v.get("attempt").and_then(serde_json::Value::as_u64),
                    max_retries = ?v.get("max_retries").and_then(serde_json::Value::as_u64),
                    error = ?str_at(v, "error"),
                    error_status = ?v.get("error_status").and_then(serde_json::Value::as_u64),
                    "claude is retrying the model API"
                );
                Vec::new()
            }
            Some("permission_denied") => {
                info!(tool = ?str_at(v, "tool_name"), reason = ?str_at(v, "decision_reason"), "claude was denied a tool");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn assistant(&mut self, v: &Value) -> Vec<Chunk> {
        let Some(message) = v.get("message") else { return Vec::new() };
        let synthetic_error = v.get("is_api_error_message").and_then(Value::as_bool).unwrap_or(false)
            || (v.get("error").is_some_and(|e| !e.is_null()) && str_at(message, "model") == Some("<synthetic>"));
        let blocks = message.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if synthetic_error {
            let text: Vec<&str> = blocks.iter().filter_map(|b| str_at(b, "text")).collect();
            self.api_error = Some(text.join("\n"));
            return Vec::new();
        }
        // Sub-agent (Task tool) messages: show their tool calls, not their text.
        let subagent = v.get("parent_tool_use_id").is_some_and(|p| !p.is_null());
        let streamed = str_at(message, "id").is_some_and(|id| self.streamed.contains(id));
        let mut chunks = Vec::new();
        for block in blocks {
            match str_at(block, "type") {
                Some("text") if !subagent && !streamed => {
                    if let Some(text) = str_at(block, "text").filter(|t| !t.is_empty()) {
                        chunks.push(self.text(text.to_owned()));
                    }
                }
                Some("thinking") if !subagent && !streamed => {
                    if let Some(text) = str_at(block, "thinking").filter(|t| !t.is_empty()) {
                        chunks.push(Chunk::Thinking { text: text.to_owned() });
                    }
                }
                Some("tool_use" | "server_tool_use") => chunks.push(Chunk::ToolUse {
                    id: str_at(block, "id").unwrap_or_default().to_owned(),
                    name: str_at(block, "name").unwrap_or("tool").to_owned(),
                    input: block.get("input").cloned().unwrap_or(Value::Null),
                }),
                _ => {}
            }
        }
        chunks
    }

    /// A text chunk; separate text blocks (before and after a tool call) are separated
    /// by a blank line so they do not run together.
    fn text(&mut self, text: String) -> Chunk {
        self.text_blocks += 1;
        if self.text_blocks > 1 { Chunk::Text { text: format!("\n\n{text}") } } else { Chunk::Text { text } }
    }

    fn stream_event(&mut self, v: &Value) -> Vec<Chunk> {
        if v.get("parent_tool_use_id").is_some_and(|p| !p.is_null()) {
            return Vec::new();
        }
        let Some(event) = v.get("event") else { return Vec::new() };
        let message_id = str_at(v, "api_message_id")
            .or_else(|| event.get("message").and_then(|m| str_at(m, "id")))
            .map(str::to_owned)
            .or_else(|| self.current_stream_message.clone());
        match str_at(event, "type") {
            Some("message_start") => {
                self.current_stream_message = message_id;
                Vec::new()
            }
            Some("content_block_start") => {
                if str_at(event.get("content_block").unwrap_or(&Value::Null), "type") == Some("text") {
                    if let Some(id) = &message_id {
                        self.streamed.insert(id.clone());
                    }
                    // Counted like a whole text block, for the separator.
                    self.text_blocks += 1;
                    if self.text_blocks > 1 {
                        return vec![Chunk::Text { text: "\n\n".into() }];
                    }
                }
                Vec::new()
            }
            Some("content_block_delta") => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                if let Some(id) = &message_id {
                    self.streamed.insert(id.clone());
                }
                match str_at(delta, "type") {
                    Some("text_delta") => str_at(delta, "text")
                        .filter(|t| !t.is_empty())
                        .map(|t| vec![Chunk::Text { text: t.to_owned() }])
                        .unwrap_or_default(),
                    Some("thinking_delta") => str_at(delta, "thinking")
                        .filter(|t| !t.is_empty())
                        .map(|t| vec![Chunk::Thinking { text: t.to_owned() }])
                        .unwrap_or_default(),
                    _ => Vec::new(),
                }
            }
            Some("message_stop") => {
                if v.get("abandoned_blocks").is_some() {
                    warn!(
                        message_id = ?message_id,
                        "claude abandoned a streamed message (the API failed mid-stream); its text may be repeated by the retry"
                    );
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Decides the run's outcome once the process exited (`exit_code`, the tail of its
    /// `stderr`): [`Chunk::Completed`] or the error to report.
    ///
    /// Stale (exactly): `--resume` was passed, no `system/init` arrived, and either the
    /// result is `error_during_execution` or its `errors[]` / stderr say "No conversation
    /// found with session ID" — which covers 2.0.77's exit-1-with-stderr-only form.
    ///
    /// # Errors
    /// [`AssistantError::StaleSession`] (with the ID asked for, never the one the error
    /// result echoes), [`AssistantError::Api`] for API failures (`subtype: success` with
    /// `is_error: true`), [`AssistantError::Refused`] for `error_max_turns` and
    /// `error_max_budget_usd`, [`AssistantError::Exited`] or
    /// [`AssistantError::Protocol`] otherwise.
    pub fn finish(&self, exit_code: Option<i32>, stderr: &str) -> Result<Chunk, AssistantError> {
        let result = self.result.as_ref();
        let errors: Vec<String> = result
            .and_then(|r| r.get("errors"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let subtype = result.and_then(|r| str_at(r, "subtype"));
        if let Some(resumed) = &self.resumed
            && self.init_session.is_none()
            && (subtype == Some("error_during_execution")
                || errors.iter().any(|e| e.contains(NO_CONVERSATION))
                || stderr.contains(NO_CONVERSATION))
        {
            let detail = errors
                .first()
                .cloned()
                .or_else(|| (!stderr.is_empty()).then(|| stderr.to_owned()))
                .unwrap_or_else(|| "error_during_execution before the session started".into());
            return Err(AssistantError::StaleSession { session_id: resumed.clone(), detail });
        }
        let Some(result) = result else {
            if let Some(message) = &self.api_error {
                return Err(api_error(message, None));
            }
            return Err(if exit_code == Some(0) {
                AssistantError::Protocol("claude exited without a result line".into())
            } else {
                AssistantError::Exited {
                    code: exit_code,
                    stderr: if stderr.is_empty() { "no output".into() } else { stderr.to_owned() },
                }
            });
        };
        let is_error = result.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let result_text = str_at(result, "result").unwrap_or_default();
        let first_error = || errors.first().cloned();
        match subtype {
            Some("error_max_turns") => Err(AssistantError::Refused(format!(
                "the assistant stopped: {}",
                first_error().unwrap_or_else(|| "it reached its maximum number of turns".into())
            ))),
            Some("error_max_budget_usd") => Err(AssistantError::Refused(format!(
                "the assistant stopped: {}",
                first_error().unwrap_or_else(|| "it reached its maximum budget".into())
            ))),
            Some("success") | None if !is_error => Ok(Chunk::Completed {
                // The result of a run whose init we saw; never an ID echoed without one.
                session_id: self.init_session.as_ref().and(str_at(result, "session_id").map(str::to_owned)),
                usage: result.get("usage").map(usage),
                cost_usd: result.get("total_cost_usd").and_then(Value::as_f64),
                duration_ms: result.get("duration_ms").and_then(Value::as_u64),
            }),
            Some("success") | None => {
                let message = if result_text.is_empty() {
                    self.api_error.clone().or_else(first_error).unwrap_or_else(|| "the model API failed".into())
                } else {
                    result_text.to_owned()
                };
                let status = result.get("api_error_status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
                Err(api_error(&message, status))
            }
            Some(other) => {
                let detail = first_error()
                    .or_else(|| (!result_text.is_empty()).then(|| result_text.to_owned()))
                    .or_else(|| (!stderr.is_empty()).then(|| stderr.to_owned()))
                    .unwrap_or_else(|| other.to_owned());
                if other == "error_during_execution" {
                    Err(AssistantError::Exited { code: exit_code, stderr: detail })
                } else {
                    Err(AssistantError::Protocol(format!("claude result {other}: {detail}")))
                }
            }
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `user` lines: tool results.
fn user(v: &Value) -> Vec<Chunk> {
    let Some(blocks) = v.get("message").and_then(|m| m.get("content")).and_then(Value::as_array) else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|b| str_at(b, "type") == Some("tool_result"))
        .map(|b| Chunk::ToolResult {
            id: str_at(b, "tool_use_id").unwrap_or_default().to_owned(),
            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            output: tool_output(b.get("content").unwrap_or(&Value::Null)),
        })
        .collect()
}

/// A tool result's content: a string, or blocks whose text parts are joined.
fn tool_output(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match str_at(p, "type") {
                Some("text") => str_at(p, "text").map(str::to_owned),
                Some(other) => Some(format!("[{other}]")),
                None => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Claude `result.usage`: input counts prompt tokens including cache reads and writes.
fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
        output_tokens: n("output_tokens"),
    }
}

/// An [`AssistantError::Api`] with a readable message. The older CLI (2.0.77) appends the
/// raw error body: `API Error: 529 {"type":"error","error":{…,"message":"Overloaded"}}`,
/// which becomes `API Error: 529 Overloaded (overloaded_error)`.
fn api_error(message: &str, status: Option<u16>) -> AssistantError {
    let mut message = message.trim().to_owned();
    let mut status = status;
    if let Some(rest) = message.strip_prefix("API Error: ") {
        let (code, body) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(code) = code.parse::<u16>() {
            status = status.or(Some(code));
            if let Ok(body) = serde_json::from_str::<Value>(body) {
                let err = body.get("error").unwrap_or(&Value::Null);
                if let Some(m) = str_at(err, "message") {
                    message = match str_at(err, "type") {
                        Some(t) => format!("API Error: {code} {m} ({t})"),
                        None => format!("API Error: {code} {m}"),
                    };
                }
            }
        }
    }
    AssistantError::Api { message, status }
}
