//! The OpenAI Responses (`openai`) and Chat Completions (`openai-chat`) parsers over the
//! `openai-*` fixtures, and both adapters against the mock servers of
//! `parley-test-support`, which record every request body.

use std::time::Duration;

use futures::StreamExt;
use parley_assistant::openai::{ResponsesStream, http_error};
use parley_assistant::openai_chat::ChatStream;
use parley_assistant::{
    Assistant, AssistantError, Chunk, OpenAi, OpenAiChat, OpenAiChatConfig, OpenAiConfig, Secret, Usage,
};
use parley_test_support::mock_anthropic::MockAnthropic;
use parley_test_support::mock_openai::{HELLO, MockOpenAi};

use crate::cli::request;
use crate::fixture;

/// The `data` of every event of an `.sse` fixture, with its event name.
fn sse_events(file: &str) -> Vec<(String, String)> {
    fixture(file)
        .split("\n\n")
        .filter_map(|block| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

fn responses(file: &str, resumed: Option<&str>) -> (Vec<Chunk>, Result<Chunk, AssistantError>) {
    let mut parser = ResponsesStream::new(resumed.map(str::to_owned));
    let mut chunks = Vec::new();
    for (_, data) in sse_events(file) {
        match parser.event(&data) {
            Ok(c) => chunks.extend(c),
            Err(e) => return (chunks, Err(e)),
        }
    }
    let outcome = parser.finish();
    (chunks, outcome)
}

fn chat(file: &str) -> Vec<Chunk> {
    let mut parser = ChatStream::default();
    let mut chunks = Vec::new();
    for (_, data) in sse_events(file) {
        chunks.extend(parser.data(&data).unwrap());
    }
    assert!(parser.is_done(), "{file} ends with [DONE]");
    chunks.extend(parser.finish().unwrap());
    chunks
}

fn text_of(chunks: &[Chunk]) -> String {
    chunks.iter().filter_map(|c| if let Chunk::Text { text } = c { Some(text.as_str()) } else { None }).collect()
}

#[test]
fn responses_stream_fixtures_parse() {
    let (chunks, outcome) = responses("openai-responses-stream.sse", None);
    assert_eq!(text_of(&chunks), HELLO);
    let Ok(Chunk::Completed { session_id, usage, .. }) = outcome else { panic!("{outcome:?}") };
    assert_eq!(session_id.as_deref(), Some("resp_f87c0e99848f4503a67064869948c2e9b18ceec745eb424a"));
    assert!(usage.is_some_and(|u| u.input_tokens > 0));

    let (chunks, outcome) = responses("openai-responses-stream-function-call.sse", None);
    assert!(chunks.iter().any(|c| matches!(c, Chunk::Thinking { text } if text.contains("Planning"))), "{chunks:?}");
    assert!(
        chunks.iter().any(|c| matches!(c, Chunk::ToolUse { name, input, .. }
            if name == "shell_command" && input["command"] == "echo hello-from-tool")),
        "{chunks:?}"
    );
    assert!(matches!(outcome, Ok(Chunk::Completed { .. })), "{outcome:?}");

    let (chunks, outcome) = responses("openai-responses-stream-failed.sse", None);
    assert_eq!(text_of(&chunks), HELLO);
    assert!(
        matches!(&outcome, Err(AssistantError::Api { message, .. }) if message.contains("The model produced invalid content.")),
        "{outcome:?}"
    );

    let (_, outcome) = responses("openai-responses-stream-error-event.sse", Some("resp_prev"));
    assert!(
        matches!(&outcome, Err(AssistantError::Api { message, .. }) if message.contains("The server had an error")),
        "a server error is not stale: {outcome:?}"
    );
}

#[test]
fn previous_response_not_found_is_stale_only_when_resuming() {
    let (_, outcome) = responses("openai-prev-response-not-found-stream-error-event.sse", Some("resp_0ba4"));
    assert!(
        matches!(&outcome, Err(AssistantError::StaleSession { session_id, .. }) if session_id == "resp_0ba4"),
        "{outcome:?}"
    );
    let (_, outcome) = responses("openai-prev-response-not-found-stream-error-event.sse", None);
    assert!(matches!(&outcome, Err(AssistantError::Api { status: Some(400), .. })), "{outcome:?}");

    for file in ["openai-prev-response-not-found.json", "openai-prev-response-invalid-terse-variant.json"] {
        let body = fixture(file);
        let stale = http_error(400, &body, Some("resp_x"));
        assert!(
            matches!(&stale, AssistantError::StaleSession { session_id, .. } if session_id == "resp_x"),
            "{file}: {stale:?}"
        );
        let fresh = http_error(400, &body, None);
        assert!(matches!(fresh, AssistantError::Api { status: Some(400), .. }), "{file}: {fresh:?}");
    }
    let http = fixture("openai-prev-response-not-found.http");
    let (_, body) = http.split_once("\n\n").unwrap();
    assert!(matches!(http_error(400, body, Some("resp_x")), AssistantError::StaleSession { .. }));
    // A missing reasoning item (store=false) is a client bug, not a stale session.
    let item = http_error(404, &fixture("openai-store-false-item-not-found.json"), Some("resp_x"));
    assert!(
        matches!(&item, AssistantError::Api { message, status: Some(404) } if message.contains("Items are not persisted")),
        "{item:?}"
    );
}

#[test]
fn chat_completions_fixtures_parse() {
    let chunks = chat("openai-chat-completions-stream.sse");
    assert_eq!(text_of(&chunks), "Hello! How can I help?");
    assert_eq!(
        chunks.last(),
        Some(&Chunk::Completed {
            session_id: None,
            usage: Some(Usage { input_tokens: 9, output_tokens: 7 }),
            cost_usd: None,
            duration_ms: None
        })
    );
    let chunks = chat("openai-chat-completions-stream-tool-call.sse");
    assert!(
        chunks.iter().any(|c| matches!(c, Chunk::ToolUse { id, name, input }
            if id == "call_DdmO9pD3xa9XTPNJ32zg2hcA" && name == "get_weather" && input["location"] == "Paris")),
        "{chunks:?}"
    );
    let chunks = chat("openai-chat-completions-stream-llamacpp.sse");
    assert_eq!(chunks.first(), Some(&Chunk::Thinking { text: "We".into() }));
    assert_eq!(text_of(&chunks), "Hello!");
    assert!(matches!(
        chunks.last(),
        Some(Chunk::Completed { usage: Some(Usage { input_tokens: 1085, output_tokens: 247 }), .. })
    ));
}

fn openai(mock: &MockOpenAi) -> OpenAi {
    OpenAi::new(OpenAiConfig {
        base_url: format!("{}/v1", mock.url()),
        api_key: Some(Secret::new("sk-test-secret")),
        model: "gpt-test".into(),
        ..OpenAiConfig::default()
    })
}

async fn run(assistant: &dyn Assistant, prompt: &str, resume: Option<&str>) -> Vec<Result<Chunk, AssistantError>> {
    assistant.run(request(prompt, resume, None)).collect().await
}

/// The text of a run's `Ok` text chunks, joined.
fn ok_text(chunks: &[Result<Chunk, AssistantError>]) -> String {
    chunks.iter().filter_map(|c| if let Ok(Chunk::Text { text }) = c { Some(text.as_str()) } else { None }).collect()
}

fn completed_id(chunks: &[Result<Chunk, AssistantError>]) -> String {
    match chunks.last() {
        Some(Ok(Chunk::Completed { session_id: Some(id), .. })) => id.clone(),
        other => panic!("not completed: {other:?} in {chunks:?}"),
    }
}

#[tokio::test]
async fn openai_continues_from_the_previous_response_and_recovers_when_it_is_gone() {
    let mock = MockOpenAi::start().await;
    let assistant = openai(&mock);
    let first = run(&assistant, "hello", None).await;
    assert_eq!(ok_text(&first), HELLO);
    assert!(
        !first.iter().any(|c| matches!(c, Ok(Chunk::SessionStarted { .. }))),
        "the ID is reported at completion only"
    );
    let id1 = completed_id(&first);
    let second = run(&assistant, "again", Some(&id1)).await;
    let id2 = completed_id(&second);
    assert_ne!(id1, id2, "each turn is a new response");
    let bodies: Vec<_> = mock.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["input"], "hello");
    assert_eq!(bodies[0]["model"], "gpt-test");
    assert_eq!(bodies[0]["stream"], true);
    assert!(bodies[0].get("previous_response_id").is_none());
    assert_eq!(bodies[1]["previous_response_id"], id1.as_str());

    mock.forget_responses();
    let stale = run(&assistant, "after expiry", Some(&id2)).await;
    assert!(
        matches!(&stale[..], [Err(AssistantError::StaleSession { session_id, detail })] if *session_id == id2 && detail.contains("not found")),
        "{stale:?}"
    );
    let terse = run(&assistant, "SCN_TERSE", Some("resp_whatever")).await;
    assert!(matches!(&terse[..], [Err(AssistantError::StaleSession { .. })]), "{terse:?}");
}

#[tokio::test]
async fn openai_failures_fail_the_turn_with_readable_messages() {
    let mock = MockOpenAi::start().await;
    let assistant = openai(&mock);
    let failed = run(&assistant, "SCN_RFAILED please", None).await;
    assert!(
        matches!(failed.last(), Some(Err(AssistantError::Api { message, .. })) if message.contains("invalid content")),
        "{failed:?}"
    );
    let error = run(&assistant, "SCN_ERROR please", None).await;
    assert!(
        matches!(error.last(), Some(Err(AssistantError::Api { message, .. })) if message.contains("server had an error")),
        "{error:?}"
    );
    let busy = run(&assistant, "SCN_HTTP529 please", None).await;
    assert!(
        matches!(&busy[..], [Err(AssistantError::Api { status: Some(503), message })] if message.contains("capacity")),
        "{busy:?}"
    );
    let tool = run(&assistant, "SCN_TOOL run it", None).await;
    assert!(tool.iter().any(|c| matches!(c, Ok(Chunk::ToolUse { name, .. }) if name == "exec_command")), "{tool:?}");
    // Nothing listens on port 9.
    let down = OpenAi::new(OpenAiConfig { base_url: "http://127.0.0.1:9/v1".into(), ..OpenAiConfig::default() });
    let unreachable = run(&down, "hi", None).await;
    assert!(
        matches!(&unreachable[..], [Err(AssistantError::Api { message, status: None })] if message.contains("cannot reach")),
        "{unreachable:?}"
    );
}

#[tokio::test]
async fn openai_cancel_stops_a_streaming_response() {
    let mock = MockOpenAi::start().await;
    let assistant = openai(&mock);
    let req = request("SCN_SLOW go", None, None);
    let cancel = req.cancel.clone();
    let mut stream = assistant.run(req);
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(Chunk::Text { .. }))), "{first:?}");
    cancel.cancel();
    let next = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.unwrap();
    assert!(matches!(next, Some(Err(AssistantError::Cancelled))), "{next:?}");
}

