//! The `openai` assistant: the OpenAI Responses API over HTTP server-sent events, with
//! `previous_response_id` as the assistant session ID. Any base URL that speaks the
//! Responses API works.
//!
//! Request: `POST {base_url}/responses` with `{model, input, stream: true, store: true,
//! previous_response_id?, instructions?}` and `Authorization: Bearer {api_key}`.
//!
//! Events (OpenAI streaming-events reference, `openai` 3.52 Python types; see
//! `tests/fixtures/openai-responses-*.sse`): `response.created`,
//! `response.output_text.delta`, `response.reasoning_summary_text.delta`,
//! `response.output_item.done` (a `function_call` item), `response.completed`,
//! `response.failed`, `response.incomplete`, `error`.
//!
//! Session IDs: each turn creates a new response, whose id becomes the session ID the
//! next turn continues from. It is reported only in [`Chunk::Completed`], so a failed
//! turn keeps the previous, still valid, ID.
//!
//! Stale (exactly): with a `previous_response_id`, HTTP 400/404 with code
//! `previous_response_not_found`, the terse "Invalid `previous_response_id`" variant, or
//! the same error as an in-stream `error` event.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tracing::debug;

use crate::sse::{HttpLimits, error_parts, send};
use crate::{Assistant, AssistantError, Chunk, RunRequest, Secret, Usage};

/// Settings of the `openai` assistant.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The API base URL, up to and including `/v1` (default `https://api.openai.com/v1`).
    pub base_url: String,
    /// The API key, sent as a bearer token; `None` sends no `Authorization` header.
    pub api_key: Option<Secret>,
    /// The model.
    pub model: String,
    /// System instructions sent with every request.
    pub instructions: Option<String>,
    /// Fails the run when no event arrives for this long.
    pub idle_timeout: Duration,
    /// Fails the run after this long in total.
    pub total_timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            model: "gpt-5".into(),
            instructions: None,
            idle_timeout: Duration::from_secs(300),
            total_timeout: Duration::from_secs(1800),
        }
    }
}

/// The `openai` assistant.
#[derive(Debug, Clone)]
pub struct OpenAi {
    config: OpenAiConfig,
    client: reqwest::Client,
}

impl OpenAi {
    /// An assistant for the Responses API at `config.base_url`.
    #[must_use]
    pub fn new(config: OpenAiConfig) -> Self {
        Self { config, client: reqwest::Client::new() }
    }

    /// The request body of a run.
    #[must_use]
    pub fn body(&self, request: &RunRequest) -> Value {
        let mut body = json!({
            "model": request.settings.model_or(&self.config.model),
            "input": request.prompt,
            "stream": true,
            "store": true,
        });
        if let Some(prev) = &request.resume {
            body["previous_response_id"] = json!(prev);
        }
        if let Some(i) = request.settings.system_prompt_after(self.config.instructions.as_deref()) {
            body["instructions"] = json!(i);
        }
        body
    }
}

impl Assistant for OpenAi {
    fn name(&self) -> &str {
        "openai"
    }

    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        let url = format!("{}/responses", self.config.base_url.trim_end_matches('/'));
        let mut http = self.client.post(&url).json(&self.body(&request)).header("accept", "text/event-stream");
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key.expose());
        }
        let limits = HttpLimits { idle: self.config.idle_timeout, total: self.config.total_timeout };
        async_stream::stream! {
            let cancel = request.cancel;
            let mut events = match send(http, &url, limits, &cancel).await {
                Err(e) => { yield Err(e); return; }
                Ok(Err((status, body))) => { yield Err(http_error(status, &body, request.resume.as_deref())); return; }
                Ok(Ok(events)) => events,
            };
            let mut parser = ResponsesStream::new(request.resume);
            loop {
                match events.next(&cancel).await {
                    Err(e) => { yield Err(e); return; }
                    Ok(None) => { yield parser.finish(); return; }
                    Ok(Some(event)) => match parser.event(&event.data) {
                        Err(e) => { yield Err(e); return; }
                        Ok(chunks) => {
                            for chunk in chunks {
                                yield Ok(chunk);
                            }
                            if parser.is_done() {
                                yield parser.finish();
                                return;
                            }
                        }
                    },
                }
            }
        }
        .boxed()
    }
}

/// Classifies a non-2xx answer of `POST /responses`.
#[must_use]
pub fn http_error(status: u16, body: &str, resumed: Option<&str>) -> AssistantError {
    let (message, code, param) = error_parts(body);
    if let Some(resumed) = resumed
        && is_previous_response_error(&message, code.as_deref(), param.as_deref())
        && matches!(status, 400 | 404)
    {
        return AssistantError::StaleSession { session_id: resumed.to_owned(), detail: message };
    }
    AssistantError::Api { message: format!("HTTP {status}: {message}"), status: Some(status) }
}

