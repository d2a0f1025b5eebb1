//! A local mock of the Anthropic Messages API (`POST /v1/messages`, streaming and not),
//! for driving the real `claude` CLI in tests (`ANTHROPIC_BASE_URL=` [`MockAnthropic::url`]).
//!
//! The wire format follows the Anthropic streaming docs and the `anthropic` SDK types;
//! the real claude-code 2.1.329 CLI parsed this exact shape when the fixtures in
//! `crates/assistant/tests/fixtures/anthropic-*.sse` were captured.
//!
//! Like the capture mock, it picks a scenario from a keyword in the *last* user message's
//! text:
//! - (none) — text: "Hello! How can I help you today?";
//! - `SCN_HANG` — a `Bash` `tool_use` that runs `tail -F hang.txt` in its cwd (a child process that
//!   never ends, for a test that cancels the turn while it runs; allow it with
//!   `--allowedTools 'Bash(tail *)'`; the CLI refuses a plain long `sleep`);
//! - `SCN_TOOL` — a `Bash` `tool_use` (`echo hello-from-tool`), then, once the request
//!   carries its `tool_result`, "The command printed `…`.";
//! - `SCN_THINK` — a thinking block, then text;
//! - `SCN_HTTP529` — HTTP 529 `overloaded_error`;
//! - `SCN_OVERLOAD` — an `overloaded_error` event mid-stream (non-streaming retries succeed);
//! - `SCN_SLOW` — text streamed slowly (one word every 250 ms, for about 30 s).
//!
//! Every request body is recorded ([`MockAnthropic::requests`]).
//!
//! Hand-written on axum rather than wiremock, which the platform tests use: wiremock
//! answers with a whole body (its delay holds back all of it), while this server streams
//! SSE events one by one with pauses between them (slow replies, errors mid-stream,
//! hanging tool calls), and runs on its own as an example binary that the real CLI
//! talks to.

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

/// The text of the default scenario.
pub const HELLO: &str = "Hello! How can I help you today?";

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request path and query.
    pub path: String,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
}

/// Until ctrl-c: every 200 ms, prints the requests that `requests` (all received so
/// far, oldest first) holds beyond those already printed, each with `print`. For the
/// mock servers' example binaries.
pub async fn print_requests_until_ctrl_c(requests: impl Fn() -> Vec<Recorded>, mut print: impl FnMut(&Recorded)) {
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        let all = requests();
        all.iter().skip(seen).for_each(&mut print);
        seen = all.len();
    }
}

#[derive(Debug, Default)]
struct MockState {
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock; it stops when dropped.
#[derive(Debug)]
pub struct MockAnthropic {
    server: Served,
    state: Arc<MockState>,
}

impl MockAnthropic {
    /// Starts the mock on `127.0.0.1`, port 0.
    ///
    /// # Panics
    /// When it cannot listen on loopback.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the mock on `addr` (e.g. `127.0.0.1:18080`).
    ///
    /// # Panics
    /// When it cannot listen there.
    pub async fn start_on(addr: &str) -> Self {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .fallback(not_found)
            .with_state(Arc::clone(&state));
        Self { server: Served::start(addr, app, "the mock Anthropic API").await, state }
    }

    /// The base URL for `ANTHROPIC_BASE_URL` (no trailing slash, no `/v1`).
    #[must_use]
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received, oldest first.
    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The `/v1/messages` requests whose last user message's text contains `needle`.
    #[must_use]
    pub fn message_requests_for(&self, needle: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/v1/messages") && !r.path.starts_with("/v1/messages/"))
            .map(|r| r.body)
            .filter(|b| last_user_text(b).contains(needle))
            .collect()
    }
}

/// The text of every text block (or string content) of a message.
#[must_use]
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn last_user(body: &Value) -> Option<&Value> {
    body.get("messages")?.as_array()?.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
}

/// The text of the request's last user message.
#[must_use]
pub fn last_user_text(body: &Value) -> String {
    last_user(body).map(message_text).unwrap_or_default()
}

/// The `tool_result` content of the last user message, if it carries one.
fn last_tool_result(body: &Value) -> Option<String> {
    let blocks = last_user(body)?.get("content")?.as_array()?;
    let result = blocks.iter().find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))?;
    Some(match result.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    })
}

async fn count_tokens() -> impl IntoResponse {
    axum::Json(json!({ "input_tokens": 42 }))
}

