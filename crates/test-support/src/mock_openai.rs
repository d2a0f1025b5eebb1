//! A local mock of the OpenAI Responses API (`POST /v1/responses`, SSE) and the Chat
//! Completions API (`POST /v1/chat/completions`, SSE), for the `openai` and
//! `openai-chat` adapters and for driving the real `codex` CLI (a `CODEX_HOME`
//! `config.toml` model provider with `base_url =` [`MockOpenAi::url`] + `/v1` and
//! `wire_api = "responses"`).
//!
//! The event shapes follow the OpenAI streaming-events reference and the `openai` Python
//! types; the real codex 0.169.0 CLI consumed this shape when the fixtures
//! `crates/assistant/tests/fixtures/openai-responses-*.sse` were captured.
//!
//! Like a real server it remembers the responses it created: a `previous_response_id`
//! it does not know gets HTTP 400 `previous_response_not_found`
//! ([`MockOpenAi::forget_responses`] simulates expiry). Scenario keywords in the last
//! user message's text:
//! - (none) — text "Hello! How can I help you today?";
//! - `SCN_TOOL` — an `exec_command` function call (`{"cmd": "echo hello-from-tool"}`:
//!   the shell tool codex-cli 0.169.0 offers; it refuses `shell_command`), then, once
//!   the request carries its `function_call_output`, "The command printed `…`.";
//! - `SCN_PREVNF` — HTTP 400 `previous_response_not_found`; `SCN_TERSE` — the terse
//!   "Invalid `previous_response_id`." 400;
//! - `SCN_RFAILED` — text, then `response.failed`; `SCN_ERROR` — an `error` event
//!   mid-stream; `SCN_HTTP529` — HTTP 503 `server_is_overloaded`;
//! - `SCN_SLOW` — text streamed slowly (one word every 250 ms).
//!
//! Every request body is recorded ([`MockOpenAi::requests`]).
//!
//! Hand-written on axum rather than wiremock, which the platform tests use: wiremock
//! answers with a whole body (its delay holds back all of it), while this server streams
//! SSE events one by one with pauses between them (slow replies, errors mid-stream,
//! hanging tool calls), keeps state between requests, and runs on its own as an example
//! binary that the real CLIs talk to.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::served::Served;

pub use crate::mock_anthropic::{HELLO, Recorded};

#[derive(Debug, Default)]
struct MockState {
    requests: Mutex<Vec<Recorded>>,
    responses: Mutex<HashSet<String>>,
}

/// A running mock; it stops when dropped.
#[derive(Debug)]
pub struct MockOpenAi {
    server: Served,
    state: Arc<MockState>,
}

impl MockOpenAi {
    /// Starts the mock on `127.0.0.1`, port 0.
    ///
    /// # Panics
    /// When it cannot listen on loopback.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the mock on `addr` (e.g. `127.0.0.1:18081`).
    ///
    /// # Panics
    /// When it cannot listen there.
    pub async fn start_on(addr: &str) -> Self {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/responses", post(responses))
            .route("/v1/chat/completions", post(chat))
            .fallback(not_found)
            .with_state(Arc::clone(&state));
        Self { server: Served::start(addr, app, "the mock OpenAI API").await, state }
    }

    /// The server's root URL (append `/v1` for a client's base URL).
    #[must_use]
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received, oldest first.
    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The `/v1/responses` request bodies whose last user message's text (see
    /// [`last_user_text`]) contains `needle`, oldest first.
    #[must_use]
    pub fn response_requests_for(&self, needle: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/v1/responses"))
            .map(|r| r.body)
            .filter(|b| last_user_text(b).contains(needle))
            .collect()
    }

    /// Forgets every stored response, as if they had expired.
    pub fn forget_responses(&self) {
        if let Ok(mut r) = self.state.responses.lock() {
            r.clear();
        }
    }
}