fn is_previous_response_error(message: &str, code: Option<&str>, param: Option<&str>) -> bool {
    code == Some("previous_response_not_found")
        || param == Some("previous_response_id")
        || message.contains("`previous_response_id`")
}

/// Parser state for one Responses API event stream.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    resumed: Option<String>,
    response_id: Option<String>,
    usage: Option<Usage>,
    completed: bool,
    text_item: Option<String>,
    text_items: usize,
}

impl ResponsesStream {
    /// A parser for a run that continued from `resumed` (or started fresh).
    #[must_use]
    pub fn new(resumed: Option<String>) -> Self {
        Self { resumed, ..Self::default() }
    }

    /// True once `response.completed` was read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.completed
    }

    /// Parses one event's `data`.
    ///
    /// # Errors
    /// [`AssistantError::StaleSession`] for an in-stream `previous_response_not_found`,
    /// [`AssistantError::Api`] for `response.failed` and `error` events,
    /// [`AssistantError::Refused`] for `response.incomplete`.
    pub fn event(&mut self, data: &str) -> Result<Vec<Chunk>, AssistantError> {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            debug!(data = %data.chars().take(200).collect::<String>(), "skipping a non-JSON event");
            return Ok(Vec::new());
        };
        let response = v.get("response").unwrap_or(&Value::Null);
        match str_at(&v, "type") {
            Some("response.created" | "response.in_progress") => {
                if let Some(id) = str_at(response, "id") {
                    self.response_id = Some(id.to_owned());
                }
                Ok(Vec::new())
            }
            Some("response.output_text.delta") => {
                let Some(delta) = str_at(&v, "delta").filter(|d| !d.is_empty()) else { return Ok(Vec::new()) };
                let item = str_at(&v, "item_id").map(str::to_owned);
                let mut text = String::new();
                if item != self.text_item {
                    self.text_items += 1;
                    if self.text_items > 1 {
                        text.push_str("\n\n");
                    }
                    self.text_item = item;
                }
                text.push_str(delta);
                Ok(vec![Chunk::Text { text }])
            }
            Some("response.reasoning_summary_text.delta" | "response.reasoning_text.delta") => Ok(str_at(&v, "delta")
                .filter(|d| !d.is_empty())
                .map(|d| vec![Chunk::Thinking { text: d.to_owned() }])
                .unwrap_or_default()),
            Some("response.output_item.done") => {
                let item = v.get("item").unwrap_or(&Value::Null);
                if str_at(item, "type") != Some("function_call") {
                    return Ok(Vec::new());
                }
                let arguments = str_at(item, "arguments").unwrap_or_default();
                let input = serde_json::from_str(arguments).unwrap_or_else(|_| json!(arguments));
                Ok(vec![Chunk::ToolUse {
                    id: str_at(item, "call_id").or_else(|| str_at(item, "id")).unwrap_or_default().to_owned(),
                    name: str_at(item, "name").unwrap_or("function").to_owned(),
                    input,
                }])
            }
            Some("response.completed") => {
                if let Some(id) = str_at(response, "id") {
                    self.response_id = Some(id.to_owned());
                }
                self.usage = response.get("usage").filter(|u| !u.is_null()).map(|u| {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    Usage { input_tokens: n("input_tokens"), output_tokens: n("output_tokens") }
                });
                self.completed = true;
                Ok(Vec::new())
            }
            Some("response.failed") => {
                let err = response.get("error").unwrap_or(&Value::Null);
                let message = str_at(err, "message").unwrap_or("the response failed");
                Err(AssistantError::Api { message: format!("the response failed: {message}"), status: None })
            }
            Some("response.incomplete") => {
                let reason = response.get("incomplete_details").and_then(|d| str_at(d, "reason")).unwrap_or("unknown");
                Err(AssistantError::Refused(format!("the response is incomplete ({reason})")))
            }
            Some("error") => {
                let err = v.get("error").unwrap_or(&v);
                let message = str_at(err, "message").or_else(|| str_at(&v, "message")).unwrap_or("unknown error");
                let code = str_at(err, "code").or_else(|| str_at(&v, "code"));
                let param = str_at(err, "param").or_else(|| str_at(&v, "param"));
                let status = v.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
                if let Some(resumed) = &self.resumed
                    && is_previous_response_error(message, code, param)
                {
                    return Err(AssistantError::StaleSession {
                        session_id: resumed.clone(),
                        detail: message.to_owned(),
                    });
                }
                Err(AssistantError::Api { message: message.to_owned(), status })
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The outcome at the end of the stream.
    ///
    /// # Errors
    /// [`AssistantError::Protocol`] when the stream ended before `response.completed`.
    pub fn finish(&self) -> Result<Chunk, AssistantError> {
        if !self.completed {
            return Err(AssistantError::Protocol("the event stream ended before response.completed".into()));
        }
        Ok(Chunk::Completed {
            session_id: self.response_id.clone(),
            usage: self.usage,
            cost_usd: None,
            duration_ms: None,
        })
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}