async fn not_found(OriginalUri(uri): OriginalUri) -> Response {
    let body = json!({"type":"error","error":{"type":"not_found_error","message":format!("mock: no route {uri}")}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// What to answer.
enum Plan {
    Text(String),
    /// A `Bash` tool call with this JSON input.
    Tool(&'static str),
    Think,
    Http529,
    Overload,
    Slow,
}

/// The last text block of the last user message: the CLI merges a failed turn's user
/// message with the next one, so only the newest block chooses the scenario.
fn newest_text(body: &Value) -> String {
    match last_user(body).and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .rev()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .find(|t| !t.trim_start().starts_with('<'))
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

fn plan(body: &Value) -> Plan {
    if let Some(output) = last_tool_result(body) {
        return Plan::Text(format!("The command printed `{}`.", output.trim()));
    }
    let text = newest_text(body);
    if text.contains("SCN_TOOL") {
        Plan::Tool(TOOL_INPUT)
    } else if text.contains("SCN_HANG") {
        Plan::Tool(HANG_INPUT)
    } else if text.contains("SCN_THINK") {
        Plan::Think
    } else if text.contains("SCN_HTTP529") {
        Plan::Http529
    } else if text.contains("SCN_OVERLOAD") {
        Plan::Overload
    } else if text.contains("SCN_SLOW") {
        Plan::Slow
    } else {
        Plan::Text(HELLO.into())
    }
}

async fn messages(State(state): State<Arc<MockState>>, OriginalUri(uri): OriginalUri, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Ok(mut r) = state.requests.lock() {
        r.push(Recorded { path: uri.to_string(), body: body.clone() });
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("claude-sonnet-4-5").to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let plan = plan(&body);
    if let Plan::Http529 = plan {
        let err = json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_mock529"});
        return (StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), axum::Json(err)).into_response();
    }
    let id = format!("msg_mock{}", uuid::Uuid::new_v4().simple());
    if !stream {
        return axum::Json(whole_message(&id, &model, &plan)).into_response();
    }
    let events = stream_events(&id, &model, &plan);
    let slow = matches!(plan, Plan::Slow);
    let body = futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let (name, data, delay) = it.next()?;
        if slow && delay {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Some((Ok::<_, Infallible>(format!("event: {name}\ndata: {data}\n\n")), it))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", "req_mock")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn usage(output: u64) -> Value {
    json!({"input_tokens":2095,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":output,"service_tier":"standard"})
}

const TOOL_ID_PREFIX: &str = "toolu_mock";
const TOOL_INPUT: &str = r#"{"command": "echo hello-from-tool", "description": "Print a greeting"}"#;
const HANG_INPUT: &str = r#"{"command": "tail -F hang.txt", "description": "Follow a file"}"#;

fn whole_message(id: &str, model: &str, plan: &Plan) -> Value {
    let (content, stop) = match plan {
        Plan::Tool(input) => (
            json!([
                {"type":"text","text":"I'll run a command to check."},
                {"type":"tool_use","id":format!("{TOOL_ID_PREFIX}{}", &id[8..]),"name":"Bash","input":serde_json::from_str::<Value>(input).unwrap_or_default()}
            ]),
            "tool_use",
        ),
        Plan::Think => (
            json!([
                {"type":"thinking","thinking":"The user wants a short greeting. I'll keep it brief.","signature":"EqQBmock"},
                {"type":"text","text":HELLO}
            ]),
            "end_turn",
        ),
        Plan::Text(t) => (json!([{"type":"text","text":t}]), "end_turn"),
        _ => (json!([{"type":"text","text":HELLO}]), "end_turn"),
    };
    json!({"id":id,"type":"message","role":"assistant","model":model,"content":content,"stop_reason":stop,"stop_sequence":null,"usage":usage(26)})
}

/// (event name, data, delay before it in the slow scenario).
fn stream_events(id: &str, model: &str, plan: &Plan) -> Vec<(String, String, bool)> {
    let mut events: Vec<(String, String, bool)> = Vec::new();
    let mut push = |name: &str, data: Value, delay: bool| events.push((name.to_owned(), data.to_string(), delay));
    let start = json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":usage(1)}});
    push("message_start", start, false);
    let mut index = 0;
    let text_block = |push: &mut dyn FnMut(&str, Value, bool), index: usize, words: &[String], delay: bool| {
        push(
            "content_block_start",
            json!({"type":"content_block_start","index":index,"content_block":{"type":"text","text":""}}),
            false,
        );
        if index == 0 {
            push("ping", json!({"type":"ping"}), false);
        }
        for w in words {
            push(
                "content_block_delta",
                json!({"type":"content_block_delta","index":index,"delta":{"type":"text_delta","text":w}}),
                delay,
            );
        }
        push("content_block_stop", json!({"type":"content_block_stop","index":index}), false);
    };
    let stop_reason = match plan {
        Plan::Think => {
            push(
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}),
                false,
            );
            for t in ["The user wants a short gre", "eting. I'll keep it brief."] {
                push(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":t}}),
                    false,
                );
            }
            push(
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBmock"}}),
                false,
            );
            push("content_block_stop", json!({"type":"content_block_stop","index":0}), false);
            index += 1;
            text_block(&mut push, index, &words(HELLO), false);
            "end_turn"
        }
        Plan::Tool(input) => {
            text_block(&mut push, 0, &words("I'll run a command to check."), false);
            let tool_id = format!("{TOOL_ID_PREFIX}{}", &id[8..]);
            push(
                "content_block_start",
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":tool_id,"name":"Bash","input":{}}}),
                false,
            );
            // Three pieces of the (ASCII) input, as the API streams `input_json_delta`s.
            let third = input.len() / 3;
            let (a, rest) = input.split_at(third);
            let (b, c) = rest.split_at(third);
            for part in ["", a, b, c] {
                push(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":part}}),
                    false,
                );
            }
            push("content_block_stop", json!({"type":"content_block_stop","index":1}), false);
            "tool_use"
        }
        Plan::Overload => {
            push(
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                false,
            );
            push("ping", json!({"type":"ping"}), false);
            for w in ["Hello!", " How"] {
                push(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":w}}),
                    false,
                );
            }
            push("error", json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}), false);
            return events;
        }
        Plan::Slow => {
            let text =
                "This is a slow reply that streams one word at a time so that a test can cancel it midway. ".repeat(6);
            text_block(&mut push, 0, &words(&text), true);
            "end_turn"
        }
        Plan::Text(t) => {
            text_block(&mut push, 0, &words(t), false);
            "end_turn"
        }
        Plan::Http529 => "end_turn",
    };
    push(
        "message_delta",
        json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":null},"usage":{"output_tokens":26}}),
        false,
    );
    push("message_stop", json!({"type":"message_stop"}), false);
    events
}

/// Splits text into word deltas, keeping every character.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        if i == 0 {
            out.push(w.to_owned());
        } else {
            out.push(format!(" {w}"));
        }
    }
    out.retain(|w| !w.is_empty());
    out
}
