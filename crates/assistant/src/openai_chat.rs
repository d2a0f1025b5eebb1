//! The `openai-chat` assistant: any Chat Completions server (OpenAI, Ollama, vLLM,
//! llama.cpp `llama-server`…) over HTTP server-sent events.
//!
//! Stateless: it never reports a session ID, so Parley rebuilds every prompt from its
//! own history (the session's `assistant_session_id` stays NULL).
//!
//! Request: `POST {base_url}/chat/completions` with `{model, messages: [system?, user],
//! stream: true, stream_options: {include_usage: true}}`.
//!
//! Chunks (`chat.completion.chunk`, see `tests/fixtures/openai-chat-completions-*.sse`):
//! `choices[0].delta.content` is text, `delta.reasoning_content` (llama.cpp) or
//! `delta.reasoning` (Ollama, vLLM) is thinking, `delta.tool_calls[]` are assembled by
//! `index`, `usage` comes on the last chunk, and `data: [DONE]` ends the stream.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tracing::debug;

use crate::sse::{HttpLimits, error_parts, send};
use crate::{Assistant, AssistantError, Chunk, RunRequest, Secret, Usage};

/// Settings of the `openai-chat` assistant.
#[derive(Debug, Clone)]
pub struct OpenAiChatConfig {
    /// The API base URL, up to and including `/v1` (e.g. `http://127.0.0.1:11434/v1`).
    pub base_url: String,
    /// The API key, sent as a bearer token; `None` sends no `Authorization` header.
    pub api_key: Option<Secret>,
    /// The model.
    pub model: String,
    /// A system message sent first.
    pub system_prompt: Option<String>,
    /// Fails the run when no event arrives for this long.
    pub idle_timeout: Duration,
    /// Fails the run after this long in total.
    pub total_timeout: Duration,
}

impl Default for OpenAiChatConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:11434/v1".into(),
            api_key: None,
            model: "llama3.2".into(),
            system_prompt: None,
            idle_timeout: Duration::from_secs(300),
            total_timeout: Duration::from_secs(1800),
        }
    }
}

/// The `openai-chat` assistant.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    config: OpenAiChatConfig,
    client: reqwest::Client,
}

impl OpenAiChat {
    /// An assistant for the Chat Completions API at `config.base_url`.
    #[must_use]
    pub fn new(config: OpenAiChatConfig) -> Self {
        Self { config, client: reqwest::Client::new() }
    }

    /// The request body of a run.
    #[must_use]
    pub fn body(&self, request: &RunRequest) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = request.settings.system_prompt_after(self.config.system_prompt.as_deref()) {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.push(json!({ "role": "user", "content": request.prompt }));
        json!({
            "model": request.settings.model_or(&self.config.model),
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        })
    }
}

impl Assistant for OpenAiChat {
    fn name(&self) -> &str {
        "openai-chat"
    }

    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut http = self.client.post(&url).json(&self.body(&request)).header("accept", "text/event-stream");
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key.expose());
        }
        let limits = HttpLimits { idle: self.config.idle_timeout, total: self.config.total_timeout };
        async_stream::stream! {
            let cancel = request.cancel;
            let mut events = match send(http, &url, limits, &cancel).await {
                Err(e) => { yield Err(e); return; }
                Ok(Err((status, body))) => {
                    let (message, _, _) = error_parts(&body);
                    yield Err(AssistantError::Api { message: format!("HTTP {status}: {message}"), status: Some(status) });
                    return;
                }
                Ok(Ok(events)) => events,
            };
            let mut parser = ChatStream::default();
            loop {
                let event = match events.next(&cancel).await {
                    Err(e) => { yield Err(e); return; }
                    Ok(None) => None,
                    Ok(Some(event)) => Some(event),
                };
                if let Some(event) = &event {
                    match parser.data(&event.data) {
                        Err(e) => { yield Err(e); return; }
                        Ok(chunks) => for chunk in chunks { yield Ok(chunk); },
                    }
                }
                if event.is_none() || parser.is_done() {
                    match parser.finish() {
                        Ok(chunks) => for chunk in chunks { yield Ok(chunk); },
                        Err(e) => yield Err(e),
                    }
                    return;
                }
            }
        }
        .boxed()
    }
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

/// Parser state for one Chat Completions event stream.
#[derive(Debug, Default)]
pub struct ChatStream {
    done: bool,
    finished: bool,
    usage: Option<Usage>,
    calls: Vec<PendingCall>,
}

impl ChatStream {
    /// True once `data: [DONE]` was read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Parses one event's `data`.
    ///
    /// # Errors
    /// [`AssistantError::Api`] for an in-stream `{"error": …}` object.
    pub fn data(&mut self, data: &str) -> Result<Vec<Chunk>, AssistantError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            debug!(data = %data.chars().take(200).collect::<String>(), "skipping a non-JSON chunk");
            return Ok(Vec::new());
        };
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let (message, _, _) = error_parts(&json!({ "error": err }).to_string());
            return Err(AssistantError::Api { message, status: None });
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some(Usage { input_tokens: n("prompt_tokens"), output_tokens: n("completion_tokens") });
        }
        let mut chunks = Vec::new();
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return Ok(chunks);
        };
        if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
            self.finished = true;
        }
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                chunks.push(Chunk::Thinking { text: t.to_owned() });
            }
        }
        if let Some(t) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            chunks.push(Chunk::Text { text: t.to_owned() });
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let index = call.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok()).unwrap_or(0);
            if index >= 64 {
                continue;
            }
            while self.calls.len() <= index {
                self.calls.push(PendingCall::default());
            }
            let pending = &mut self.calls[index];
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                pending.id = id.to_owned();
            }
            let function = call.get("function").unwrap_or(&Value::Null);
            if let Some(name) = function.get("name").and_then(Value::as_str) {
                pending.name.push_str(name);
            }
            if let Some(args) = function.get("arguments").and_then(Value::as_str) {
                pending.arguments.push_str(args);
            }
        }
        Ok(chunks)
    }

    /// The assembled tool calls and [`Chunk::Completed`] at the end of the stream.
    ///
    /// # Errors
    /// [`AssistantError::Protocol`] when the stream ended with neither `[DONE]` nor a
    /// `finish_reason`.
    pub fn finish(&mut self) -> Result<Vec<Chunk>, AssistantError> {
        if !self.done && !self.finished {
            return Err(AssistantError::Protocol("the event stream ended before the completion finished".into()));
        }
        let mut chunks: Vec<Chunk> = self
            .calls
            .drain(..)
            .filter(|c| !c.name.is_empty())
            .map(|c| Chunk::ToolUse {
                input: serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!(c.arguments)),
                id: c.id,
                name: c.name,
            })
            .collect();
        chunks.push(Chunk::Completed { session_id: None, usage: self.usage, cost_usd: None, duration_ms: None });
        Ok(chunks)
    }
}