async fn not_found(OriginalUri(uri): OriginalUri) -> Response {
    let body = json!({"error":{"message":format!("mock: no route {uri}"),"type":"invalid_request_error","param":null,"code":"not_found"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// The text of a Responses API `input`: a string, or the last user message item.
#[must_use]
pub fn last_user_text(body: &Value) -> String {
    match body.get("input").or_else(|| body.get("messages")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
                }
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn function_output(body: &Value) -> Option<String> {
    let last = body.get("input")?.as_array()?.last()?;
    if last.get("type").and_then(Value::as_str) != Some("function_call_output") {
        return None;
    }
    let output = last.get("output")?;
    Some(match output {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .and_then(|v| v.get("output").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| s.clone()),
        other => other.to_string(),
    })
}

fn record(state: &MockState, uri: &str, body: &Value) {
    if let Ok(mut r) = state.requests.lock() {
        r.push(Recorded { path: uri.to_owned(), body: body.clone() });
    }
}

fn error(status: StatusCode, message: &str, code: &str, param: Option<&str>) -> Response {
    let body = json!({"error":{"message":message,"type":"invalid_request_error","param":param,"code":code}});
    (status, axum::Json(body)).into_response()
}

fn sse(events: Vec<(String, Value, bool)>, slow: bool) -> Response {
    let body = futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let (name, data, delay) = it.next()?;
        if slow && delay {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let frame = if name == DONE {
            "data: [DONE]\n\n".to_owned()
        } else if name.is_empty() {
            format!("data: {data}\n\n")
        } else {
            format!("event: {name}\ndata: {data}\n\n")
        };
        Some((Ok::<_, Infallible>(frame), it))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The pseudo event name of the raw `data: [DONE]` frame.
const DONE: &str = "[DONE]";

fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

const SLOW_TEXT: &str = "This is a slow reply that streams one word at a time so that a test can cancel it midway. ";

async fn responses(State(state): State<Arc<MockState>>, OriginalUri(uri): OriginalUri, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&state, &uri.to_string(), &body);
    let text = last_user_text(&body);
    if let Some(prev) = body.get("previous_response_id").and_then(Value::as_str) {
        let known = state.responses.lock().map(|r| r.contains(prev)).unwrap_or(false);
        if !known || text.contains("SCN_PREVNF") {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Previous response with id '{prev}' not found."),
                "previous_response_not_found",
                Some("previous_response_id"),
            );
        }
    }
    if text.contains("SCN_PREVNF") {
        let msg = "Previous response with id 'resp_00000000000000000000000000000000' not found.";
        return error(StatusCode::BAD_REQUEST, msg, "previous_response_not_found", Some("previous_response_id"));
    }
    if text.contains("SCN_TERSE") {
        return error(StatusCode::BAD_REQUEST, "Invalid `previous_response_id`.", "invalid_request_error", None);
    }
    if text.contains("SCN_HTTP529") {
        let body = json!({"error":{"message":"Selected model is at capacity. Please try a different model.","type":"server_error","param":null,"code":"server_is_overloaded"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("gpt-5.5").to_owned();
    let id = format!("resp_mock{}", uuid::Uuid::new_v4().simple());
    let previous = body.get("previous_response_id").cloned().unwrap_or(Value::Null);
    let response = |status: &str, output: Value, usage: Value, error: Value| {
        json!({"id":id,"object":"response","created_at":1_795_218_926,"status":status,"error":error,"incomplete_details":null,
               "model":model,"output":output,"previous_response_id":previous,"store":body.get("store").cloned().unwrap_or(json!(true)),"usage":usage})
    };
    let mut events: Vec<(String, Value, bool)> = Vec::new();
    let mut seq = 0u64;
    let mut push = |name: &str, mut data: Value, delay: bool| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push((name.to_owned(), data, delay));
    };
    push("response.created", json!({"response": response("in_progress", json!([]), Value::Null, Value::Null)}), false);
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]), Value::Null, Value::Null)}),
        false,
    );
    let usage = json!({"input_tokens":2345,"input_tokens_details":{"cached_tokens":0},"output_tokens":57,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":2402});
    let slow = text.contains("SCN_SLOW");
    let output = if text.contains("SCN_TOOL") && function_output(&body).is_none() {
        let fc_id = format!("fc_{}", uuid::Uuid::new_v4().simple());
        let call_id = format!("call_{}", uuid::Uuid::new_v4().simple());
        let args = r#"{"cmd": "echo hello-from-tool"}"#;
        let added = json!({"id":fc_id,"type":"function_call","status":"in_progress","arguments":"","call_id":call_id,"name":"exec_command"});
        push("response.output_item.added", json!({"output_index":0,"item":added}), false);
        push("response.function_call_arguments.delta", json!({"item_id":fc_id,"output_index":0,"delta":args}), false);
        push(
            "response.function_call_arguments.done",
            json!({"item_id":fc_id,"output_index":0,"arguments":args}),
            false,
        );
        let done = json!({"id":fc_id,"type":"function_call","status":"completed","arguments":args,"call_id":call_id,"name":"exec_command"});
        push("response.output_item.done", json!({"output_index":0,"item":done.clone()}), false);
        json!([done])
    } else {
        let reply = match function_output(&body) {
            Some(out) => format!("The command printed `{}`.", out.trim()),
            None if slow => SLOW_TEXT.repeat(6),
            None => HELLO.to_owned(),
        };
        let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        push(
            "response.output_item.added",
            json!({"output_index":0,"item":{"id":msg_id,"type":"message","status":"in_progress","content":[],"role":"assistant"}}),
            false,
        );
        push(
            "response.content_part.added",
            json!({"item_id":msg_id,"output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}),
            false,
        );
        let mut sent = 0;
        for w in words(&reply) {
            push(
                "response.output_text.delta",
                json!({"item_id":msg_id,"output_index":0,"content_index":0,"delta":w,"logprobs":[]}),
                slow,
            );
            sent += 1;
            if text.contains("SCN_ERROR") && sent == 2 {
                push(
                    "error",
                    json!({"code":"server_error","message":"The server had an error while processing your request. Sorry about that!","param":null}),
                    false,
                );
                return sse(events, slow);
            }
        }
        let part = json!({"type":"output_text","annotations":[],"logprobs":[],"text":reply});
        push(
            "response.output_text.done",
            json!({"item_id":msg_id,"output_index":0,"content_index":0,"text":reply,"logprobs":[]}),
            false,
        );
        push(
            "response.content_part.done",
            json!({"item_id":msg_id,"output_index":0,"content_index":0,"part":part.clone()}),
            false,
        );
        let item = json!({"id":msg_id,"type":"message","status":"completed","content":[part],"role":"assistant"});
        push("response.output_item.done", json!({"output_index":0,"item":item.clone()}), false);
        json!([item])
    };
    if text.contains("SCN_RFAILED") {
        let err = json!({"code":"server_error","message":"The model produced invalid content."});
        push("response.failed", json!({"response": response("failed", output, Value::Null, err)}), false);
        return sse(events, slow);
    }
    push("response.completed", json!({"response": response("completed", output, usage, Value::Null)}), false);
    if let Ok(mut r) = state.responses.lock() {
        r.insert(id.clone());
    }
    sse(events, slow)
}

async fn chat(State(state): State<Arc<MockState>>, OriginalUri(uri): OriginalUri, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&state, &uri.to_string(), &body);
    let text = last_user_text(&body);
    if text.contains("SCN_HTTP529") {
        let body = json!({"error":{"message":"Selected model is at capacity. Please try a different model.","type":"server_error","param":null,"code":"server_is_overloaded"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("gpt-4o").to_owned();
    let id = format!("chatcmpl-mock{}", uuid::Uuid::new_v4().simple());
    let chunk = |delta: Value, finish: Value, usage: Value| {
        json!({"id":id,"object":"chat.completion.chunk","created":1_741_570_283,"model":model,
               "choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":finish}],"usage":usage})
    };
    let slow = text.contains("SCN_SLOW");
    let mut events: Vec<(String, Value, bool)> = Vec::new();
    events.push((String::new(), chunk(json!({"role":"assistant","content":""}), Value::Null, Value::Null), false));
    let finish = if text.contains("SCN_TOOL") {
        let first = json!({"tool_calls":[{"index":0,"id":"call_mock","type":"function","function":{"name":"get_weather","arguments":""}}]});
        events.push((String::new(), chunk(first, Value::Null, Value::Null), false));
        for part in ["{\"location\":", "\"Paris\"}"] {
            let delta = json!({"tool_calls":[{"index":0,"function":{"arguments":part}}]});
            events.push((String::new(), chunk(delta, Value::Null, Value::Null), false));
        }
        "tool_calls"
    } else {
        let reply = if slow { SLOW_TEXT.repeat(6) } else { HELLO.to_owned() };
        for w in words(&reply) {
            events.push((String::new(), chunk(json!({"content":w}), Value::Null, Value::Null), slow));
        }
        "stop"
    };
    events.push((String::new(), chunk(json!({}), json!(finish), Value::Null), false));
    let usage = json!({"prompt_tokens":9,"completion_tokens":7,"total_tokens":16});
    events.push((String::new(), json!({"id":id,"object":"chat.completion.chunk","created":1_741_570_283,"model":model,"choices":[],"usage":usage}), false));
    // `data: [DONE]` ends a Chat Completions stream.
    events.push((DONE.to_owned(), Value::Null, false));
    sse(events, slow)
}