#[test]
fn api_keys_never_show_in_debug_output() {
    let config = OpenAiConfig { api_key: Some(Secret::new("sk-live-very-secret")), ..OpenAiConfig::default() };
    let shown = format!("{config:?} {:?}", OpenAi::new(config.clone()));
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}

#[tokio::test]
async fn openai_chat_is_stateless_and_streams_text_and_tool_calls() {
    let mock = MockOpenAi::start().await;
    let assistant = OpenAiChat::new(OpenAiChatConfig {
        base_url: format!("{}/v1", mock.url()),
        model: "llama-test".into(),
        system_prompt: Some("Be brief.".into()),
        ..OpenAiChatConfig::default()
    });
    let chunks = run(&assistant, "history…\nhello", None).await;
    assert_eq!(ok_text(&chunks), HELLO);
    assert!(!chunks.iter().any(|c| matches!(c, Ok(Chunk::SessionStarted { .. }))));
    assert!(
        matches!(
            chunks.last(),
            Some(Ok(Chunk::Completed {
                session_id: None,
                usage: Some(Usage { input_tokens: 9, output_tokens: 7 }),
                ..
            }))
        ),
        "{chunks:?}"
    );
    let body = &mock.requests()[0].body;
    assert_eq!(body["model"], "llama-test");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "history…\nhello");
    assert_eq!(body["stream_options"]["include_usage"], true);

    let tool = run(&assistant, "SCN_TOOL weather", None).await;
    assert!(tool.iter().any(|c| matches!(c, Ok(Chunk::ToolUse { name, input, .. }) if name == "get_weather" && input["location"] == "Paris")), "{tool:?}");
    let busy = run(&assistant, "SCN_HTTP529", None).await;
    assert!(matches!(&busy[..], [Err(AssistantError::Api { status: Some(503), .. })]), "{busy:?}");
}

/// The mock Anthropic API speaks the event sequences of the `anthropic-*.sse` fixtures
/// (which the real CLI parsed) and records every request body.
#[tokio::test]
async fn the_mock_anthropic_api_speaks_the_fixture_event_sequences() {
    let mock = MockAnthropic::start().await;
    let client = reqwest::Client::new();
    for (keyword, file) in [
        ("say hi", "anthropic-messages-stream-text.sse"),
        ("SCN_THINK hi", "anthropic-messages-stream-thinking.sse"),
        ("SCN_TOOL run", "anthropic-messages-stream-tool-use.sse"),
        ("SCN_OVERLOAD go", "anthropic-messages-stream-overloaded-error.sse"),
    ] {
        let body = serde_json::json!({"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":keyword}]}]});
        let resp = client.post(format!("{}/v1/messages?beta=true", mock.url())).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let got: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        let want: Vec<String> = sse_events(file).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, want, "{file}");
    }
    let body = serde_json::json!({"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"SCN_HTTP529 go"}]});
    let resp = client.post(format!("{}/v1/messages", mock.url())).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 529);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "overloaded_error");
    assert_eq!(mock.requests().len(), 5);
    assert_eq!(mock.message_requests_for("SCN_THINK").len(), 1);
}
